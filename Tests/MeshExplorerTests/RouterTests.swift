import Foundation
import MeshCore
import MeshCrypto
import MeshMarket
import MeshRuntime
import Testing
@testable import MeshExplorer
#if canImport(Glibc)
import Glibc
#endif

/// Every route over real HTTP on 127.0.0.1, against a real three-node mesh (see `Fixture`).
@Suite("Explorer routes over real HTTP", .serialized, .timeLimit(.minutes(5)))
struct RouterTests {
    @Test("overview: the page and its JSON count the two providers' GPUs by model, 24 hours of jobs, the receipts held")
    func overview() async throws {
        let f = try await Fixture.get()
        let page = try await get(f.port, "/")
        #expect(page.status == 200 && page.contentType == "text/html; charset=utf-8")
        #expect(page.text.contains("<div id=\"live\">") && page.text.contains("id=\"chart-capacity\"") && page.text.contains("id=\"chart-jobs\""))
        #expect(page.headers["content-security-policy"]?.contains("script-src 'self'") == true)
        #expect(page.headers["x-content-type-options"] == "nosniff" && page.headers["cache-control"] == "no-store")

        let api = try await get(f.port, "/api/overview")
        #expect(api.status == 200 && api.contentType == "application/json")
        let o = try #require(api.json)
        #expect(o["peer_id"] as? String == f.explorerNode.peerID.hex)
        #expect(o["providers"] as? Int == 2 && o["gpus"] as? Int == 3 && o["vram_mib"] as? Int == 2 * 24_576 + 81_920)
        #expect(o["free_slots"] as? Int == 3 && o["total_slots"] as? Int == 3)
        let models = try #require(o["models"] as? [[String: Any]])
        #expect(models.map { $0["model"] as? String } == ["rtx-4090", "a100-80gb"])
        #expect(models.first?["gpus"] as? Int == 2 && models.first?["providers"] as? Int == 1)
        let hours = try #require(o["jobs_per_hour"] as? [[String: Any]])
        #expect(hours.count == 24)
        let receipts = f.jobID == nil ? 0 : 1
        #expect(hours.compactMap { $0["jobs"] as? Int }.reduce(0, +) == receipts)
        #expect(o["receipts_seen"] as? Int == receipts && o["own_receipts"] as? Int == receipts)
        #expect((o["peers_known"] as? Int ?? 0) >= 2 && o["heartbeat_peers"] as? Int == 2)
        #expect(o["jobs_completed"] as? Int == receipts)
        // The page shows the same figures.
        #expect(page.text.contains("<dd id=\"providers\">2</dd>") && page.text.contains("<dd id=\"gpus\">3</dd>"))
        #expect(page.text.contains("<dd id=\"receipts-seen\">\(receipts)</dd>"))
    }

