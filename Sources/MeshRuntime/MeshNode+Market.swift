import Foundation
import MeshCore
import MeshCrypto
import MeshDHT
import MeshMarket

/// A provider's published offer (loop-confined).
final class ProviderState {
    var capability: Capability
    let lifetime: UInt64
    var record: CapabilityRecord?
    var names: [String] = []
    var timer: LoopTimer?

    init(capability: Capability, lifetime: UInt64) {
        self.capability = capability
        self.lifetime = lifetime
    }
}

/// What publishing (or withdrawing) an offer did.
public struct OfferOutcome: Sendable, Equatable, Codable {
    /// The record's sequence number.
    public var sequence: UInt64
    /// The DHT names it was written under.
    public var indexNames: [String]
    /// Index keys at least one node now holds it under.
    public var keysStored: Int
    /// Copies stored, over all keys.
    public var stored: Int
    /// Copies refused or not answered.
    public var failed: Int

    enum CodingKeys: String, CodingKey {
        case sequence, indexNames = "index_names", keysStored = "keys_stored", stored, failed
    }
}

/// What a search found and what it cost.
public struct FindResult: Sendable {
    /// The best offers, best first, at most the query's limit.
    public var offers: [RankedOffer]
    /// The index keys read.
    public var plan: QueryPlan
    /// Providers that matched (before the limit).
    public var matched: Int
    /// Shards read, and how many of those reads failed.
    public var shardsRead: Int, shardsFailed: Int
    /// Records received, every copy counted.
    public var recordsFetched: Int
    /// Records refused, by reason.
    public var refused: [CapabilityRecord.Refusal: Int]
    /// Providers whose newest record was a tombstone.
    public var withdrawn: Int
    /// Shortlisted providers that did not answer a ping (ranked last among equals).
    public var unreachable: Int
    /// Wall time of the whole search.
    public var duration: Duration
}

/// The JSON form of one offer, as `gpumesh find --json` and the explorer print it.
public struct OfferJSON: Codable, Sendable, Equatable {
    /// The provider's peer ID (hex).
    public var peerID: String
    /// Its contact string.
    public var contact: String
    /// GPUs by model.
    public var gpus: [GPUGroup]
    /// All GPUs.
    public var totalGPUs: Int
    /// Points per GPU-hour.
    public var price: Price
    /// Free and total job slots.
    public var freeSlots: Int, totalSlots: Int
    /// Executors offered.
    public var executors: [Executor]
    /// Region hint.
    public var region: String
    /// CPU, memory, disk.
    public var cpuModel: String, cpuCores: Int, ramMiB: Int, diskFreeMiB: Int
    /// Record sequence and expiry.
    public var sequence: UInt64, expiresAtMilliseconds: UInt64
    /// Measured round trip (null: not measured or no answer).
    public var rttMilliseconds: Double?
    /// Reputation in the reader's view (null: no history).
    public var reputation: Double?

    /// The JSON form of an offer.
    public init(_ offer: RankedOffer) {
        let c = offer.record.capability
        peerID = c.contact.peerID.hex
        contact = c.contact.description
        gpus = c.gpus
        totalGPUs = c.totalGPUs
        price = c.price
        freeSlots = c.freeSlots
        totalSlots = c.totalSlots
        executors = c.executors
        region = c.region
        cpuModel = c.cpuModel
        cpuCores = c.cpuCores
        ramMiB = c.ramMiB
        diskFreeMiB = c.diskFreeMiB
        sequence = offer.record.sequence
        expiresAtMilliseconds = offer.record.expiresAt
        rttMilliseconds = offer.rttMilliseconds
        reputation = offer.reputation
    }

