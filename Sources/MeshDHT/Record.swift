import MeshCore
import MeshCrypto

extension Kademlia {
    /// A signed DHT record: one publisher's value under one key, with a sequence number and an
    /// expiry. Many publishers may hold records under the same key (like provider records).
    ///
    /// Wire form (big-endian): `version (1) | publisher key (32) | key (32) | sequence (8) |
    /// expires_at_ms (8) | value length (2) | value | signature (64)`. The Ed25519 signature
    /// covers `"gpumesh/dht-record/v1"` followed by every byte before it, exactly as sent.
    public struct Record: Sendable, Hashable {
        /// The format version this code writes and reads.
        public static let version: UInt8 = 1
        /// Domain separation for record signatures.
        public static let signatureContext = Array("gpumesh/dht-record/v1".utf8)
        /// Bytes around the value: version, publisher, key, sequence, expiry, length, signature.
        public static let overhead = 1 + 32 + 32 + 8 + 8 + 2 + 64

        /// Who signed it.
        public let publisher: PublicKey
        /// The DHT key it is stored under.
        public let key: PeerID
        /// Higher replaces lower, for the same publisher and key.
        public let sequence: UInt64
        /// When it stops being valid (Unix milliseconds).
        public let expiresAt: UInt64
        /// The application's bytes.
        public let value: [UInt8]
        /// The exact bytes on the wire, signature included.
        public let encoded: [UInt8]

        /// Signs a record. Values longer than 65,535 bytes cannot be encoded; the DHT refuses
        /// values over `Settings.maxValueBytes` (a storing node checks that, not this).
        public static func sign(key: PeerID, value: [UInt8], sequence: UInt64, expiresAt: UInt64, by signer: SigningKey) -> Record {
            var w = WireWriter(capacity: overhead + value.count)
            w.u8(version)
            w.raw(signer.publicKey.bytes)
            w.raw(key.bytes)
            w.u64(sequence)
            w.u64(expiresAt)
            w.blob16(value)
            let signature = signer.signature(for: signatureContext + w.bytes)
            w.raw(signature)
            return Record(publisher: signer.publicKey, key: key, sequence: sequence, expiresAt: expiresAt, value: value, encoded: w.bytes)
        }

        private init(publisher: PublicKey, key: PeerID, sequence: UInt64, expiresAt: UInt64, value: [UInt8], encoded: [UInt8]) {
            self.publisher = publisher
            self.key = key
            self.sequence = sequence
            self.expiresAt = expiresAt
            self.value = value
            self.encoded = encoded
        }

        /// Reads one record from untrusted bytes (structure only: call `isSignatureValid` or
        /// `check` before trusting it). Nil if malformed.
        public init?(reading r: inout WireReader, all bytes: [UInt8]) {
            let start = r.offset
            guard r.u8() == Self.version, let pk = r.raw(32), let publisher = try? PublicKey(bytes: pk),
                  let key = r.peerID(), let sequence = r.u64(), let expiresAt = r.u64(),
                  let value = r.blob16(max: Int(UInt16.max)), r.raw(64) != nil else { return nil }
            self.init(publisher: publisher, key: key, sequence: sequence, expiresAt: expiresAt, value: value,
                      encoded: Array(bytes[start..<r.offset]))
        }

        /// Parses exactly one record.
        public init?(decoding bytes: [UInt8]) {
            var r = WireReader(bytes)
            guard let record = Record(reading: &r, all: bytes), r.isAtEnd else { return nil }
            self = record
        }

        /// The 64-byte signature.
        public var signature: ArraySlice<UInt8> { encoded[(encoded.count - 64)...] }

        /// True if the publisher's signature covers these exact bytes.
        public var isSignatureValid: Bool {
            publisher.isValidSignature(Array(signature), for: Self.signatureContext + encoded[..<(encoded.count - 64)])
        }

        /// Why a storing node would refuse this record now, or nil if it is acceptable.
        /// Cheap checks first; the signature last (skipped when `verifySignature` is false).
        public func problem(now: UInt64, settings: Settings, verifySignature: Bool = true) -> StoreStatus? {
            if value.count > settings.maxValueBytes { return .tooLarge }
            if expiresAt <= now { return .expired }
            if expiresAt - now > settings.maxRecordLifetime { return .expiryTooFar }
            if verifySignature && !isSignatureValid { return .badSignature }
            return nil
        }