    @Test("capacity: filters as find does; each bad parameter is a 400 that names it, as JSON and as a page")
    func capacity() async throws {
        let f = try await Fixture.get()
        let all = try #require(try await get(f.port, "/api/capacity").json)
        #expect(all["offers_known"] as? Int == 2 && all["matched"] as? Int == 2)
        let offers = try #require(all["offers"] as? [[String: Any]])
        #expect(offers.count == 2 && offers.allSatisfy { $0["peer_id"] is String && $0["price"] != nil && $0["gpus"] is [Any] })

        let rtx = try #require(try await get(f.port, "/api/capacity?gpu=RTX%204090").json)
        #expect((rtx["offers"] as? [[String: Any]])?.map { $0["peer_id"] as? String } == [f.p.peerID.hex])
        let cheap = try #require(try await get(f.port, "/api/capacity?max-price=2&min-vram=24GiB").json)
        #expect(cheap["matched"] as? Int == 1)
        let big = try #require(try await get(f.port, "/api/capacity?min-vram=80GiB").json)
        #expect((big["offers"] as? [[String: Any]])?.map { $0["peer_id"] as? String } == [f.q.peerID.hex])
        let two = try #require(try await get(f.port, "/api/capacity?gpus=2&gpu=").json)  // an empty field is "not given"
        #expect(two["matched"] as? Int == 1)

        for (query, field) in [("min-vram=lots", "min-vram"), ("gpus=two", "gpus"), ("gpus=0", "gpus"), ("max-price=-1", "max-price"),
                               ("min-reputation=2", "min-reputation"), ("min-reputation=nan", "min-reputation"), ("gpu=%21%21", "gpu"),
                               ("executor=vm", "executor"), ("limit=0", "limit"), ("include-busy=maybe", "include-busy"),
                               ("min-cc=eight", "min-cc"), ("vendor=AMD!", "vendor")] {
            let answer = try await get(f.port, "/api/capacity?\(query)")
            #expect(answer.status == 400, "\(query)")
            #expect(answer.contentType == "application/json")
            #expect((answer.json?["error"] as? String)?.hasPrefix(field) == true, "\(query): \(answer.text)")
            #expect(answer.json?["status"] as? Int == 400)
        }
        let page = try await get(f.port, "/capacity?min-vram=lots")
        #expect(page.status == 400 && page.contentType.hasPrefix("text/html") && page.text.contains("min-vram"))
        let filtered = try await get(f.port, "/capacity?gpu=a100-80gb")
        #expect(filtered.status == 200 && filtered.text.contains("<form class=\"filter\"") && filtered.text.contains("value=\"a100-80gb\""))
        #expect(filtered.text.contains(String(f.q.peerID.hex.prefix(12))) && !filtered.text.contains(String(f.p.peerID.hex.prefix(12)) + "</a></td>"))
    }

