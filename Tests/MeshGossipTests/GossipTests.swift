import MeshCore
import MeshCrypto
@testable import MeshGossip
import MeshTestKit
import Testing

private let t0: UInt64 = 1_800_000_000_000

private func peer(_ i: Int, key: SigningKey = SigningKey()) -> (SigningKey, Contact) {
    (key, try! Contact(publicKey: key.publicKey, addresses: [TransportAddress(.udp, SocketAddress(ip: .loopbackV4, port: UInt16(7000 + i)))]))
}

@Suite("Gossip messages and wire")
struct GossipWireTests {
    @Test("messages and datagram bodies round-trip; malformed ones are refused")
    func roundTrip() throws {
        let key = SigningKey()
        let m = Gossip.Message.sign(topic: .report, payload: Array("peer X did not show".utf8), sequence: 7, expiresAt: t0, by: key)
        let back = try #require(Gossip.Message(decoding: m.envelope.encoded))
        #expect(back == m && back.topic == .report && back.origin == key.publicKey && back.id.bytes.count == 32)
        for wire in [Gossip.Wire.push(hops: 3, message: m.envelope.encoded), .ihave([m.id]), .iwant([m.id, m.id])] {
            #expect(Gossip.Wire(decoding: wire.encode()) == wire)
        }
        #expect(Gossip.Wire(decoding: [25, 2] + m.id.bytes) == nil)        // says two IDs, carries one
        #expect(Gossip.Wire(decoding: [26, 0]) == nil)                    // an empty IWANT asks nothing
        #expect(Gossip.Wire(decoding: [25, 0]) == .ihave([]))             // an empty IHAVE is a keepalive
        #expect(Gossip.Wire.iwant([m.id]).encode().count == Gossip.Wire.paddedIWantBytes)
        #expect(Gossip.Wire(decoding: Gossip.Wire.iwant([m.id]).encode() + [0]) == .iwant([m.id]))
        #expect(Gossip.Wire(decoding: Gossip.Wire.iwant([m.id]).encode() + [1]) == nil)  // padding is zeros
        #expect(Gossip.Wire(decoding: Gossip.Wire.ihave([m.id]).encode() + [0]) == nil)  // and only IWANTs have it
        // The answer to a padded IWANT (one message of the largest size) is at most three times it.
        #expect(2 + 1100 <= 3 * Gossip.Wire.paddedIWantBytes)
        #expect(Gossip.Wire(decoding: [99, 0, 1]) == nil)
        var unknownTopic = SignedEnvelope.sign(domain: Gossip.domain, body: [77, 1], sequence: 1, expiresAt: t0, by: key).encoded
        #expect(Gossip.Message(decoding: unknownTopic) == nil)
        unknownTopic.removeLast()
        #expect(Gossip.Message(decoding: unknownTopic) == nil)
        #expect(Gossip.Topic(name: "heartbeat") == .heartbeat && Gossip.Topic(name: "nope") == nil)
    }
}

@Suite("Gossip instance")
struct GossipInstanceTests {
    /// A node with `n` candidate peers.
    func node(peers n: Int, settings: Gossip.Settings = Gossip.Settings()) -> (Gossip.Instance, [Contact], SigningKey) {
        let (key, me) = peer(0)
        var g = Gossip.Instance(local: me, signer: key, settings: settings, seed: 1)
        let others = (1...n).map { peer($0).1 }
        g.setCandidates(others, now: t0)
        return (g, others, key)
    }

    func sends(_ out: [Gossip.Directive]) -> [(Gossip.Wire, Contact)] {
        out.compactMap { if case .send(let w, let c) = $0 { (w, c) } else { nil } }
    }