        /// The sort order for one key's records: by publisher key bytes (stable paging).
        static func publisherOrder(_ a: Record, _ b: Record) -> Bool {
            a.publisher.bytes.lexicographicallyPrecedes(b.publisher.bytes)
        }
    }

    /// A storing node's answer to a STORE.
    public enum StoreStatus: UInt8, Sendable, Equatable, CaseIterable, CustomStringConvertible {
        /// Stored (new, or a higher sequence replaced a lower one).
        case stored = 0
        /// Already held, byte for byte.
        case unchanged = 1
        /// A record with this sequence or a higher one is already held: replayed or out of date.
        case staleSequence = 2
        /// The signature does not verify.
        case badSignature = 3
        /// Already expired.
        case expired = 4
        /// Expires further ahead than the storing node allows.
        case expiryTooFar = 5
        /// The value is over the size limit.
        case tooLarge = 6
        /// This key already holds as many publishers' records as the node allows.
        case keyFull = 7
        /// This publisher already has as many records here as the node allows.
        case publisherFull = 8
        /// The node holds as many records as it allows.
        case storeFull = 9
        /// Not a well-formed record.
        case malformed = 10

        /// True for `stored` and `unchanged`: the node holds the record.
        public var isHeld: Bool { self == .stored || self == .unchanged }

        /// Words for people.
        public var description: String {
            switch self {
            case .stored: "stored"
            case .unchanged: "unchanged"
            case .staleSequence: "stale sequence (a newer or equal one is held)"
            case .badSignature: "bad signature"
            case .expired: "expired"
            case .expiryTooFar: "expiry too far ahead"
            case .tooLarge: "value too large"
            case .keyFull: "key full"
            case .publisherFull: "publisher full"
            case .storeFull: "store full"
            case .malformed: "malformed"
            }
        }
    }

    /// A storing node's records, validated on the way in and bounded per key, per publisher and
    /// in total, so that no publisher can fill a node.
    public struct RecordStore: Sendable {
        /// The tunables (limits and lifetimes).
        public let settings: Settings
        private var byKey: [PeerID: [PublicKey: Record]] = [:]
        private var perPublisher: [PublicKey: Int] = [:]
        /// Records held.
        public private(set) var count = 0

        /// An empty store.
        public init(settings: Settings) { self.settings = settings }

        /// Validates and stores `record`, answering as a STORE would.
        public mutating func store(_ record: Record, now: UInt64) -> StoreStatus {
            if let problem = record.problem(now: now, settings: settings) { return problem }
            if let held = byKey[record.key]?[record.publisher] {
                if held.encoded == record.encoded { return .unchanged }
                guard record.sequence > held.sequence else { return .staleSequence }
                byKey[record.key]![record.publisher] = record
                return .stored
            }
            if let n = byKey[record.key]?.count, n >= settings.maxRecordsPerKey { return .keyFull }
            if perPublisher[record.publisher, default: 0] >= settings.maxRecordsPerPublisher { return .publisherFull }
            if count >= settings.maxRecords { return .storeFull }
            byKey[record.key, default: [:]][record.publisher] = record
            perPublisher[record.publisher, default: 0] += 1
            count += 1
            return .stored
        }

        /// The unexpired records under `key`, in publisher order.
        public func records(for key: PeerID, now: UInt64) -> [Record] {
            guard let held = byKey[key] else { return [] }
            return held.values.filter { $0.expiresAt > now }.sorted(by: Record.publisherOrder)
        }

        /// Every key with records, in key order (deterministic iteration).
        public var keys: [PeerID] { byKey.keys.sorted() }

        /// Drops expired records.
        public mutating func purge(now: UInt64) {
            for key in byKey.keys.sorted() {
                for (publisher, record) in byKey[key]! where record.expiresAt <= now {
                    byKey[key]![publisher] = nil
                    perPublisher[publisher]! -= 1
                    if perPublisher[publisher] == 0 { perPublisher[publisher] = nil }
                    count -= 1
                }
                if byKey[key]!.isEmpty { byKey[key] = nil }
            }
        }
    }
}

extension Kademlia {
    /// Domain separation for keys derived from names.
    public static let keyContext = Array("gpumesh/dht-key/v1:".utf8)

    /// The DHT key for a human-readable name (`model/rtx-4090`, `hello`):
    /// BLAKE2b-256 of `"gpumesh/dht-key/v1:"` followed by the name's UTF-8 bytes.
    public static func key(named name: String) -> PeerID {
        PeerID(digest: Blake2b.hash(keyContext + Array(name.utf8), outputLength: 32))!  // 32 bytes by construction
    }
}