    enum CodingKeys: String, CodingKey {
        case peerID = "peer_id", contact, gpus, totalGPUs = "total_gpus", price, freeSlots = "free_slots", totalSlots = "total_slots"
        case executors, region, cpuModel = "cpu_model", cpuCores = "cpu_cores", ramMiB = "ram_mib", diskFreeMiB = "disk_free_mib"
        case sequence, expiresAtMilliseconds = "expires_at_ms", rttMilliseconds = "rtt_ms", reputation
    }
}

/// The JSON form of a search's result.
public struct FindResultJSON: Codable, Sendable {
    /// The offers, best first.
    public var offers: [OfferJSON]
    /// The index keys read, e.g. `["model/rtx-4090"]`.
    public var plan: [String]
    /// Shards per key.
    public var shards: Int
    /// Providers that matched before the limit.
    public var matched: Int
    /// Shards read and failed.
    public var shardsRead: Int, shardsFailed: Int
    /// Records received.
    public var recordsFetched: Int
    /// Refused records by reason.
    public var refused: [String: Int]
    /// Providers found withdrawn.
    public var withdrawn: Int
    /// Shortlisted providers that did not answer a ping.
    public var unreachable: Int
    /// Wall time, ms.
    public var latencyMilliseconds: Double

    /// The JSON form of `r`.
    public init(_ r: FindResult) {
        offers = r.offers.map(OfferJSON.init)
        plan = r.plan.keys.map(\.description)
        shards = r.plan.shards
        matched = r.matched
        shardsRead = r.shardsRead
        shardsFailed = r.shardsFailed
        recordsFetched = r.recordsFetched
        refused = Dictionary(uniqueKeysWithValues: r.refused.map { ($0.key.rawValue, $0.value) })
        withdrawn = r.withdrawn
        unreachable = r.unreachable
        latencyMilliseconds = r.duration.milliseconds
    }

    enum CodingKeys: String, CodingKey {
        case offers, plan, shards, matched, shardsRead = "shards_read", shardsFailed = "shards_failed", recordsFetched = "records_fetched"
        case refused, withdrawn, unreachable, latencyMilliseconds = "latency_ms"
    }
}

extension MeshNode {
    /// The default capability-record lifetime.
    public static let defaultOfferLifetime = Duration.seconds(600)
    /// A provider republishes after this share of its record's lifetime (before the DHT's own
    /// half-life republish, which would renew the envelope but not the inner record).
    static let offerRepublishShare = 0.4
    /// How long a clean stop waits for its tombstones to be stored.
    public static let withdrawTimeout = Duration.seconds(3)

    /// Publishes `capability` (whose contact must be this node's) under its index keys, and keeps
    /// it published: republished before it expires, at once on `updateOffer`, withdrawn with a
    /// tombstone by `withdrawOffer` and by `stop()` (from any thread).
    public func provide(_ capability: Capability, lifetime: Duration = defaultOfferLifetime) async throws -> OfferOutcome {
        let ms = UInt64(max(1, lifetime.milliseconds))
        return try await onLoop { node, done in node.startProvide(capability, lifetime: ms, done: done) }
    }

    /// Changes the free slots and/or price of the offer and republishes it at once (from any thread).
    public func updateOffer(freeSlots: Int? = nil, price: Price? = nil) async throws -> OfferOutcome {
        try await onLoop { node, done in node.startUpdate(freeSlots: freeSlots, price: price, done: done) }
    }

    /// Withdraws the offer: a tombstone with a higher sequence under every index key, so searches
    /// drop this provider at once. Nil if the node does not provide (from any thread).
    public func withdrawOffer(timeout: Duration = withdrawTimeout) async throws -> OfferOutcome? {
        try await onLoop { node, done in node.startWithdraw(timeout: timeout, done: done) }
    }

    /// The record this node publishes now, if it provides.
    public func currentOffer() async throws -> CapabilityRecord? {
        try await loop.submit { self.provider?.record }
    }

