import Foundation
import Hummingbird
import MeshCore
import MeshLedger
import MeshMarket
import MeshRuntime
import Metrics

/// Every route the explorer answers, documented in Docs/PROTOCOL.md ("Explorer").
///
/// Pages: `/`, `/capacity`, `/peers`, `/peers/{id}`, `/jobs`, `/jobs/{id}`, `/rewards`; each
/// takes `?partial=1` for its live part alone. JSON: `/api`, `/api/overview`, `/api/capacity`,
/// `/api/peers`, `/api/peers/{id}`, `/api/jobs`, `/api/jobs/{id}`, `/api/jobs/{id}/log`,
/// `/api/rewards`. Metrics: `/metrics`. Assets: `/assets/explorer.js`, `/assets/explorer.css`.
/// A bad parameter is a 400 with a message, an unknown peer or job a 404, a node that cannot
/// answer a 503; JSON errors are `{"error": MESSAGE, "status": CODE}`.
struct Routes: Sendable {
    let explorer: Explorer
    var source: ViewSource { ViewSource(node: explorer.node, rewards: explorer.rewards) }
    var selfID: String { explorer.node.peerID.hex }

    /// What `/api` lists: path and what it returns.
    static let api: [(String, String)] = [
        ("/api/overview", "peers, providers, GPUs by model, jobs per hour, receipts (OverviewView)"),
        ("/api/capacity", "offers matching gpu, vendor, min-vram, gpus, min-cc, executor, max-price, min-reputation, limit, include-busy (CapacityView)"),
        ("/api/peers", "the peers this node knows of, sorted by ID: ?limit= (default 100) from ?offset= (PeersView)"),
        ("/api/peers/{peer_id}", "one peer: offer, uptime, reputation with its evidence, receipts, points (PeerView)"),
        ("/api/jobs", "this node's jobs (JobsView)"),
        ("/api/jobs/{job_id}", "one job and its log from ?offset= (JobView)"),
        ("/api/jobs/{job_id}/log", "the job's log from ?offset= (JobView)"),
        ("/api/rewards", "the first ?limit= (default 100) of the leaderboard of ?epoch= (default: the latest with receipts) and totals per epoch (RewardsView)"),
        ("/metrics", "Prometheus text format"),
    ]

    func router() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.add(middleware: Guard(allowPublic: explorer.settings.allowPublic, selfID: selfID))

        // Pages.
        router.get("/") { request, _ in page(request, "Overview", Pages.overview(try await source.overview())) }
        router.get("/capacity") { request, _ in
            let (query, values) = try Self.capacityQuery(Self.params(request))
            return page(request, "Capacity", Pages.capacity(try await source.capacity(query)), lead: Pages.capacityForm(values))
        }
        router.get("/peers") { request, _ in
            let (offset, limit) = try Self.window(Self.params(request))
            return page(request, "Peers", Pages.peers(try await source.peers(offset: offset, limit: limit)))
        }
        router.get("/peers/:id") { request, context in
            let id = context.parameters.get("id") ?? ""
            let v = try await source.peer(id)
            return page(request, "Peer \(v.peerID.prefix(12))", Pages.peer(v))
        }
        router.get("/jobs") { request, _ in page(request, "Jobs", Pages.jobs(try await source.jobs())) }
        router.get("/jobs/:id") { request, context in
            let v = try await source.job(context.parameters.get("id") ?? "", logFrom: 0)
            return page(request, "Job \(v.job.id.prefix(12))", Pages.job(v), extra: Pages.jobLog(v))
        }
        router.get("/rewards") { request, _ in
            let q = Self.params(request)
            let v = try source.rewards(epoch: try Self.epoch(q), limit: try Self.limit(q))
            return page(request, "Rewards", Pages.rewards(v))
        }

