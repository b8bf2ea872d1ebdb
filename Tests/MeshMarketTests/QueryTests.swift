import MeshCore
import MeshCrypto
@testable import MeshMarket
import Testing

private func catalogue(_ slug: String) -> CapabilityQuery.KnownModel? {
    ["rtx-4090": ("nvidia", 24_576), "mi300x": ("amd", 196_608)][slug].map { (vendor: $0.0, vramMiB: $0.1) }
}

@Suite("Queries: validation, matching, planning")
struct QueryTests {
    @Test("impossible or malformed queries name the flag and the reason")
    func validation() {
        func problem(_ q: CapabilityQuery) -> CapabilityQuery.Problem? {
            do { try q.validate(catalogue: catalogue); return nil } catch { return error }
        }
        #expect(problem(CapabilityQuery(model: "rtx-4090", minVRAMMiB: 24_576, gpus: 2)) == nil)
        #expect(problem(CapabilityQuery(gpus: 0))?.field == "--gpus")
        #expect(problem(CapabilityQuery(gpus: 5000))?.field == "--gpus")
        #expect(problem(CapabilityQuery(limit: 0))?.field == "--limit")
        #expect(problem(CapabilityQuery(minReputation: 1.5))?.field == "--min-reputation")
        #expect(problem(CapabilityQuery(model: "RTX 4090"))?.field == "--gpu")
        #expect(problem(CapabilityQuery(minVRAMMiB: -1))?.field == "--min-vram")
        let tooBig = problem(CapabilityQuery(model: "rtx-4090", minVRAMMiB: 48 * 1024))
        #expect(tooBig?.field == "--min-vram")
        #expect(tooBig?.message == "rtx-4090 has 24 GiB; no rtx-4090 has 48 GiB")
        #expect(problem(CapabilityQuery(vendor: "amd", model: "rtx-4090"))?.message == "rtx-4090 is a nvidia GPU, not amd")
        #expect(problem(CapabilityQuery(model: "mi300x", minComputeCapability: ComputeCapability(major: 8, minor: 0)))?.field == "--min-cc")
        #expect(problem(CapabilityQuery(vendor: "amd", minComputeCapability: ComputeCapability(major: 8, minor: 0)))?.field == "--min-cc")
        // An unknown model is fine: the catalogue does not know every GPU.
        #expect(problem(CapabilityQuery(model: "acme-9000", minVRAMMiB: 1_000_000)) == nil)
    }

    @Test("a provider matches when enough of its GPUs meet every per-GPU condition")
    func matching() {
        let mixed = Provider(gpus: [GPUGroup(vendor: "nvidia", slug: "rtx-4090", vramMiB: 24_576, count: 1, computeCapability: ComputeCapability(major: 8, minor: 9)),
                                    GPUGroup(vendor: "nvidia", slug: "a100-80gb", vramMiB: 81_920, count: 2, computeCapability: ComputeCapability(major: 8, minor: 0))],
                             price: "2", freeSlots: 1, executors: [.sandbox, .docker]).capability
        #expect(CapabilityQuery().matches(mixed))
        #expect(CapabilityQuery(gpus: 3).matches(mixed))
        #expect(!CapabilityQuery(gpus: 4).matches(mixed))
        #expect(CapabilityQuery(minVRAMMiB: 40 * 1024, gpus: 2).matches(mixed))
        #expect(!CapabilityQuery(minVRAMMiB: 24 * 1024, gpus: 4).matches(mixed))
        #expect(!CapabilityQuery(model: "rtx-4090", gpus: 2).matches(mixed))
        #expect(CapabilityQuery(minComputeCapability: ComputeCapability(major: 8, minor: 5)).matches(mixed))
        #expect(!CapabilityQuery(gpus: 2, minComputeCapability: ComputeCapability(major: 8, minor: 5)).matches(mixed))
        #expect(CapabilityQuery(executor: .docker).matches(mixed))
        #expect(!CapabilityQuery(executor: .podman).matches(mixed))
        #expect(CapabilityQuery(maxPrice: Price(parsing: "2")).matches(mixed))
        #expect(!CapabilityQuery(maxPrice: Price(parsing: "1.999")).matches(mixed))
        #expect(!CapabilityQuery(vendor: "amd").matches(mixed))
        var busy = mixed
        busy.freeSlots = 0
        #expect(!CapabilityQuery().matches(busy))
        #expect(CapabilityQuery(includeBusy: true).matches(busy))
        #expect(!CapabilityQuery().matches(mixed.asWithdrawn))
    }

