import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshDHT
import MeshJobs
import MeshMarket
@testable import MeshRuntime
import Testing

/// The capability a node offers for a `--simulate-gpus` spec.
func simulatedOffer(_ node: MeshNode, _ spec: String, price: String = "1", slots: Int = 1) throws -> Capability {
    var terms = ProviderConfig()
    terms.price = Price(parsing: price)!
    terms.slots = slots
    let host = HostFacts(cpuModel: "Test CPU", cpuCores: 8, ramMiB: 32_768, diskFreeMiB: 100_000)
    return OfferBuilder.capability(contact: node.contact, gpus: try SimulatedGPUs.parse(spec), host: host, terms: terms, available: [.sandbox])
}

@Suite("Capability discovery over real sockets", .timeLimit(.minutes(5)))
struct MarketNodeTests {
    @Test("100 nodes, mixed simulated GPUs: find returns exactly the matching providers; withdrawn ones vanish at once, killed ones at expiry, forged ones never appear")
    func hundredNodes() async throws {
        let loops = try (0..<4).map { try EventLoop(name: "market-\($0)") }
        defer { loops.forEach { $0.shutdown() } }
        let first = try await MeshNode.start(on: loops[0], options: loopbackOptions())
        var nodes = [first]
        for i in 1..<100 { nodes.append(try await MeshNode.start(on: loops[i % 4], options: loopbackOptions(bootstrap: [first.contact]))) }
        let all = nodes
        #expect(try await eventually(60) {
            for n in all { if try await n.dhtState().joined == false { return false } }
            return true
        })

        // 60 providers with a mix of GPUs, prices and slots; nodes 60-99 are renters only.
        let specs = ["1x rtx-4090", "2x rtx-4090", "4x a100-80gb", "1x h100-80gb", "2x rtx-3090", "1x mi300x",
                     "1x rtx-4090,1x a100-80gb", "8x t4", "1x my-gpu:20GiB", "2x l40s"]
        var offers: [PublicKey: Capability] = [:]
        for i in 0..<60 {
            let busy = i % 13 == 12
            let offer = try simulatedOffer(nodes[i], specs[i % specs.count], price: ["0.5", "1", "1.5", "2.25"][i % 4], slots: busy ? 1 : 2)
            // The killed provider (59) lives 6 s, so the test can wait out its expiry.
            let outcome = try await nodes[i].provide(offer, lifetime: .seconds(i == 59 ? 6 : 600))
            #expect(outcome.keysStored == outcome.indexNames.count, "provider \(i): \(outcome)")
            if busy { _ = try await nodes[i].updateOffer(freeSlots: 0) }
            var published = offer
            if busy { published.freeSlots = 0 }
            offers[nodes[i].identity.publicKey] = published
        }

        let queries: [CapabilityQuery] = [
            CapabilityQuery(limit: 2048),
            CapabilityQuery(model: "rtx-4090", limit: 2048),
            CapabilityQuery(model: "rtx-4090", minVRAMMiB: 24 * 1024, gpus: 2, maxPrice: Price(parsing: "1.5"), limit: 2048),
            CapabilityQuery(vendor: "amd", limit: 2048),
            CapabilityQuery(minVRAMMiB: 40 * 1024, gpus: 2, limit: 2048),
            CapabilityQuery(gpus: 4, minComputeCapability: ComputeCapability(major: 7, minor: 5), limit: 2048),
            CapabilityQuery(minComputeCapability: ComputeCapability(major: 9, minor: 0), limit: 2048),
            CapabilityQuery(minVRAMMiB: 20 * 1024, maxPrice: Price(parsing: "0.5"), limit: 2048, includeBusy: true),
        ]
        func truth(_ q: CapabilityQuery, without gone: Set<PublicKey> = []) -> Set<PublicKey> {
            Set(offers.filter { !gone.contains($0.key) && q.matches($0.value) }.keys)
        }
        var hits = 0, expected = 0, wrong = 0
        for (i, q) in queries.enumerated() {
            let renter = nodes[60 + i]
            let result = try await renter.find(q, measureRTT: i < 2)
            let got = Set(result.offers.map(\.record.provider))
            let want = truth(q)
            #expect(!want.isEmpty, "query \(i) has no ground truth")
            hits += got.intersection(want).count
            expected += want.count
            wrong += got.subtracting(want).count
            #expect(result.refused.isEmpty)
            #expect(result.shardsFailed == 0)
            if i < 2 { #expect(result.offers.allSatisfy { $0.rttMilliseconds != nil }) }
            // Ranked by price (nobody has a reputation yet).
            #expect(result.offers.map(\.record.capability.price) == result.offers.map(\.record.capability.price).sorted())
        }
        #expect(wrong == 0, "precision: \(wrong) offers that do not match")
        #expect(Double(hits) >= 0.99 * Double(expected), "recall \(hits)/\(expected)")

        // A provider that stops cleanly disappears at once.
        let leaving = nodes[1]
        let leavingKey = leaving.identity.publicKey
        await leaving.stop()
        let afterStop = try await nodes[70].find(CapabilityQuery(model: "rtx-4090", limit: 2048), measureRTT: false)
        #expect(!afterStop.offers.contains { $0.record.provider == leavingKey })
        #expect(afterStop.withdrawn >= 1)
        #expect(Set(afterStop.offers.map(\.record.provider)) == truth(CapabilityQuery(model: "rtx-4090"), without: [leavingKey]))

        // Forged records: a rogue node stores another provider's capability under its own DHT
        // envelope, a capability with a broken signature, and its own record in a shard it does not
        // hash to. None of them is ever returned.
        let rogue = nodes[99]
        let victim = nodes[0]
        let victimRecord = try #require(try await victim.currentOffer())
        let anyKey = IndexKey(.any)
        let victimShard = CapabilityIndex.shard(of: victim.identity.publicKey)
        _ = try await rogue.publish(key: Kademlia.key(named: anyKey.shardName(victimShard)), value: victimRecord.encoded)
        var broken = victimRecord.encoded
        broken[broken.count - 1] ^= 1
        _ = try await rogue.publish(key: Kademlia.key(named: IndexKey(.model, "rtx-4090").shardName(victimShard)), value: broken)
        let rogueOffer = try simulatedOffer(rogue, "8x h200", price: "0.001")
        let rogueRecord = try CapabilityRecord.sign(rogueOffer, sequence: 1, expiresAt: MeshNode.wallClockMilliseconds() + 60_000, by: rogue.identity)
        let wrongShard = (CapabilityIndex.shard(of: rogue.identity.publicKey) + 1) % CapabilityIndex.defaultShards
        _ = try await rogue.publish(key: Kademlia.key(named: anyKey.shardName(wrongShard)), value: rogueRecord.encoded)
        let withForgeries = try await nodes[80].find(CapabilityQuery(limit: 2048), measureRTT: false)
        #expect(!withForgeries.offers.contains { $0.record.provider == rogue.identity.publicKey })
        #expect(withForgeries.refused[.wrongKey, default: 0] >= 1)
        #expect(withForgeries.refused[.misplaced, default: 0] >= 1)
        #expect(Set(withForgeries.offers.map(\.record.provider)) == truth(CapabilityQuery(), without: [leavingKey]))
        let h200 = try await nodes[81].find(CapabilityQuery(model: "h200", limit: 10), measureRTT: false)
        #expect(h200.offers.isEmpty)
        let rtx = try await nodes[82].find(CapabilityQuery(model: "rtx-4090", limit: 2048), measureRTT: false)
        #expect(rtx.refused[.badSignature, default: 0] >= 1)

        // A killed provider (no tombstone) is unreachable at once and gone once its record expires.
        let killed = nodes[59]
        let killedKey = killed.identity.publicKey
        let killedQuery = CapabilityQuery(model: GPUCatalogue.slug(for: specs[59 % specs.count].split(separator: " ").last.map(String.init) ?? ""), limit: 2048)
        _ = try await killed.loop.submit { killed.provider?.timer?.cancel(); killed.provider = nil }  // no tombstone
        await killed.stop()
        let soon = try await nodes[90].find(killedQuery, measureRTT: true)
        if let stale = soon.offers.first(where: { $0.record.provider == killedKey }) { #expect(stale.rttMilliseconds == nil) }
        #expect(try await eventually(15) {
            try await nodes[91].find(killedQuery, measureRTT: false).offers.allSatisfy { $0.record.provider != killedKey }
        })
        // A provider that changes its GPUs leaves the keys it no longer matches with a tombstone
        // (put once, not kept alive), and a withdrawn provider keeps nothing alive in the DHT.
        let changing = nodes[3]  // was 1x h100-80gb
        let moved = try await changing.provide(try simulatedOffer(changing, "1x mi300x"))
        #expect(try await changing.dhtSnapshot().recordsPublished == moved.indexNames.count)
        let h100 = try await nodes[92].find(CapabilityQuery(model: "h100-80gb", limit: 2048), measureRTT: false)
        #expect(!h100.offers.contains { $0.record.provider == changing.identity.publicKey })
        #expect(h100.withdrawn >= 1)
        let mi300x = try await nodes[93].find(CapabilityQuery(model: "mi300x", limit: 2048), measureRTT: false)
        #expect(mi300x.offers.contains { $0.record.provider == changing.identity.publicKey })
        _ = try await changing.withdrawOffer()
        #expect(try await changing.dhtSnapshot().recordsPublished == 0)
        #expect(try await changing.currentOffer() == nil)

        // Teardown: every node at once (each stop withdraws its offer first).
        await withTaskGroup(of: Void.self) { group in
            for n in all { group.addTask { await n.stop() } }
        }
    }
}