        // JSON.
        router.get("/api") { _, _ in
            Reply.json(["routes": Self.api.map { ["path": $0.0, "returns": $0.1] }])
        }
        router.get("/api/overview") { _, _ in Reply.json(try await source.overview()) }
        router.get("/api/capacity") { request, _ in
            Reply.json(try await source.capacity(try Self.capacityQuery(Self.params(request)).query))
        }
        router.get("/api/peers") { request, _ in
            let (offset, limit) = try Self.window(Self.params(request))
            return Reply.json(try await source.peers(offset: offset, limit: limit))
        }
        router.get("/api/peers/:id") { _, context in Reply.json(try await source.peer(context.parameters.get("id") ?? "")) }
        router.get("/api/jobs") { _, _ in Reply.json(try await source.jobs()) }
        for path in ["/api/jobs/:id", "/api/jobs/:id/log"] {
            router.get(RouterPath(path)) { request, context in
                Reply.json(try await source.job(context.parameters.get("id") ?? "", logFrom: try Self.offset(Self.params(request))))
            }
        }
        router.get("/api/rewards") { request, _ in
            let q = Self.params(request)
            return Reply.json(try source.rewards(epoch: try Self.epoch(q), limit: try Self.limit(q)))
        }

        // Metrics and assets.
        router.get("/metrics") { _, _ in
            await updateGauges()
            var text = [UInt8]()
            explorer.metrics.registry.emit(into: &text)
            return Reply.bytes(text, type: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("/assets/explorer.js") { _, _ in Reply.bytes(Array(Assets.script.utf8), type: "text/javascript; charset=utf-8", cache: true) }
        router.get("/assets/explorer.css") { _, _ in Reply.bytes(Array(Assets.style.utf8), type: "text/css; charset=utf-8", cache: true) }
        return router
    }

    /// A page (`lead` and `extra` around its live part), or its live part alone for `?partial=1`.
    private func page(_ request: Request, _ title: String, _ live: String, lead: String = "", extra: String = "") -> Response {
        if Self.partial(request) { return Reply.html(live) }
        return Reply.html(Pages.page(title: title, path: request.uri.path, node: selfID, refresh: explorer.settings.refreshSeconds,
                                     live: live, lead: lead, extra: extra))
    }

    /// Gauges read at scrape time: what the node and its ledger hold now.
    private func updateGauges() async {
        let factory = explorer.metrics.factory
        let peer = [("peer", explorer.node.peerID.short)]
        func gauge(_ name: String, _ value: Int) { Gauge(label: "gpumesh_\(name)", dimensions: peer, factory: factory).record(value) }
        if let s = try? await explorer.node.status() {
            gauge("dht_peers", s.dhtPeers)
            gauge("dht_records", s.dhtRecords)
            gauge("uptime_seconds", Int(s.uptimeSeconds))
        }
        if let g = try? await explorer.node.gossipSnapshot() {
            gauge("gossip_heartbeat_peers", g.heartbeatPeers)
            gauge("gossip_heartbeat_peers_alive", g.heartbeatPeersAlive)
            gauge("gossip_providers_heard", g.providersHeard)
        }
        if let c = try? explorer.node.ledgerCounts() {
            gauge("ledger_receipts", c.receipts)
            gauge("ledger_own_receipts", c.ownReceipts)
            gauge("ledger_reports", c.reports)
            gauge("ledger_peers", c.peers)
        }
        if let jobs = try? await explorer.node.jobList() { gauge("jobs_running", jobs.filter { !$0.isFinished }.count) }
    }

    // MARK: Parameters

    static func partial(_ request: Request) -> Bool { request.uri.queryParameters["partial"] == "1" }

    /// The query parameters; the first value of a repeated one.
    static func params(_ request: Request) -> [String: String] {
        var out: [String: String] = [:]
        for (k, v) in request.uri.queryParameters where out[String(k)] == nil { out[String(k)] = String(v) }
        return out
    }

    /// A parameter's value; nil when absent or empty (an empty form field means "not given").
    static func value(_ q: [String: String], _ name: String) -> String? {
        guard let v = q[name], !v.isEmpty else { return nil }
        return v
    }

    /// The capacity filter from `gpu`, `vendor`, `min-vram`, `gpus`, `min-cc`, `executor`,
    /// `max-price`, `min-reputation`, `limit` (default 50), `include-busy`; and the values given.
    static func capacityQuery(_ q: [String: String]) throws(ExplorerProblem) -> (query: CapabilityQuery, values: [String: String]) {
        var t = CapabilityQuery.Text()
        t.gpu = value(q, "gpu"); t.vendor = value(q, "vendor"); t.minVRAM = value(q, "min-vram"); t.gpus = value(q, "gpus")
        t.minCC = value(q, "min-cc"); t.executor = value(q, "executor"); t.maxPrice = value(q, "max-price")
        t.minReputation = value(q, "min-reputation"); t.limit = value(q, "limit")
        if let busy = value(q, "include-busy") {
            switch busy.lowercased() {
            case "1", "true", "on", "yes": t.includeBusy = true
            case "0", "false", "off", "no": t.includeBusy = false
            default: throw ExplorerProblem(400, "include-busy: '\(busy.prefix(40))' is not 1 or 0")
            }
        }
        var values: [String: String] = [:]
        for name in ["gpu", "vendor", "min-vram", "gpus", "min-cc", "executor", "max-price", "min-reputation", "limit", "include-busy"] {
            values[name] = value(q, name)
        }
        do { return (try CapabilityQuery(text: t, defaultLimit: 50), values) } catch {
            throw ExplorerProblem(400, "\(error.field.dropFirst(2)): \(error.message)")
        }
    }

    /// `epoch`: a day number or `today`; nil when absent.
    static func epoch(_ q: [String: String]) throws(ExplorerProblem) -> UInt64? {
        guard let e = value(q, "epoch") else { return nil }
        if e == "today" { return Rewards.epoch(of: UInt64(Date().timeIntervalSince1970 * 1000)) }
        guard let n = UInt64(e), n < 1_000_000 else { throw ExplorerProblem(400, "epoch: '\(e.prefix(40))' is not a day number (days since 1970-01-01 UTC) or 'today'") }
        return n
    }

    /// A page of a list: `offset` (default 0) and `limit`.
    static func window(_ q: [String: String]) throws(ExplorerProblem) -> (offset: Int, limit: Int) {
        (try rows(q, "offset", 0, 0...Int(Int32.max)), try limit(q))
    }

    /// Rows of a list: `limit`, 1 to 10,000; 100 when absent.
    static func limit(_ q: [String: String]) throws(ExplorerProblem) -> Int { try rows(q, "limit", 100, 1...10_000) }

    /// A row count or position (`limit`, `offset`) within `range`; `otherwise` when absent.
    static func rows(_ q: [String: String], _ name: String, _ otherwise: Int, _ range: ClosedRange<Int>) throws(ExplorerProblem) -> Int {
        guard let v = value(q, name) else { return otherwise }
        guard let n = Int(v), range.contains(n) else {
            throw ExplorerProblem(400, "\(name): '\(v.prefix(40))' is not a whole number from \(range.lowerBound) to \(range.upperBound)")
        }
        return n
    }

    /// `offset`: a byte offset into a log; 0 when absent.
    static func offset(_ q: [String: String]) throws(ExplorerProblem) -> UInt64 {
        guard let o = value(q, "offset") else { return 0 }
        guard let n = UInt64(o) else { throw ExplorerProblem(400, "offset: '\(o.prefix(40))' is not a byte offset (a whole number, 0 or more)") }
        return n
    }
}

/// Builds responses with the explorer's headers: no caching of live data, a Content-Security-
/// Policy that lets pages load only the explorer's own script and style sheet, no sniffing.
enum Reply {
    static func headers(_ type: String, cache: Bool = false) -> HTTPFields {
        [.contentType: type, .cacheControl: cache ? "max-age=300" : "no-store", .xContentTypeOptions: "nosniff",
         .contentSecurityPolicy: "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
         .crossOriginResourcePolicy: "same-origin"]
    }

