import MeshCore
import MeshCrypto
@testable import MeshDHT
import MeshTestKit
import Testing

@Suite("DHT records on a simulated network", .timeLimit(.minutes(3)))
struct SimulatedRecordTests {
    @Test("a record outlives its publisher until it expires, then it is gone everywhere")
    func outlivesPublisherUntilExpiry() throws {
        var net = SimulatedNetwork(count: 150, seed: 5)
        net.joinAll()
        let key = net.randomTarget()
        let publisher = net.contacts[17].peerID
        let putResult = try net.publish(Array("gpu: rtx-4090".utf8), under: key, from: publisher, lifetime: 60_000)
        let put = try #require(putResult)
        #expect(put.stored == 20, "stored on \(put.stored) of 20 closest")
        net.dead.insert(publisher)
        var readers = 0
        for _ in 0..<20 {
            let reader = net.randomLive()
            let gotResult = net.get(key, from: reader)
            let got = try #require(gotResult)
            #expect(got.records.map(\.value) == [Array("gpu: rtx-4090".utf8)])
            #expect(got.records.first?.publisher == net.keys[publisher]!.publicKey)
            readers += 1
        }
        #expect(readers == 20)
        // Past its expiry nobody returns it, and storing nodes have dropped it.
        net.advance(by: 60_001)
        let afterResult = net.get(key, from: net.randomLive())
        let after = try #require(afterResult)
        #expect(after.records.isEmpty)
        #expect(net.nodes.filter { !net.dead.contains($0.key) }.values.allSatisfy { $0.store.count == 0 })
    }

    @Test("many publishers under one key are all returned, through paging")
    func manyPublishersWithPaging() throws {
        var net = SimulatedNetwork(count: 100, seed: 6)
        net.joinAll()
        let key = net.randomTarget()
        // 40 publishers with 600-byte values: one page carries only one record.
        let publishers = net.contacts.prefix(40).map(\.peerID)
        for (i, p) in publishers.enumerated() {
            let putResult = try net.publish([UInt8](repeating: UInt8(i), count: 600), under: key, from: p)
            let put = try #require(putResult)
            #expect(put.stored >= 19)
        }
        let reader = net.contacts[90].peerID
        let gotResult = net.get(key, from: reader, limit: 100)
        let got = try #require(gotResult)
        #expect(got.records.count == 40)
        #expect(Set(got.records.map(\.publisher)) == Set(publishers.map { net.keys[$0]!.publicKey }))
        #expect(got.requests > 40, "paged: \(got.requests) requests")
        let limitedResult = net.get(key, from: reader, limit: 5)
        let limited = try #require(limitedResult)
        #expect(limited.records.count == 5)
    }

    @Test("publishers republish before expiry; nodes that join later receive records they should hold")
    func republishAndReplication() throws {
        var net = SimulatedNetwork(count: 80, seed: 7)
        net.joinAll()
        let key = net.randomTarget()
        let publisher = net.contacts[3].peerID
        let ignoredResult = try net.publish([42], under: key, from: publisher, lifetime: 10 * 60_000)
        _ = try #require(ignoredResult)
        let firstResult = net.get(key, from: net.contacts[50].peerID)
        let first = try #require(firstResult).records.first
        // Past half its lifetime the publisher re-signs it with a higher sequence and a later expiry.
        net.advance(by: 5 * 60_000 + 1)
        let secondResult = net.get(key, from: net.contacts[50].peerID)
        let second = try #require(secondResult).records.first
        #expect(try #require(second).sequence > (try #require(first)).sequence)
        #expect(second!.expiresAt > first!.expiresAt)
        // Sixty newcomers join; those now among the 20 closest to the key get the record from a holder.
        var newcomers: [PeerID] = []
        for _ in 0..<60 { newcomers.append(net.addNode()) }
        let closest = net.closestLive(to: key, 20, excluding: PeerID(words: (0, 0, 0, 0)))
        let closeNewcomers = newcomers.filter { closest.contains($0) }
        #expect(!closeNewcomers.isEmpty, "no newcomer among the closest (choose another seed)")
        for n in closeNewcomers { #expect(net.nodes[n]!.store.records(for: key, now: net.now).count == 1, "newcomer \(n.short) lacks the record") }
        #expect(net.nodes.values.reduce(0) { $0 + $1.replicationsSent } > 0)
    }

    @Test("a put through a storing node that is full of one publisher's records still reaches the others")
    func publisherCannotFillNodes() throws {
        var settings = Kademlia.Settings()
        settings.maxPerPrefixPerBucket = nil
        settings.maxRecordsPerPublisher = 3
        var net = SimulatedNetwork(count: 60, seed: 8, settings: settings)
        net.joinAll()
        let flooder = net.contacts[1].peerID
        var refused = 0
        for _ in 0..<10 {
            let putResult = try net.publish([1], under: net.randomTarget(), from: flooder)
            let put = try #require(putResult)
            refused += put.refused
        }
        #expect(refused > 0, "storing nodes never hit the per-publisher cap")
        #expect(net.nodes.values.allSatisfy { $0.store.count <= 3 + 1 })  // its own copy is the +1 on the flooder
        let honestResult = try net.publish([2], under: net.randomTarget(), from: net.contacts[2].peerID)
        let honest = try #require(honestResult)
        #expect(honest.stored == 20)
    }
}

@Suite("Kademlia at 2,000 nodes", .timeLimit(.minutes(8)))
struct LargeSimulationTests {
    @Test("2,000 nodes: lookups return exactly the k closest; with 25% gone, >= 99% still reach the closest live node; records survive")
    func twoThousand() throws {
        var net = SimulatedNetwork(count: 2000, seed: 2000)
        net.joinAll()
        let score = net.scoreLookups(50)
        #expect(score.exact == 50, "exact k closest in \(score.exact)/50")
        let key = net.randomTarget()
        let publisher = net.contacts[1234].peerID
        let ignoredResult = try net.publish(Array("provider".utf8), under: key, from: publisher)
        _ = try #require(ignoredResult)
        var rng = SplitMix64(seed: 1)
        net.dead = Set(net.contacts.dropFirst().shuffled(using: &rng).prefix(500).map(\.peerID))
        net.dead.insert(publisher)
        let churned = net.scoreLookups(100)
        #expect(churned.closestFound >= 99, "closest live node found in \(churned.closestFound)/100")
        #expect(churned.deadInResults == 0)
        var found = 0
        for _ in 0..<20 where net.get(key, from: net.randomLive())?.records.count == 1 { found += 1 }
        #expect(found == 20, "record read by \(found)/20 after its publisher and 25% of nodes left")
    }
}
