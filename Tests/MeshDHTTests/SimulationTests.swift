import MeshCore
import MeshCrypto
@testable import MeshDHT
import MeshTestKit
import Testing

@Suite("Kademlia on a simulated network", .timeLimit(.minutes(3)))
struct SimulationTests {
    @Test("nodes joining through one bootstrap peer find exactly the k closest nodes of any key")
    func joinAndLookup() {
        var net = SimulatedNetwork(count: 200, seed: 42)
        net.joinAll()
        let score = net.scoreLookups(60)
        #expect(score.lookups == 60)
        #expect(score.exact == 60, "exact k closest in \(score.exact)/60")
        #expect(score.medianHops <= 4, "median hops \(score.medianHops)")
        // Nothing is left pending anywhere once the network is quiet.
        #expect(net.nodes.values.allSatisfy { $0.pendingRequests == 0 && $0.activeLookups == 0 })
    }

    @Test("with 25% of nodes gone without warning, lookups still reach the closest live nodes")
    func churn() {
        var net = SimulatedNetwork(count: 200, seed: 43)
        net.joinAll()
        var rng = SplitMix64(seed: 7)
        net.dead = Set(net.contacts.dropFirst().shuffled(using: &rng).prefix(50).map(\.peerID))
        let score = net.scoreLookups(100)
        #expect(score.lookups == 100)
        #expect(score.deadInResults == 0, "a dead node in a result")
        // Responders keep naming dead nodes until they time out on them themselves, which crowds
        // live nodes just past rank k out of their answers; the closest live nodes are still reached.
        #expect(score.closestFound >= 99, "closest live node found in \(score.closestFound)/100")
        #expect(score.overlap >= 100 * 20 * 3 / 4, "\(score.overlap) of 2000 closest-live slots (1,875 measured with this seed)")
    }

    @Test("two runs from the same seed are identical: tables, results, message counts")
    func deterministic() throws {
        func run() throws -> (Int, [[PeerID]], [PeerID: [PeerID]], [Int], [PeerID: Int]) {
            var net = SimulatedNetwork(count: 120, seed: 99)
            net.joinAll()
            var results: [[PeerID]] = []
            var hops: [Int] = []
            for _ in 0..<20 {
                let target = net.randomTarget()
                let start = net.randomLive()
                let found = net.lookup(target, from: start)
                results.append(try #require(found).result.map(\.id))
                hops.append(found!.hops)
            }
            // Records too: puts, gets, an expiry sweep and newcomers receiving replicas.
            for i in 0..<5 { _ = try net.publish([UInt8(i)], under: net.randomTarget(), from: net.contacts[i].peerID, lifetime: 120_000) }
            for _ in 0..<5 { _ = net.get(net.randomTarget(), from: net.randomLive()) }
            for _ in 0..<5 { net.addNode() }
            net.advance(by: 70_000)
            return (net.delivered, results, net.nodes.mapValues { $0.table.allNodes.map(\.id) }, hops,
                    net.nodes.mapValues { $0.store.count })
        }
        let a = try run(), b = try run()
        #expect(a.0 == b.0 && a.0 > 0)
        #expect(a.1 == b.1)
        #expect(a.2 == b.2)
        #expect(a.3 == b.3)
        #expect(a.4 == b.4 && a.4.values.reduce(0, +) > 0)
    }
}

@Suite("Kademlia under loss and partitions", .timeLimit(.minutes(3)))
struct LossAndPartitionTests {
    @Test("with 10% of messages lost, lookups still find the closest nodes and tables stay full")
    func loss() {
        var net = SimulatedNetwork(count: 150, seed: 51)
        net.joinAll()
        let before = net.nodes.values.map { $0.table.count }.reduce(0, +)
        net.lossRate = 0.10
        let score = net.scoreLookups(100)
        let foundClosest = score.closestFound, overlap = score.overlap
        let after = net.nodes.values.map { $0.table.count }.reduce(0, +)
        #expect(net.lost > 0)
        // Measured with this seed: 95/100 and 1,940/2,000 (one retry per request; without it,
        // 83/100 and 1,667). A lost request or answer is retried once; two in a row count as failure.
        #expect(foundClosest >= 90, "closest found in \(foundClosest)/100")
        #expect(overlap >= 2000 * 9 / 10, "\(overlap) of 2000 closest slots")
        #expect(after * 100 >= before * 98, "table entries before \(before), after \(after)")
    }