    @Test("peers and a peer: its offer, heartbeats, reputation with evidence, receipts, points; 404 JSON for an unknown ID, 400 for a malformed one")
    func peers() async throws {
        let f = try await Fixture.get()
        let view = try #require(try await get(f.port, "/api/peers").json)
        let list = try #require(view["peers"] as? [[String: Any]])
        #expect(view["total"] as? Int == list.count && view["providers"] as? Int == 2 && view["offset"] as? Int == 0 && view["limit"] as? Int == 100)
        // Paging: one at a time, in ID order, covers the same peers.
        var paged: [String] = []
        for offset in 0..<list.count {
            let page = try #require(try await get(f.port, "/api/peers?limit=1&offset=\(offset)").json?["peers"] as? [[String: Any]])
            paged += page.compactMap { $0["peer_id"] as? String }
        }
        #expect(paged == list.compactMap { $0["peer_id"] as? String } && paged == paged.sorted())
        #expect(try await get(f.port, "/peers?limit=1").text.contains("id=\"peers-pages\""))
        for bad in ["limit=0", "limit=x", "offset=-1", "limit=10001"] {
            #expect(try await get(f.port, "/api/peers?\(bad)").status == 400, "\(bad)")
        }
        let ids = Set(list.compactMap { $0["peer_id"] as? String })
        #expect(ids.isSuperset(of: [f.p.peerID.hex, f.q.peerID.hex]) && !ids.contains(f.explorerNode.peerID.hex))
        #expect(list.first { $0["peer_id"] as? String == f.p.peerID.hex }?["provider"] as? Bool == true)
        let listPage = try await get(f.port, "/peers")
        #expect(listPage.status == 200 && listPage.text.contains("/peers/\(f.q.peerID.hex)"))

        let answer = try await get(f.port, "/api/peers/\(f.p.peerID.hex)")
        #expect(answer.status == 200 && answer.contentType == "application/json")
        let v = try #require(answer.json)
        #expect(v["peer_id"] as? String == f.p.peerID.hex && v["public_key"] as? String == Hex.encode(f.p.identity.publicKey.bytes))
        #expect(v["is_self"] as? Bool == false && (v["contact"] as? String)?.hasPrefix("gpm1:") == true)
        let offer = try #require(v["offer"] as? [String: Any])
        #expect(offer["total_gpus"] as? Int == 2 && offer["total_slots"] as? Int == 2)
        let uptime = try #require(v["uptime"] as? [String: Any])
        #expect((uptime["heartbeats"] as? Int ?? 0) >= 1 && uptime["interval_seconds"] as? Int == 1)
        let reputation = try #require(v["reputation"] as? [String: Any])
        let receipts = try #require(v["receipts"] as? [[String: Any]])
        let points = try #require(v["points"] as? [[String: Any]])
        if let job = f.jobID {
            #expect(reputation["has_evidence"] as? Bool == true && (reputation["score"] as? Double ?? 0) > 0.5)
            #expect((reputation["explanation"] as? [String])?.contains { $0.hasPrefix("score = alpha / (alpha + beta)") } == true)
            #expect(receipts.count == 1 && receipts.first?["role"] as? String == "provider" && receipts.first?["job_id"] as? String == job)
            #expect(receipts.first?["counterpart"] as? String == f.explorerNode.peerID.hex)
            #expect(points.count == 1 && (points.first?["earned_millipoints"] as? Int ?? 0) > 0)
        } else {
            #expect(reputation["has_evidence"] as? Bool == false && reputation["score"] as? Double == 0.5)
        }
        let page = try await get(f.port, "/peers/\(f.p.peerID.hex)")
        #expect(page.status == 200 && page.text.contains("id=\"chart-points\"") && page.text.contains("<dd id=\"offer-slots\">"))
        if f.jobID != nil { #expect(page.text.contains("<pre id=\"explain\">")) }

        // The node itself, in capitals too.
        let me = try await get(f.port, "/api/peers/\(f.explorerNode.peerID.hex.uppercased())")
        #expect(me.status == 200 && me.json?["is_self"] as? Bool == true)

        let unknown = String(repeating: "ab", count: 32)
        let missing = try await get(f.port, "/api/peers/\(unknown)")
        #expect(missing.status == 404 && missing.contentType == "application/json" && missing.json?["status"] as? Int == 404)
        #expect((missing.json?["error"] as? String)?.contains(unknown) == true)
        #expect(try await get(f.port, "/peers/\(unknown)").status == 404)
        for bad in ["xyz", String(repeating: "a", count: 63), String(repeating: "g", count: 64), "%3Cscript%3E"] {
            let answer = try await get(f.port, "/api/peers/\(bad)")
            #expect(answer.status == 400 && (answer.json?["error"] as? String)?.contains("not a peer ID") == true, "\(bad)")
            let page = try await get(f.port, "/peers/\(bad)")
            #expect(page.status == 400 && !page.text.contains("<script>"), "\(bad)")
        }
    }

    @Test("jobs and a job: the list, the log from an offset, 404 for an unknown job, 400 for a bad ID or offset",
          .enabled(if: sandboxWorks, "bubblewrap with user namespaces is needed to run the fixture's job"))
    func jobs() async throws {
        let f = try await Fixture.get()
        let id = try #require(f.jobID)
        let list = try #require(try await get(f.port, "/api/jobs").json)
        let jobs = try #require(list["jobs"] as? [[String: Any]])
        #expect(jobs.count == 1 && jobs.first?["id"] as? String == id && jobs.first?["state"] as? String == "completed")
        #expect((list["states"] as? [String: Int]) == ["completed": 1])
        let page = try await get(f.port, "/jobs")
        #expect(page.status == 200 && page.text.contains("href=\"/jobs/\(id)\""))

        let job = try #require(try await get(f.port, "/api/jobs/\(id)").json)
        let log = try #require(job["log"] as? String)
        #expect(log.contains("hello from the job") && log.contains("second line"))
        #expect(job["log_offset"] as? Int == 0 && job["log_next"] as? Int == log.utf8.count)
        let tail = try #require(try await get(f.port, "/api/jobs/\(id.prefix(8))/log?offset=6").json)
        #expect(tail["log"] as? String == String(decoding: Array(log.utf8).dropFirst(6), as: UTF8.self) && tail["log_offset"] as? Int == 6)
        let end = try #require(try await get(f.port, "/api/jobs/\(id)/log?offset=\(log.utf8.count + 100)").json)
        #expect(end["log"] as? String == "")
        let jobPage = try await get(f.port, "/jobs/\(id)")
        #expect(jobPage.status == 200 && jobPage.text.contains("<pre id=\"log\" data-job=\"\(id)\"") && jobPage.text.contains("hello from the job"))

        #expect(try await get(f.port, "/api/jobs/\(String(repeating: "0", count: 32))").status == 404)
        #expect(try await get(f.port, "/jobs/\(String(repeating: "0", count: 32))").status == 404)
        for bad in ["/api/jobs/xyz", "/api/jobs/ab", "/api/jobs/\(id)/log?offset=-1", "/api/jobs/\(id)/log?offset=lots", "/jobs/not-a-job"] {
            let answer = try await get(f.port, bad)
            #expect(answer.status == 400, "\(bad): \(answer.status) \(answer.text.prefix(200))")
        }
    }

    @Test("a running job's log can be followed from offsets while it runs, and the pieces add up to the whole log",
          .enabled(if: sandboxWorks, "bubblewrap with user namespaces is needed to run a job"))
    func liveLog() async throws {
        // A mesh of its own (a fresh mesh key): the fixture's counts stay exact.
        let mesh = MeshKey.generate()
        let loop = try EventLoop(name: "explorer-live-log")
        defer { loop.shutdown() }
        let provider = try await startProvider(on: loop, bootstrap: [], gpus: "1x rtx-4090", price: "1", slots: 1, cpuModel: "Test CPU", mesh: mesh)
        let metrics = ExplorerMetrics()
        var options = loopbackOptions(bootstrap: [provider.contact], mesh: mesh)
        options.metricsFactory = metrics.factory
        let renter = try await MeshNode.start(on: loop, options: options)
        let explorer = try Explorer(node: renter, metrics: metrics, settings: .init(listen: "127.0.0.1:0"))
        let port = try await explorer.start()
        defer { Task { await explorer.stop(); await renter.stop(); await provider.stop() } }
        let request = try shellJob("follow-me", "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.4; done", on: provider.contact)
        defer { try? FileManager.default.removeItem(atPath: request.outputRoot) }
        let id = try await renter.startJob(request)
        var followed = "", offset = 0, readsWhileRunning = 0, state = ""
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            let piece = try #require(try await get(port, "/api/jobs/\(id)/log?offset=\(offset)").json)
            #expect(piece["log_offset"] as? Int == offset)
            let text = piece["log"] as? String ?? ""
            followed += text
            offset = piece["log_next"] as? Int ?? offset
            state = (piece["job"] as? [String: Any])?["state"] as? String ?? ""
            if state == "running" && !text.isEmpty { readsWhileRunning += 1 }
            if ["completed", "failed", "cancelled"].contains(state) && text.isEmpty { break }
            try await Task.sleep(for: .milliseconds(150))
        }
        #expect(state == "completed")
        #expect(readsWhileRunning >= 2, "the log grew while the job ran: \(readsWhileRunning) reads with new lines")
        let whole = try #require(try await get(port, "/api/jobs/\(id)").json)
        #expect(followed == whole["log"] as? String && followed.contains("line 1") && followed.contains("line 6"))
        let page = try await get(port, "/jobs/\(id)")
        #expect(page.text.contains("data-finished=\"true\"") && page.text.contains("line 6"))
    }

