import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshDHT
import MeshJobs
import MeshRuntime
import MeshTestKit
#if canImport(Glibc)
import Glibc
#endif

/// Resident set size of this process in bytes (from /proc/self/statm).
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// CPU time (user + system) this process has used, in milliseconds.
func processCPUMilliseconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    let user = Double(usage.ru_utime.tv_sec) * 1000 + Double(usage.ru_utime.tv_usec) / 1000
    let system = Double(usage.ru_stime.tv_sec) * 1000 + Double(usage.ru_stime.tv_usec) / 1000
    return user + system
}

/// The value at quantile `q` (0...1) of `values` (nearest rank).
func percentile<T: Comparable>(_ values: [T], _ q: Double) -> T? {
    guard !values.isEmpty else { return nil }
    let sorted = values.sorted()
    let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}

/// Options for a benchmark node on 127.0.0.1 (free ports, fresh identity) joining through `bootstrap`.
func loopbackNodeOptions(_ bootstrap: [Contact]) -> MeshNode.Options {
    var config = NodeConfig()
    config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
    var o = MeshNode.Options(identity: SigningKey(), config: config, logger: Logger(label: "bench"))
    o.bootstrap = bootstrap
    return o
}

/// Publishes `node`'s offer of simulated GPUs (`profile`, such as "2x rtx-4090") at `price` with
/// `slots`, on a synthetic host (8 cores, 64 GiB, 1 TiB free) named `cpuModel`, sandbox only:
/// the providers of the job benchmark, the demo and the testnet.
func provideSimulated(_ node: MeshNode, gpus profile: String, price: Price = ProviderConfig().price, slots: Int, cpuModel: String) async throws {
    var terms = ProviderConfig()
    terms.price = price
    terms.slots = slots
    let host = HostFacts(cpuModel: cpuModel, cpuCores: 8, ramMiB: 65_536, diskFreeMiB: 1 << 20)
    _ = try await node.provide(OfferBuilder.capability(contact: node.contact, gpus: try SimulatedGPUs.parse(profile), host: host, terms: terms,
                                                       available: [.sandbox]))
}

/// Starts `nodes` nodes on loopback spread over `loops`, all joining through the first, and
/// waits until every one has joined and no lookup is still running (at most 300 s).
func startLoopbackMesh(nodes: Int, on loops: [EventLoop], progress: (String) -> Void) async throws -> [MeshNode] {
    let options = loopbackNodeOptions
    let started = Date()
    let first = try await MeshNode.start(on: loops[0], options: options([]))
    var all = [first]
    for i in 1..<nodes {
        all.append(try await MeshNode.start(on: loops[i % loops.count], options: options([first.contact])))
        if i % 50 == 0 { progress("starting nodes \(i)/\(nodes)") }
    }
    // Joined, and quiet: every join lookup and bucket refresh finished.
    while true {
        var joined = 0, busy = 0
        for n in all {
            let s = try await n.dhtState()
            if s.joined { joined += 1 }
            busy += s.activeOperations
        }
        progress("joining: \(joined)/\(nodes) joined, \(busy) lookups running")
        if joined == nodes && busy == 0 { return all }
        guard Date().timeIntervalSince(started) < 300 else { throw CLIError("the nodes did not finish joining within 300 s") }
        try await Task.sleep(for: .milliseconds(200))
    }
}

/// Writes a progress line to a terminal's standard error (nothing when piped or with --json).
/// Every node's counters (`status`), summed by name.
func summedCounters(_ nodes: [MeshNode]) async throws -> [String: Int] {
    var sum: [String: Int] = [:]
    for n in nodes { for (k, v) in try await n.status().counters { sum[k, default: 0] += v } }
    return sum
}

func benchProgress(_ text: String, json: Bool) {
    guard !json, isatty(STDERR_FILENO) != 0 else { return }
    FileHandle.standardError.write(Data("\r\u{1B}[K\(text)".utf8))
}

