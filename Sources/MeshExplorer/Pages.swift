import Foundation
import MeshCore
import MeshLedger
import MeshMarket
import MeshRuntime

/// HTML text helpers. Everything a peer or the ledger supplies (model slugs, regions, CPU
/// names, job names, logs) goes through `escape` before it reaches a page.
enum HTML {
    /// `s` with `& < > " '` replaced by entities.
    static func escape(_ s: some StringProtocol) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for ch in s.unicodeScalars {
            switch ch {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.unicodeScalars.append(ch)
            }
        }
        return out
    }

    /// `s` for a URL query value.
    static func query(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }

    /// A table: header cells and rows of cells (already HTML); `empty` when there are no rows.
    static func table(id: String, _ head: [String], _ rows: [[String]], empty: String) -> String {
        guard !rows.isEmpty else { return "<p class=\"empty\" id=\"\(id)-empty\">\(escape(empty))</p>" }
        var out = "<table id=\"\(id)\"><thead><tr>" + head.map { "<th>\(escape($0))</th>" }.joined() + "</tr></thead><tbody>"
        for r in rows { out += "<tr>" + r.map { "<td>\($0)</td>" }.joined() + "</tr>" }
        return out + "</tbody></table>"
    }

    /// Labelled figures: (id, label, value HTML).
    static func stats(_ items: [(String, String, String)]) -> String {
        "<dl class=\"stats\">" + items.map { "<div><dt>\(escape($0.1))</dt><dd id=\"\($0.0)\">\($0.2)</dd></div>" }.joined() + "</dl>"
    }

    /// A link to a peer's page, showing the first 12 digits of its ID.
    static func peer(_ id: String) -> String {
        "<a class=\"peer\" href=\"/peers/\(escape(id))\" title=\"\(escape(id))\">\(escape(id.prefix(12)))</a>"
    }


    /// Millipoints as points with three decimals.
    static func points(_ milli: UInt64) -> String { String(format: "%.3f", Double(milli) / 1000) }

    /// A Unix-ms time as UTC.
    static func time(_ ms: UInt64) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd HH:mm:ss'Z'"
        return f.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }

    /// An epoch's day, `yyyy-MM-dd`.
    static func day(_ epoch: UInt64) -> String { String(time(epoch * Rewards.epochMilliseconds).prefix(10)) }

    /// A duration for people: 3d 4h, 5h 6m, 7m 8s, 9.5s.
    static func duration(_ seconds: Double) -> String {
        let s = Int(seconds)
        if s >= 86_400 { return "\(s / 86_400)d \(s % 86_400 / 3600)h" }
        if s >= 3600 { return "\(s / 3600)h \(s % 3600 / 60)m" }
        if s >= 60 { return "\(s / 60)m \(s % 60)s" }
        if seconds < 1 { return String(format: "%.0f ms", seconds * 1000) }
        return String(format: "%.1fs", seconds)
    }

    /// A share as a percentage.
    static func percent(_ v: Double) -> String { String(format: "%.1f%%", v * 100) }

    /// GPU groups as `2x rtx-4090 (24 GiB)`.
    static func gpus(_ groups: [GPUGroup]) -> String {
        escape(groups.map { "\($0.count)x \($0.slug) (\(ByteSize.describe(mib: $0.vramMiB)))" }.joined(separator: ", "))
    }
}

/// The explorer's pages. Each page is a fixed frame (title, navigation) around a live part,
/// `<div id="live">`, which the page's script fetches again every few seconds (`?partial=1`
/// returns only that part) and swaps in place.
enum Pages {
    /// The navigation entries: path and label.
    static let navigation = [("/", "Overview"), ("/capacity", "Capacity"), ("/peers", "Peers"), ("/jobs", "Jobs"), ("/rewards", "Rewards")]