    /// Searches the mesh for offers matching `query` (already validated): reads the planned index
    /// shards, verifies and filters every record, pings the shortlist, ranks (from any thread).
    public func find(_ query: CapabilityQuery, measureRTT: Bool = true, seed: UInt64 = UInt64.random(in: 0...UInt64.max)) async throws -> FindResult {
        try await onLoop { node, done in node.startFind(query, measureRTT: measureRTT, seed: seed, done: done) }
    }

    // MARK: Loop side

    func startProvide(_ capability: Capability, lifetime: UInt64, done: @escaping (Result<OfferOutcome, NodeError>) -> Void) {
        guard !stopped else { done(.failure(.stopped)); return }
        guard capability.contact.publicKey == identity.publicKey else { done(.failure(.badRequest("the offer's contact is not this node"))); return }
        if let problem = capability.problem { done(.failure(.badRequest(problem))); return }
        guard lifetime >= 2_000, lifetime <= dht.instance.settings.maxRecordLifetime else {
            done(.failure(.badRequest("an offer lives 2 s to \(dht.instance.settings.maxRecordLifetime / 1000) s")))
            return
        }
        let state = provider ?? ProviderState(capability: capability, lifetime: lifetime)
        state.capability = capability
        provider = state
        state.timer?.cancel()
        let every = Duration.milliseconds(Int64(Double(lifetime) * Self.offerRepublishShare))
        state.timer = try? loop.schedule(after: every, repeating: every) { [unowned self] in
            guard let state = provider else { return }
            publishOffer(state, announce: false) { result in
                if case .failure(let error) = result { self.logger.warning("republishing the offer failed: \(error)") }
            }
        }
        publishOffer(state, announce: true, done: done)
    }

    func startUpdate(freeSlots: Int?, price: Price?, done: @escaping (Result<OfferOutcome, NodeError>) -> Void) {
        guard let state = provider, !stopped else { done(.failure(.badRequest("this node does not provide"))); return }
        if let freeSlots {
            guard (0...state.capability.totalSlots).contains(freeSlots) else {
                done(.failure(.badRequest("free slots must be 0 to \(state.capability.totalSlots)")))
                return
            }
            state.capability.freeSlots = freeSlots
        }
        if let price { state.capability.price = price }
        publishOffer(state, announce: true, done: done)
    }

    /// Signs the state's capability with a fresh sequence and expiry and puts it under every index
    /// key; keys the offer has left get a tombstone first. With `announce`, the new record also
    /// goes out on the gossip topic `capability` (a change; a plain republish does not).
    func publishOffer(_ state: ProviderState, announce: Bool, done: @escaping (Result<OfferOutcome, NodeError>) -> Void) {
        let now = DHTShell.now()
        let names = CapabilityIndex.names(for: state.capability, provider: identity.publicKey)
        let left = state.names.filter { !names.contains($0) }
        var sequence = max(now, (state.record?.sequence ?? 0) + 1)
        var puts: [Put] = []
        do {
            if !left.isEmpty {
                let tombstone = try CapabilityRecord.sign(state.capability.asWithdrawn, sequence: sequence, expiresAt: now + state.lifetime, by: identity)
                puts += left.map { Put(name: $0, record: tombstone, keepAlive: false) }
                sequence += 1
            }
            let record = try CapabilityRecord.sign(state.capability, sequence: sequence, expiresAt: now + state.lifetime, by: identity)
            state.record = record
            state.names = names
            puts += names.map { Put(name: $0, record: record, keepAlive: true) }
        } catch {
            done(.failure(.badRequest("\(error)")))
            return
        }
        // Announced once the puts are done: receivers can then read it from the DHT too, and the
        // gossip it starts does not compete with the puts' lookups (it did, and under CPU load
        // some puts missed their closest nodes).
        let record = state.record
        putAll(puts, lifetime: state.lifetime, sequence: sequence, names: names) { [self] result in
            if announce, let record, state.record?.sequence == record.sequence { self.announce(record) }
            done(result)
        }
    }