extension GPUMesh {
    /// `gpumesh bench dht`: lookups over real sealed UDP on loopback, or on the simulated network.
    struct DHTBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dht",
            abstract: "Start N DHT nodes on loopback (sharing a few loops), join them, and measure lookups.",
            discussion: """
            Every datagram is sealed (authenticated encryption). Each lookup asks a random node for the
            ID of another random node; it succeeds when that node comes back first. --simulate runs
            the same measure on the simulated network (virtual time: latency is simulated, 1-10 ms a message).
            """)

        @Option(help: "Nodes to start.") var nodes = 200
        @Option(help: "Lookups to measure.") var lookups = 500
        @Option(help: "Lookups run first, measured apart as the cold figures (first contact between peers costs an X25519 agreement on each side); default: as many as --lookups.")
        var warmup: Int?
        @Option(help: "Event loops the nodes share (threads).") var loops = 2
        @Option(help: "Seed for the simulated network and the choice of lookups.") var seed: UInt64 = 1
        @Flag(help: "Run on the simulated network instead of sockets.") var simulate = false
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard nodes >= 2 && nodes <= (simulate ? 100_000 : 5_000) else {
                throw ValidationError("--nodes must be 2 to \(simulate ? 100_000 : 5_000)")
            }
            guard lookups >= 1 && lookups <= 100_000 else { throw ValidationError("--lookups must be 1 to 100000") }
            guard loops >= 1 && loops <= 64 else { throw ValidationError("--loops must be 1 to 64") }
        }

        struct Figures {
            /// The lookups the headline figures come from.
            var measured = Phase()
            /// The warm-up lookups (socket runs only).
            var cold: Phase?
            var rssBytes = 0
            var joinSeconds = 0.0
        }

        /// One measured run of lookups.
        struct Phase {
            var lookups = 0, successes = 0
            var hops: [Int] = [], latencies: [Double] = []
            var messages = 0
            var cookieRetries = 0
            var cpuMilliseconds = 0.0

            /// Records one finished lookup.
            mutating func record(success: Bool, hops: Int, latencyMilliseconds: Double) {
                lookups += 1
                if success { successes += 1 }
                self.hops.append(hops)
                latencies.append(latencyMilliseconds)
            }

            var figures: [String: JSONValue] {
                let n = Double(max(lookups, 1))
                return ["lookups": .int(lookups), "success_rate": .double((Double(successes) / n * 10_000).rounded() / 10_000),
                        "hops_p50": .int(percentile(hops, 0.5) ?? 0), "hops_p99": .int(percentile(hops, 0.99) ?? 0),
                        "latency_ms_p50": .double(((percentile(latencies, 0.5) ?? 0) * 1000).rounded() / 1000),
                        "latency_ms_p99": .double(((percentile(latencies, 0.99) ?? 0) * 1000).rounded() / 1000),
                        "messages_per_lookup": .double((Double(messages) / n * 10).rounded() / 10),
                        "cookie_retries_per_lookup": .double((Double(cookieRetries) / n * 10).rounded() / 10),
                        "cpu_ms_per_lookup": .double((cpuMilliseconds / n * 1000).rounded() / 1000)]
            }
        }

        func run() async throws {
            bootstrapLogging(nil, default: "error")
            let all = simulate ? runSimulated() : try await runReal()
            let f = all.measured
            let n = Double(max(f.lookups, 1))
            var result = f.figures
            result["mode"] = .string(simulate ? "simulated" : "udp-loopback-sealed")
            result["nodes"] = .int(nodes)
            result["loops"] = .int(simulate ? 0 : loops)
            result["rss_mib_per_node"] = .double((Double(all.rssBytes) / Double(nodes) / 1_048_576 * 1000).rounded() / 1000)
            result["join_s"] = .double((all.joinSeconds * 100).rounded() / 100)
            if let cold = all.cold { result["cold"] = .object(cold.figures) }
            if json {
                try GPUMesh.printBenchJSON(result)
            } else {
                print("\(nodes) nodes (\(simulate ? "simulated network" : "sealed UDP on loopback, \(loops) loops")), joined in \(String(format: "%.2f", all.joinSeconds)) s")
                print("lookups            \(f.lookups), success rate \(String(format: "%.4f", Double(f.successes) / n))")
                print("hops               p50 \(percentile(f.hops, 0.5) ?? 0), p99 \(percentile(f.hops, 0.99) ?? 0)")
                print("latency            p50 \(String(format: "%.3f", percentile(f.latencies, 0.5) ?? 0.0)) ms, p99 \(String(format: "%.3f", percentile(f.latencies, 0.99) ?? 0.0)) ms\(simulate ? " (virtual)" : "")")
                print("messages/lookup    \(String(format: "%.1f", Double(f.messages) / n))")
                print("cpu/lookup         \(String(format: "%.3f", f.cpuMilliseconds / n)) ms")
                print("memory/node        \(String(format: "%.3f", Double(all.rssBytes) / Double(nodes) / 1_048_576)) MiB")
                if let cold = all.cold {
                    let c = cold.figures
                    print("cold (first \(cold.lookups) lookups, peers meeting for the first time): cpu/lookup \(c["cpu_ms_per_lookup"]!) ms, latency p99 \(c["latency_ms_p99"]!) ms, messages/lookup \(c["messages_per_lookup"]!)")
                }
            }
        }

        private func progress(_ text: String) { benchProgress(text, json: json) }

        private func runReal() async throws -> Figures {
            var f = Figures()
            let eventLoops = try (0..<loops).map { try EventLoop(name: "dht-\($0)") }
            defer { eventLoops.forEach { $0.shutdown() } }
            let rssBefore = residentBytes()
            let joinStart = Date()
            let all = try await startLoopbackMesh(nodes: nodes, on: eventLoops, progress: progress)
            f.joinSeconds = Date().timeIntervalSince(joinStart)
            f.rssBytes = residentBytes() - rssBefore
            func totals() async throws -> (datagrams: Int, cookieRetries: Int) {
                let c = try await summedCounters(all)
                return (c["datagrams_out"] ?? 0, c["dht_cookie_retries"] ?? 0)
            }
            var rng = SplitMix64(seed: seed)
            func measure(_ count: Int, _ label: String) async throws -> Phase {
                var p = Phase()
                let before = try await totals()
                let cpuBefore = processCPUMilliseconds()
                for i in 0..<count {
                    let from = all[Int(rng.next() % UInt64(nodes))]
                    var target = all[Int(rng.next() % UInt64(nodes))]
                    while target === from { target = all[Int(rng.next() % UInt64(nodes))] }
                    let r = try await from.lookup(target.peerID)
                    p.record(success: r.closest.first?.peerID == target.peerID, hops: r.hops, latencyMilliseconds: r.duration.milliseconds)
                    if i % 100 == 0 { progress("\(label) lookups \(i)/\(count)") }
                }
                p.cpuMilliseconds = processCPUMilliseconds() - cpuBefore
                let after = try await totals()
                p.messages = after.datagrams - before.datagrams
                p.cookieRetries = after.cookieRetries - before.cookieRetries
                return p
            }
            f.cold = try await measure(warmup ?? lookups, "cold")
            f.measured = try await measure(lookups, "measured")
            progress("")
            for n in all { await n.stop() }
            return f
        }

        private func runSimulated() -> Figures {
            var f = Figures()
            let rssBefore = residentBytes()
            let joinStart = Date()
            var net = SimulatedNetwork(count: nodes, seed: seed)
            net.joinAll()
            f.joinSeconds = Date().timeIntervalSince(joinStart)
            f.rssBytes = residentBytes() - rssBefore
            let deliveredBefore = net.delivered + net.lost
            let cpuBefore = processCPUMilliseconds()
            for _ in 0..<lookups {
                let from = net.randomLive()
                var target = net.randomLive()
                while target == from { target = net.randomLive() }
                let start = net.now
                guard let r = net.lookup(target, from: from) else { continue }
                f.measured.record(success: r.result.first?.id == target, hops: r.hops,
                                  latencyMilliseconds: Double(net.lastLookupFinishedAt - start))
            }
            f.measured.cpuMilliseconds = processCPUMilliseconds() - cpuBefore
            f.measured.messages = net.delivered + net.lost - deliveredBefore
            return f
        }
    }
}
