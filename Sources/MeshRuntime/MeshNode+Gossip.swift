import Foundation
import MeshCore
import MeshCrypto
import MeshGossip

/// What `gossip.stats` reports.
public struct GossipSnapshot: Codable, Sendable, Equatable {
    /// The sample's peer IDs.
    public var sample: [String]
    /// Counters.
    public var stats: Gossip.Stats

    enum CodingKeys: String, CodingKey { case sample, stats }
}

extension MeshNode {
    /// Calls `handler` on the node's loop with every message delivered on `topic` (once per
    /// message, never this node's own) (from any thread).
    public func subscribe(_ topic: Gossip.Topic, _ handler: @escaping @Sendable (Gossip.Message) -> Void) async throws {
        try await loop.submit { self.gossip.subscribe(topic, handler) }
    }

    /// Publishes a signed message on `topic` to the mesh (from any thread).
    public func publish(_ topic: Gossip.Topic, payload: [UInt8]) async throws -> Gossip.Message {
        try await onLoop { node, done in
            guard !node.stopped else { done(.failure(.stopped)); return }
            do { done(.success(try node.gossip.publish(topic, payload: payload))) } catch { done(.failure(.badRequest("\(error)"))) }
        }
    }

    /// The gossip sample and counters (from any thread).
    public func gossipSnapshot() async throws -> GossipSnapshot {
        try await loop.submit { self.makeGossipSnapshot() }
    }

    func makeGossipSnapshot() -> GossipSnapshot {
        GossipSnapshot(sample: gossip.instance.sample.map(\.peerID.hex), stats: gossip.instance.stats)
    }

    /// Registers the `gossip.*` control methods.
    func registerGossipControl(_ control: ControlServer) {
        control.register("gossip.stats") { [unowned self] _, reply in
            reply(Result { try JSONValue(encoding: makeGossipSnapshot()) }.mapError { .serverError("\($0)") })
        }
        control.register("gossip.publish") { [unowned self] params, reply in
            guard let name = params?["topic"]?.stringValue, let topic = Gossip.Topic(name: name),
                  let text = params?["text"]?.stringValue else {
                let topics = Gossip.Topic.allCases.map(\.description).joined(separator: ", ")
                reply(.failure(.invalidParams("expected {\"topic\": one of \(topics), \"text\": TEXT}")))
                return
            }
            do {
                let m = try gossip.publish(topic, payload: Array(text.utf8))
                reply(.success(.object(["id": .string(Hex.encode(m.id.bytes)), "topic": .string(topic.description),
                                        "bytes": .int(m.envelope.encoded.count), "sample": .int(gossip.instance.sample.count)])))
            } catch {
                reply(.failure(.invalidParams("\(error)")))
            }
        }
    }
}
