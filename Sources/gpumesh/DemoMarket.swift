import Foundation
import MeshCore
import MeshCrypto
import MeshJobs
import MeshLedger
import MeshMarket
import MeshRuntime

/// The demo's second act: providers with simulated GPUs, two renters that find them, run real
/// sandboxed jobs with inputs and outputs, and countersign receipts that spread by gossip; then
/// reputation and points as three peers see them.
struct DemoMarket: Encodable {
    struct Provider: Encodable {
        var peer: Int
        var gpus: String
        var price: String
    }
    struct Found: Encodable {
        var renter: Int
        var query: String
        var matched: Int
        var offers: [Int]
        var milliseconds: Double
        var shardsRead: Int

        enum CodingKeys: String, CodingKey { case renter, query, matched, offers, milliseconds, shardsRead = "shards_read" }
    }
    struct Job: Encodable {
        var renter: Int
        var provider: Int?
        var name: String
        var state: String
        var outputOK: Bool
        var receipt: String?
        var charge: String?
        var milliseconds: Double
        var failure: String?

        enum CodingKeys: String, CodingKey { case renter, provider, name, state, outputOK = "output_ok", receipt, charge, milliseconds, failure }
    }
    struct View: Encodable {
        var peer: Int
        var receiptsHeld: Int
        /// Reputation of the peers that ran jobs, by peer index.
        var reputation: [String: Double]
        /// Millipoints earned (providers) and spent (renters), by peer index.
        var earned: [String: UInt64]
        var spent: [String: UInt64]

        enum CodingKeys: String, CodingKey { case peer, receiptsHeld = "receipts_held", reputation, earned, spent }
    }

    var sandbox: Bool
    var skipped: String?
    var providers: [Provider] = []
    var finds: [Found] = []
    var jobs: [Job] = []
    var receiptsSpreadMilliseconds: Double?
    var views: [View] = []
    var pointsAgree = false

    enum CodingKeys: String, CodingKey {
        case sandbox, skipped, providers, finds, jobs, receiptsSpreadMilliseconds = "receipts_spread_ms", views, pointsAgree = "points_agree"
    }

    /// GPU profiles and prices the providers cycle through.
    static let profiles: [(gpus: String, price: String)] = [
        ("1x h100-80gb", "3.5"), ("2x rtx-4090", "1.2"), ("1x a100-80gb", "2.5"), ("1x rtx-4090", "0.9"),
        ("4x rtx-3090", "0.8"), ("1x l40s", "1.8"), ("2x a100-80gb", "4.8"), ("1x rtx-3060", "0.3"),
    ]

