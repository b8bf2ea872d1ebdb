import MeshCore
import MeshCrypto

/// A renter's search as a pure state machine: it hands out shard reads (a few in parallel, in a
/// random order so that no shard is always read first), takes the records each read returned,
/// verifies them, keeps the newest record per provider, and stops when every shard has been read
/// or, with reads done, it holds `limit` matches. The shell performs the DHT reads.
public struct CapabilitySearch: Sendable {
    /// The query.
    public let query: CapabilityQuery
    /// The plan.
    public let plan: QueryPlan
    /// Reads in flight at once.
    public let parallelism: Int
    /// The longest lifetime a record may claim (ms), as for the DHT.
    public let maxLifetime: UInt64
    private var waiting: [ShardRead]
    private var inFlight: Set<ShardRead> = []
    private var retried: Set<ShardRead> = []
    private var newest: [PublicKey: CapabilityRecord] = [:]
    private var matching: Set<PublicKey> = []
    /// Records received (every copy counts).
    public private(set) var recordsFetched = 0
    /// Shards read (answered or failed).
    public private(set) var shardsRead = 0
    /// Shard reads that failed.
    public private(set) var shardsFailed = 0
    /// Records refused, by reason.
    public private(set) var refused: [CapabilityRecord.Refusal: Int] = [:]

    /// A search; `seed` orders the shard reads.
    public init(query: CapabilityQuery, plan: QueryPlan, seed: UInt64, parallelism: Int = 16, maxLifetime: UInt64 = 86_400_000) {
        self.query = query
        self.plan = plan
        self.parallelism = max(1, parallelism)
        self.maxLifetime = maxLifetime
        var rng = SplitMix64(seed: seed)
        var reads = plan.reads
        rng.shuffle(&reads)
        waiting = reads
    }

    /// True once enough matches are held that no new read needs to start.
    public var hasEnough: Bool { matching.count >= query.limit }

    /// The reads to start now.
    public mutating func nextReads() -> [ShardRead] {
        var out: [ShardRead] = []
        while inFlight.count < parallelism, !hasEnough, let read = waiting.popLast() {
            inFlight.insert(read)
            out.append(read)
        }
        return out
    }

    /// True when nothing is in flight and nothing more will be read.
    public var isFinished: Bool { inFlight.isEmpty && (waiting.isEmpty || hasEnough) }

    /// Takes what one read returned: `(DHT publisher, value)` pairs. A record signed by someone
    /// other than the DHT publisher, or stored under a key it does not belong to, is refused.
    public mutating func received(_ read: ShardRead, records: [(publisher: PublicKey, value: [UInt8])], now: UInt64) {
        guard inFlight.remove(read) != nil else { return }
        shardsRead += 1
        for (publisher, value) in records {
            recordsFetched += 1
            // The same bytes from another holder need no second verification.
            if let held = newest[publisher], held.encoded == value { continue }
            switch CapabilityRecord.verify(value, now: now, maxLifetime: maxLifetime) {
            case .failure(let why):
                refused[why, default: 0] += 1
            case .success(let record):
                guard record.provider == publisher else { refused[.wrongKey, default: 0] += 1; continue }
                guard CapabilityIndex.belongs(record, under: read.key, shard: read.shard, shards: plan.shards) else {
                    refused[.misplaced, default: 0] += 1
                    continue
                }
                if let held = newest[publisher], held.sequence >= record.sequence { continue }
                newest[publisher] = record
                if query.matches(record.capability) { matching.insert(publisher) } else { matching.remove(publisher) }
            }
        }
    }

    /// Notes a read that failed (no node answered). It is tried once more, next; a second
    /// failure counts in `shardsFailed`. (Under heavy load a read's lookup can time out whole.)
    public mutating func failed(_ read: ShardRead) {
        guard inFlight.remove(read) != nil else { return }
        if retried.insert(read).inserted {
            waiting.append(read)
            return
        }
        shardsRead += 1
        shardsFailed += 1
    }

    /// The newest record of every provider that matches the query (reputation aside), in
    /// provider-key order.
    public var matches: [CapabilityRecord] {
        matching.map { newest[$0]! }.sorted { $0.provider.bytes.lexicographicallyPrecedes($1.provider.bytes) }
    }

    /// Providers whose newest record seen is a tombstone.
    public var withdrawn: Int { newest.values.filter(\.capability.withdrawn).count }
}

/// A match with what the renter measured and knows about it.
public struct RankedOffer: Sendable {
    /// The provider's record.
    public var record: CapabilityRecord
    /// The renter's view of the provider's reputation (nil: no history).
    public var reputation: Double?
    /// Measured round trip, milliseconds (nil: not measured or no answer).
    public var rttMilliseconds: Double?

    /// An offer.
    public init(record: CapabilityRecord, reputation: Double? = nil, rttMilliseconds: Double? = nil) {
        self.record = record
        self.reputation = reputation
        self.rttMilliseconds = rttMilliseconds
    }
}

/// The renter's order of offers: reputation (highest first), then price (lowest first), then
/// round-trip time (fastest first, unmeasured last), then provider key (so the order is total).
public enum Ranking {
    /// The score of a peer with no history: the mean of a uniform beta prior.
    public static let unknownReputation = 0.5

    /// True if `a` ranks before `b`.
    public static func precedes(_ a: RankedOffer, _ b: RankedOffer) -> Bool {
        let (ra, rb) = (a.reputation ?? unknownReputation, b.reputation ?? unknownReputation)
        if ra != rb { return ra > rb }
        if a.record.capability.price != b.record.capability.price { return a.record.capability.price < b.record.capability.price }
        switch (a.rttMilliseconds, b.rttMilliseconds) {
        case let (x?, y?) where x != y: return x < y
        case (.some, nil): return true
        case (nil, .some): return false
        default: return a.record.provider.bytes.lexicographicallyPrecedes(b.record.provider.bytes)
        }
    }

    /// The offers whose round trip could decide their place in the top `limit`: the best `limit`
    /// by reputation and price, plus any that tie with the last of them (at most `4 * limit`).
    public static func shortlist(_ offers: [RankedOffer], limit: Int) -> [RankedOffer] {
        let sorted = offers.sorted(by: precedes)
        guard sorted.count > limit, limit > 0 else { return sorted }
        let last = sorted[limit - 1]
        var out = Array(sorted.prefix(limit))
        for o in sorted.dropFirst(limit) where out.count < 4 * limit {
            guard (o.reputation ?? unknownReputation) == (last.reputation ?? unknownReputation),
                  o.record.capability.price == last.record.capability.price else { break }
            out.append(o)
        }
        return out
    }
}
