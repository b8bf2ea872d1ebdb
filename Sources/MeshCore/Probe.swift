/// The version of GPUMesh (software, not wire).
public enum GPUMeshVersion {
    /// Semantic version of this build.
    public static let current = "0.1.0"
}

/// The reachability probe datagram (wire version 0).
///
/// 44 bytes: `"GM"` magic, version 0, kind (1 ping, 2 pong), an 8-byte nonce (big-endian), the
/// sender's 32-byte peer ID. A pong echoes the ping's nonce and is exactly as large as the ping,
/// so answering an unproven address amplifies nothing. Unauthenticated: the sender's ID is a
/// claim; sealed datagrams (wire version 1) replace it for everything that matters.
public struct ProbeMessage: Equatable, Sendable {
    /// Ping or pong.
    public enum Kind: UInt8, Sendable {
        /// A request for a pong.
        case ping = 1
        /// The answer to a ping, carrying its nonce.
        case pong = 2
    }

    /// The first two bytes of a probe.
    public static let magic: (UInt8, UInt8) = (0x47, 0x4d)
    /// The wire version of probes.
    public static let version: UInt8 = 0
    /// The exact size of a probe datagram.
    public static let size = 44

    /// Ping or pong.
    public var kind: Kind
    /// Chosen by the pinger, echoed by the ponger.
    public var nonce: UInt64
    /// The ID the sender claims.
    public var sender: PeerID

    /// Makes a probe.
    public init(kind: Kind, nonce: UInt64, sender: PeerID) {
        self.kind = kind
        self.nonce = nonce
        self.sender = sender
    }

    /// The 44 wire bytes.
    public func encoded() -> [UInt8] {
        var out: [UInt8] = [Self.magic.0, Self.magic.1, Self.version, kind.rawValue]
        out.reserveCapacity(Self.size)
        withUnsafeBytes(of: nonce.bigEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: sender.bytes)
        return out
    }

    /// Decodes untrusted bytes; nil unless they are exactly a well-formed probe.
    public init?(decoding bytes: UnsafeRawBufferPointer) {
        guard bytes.count == Self.size, bytes[0] == Self.magic.0, bytes[1] == Self.magic.1,
              bytes[2] == Self.version, let kind = Kind(rawValue: bytes[3]) else { return nil }
        var nonce: UInt64 = 0
        for i in 4..<12 { nonce = nonce << 8 | UInt64(bytes[i]) }
        guard let sender = PeerID(digest: bytes[12..<44]) else { return nil }
        self.init(kind: kind, nonce: nonce, sender: sender)
    }

    /// True if the bytes start like a probe (magic and version), whatever their length.
    public static func looksLikeProbe(_ bytes: UnsafeRawBufferPointer) -> Bool {
        bytes.count >= 3 && bytes[0] == magic.0 && bytes[1] == magic.1 && bytes[2] == version
    }
}

/// The plaintext TCP banner of wire version 0: `GPUMESH/0 <peer ID hex>\n`.
public enum TCPBanner {
    /// The banner's prefix.
    public static let prefix = "GPUMESH/0 "
    /// The banner's exact length in bytes.
    public static let size = prefix.utf8.count + 64 + 1

    /// The banner a node sends on every accepted connection.
    public static func encode(_ id: PeerID) -> [UInt8] { Array((prefix + id.hex + "\n").utf8) }

    /// Parses a banner; nil if malformed.
    public static func decode(_ bytes: [UInt8]) -> PeerID? {
        guard bytes.count == size, bytes.last == 10 else { return nil }
        let text = String(decoding: bytes.dropLast(), as: UTF8.self)
        guard text.hasPrefix(prefix) else { return nil }
        return PeerID(hex: text.dropFirst(prefix.utf8.count))
    }
}
