import MeshCore
import MeshCrypto
@testable import MeshDHT
import Testing

/// A deterministic source of test identities (SplitMix64), so failures reproduce.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A node with a pseudo-random key at `ip:port` (keys need not be valid points for routing).
func makeNode(_ rng: inout SeededGenerator, ip: IPAddress = .loopbackV4, port: UInt16, seen: UInt64 = 0) -> Kademlia.Node {
    let key = try! PublicKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })
    let contact = try! Contact(publicKey: key, addresses: [TransportAddress(.udp, SocketAddress(ip: ip, port: port))])
    return Kademlia.Node(contact: contact, lastSeen: seen)
}

@Suite("Kademlia routing table")
struct RoutingTableTests {
    @Test("nodes land in the bucket of their shared prefix; the table never holds itself")
    func buckets() {
        var rng = SeededGenerator(state: 1)
        let me = makeNode(&rng, port: 1)
        var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil  // every test node is on 127.0.0.1
        var table = Kademlia.RoutingTable(localID: me.id, settings: s)
        #expect(table.observe(me) == .isSelf)
        for i in 0..<300 {
            let n = makeNode(&rng, port: UInt16(10 + i))
            let b = table.bucketIndex(for: n.id)!
            #expect(b == 255 - me.id.distance(to: n.id).leadingZeroBitCount)
            _ = table.observe(n)
        }
        for b in 0..<256 {
            for n in table.nodes(inBucket: b) { #expect(table.bucketIndex(for: n.id) == b) }
            #expect(table.nodes(inBucket: b).count <= 20)
        }
        // Random IDs: about half share no prefix bit with us, so bucket 255 is full.
        #expect(table.nodes(inBucket: 255).count == 20)
    }

    @Test("a full bucket keeps its nodes, parks newcomers, and promotes one when a node fails")
    func evictionAndReplacement() {
        var rng = SeededGenerator(state: 2)
        let me = makeNode(&rng, port: 1)
        var settings = Kademlia.Settings()
        settings.k = 4
        settings.replacementCacheSize = 2
        settings.maxPerPrefixPerBucket = nil
        var table = Kademlia.RoutingTable(localID: me.id, settings: settings)
        var far: [Kademlia.Node] = []
        var port: UInt16 = 10
        while far.count < 7 {
            let n = makeNode(&rng, port: port, seen: UInt64(port))
            port += 1
            if table.bucketIndex(for: n.id) == 255 { far.append(n) }
        }
        for n in far[0..<4] { #expect(table.observe(n) == .added) }
        #expect(table.observe(far[4]) == .bucketFull(leastRecentlySeen: far[0]))
        #expect(table.observe(far[5]) == .bucketFull(leastRecentlySeen: far[0]))
        #expect(table.observe(far[6]) == .bucketFull(leastRecentlySeen: far[0]))
        #expect(table.replacementCandidates(inBucket: 255).map(\.id) == [far[5].id, far[6].id], "the cache keeps the newest 2")
        // The least recently seen answered the ping: it becomes the most recently seen.
        #expect(table.observe(far[0]) == .refreshed)
        #expect(table.nodes(inBucket: 255).map(\.id) == [far[1], far[2], far[3], far[0]].map(\.id))
        // A node fails: the newest replacement takes its place.
        #expect(table.nodeFailed(far[1].id)?.id == far[6].id)
        #expect(table.nodes(inBucket: 255).map(\.id) == [far[2], far[3], far[0], far[6]].map(\.id))
        #expect(table.nodeFailed(far[1].id) == nil, "already gone")
        #expect(table.count == 4)
    }

    @Test("at most N nodes of one IP prefix per bucket, unless the limit is off")
    func diversity() {
        var rng = SeededGenerator(state: 3)
        let me = makeNode(&rng, port: 1)
        var limited = Kademlia.RoutingTable(localID: me.id)
        var unlimited: Kademlia.RoutingTable = {
            var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil
            return Kademlia.RoutingTable(localID: me.id, settings: s)
        }()
        var sameSubnet: [Kademlia.Node] = []
        var port: UInt16 = 10
        while sameSubnet.count < 3 {
            let n = makeNode(&rng, ip: .v4(192, 0, 2, UInt8(port % 250)), port: port)
            port += 1
            if limited.bucketIndex(for: n.id) == 255 { sameSubnet.append(n) }
        }
        #expect(limited.observe(sameSubnet[0]) == .added)
        #expect(limited.observe(sameSubnet[1]) == .added)
        #expect(limited.observe(sameSubnet[2]) == .rejectedDiversity)
        for n in sameSubnet { #expect(unlimited.observe(n) == .added) }
        var other = makeNode(&rng, ip: .v4(198, 51, 100, 7), port: 9)
        while limited.bucketIndex(for: other.id) != 255 { other = makeNode(&rng, ip: .v4(198, 51, 100, 7), port: 9) }
        #expect(limited.observe(other) == .added, "another /24 is welcome")
    }

    @Test("closest(to:) matches a brute-force sort")
    func closest() {
        var rng = SeededGenerator(state: 4)
        let me = makeNode(&rng, port: 1)
        var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil; s.k = 256
        var table = Kademlia.RoutingTable(localID: me.id, settings: s)
        let nodes = (0..<500).map { makeNode(&rng, port: UInt16(10 + $0)) }
        for n in nodes { _ = table.observe(n) }
        #expect(table.count == 500)
        // Random targets, targets next to a node, the local ID itself, and several counts.
        var targets = (0..<20).map { _ in makeNode(&rng, port: 9).id }
        targets += nodes.prefix(10).map { n in PeerID(words: (n.id.words.0, n.id.words.1, n.id.words.2, n.id.words.3 ^ 1)) }
        targets.append(me.id)
        for target in targets {
            for count in [1, 20, 77, 600] {
                let expected = nodes.sorted { $0.id.distance(to: target) < $1.id.distance(to: target) }.prefix(count).map(\.id)
                #expect(table.closest(to: target, count: count).map(\.id) == Array(expected))
            }
        }
    }
}

@Suite("Kademlia lookups")
struct LookupTests {
    /// A static network: every node's table observed every other node (so buckets are full but
    /// honest); a lookup asks the live ones through their `closest(to:)`. The bare `Lookup` does
    /// not know who asks, so here the asker can be part of the answer (`Instance` filters itself).
    struct Network {
        let nodes: [Kademlia.Node]
        let tables: [PeerID: Kademlia.RoutingTable]

        init(count: Int, seed: UInt64) {
            var rng = SeededGenerator(state: seed)
            var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil
            let nodes = (0..<count).map { makeNode(&rng, port: UInt16(1000 + $0)) }
            var tables: [PeerID: Kademlia.RoutingTable] = [:]
            for n in nodes {
                var t = Kademlia.RoutingTable(localID: n.id, settings: s)
                for other in nodes.shuffled(using: &rng) { _ = t.observe(other) }
                tables[n.id] = t
            }
            self.nodes = nodes
            self.tables = tables
        }

        func lookup(_ target: PeerID, from start: PeerID, dead: Set<PeerID> = []) -> Kademlia.Lookup {
            var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil
            var lookup = Kademlia.Lookup(target: target, seeds: tables[start]!.closest(to: target, count: s.k), settings: s)
            var rounds = 0
            while !lookup.isFinished && rounds < 1000 {
                rounds += 1
                let asked = lookup.next()
                if asked.isEmpty { break }
                for n in asked {
                    if dead.contains(n.id) { lookup.failed(n.id) } else { lookup.responded(n.id, closer: tables[n.id]!.closest(to: target, count: s.k)) }
                }
            }
            return lookup
        }
    }

    @Test("every lookup returns exactly the k closest nodes, in a few hops")
    func exact() {
        let net = Network(count: 500, seed: 7)
        var rng = SeededGenerator(state: 8)
        var hops: [Int] = []
        for _ in 0..<100 {
            let target = makeNode(&rng, port: 1).id
            let start = net.nodes.randomElement(using: &rng)!.id
            let l = net.lookup(target, from: start)
            #expect(l.isFinished)
            let expected = net.nodes.sorted { $0.id.distance(to: target) < $1.id.distance(to: target) }.prefix(20).map(\.id)
            #expect(l.result.map(\.id) == Array(expected))
            hops.append(l.hops)
        }
        hops.sort()
        #expect(hops[hops.count / 2] <= 4, "median hops \(hops[hops.count / 2])")
    }

    @Test("with 25% of nodes dead and still in every table, lookups still reach the closest live nodes")
    func churn() {
        let net = Network(count: 500, seed: 9)
        var rng = SeededGenerator(state: 10)
        let dead = Set(net.nodes.shuffled(using: &rng).prefix(125).map(\.id))
        let live = net.nodes.filter { !dead.contains($0.id) }
        var foundClosest = 0
        var overlap = 0
        for _ in 0..<100 {
            let target = makeNode(&rng, port: 1).id
            let start = live.randomElement(using: &rng)!.id
            let l = net.lookup(target, from: start, dead: dead)
            #expect(l.isFinished)
            let expected = Set(live.sorted { $0.id.distance(to: target) < $1.id.distance(to: target) }.prefix(20).map(\.id))
            let got = l.result.map(\.id)
            #expect(got.allSatisfy { !dead.contains($0) }, "a dead node in a result")
            #expect(got == got.sorted { $0.distance(to: target) < $1.distance(to: target) }, "results nearest first")
            if let first = got.first, first == live.min(by: { $0.id.distance(to: target) < $1.id.distance(to: target) })!.id { foundClosest += 1 }
            overlap += expected.intersection(got).count
        }
        // Dead nodes stay in every table here (no healing), so responders keep naming them and
        // live nodes ranked just past k go unmentioned: the lookup still reaches the closest live
        // nodes, which is what storing and finding records needs.
        #expect(foundClosest >= 99, "closest live node found in \(foundClosest)/100 lookups")
        #expect(overlap >= 100 * 20 * 3 / 4, "\(overlap) of 2000 closest-live slots found")
    }

    @Test("never more than alpha requests in flight; answers from strangers are ignored")
    func alphaAndStrays() {
        let net = Network(count: 100, seed: 11)
        var rng = SeededGenerator(state: 12)
        let target = makeNode(&rng, port: 1).id
        var l = Kademlia.Lookup(target: target, seeds: net.tables[net.nodes[0].id]!.closest(to: target, count: 20))
        let first = l.next()
        #expect(first.count == 3)
        #expect(l.next().isEmpty, "alpha requests already in flight")
        l.responded(makeNode(&rng, port: 2).id, closer: net.nodes)  // nobody asked it
        #expect(l.next().isEmpty)
        l.failed(first[0].id)
        #expect(l.next().count == 1)
        #expect(l.requestsSent == 4)
    }
}

@Suite("Kademlia instance")
struct InstanceTests {
    @Test("random IDs for a bucket land in that bucket")
    func randomIDs() {
        var rng = SeededGenerator(state: 21)
        let me = makeNode(&rng, port: 1)
        var instance = Kademlia.Instance(local: me.contact, seed: 5)
        for b in [0, 1, 62, 63, 64, 127, 128, 191, 192, 200, 254, 255] {
            for _ in 0..<20 { #expect(instance.table.bucketIndex(for: instance.randomID(inBucket: b)) == b) }
        }
    }

    @Test("answers pings and FIND_NODE, never listing the asker; stray responses are ignored")
    func answers() {
        var rng = SeededGenerator(state: 22)
        let me = makeNode(&rng, port: 1)
        var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil
        var instance = Kademlia.Instance(local: me.contact, settings: s, seed: 6)
        let asker = makeNode(&rng, port: 2)
        let out = instance.onMessage(.init(requestID: 9, body: .ping), from: asker.contact, now: 100)
        #expect(out == [.send(.init(requestID: 9, body: .pong), to: asker.contact)])
        #expect(instance.table.node(asker.id) != nil, "a requester is learned")
        let others = (0..<30).map { makeNode(&rng, port: UInt16(10 + $0)) }
        for o in others { _ = instance.onMessage(.init(requestID: 1, body: .ping), from: o.contact, now: 100) }
        let found = instance.onMessage(.init(requestID: 10, body: .findNode(target: asker.id)), from: asker.contact, now: 101)
        guard case .send(let reply, _)? = found.last, case .nodes(let listed) = reply.body else { Issue.record("no nodes reply"); return }
        #expect(reply.requestID == 10 && listed.count == 20)
        #expect(!listed.contains { $0.peerID == asker.id })
        #expect(instance.onMessage(.init(requestID: 12345, body: .pong), from: asker.contact, now: 102).isEmpty)
    }

    @Test("a full bucket pings its least recently seen node only after a quiet minute; a node that never answers is replaced")
    func evictionPing() {
        var rng = SeededGenerator(state: 31)
        let me = makeNode(&rng, port: 1)
        var s = Kademlia.Settings()
        s.maxPerPrefixPerBucket = nil
        s.k = 2
        var instance = Kademlia.Instance(local: me.contact, settings: s, seed: 9)
        // Four nodes of bucket 255 (the far half of the ID space).
        var far: [Kademlia.Node] = []
        var port: UInt16 = 10
        while far.count < 4 {
            let n = makeNode(&rng, port: port)
            port += 1
            if instance.table.bucketIndex(for: n.id) == 255 { far.append(n) }
        }
        _ = instance.onMessage(.init(requestID: 1, body: .ping), from: far[0].contact, now: 0)
        _ = instance.onMessage(.init(requestID: 2, body: .ping), from: far[1].contact, now: 10)
        // Full; the least recently seen node was heard 30 s ago: no ping, the newcomer waits.
        let early = instance.onMessage(.init(requestID: 3, body: .ping), from: far[2].contact, now: 30_000)
        #expect(early == [.send(.init(requestID: 3, body: .pong), to: far[2].contact)])
        #expect(instance.table.replacementCandidates(inBucket: 255).map(\.id) == [far[2].id])
        // A minute on, the next newcomer makes the node check its least recently seen one.
        let later = instance.onMessage(.init(requestID: 4, body: .ping), from: far[3].contact, now: 70_000)
        guard case .send(let check, let to)? = later.first, check.body == .ping, to == far[0].contact,
              case .setTimeout(let id, let deadline)? = later.dropFirst().first else {
            Issue.record("expected a ping to the least recently seen node, got \(later)")
            return
        }
        // No answer, twice: it is dropped and the newest waiting candidate takes its place.
        let retry = instance.onTimeout(requestID: id, now: deadline)
        guard case .setTimeout(let id2, let deadline2)? = retry.last else { Issue.record("no retry"); return }
        _ = instance.onTimeout(requestID: id2, now: deadline2)
        #expect(instance.table.node(far[0].id) == nil)
        #expect(instance.table.node(far[3].id) != nil)
        #expect(instance.table.nodes(inBucket: 255).count == 2)
        #expect(instance.pendingRequests == 0)
    }

    @Test("request timeouts follow the measured round-trip time, within bounds")
    func timeouts() {
        var rng = SeededGenerator(state: 23)
        let me = makeNode(&rng, port: 1)
        var s = Kademlia.Settings(); s.maxPerPrefixPerBucket = nil
        var instance = Kademlia.Instance(local: me.contact, settings: s, seed: 7)
        let peer = makeNode(&rng, port: 2)
        #expect(instance.timeout(for: peer.id) == Kademlia.Instance.defaultTimeout)
        var now: UInt64 = 1_000
        for _ in 0..<20 {
            let (_, out) = instance.bootstrap([peer.contact], now: now)
            guard case .send(let m, _)? = out.first(where: { if case .send = $0 { true } else { false } }) else { Issue.record("nothing sent"); return }
            now += 8
            _ = instance.onMessage(.init(requestID: m.requestID, body: .nodes([])), from: peer.contact, now: now)
        }
        #expect(instance.timeout(for: peer.id) < 100 && instance.timeout(for: peer.id) >= Kademlia.Instance.minTimeout)
    }
}