    @Test("a valid push is delivered once, pushed to three sample peers and announced to the rest of the sample; copies are duplicates")
    func pushAndForward() throws {
        var (g, others, _) = node(peers: 20)
        #expect(g.sample.count == 8)
        let origin = SigningKey()
        let m = Gossip.Message.sign(topic: .debug, payload: [1], sequence: 1, expiresAt: t0 + 30_000, by: origin)
        let out = g.receive(.push(hops: 2, message: m.envelope.encoded), from: g.sample[0], now: t0)
        #expect(out.first == .deliver(m))
        let s = sends(out)
        #expect(s.count == 7)  // 3 pushes and 4 announcements: the sample minus the sender
        #expect(s.filter { if case .push(3, _) = $0.0 { true } else { false } }.count == 3)
        #expect(s.filter { if case .ihave([m.id]) = $0.0 { true } else { false } }.count == 4)
        #expect(!s.contains { $0.1.peerID == g.sample[0].peerID })
        #expect(g.receive(.push(hops: 1, message: m.envelope.encoded), from: others[5], now: t0 + 1).isEmpty)
        #expect(g.stats.delivered == 1 && g.stats.duplicates == 1)
        // At the hop limit it is delivered but goes no further.
        let last = Gossip.Message.sign(topic: .debug, payload: [2], sequence: 2, expiresAt: t0 + 30_000, by: origin)
        let end = g.receive(.push(hops: 16, message: last.envelope.encoded), from: others[1], now: t0)
        #expect(end == [.deliver(last)])
    }

    @Test("invalid messages are dropped, counted, never delivered or forwarded, and cost the sender its place")
    func invalid() throws {
        var (g, _, _) = node(peers: 20)
        let bad = g.sample[0]
        let origin = SigningKey()
        func forged(_ i: UInt8) -> [UInt8] {
            var b = Gossip.Message.sign(topic: .debug, payload: [i], sequence: UInt64(i), expiresAt: t0 + 30_000, by: origin).envelope.encoded
            b[b.count - 1] ^= 1
            return b
        }
        #expect(g.receive(.push(hops: 1, message: forged(1)), from: bad, now: t0).isEmpty)
        #expect(g.stats.dropped[.badSignature] == 1)
        let late = Gossip.Message.sign(topic: .debug, payload: [9], sequence: 9, expiresAt: t0 - 1, by: origin)
        #expect(g.receive(.push(hops: 1, message: late.envelope.encoded), from: bad, now: t0).isEmpty)
        #expect(g.stats.dropped[.expired] == 1)
        let far = Gossip.Message.sign(topic: .debug, payload: [8], sequence: 8, expiresAt: t0 + 3_600_000, by: origin)
        #expect(g.receive(.push(hops: 1, message: far.envelope.encoded), from: bad, now: t0).isEmpty)
        #expect(g.receive(.push(hops: 1, message: [1, 2, 3]), from: bad, now: t0).isEmpty)
        #expect(g.receive(.push(hops: 1, message: [UInt8](repeating: 0, count: 70_000)), from: bad, now: t0).isEmpty)
        #expect(g.stats.dropped == [.badSignature: 1, .expired: 1, .expiryTooFar: 1, .malformed: 1, .tooLarge: 1])
        #expect(g.standing(of: bad.peerID, now: t0) == -4)  // expiry is not the sender's fault
        #expect(g.sample.contains { $0.peerID == bad.peerID })
        #expect(g.receive(.push(hops: 1, message: forged(2)), from: bad, now: t0).isEmpty)
        // Below -5: graylisted, out of the sample (refilled: the newcomer gets a link request,
        // nothing else goes out), ignored until the graylist ends.
        let refill = g.receive(.push(hops: 1, message: forged(3)), from: bad, now: t0)
        #expect(g.stats.graylisted == 1)
        #expect(!g.sample.contains { $0.peerID == bad.peerID } && g.sample.count == 8)
        #expect(refill == [.send(.ihave([]), to: g.sample[7])])
        let good = Gossip.Message.sign(topic: .debug, payload: [5], sequence: 5, expiresAt: t0 + 100_000, by: origin)
        #expect(g.receive(.push(hops: 1, message: good.envelope.encoded), from: bad, now: t0 + 1).isEmpty)
        #expect(g.stats.dropped[.graylisted] == 1)
        #expect(g.receive(.push(hops: 1, message: good.envelope.encoded), from: bad, now: t0 + 61_000).first == .deliver(good))
        // Standing recovers with time.
        #expect(g.standing(of: bad.peerID, now: t0 + 600_000) > -0.01)
    }