    @Test("rewards: the leaderboard of an epoch and totals per epoch; a bad epoch is a 400")
    func rewards() async throws {
        let f = try await Fixture.get()
        let v = try #require(try await get(f.port, "/api/rewards").json)
        let today = UInt64(Date().timeIntervalSince1970 * 1000) / 86_400_000
        #expect(v["current_epoch"] as? Int == Int(today))
        let board = try #require(v["leaderboard"] as? [[String: Any]])
        if f.jobID != nil {
            #expect(v["epoch"] as? Int == Int(today))
            #expect(board.map { $0["peer_id"] as? String } == [f.p.peerID.hex, f.explorerNode.peerID.hex])
            #expect((board.first?["earned_millipoints"] as? Int ?? 0) > 0 && (board.last?["spent_millipoints"] as? Int ?? 0) > 0)
            #expect((v["epochs"] as? [[String: Any]])?.count == 1 && v["peers_with_points"] as? Int == 2)
            let first = try #require(try await get(f.port, "/api/rewards?limit=1").json)
            #expect((first["leaderboard"] as? [[String: Any]])?.map { $0["peer_id"] as? String } == [f.p.peerID.hex] && first["peers_with_points"] as? Int == 2)
        } else {
            #expect(board.isEmpty)
        }
        let old = try #require(try await get(f.port, "/api/rewards?epoch=1").json)
        #expect((old["leaderboard"] as? [Any])?.isEmpty == true && old["epoch"] as? Int == 1)
        #expect(try await get(f.port, "/api/rewards?epoch=today").status == 200)
        let page = try await get(f.port, "/rewards")
        #expect(page.status == 200 && page.text.contains("id=\"chart-epochs\""))
        for bad in ["epoch=yesterday", "epoch=-3", "epoch=99999999999", "limit=0", "limit=many"] {
            let answer = try await get(f.port, "/api/rewards?\(bad)")
            #expect(answer.status == 400 && (answer.json?["error"] as? String)?.hasPrefix(String(bad.prefix { $0 != "=" })) == true, "\(bad)")
            #expect(try await get(f.port, "/rewards?\(bad)").status == 400)
        }
    }