    /// One capability record to put under one index name; tombstones are put once, live records
    /// kept alive (the DHT renews their envelope until this node replaces or withdraws them).
    private struct Put {
        let name: String
        let record: CapabilityRecord
        let keepAlive: Bool
    }

    /// Performs `puts` and reports once all are done.
    private func putAll(_ puts: [Put], lifetime: UInt64, sequence: UInt64, names: [String],
                        done: @escaping (Result<OfferOutcome, NodeError>) -> Void) {
        var outcome = OfferOutcome(sequence: sequence, indexNames: names, keysStored: 0, stored: 0, failed: 0)
        var remaining = puts.count
        guard remaining > 0 else { done(.success(outcome)); return }
        for put in puts {
            do {
                try dht.publish(key: Kademlia.key(named: put.name), value: put.record.encoded, lifetime: lifetime, keepAlive: put.keepAlive) { directive in
                    if case .putFinished(_, let o) = directive {
                        outcome.stored += o.stored
                        outcome.failed += o.failed + o.refused
                        if o.stored > 0 { outcome.keysStored += 1 }
                    }
                    remaining -= 1
                    if remaining == 0 { done(.success(outcome)) }
                }
            } catch {
                remaining -= 1
                outcome.failed += 1
                if remaining == 0 { done(.success(outcome)) }
            }
        }
    }

    /// Publishes tombstones under every key of the offer and stops providing; reports when they
    /// are stored or `timeout` passes, whichever is first.
    func startWithdraw(timeout: Duration, done: @escaping (Result<OfferOutcome?, NodeError>) -> Void) {
        guard let state = provider, !stopped else { done(.success(nil)); return }
        provider = nil
        state.timer?.cancel()
        let now = DHTShell.now()
        let sequence = max(now, (state.record?.sequence ?? 0) + 1)
        guard let tombstone = try? CapabilityRecord.sign(state.capability.asWithdrawn, sequence: sequence, expiresAt: now + state.lifetime, by: identity) else {
            done(.success(nil))
            return
        }
        announce(tombstone)
        var finished = false
        let once: (Result<OfferOutcome?, NodeError>) -> Void = { result in
            guard !finished else { return }
            finished = true
            done(result)
        }
        let timer = try? loop.schedule(after: timeout) {
            once(.success(OfferOutcome(sequence: sequence, indexNames: state.names, keysStored: 0, stored: 0, failed: state.names.count)))
        }
        // The tombstones stay stored until they expire; nothing keeps them alive.
        putAll(state.names.map { Put(name: $0, record: tombstone, keepAlive: false) }, lifetime: state.lifetime, sequence: sequence,
               names: state.names) { result in
            timer?.cancel()
            once(result.map { $0 })
        }
    }

    /// A search in progress (loop-confined).
    private final class FindState {
        var search: CapabilitySearch
        let started = EventLoop.monotonicNanoseconds()
        var finished = false
        init(_ search: CapabilitySearch) { self.search = search }
    }

    func startFind(_ query: CapabilityQuery, measureRTT: Bool, seed: UInt64, done: @escaping (Result<FindResult, NodeError>) -> Void) {
        guard !stopped else { done(.failure(.stopped)); return }
        let plan = query.plan()
        let state = FindState(CapabilitySearch(query: query, plan: plan, seed: seed, maxLifetime: dht.instance.settings.maxRecordLifetime))
        pumpFind(state, measureRTT: measureRTT, done: done)
    }

