import Foundation
import MeshCore
import MeshCrypto
import MeshDHT

/// One routing-table entry, as `dht.peers` reports it.
public struct DHTPeer: Codable, Sendable, Equatable {
    /// The peer's ID (hex).
    public var peerID: String
    /// Its contact string.
    public var contact: String
    /// The bucket it sits in (255: the farthest half of the ID space).
    public var bucket: Int
    /// Milliseconds since it was last heard from.
    public var lastSeenMillisecondsAgo: UInt64

    enum CodingKeys: String, CodingKey {
        case peerID = "peer_id", contact, bucket, lastSeenMillisecondsAgo = "last_seen_ms_ago"
    }
}

/// The DHT as this node sees it.
public struct DHTSnapshot: Codable, Sendable, Equatable {
    /// True once a join found at least one peer (or no bootstrap peers were given).
    public var joined: Bool
    /// Join attempts so far.
    public var joinAttempts: Int
    /// How many bootstrap peers were configured.
    public var bootstrapPeers: Int
    /// Records this node stores (for others and itself).
    public var recordsStored: Int
    /// Records this node publishes and republishes.
    public var recordsPublished: Int
    /// Routing-table entries, nearest bucket first.
    public var peers: [DHTPeer]

    enum CodingKeys: String, CodingKey {
        case joined, joinAttempts = "join_attempts", bootstrapPeers = "bootstrap_peers", recordsStored = "records_stored"
        case recordsPublished = "records_published", peers
    }
}

/// The outcome of a lookup run through a node.
public struct DHTLookupResult: Sendable, Equatable {
    /// The closest nodes that answered, nearest first.
    public var closest: [Contact]
    /// Hops of the longest answer chain.
    public var hops: Int
    /// FIND_NODE requests sent.
    public var requests: Int
    /// Wall time the lookup took.
    public var duration: Duration
}

/// A record as the control socket returns it.
public struct DHTRecordJSON: Codable, Sendable, Equatable {
    /// The publisher's public key (hex).
    public var publisher: String
    /// The publisher's peer ID (hex).
    public var publisherID: String
    /// The key (hex).
    public var key: String
    /// The sequence number.
    public var sequence: UInt64
    /// Expiry, Unix milliseconds.
    public var expiresAtMilliseconds: UInt64
    /// The value as text when it is UTF-8, else nil.
    public var value: String?
    /// The value, hex.
    public var valueHex: String

    /// Describes `record`.
    public init(_ record: Kademlia.Record) {
        publisher = Hex.encode(record.publisher.bytes)
        publisherID = PeerID(publicKey: record.publisher).hex
        key = record.key.hex
        sequence = record.sequence
        expiresAtMilliseconds = record.expiresAt
        value = String(validating: record.value, as: UTF8.self)
        valueHex = Hex.encode(record.value)
    }

    enum CodingKeys: String, CodingKey {
        case publisher, publisherID = "publisher_id", key, sequence, expiresAtMilliseconds = "expires_at_ms", value, valueHex = "value_hex"
    }
}

extension MeshNode {
    /// Joins the DHT through `seeds` (retrying with backoff while none answers), from any thread.
    public func join(_ seeds: [Contact]) {
        _ = loop.execute { [self] in dht.join(through: seeds) }
    }

    /// A cheap summary of the DHT (from any thread): joined, routing-table size, work in progress.
    public func dhtState() async throws -> (joined: Bool, peers: Int, activeOperations: Int, pendingRequests: Int) {
        try await loop.submit {
            let i = self.dht.instance
            return (self.dht.joined || self.dht.seeds.isEmpty, i.table.count, i.activeLookups, i.pendingRequests)
        }
    }

    /// The routing table and record counts (from any thread).
    public func dhtSnapshot() async throws -> DHTSnapshot {
        try await loop.submit { self.makeSnapshot() }
    }

    func makeSnapshot() -> DHTSnapshot {
        let instance = dht.instance
        let now = DHTShell.now()
        var peers: [DHTPeer] = []
        for b in 0..<256 {
            for n in instance.table.nodes(inBucket: b).reversed() {
                peers.append(DHTPeer(peerID: n.id.hex, contact: n.contact.description, bucket: b,
                                     lastSeenMillisecondsAgo: now > n.lastSeen ? now - n.lastSeen : 0))
            }
        }
        return DHTSnapshot(joined: dht.joined || dht.seeds.isEmpty, joinAttempts: dht.joinAttempts, bootstrapPeers: dht.seeds.count,
                           recordsStored: instance.store.count, recordsPublished: instance.publishedRecords.count, peers: peers)
    }

    /// Looks up the k nodes closest to `target` (from any thread).
    public func lookup(_ target: PeerID) async throws -> DHTLookupResult {
        try await onLoop { node, done in node.startLookup(target, done: done) }
    }

    /// Signs and publishes `value` under `key`, kept alive by republishing (from any thread).
    public func publish(key: PeerID, value: [UInt8], lifetime: Duration = .seconds(3600)) async throws -> Kademlia.PutOutcome {
        let ms = UInt64(max(0, lifetime.milliseconds))
        return try await onLoop { node, done in node.startPublish(key: key, value: value, lifetimeMilliseconds: ms, done: done) }
    }

    /// Reads the records under `key`, verified, up to `limit` publishers (from any thread).
    public func get(key: PeerID, limit: Int = 64) async throws -> Kademlia.GetOutcome {
        try await onLoop { node, done in node.startGet(key: key, limit: limit, done: done) }
    }

    // The loop-side forms, shared by the async API and the control methods.

