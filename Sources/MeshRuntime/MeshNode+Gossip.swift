import Foundation
import MeshCore
import MeshCrypto
import MeshGossip
import MeshMarket

/// What `gossip.stats` reports.
public struct GossipSnapshot: Codable, Sendable, Equatable {
    /// The sample's peer IDs.
    public var sample: [String]
    /// Inbound peers (their samples hold this node).
    public var inbound: Int
    /// Counters.
    public var stats: Gossip.Stats
    /// Peers whose heartbeats this node has heard, and how many of them are not silent.
    public var heartbeatPeers: Int, heartbeatPeersAlive: Int
    /// Providers heard announcing a live capability record.
    public var providersHeard: Int
    /// Messages sent and received over secure channels (too large for a datagram).
    public var channelPushesSent: Int, channelPushesReceived: Int

    enum CodingKeys: String, CodingKey {
        case sample, inbound, stats, heartbeatPeers = "heartbeat_peers", heartbeatPeersAlive = "heartbeat_peers_alive"
        case providersHeard = "providers_heard", channelPushesSent = "channel_pushes_sent", channelPushesReceived = "channel_pushes_received"
    }
}

/// One peer's liveness as this node has heard it (`gossip.liveness`).
public struct PeerLiveness: Codable, Sendable, Equatable {
    /// The peer's ID (hex).
    public var peerID: String
    /// What was heard.
    public var entry: Gossip.Liveness.Entry
    /// Share of expected heartbeats that arrived (0-1).
    public var availability: Double
    /// No heartbeat for two intervals.
    public var silent: Bool

    enum CodingKeys: String, CodingKey { case peerID = "peer_id", entry, availability, silent }
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

    /// Every peer whose heartbeats this node has heard (from any thread).
    public func peerLiveness() async throws -> [PeerLiveness] {
        try await loop.submit { self.makePeerLiveness() }
    }

    /// The providers this node has heard announce a live record on gossip (from any thread).
    public func announcedOffers() async throws -> [CapabilityRecord] {
        try await loop.submit { self.capacityView.offers(now: DHTShell.now()) }
    }

    func makePeerLiveness() -> [PeerLiveness] {
        let now = DHTShell.now()
        return liveness.entries.map { key, e in
            PeerLiveness(peerID: PeerID(publicKey: key).hex, entry: e, availability: e.availability(now: now), silent: e.isSilent(now: now))
        }.sorted { $0.peerID < $1.peerID }
    }

    func makeGossipSnapshot() -> GossipSnapshot {
        let now = DHTShell.now()
        return GossipSnapshot(sample: gossip.instance.sample.map(\.peerID.hex), inbound: gossip.instance.neighbours.count - gossip.instance.sample.count,
                              stats: gossip.instance.stats, heartbeatPeers: liveness.entries.count,
                              heartbeatPeersAlive: liveness.entries.values.filter { !$0.isSilent(now: now) }.count,
                              providersHeard: capacityView.offers(now: now).count,
                              channelPushesSent: gossip.channelPushesSent, channelPushesReceived: gossip.channelPushesReceived)
    }

    // MARK: Applications

    /// Listens for heartbeats and capability announcements, and sends this node's heartbeats
    /// every `heartbeatSeconds` while it provides (0: never).
    func startGossipApplications(heartbeatSeconds: Int) throws {
        gossip.subscribe(.heartbeat) { [unowned self] message in
            if case .failure = liveness.record(message, now: DHTShell.now()) { bump(.heartbeatsRefused) }
        }
        gossip.subscribe(.capability) { [unowned self] message in
            let now = DHTShell.now()
            switch CapabilityAnnouncement.verify(message.payload, origin: message.origin, now: now, maxLifetime: dht.instance.settings.maxRecordLifetime) {
            case .success(let record): _ = capacityView.apply(record, now: now)
            case .failure: bump(.announcementsRefused)
            }
        }
        gossip.subscribe(.receipt) { [unowned self] message in jobs?.heard(message) }
        gossip.subscribe(.report) { [unowned self] message in ledger?.heard(report: message) }
        guard heartbeatSeconds > 0 else { return }
        heartbeatTimer = try loop.schedule(after: .seconds(heartbeatSeconds), repeating: .seconds(heartbeatSeconds)) { [unowned self] in
            sendHeartbeat(intervalSeconds: heartbeatSeconds)
        }
    }

    /// Publishes one heartbeat if this node provides.
    func sendHeartbeat(intervalSeconds: Int) {
        guard let state = provider, !stopped else { return }
        let uptime = (EventLoop.monotonicNanoseconds() - startedAt) / 1_000_000_000
        let beat = Gossip.Heartbeat(intervalSeconds: UInt16(intervalSeconds), uptimeSeconds: UInt32(min(uptime, UInt64(UInt32.max))),
                                    freeSlots: UInt16(state.capability.freeSlots), totalSlots: UInt16(state.capability.totalSlots),
                                    capabilitySequence: state.record?.sequence)
        do { _ = try gossip.publish(.heartbeat, payload: beat.encode()) } catch { logger.debug("heartbeat not sent: \(error)") }
    }

    /// Announces a changed capability record on gossip.
    func announce(_ record: CapabilityRecord) {
        guard !stopped else { return }
        do { _ = try gossip.publish(.capability, payload: CapabilityAnnouncement.encode(record)) } catch {
            logger.debug("capability announcement not sent: \(error)")
        }
    }

    /// Registers the `gossip.*` control methods.
    func registerGossipControl(_ control: ControlServer) {
        control.register("gossip.stats") { [unowned self] _, reply in
            reply(Result { try JSONValue(encoding: makeGossipSnapshot()) }.mapError { .serverError("\($0)") })
        }
        control.register("gossip.liveness") { [unowned self] _, reply in
            reply(Result { .object(["peers": try JSONValue(encoding: makePeerLiveness())]) }.mapError { .serverError("\($0)") })
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
