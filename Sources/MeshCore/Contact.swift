import MeshCrypto

/// Which transport an advertised address is for.
public enum Transport: String, Hashable, Sendable, CaseIterable {
    /// Sealed datagrams (DHT, gossip, probes).
    case udp
    /// Stream channels (jobs, large payloads).
    case tcp
}

/// One advertised endpoint of a peer.
public struct TransportAddress: Hashable, Sendable, CustomStringConvertible {
    /// The transport.
    public var transport: Transport
    /// Where to reach it.
    public var address: SocketAddress

    /// Makes an endpoint.
    public init(_ transport: Transport, _ address: SocketAddress) {
        self.transport = transport
        self.address = address
    }

    /// `udp:1.2.3.4:5` or `tcp:[::1]:5`.
    public var description: String { "\(transport.rawValue):\(address)" }
}

/// How to reach a peer: its public key and one or more addresses, as a single pasteable line.
///
/// Format: `gpm1:<64 hex digits of the Ed25519 public key>@<endpoint>[,<endpoint>...]` where an
/// endpoint is `udp:HOST:PORT` or `tcp:HOST:PORT`, HOST an IPv4 literal or a bracketed IPv6 literal.
/// Example: `gpm1:3b6a...@udp:127.0.0.1:7400,tcp:127.0.0.1:7400,udp:[::1]:7400`.
public struct Contact: Hashable, Sendable, CustomStringConvertible {
    /// The prefix naming the format and its version.
    public static let scheme = "gpm1:"
    /// The longest contact string accepted.
    public static let maxLength = 1024
    /// The most endpoints one contact may carry.
    public static let maxAddresses = 8

    /// The peer's Ed25519 public key.
    public let publicKey: PublicKey
    /// The peer's endpoints, in order of preference.
    public let addresses: [TransportAddress]
    /// The peer's ID, derived from the key.
    public let peerID: PeerID

    /// Makes a contact; throws if there are no addresses, too many, duplicates or port 0.
    public init(publicKey: PublicKey, addresses: [TransportAddress]) throws(ParseError) {
        guard !addresses.isEmpty else { throw .noAddresses }
        guard addresses.count <= Self.maxAddresses else { throw .tooManyAddresses(addresses.count) }
        for (i, a) in addresses.enumerated() {
            // At most eight addresses: a linear scan beats hashing.
            guard !addresses[..<i].contains(a) else { throw .duplicateAddress(a.description) }
            guard a.address.port != 0 else { throw .portZero(a.description) }
            guard !a.address.ip.isUnspecified else { throw .unspecifiedAddress(a.description) }
        }
        self.publicKey = publicKey
        self.addresses = addresses
        self.peerID = PeerID(publicKey: publicKey)
    }

    /// The first address for `transport`, if any.
    public func address(for transport: Transport) -> SocketAddress? {
        addresses.first { $0.transport == transport }?.address
    }

    /// Why a contact string was refused. Each case names the exact problem.
    public enum ParseError: Error, Equatable, CustomStringConvertible, Sendable {
        /// Nothing but white space.
        case empty
        /// Longer than `Contact.maxLength` characters.
        case tooLong(Int)
        /// Does not start with `gpm1:`.
        case missingScheme
        /// No `@` between the key and the addresses.
        case missingSeparator
        /// The key is not 64 hex digits long.
        case badKeyLength(Int)
        /// A character of the key is not a hex digit (offset within the key).
        case badKeyCharacter(offset: Int)
        /// No endpoint after the `@`.
        case noAddresses
        /// More than `Contact.maxAddresses` endpoints.
        case tooManyAddresses(Int)
        /// An endpoint does not start with `udp:` or `tcp:`.
        case unknownTransport(String)
        /// An endpoint's address did not parse.
        case badAddress(String, SocketAddress.ParseError)
        /// The same endpoint appears twice.
        case duplicateAddress(String)
        /// An endpoint has port 0, which nobody can send to.
        case portZero(String)
        /// An endpoint is 0.0.0.0 or ::, which nobody can send to.
        case unspecifiedAddress(String)

