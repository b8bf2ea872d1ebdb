import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshJobs
import MeshMarket
import MeshRuntime

extension GPUMesh {
    /// `gpumesh bench find`: capability discovery over real sealed UDP on loopback.
    struct FindBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "find",
            abstract: "Start N nodes on loopback, let P of them provide mixed simulated GPUs, and measure searches against the ground truth.",
            discussion: """
            Each query is drawn from a fixed mix (a model, a model and a GPU count, a vendor, a VRAM floor, a compute
            capability floor, a price ceiling, everything) and asks for every match (--limit), so recall and precision
            are measured against what the providers published. Latency covers planning, the parallel shard reads,
            verification, filtering and ranking; pinging the shortlist (what `gpumesh find` adds) is included only
            with --rtt. The first --warmup queries are measured apart as the cold figures (a renter meeting storing
            nodes for the first time pays an X25519 agreement per peer).
            """)

        @Option(help: "Nodes to start.") var nodes = 200
        @Option(help: "Nodes that provide (the first P).") var providers = 100
        @Option(help: "Queries to measure.") var queries = 100
        @Option(help: "Queries run first and reported as the cold figures; default: as many as --queries.") var warmup: Int?
        @Option(help: "Results asked for per query (the default asks for every match).") var limit = CapabilityQuery.maxLimit
        @Option(help: "Event loops the nodes share (threads).") var loops = 2
        @Option(help: "Seed for the GPU mix and the query choice.") var seed: UInt64 = 1
        @Flag(help: "Also ping the shortlisted providers, as `gpumesh find` does.") var rtt = false
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard (2...5_000).contains(nodes) else { throw ValidationError("--nodes must be 2 to 5000") }
            guard (1...nodes).contains(providers) else { throw ValidationError("--providers must be 1 to --nodes") }
            guard (1...100_000).contains(queries) else { throw ValidationError("--queries must be 1 to 100000") }
            guard (1...CapabilityQuery.maxLimit).contains(limit) else { throw ValidationError("--limit must be 1 to \(CapabilityQuery.maxLimit)") }
            guard (1...64).contains(loops) else { throw ValidationError("--loops must be 1 to 64") }
        }

        /// The GPU mix providers draw from (weights by repetition).
        static let specs = ["1x rtx-4090", "2x rtx-4090", "1x rtx-3090", "2x rtx-3090", "4x a100-80gb", "8x a100-80gb", "1x a100-40gb",
                            "1x h100-80gb", "8x h100-80gb", "2x l40s", "4x t4", "1x rtx-4070", "1x mi300x", "2x rx-7900-xtx",
                            "1x rtx-4090,1x rtx-3090", "1x my-gpu:20GiB"]
        static let prices = ["0.25", "0.5", "0.8", "1", "1.2", "1.5", "2", "3.5"]

        /// The query mix.
        static func query(_ i: UInt64, limit: Int) -> CapabilityQuery {
            let models = ["rtx-4090", "rtx-3090", "a100-80gb", "h100-80gb", "l40s", "t4", "mi300x"]
            var q = CapabilityQuery(limit: limit)
            switch i % 8 {
            case 0: q.model = models[Int(i / 8) % models.count]
            case 1: q.model = models[Int(i / 8) % 4]; q.gpus = 2
            case 2: q.vendor = "amd"
            case 3: q.minVRAMMiB = 128 * 1024
            case 4: q.minComputeCapability = ComputeCapability(major: 9, minor: 0)
            case 5: q.model = "rtx-4090"; q.minVRAMMiB = 24 * 1024; q.gpus = 2; q.maxPrice = Price(parsing: "1.5")
            case 6: q.vendor = "nvidia"; q.minVRAMMiB = 40 * 1024; q.gpus = 4
            default: q.maxPrice = Price(parsing: "0.5")
            }
            return q
        }

        /// One measured set of queries.
        struct Phase {
            var queries = 0, expected = 0, hits = 0, returned = 0, wrong = 0
            var latencies: [Double] = []
            var records = 0, shards = 0, failedShards = 0, refused = 0, datagrams = 0, timeouts = 0
            var cpuMilliseconds = 0.0

            var figures: [String: JSONValue] {
                let n = Double(max(queries, 1))
                func r(_ v: Double, _ places: Double = 1000) -> JSONValue { .double((v * places).rounded() / places) }
                return ["queries": .int(queries), "recall": r(expected == 0 ? 1 : Double(hits) / Double(expected), 10_000),
                        "precision": r(returned == 0 ? 1 : Double(returned - wrong) / Double(returned), 10_000),
                        "latency_ms_p50": r(percentile(latencies, 0.5) ?? 0), "latency_ms_p99": r(percentile(latencies, 0.99) ?? 0),
                        "records_fetched_per_query": r(Double(records) / n, 10), "shards_read_per_query": r(Double(shards) / n, 10),
                        "shard_reads_failed": .int(failedShards), "records_refused": .int(refused), "dht_timeouts": .int(timeouts),
                        "datagrams_per_query": r(Double(datagrams) / n, 10), "cpu_ms_per_query": r(cpuMilliseconds / n),
                        "matches_per_query": r(Double(expected) / n, 10)]
            }
        }

        func run() async throws {
            bootstrapLogging(nil, default: "error")
            let eventLoops = try (0..<loops).map { try EventLoop(name: "find-\($0)") }
            defer { eventLoops.forEach { $0.shutdown() } }
            let progress = { (text: String) in benchProgress(text, json: json) }
            let joinStart = Date()
            let all = try await startLoopbackMesh(nodes: nodes, on: eventLoops, progress: progress)
            let joinSeconds = Date().timeIntervalSince(joinStart)

            // Providers publish in batches, concurrently.
            var rng = SplitMix64(seed: seed)
            var offers: [PublicKey: Capability] = [:]
            var planned: [(MeshNode, Capability)] = []
            for i in 0..<providers {
                var terms = ProviderConfig()
                terms.price = Price(parsing: Self.prices[Int(rng.next() % UInt64(Self.prices.count))])!
                terms.slots = 1 + Int(rng.next() % 2)
                let gpus = try SimulatedGPUs.parse(Self.specs[Int(rng.next() % UInt64(Self.specs.count))])
                let host = HostFacts(cpuModel: "Bench CPU", cpuCores: 16, ramMiB: 65_536, diskFreeMiB: 500_000)
                let offer = OfferBuilder.capability(contact: all[i].contact, gpus: gpus, host: host, terms: terms, available: [.sandbox])
                planned.append((all[i], offer))
                offers[all[i].identity.publicKey] = offer
            }
            let publishStart = Date()
            var copiesFailed = 0
            for batch in stride(from: 0, to: planned.count, by: 25) {
                let slice = Array(planned[batch..<min(batch + 25, planned.count)])
                copiesFailed += try await withThrowingTaskGroup(of: Int.self) { group in
                    for (node, offer) in slice { group.addTask { try await node.provide(offer, lifetime: .seconds(3600)).failed } }
                    return try await group.reduce(0, +)
                }
                progress("providers published \(min(batch + 25, planned.count))/\(providers)")
            }
            let publishSeconds = Date().timeIntervalSince(publishStart)

            /// Datagrams sent and DHT requests timed out, over every node.
            func traffic() async throws -> (datagrams: Int, timeouts: Int) {
                let c = try await summedCounters(all)
                return (c["datagrams_out"] ?? 0, c["dht_timeouts"] ?? 0)
            }
            var counter: UInt64 = 0
            func measure(_ count: Int, _ label: String) async throws -> Phase {
                var p = Phase()
                let before = try await traffic()
                let cpuBefore = processCPUMilliseconds()
                for i in 0..<count {
                    let renter = all[Int(rng.next() % UInt64(nodes))]
                    let q = Self.query(counter, limit: limit)
                    counter += 1
                    let truth = Set(offers.filter { q.matches($0.value) }.keys)
                    let r = try await renter.find(q, measureRTT: rtt, seed: rng.next())
                    let got = Set(r.offers.map(\.record.provider))
                    p.queries += 1
                    p.expected += min(truth.count, limit)
                    p.hits += min(got.intersection(truth).count, limit)
                    p.returned += got.count
                    p.wrong += got.subtracting(truth).count
                    p.latencies.append(r.duration.milliseconds)
                    p.records += r.recordsFetched
                    p.shards += r.shardsRead
                    p.failedShards += r.shardsFailed
                    p.refused += r.refused.values.reduce(0, +)
                    if i % 10 == 0 { progress("\(label) queries \(i)/\(count)") }
                }
                p.cpuMilliseconds = processCPUMilliseconds() - cpuBefore
                let after = try await traffic()
                p.datagrams = after.datagrams - before.datagrams
                p.timeouts = after.timeouts - before.timeouts
                return p
            }
            let cold = try await measure(warmup ?? queries, "cold")
            let measured = try await measure(queries, "measured")
            progress("")
            await withTaskGroup(of: Void.self) { group in
                for n in all { group.addTask { await n.stop() } }
            }

            var result = measured.figures
            result["mode"] = .string("udp-loopback-sealed")
            result["nodes"] = .int(nodes)
            result["providers"] = .int(providers)
            result["loops"] = .int(loops)
            result["limit"] = .int(limit)
            result["rtt_probes"] = .bool(rtt)
            result["shards_per_key"] = .int(CapabilityIndex.defaultShards)
            result["join_s"] = .double((joinSeconds * 100).rounded() / 100)
            result["publish_s"] = .double((publishSeconds * 100).rounded() / 100)
            result["publish_copies_failed"] = .int(copiesFailed)
            result["cold"] = .object(cold.figures)
            if json {
                try GPUMesh.printBenchJSON(result)
                return
            }
            let f = measured.figures
            print("\(nodes) nodes, \(providers) providers (sealed UDP on loopback, \(loops) loops); joined in \(String(format: "%.1f", joinSeconds)) s, published in \(String(format: "%.1f", publishSeconds)) s")
            print("queries            \(measured.queries), \(f["matches_per_query"]!) matches each on average")
            print("recall             \(f["recall"]!)   precision \(f["precision"]!)")
            print("latency            p50 \(f["latency_ms_p50"]!) ms, p99 \(f["latency_ms_p99"]!) ms\(rtt ? " (with RTT probes)" : "")")
            print("records/query      \(f["records_fetched_per_query"]!) (\(f["shards_read_per_query"]!) shards read)")
            print("datagrams/query    \(f["datagrams_per_query"]!)   cpu/query \(f["cpu_ms_per_query"]!) ms")
            let c = cold.figures
            print("cold (first \(cold.queries) queries): latency p99 \(c["latency_ms_p99"]!) ms, cpu/query \(c["cpu_ms_per_query"]!) ms, recall \(c["recall"]!)")
        }
    }
}