    @Test("the planner reads the most selective index keys")
    func planning() {
        #expect(CapabilityQuery().plan().keys.map(\.description) == ["any"])
        #expect(CapabilityQuery(vendor: "nvidia").plan().keys.map(\.description) == ["vendor/nvidia"])
        #expect(CapabilityQuery(vendor: "nvidia", model: "rtx-4090", minVRAMMiB: 24_576).plan().keys.map(\.description) == ["model/rtx-4090"])
        // Two VRAM tiers (2.4) beat `any` (3); three (3.6) do not, nor do nine.
        #expect(CapabilityQuery(minVRAMMiB: 128 * 1024).plan().keys.map(\.description) == ["vram/128", "vram/192"])
        #expect(CapabilityQuery(minVRAMMiB: 96 * 1024).plan().keys.map(\.description) == ["any"])
        #expect(CapabilityQuery(vendor: "nvidia", minVRAMMiB: 24 * 1024).plan().keys.map(\.description) == ["vendor/nvidia"])
        #expect(CapabilityQuery(minVRAMMiB: 24 * 1024).plan().keys.map(\.description) == ["any"])
        #expect(CapabilityQuery(minComputeCapability: ComputeCapability(major: 15, minor: 0)).plan().keys.map(\.description) == ["cc/15"])
        #expect(CapabilityQuery(minComputeCapability: ComputeCapability(major: 9, minor: 0)).plan().keys.map(\.description) == ["any"])
        let plan = CapabilityQuery(model: "t4").plan(shards: 4)
        #expect(plan.reads.map(\.name) == (0..<4).map { "gpumesh/capability/v1/model/t4#\($0)" })
    }
}

@Suite("Search and ranking")
struct SearchTests {
    /// Feeds every read of `search` from `held` (records by DHT name) until it finishes.
    func run(_ search: inout CapabilitySearch, held: [String: [CapabilityRecord]], now: UInt64 = 1_000) -> Int {
        var rounds = 0
        while !search.isFinished {
            let reads = search.nextReads()
            #expect(!reads.isEmpty)
            #expect(reads.count <= search.parallelism)
            for read in reads {
                search.received(read, records: (held[read.name] ?? []).map { ($0.provider, $0.encoded) }, now: now)
            }
            rounds += 1
        }
        return rounds
    }

    func publish(_ records: [CapabilityRecord], shards: Int = 4) -> [String: [CapabilityRecord]] {
        var held: [String: [CapabilityRecord]] = [:]
        for r in records {
            for name in CapabilityIndex.names(for: r.capability, provider: r.provider, shards: shards) { held[name, default: []].append(r) }
        }
        return held
    }

    @Test("every shard is read and exactly the matching providers are found; tombstones and stale records lose")
    func findsExactly() throws {
        let providers = (0..<40).map { i in
            Provider(gpus: [GPUGroup(vendor: "nvidia", slug: i % 2 == 0 ? "rtx-4090" : "a100-80gb", vramMiB: i % 2 == 0 ? 24_576 : 81_920,
                                     count: 1 + i % 3)], price: i % 4 == 0 ? "3" : "1")
        }
        var records = try providers.map { try $0.record(sequence: 10) }
        // Provider 0 withdrew (a tombstone with a higher sequence); provider 2's stale record is also held.
        records.append(try providers[0].record(sequence: 11, withdrawn: true))
        records.append(try providers[2].record(sequence: 3))
        let held = publish(records)
        let query = CapabilityQuery(model: "rtx-4090", gpus: 2, maxPrice: Price(parsing: "2"), limit: 100)
        var search = CapabilitySearch(query: query, plan: query.plan(shards: 4), seed: 1, parallelism: 3)
        let rounds = run(&search, held: held)
        #expect(rounds == 2)
        #expect(search.shardsRead == 4)
        let truth = providers.enumerated().filter { i, _ in i != 0 && i % 2 == 0 && 1 + i % 3 >= 2 && i % 4 != 0 }.map { $0.element.key.publicKey }
        #expect(Set(search.matches.map(\.provider)) == Set(truth))
        #expect(!truth.isEmpty)
        #expect(search.withdrawn == 1)
        #expect(search.refused.isEmpty)
    }