    static func bytes(_ b: [UInt8], type: String, status: HTTPResponse.Status = .ok, cache: Bool = false) -> Response {
        Response(status: status, headers: headers(type, cache: cache), body: .init(byteBuffer: ByteBuffer(bytes: b)))
    }

    static func html(_ s: String, status: HTTPResponse.Status = .ok) -> Response {
        bytes(Array(s.utf8), type: "text/html; charset=utf-8", status: status)
    }

    /// JSON with snake_case keys (`peerID` becomes `peer_id`, `vramMiB` `vram_mib`).
    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok) -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.keyEncodingStrategy = .custom { path in SnakeKey(path.last!.stringValue) }
        do { return bytes(Array(try encoder.encode(value)), type: "application/json", status: status) } catch {
            return bytes(Array("{\"error\":\"cannot encode the answer\",\"status\":500}".utf8), type: "application/json", status: .internalServerError)
        }
    }

    /// The error response for `problem`: JSON under `/api/`, a page elsewhere.
    static func problem(_ problem: ExplorerProblem, path: String, selfID: String) -> Response {
        let status = HTTPResponse.Status(code: problem.status)
        if path.hasPrefix("/api") || path == "/metrics" {
            return json(["error": .string(problem.message), "status": .int(problem.status)] as [String: JSONValue], status: status)
        }
        return html(Pages.error(problem, node: selfID), status: status)
    }
}