    @Test("a partition confines lookups to each side; once healed and refreshed, lookups are exact again")
    func partitionHeals() throws {
        var net = SimulatedNetwork(count: 120, seed: 52)
        net.joinAll()
        let ids = net.contacts.map(\.peerID)
        let sideA = Set(ids.prefix(60)), sideB = Set(ids.dropFirst(60))
        net.partitions = [sideA, sideB]
        for _ in 0..<20 {
            let target = net.randomTarget()
            let start = net.randomLive()
            let found = net.lookup(target, from: start)
            let r = try #require(found)
            let mySide = sideA.contains(start) ? sideA : sideB
            #expect(r.result.allSatisfy { mySide.contains($0.id) }, "a lookup crossed the partition")
            #expect(!r.result.isEmpty)
        }
        net.partitions = []
        // Healing: nodes relearn the other side by refreshing (as they do periodically).
        net.refreshAll()
        let score = net.scoreLookups(30)
        #expect(score.exact == 30, "exact after healing in \(score.exact)/30")
    }
}

@Suite("Disjoint-path lookups (S/Kademlia)", .timeLimit(.minutes(3)))
struct DisjointLookupTests {
    /// A record stored by an honest node, then read by honest nodes while 10% of the mesh lies:
    /// liars answer FIND_NODE with Sybil identities (ten times the honest mesh, one of them on the
    /// key itself) closest to the key, which answer alike and hold nothing. How many reads still
    /// find the record?
    func reads(paths: Int) throws -> (found: Int, reads: Int, exactWithoutLiars: Int) {
        var settings = Kademlia.Settings()
        settings.maxPerPrefixPerBucket = nil
        settings.disjointPaths = paths
        var net = SimulatedNetwork(count: 200, seed: 77, settings: settings)
        net.joinAll()
        let clean = net.scoreLookups(20)
        // The adversary aims at one key: its Sybil IDs sit around it (here: one of them is it).
        net.addSybils(2000)
        let key = net.sybils[0].peerID
        _ = try net.publish(Array("honest".utf8), under: key, from: net.contacts[3].peerID)
        var rng = SplitMix64(seed: 5)
        net.liars = Set(net.contacts.dropFirst(4).shuffled(using: &rng).prefix(20).map(\.peerID))
        var found = 0, reads = 0
        for i in 0..<60 {
            let reader = net.contacts[10 + i].peerID
            guard !net.liars.contains(reader) else { continue }
            let got = net.get(key, from: reader)
            reads += 1
            if got?.records.first?.value == Array("honest".utf8) { found += 1 }
        }
        return (found, reads, clean.exact)
    }

    @Test("with 10% of nodes steering lookups to Sybils, reads over three disjoint paths find a record far more often than over one")
    func disjointBeatsSingle() throws {
        let single = try reads(paths: 1)
        let disjoint = try reads(paths: 3)
        #expect(single.reads == disjoint.reads && single.reads >= 50)
        // Without liars, disjoint lookups are as exact as single ones.
        #expect(single.exactWithoutLiars == 20 && disjoint.exactWithoutLiars == 20)
        #expect(disjoint.found > single.found, "disjoint \(disjoint.found)/\(disjoint.reads), single \(single.found)/\(single.reads)")
        #expect(disjoint.found * 10 >= disjoint.reads * 9, "disjoint \(disjoint.found)/\(disjoint.reads)")
    }
}