    @Test("/metrics is Prometheus text; its counters move when datagrams flow, dropped ones by reason")
    func metrics() async throws {
        let f = try await Fixture.get()
        let first = try await get(f.port, "/metrics")
        #expect(first.status == 200 && first.contentType == "text/plain; version=0.0.4; charset=utf-8")
        let before = try parsePrometheus(first.text)
        let peer = f.explorerNode.peerID.short
        func value(_ samples: [String: Double], _ name: String, _ labels: String = "") -> Double {
            samples["\(name){peer=\"\(peer)\"\(labels)}"] ?? 0
        }
        for name in ["gpumesh_datagrams_in_total", "gpumesh_datagrams_out_total", "gpumesh_dht_lookups_total", "gpumesh_gossip_in_total",
                     "gpumesh_jobs_completed_total", "gpumesh_ledger_receipts_written_total", "gpumesh_dht_peers", "gpumesh_ledger_receipts"] {
            #expect(before["\(name){peer=\"\(peer)\"}"] != nil, "\(name) missing")
        }
        if f.jobID != nil { #expect(value(before, "gpumesh_jobs_completed_total") == 1 && value(before, "gpumesh_ledger_receipts") == 1) }

        // Traffic: pings out and back, and a datagram that does not open.
        _ = try await f.explorerNode.ping(f.p.contact)
        let junk = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        defer { close(junk) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(f.explorerNode.udpAddress.port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let garbage = [UInt8](repeating: 0x47, count: 5)
        _ = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(junk, garbage, garbage.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(try await eventually(10) {
            let after = try parsePrometheus(try await get(f.port, "/metrics").text)
            return value(after, "gpumesh_datagrams_dropped_total", ",reason=\"too_short\"") >= value(before, "gpumesh_datagrams_dropped_total", ",reason=\"too_short\"") + 1
                && value(after, "gpumesh_datagrams_out_total") > value(before, "gpumesh_datagrams_out_total")
                && value(after, "gpumesh_probes_sent_total") > value(before, "gpumesh_probes_sent_total")
        })
    }

    @Test("assets, /api index, partial pages, unknown routes, other methods, and Host names that are not loopback")
    func edges() async throws {
        let f = try await Fixture.get()
        let js = try await get(f.port, "/assets/explorer.js")
        #expect(js.status == 200 && js.contentType == "text/javascript; charset=utf-8" && js.text.contains("partial"))
        let css = try await get(f.port, "/assets/explorer.css")
        #expect(css.status == 200 && css.contentType == "text/css; charset=utf-8")
        let index = try #require(try await get(f.port, "/api").json)
        #expect((index["routes"] as? [[String: String]])?.contains { $0["path"] == "/api/peers/{peer_id}" } == true)

        let partial = try await get(f.port, "/?partial=1")
        #expect(partial.status == 200 && !partial.text.contains("<html") && partial.text.contains("id=\"providers\""))

        let nope = try await get(f.port, "/api/nonesuch")
        #expect(nope.status == 404 && nope.contentType == "application/json" && nope.json?["status"] as? Int == 404)
        let nopePage = try await get(f.port, "/nonesuch")
        #expect(nopePage.status == 404 && nopePage.contentType.hasPrefix("text/html"))
        #expect(try await get(f.port, "/api/overview", method: "POST").status == 405)
        #expect(try await get(f.port, "/api/overview", method: "DELETE").status == 405)

        // A port already taken: start fails with the reason, nothing half-started.
        let second = try Explorer(node: f.explorerNode, metrics: ExplorerMetrics(), settings: .init(listen: "127.0.0.1:\(f.port)"))
        await #expect(throws: ExplorerProblem.self) { _ = try await second.start() }
        #expect(try await get(f.port, "/api/overview").status == 200)

        // DNS rebinding: a page elsewhere whose name resolves to 127.0.0.1 sends its own Host.
        let rebound = try await get(f.port, "/api/overview", host: "evil.example:\(f.port)")
        #expect(rebound.status == 403 && (rebound.json?["error"] as? String)?.contains("--public") == true)
        for host in ["localhost:\(f.port)", "127.0.0.1", "127.1.2.3:80", "[::1]:\(f.port)"] {
            #expect(try await get(f.port, "/api/overview", host: host).status == 200, "\(host)")
        }
    }

    @Test("what peers supply is text on every page: markup in a CPU name is escaped")
    func escaping() async throws {
        let f = try await Fixture.get()
        for path in ["/capacity", "/peers/\(f.q.peerID.hex)"] {
            let page = try await get(f.port, path)
            #expect(page.status == 200)
            #expect(!page.text.contains("<script>alert(1)</script>"), "\(path)")
            #expect(page.text.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;co&quot;"), "\(path)")
        }
    }
}

/// Parses Prometheus text exposition format (version 0.0.4): `# HELP`/`# TYPE` comments and
/// `name{labels} value` samples. Throws on any other line; returns "name{labels}" to value.
func parsePrometheus(_ text: String) throws -> [String: Double] {
    var samples: [String: Double] = [:]
    let name = "[a-zA-Z_:][a-zA-Z0-9_:]*"
    let label = "[a-zA-Z_][a-zA-Z0-9_]*=\"(?:[^\"\\\\\\n]|\\\\.)*\""
    let sample = try Regex("^(\(name)(?:\\{(?:\(label)(?:,\(label))*)?\\})?) (-?[0-9.eE+-]+|NaN|[+-]Inf)$")
    let comment = try Regex("^# (?:HELP|TYPE) \(name) .*$")
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
        if line.wholeMatch(of: comment) != nil { continue }
        guard let m = line.wholeMatch(of: sample), let key = m.output[1].substring, let v = m.output[2].substring, let value = Double(v) else {
            throw HTTPFailure(description: "not Prometheus text: \(line)")
        }
        samples[String(key)] = value
    }
    return samples
}