    /// Runs a lookup (loop thread); a node that stops first finishes it empty.
    func startLookup(_ target: PeerID, done: @escaping (Result<DHTLookupResult, NodeError>) -> Void) {
        guard !stopped else { done(.failure(.stopped)); return }
        let started = EventLoop.monotonicNanoseconds()
        dht.run({ instance, now in instance.startLookup(target, now: now) }) { directive in
            guard case .lookupFinished(_, let result, let hops, let requests) = directive else { return }
            done(.success(DHTLookupResult(closest: result.map(\.contact), hops: hops, requests: requests,
                                          duration: .nanoseconds(Int64(EventLoop.monotonicNanoseconds() - started)))))
        }
    }

    /// Signs and puts a record (loop thread); a refused value or lifetime is `.badRequest`.
    func startPublish(key: PeerID, value: [UInt8], lifetimeMilliseconds: UInt64,
                      done: @escaping (Result<Kademlia.PutOutcome, NodeError>) -> Void) {
        guard !stopped else { done(.failure(.stopped)); return }
        do {
            try dht.publish(key: key, value: value, lifetime: lifetimeMilliseconds) { directive in
                guard case .putFinished(_, let outcome) = directive else { done(.failure(.stopped)); return }
                done(.success(outcome))
            }
        } catch {
            done(.failure(.badRequest("\(error)")))
        }
    }

    /// Reads a key's records (loop thread).
    func startGet(key: PeerID, limit: Int, verify: Bool = true, done: @escaping (Result<Kademlia.GetOutcome, NodeError>) -> Void) {
        guard !stopped else { done(.failure(.stopped)); return }
        dht.run({ instance, now in instance.get(key: key, limit: limit, verify: verify, now: now) }) { directive in
            guard case .getFinished(_, let outcome) = directive else { done(.failure(.stopped)); return }
            done(.success(outcome))
        }
    }

    /// Registers the `dht.*` control methods.
    func registerDHTControl(_ control: ControlServer) {
        control.register("dht.peers") { [unowned self] _, reply in
            reply(Result { try JSONValue(encoding: makeSnapshot()) }.mapError { .serverError("\($0)") })
        }
        control.register("dht.lookup") { [unowned self] params, reply in
            guard let target = Self.key(from: params) else {
                reply(.failure(.invalidParams("expected {\"key\": NAME} or {\"key_hex\": 64 hex digits}")))
                return
            }
            startLookup(target) { result in
                reply(result.map { r in
                    .object(["target": .string(target.hex), "hops": .int(r.hops), "requests": .int(r.requests),
                             "latency_ms": .double(r.duration.milliseconds),
                             "closest": .array(r.closest.map { .object(["peer_id": .string($0.peerID.hex), "contact": .string($0.description)]) })])
                }.mapError(Self.rpcError))
            }
        }
        control.register("dht.put") { [unowned self] params, reply in
            guard let key = Self.key(from: params), let value = Self.value(from: params) else {
                reply(.failure(.invalidParams("expected {\"key\" or \"key_hex\", \"value\" or \"value_hex\", optional \"ttl_s\"}")))
                return
            }
            let ttl = UInt64(max(1, params?["ttl_s"]?.intValue ?? 3600)) * 1000
            startPublish(key: key, value: value, lifetimeMilliseconds: ttl) { result in
                reply(result.map { o in
                    .object(["key": .string(key.hex), "stored": .int(o.stored), "refused": .int(o.refused),
                             "failed": .int(o.failed), "hops": .int(o.hops), "requests": .int(o.requests)])
                }.mapError(Self.rpcError))
            }
        }
        control.register("dht.get") { [unowned self] params, reply in
            guard let key = Self.key(from: params) else {
                reply(.failure(.invalidParams("expected {\"key\": NAME} or {\"key_hex\": 64 hex digits}, optional \"limit\"")))
                return
            }
            let limit = min(max(1, params?["limit"]?.intValue ?? 64), 1024)
            startGet(key: key, limit: limit) { result in
                reply(result.mapError(Self.rpcError).flatMap { o in
                    Result {
                        .object(["key": .string(key.hex), "responders": .int(o.responders), "hops": .int(o.hops),
                                 "requests": .int(o.requests), "rejected": .int(o.rejected),
                                 "records": try JSONValue(encoding: o.records.map(DHTRecordJSON.init))])
                    }.mapError { .serverError("\($0)") }
                })
            }
        }
    }

    /// Node failures as JSON-RPC errors: a refused request is the caller's, anything else the node's.
    static func rpcError(_ error: NodeError) -> JSONRPC.ErrorObject {
        if case .badRequest(let why) = error { return .invalidParams(why) }
        return .serverError(error == .stopped ? "the node stopped" : "\(error)")
    }

    /// `key` (a name, hashed) or `key_hex` (a raw 256-bit key) from control params.
    static func key(from params: JSONValue?) -> PeerID? {
        if let hex = params?["key_hex"]?.stringValue { return PeerID(hex: hex) }
        if let name = params?["key"]?.stringValue, !name.isEmpty { return Kademlia.key(named: name) }
        return nil
    }

    /// `value` (text) or `value_hex` from control params.
    static func value(from params: JSONValue?) -> [UInt8]? {
        if let hex = params?["value_hex"]?.stringValue { return Hex.decode(hex) }
        if let text = params?["value"]?.stringValue { return Array(text.utf8) }
        return nil
    }
}

extension JSONValue {
    /// The JSON form of any `Encodable` value.
    public init(encoding value: some Encodable) throws {
        let data = try JSONEncoder().encode(value)
        self = try JSONDecoder().decode(JSONValue.self, from: data)
    }
}