@Suite("Offers from detected hardware")
struct OfferBuilderTests {
    @Test("GPUs group by model with the catalogue's nominal memory; unknown models keep what the driver said")
    func grouping() throws {
        func gpu(_ name: String, _ mib: Int, _ cc: String?) -> GPUInfo {
            GPUInfo(index: 0, name: name, slug: GPUCatalogue.slug(for: name, memoryMiB: mib), vendor: "nvidia", uuid: nil, memoryTotalMiB: mib,
                    memoryFreeMiB: nil, computeCapability: cc, driverVersion: nil, source: .nvidiaSMI)
        }
        let groups = OfferBuilder.groups([gpu("NVIDIA GeForce RTX 4090", 24_564, "8.9"), gpu("Tesla T4", 15_360, "7.5"),
                                          gpu("NVIDIA GeForce RTX 4090", 24_564, "8.9"), gpu("Acme Tensor 9000", 20_000, nil)])
        #expect(groups == [GPUGroup(vendor: "nvidia", slug: "rtx-4090", vramMiB: 24_576, count: 2, computeCapability: ComputeCapability(major: 8, minor: 9)),
                           GPUGroup(vendor: "nvidia", slug: "t4", vramMiB: 16_384, count: 1, computeCapability: ComputeCapability(major: 7, minor: 5)),
                           GPUGroup(vendor: "nvidia", slug: "acme-tensor-9000", vramMiB: 20_000, count: 1)])
        // A card reporting far from its catalogue size (a cut-down variant) keeps its own figure.
        #expect(OfferBuilder.nominalVRAMMiB(gpu("NVIDIA GeForce RTX 4090", 16_000, nil)) == 16_000)
        let key = SigningKey()
        let contact = Contact.fromEndpoint(publicKey: key.publicKey, udp: SocketAddress(ip: .loopbackV4, port: 7400), tcpPort: 7400)!
        var terms = ProviderConfig()
        terms.slots = 3
        let offer = OfferBuilder.capability(contact: contact, gpus: try SimulatedGPUs.parse("1x rtx-4090"),
                                            host: HostFacts(cpuModel: String(repeating: "x", count: 200), cpuCores: 4, ramMiB: 1, diskFreeMiB: 1),
                                            terms: terms, available: [.docker])
        #expect(offer.problem == nil)
        #expect(offer.cpuModel.utf8.count == Capability.maxCPUModelBytes)
        #expect(offer.executors == [.docker] && offer.freeSlots == 3 && offer.totalSlots == 3)
        #expect(OfferBuilder.availableExecutors(path: "/nonexistent").isEmpty)
    }
}
