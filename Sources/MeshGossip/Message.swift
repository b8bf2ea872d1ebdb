import MeshCore
import MeshCrypto

/// Gossip: signed, validated, rate-limited dissemination with lazy repair, as pure state.
public enum Gossip {
    /// What a message is about. Applications subscribe by topic.
    public enum Topic: UInt8, Sendable, CaseIterable, Codable, CustomStringConvertible {
        /// Co-signed job receipts.
        case receipt = 1
        /// Signed statements about peers ("failed verification", "did not show").
        case report = 2
        /// A capability record changed.
        case capability = 3
        /// Signed liveness with a sequence.
        case heartbeat = 4
        /// Free text for tests and research (`gpumesh debug publish`).
        case debug = 5

        /// The topic's name.
        public var description: String {
            switch self {
            case .receipt: "receipt"
            case .report: "report"
            case .capability: "capability"
            case .heartbeat: "heartbeat"
            case .debug: "debug"
            }
        }

        /// The topic named `name`, if any.
        public init?(name: String) {
            guard let t = Self.allCases.first(where: { $0.description == name }) else { return nil }
            self = t
        }
    }

    /// Signature domain of gossip messages.
    public static let domain = "gpumesh/gossip/v1"

    /// A gossip message: a `SignedEnvelope` whose body is `topic (1) | payload`. Its ID is the
    /// BLAKE2b-256 of the envelope's exact bytes, so any change makes another message.
    public struct Message: Sendable, Equatable {
        /// The signed bytes.
        public let envelope: SignedEnvelope
        /// The topic.
        public let topic: Topic
        /// The application's bytes.
        public let payload: [UInt8]
        /// BLAKE2b-256 of the envelope bytes.
        public let id: MessageID

        /// Who signed it.
        public var origin: PublicKey { envelope.signer }

        /// Signs a message.
        public static func sign(topic: Topic, payload: [UInt8], sequence: UInt64, expiresAt: UInt64, by signer: SigningKey) -> Message {
            let envelope = SignedEnvelope.sign(domain: domain, body: [topic.rawValue] + payload, sequence: sequence, expiresAt: expiresAt, by: signer)
            return Message(envelope: envelope, topic: topic, payload: payload)
        }

        private init(envelope: SignedEnvelope, topic: Topic, payload: [UInt8]) {
            self.envelope = envelope
            self.topic = topic
            self.payload = payload
            id = MessageID(Blake2b.hash(envelope.encoded, outputLength: 32))
        }

        /// Parses untrusted bytes (structure and topic only); nil if malformed or of an unknown topic.
        public init?(decoding bytes: [UInt8]) {
            guard let envelope = SignedEnvelope(decoding: bytes), let first = envelope.body.first, let topic = Topic(rawValue: first) else {
                return nil
            }
            self.init(envelope: envelope, topic: topic, payload: Array(envelope.body.dropFirst()))
        }
    }

    /// A message ID (32 bytes).
    public struct MessageID: Sendable, Hashable, Comparable, CustomStringConvertible {
        /// The bytes.
        public let bytes: [UInt8]
        /// An ID from 32 bytes.
        public init(_ bytes: [UInt8]) { self.bytes = bytes }
        /// Byte order.
        public static func < (a: MessageID, b: MessageID) -> Bool { a.bytes.lexicographicallyPrecedes(b.bytes) }
        /// The first 8 bytes in hex.
        public var description: String { Hex.encode(Array(bytes.prefix(8))) }
    }

    /// Gossip messages inside sealed datagram bodies (types 24-26).
    public enum Wire: Sendable, Equatable {
        /// A message, with the hops it has travelled.
        case push(hops: UInt8, message: [UInt8])
        /// IDs the sender has (none: a keepalive that tells the receiver the sender gossips
        /// with it, so a node no sample has picked still hears digests).
        case ihave([MessageID])
        /// IDs the sender asks for.
        case iwant([MessageID])
        /// The sender has enough inbound peers: gossip with someone else for a while.
        case prune

        /// Datagram body types.
        public static let pushType: UInt8 = 24, ihaveType: UInt8 = 25, iwantType: UInt8 = 26, pruneType: UInt8 = 27
        /// The largest message pushed in a datagram; larger ones go over secure channels.
        public static let maxDatagramMessageBytes = 1100
        /// Most IDs in one IHAVE or IWANT (fits one datagram).
        public static let maxIDs = 32
        /// IWANTs are padded with zeros to at least this many bytes, so that a node can answer one
        /// from an address it has not verified with at most three times as many bytes (the
        /// bound the DHT keeps too): a message in a datagram is at most 1,100 bytes.
        public static let paddedIWantBytes = 380

        /// True for a gossip body type.
        public static func isGossip(_ type: UInt8) -> Bool { (pushType...pruneType).contains(type) }

        /// The body bytes.
        public func encode() -> [UInt8] {
            switch self {
            case .push(let hops, let message): return [Self.pushType, hops] + message
            case .ihave(let ids): return [Self.ihaveType, UInt8(min(ids.count, Self.maxIDs))] + ids.prefix(Self.maxIDs).flatMap(\.bytes)
            case .iwant(let ids):
                let body = [Self.iwantType, UInt8(min(ids.count, Self.maxIDs))] + ids.prefix(Self.maxIDs).flatMap(\.bytes)
                return body + [UInt8](repeating: 0, count: max(0, Self.paddedIWantBytes - body.count))
            case .prune: return [Self.pruneType, 0]
            }
        }

        /// Parses a body; nil if malformed.
        public init?(decoding bytes: [UInt8]) {
            guard bytes.count >= 2 else { return nil }
            switch bytes[0] {
            case Self.pushType:
                self = .push(hops: bytes[1], message: Array(bytes[2...]))
            case Self.pruneType:
                guard bytes == [Self.pruneType, 0] else { return nil }
                self = .prune
            case Self.ihaveType, Self.iwantType:
                let n = Int(bytes[1])
                let isWant = bytes[0] == Self.iwantType
                guard n >= (isWant ? 1 : 0), n <= Self.maxIDs, bytes.count >= 2 + 32 * n else { return nil }
                // Only an IWANT carries padding, and padding is zeros.
                guard bytes.count == 2 + 32 * n || (isWant && bytes[(2 + 32 * n)...].allSatisfy { $0 == 0 }) else { return nil }
                let ids = (0..<n).map { MessageID(Array(bytes[(2 + 32 * $0)..<(2 + 32 * ($0 + 1))])) }
                self = bytes[0] == Self.ihaveType ? .ihave(ids) : .iwant(ids)
            default:
                return nil
            }
        }
    }
}
