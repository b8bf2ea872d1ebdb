import MeshCore
import MeshCrypto

/// The payload of a `capability` gossip message: a provider announcing that its capability
/// record changed (offered, updated, withdrawn). Wire form: `version (1) = 1 | record` (the
/// signed record exactly as the DHT stores it). Only the provider itself may announce its record.
public enum CapabilityAnnouncement {
    /// The payload for `record`.
    public static func encode(_ record: CapabilityRecord) -> [UInt8] { [1] + record.encoded }

    /// Verifies a payload that `origin` signed: the record verifies (`CapabilityRecord.verify`)
    /// and is the origin's own.
    public static func verify(_ payload: [UInt8], origin: PublicKey, now: UInt64, maxLifetime: UInt64) -> Result<CapabilityRecord, CapabilityRecord.Refusal> {
        guard payload.first == 1 else { return .failure(.malformed) }
        let result = CapabilityRecord.verify(Array(payload.dropFirst()), now: now, maxLifetime: maxLifetime)
        if case .success(let record) = result, record.provider != origin { return .failure(.wrongKey) }
        return result
    }
}

/// The providers this peer has heard announce, as pure state: each provider's newest record
/// (by sequence), none once it withdraws or its record expires. Bounded: beyond `capacity`
/// providers, the record expiring soonest gives way.
public struct CapacityView: Sendable {
    /// Providers kept at most.
    public let capacity: Int
    private var records: [PublicKey: CapabilityRecord] = [:]
    /// Sequences of withdrawals, so an older live record arriving late does not come back.
    private var withdrawnAt: [PublicKey: (sequence: UInt64, expiresAt: UInt64)] = [:]

    /// An empty view.
    public init(capacity: Int = 10_000) {
        self.capacity = capacity
    }

    /// What an announcement changed.
    public enum Change: Equatable, Sendable {
        /// A provider not known before.
        case added
        /// A newer record of a known provider.
        case updated
        /// The provider withdrew.
        case withdrawn
        /// Not newer than what is known.
        case stale
    }

    /// Applies a verified record.
    public mutating func apply(_ record: CapabilityRecord, now: UInt64) -> Change {
        let key = record.provider
        if let w = withdrawnAt[key], w.expiresAt > now, record.sequence <= w.sequence { return .stale }
        if let known = records[key], record.sequence <= known.sequence { return .stale }
        if record.capability.withdrawn {
            records[key] = nil
            withdrawnAt[key] = (record.sequence, record.expiresAt)
            return .withdrawn
        }
        let isNew = records[key] == nil
        if isNew, records.count >= capacity {
            prune(now: now)
            if records.count >= capacity, let soonest = records.min(by: { $0.value.expiresAt < $1.value.expiresAt })?.key {
                records[soonest] = nil
            }
        }
        records[key] = record
        return isNew ? .added : .updated
    }

    /// Forgets expired records and withdrawals.
    public mutating func prune(now: UInt64) {
        records = records.filter { $0.value.expiresAt > now }
        withdrawnAt = withdrawnAt.filter { $0.value.expiresAt > now }
    }

    /// The live records, most free slots first, then by provider key.
    public func offers(now: UInt64) -> [CapabilityRecord] {
        records.values.filter { $0.expiresAt > now }.sorted { a, b in
            a.capability.freeSlots != b.capability.freeSlots
                ? a.capability.freeSlots > b.capability.freeSlots
                : a.provider.bytes.lexicographicallyPrecedes(b.provider.bytes)
        }
    }

    /// Providers known (expired ones included until the next `prune`).
    public var count: Int { records.count }
}