        /// A message for people.
        public var description: String {
            switch self {
            case .empty: return "contact is empty"
            case .tooLong(let n): return "contact is \(n) characters long; at most \(Contact.maxLength) are allowed"
            case .missingScheme: return "contact must start with '\(Contact.scheme)'"
            case .missingSeparator: return "contact has no '@' between the public key and the addresses"
            case .badKeyLength(let n): return "public key must be 64 hex digits, got \(n)"
            case .badKeyCharacter(let o): return "public key has a non-hex character at offset \(o)"
            case .noAddresses: return "contact has no address after '@'"
            case .tooManyAddresses(let n): return "contact has \(n) addresses; at most \(Contact.maxAddresses) are allowed"
            case .unknownTransport(let s): return "address '\(s)' must start with 'udp:' or 'tcp:'"
            case .badAddress(let s, let e): return "address '\(s)': \(e)"
            case .duplicateAddress(let s): return "address '\(s)' appears twice"
            case .portZero(let s): return "address '\(s)' has port 0"
            case .unspecifiedAddress(let s): return "address '\(s)' is unspecified (0.0.0.0 or ::); advertise a reachable address"
            }
        }
    }

    /// Parses a contact string; surrounding white space is ignored.
    public init(parsing text: some StringProtocol) throws(ParseError) {
        let s = text.trimmingWhitespace()
        guard !s.isEmpty else { throw .empty }
        guard s.utf8.count <= Self.maxLength else { throw .tooLong(s.utf8.count) }
        guard s.hasPrefix(Self.scheme) else { throw .missingScheme }
        let body = s.dropFirst(Self.scheme.count)
        guard let at = body.firstIndex(of: "@") else { throw .missingSeparator }
        let keyText = body[..<at]
        if let bad = keyText.utf8.firstIndex(where: { !$0.isHexDigit }) {
            throw .badKeyCharacter(offset: keyText.utf8.distance(from: keyText.utf8.startIndex, to: bad))
        }
        guard keyText.utf8.count == 64 else { throw .badKeyLength(keyText.utf8.count) }
        let key = try! PublicKey(bytes: Hex.decode(keyText)!)  // 64 hex digits are 32 bytes
        let list = body[body.index(after: at)...]
        guard !list.isEmpty else { throw .noAddresses }
        let parts = list.split(separator: ",", omittingEmptySubsequences: false)
        guard parts.count <= Self.maxAddresses else { throw .tooManyAddresses(parts.count) }
        var addresses: [TransportAddress] = []
        for part in parts {
            guard let colon = part.firstIndex(of: ":"), let transport = Transport(rawValue: String(part[..<colon])) else {
                throw .unknownTransport(String(part))
            }
            do {
                addresses.append(TransportAddress(transport, try SocketAddress(parsing: part[part.index(after: colon)...])))
            } catch {
                throw .badAddress(String(part), error)
            }
        }
        try self.init(publicKey: key, addresses: addresses)
    }

    /// The contact string.
    public var description: String {
        Self.scheme + Hex.encode(publicKey.bytes) + "@" + addresses.map(\.description).joined(separator: ",")
    }
}

extension UInt8 {
    /// True for 0-9, a-f, A-F.
    var isHexDigit: Bool {
        (48...57).contains(self) || (97...102).contains(self) || (65...70).contains(self)
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and line breaks.
    public func trimmingWhitespace() -> Substring {
        let ws: Set<Character> = [" ", "\t", "\n", "\r"]
        let s = Substring(self)
        guard let first = s.firstIndex(where: { !ws.contains($0) }) else { return s[s.endIndex...] }
        let last = s.lastIndex(where: { !ws.contains($0) })!
        return s[first...last]
    }
}