    @Test("an origin over its rate is throttled; heartbeats have their own, lower rate")
    func rateLimits() throws {
        var (g, others, _) = node(peers: 20)
        let flooder = SigningKey()
        var delivered = 0
        for i in 0..<400 {  // 400 messages in 1 s: 20x the rate of 20/s
            let m = Gossip.Message.sign(topic: .debug, payload: [UInt8(i % 256), UInt8(i / 256)], sequence: UInt64(i), expiresAt: t0 + 30_000, by: flooder)
            if g.receive(.push(hops: 1, message: m.envelope.encoded), from: others[i % 20], now: t0 + UInt64(i) * 2_500 / 1000).first == .deliver(m) { delivered += 1 }
        }
        #expect(delivered >= 58 && delivered <= 60)  // the burst of 40 and what one second refills
        #expect(g.stats.dropped[.rateLimited] == 400 - delivered)
        #expect(g.standing(of: others[0].peerID, now: t0 + 1000) == 0)  // forwarders are not blamed
        let beat = SigningKey()
        let beats = (0..<5).map { Gossip.Message.sign(topic: .heartbeat, payload: [UInt8($0)], sequence: UInt64($0), expiresAt: t0 + 30_000, by: beat) }
        let accepted = beats.filter { g.receive(.push(hops: 1, message: $0.envelope.encoded), from: others[0], now: t0).first == .deliver($0) }
        #expect(accepted.count == 2)
        // A node's own publishing is held to the same limits.
        var published = 0
        for i in 0..<50 { if (try? g.publish(topic: .debug, payload: [UInt8(i)], now: t0)) != nil { published += 1 } }
        #expect(published == 40)
        #expect(throws: Gossip.PublishError.tooLarge(70_116, max: 65_536)) { try g.publish(topic: .debug, payload: [UInt8](repeating: 0, count: 70_000), now: t0 + 100_000) }
    }

    @Test("an IHAVE for a missing message becomes an IWANT after a short wait, to the next announcer on timeout; IWANTs are answered")
    func repair() throws {
        var (g, others, _) = node(peers: 20)
        let origin = SigningKey()
        let m = Gossip.Message.sign(topic: .debug, payload: [1], sequence: 1, expiresAt: t0 + 30_000, by: origin)
        #expect(g.receive(.ihave([m.id]), from: others[3], now: t0).isEmpty)
        _ = g.receive(.ihave([m.id]), from: others[4], now: t0 + 5)
        #expect(g.nextWake <= t0 + 40)
        #expect(sends(g.tick(now: t0 + 39)).allSatisfy { if case .iwant = $0.0 { false } else { true } })
        let first = sends(g.tick(now: t0 + 40)).filter { if case .iwant = $0.0 { true } else { false } }
        #expect(first.count == 1 && first[0].1.peerID == others[3].peerID)
        let second = sends(g.tick(now: t0 + 40 + 250)).filter { if case .iwant = $0.0 { true } else { false } }
        #expect(second.count == 1 && second[0].1.peerID == others[4].peerID)
        #expect(g.receive(.push(hops: 4, message: m.envelope.encoded), from: others[4], now: t0 + 300).first == .deliver(m))
        // The node now answers IWANTs for it.
        let answer = g.receive(.iwant([m.id]), from: others[9], now: t0 + 400)
        #expect(answer == [.send(.push(hops: 5, message: m.envelope.encoded), to: others[9])])
        // Digests name it only to peers that neither told this node of it nor were told: the
        // sample heard of it when it was forwarded, others[3], [4] and [9] exchanged it, so only a
        // newcomer that gossips with this node (inbound) gets it, once.
        let newcomer = try #require(others[10...].first { p in !g.sample.contains { $0.peerID == p.peerID } })
        _ = g.receive(.ihave([]), from: newcomer, now: t0 + 500)
        var digested: [PeerID] = []
        for t in stride(from: t0 + 1_000, through: t0 + 3_200, by: 100) {
            let out = sends(g.tick(now: t))
            #expect(out.allSatisfy { if case .iwant = $0.0 { false } else { true } })
            digested += out.filter { if case .ihave(let ids) = $0.0 { ids.contains(m.id) } else { false } }.map(\.1.peerID)
        }
        #expect(digested == [newcomer.peerID])
        // Once the digest window passes, it is no longer offered, but still known (no redelivery).
        _ = g.tick(now: t0 + 20_000)
        #expect(g.receive(.iwant([m.id]), from: others[9], now: t0 + 20_000).isEmpty)
        #expect(g.receive(.push(hops: 1, message: m.envelope.encoded), from: others[1], now: t0 + 20_001).isEmpty)
    }
}

