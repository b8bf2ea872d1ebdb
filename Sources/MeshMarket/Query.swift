import MeshCore
import MeshCrypto

/// What a renter is looking for. Every field is optional except `gpus` and `limit`; a provider
/// matches when it has at least `gpus` GPUs that each meet every per-GPU condition (vendor,
/// model, VRAM, compute capability) and the offer meets the rest.
public struct CapabilityQuery: Sendable, Equatable, Codable {
    /// GPU vendor (`nvidia`, `amd`).
    public var vendor: String?
    /// GPU model slug (`rtx-4090`).
    public var model: String?
    /// Least memory per GPU, MiB.
    public var minVRAMMiB: Int?
    /// Least number of matching GPUs on one provider.
    public var gpus: Int
    /// Least CUDA compute capability.
    public var minComputeCapability: ComputeCapability?
    /// An executor the provider must support.
    public var executor: Executor?
    /// Highest price, points per GPU-hour.
    public var maxPrice: Price?
    /// Least reputation, 0 to 1 (peers with no history count as `Ranking.unknownReputation`).
    public var minReputation: Double?
    /// Most results.
    public var limit: Int
    /// Include providers with no free slot.
    public var includeBusy: Bool

    /// A query; by default any provider with one GPU and a free slot, ten results.
    public init(vendor: String? = nil, model: String? = nil, minVRAMMiB: Int? = nil, gpus: Int = 1,
                minComputeCapability: ComputeCapability? = nil, executor: Executor? = nil, maxPrice: Price? = nil,
                minReputation: Double? = nil, limit: Int = 10, includeBusy: Bool = false) {
        self.vendor = vendor
        self.model = model
        self.minVRAMMiB = minVRAMMiB
        self.gpus = gpus
        self.minComputeCapability = minComputeCapability
        self.executor = executor
        self.maxPrice = maxPrice
        self.minReputation = minReputation
        self.limit = limit
        self.includeBusy = includeBusy
    }

    enum CodingKeys: String, CodingKey {
        case vendor, model, minVRAMMiB = "min_vram_mib", gpus, minComputeCapability = "min_compute_capability", executor
        case maxPrice = "max_price", minReputation = "min_reputation", limit, includeBusy = "include_busy"
    }