    /// Runs the act on `peers` (#0 and #1 rent, the others provide); problems are appended.
    static func run(_ peers: [MeshNode], say: (String) -> Void, problems: inout [String]) async throws -> DemoMarket {
        guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else {
            let why = "the sandbox does not work on this host (bubblewrap, prlimit and user namespaces are needed; Bootstrap/setup.sh installs them)"
            say("jobs: skipped: \(why)")
            return DemoMarket(sandbox: false, skipped: why)
        }
        var market = DemoMarket(sandbox: true)
        let index = Dictionary(uniqueKeysWithValues: peers.enumerated().map { ($1.peerID.hex, $0) })

        // Providers publish signed capability records under the index keys.
        say("act two: a GPU market")
        for (i, p) in peers.enumerated().dropFirst(2) {
            let profile = profiles[(i - 2) % profiles.count]
            try await provideSimulated(p, gpus: profile.gpus, price: Price(parsing: profile.price)!, slots: 2, cpuModel: "demo")
            market.providers.append(Provider(peer: i, gpus: profile.gpus, price: profile.price))
        }
        say("  \(market.providers.count) providers published their GPUs: "
            + market.providers.map { "#\($0.peer) \($0.gpus) at \($0.price)" }.joined(separator: ", "))

        // Two renters search by model and VRAM.
        let queries: [(renter: Int, query: CapabilityQuery, text: String, gpus: Int, model: String)] = [
            (0, CapabilityQuery(model: "h100-80gb", minVRAMMiB: 80 * 1024, limit: 5), "h100-80gb with 80 GiB", 1, "h100-80gb"),
            (1, CapabilityQuery(model: "rtx-4090", minVRAMMiB: 24 * 1024, gpus: 2, limit: 5), "2x rtx-4090 with 24 GiB each", 2, "rtx-4090"),
        ]
        for q in queries {
            let expected = market.providers.filter { p in
                guard let parsed = try? SimulatedGPUs.parse(p.gpus) else { return false }
                return parsed.filter { $0.slug == q.model }.count >= q.gpus
            }.count
            var result = try await peers[q.renter].find(q.query)
            let deadline = Date().addingTimeInterval(15)
            while result.offers.count < min(expected, q.query.limit), Date() < deadline {
                try await Task.sleep(for: .milliseconds(100))
                result = try await peers[q.renter].find(q.query)
            }
            let found = Found(renter: q.renter, query: q.text, matched: result.matched, offers: result.offers.compactMap { index[PeerID(publicKey: $0.record.provider).hex] },
                              milliseconds: result.duration.milliseconds, shardsRead: result.shardsRead)
            market.finds.append(found)
            say(String(format: "  renter #%d looked for %@: %d match%@ in %.1f ms (%d index shards read): %@", q.renter, q.text, found.matched,
                       found.matched == 1 ? "" : "es", found.milliseconds, found.shardsRead,
                       found.offers.map { "#\($0)" }.joined(separator: ", ")))
            if found.offers.count < expected { problems.append("renter #\(q.renter) found \(found.offers.count) of \(expected) providers of \(q.text)") }
        }

        // Each renter runs two real jobs in the sandbox: an input goes in, outputs come back verified.
        let work = NSTemporaryDirectory() + "gpumesh-demo-" + Hex.encode(SecureRandom.bytes(4))
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        try await withThrowingTaskGroup(of: [Job].self) { group in
            for q in queries {
                group.addTask {
                    var done: [Job] = []
                    for n in 1...2 {
                        let text = "job \(n) of renter #\(q.renter): hello, GPU mesh\n"
                        let input = work + "/input-\(q.renter)-\(n).txt"
                        try text.write(toFile: input, atomically: true, encoding: .utf8)
                        let spec = try JobSpec(toml: """
                            name = "shout-\(q.renter)-\(n)"
                            command = ["sh", "-c", "mkdir -p result && tr a-z A-Z < input.txt > result/upper.txt && wc -c < input.txt > result/bytes"]
                            inputs = ["input.txt"]
                            outputs = ["result/*"]
                            max_price = 10
                            [resources]
                            gpus = \(q.gpus)
                            gpu_model = "\(q.model)"
                            time_limit = "30s"
                            """)
                        let start = Date()
                        var job = Job(renter: q.renter, provider: nil, name: spec.name, state: "failed", outputOK: false, receipt: nil, charge: nil,
                                      milliseconds: 0, failure: nil)
                        do {
                            let info = try await peers[q.renter].runJob(JobRequest(spec: spec, inputPaths: [input], outputRoot: work + "/out-\(q.renter)", retries: 2))
                            job.state = info.state
                            job.provider = info.peer.flatMap { index[$0] }
                            job.receipt = info.receipt
                            job.charge = info.charge
                            let upper = info.outputDirectory.flatMap { try? String(contentsOfFile: $0 + "/result/upper.txt", encoding: .utf8) }
                            job.outputOK = upper == text.uppercased()
                        } catch JobError.failed(let info) {
                            job.state = info.state
                            job.failure = info.failure
                        }
                        job.milliseconds = Date().timeIntervalSince(start) * 1000
                        done.append(job)
                    }
                    return done
                }
            }
            for try await jobs in group { market.jobs += jobs }
        }
        market.jobs.sort { ($0.renter, $0.name) < ($1.renter, $1.name) }
        for j in market.jobs {
            if j.state == "completed" && j.outputOK {
                say(String(format: "  %@: renter #%d -> provider #%d, sandboxed, output verified, receipt %@ (charge %@ points), %.0f ms",
                           j.name, j.renter, j.provider ?? -1, String(j.receipt?.prefix(12) ?? "-"), j.charge ?? "-", j.milliseconds))
            } else {
                say("  \(j.name): \(j.state) \(j.failure ?? "")")
                problems.append("job \(j.name) did not complete with the expected output: \(j.state) \(j.failure ?? "")")
            }
        }

        // The receipts spread by gossip; three peers that were not all parties compute the same points.
        let receipts = market.jobs.filter { $0.receipt != nil }.count
        let observers = Array(Set([0, peers.count / 2, peers.count - 1])).sorted()
        let spreadStart = Date()
        let deadline = spreadStart.addingTimeInterval(20)
        while Date() < deadline {
            let held = try observers.map { try peers[$0].ledgerCounts().receipts }
            if held.allSatisfy({ $0 >= receipts }) { market.receiptsSpreadMilliseconds = Date().timeIntervalSince(spreadStart) * 1000; break }
            try await Task.sleep(for: .milliseconds(50))
        }
        if let ms = market.receiptsSpreadMilliseconds {
            say(String(format: "  the %d co-signed receipts reached peers %@ by gossip within %.0f ms", receipts,
                       observers.map { "#\($0)" }.joined(separator: ", "), ms))
        } else {
            problems.append("the receipts did not reach every observer within 20 s")
        }
        let ran = Set(market.jobs.compactMap(\.provider)).sorted()
        for o in observers {
            let scores = await peers[o].recomputeReputation()
            let points = try peers[o].rewardPoints()
            var view = View(peer: o, receiptsHeld: try peers[o].ledgerCounts().receipts, reputation: [:], earned: [:], spent: [:])
            for i in ran { view.reputation["\(i)"] = ((scores[peers[i].identity.publicKey] ?? 0.5) * 1000).rounded() / 1000 }
            for e in points {
                guard let i = peers.firstIndex(where: { Hex.encode($0.identity.publicKey.bytes) == e.peer }) else { continue }
                if e.earnedMillipoints > 0 || e.jobsProvided > 0 { view.earned["\(i)", default: 0] += e.earnedMillipoints }
                if e.jobsRented > 0 { view.spent["\(i)", default: 0] += e.spentMillipoints }
            }
            market.views.append(view)
        }
        market.pointsAgree = market.views.allSatisfy { $0.earned == market.views[0].earned && $0.spent == market.views[0].spent }
        for v in market.views {
            let rep = v.reputation.sorted { Int($0.key)! < Int($1.key)! }.map { String(format: "#%@ %.3f", $0.key, $0.value) }.joined(separator: ", ")
            let earned = v.earned.sorted { Int($0.key)! < Int($1.key)! }.map { String(format: "#%@ +%.3f", $0.key, Double($0.value) / 1000) }.joined(separator: ", ")
            let spent = v.spent.sorted { Int($0.key)! < Int($1.key)! }.map { String(format: "#%@ -%.3f", $0.key, Double($0.value) / 1000) }.joined(separator: ", ")
            say("  as peer #\(v.peer) sees it (\(v.receiptsHeld) receipts): reputation \(rep); points \(earned); \(spent)")
        }
        if market.pointsAgree {
            say("  the three views hold the same receipts, so their points agree exactly; reputation is each peer's own:")
            say("  a renter rates the providers it used, while a peer with no history of its own trusts no witness yet")
            say("  and sees everyone at the 0.5 prior (Docs/ARCHITECTURE.md, \"Ledger\")")
        } else {
            problems.append("the observers' points disagree")
        }
        return market
    }
}