    /// A whole page around `live`, with `lead` before it and `extra` after it (both outside the
    /// live part). `refresh`: seconds between refreshes of the live part (0: none).
    static func page(title: String, path: String, node: String, refresh: Int, live: String, lead: String = "", extra: String = "") -> String {
        let nav = navigation.map { p, label in
            let current = p == "/" ? path == "/" : path.hasPrefix(p)
            return "<a href=\"\(p)\"\(current ? " class=\"current\" aria-current=\"page\"" : "")>\(label)</a>"
        }.joined() + "<a href=\"/metrics\">Metrics</a><a href=\"/api\">API</a>"
        return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
        <title>\(HTML.escape(title)) · GPUMesh explorer</title>
        <link rel="stylesheet" href="/assets/explorer.css"><script src="/assets/explorer.js" defer></script></head>
        <body data-refresh="\(refresh)">
        <header><span class="brand">GPUMesh explorer</span><span class="self">as seen by \(HTML.peer(node))</span><nav>\(nav)</nav></header>
        <main><h1>\(HTML.escape(title))</h1>
        \(lead)<div id="live">\(live)</div>\(extra)
        <p class="updated">\(refresh > 0 ? "refreshes every \(refresh) s; " : "")updated <span id="updated">\(HTML.time(UInt64(Date().timeIntervalSince1970 * 1000)))</span></p>
        </main></body></html>
        """
    }

    /// An error page.
    static func error(_ problem: ExplorerProblem, node: String) -> String {
        page(title: problem.status == 404 ? "Not found" : (problem.status == 400 ? "Bad request" : "Unavailable"), path: "", node: node, refresh: 0,
             live: "<p class=\"error\" id=\"error\">\(HTML.escape(problem.message))</p>")
    }

    // MARK: Overview

    static func overview(_ v: OverviewView) -> String {
        let lastHour = v.jobsPerHour.last?.jobs ?? 0
        let day = v.jobsPerHour.reduce(0) { $0 + $1.jobs }
        var out = HTML.stats([
            ("peers-known", "Peers known (DHT)", "\(v.peersKnown)"),
            ("providers", "Providers", "\(v.providers)"),
            ("gpus", "GPUs offered", "\(v.gpus)"),
            ("vram", "GPU memory", ByteSize.describe(mib: v.vramMiB)),
            ("free-slots", "Free job slots", "\(v.freeSlots) / \(v.totalSlots)"),
            ("jobs-hour", "Jobs, last hour", "\(lastHour)"),
            ("jobs-day", "Jobs, last 24 h", "\(day)"),
            ("receipts-seen", "Receipts seen", "\(v.receiptsSeen)"),
            ("heartbeats-alive", "Peers heard alive", "\(v.heartbeatPeersAlive) / \(v.heartbeatPeers)"),
        ])
        out += "<section><h2>Capacity by model</h2>"
        out += Chart.rows(id: "chart-capacity", title: "GPUs offered by model", bars: v.models.map {
            .init(label: $0.model, value: Double($0.gpus), tooltip: "\($0.model): \($0.gpus) GPUs, \(ByteSize.describe(mib: $0.vramMiB)) in all, \($0.providers) providers, \($0.freeSlots) free slots")
        }, unit: "GPU(s)")
        out += HTML.table(id: "models", ["Model", "Vendor", "GPUs", "Total VRAM", "Providers", "Free slots"], v.models.map {
            ["<a href=\"/capacity?gpu=\(HTML.query($0.model))\">\(HTML.escape($0.model))</a>", HTML.escape($0.vendor), "\($0.gpus)",
             ByteSize.describe(mib: $0.vramMiB), "\($0.providers)", "\($0.freeSlots)"]
        }, empty: "No provider has announced an offer yet.")
        out += "</section><section><h2>Jobs over time</h2>"
        out += Chart.columns(id: "chart-jobs", title: "Jobs per hour, last 24 hours (UTC)", bars: v.jobsPerHour.map {
            let hour = String(HTML.time($0.hourStart * 1000).dropFirst(11).prefix(2))
            return .init(label: hour, value: Double($0.jobs), tooltip: "\(HTML.time($0.hourStart * 1000).prefix(16)): \($0.jobs) jobs")
        }, labelEvery: 3)
        out += "</section><section><h2>This node</h2>"
        out += HTML.stats([
            ("node-peer-id", "Peer ID", HTML.peer(v.peerID)),
            ("node-contact", "Contact", "<code>\(HTML.escape(v.contact))</code>"),
            ("node-uptime", "Uptime", HTML.duration(v.uptimeSeconds)),
            ("node-version", "Version", HTML.escape(v.version)),
            ("dht-joined", "DHT", v.dhtJoined ? "joined, \(v.dhtRecords) records held" : "not joined yet"),
            ("datagrams", "Datagrams in / out / dropped", "\(v.datagramsIn) / \(v.datagramsOut) / \(v.datagramsDropped)"),
            ("own-jobs", "Own jobs running / done / failed", "\(v.jobsRunning) / \(v.jobsCompleted) / \(v.jobsFailed)"),
            ("ledger", "Ledger: own receipts, reports, peers", "\(v.ownReceipts), \(v.reportsSeen), \(v.ledgerPeers)"),
        ])
        return out + "</section>"
    }

    // MARK: Capacity

    /// The filter form, filled in with `values` (field name to text).
    static func capacityForm(_ values: [String: String]) -> String {
        func field(_ name: String, _ label: String, _ hint: String) -> String {
            "<label>\(label) <input name=\"\(name)\" value=\"\(HTML.escape(values[name] ?? ""))\" placeholder=\"\(hint)\" size=\"10\"></label>"
        }
        return "<form class=\"filter\" method=\"get\" action=\"/capacity\">"
            + field("gpu", "Model", "rtx-4090") + field("min-vram", "Least VRAM", "24GiB") + field("gpus", "Least GPUs", "1")
            + field("max-price", "Highest price", "2.5") + field("min-reputation", "Least reputation", "0.5")
            + field("executor", "Executor", "sandbox") + field("limit", "Rows", "50")
            + "<label><input type=\"checkbox\" name=\"include-busy\" value=\"1\"\(values["include-busy"] != nil ? " checked" : "")> include busy</label>"
            + "<button type=\"submit\">Filter</button></form>"
    }

    static func capacity(_ v: CapacityView) -> String {
        var out = HTML.stats([("offers-known", "Offers heard", "\(v.offersKnown)"), ("offers-matched", "Matching", "\(v.matched)")])
        out += HTML.table(id: "offers", ["Provider", "GPUs", "Price / GPU-h", "Slots free", "Reputation", "Executors", "Region", "Host"], v.offers.map {
            [HTML.peer($0.peerID), HTML.gpus($0.gpus), "\($0.price)", "\($0.freeSlots) / \($0.totalSlots)",
             $0.reputation.map { String(format: "%.3f", $0) } ?? "new", HTML.escape($0.executors.map(\.rawValue).joined(separator: ", ")),
             $0.region.isEmpty ? "" : HTML.escape($0.region), HTML.escape("\($0.cpuModel), \($0.cpuCores) cores, \(ByteSize.describe(mib: $0.ramMiB)) RAM")]
        }, empty: "No offer matches.")
        return out
    }

    // MARK: Peers

    static func peers(_ v: PeersView) -> String {
        var pages = ""
        if v.total > v.limit {
            let shown = v.peers.isEmpty ? "none" : "\(v.offset + 1)-\(v.offset + v.peers.count)"
            pages = "<nav class=\"pages\" id=\"peers-pages\">peers \(shown) of \(v.total)"
            if v.offset > 0 { pages += " <a href=\"/peers?offset=\(max(0, v.offset - v.limit))&amp;limit=\(v.limit)\">previous</a>" }
            if v.offset + v.limit < v.total { pages += " <a href=\"/peers?offset=\(v.offset + v.limit)&amp;limit=\(v.limit)\">next</a>" }
            pages += "</nav>"
        }
        return HTML.stats([("peers-listed", "Peers", "\(v.total)"), ("peers-providers", "Providers", "\(v.providers)")]) + pages
            + HTML.table(id: "peers", ["Peer", "Contact", "Routing table", "Provider", "Availability", "Reputation"], v.peers.map {
                [HTML.peer($0.peerID), $0.contact.map { "<code>\(HTML.escape($0))</code>" } ?? "", $0.inRoutingTable ? "yes" : "",
                 $0.provider ? "yes" : "", $0.availability.map(HTML.percent) ?? "", $0.reputation.map { String(format: "%.3f", $0) } ?? ""]
            }, empty: "This node knows no other peer yet.")
    }

    static func peer(_ v: PeerView) -> String {
        var facts: [(String, String, String)] = [
            ("peer-id", "Peer ID", "<code>\(HTML.escape(v.peerID))</code>\(v.isSelf ? " (this node)" : "")"),
            ("peer-reputation", "Reputation", String(format: "%.4f", v.reputation.score) + (v.reputation.hasEvidence ? "" : " (no evidence: the prior)")),
        ]
        if let k = v.publicKey { facts.append(("peer-key", "Public key", "<code>\(HTML.escape(k))</code>")) }
        if let c = v.contact { facts.append(("peer-contact", "Contact", "<code>\(HTML.escape(c))</code>")) }
        if let b = v.bucket { facts.append(("peer-bucket", "Routing table", "bucket \(b), seen \(HTML.duration(Double(v.lastSeenMsAgo ?? 0) / 1000)) ago")) }
        let earned = v.points.reduce(0) { $0 + $1.earnedMillipoints }, spent = v.points.reduce(0) { $0 + $1.spentMillipoints }
        facts.append(("peer-points", "Points earned / spent", "\(HTML.points(earned)) / \(HTML.points(spent))"))
        facts.append(("peer-receipts", "Receipts held", v.receipts.count < v.receiptsShown ? "\(v.receipts.count)" : "\(v.receipts.count)+"))
        var out = HTML.stats(facts)

        out += "<section><h2>Offer</h2>"
        if let o = v.offer {
            out += HTML.stats([
                ("offer-gpus", "GPUs", HTML.gpus(o.gpus)), ("offer-price", "Price per GPU-hour", "\(o.price)"),
                ("offer-slots", "Slots free", "\(o.freeSlots) / \(o.totalSlots)"),
                ("offer-executors", "Executors", HTML.escape(o.executors.map(\.rawValue).joined(separator: ", "))),
                ("offer-host", "Host", HTML.escape("\(o.cpuModel), \(o.cpuCores) cores, \(ByteSize.describe(mib: o.ramMiB)) RAM, \(ByteSize.describe(mib: o.diskFreeMiB)) disk free")),
                ("offer-region", "Region", o.region.isEmpty ? "not given" : HTML.escape(o.region)),
                ("offer-record", "Record", "sequence \(o.sequence), expires \(HTML.time(o.expiresAtMilliseconds))"),
            ])
        } else {
            out += "<p class=\"empty\" id=\"offer-none\">No live offer heard from this peer.</p>"
        }
        out += "</section><section><h2>Uptime</h2>"
        if let u = v.uptime {
            out += HTML.stats([
                ("uptime-availability", "Heartbeats heard", "\(HTML.percent(u.availability)) of those expected (\(u.heartbeats) heard)"),
                ("uptime-state", "State", u.silent ? "silent (no heartbeat for two intervals)" : "alive"),
                ("uptime-reported", "Reported uptime", HTML.duration(Double(u.reportedUptimeSeconds))),
                ("uptime-window", "First / last heard", "\(HTML.time(u.firstHeardMs)) / \(HTML.time(u.lastHeardMs))"),
            ])
        } else {
            out += "<p class=\"empty\" id=\"uptime-none\">No heartbeat heard from this peer (only providers send them).</p>"
        }
        out += "</section><section><h2>Reputation, explained</h2>"
        out += v.reputation.explanation.isEmpty
            ? "<p class=\"empty\" id=\"explain-none\">No evidence about this peer: its score is the prior, 0.5.</p>"
            : "<pre id=\"explain\">\(HTML.escape(v.reputation.explanation.joined(separator: "\n")))</pre>"
        out += "</section><section><h2>Points per epoch</h2>"
        out += Chart.columns(id: "chart-points", title: "Points earned per epoch (UTC day)", bars: v.points.suffix(30).map {
            .init(label: String(HTML.day($0.epoch).dropFirst(5)), value: Double($0.earnedMillipoints) / 1000,
                  tooltip: "\(HTML.day($0.epoch)): earned \(HTML.points($0.earnedMillipoints)), spent \(HTML.points($0.spentMillipoints))")
        }, labelEvery: max(1, v.points.suffix(30).count / 10))
        out += HTML.table(id: "points", ["Epoch", "Day", "Earned", "Spent", "GPU-hours", "Jobs provided / rented"], v.points.reversed().map {
            ["<a href=\"/rewards?epoch=\($0.epoch)\">\($0.epoch)</a>", HTML.day($0.epoch), HTML.points($0.earnedMillipoints), HTML.points($0.spentMillipoints),
             String(format: "%.3f", Double($0.gpuMilliseconds) / 3_600_000), "\($0.jobsProvided) / \($0.jobsRented)"]
        }, empty: "No receipt names this peer.")
        out += "</section><section><h2>Receipts (newest first, at most \(v.receiptsShown))</h2>"
        out += HTML.table(id: "receipts", ["Started", "Role", "With", "GPUs", "GPU time", "Charge", "Exit", "Source"], v.receipts.map {
            [HTML.time($0.startedAtMs), $0.role, HTML.peer($0.counterpart), "\($0.gpus)x \(HTML.escape($0.gpuModel))",
             HTML.duration(Double($0.gpuMs) / 1000), HTML.points($0.chargeMillipoints), "\($0.exitStatus)", $0.source]
        }, empty: "No receipt names this peer.")
        return out + "</section>"
    }

    // MARK: Jobs

    static func jobs(_ v: JobsView) -> String {
        HTML.stats(v.states.sorted { $0.key < $1.key }.map { ("jobs-\($0.key)", $0.key, "\($0.value)") } + [("jobs-total", "all", "\(v.jobs.count)")])
            + HTML.table(id: "jobs", ["Job", "Name", "Role", "State", "Peer", "Created", "Wall time", "Exit"], v.jobs.map {
                ["<a href=\"/jobs/\($0.id)\"><code>\(HTML.escape($0.id.prefix(12)))</code></a>", HTML.escape($0.name), $0.role,
                 "<span class=\"state \(HTML.escape($0.state))\">\(HTML.escape($0.state))</span>", $0.peer.map(HTML.peer) ?? "",
                 HTML.time(UInt64($0.createdAt * 1000)), $0.wallSeconds.map { HTML.duration($0) } ?? "", $0.exitStatus.map { "\($0)" } ?? ""]
            }, empty: "This node has run no job in either role.")
    }

    static func job(_ v: JobView) -> String {
        let j = v.job
        var facts: [(String, String, String)] = [
            ("job-id", "Job", "<code>\(HTML.escape(j.id))</code>"), ("job-name", "Name", HTML.escape(j.name)), ("job-role", "Role", j.role),
            ("job-state", "State", "<span class=\"state \(HTML.escape(j.state))\">\(HTML.escape(j.state))</span>"),
            ("job-attempts", "Attempts", "\(j.attempts)"),
            ("job-input", "Input sent", "\(j.inputBytesDone) / \(j.inputBytes) bytes"),
            ("job-output", "Output received", "\(j.outputBytesDone) / \(j.outputBytes) bytes"),
            ("job-log-bytes", "Log", "\(j.logBytes) bytes"),
        ]
        if let p = j.peer { facts.append(("job-peer", "Peer", HTML.peer(p))) }
        if let w = j.wallSeconds { facts.append(("job-wall", "Wall time", HTML.duration(w))) }
        if let e = j.exitStatus { facts.append(("job-exit", "Exit status", "\(e)\(j.timedOut == true ? " (timed out)" : "")")) }
        if let c = j.charge { facts.append(("job-charge", "Charge", HTML.escape(c))) }
        if let r = j.receipt { facts.append(("job-receipt", "Receipt", "<code>\(HTML.escape(r))</code>")) }
        if let f = j.failure { facts.append(("job-failure", "Failure", HTML.escape(f))) }
        return HTML.stats(facts)
    }

    /// The log part of a job page: outside the live part, so the script appends to it rather
    /// than replacing it.
    static func jobLog(_ v: JobView) -> String {
        "<section><h2>Log</h2><pre id=\"log\" data-job=\"\(HTML.escape(v.job.id))\" data-next=\"\(v.logNext)\" data-finished=\"\(v.job.isFinished)\">"
            + HTML.escape(v.log) + "</pre></section>"
    }

    // MARK: Rewards

    static func rewards(_ v: RewardsView) -> String {
        var out = HTML.stats([
            ("rewards-epoch", "Epoch", "\(v.epoch) (\(HTML.day(v.epoch))\(v.epoch == v.currentEpoch ? ", today" : ""))"),
            ("rewards-peers", "Peers with points", "\(v.peersWithPoints)\(v.peersWithPoints > v.leaderboard.count ? " (first \(v.leaderboard.count) shown)" : "")"),
            ("rewards-earned", "Earned in all", HTML.points(v.epochs.first { $0.epoch == v.epoch }?.earnedMillipoints ?? 0)),
        ])
        out += "<nav class=\"epochs\">" + v.epochs.suffix(14).map {
            "<a href=\"/rewards?epoch=\($0.epoch)\"\($0.epoch == v.epoch ? " class=\"current\"" : "")>\(HTML.day($0.epoch))</a>"
        }.joined(separator: " ") + "</nav>"
        out += HTML.table(id: "leaderboard", ["Rank", "Peer", "Earned", "Spent", "GPU-hours", "Jobs provided / rented"], v.leaderboard.enumerated().map { i, e in
            ["\(i + 1)", HTML.peer(e.peerID), HTML.points(e.earnedMillipoints), HTML.points(e.spentMillipoints),
             String(format: "%.3f", Double(e.gpuMs) / 3_600_000), "\(e.jobsProvided) / \(e.jobsRented)"]
        }, empty: "No receipt in this epoch.")
        out += "<section><h2>Points per epoch</h2>"
        out += Chart.columns(id: "chart-epochs", title: "Points earned by all providers per epoch (UTC day)", bars: v.epochs.suffix(30).map {
            .init(label: String(HTML.day($0.epoch).dropFirst(5)), value: Double($0.earnedMillipoints) / 1000,
                  tooltip: "\(HTML.day($0.epoch)): \(HTML.points($0.earnedMillipoints)) points, \($0.jobs) jobs")
        }, labelEvery: max(1, v.epochs.suffix(30).count / 10))
        return out + "</section>"
    }
}
