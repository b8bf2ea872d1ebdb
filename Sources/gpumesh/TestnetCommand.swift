import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
import MeshJobs
import MeshLedger
import MeshMarket
import MeshRuntime

extension GPUMesh {
    /// `gpumesh testnet`: N real nodes in one process on loopback, under churn, loss and load.
    struct Testnet: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run N real nodes in one process on loopback (sharing event loops) and report how the mesh held up.",
            discussion: """
            Every peer runs the real stack (sealed UDP, Noise channels, DHT, gossip, ledger); half of them
            provide simulated GPUs (--gpus). For --duration: every second a few lookups for live peers'
            IDs and a gossip message from a random peer; --churn replaces that share of the peers per
            minute (a leaver stops, a newcomer joins through peer #0); --loss and --delay are injected
            into every outgoing datagram; --jobs-per-min sandboxed jobs run between random renters and
            the providers they find. The report (terminal, and --report FILE as JSON) gives lookup
            success and latency, gossip coverage and latency, jobs done/failed/retried, and ledger
            agreement across peers. Docs/RESEARCH.md explains every field.
            """)

        @Option(help: ArgumentHelp("Peers (2-500).", valueName: "n")) var peers = 50
        @Option(help: ArgumentHelp("Event loops the peers share (1-16).", valueName: "n")) var loops = 2
        @Option(help: ArgumentHelp("How long to run, e.g. 60s or 2m.", valueName: "duration")) var duration = "60s"
        @Option(help: ArgumentHelp("Share of the peers replaced per minute (0 to 1).", valueName: "rate")) var churn = 0.0
        @Option(help: ArgumentHelp("Share of outgoing datagrams dropped (0 to 0.5).", valueName: "p")) var loss = 0.0
        @Option(help: ArgumentHelp("Delay added to every datagram, ms (0-1000).", valueName: "ms")) var delay = 0
        @Option(help: ArgumentHelp("Jobs started per minute across the mesh (0: none; needs a working sandbox).", valueName: "n")) var jobsPerMin = 0
        @Option(help: ArgumentHelp("GPUs of the providers: 'mixed' or a profile such as '2x rtx-4090'.", valueName: "gpus")) var gpus = "mixed"
        @Option(help: ArgumentHelp("A private mesh key file to use (default: a fresh key).", valueName: "file")) var meshKey: String?
        @Option(help: ArgumentHelp("Seed for the peers' choices and the injected loss.", valueName: "n")) var seed: UInt64 = 1
        @Option(help: ArgumentHelp("Write the report (JSON) here.", valueName: "file")) var report: String?
        @Flag(help: "Print the report as JSON.") var json = false

        var seconds: Int { DurationText.seconds(duration) ?? -1 }

        func validate() throws {
            guard (2...500).contains(peers) else { throw ValidationError("--peers must be 2 to 500") }
            guard (1...16).contains(loops) else { throw ValidationError("--loops must be 1 to 16") }
            guard (1...86_400).contains(seconds) else { throw ValidationError("--duration must be 1s to 24h, such as 60s or 2m (got '\(duration)')") }
            guard (0...1).contains(churn) else { throw ValidationError("--churn must be 0 to 1 (a share of the peers per minute)") }
            guard (0...0.5).contains(loss) else { throw ValidationError("--loss must be 0 to 0.5") }
            guard (0...1_000).contains(delay) else { throw ValidationError("--delay must be 0 to 1000 ms") }
            guard (0...600).contains(jobsPerMin) else { throw ValidationError("--jobs-per-min must be 0 to 600") }
            if gpus != "mixed" { do { _ = try SimulatedGPUs.parse(gpus) } catch { throw ValidationError("--gpus: \(error)") } }
        }

        func run() async throws {
            bootstrapLogging("critical")
            func progress(_ text: String) { benchProgress(text, json: json) }
            if jobsPerMin > 0 {
                guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else {
                    throw CLIError("--jobs-per-min needs the sandbox, which does not work here (bubblewrap, prlimit and user namespaces)")
                }
            }
            let key: MeshKey
            if let meshKey { do { key = try MeshKey.read(from: meshKey) } catch { throw CLIError("\(error)") } } else { key = MeshKey.generate() }
            let net = try await TestnetRun.start(peers: peers, loops: loops, meshKey: key, loss: loss, delay: delay, gpus: gpus, seed: seed, progress: progress)
            let result = try await net.drive(seconds: seconds, churn: churn, jobsPerMinute: jobsPerMin, progress: progress)
            progress("")
            var r = result
            r.mesh = key.fingerprint
            r.settings = .init(peers: peers, loops: loops, durationSeconds: seconds, churn: churn, loss: loss, delayMilliseconds: delay,
                               jobsPerMinute: jobsPerMin, gpus: gpus, seed: seed)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            let data = try encoder.encode(r)
            if let report { guard FileManager.default.createFile(atPath: report, contents: data + Data("\n".utf8)) else { throw CLIError("cannot write \(report)") } }
            if json { FileHandle.standardOutput.write(data + Data("\n".utf8)) } else { print(r.summary) }
        }
    }
}