    @Test("a search with a small limit stops reading once it holds enough matches")
    func stopsEarly() throws {
        let records = try (0..<64).map { _ in try Provider().record() }
        let query = CapabilityQuery(limit: 3)
        var search = CapabilitySearch(query: query, plan: query.plan(shards: 32), seed: 9, parallelism: 2)
        _ = run(&search, held: publish(records, shards: 32))
        #expect(search.matches.count >= 3)
        #expect(search.shardsRead < 32)
    }

    @Test("a failed shard read is tried once more, next; a second failure is counted")
    func retriesOnce() throws {
        let record = try Provider().record()
        let query = CapabilityQuery(limit: 10)
        var search = CapabilitySearch(query: query, plan: QueryPlan(keys: [IndexKey(.any)], shards: 1), seed: 1)
        let read = try #require(search.nextReads().first)
        search.failed(read)
        #expect(search.shardsFailed == 0 && !search.isFinished)
        #expect(search.nextReads() == [read])
        search.received(read, records: [(record.provider, record.encoded)], now: 1_000)
        #expect(search.isFinished && search.matches.count == 1 && search.shardsRead == 1)

        var unlucky = CapabilitySearch(query: query, plan: QueryPlan(keys: [IndexKey(.any)], shards: 1), seed: 1)
        let first = try #require(unlucky.nextReads().first)
        unlucky.failed(first)
        unlucky.failed(try #require(unlucky.nextReads().first))
        #expect(unlucky.isFinished && unlucky.shardsFailed == 1 && unlucky.shardsRead == 1)
    }

    @Test("forged, misplaced and republished-by-others records are refused; identical copies are verified once")
    func refuses() throws {
        let honest = Provider()
        let good = try honest.record()
        let query = CapabilityQuery(limit: 10)
        let plan = QueryPlan(keys: [IndexKey(.any)], shards: 1)
        var search = CapabilitySearch(query: query, plan: plan, seed: 1)
        let read = try #require(search.nextReads().first)
        var forged = good.encoded
        forged[forged.count - 5] ^= 0xFF
        let elsewhere = try Provider(gpus: [GPUGroup(vendor: "amd", slug: "mi300x", vramMiB: 196_608, count: 1)]).record()
        let mallory = SigningKey().publicKey
        search.received(read, records: [(honest.key.publicKey, forged), (honest.key.publicKey, good.encoded), (honest.key.publicKey, good.encoded),
                                        (mallory, elsewhere.encoded), (elsewhere.provider, [1, 2, 3])], now: 1_000)
        #expect(search.refused == [.badSignature: 1, .wrongKey: 1, .malformed: 1])
        #expect(search.recordsFetched == 5)
        #expect(search.matches.map(\.provider) == [honest.key.publicKey])

        // A record under a key it does not match.
        var other = CapabilitySearch(query: CapabilityQuery(model: "mi300x"), plan: QueryPlan(keys: [IndexKey(.model, "mi300x")], shards: 1), seed: 1)
        let r2 = try #require(other.nextReads().first)
        other.received(r2, records: [(honest.key.publicKey, good.encoded)], now: 1_000)
        #expect(other.refused == [.misplaced: 1])
        #expect(other.isFinished)
        #expect(other.matches.isEmpty)
    }

    @Test("ranking: reputation, then price, then round trip; the shortlist keeps ties at the cut")
    func ranking() throws {
        let a = RankedOffer(record: try Provider(price: "1").record(), reputation: 0.9, rttMilliseconds: 50)
        let b = RankedOffer(record: try Provider(price: "0.5").record(), reputation: nil, rttMilliseconds: 1)
        let c = RankedOffer(record: try Provider(price: "0.5").record(), reputation: nil, rttMilliseconds: 3)
        let d = RankedOffer(record: try Provider(price: "0.5").record(), reputation: nil, rttMilliseconds: nil)
        let e = RankedOffer(record: try Provider(price: "2").record(), reputation: 0.2, rttMilliseconds: 1)
        let sorted = [e, d, c, b, a].sorted(by: Ranking.precedes)
        #expect(sorted.map(\.record.provider) == [a, b, c, d, e].map(\.record.provider))
        let unmeasured = [e, d, c, b, a].map { RankedOffer(record: $0.record, reputation: $0.reputation) }
        let short = Ranking.shortlist(unmeasured, limit: 2)
        #expect(short.count == 4)  // a, then the three tied at 0.5 points
        #expect(Set(short.map(\.record.provider)) == Set([a, b, c, d].map(\.record.provider)))
        #expect(Ranking.shortlist(unmeasured, limit: 10).count == 5)
    }
}