    private func pumpFind(_ state: FindState, measureRTT: Bool, done: @escaping (Result<FindResult, NodeError>) -> Void) {
        guard !state.finished else { return }
        for read in state.search.nextReads() {
            // The capability record inside carries the provider's own signature, which the search
            // verifies (and requires the DHT publisher to match): one Ed25519 check per record, not two.
            startGet(key: Kademlia.key(named: read.name), limit: dht.instance.settings.maxRecordsPerKey, verify: false) { [unowned self] result in
                switch result {
                case .success(let outcome) where outcome.responders > 0 || !outcome.records.isEmpty:
                    state.search.received(read, records: outcome.records.map { ($0.publisher, $0.value) }, now: DHTShell.now())
                case .success:
                    state.search.failed(read)
                case .failure(let error):
                    state.finished = true
                    done(.failure(error))
                    return
                }
                pumpFind(state, measureRTT: measureRTT, done: done)
            }
        }
        guard state.search.isFinished, !state.finished else { return }
        state.finished = true
        bump(.capabilityRecordsRefused, by: state.search.refused.values.reduce(0, +))
        let query = state.search.query
        // Reputation is the ledger's last computed view; a provider it holds no evidence about is
        // new (`Ranking.unknownReputation` for the --min-reputation floor).
        let candidates = state.search.matches.map { RankedOffer(record: $0, reputation: ledger?.reputation($0.provider)) }
            .filter { ($0.reputation ?? Ranking.unknownReputation) >= (query.minReputation ?? 0) }
        let shortlist = Ranking.shortlist(candidates, limit: query.limit)
        let finish: ([RankedOffer]) -> Void = { offers in
            let s = state.search
            done(.success(FindResult(offers: Array(offers.sorted(by: Ranking.precedes).prefix(query.limit)), plan: s.plan,
                                     matched: candidates.count, shardsRead: s.shardsRead, shardsFailed: s.shardsFailed,
                                     recordsFetched: s.recordsFetched, refused: s.refused, withdrawn: s.withdrawn,
                                     unreachable: measureRTT ? offers.filter { $0.rttMilliseconds == nil }.count : 0,
                                     duration: .nanoseconds(Int64(EventLoop.monotonicNanoseconds() - state.started)))))
        }
        guard measureRTT, !shortlist.isEmpty else { finish(shortlist); return }
        var measured = shortlist
        var remaining = shortlist.count
        for (i, offer) in shortlist.enumerated() {
            probe(offer.record.capability.contact, timeout: .seconds(1)) { result in
                if case .success(let pong) = result { measured[i].rttMilliseconds = pong.roundTrip.milliseconds }
                remaining -= 1
                if remaining == 0 { finish(measured) }
            }
        }
    }

    /// Registers the `market.*` control methods.
    func registerMarketControl(_ control: ControlServer) {
        control.register("market.find") { [unowned self] params, reply in
            let query: CapabilityQuery
            do {
                query = try JSONDecoder().decode(CapabilityQuery.self, from: JSONEncoder().encode(params ?? .object([:])))
                try query.validate()
            } catch {
                reply(.failure(.invalidParams("\(error)")))
                return
            }
            let probe = params?["measure_rtt"]?.boolValue ?? true
            startFind(query, measureRTT: probe, seed: UInt64.random(in: 0...UInt64.max)) { result in
                reply(result.mapError(Self.rpcError).flatMap { r in
                    Result { try JSONValue(encoding: FindResultJSON(r)) }.mapError { .serverError("\($0)") }
                })
            }
        }
        control.register("market.offer") { [unowned self] _, reply in
            guard let state = provider, let record = state.record else { reply(.success(.null)); return }
            reply(Result { try JSONValue(encoding: OfferJSON(RankedOffer(record: record))) }.mapError { .serverError("\($0)") })
        }
        control.register("market.update") { [unowned self] params, reply in
            var price: Price?
            if let text = params?["price"]?.stringValue {
                guard let p = Price(parsing: text) else { reply(.failure(.invalidParams("price must be a decimal such as 1.5"))); return }
                price = p
            }
            startUpdate(freeSlots: params?["free_slots"]?.intValue, price: price) { result in
                reply(result.mapError(Self.rpcError).flatMap { o in Result { try JSONValue(encoding: o) }.mapError { .serverError("\($0)") } })
            }
        }
    }
}