/// What `gpumesh testnet` reports.
struct TestnetReport: Codable {
    struct Settings: Codable {
        var peers: Int, loops: Int, durationSeconds: Int, churn: Double, loss: Double, delayMilliseconds: Int, jobsPerMinute: Int, gpus: String, seed: UInt64
        enum CodingKeys: String, CodingKey {
            case peers, loops, churn, loss, gpus, seed, durationSeconds = "duration_s", delayMilliseconds = "delay_ms", jobsPerMinute = "jobs_per_min"
        }
    }
    struct Lookups: Codable {
        var lookups = 0, succeeded = 0, failed = 0
        var success = 0.0, latencyMsP50 = 0.0, latencyMsP99 = 0.0
        enum CodingKeys: String, CodingKey { case lookups, succeeded, failed, success, latencyMsP50 = "latency_ms_p50", latencyMsP99 = "latency_ms_p99" }
    }
    struct GossipFigures: Codable {
        var messages = 0, deliveries = 0, expectedDeliveries = 0
        var coverage = 0.0, latencyMsP50 = 0.0, latencyMsP99 = 0.0
        enum CodingKeys: String, CodingKey {
            case messages, deliveries, coverage, expectedDeliveries = "expected_deliveries", latencyMsP50 = "latency_ms_p50", latencyMsP99 = "latency_ms_p99"
        }
    }
    struct Jobs: Codable {
        var started = 0, completed = 0, failed = 0, retried = 0
    }
    struct LedgerAgreement: Codable {
        var receipts = 0, peersChecked = 0, peersHoldingAll = 0
        var pointsAgree = true
        enum CodingKeys: String, CodingKey { case receipts, pointsAgree = "points_agree", peersChecked = "peers_checked", peersHoldingAll = "peers_holding_all" }
    }
    struct Churn: Codable {
        var left = 0, joined = 0, liveAtEnd = 0
        enum CodingKeys: String, CodingKey { case left, joined, liveAtEnd = "live_at_end" }
    }

    var mesh = ""
    var settings: Settings?
    var churn = Churn()
    var lookups = Lookups()
    var gossip = GossipFigures()
    var jobs = Jobs()
    var ledger = LedgerAgreement()
    var counters: [String: Int] = [:]

    var summary: String {
        var l: [String] = []
        if let s = settings {
            l.append("testnet: \(s.peers) peers on \(s.loops) loops for \(s.durationSeconds) s (churn \(s.churn)/min, loss \(s.loss), delay \(s.delayMilliseconds) ms), mesh \(mesh)")
        }
        l.append("churn: \(churn.left) left, \(churn.joined) joined, \(churn.liveAtEnd) live at the end")
        l.append(String(format: "lookups: %d/%d succeeded (%.4f), latency p50 %.1f ms p99 %.1f ms", lookups.succeeded, lookups.lookups, lookups.success,
                        lookups.latencyMsP50, lookups.latencyMsP99))
        l.append(String(format: "gossip: %d messages, %d/%d deliveries (coverage %.4f), latency p50 %.1f ms p99 %.1f ms", gossip.messages, gossip.deliveries,
                        gossip.expectedDeliveries, gossip.coverage, gossip.latencyMsP50, gossip.latencyMsP99))
        l.append("jobs: \(jobs.started) started, \(jobs.completed) completed, \(jobs.failed) failed, \(jobs.retried) needed another provider")
        l.append("ledger: \(ledger.receipts) receipts; \(ledger.peersHoldingAll)/\(ledger.peersChecked) peers checked hold them all; points \(ledger.pointsAgree ? "agree" : "DISAGREE") among those")
        let dropped = counters["datagrams_dropped_injected"] ?? 0
        l.append("datagrams: \(counters["datagrams_out"] ?? 0) sent, \(counters["datagrams_in"] ?? 0) received, \(dropped) dropped by the injected loss")
        return l.joined(separator: "\n")
    }
}