    /// Decodes a query; absent fields take their defaults.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(vendor: try c.decodeIfPresent(String.self, forKey: .vendor), model: try c.decodeIfPresent(String.self, forKey: .model),
                  minVRAMMiB: try c.decodeIfPresent(Int.self, forKey: .minVRAMMiB), gpus: try c.decodeIfPresent(Int.self, forKey: .gpus) ?? 1,
                  minComputeCapability: try c.decodeIfPresent(ComputeCapability.self, forKey: .minComputeCapability),
                  executor: try c.decodeIfPresent(Executor.self, forKey: .executor), maxPrice: try c.decodeIfPresent(Price.self, forKey: .maxPrice),
                  minReputation: try c.decodeIfPresent(Double.self, forKey: .minReputation), limit: try c.decodeIfPresent(Int.self, forKey: .limit) ?? 10,
                  includeBusy: try c.decodeIfPresent(Bool.self, forKey: .includeBusy) ?? false)
    }

    /// Most results one query may ask for.
    public static let maxLimit = 2048

    /// A query that cannot be asked or can never match, with the flag at fault.
    public struct Problem: Error, Equatable, CustomStringConvertible {
        /// The query field (as its CLI flag) at fault.
        public var field: String
        /// What is wrong.
        public var message: String
        /// Makes a problem.
        public init(_ field: String, _ message: String) { self.field = field; self.message = message }
        /// "--field: message".
        public var description: String { "\(field): \(message)" }
    }

    /// What a catalogue knows about a model: vendor and nominal memory.
    public typealias KnownModel = (vendor: String, vramMiB: Int)

    /// Checks the query: ranges, slug syntax, and, where `catalogue` knows the model, conditions
    /// it can never meet (an RTX 4090 with 48 GiB, an AMD GPU with a CUDA capability).
    public func validate(catalogue: (String) -> KnownModel? = { _ in nil }) throws(Problem) {
        if let vendor, !Capability.isName(vendor, max: Capability.maxVendorBytes) {
            throw Problem("--vendor", "'\(vendor)' is not a vendor name (lowercase letters, digits, '-')")
        }
        if let model, !Capability.isName(model, max: Capability.maxSlugBytes) {
            throw Problem("--gpu", "'\(model)' is not a model slug such as rtx-4090")
        }
        let mostGPUs = Capability.maxGPUGroups * Capability.maxGPUsPerGroup
        guard (1...mostGPUs).contains(gpus) else { throw Problem("--gpus", "\(gpus) GPUs: a provider offers 1 to \(mostGPUs)") }
        if let minVRAMMiB {
            guard minVRAMMiB >= 0 else { throw Problem("--min-vram", "a size cannot be negative") }
            guard minVRAMMiB <= Int(UInt32.max) else { throw Problem("--min-vram", "\(minVRAMMiB) MiB is more than any GPU can report") }
        }
        guard (1...Self.maxLimit).contains(limit) else { throw Problem("--limit", "\(limit): ask for 1 to \(Self.maxLimit) results") }
        if let minReputation, !(0...1).contains(minReputation) || minReputation.isNaN {
            throw Problem("--min-reputation", "\(minReputation): reputation is 0 to 1")
        }
        if vendor != nil, vendor != "nvidia", minComputeCapability != nil {
            throw Problem("--min-cc", "only NVIDIA GPUs have a CUDA compute capability, and the query asks for \(vendor!)")
        }
        guard let model, let known = catalogue(model) else { return }
        if let vendor, vendor != known.vendor {
            throw Problem("--vendor", "\(model) is a \(known.vendor) GPU, not \(vendor)")
        }
        if let minVRAMMiB, minVRAMMiB > known.vramMiB {
            throw Problem("--min-vram", "\(model) has \(known.vramMiB / 1024) GiB; no \(model) has \(Self.gib(minVRAMMiB))")
        }
        if minComputeCapability != nil, known.vendor != "nvidia" {
            throw Problem("--min-cc", "\(model) is a \(known.vendor) GPU and has no CUDA compute capability")
        }
    }

    static func gib(_ mib: Int) -> String {
        mib % 1024 == 0 ? "\(mib / 1024) GiB" : "\(mib) MiB"
    }

    /// True if one GPU group meets the per-GPU conditions.
    public func accepts(_ g: GPUGroup) -> Bool {
        if let vendor, g.vendor != vendor { return false }
        if let model, g.slug != model { return false }
        if let minVRAMMiB, g.vramMiB < minVRAMMiB { return false }
        if let minComputeCapability {
            guard let cc = g.computeCapability, cc >= minComputeCapability else { return false }
        }
        return true
    }

    /// True if `capability` meets every condition but reputation (which depends on the reader).
    public func matches(_ capability: Capability) -> Bool {
        guard !capability.withdrawn else { return false }
        if !includeBusy, capability.freeSlots < 1 { return false }
        if let executor, !capability.executors.contains(executor) { return false }
        if let maxPrice, capability.price > maxPrice { return false }
        return capability.gpus.filter(accepts).reduce(0) { $0 + $1.count } >= gpus
    }

    /// The index keys to read: the candidate plan with the lowest `QueryPlan.cost(of:)`; ties go
    /// to fewer keys, then to the first candidate (any, vendor, model, VRAM, CC).
    public func plan(shards: Int = CapabilityIndex.defaultShards) -> QueryPlan {
        var options: [[IndexKey]] = [[IndexKey(.any)]]
        if let vendor { options.append([IndexKey(.vendor, vendor)]) }
        if let model { options.append([IndexKey(.model, model)]) }
        if let minVRAMMiB, minVRAMMiB > 0 {
            options.append(CapabilityIndex.tiers(atLeast: minVRAMMiB).map { IndexKey(.vram, String($0)) })
        }
        if let cc = minComputeCapability {
            let from = min(max(cc.major, CapabilityIndex.ccMajors.lowerBound), CapabilityIndex.ccMajors.upperBound)
            options.append((from...CapabilityIndex.ccMajors.upperBound).map { IndexKey(.cc, String($0)) })
        }
        let best = options.enumerated().min { a, b in
            let (sa, sb) = (QueryPlan.cost(of: a.element), QueryPlan.cost(of: b.element))
            return sa != sb ? sa < sb : (a.element.count != b.element.count ? a.element.count < b.element.count : a.offset < b.offset)
        }!.element
        return QueryPlan(keys: best.sorted(), shards: shards)
    }
}

/// The index keys a query reads, and every shard of them.
public struct QueryPlan: Sendable, Equatable {
    /// The keys.
    public var keys: [IndexKey]
    /// Shards per key.
    public var shards: Int

    /// A plan.
    public init(keys: [IndexKey], shards: Int) {
        self.keys = keys
        self.shards = shards
    }

    /// Every shard read, key by key.
    public var reads: [ShardRead] {
        keys.flatMap { key in (0..<shards).map { ShardRead(key: key, shard: $0) } }
    }

    /// The expected share of all providers that a set of keys holds, from a fixed prior (the
    /// planner has no global statistics, by design): `any` 1, a vendor 0.5, a model 0.05, a
    /// VRAM tier 0.1, a compute-capability major 0.15. Keys of one kind are disjoint or nearly so,
    /// so shares add up.
    public static func share(of keys: [IndexKey]) -> Double {
        keys.reduce(0) { total, key in
            total + {
                switch key.kind {
                case .any: 1.0
                case .vendor: 0.5
                case .model: 0.05
                case .vram: 0.1
                case .cc: 0.15
                }
            }()
        }
    }

    /// The planner's cost of reading `keys`, in units of one key's shards read empty: each key
    /// costs 1 (its shards are read whether or not they hold anything) and reading every
    /// provider's record costs 2, scaled by the keys' expected `share`. So one model key (1.1)
    /// beats a vendor (2) beats `any` (3), and several VRAM tiers or CC majors win only when they
    /// are few: `vram/128` and `vram/192` (2.4) beat `any`, seven tiers (8.4) do not.
    public static func cost(of keys: [IndexKey]) -> Double {
        Double(keys.count) + 2 * share(of: keys)
    }

    /// "model/rtx-4090 x 32 shards".
    public var summary: String {
        keys.map(\.description).joined(separator: ",") + " x \(shards) shards"
    }
}

/// One shard of one index key to read.
public struct ShardRead: Sendable, Hashable {
    /// The key.
    public var key: IndexKey
    /// The shard.
    public var shard: Int
    /// The DHT name to hash into a key.
    public var name: String { key.shardName(shard) }
}