/// A coding key converted to snake_case, reading `ID`, `MiB`, `GPUs` and `Ms` as words.
struct SnakeKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ camel: String) {
        var s = camel
        for (acronym, word) in [("GPUs", "Gpus"), ("MiB", "Mib"), ("ID", "Id"), ("RTT", "Rtt")] { s = s.replacingOccurrences(of: acronym, with: word) }
        var out = ""
        for ch in s {
            if ch.isUppercase, !out.isEmpty { out += "_" }
            out += ch.lowercased()
        }
        stringValue = out
    }
    init?(stringValue: String) { self.init(stringValue) }
    init?(intValue: Int) { nil }
}

/// Refuses requests whose Host is not a loopback name when the explorer is not public (a web
/// page elsewhere cannot reach it by rebinding a DNS name to 127.0.0.1), answers only GET,
/// and turns every error into a response: JSON under `/api/`, a page elsewhere.
struct Guard: RouterMiddleware {
    typealias Context = BasicRequestContext
    let allowPublic: Bool
    let selfID: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let path = request.uri.path
        if !allowPublic, let authority = request.head.authority, !Self.isLoopbackAuthority(authority) {
            return Reply.problem(ExplorerProblem(403, "this explorer answers only requests addressed to a loopback name, not '\(authority.prefix(80))'; start it with --public to serve other names"),
                                 path: path, selfID: selfID)
        }
        guard request.method == .get else {
            return Reply.problem(ExplorerProblem(405, "the explorer is read-only: only GET"), path: path, selfID: selfID)
        }
        do {
            return try await next(request, context)
        } catch let problem as ExplorerProblem {
            return Reply.problem(problem, path: path, selfID: selfID)
        } catch let error as HTTPError where error.status == .notFound {
            return Reply.problem(ExplorerProblem(404, "no such page: \(path.prefix(200)) (see /api for the JSON routes)"), path: path, selfID: selfID)
        } catch {
            return Reply.problem(ExplorerProblem(503, "\(error)"), path: path, selfID: selfID)
        }
    }

    /// True for `127.x.y.z`, `localhost` and `[::1]`, with or without a port.
    static func isLoopbackAuthority(_ authority: String) -> Bool {
        var host = Substring(authority)
        if host.hasPrefix("[") {
            guard let end = host.firstIndex(of: "]") else { return false }
            host = host[host.index(after: host.startIndex)..<end]
        } else if let colon = host.lastIndex(of: ":") {
            host = host[..<colon]
        }
        return Explorer.isLoopback(String(host))
    }
}
