import ArgumentParser
import Dispatch
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshExplorer
import MeshLedger
import MeshMarket
import MeshRuntime
import Synchronization

extension GPUMesh {
    /// `gpumesh bench explorer`: how long each route takes over a large ledger.
    struct ExplorerBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explorer",
            abstract: "Measure the explorer: latency of each route over a ledger of --receipts receipts, and requests per second.",
            discussion: """
            A node on 127.0.0.1 whose ledger holds --receipts synthetic co-signed receipts over --peers peers
            (stored as verified), offering simulated GPUs itself, serves its explorer on a free port. Each
            route is requested --requests times one after another over fresh TCP connections (p50 and p99 in
            ms); then /api/overview is requested by --concurrency clients at once (requests per second).
            """)

        @Option(help: ArgumentHelp("Receipts in the ledger.", valueName: "n")) var receipts = 100_000
        @Option(help: ArgumentHelp("Peers those receipts are spread over.", valueName: "n")) var peers = 10_000
        @Option(help: ArgumentHelp("Requests per route.", valueName: "n")) var requests = 30
        @Option(help: ArgumentHelp("Clients at once for the throughput figure.", valueName: "n")) var concurrency = 8
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard (0...1_000_000).contains(receipts) else { throw ValidationError("--receipts must be 0 to 1000000") }
            guard (2...1_000_000).contains(peers) else { throw ValidationError("--peers must be 2 to 1000000") }
            guard (1...10_000).contains(requests) else { throw ValidationError("--requests must be 1 to 10000") }
            guard (1...256).contains(concurrency) else { throw ValidationError("--concurrency must be 1 to 256") }
        }

        func run() async throws {
            bootstrapLogging("error")
            let scratch = NSTemporaryDirectory() + "gpumesh-bench-explorer-" + Hex.encode(SecureRandom.bytes(4))
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: scratch) }

            benchProgress("signing \(receipts) receipts over \(peers) peers", json: json)
            let synthetic = receipts > 0 ? SyntheticReceipts.make(count: receipts, peers: peers, seed: 9) : []
            do {
                let ledger = try Ledger(path: scratch + "/ledger.sqlite")
                benchProgress("storing them", json: json)
                for i in stride(from: 0, to: synthetic.count, by: 10_000) {
                    try ledger.ingest(Array(synthetic[i..<min(synthetic.count, i + 10_000)]), source: .gossip, now: 1, verified: true)
                }
                try ledger.checkpoint()
            }

            benchProgress("starting the node and its explorer", json: json)
            let loop = try EventLoop(name: "bench-explorer")
            defer { loop.shutdown() }
            let metrics = ExplorerMetrics()
            var options = loopbackNodeOptions([])
            options.dataDirectory = scratch
            options.metricsFactory = metrics.factory
            let node = try await MeshNode.start(on: loop, options: options)
            try await provideSimulated(node, gpus: "2x rtx-4090", slots: 2, cpuModel: "bench")
            let explorer = try Explorer(node: node, metrics: metrics, settings: .init(listen: "127.0.0.1:0"), logger: Logger(label: "bench"))
            let port = try await explorer.start()
            // The node computes its reputation view once at start: wait for it.
            while receipts > 0, try await node.reputationDetails().isEmpty { try await Task.sleep(for: .milliseconds(100)) }
            let someone = synthetic.first.map { PeerID(publicKey: $0.provider).hex } ?? node.peerID.hex

            // Route, the name the figures use, the name printed.
            let routes: [(String, String, String)] = [
                ("/api/overview", "api_overview", "/api/overview"), ("/api/capacity", "api_capacity", "/api/capacity"),
                ("/api/peers/\(someone)", "api_peer", "/api/peers/{id}"), ("/api/rewards", "api_rewards", "/api/rewards"),
                ("/api/jobs", "api_jobs", "/api/jobs"), ("/api/peers", "api_peers", "/api/peers"), ("/peers", "page_peers", "/peers"), ("/metrics", "metrics", "/metrics"), ("/", "page_overview", "/"),
                ("/peers/\(someone)", "page_peer", "/peers/{id}"), ("/rewards", "page_rewards", "/rewards"),
            ]
            var figures: [String: JSONValue] = ["receipts": .int(receipts), "peers": .int(peers), "requests_per_route": .int(requests)]
            var lines: [String] = []
            for (route, key, name) in routes {
                benchProgress("GET \(route.prefix(40))", json: json)
                var ms: [Double] = []
                for i in 0..<(requests + 2) {
                    let start = EventLoop.monotonicNanoseconds()
                    let answer = try await Self.get(port, route)
                    guard answer.status == 200 else { throw CLIError("GET \(route): \(answer.status) \(answer.text.prefix(200))") }
                    if i >= 2 { ms.append(Double(EventLoop.monotonicNanoseconds() - start) / 1e6) }  // two warm-up requests
                }
                ms.sort()
                let p50 = percentile(ms, 0.5) ?? 0, p99 = percentile(ms, 0.99) ?? 0
                figures[key + "_p50_ms"] = .double((p50 * 10).rounded() / 10)
                figures[key + "_p99_ms"] = .double((p99 * 10).rounded() / 10)
                lines.append(name.padding(toLength: 20, withPad: " ", startingAt: 0) + String(format: "p50 %8.1f ms   p99 %8.1f ms", p50, p99))
            }

            benchProgress("\(concurrency) clients at once", json: json)
            let total = max(requests * 4, concurrency * 4)
            let failures = Failures()
            let start = EventLoop.monotonicNanoseconds()
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                Thread.detachNewThread {
                    DispatchQueue.concurrentPerform(iterations: concurrency) { client in
                        for _ in stride(from: client, to: total, by: concurrency) {
                            if (try? HTTPProbe.request(port: port, path: "/api/overview"))?.status != 200 { failures.add() }
                        }
                    }
                    c.resume()
                }
            }
            let rate = Double(total) / (Double(EventLoop.monotonicNanoseconds() - start) / 1e9)
            guard failures.count == 0 else { throw CLIError("\(failures.count) of \(total) concurrent requests failed") }
            figures["overview_concurrency"] = .int(concurrency)
            figures["overview_requests_per_s"] = .double((rate * 10).rounded() / 10)
            benchProgress("", json: json)
            await explorer.stop()
            await node.stop()

            if json { try GPUMesh.printBenchJSON(figures); return }
            print("explorer over a ledger of \(receipts) receipts, \(peers) peers; \(requests) requests per route")
            for line in lines { print("  " + line) }
            print(String(format: "  /api/overview with %d clients at once: %.0f requests/s", concurrency, rate))
        }

        /// One request from a thread of its own (the probe blocks).
        static func get(_ port: Int, _ path: String) async throws -> HTTPProbe.Answer {
            try await withCheckedThrowingContinuation { c in
                Thread.detachNewThread { c.resume(with: Result { try HTTPProbe.request(port: port, path: path) }) }
            }
        }
    }
}

/// A failure count shared by the throughput clients.
private final class Failures: Sendable {
    private let value = Mutex<Int>(0)
    func add() { value.withLock { $0 += 1 } }
    var count: Int { value.withLock { $0 } }
}
