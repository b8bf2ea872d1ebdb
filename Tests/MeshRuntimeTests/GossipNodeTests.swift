import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
@testable import MeshRuntime
import Testing

@Suite("Gossip over real sockets", .timeLimit(.minutes(3)))
struct GossipNodeTests {
    @Test("100 nodes on loopback in one process: every node delivers a published message exactly once; forged pushes are dropped and counted")
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
}
