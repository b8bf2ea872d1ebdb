import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
import MeshMarket
@testable import MeshRuntime
import Testing

@Suite("Gossip over real sockets", .timeLimit(.minutes(3)))
struct GossipNodeTests {
    @Test("100 nodes on loopback in one process: every node delivers a published message exactly once, a 20 KB one too (over channels); forged pushes are dropped and counted")
    func hundredNodes() async throws {
        let loops = try (0..<2).map { try EventLoop(name: "gossip-\($0)") }
        defer { loops.forEach { $0.shutdown() } }
        let first = try await MeshNode.start(on: loops[0], options: loopbackOptions())
        var nodes = [first]
        for i in 1..<100 { nodes.append(try await MeshNode.start(on: loops[i % 2], options: loopbackOptions(bootstrap: [first.contact]))) }
        let received = Box([Int](repeating: 0, count: 100))
        for (i, n) in nodes.enumerated() {
            try await n.subscribe(.debug) { _ in received.mutate { $0[i] += 1 } }
        }
        // Joined, and every sample full.
        let all = nodes
        let ready = try await eventually(60) {
            for n in all where try await n.gossipSnapshot().sample.count < 8 { return false }
            return true
        }
        #expect(ready, "gossip samples did not fill")
        let message = try await nodes[17].publish(.debug, payload: Array("hello, mesh".utf8))
        #expect(message.topic == .debug)
        let everywhere = try await eventually(20) { received.value.enumerated().allSatisfy { $0.offset == 17 || $0.element >= 1 } }
        #expect(everywhere, "delivered by \(received.value.filter { $0 > 0 }.count) of 99")
        try await Task.sleep(for: .seconds(2))  // repairs and late copies have time to arrive
        #expect(received.value[17] == 0)
        #expect(received.value.enumerated().allSatisfy { $0.offset == 17 || $0.element == 1 }, "\(received.value)")
        var duplicates = 0
        for n in nodes { duplicates += try await n.gossipSnapshot().stats.duplicates }
        #expect(Double(duplicates) / 99 <= 3.0, "\(duplicates) duplicate copies")

        // Too large for a datagram: pushed and repaired over secure channels, delivered once everywhere.
        let big = Box([Int](repeating: 0, count: 100))
        for (i, n) in nodes.enumerated() {
            try await n.subscribe(.report) { m in if m.payload.count == 20_000 { big.mutate { $0[i] += 1 } } }
        }
        _ = try await nodes[50].publish(.report, payload: [UInt8](repeating: 7, count: 20_000))
        let bigEverywhere = try await eventually(20) { big.value.enumerated().allSatisfy { $0.offset == 50 || $0.element >= 1 } }
        #expect(bigEverywhere, "delivered by \(big.value.filter { $0 > 0 }.count) of 99")
        try await Task.sleep(for: .seconds(1))
        #expect(big.value.enumerated().allSatisfy { $0.offset == 50 || $0.element == 1 }, "\(big.value)")
        var overChannels = 0
        for n in nodes { overChannels += try await n.loop.submit { n.gossip.channelPushesReceived } }
        #expect(overChannels >= 99)

        // A forged push (a signature bit flipped) sent straight to a node is dropped and counted.
        let victim = nodes[40]
        let other = SigningKey()
        var bytes = Gossip.Message.sign(topic: .debug, payload: Array("forged".utf8), sequence: 1,
                                        expiresAt: MeshNode.wallClockMilliseconds() + 30_000, by: other).envelope.encoded
        bytes[bytes.count - 1] ^= 1
        let forged = bytes
        let liar = nodes[6].contact
        _ = try await victim.loop.submit {
            victim.gossip.received(Gossip.Wire.push(hops: 1, message: forged).encode(), from: liar, proven: true, datagramBytes: forged.count + 60)
        }
        let snapshot = try await victim.gossipSnapshot()
        #expect(snapshot.stats.dropped[.badSignature] == 1)
        await withTaskGroup(of: Void.self) { group in
            for n in nodes { group.addTask { await n.stop() } }
        }
    }

    @Test("a provider's capability changes and heartbeats reach every peer by gossip; its withdrawal empties their views")
    func announcementsAndHeartbeats() async throws {
        try await withLoop("gossip-apps") { loop in
            // Heartbeats every second (the mesh's default rate allows one per 5 s), so the test is quick.
            var fast = Gossip.Settings()
            fast.heartbeatRate = 2
            var providerOptions = loopbackOptions()
            providerOptions.config.provider.heartbeatIntervalSeconds = 1
            providerOptions.gossipSettings = fast
            let provider = try await MeshNode.start(on: loop, options: providerOptions)
            var nodes: [MeshNode] = []
            for _ in 0..<11 {
                var options = loopbackOptions(bootstrap: [provider.contact])
                options.gossipSettings = fast
                nodes.append(try await MeshNode.start(on: loop, options: options))
            }
            let peers = nodes
            #expect(try await eventually(30) {
                for n in peers + [provider] where try await n.gossipSnapshot().sample.count < 8 { return false }
                return true
            })
            let offer = try simulatedOffer(provider, "2x rtx-4090", price: "1.5", slots: 2)
            _ = try await provider.provide(offer)
            #expect(try await eventually(10) {
                for n in peers where try await n.announcedOffers().first?.capability != offer { return false }
                return true
            }, "every peer hears the offer")
            _ = try await provider.updateOffer(freeSlots: 0, price: Price(parsing: "0.75"))
            #expect(try await eventually(10) {
                for n in peers {
                    guard let heard = try await n.announcedOffers().first?.capability, heard.freeSlots == 0, heard.price == Price(parsing: "0.75") else { return false }
                }
                return true
            }, "every peer hears the update")
            // Heartbeats every second: each peer counts several, in order, with the slots the provider has now.
            let id = provider.peerID.hex
            #expect(try await eventually(10) {
                for n in peers {
                    guard let p = try await n.peerLiveness().first(where: { $0.peerID == id }), p.entry.count >= 3, p.entry.latest.freeSlots == 0, !p.silent else { return false }
                }
                return true
            }, "every peer hears three heartbeats")
            for n in peers { #expect(try await n.status().counters["gossip_heartbeats_refused"] == 0) }
            // A peer that is not a provider sends none.
            #expect(try await nodes[0].peerLiveness().map(\.peerID) == [id])
            _ = try await provider.withdrawOffer()
            #expect(try await eventually(10) {
                for n in peers where try await !n.announcedOffers().isEmpty { return false }
                return true
            }, "every peer hears the withdrawal")
            for n in peers { #expect(try await n.gossipSnapshot().providersHeard == 0) }
            await provider.stop()
            for n in peers { await n.stop() }
        }
    }
}
