import ArgumentParser
import Foundation
import MeshCore
import MeshGossip
import MeshRuntime
import Synchronization

extension GPUMesh {
    /// `gpumesh bench gossip`: dissemination over real sealed UDP on loopback.
    struct GossipBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gossip",
            abstract: "Start N nodes on loopback, publish messages from random nodes, and measure coverage, latency and cost.",
            discussion: """
            Latency is from publishing to each node's delivery (one process, one clock). Coverage is the share of
            (node, message) pairs delivered, the publisher excluded. Datagrams and duplicates are gossip datagrams
            received and duplicate copies, per node per message.
            """)

        @Option(help: "Nodes to start.") var nodes = 200
        @Option(help: "Messages to publish.") var messages = 20
        @Option(help: "Milliseconds between messages.") var interval = 100
        @Option(help: "Event loops the nodes share (threads).") var loops = 2
        @Option(help: "Seed for the choice of publishers.") var seed: UInt64 = 1
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard (2...5_000).contains(nodes) else { throw ValidationError("--nodes must be 2 to 5000") }
            guard (1...10_000).contains(messages) else { throw ValidationError("--messages must be 1 to 10000") }
            guard (1...64).contains(loops) else { throw ValidationError("--loops must be 1 to 64") }
        }

        /// First deliveries, by message ID then node, in monotonic nanoseconds.
        final class Deliveries: Sendable {
            let first = Mutex<[Gossip.MessageID: [Int: UInt64]]>([:])
            func record(_ id: Gossip.MessageID, node: Int) {
                let now = EventLoop.monotonicNanoseconds()
                first.withLock { if $0[id, default: [:]][node] == nil { $0[id, default: [:]][node] = now } }
            }
            func count(_ id: Gossip.MessageID) -> Int { first.withLock { $0[id]?.count ?? 0 } }
        }

        func run() async throws {
            bootstrapLogging(nil, default: "error")
            let eventLoops = try (0..<loops).map { try EventLoop(name: "gossip-\($0)") }
            defer { eventLoops.forEach { $0.shutdown() } }
            let progress = { (text: String) in benchProgress(text, json: json) }
            let joinStart = Date()
            let all = try await startLoopbackMesh(nodes: nodes, on: eventLoops, progress: progress)
            let deliveries = Deliveries()
            for (i, n) in all.enumerated() { try await n.subscribe(.debug) { deliveries.record($0.id, node: i) } }
            // Every sample full (or as full as the mesh allows).
            let want = min(8, nodes - 1)
            while true {
                var full = 0
                for n in all where try await n.gossipSnapshot().sample.count >= want { full += 1 }
                progress("gossip samples filled: \(full)/\(nodes)")
                if full == nodes { break }
                guard Date().timeIntervalSince(joinStart) < 300 else { throw CLIError("the gossip samples did not fill within 300 s") }
                try await Task.sleep(for: .milliseconds(200))
            }
            let joinSeconds = Date().timeIntervalSince(joinStart)
            // How evenly the samples spread: how many samples hold each node.
            var inDegree: [String: Int] = [:]
            for n in all { for p in try await n.gossipSnapshot().sample { inDegree[p, default: 0] += 1 } }
            let degrees = all.map { inDegree[$0.peerID.hex] ?? 0 }
            /// Gossip datagrams in, duplicates, IWANTs sent, and every drop (datagram and gossip) by reason.
            func totals() async throws -> (datagrams: Int, duplicates: Int, iwants: Int, dropped: [String: Int]) {
                let counters = try await summedCounters(all)
                var dup = 0, iwants = 0
                var dropped = counters.filter { $0.key.hasPrefix("datagrams_dropped_") }
                for n in all {
                    let stats = try await n.gossipSnapshot().stats
                    dup += stats.duplicates
                    iwants += stats.iwantSent
                    for (k, v) in stats.dropped { dropped["gossip_\(k.rawValue)", default: 0] += v }
                }
                return (counters["gossip_in"] ?? 0, dup, iwants, dropped)
            }
            let before = try await totals()
            var rng = SplitMix64(seed: seed)
            var published: [(Gossip.MessageID, Int, UInt64)] = []
            for i in 0..<messages {
                let from = Int(rng.next() % UInt64(nodes))
                let start = EventLoop.monotonicNanoseconds()
                let m = try await all[from].publish(.debug, payload: Array("bench \(i)".utf8))
                published.append((m.id, from, start))
                progress("published \(i + 1)/\(messages)")
                try await Task.sleep(for: .milliseconds(interval))
            }
            // Until every node has every message, or 10 s after the last.
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline, !published.allSatisfy({ deliveries.count($0.0) >= nodes - 1 }) {
                try await Task.sleep(for: .milliseconds(50))
            }
            try await Task.sleep(for: .seconds(2))  // late copies and repairs are part of the cost
            let after = try await totals()
            progress("")
            await withTaskGroup(of: Void.self) { group in
                for n in all { group.addTask { await n.stop() } }
            }
            var latencies: [Double] = []
            var delivered = 0
            let firsts = deliveries.first.withLock { $0 }
            for (id, from, start) in published {
                for (node, at) in firsts[id] ?? [:] where node != from {
                    delivered += 1
                    latencies.append(Double(at - start) / 1e6)
                }
            }
            var droppedDuring: [String: JSONValue] = [:]
            for (k, v) in after.dropped where v > before.dropped[k, default: 0] { droppedDuring[k] = .int(v - before.dropped[k, default: 0]) }
            let pairs = Double(messages * (nodes - 1))
            let perNodeMessage = Double(nodes * messages)
            func r(_ v: Double, _ p: Double = 1000) -> JSONValue { .double((v * p).rounded() / p) }
            let result: [String: JSONValue] = [
                "mode": .string("udp-loopback-sealed"), "nodes": .int(nodes), "messages": .int(messages), "loops": .int(loops),
                "coverage": r(Double(delivered) / pairs, 100_000),
                "latency_ms_p50": r(percentile(latencies, 0.5) ?? 0), "latency_ms_p99": r(percentile(latencies, 0.99) ?? 0),
                "latency_ms_max": r(latencies.max() ?? 0),
                "datagrams_per_node_per_message": r(Double(after.datagrams - before.datagrams) / perNodeMessage, 100),
                "duplicates_per_node_per_message": r(Double(after.duplicates - before.duplicates) / perNodeMessage, 100),
                "join_s": r(joinSeconds, 100),
                "sample_in_degree_max": .int(degrees.max() ?? 0), "nodes_in_no_sample": .int(degrees.filter { $0 == 0 }.count),
                "iwants_per_message": r(Double(after.iwants - before.iwants) / Double(messages), 10),
                "dropped": .object(droppedDuring),
            ]
            if json { try GPUMesh.printBenchJSON(result); return }
            print("\(nodes) nodes (sealed UDP on loopback, \(loops) loops), \(messages) messages")
            print("coverage           \(result["coverage"]!)")
            print("latency            p50 \(result["latency_ms_p50"]!) ms, p99 \(result["latency_ms_p99"]!) ms, max \(result["latency_ms_max"]!) ms")
            print("datagrams          \(result["datagrams_per_node_per_message"]!) per node per message")
            print("duplicates         \(result["duplicates_per_node_per_message"]!) per node per message")
        }
    }
}