/// The running testnet (its peers, their loops, what is measured).
final class TestnetRun: @unchecked Sendable {
    let loops: [EventLoop]
    let meshKey: MeshKey
    let impairment: Impairment?
    let gpus: String
    var peers: [MeshNode?] = []
    var rng: SplitMix64
    /// Gossip arrivals: message tag -> peer index -> ms after publishing (guarded by `lock`).
    private let lock = NSLock()
    private var arrivals: [String: [Int: Double]] = [:]
    private var published: [String: (at: UInt64, publisher: Int, live: Set<Int>)] = [:]
    var report = TestnetReport()
    private var latencies: [Double] = []

    init(loops: [EventLoop], meshKey: MeshKey, impairment: Impairment?, gpus: String, seed: UInt64) {
        self.loops = loops
        self.meshKey = meshKey
        self.impairment = impairment
        self.gpus = gpus
        rng = SplitMix64(seed: seed)
    }

    static func start(peers: Int, loops count: Int, meshKey: MeshKey, loss: Double, delay: Int, gpus: String, seed: UInt64,
                      progress: (String) -> Void) async throws -> TestnetRun {
        let loops = try (0..<count).map { try EventLoop(name: "testnet-\($0)") }
        let impairment = loss > 0 || delay > 0 ? Impairment(lossRate: loss, delayMilliseconds: delay, seed: seed) : nil
        let run = TestnetRun(loops: loops, meshKey: meshKey, impairment: impairment, gpus: gpus, seed: seed)
        for i in 0..<peers {
            progress("starting peers \(i + 1)/\(peers)")
            run.peers.append(try await run.startPeer(index: i))
        }
        // Joined and quiet.
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            var joined = 0
            for p in run.peers.compactMap({ $0 }) where try await p.dhtState().joined { joined += 1 }
            progress("joining: \(joined)/\(peers)")
            if joined == peers { break }
            try await Task.sleep(for: .milliseconds(200))
        }
        return run
    }

    /// Starts peer `index` (joining through peer #0), providing GPUs if its index is odd.
    func startPeer(index i: Int) async throws -> MeshNode {
        var config = NodeConfig()
        config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
        config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
        var options = MeshNode.Options(identity: SigningKey(), config: config, meshKey: meshKey, logger: Logger(label: "testnet"))
        options.impairment = impairment.map { var m = $0; m.seed &+= UInt64(i); return m }
        if let first = peers.first ?? nil { options.bootstrap = [first.contact] }
        let node = try await MeshNode.start(on: loops[i % loops.count], options: options)
        try await node.subscribe(.debug) { [self] message in
            let tag = String(decoding: message.payload, as: UTF8.self)
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            lock.withLock {
                guard let p = published[tag] else { return }
                if arrivals[tag, default: [:]][i] == nil { arrivals[tag, default: [:]][i] = Double(now - min(now, p.at)) }
            }
        }
        if i % 2 == 1 {
            let profile = gpus == "mixed" ? DemoMarket.profiles[(i / 2) % DemoMarket.profiles.count].gpus : gpus
            try await provideSimulated(node, gpus: profile, price: Price(millipoints: 1000 + UInt32(i % 7) * 250), slots: 2, cpuModel: "testnet")
        }
        return node
    }

    var live: [Int] { peers.indices.filter { peers[$0] != nil } }

    func randomLive() -> Int {
        let l = live
        return l[Int(rng.next() % UInt64(l.count))]
    }

    /// Runs the load for `seconds`, then measures.
    func drive(seconds: Int, churn: Double, jobsPerMinute: Int, progress: (String) -> Void) async throws -> TestnetReport {
        let work = NSTemporaryDirectory() + "gpumesh-testnet-" + Hex.encode(SecureRandom.bytes(4))
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: work) }
        let input = work + "/input.txt"
        try "testnet\n".write(toFile: input, atomically: true, encoding: .utf8)
        // Every job is the same: an input in, its upper-case copy out.
        let spec = try JobSpec(toml: """
            name = "testnet"
            command = ["sh", "-c", "tr a-z A-Z < input.txt > out.txt"]
            inputs = ["input.txt"]
            outputs = ["out.txt"]
            max_price = 100
            [resources]
            gpus = 1
            time_limit = "30s"
            """)
        let request = JobRequest(spec: spec, inputPaths: [input], outputRoot: work + "/out", retries: 2)
        var churnCredit = 0.0, jobCredit = 0.0
        var jobTasks: [Task<(Bool, Int), Never>] = []
        for second in 0..<seconds {
            let tick = Date()
            // Lookups for live peers' IDs.
            for _ in 0..<3 {
                let a = randomLive(), b = randomLive()
                guard a != b, let from = peers[a], let target = peers[b] else { continue }
                let start = Date()
                report.lookups.lookups += 1
                if let r = try? await from.lookup(target.peerID), r.closest.first?.peerID == target.peerID {
                    report.lookups.succeeded += 1
                    latencies.append(Date().timeIntervalSince(start) * 1000)
                } else {
                    report.lookups.failed += 1
                }
            }
            // A gossip message every second.
            let publisher = randomLive()
            let tag = "testnet-\(second)"
            lock.withLock { published[tag] = (UInt64(Date().timeIntervalSince1970 * 1000), publisher, Set(live)) }
            if (try? await peers[publisher]!.publish(.debug, payload: Array(tag.utf8))) == nil { lock.withLock { _ = published.removeValue(forKey: tag) } }
            // Churn: leavers stop (without withdrawing anything), newcomers join through #0.
            churnCredit += churn * Double(peers.count) / 60
            while churnCredit >= 1 {
                churnCredit -= 1
                let victim = randomLive()
                guard victim != 0, let node = peers[victim] else { continue }
                await node.stop()
                peers[victim] = nil
                report.churn.left += 1
                peers.append(try await startPeer(index: peers.count))
                report.churn.joined += 1
            }
            // Jobs, in the background.
            jobCredit += Double(jobsPerMinute) / 60
            while jobCredit >= 1 {
                jobCredit -= 1
                let renterIndex = randomLive()
                guard let renter = peers[renterIndex] else { continue }
                report.jobs.started += 1
                jobTasks.append(Task {
                    do {
                        let info = try await renter.runJob(request)
                        return (info.state == "completed", info.attempts)
                    } catch JobError.failed(let info) {
                        return (false, info.attempts)
                    } catch {
                        return (false, 1)
                    }
                })
            }
            progress("testnet \(second + 1)/\(seconds) s: \(live.count) live, lookups \(report.lookups.succeeded)/\(report.lookups.lookups), jobs \(report.jobs.started) started")
            let spent = Date().timeIntervalSince(tick)
            if spent < 1 { try await Task.sleep(for: .milliseconds(Int((1 - spent) * 1000))) }
        }
        progress("letting gossip and jobs finish")
        for t in jobTasks {
            let (ok, attempts) = await t.value
            if ok { report.jobs.completed += 1 } else { report.jobs.failed += 1 }
            if attempts > 1 { report.jobs.retried += 1 }
        }
        try await Task.sleep(for: .seconds(3))

        // Lookups.
        latencies.sort()
        report.lookups.success = report.lookups.lookups == 0 ? 0 : Double(report.lookups.succeeded) / Double(report.lookups.lookups)
        report.lookups.latencyMsP50 = percentile(latencies, 0.5) ?? 0
        report.lookups.latencyMsP99 = percentile(latencies, 0.99) ?? 0
        // Gossip: each message should reach every peer live when it was published and still live now.
        let stillLive = Set(live)
        var gossipLatencies: [Double] = []
        lock.withLock {
            report.gossip.messages = published.count
            for (tag, p) in published {
                let expected = p.live.intersection(stillLive).subtracting([p.publisher])
                let got = (arrivals[tag] ?? [:]).filter { expected.contains($0.key) }
                report.gossip.expectedDeliveries += expected.count
                report.gossip.deliveries += got.count
                gossipLatencies += got.values
            }
        }
        gossipLatencies.sort()
        report.gossip.coverage = report.gossip.expectedDeliveries == 0 ? 1 : Double(report.gossip.deliveries) / Double(report.gossip.expectedDeliveries)
        report.gossip.latencyMsP50 = percentile(gossipLatencies, 0.5) ?? 0
        report.gossip.latencyMsP99 = percentile(gossipLatencies, 0.99) ?? 0
        // Ledger agreement: every live peer's receipts, and points among those holding them all.
        let nodes = live.compactMap { peers[$0] }
        let held = nodes.map { (try? $0.ledgerCounts().receipts) ?? 0 }
        report.ledger.receipts = held.max() ?? 0
        report.ledger.peersChecked = nodes.count
        var reference: [Rewards.Entry]?
        for (n, count) in zip(nodes, held) where count == report.ledger.receipts {
            report.ledger.peersHoldingAll += 1
            let points = (try? n.rewardPoints()) ?? []
            if let reference, reference != points { report.ledger.pointsAgree = false }
            if reference == nil { reference = points }
        }
        report.churn.liveAtEnd = nodes.count
        report.counters = try await summedCounters(nodes)
        for n in nodes { await n.stop() }
        loops.forEach { $0.shutdown() }
        return report
    }
}
