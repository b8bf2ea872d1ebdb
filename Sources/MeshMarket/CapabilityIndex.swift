import MeshCore
import MeshCrypto

/// One index a capability record is published under: `any`, `vendor/<v>`, `model/<slug>`,
/// `vram/<tier GiB>` or `cc/<major>`.
public struct IndexKey: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// What the index groups by.
    public enum Kind: String, Sendable, CaseIterable {
        /// Every provider.
        case any
        /// Providers with a GPU of this vendor.
        case vendor
        /// Providers with a GPU of this model.
        case model
        /// Providers with a GPU in this VRAM tier.
        case vram
        /// Providers with a GPU of this compute-capability major version.
        case cc
    }

    /// The kind.
    public var kind: Kind
    /// The value ("" for `any`).
    public var value: String

    /// An index key.
    public init(_ kind: Kind, _ value: String = "") {
        self.kind = kind
        self.value = kind == .any ? "" : value
    }

    /// "any", "model/rtx-4090", ...
    public var description: String { kind == .any ? "any" : "\(kind.rawValue)/\(value)" }

    /// Orders by text.
    public static func < (a: IndexKey, b: IndexKey) -> Bool { a.description < b.description }

    /// The DHT name of one shard: `gpumesh/capability/v1/<key>#<shard>` (hashed into a DHT key
    /// by `Kademlia.key(named:)`).
    public func shardName(_ shard: Int) -> String { "gpumesh/capability/v1/\(description)#\(shard)" }
}

/// Where capability records are published and read: index keys, VRAM tiers and shards.
public enum CapabilityIndex {
    /// Shards per index key. Every member of a mesh must use the same value: a provider writes
    /// to one shard of each key (chosen by a hash of its public key), a reader reads all of them.
    /// 32 shards x 64 publishers per key per storing node lets 2,048 providers share one key.
    public static let defaultShards = 32

    /// VRAM tiers in GiB: a GPU sits in the highest tier not above its memory.
    public static let vramTiersGiB = [0, 8, 12, 16, 24, 32, 40, 48, 64, 80, 96, 128, 192]

    /// Compute-capability majors an index exists for; others are clamped into this range.
    public static let ccMajors = 1...15

    /// The tier (GiB) of a GPU with `vramMiB` of memory.
    public static func tier(vramMiB: Int) -> Int {
        vramTiersGiB.last { $0 * 1024 <= vramMiB } ?? 0
    }

    /// The tiers that can hold a GPU with at least `minMiB`.
    public static func tiers(atLeast minMiB: Int) -> [Int] {
        let first = tier(vramMiB: minMiB)
        return vramTiersGiB.filter { $0 >= first }
    }

    /// Every index key a capability belongs under, sorted.
    public static func keys(for capability: Capability) -> [IndexKey] {
        var keys: Set<IndexKey> = [IndexKey(.any)]
        for g in capability.gpus {
            keys.insert(IndexKey(.vendor, g.vendor))
            keys.insert(IndexKey(.model, g.slug))
            keys.insert(IndexKey(.vram, String(tier(vramMiB: g.vramMiB))))
            if let cc = g.computeCapability {
                keys.insert(IndexKey(.cc, String(min(max(cc.major, ccMajors.lowerBound), ccMajors.upperBound))))
            }
        }
        return keys.sorted()
    }

    /// The shard a provider writes to: the first four bytes of
    /// BLAKE2b-256("gpumesh/capability-shard/v1" || public key), big-endian, modulo `shards`.
    public static func shard(of provider: PublicKey, shards: Int = defaultShards) -> Int {
        let h = Blake2b.hash(Array("gpumesh/capability-shard/v1".utf8) + provider.bytes, outputLength: 32)
        let v = h.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return Int(v % UInt32(max(1, shards)))
    }

    /// The DHT names a provider publishes its record under.
    public static func names(for capability: Capability, provider: PublicKey, shards: Int = defaultShards) -> [String] {
        let s = shard(of: provider, shards: shards)
        return keys(for: capability).map { $0.shardName(s) }
    }

    /// True if `record` belongs under shard `shard` of `key`: its provider hashes to that shard
    /// and its GPUs put it under that key. Tombstones belong wherever their provider's shard is
    /// (a withdrawn offer must be able to replace a record under a key it no longer matches).
    public static func belongs(_ record: CapabilityRecord, under key: IndexKey, shard: Int, shards: Int = defaultShards) -> Bool {
        guard self.shard(of: record.provider, shards: shards) == shard else { return false }
        return record.capability.withdrawn || keys(for: record.capability).contains(key)
    }
}