@Suite("Gossip on a simulated 1,000-node network", .timeLimit(.minutes(3)))
struct GossipSimulationTests {
    @Test("every live node delivers every message exactly once; with 10% loss >= 99.9% still do")
    func coverage() {
        var net = GossipSimulation(count: 1000, seed: 7)
        var ids: [(Gossip.MessageID, Int)] = []
        for i in 0..<5 {
            let from = i * 97
            ids.append((net.publish(from: from, payload: Array("hello \(i)".utf8))!, from))
            net.run(for: 200)
        }
        net.run(for: 5_000)
        for (id, from) in ids { #expect(net.coverage(id, publisher: from) == 1.0) }
        #expect(net.maxDeliveriesPerNode == 1)
        let lat = ids.flatMap { net.latencies($0.0) }.sorted()
        #expect(lat[lat.count * 99 / 100] < 250, "p99 \(lat[lat.count * 99 / 100]) ms")

        var lossy = GossipSimulation(count: 1000, seed: 8)
        lossy.lossRate = 0.1
        var lossyIDs: [(Gossip.MessageID, Int)] = []
        for i in 0..<5 {
            lossyIDs.append((lossy.publish(from: i * 13, payload: Array("lossy \(i)".utf8))!, i * 13))
            lossy.run(for: 200)
        }
        lossy.run(for: 10_000)
        let covered = lossyIDs.map { lossy.coverage($0.0, publisher: $0.1) }
        #expect(covered.allSatisfy { $0 >= 0.999 }, "\(covered)")
        #expect(lossy.maxDeliveriesPerNode == 1)
    }

    @Test("forged messages reach no application; a flooding origin is throttled while honest messages still arrive")
    func attacks() {
        var net = GossipSimulation(count: 1000, seed: 9)
        let attacker = 3
        // Forged: a valid message with one bit flipped, pushed to 50 nodes.
        let victim = Gossip.Message.sign(topic: .report, payload: Array("peer 5 cheated".utf8), sequence: 1, expiresAt: net.now + 30_000, by: net.keys[5])
        var forged = victim.envelope.encoded
        forged[forged.count - 1] ^= 1
        let forgedID = Gossip.Message(decoding: forged)!.id
        for to in 100..<150 { net.inject(.push(hops: 1, message: forged), from: attacker, to: to) }
        // Flood: 100x the rate (1,000 messages in half a second), pushed to the attacker's five neighbours.
        var floodIDs: [Gossip.MessageID] = []
        for i in 0..<1000 {
            let m = Gossip.Message.sign(topic: .debug, payload: [UInt8(i % 256), UInt8(i / 256)], sequence: UInt64(i + 1), expiresAt: net.now + 30_000, by: net.keys[attacker])
            floodIDs.append(m.id)
            for k in 0..<5 { net.inject(.push(hops: 1, message: m.envelope.encoded), from: attacker, to: 200 + k) }
            if i % 100 == 99 { net.run(for: 50) }
        }
        let honest = (0..<5).map { net.publish(from: 900 + $0, payload: Array("honest \($0)".utf8))! }
        net.run(for: 5_000)
        #expect(net.deliveries[forgedID] == nil)
        // Each node delivers at most its per-origin allowance: a burst of 40 and 20 a second after.
        var perNode = [Int](repeating: 0, count: 1000)
        for id in floodIDs { for (node, _) in net.deliveries[id] ?? [:] { perNode[node] += 1 } }
        #expect(perNode.max()! <= 40 + 20 * 6, "a node delivered \(perNode.max()!) of the 1,000 flood messages")
        let anywhere = floodIDs.filter { net.deliveries[$0] != nil }.count
        #expect(anywhere <= 5 * (40 + 20), "\(anywhere) of the 1,000 flood messages got past the attacker's neighbours")
        for (i, id) in honest.enumerated() { #expect(net.coverage(id, publisher: 900 + i) == 1.0) }
        #expect(net.maxDeliveriesPerNode == 1)
    }
}
