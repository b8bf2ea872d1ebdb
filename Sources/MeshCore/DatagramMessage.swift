/// The body of a sealed datagram: a one-byte type, then the fields of that type.
///
/// Replies never exceed their request unless the requester's address is proven: an
/// `infoRequest` is padded to the size of a `cookieChallenge`, which is what an unproven
/// address gets instead of the (larger) `infoReply`.
public enum DatagramMessage: Equatable, Sendable {
    /// A reachability probe.
    case ping(nonce: UInt64)
    /// The answer to a ping.
    case pong(nonce: UInt64)
    /// Asks for the receiver's contact string.
    case infoRequest(nonce: UInt64)
    /// The receiver's contact string.
    case infoReply(nonce: UInt64, contact: String)
    /// "Prove your address first": resend the request with this cookie in the header.
    case cookieChallenge(nonce: UInt64, cookie: [UInt8])

    /// Type bytes on the wire.
    public enum Kind: UInt8, Sendable {
        /// `ping`.
        case ping = 1
        /// `pong`.
        case pong = 2
        /// `infoRequest`.
        case infoRequest = 3
        /// `infoReply`.
        case infoReply = 4
        /// `cookieChallenge`.
        case cookieChallenge = 5
    }

    /// Padding that makes an `infoRequest` as large as a `cookieChallenge`.
    static let infoRequestPadding = 16

    /// The message's kind.
    public var kind: Kind {
        switch self {
        case .ping: .ping
        case .pong: .pong
        case .infoRequest: .infoRequest
        case .infoReply: .infoReply
        case .cookieChallenge: .cookieChallenge
        }
    }

    /// The body bytes.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = [kind.rawValue]
        func put(_ n: UInt64) { withUnsafeBytes(of: n.bigEndian) { out.append(contentsOf: $0) } }
        switch self {
        case .ping(let n), .pong(let n): put(n)
        case .infoRequest(let n): put(n); out += [UInt8](repeating: 0, count: Self.infoRequestPadding)
        case .infoReply(let n, let contact): put(n); out += Array(contact.utf8)
        case .cookieChallenge(let n, let cookie): put(n); out += cookie
        }
        return out
    }

    /// Decodes an untrusted body; nil unless it is exactly a well-formed message.
    public init?(decoding body: [UInt8]) {
        guard body.count >= 9, let kind = Kind(rawValue: body[0]) else { return nil }
        var n: UInt64 = 0
        for i in 1..<9 { n = n << 8 | UInt64(body[i]) }
        let rest = body[9...]
        switch kind {
        case .ping: guard rest.isEmpty else { return nil }; self = .ping(nonce: n)
        case .pong: guard rest.isEmpty else { return nil }; self = .pong(nonce: n)
        case .infoRequest:
            guard rest.count == Self.infoRequestPadding, rest.allSatisfy({ $0 == 0 }) else { return nil }
            self = .infoRequest(nonce: n)
        case .infoReply:
            guard rest.count <= Contact.maxLength, let text = String(validating: rest, as: UTF8.self) else { return nil }
            self = .infoReply(nonce: n, contact: text)
        case .cookieChallenge:
            guard rest.count == DatagramSealer.cookieLength else { return nil }
            self = .cookieChallenge(nonce: n, cookie: Array(rest))
        }
    }
}
