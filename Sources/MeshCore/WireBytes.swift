import MeshCrypto

/// Appends big-endian fields to a byte buffer (the encoder side of every binary wire format).
public struct WireWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8]

    /// An empty writer with room for `capacity` bytes.
    public init(capacity: Int = 64) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Appends one byte.
    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    /// Appends a big-endian 16-bit integer.
    public mutating func u16(_ v: UInt16) { bytes.append(UInt8(v >> 8)); bytes.append(UInt8(truncatingIfNeeded: v)) }
    /// Appends a big-endian 32-bit integer.
    public mutating func u32(_ v: UInt32) {
        for shift in stride(from: 24, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt32(shift))) }
    }
    /// Appends a one-byte length, then the text's UTF-8 bytes, cut to 255 bytes at a character boundary.
    public mutating func string8(_ text: String) {
        var utf8 = Array(text.utf8)
        if utf8.count > 255 {
            utf8 = Array(utf8.prefix(255))
            while let last = utf8.last, last & 0xC0 == 0x80 { utf8.removeLast() }  // drop a cut continuation
            if let last = utf8.last, last >= 0xC0 { utf8.removeLast() }          // and its lead byte
        }
        u8(UInt8(utf8.count))
        bytes += utf8
    }
    /// Appends a big-endian 64-bit integer.
    public mutating func u64(_ v: UInt64) {
        for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: v >> UInt64(shift))) }
    }
    /// Appends raw bytes.
    public mutating func raw(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }
    /// Appends a 16-bit length, then the bytes (the caller keeps them under 65,536).
    public mutating func blob16(_ b: [UInt8]) {
        precondition(b.count <= Int(UInt16.max))
        u16(UInt16(b.count))
        bytes += b
    }
    /// Bytes written.
    public var count: Int { bytes.count }
}

/// Reads big-endian fields from untrusted bytes. Every read is bounds-checked and returns nil
/// past the end, so a decoder written with it cannot trap on short or hostile input.
public struct WireReader: Sendable {
    private let bytes: [UInt8]
    /// The offset of the next unread byte.
    public private(set) var offset: Int

    /// Reads `bytes` from `offset`.
    public init(_ bytes: [UInt8], offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    /// Bytes left to read.
    public var remaining: Int { bytes.count - offset }
    /// True when everything has been read.
    public var isAtEnd: Bool { offset == bytes.count }

    /// One byte.
    public mutating func u8() -> UInt8? {
        guard remaining >= 1 else { return nil }
        defer { offset += 1 }
        return bytes[offset]
    }
    /// A big-endian 16-bit integer.
    public mutating func u16() -> UInt16? {
        guard remaining >= 2 else { return nil }
        defer { offset += 2 }
        return UInt16(bytes[offset]) << 8 | UInt16(bytes[offset + 1])
    }
    /// A big-endian 32-bit integer.
    public mutating func u32() -> UInt32? {
        guard let b = raw(4) else { return nil }
        return b.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// Reads a one-byte length and that many bytes of valid UTF-8; nil if short or not UTF-8.
    public mutating func string8() -> String? {
        guard let n = u8(), let b = raw(Int(n)) else { return nil }
        return String(validating: b, as: UTF8.self)
    }

    /// A big-endian 64-bit integer.
    public mutating func u64() -> UInt64? {
        guard remaining >= 8 else { return nil }
        var v: UInt64 = 0
        for i in offset..<offset + 8 { v = v << 8 | UInt64(bytes[i]) }
        offset += 8
        return v
    }
    /// Exactly `count` bytes.
    public mutating func raw(_ count: Int) -> [UInt8]? {
        guard count >= 0, remaining >= count else { return nil }
        defer { offset += count }
        return Array(bytes[offset..<offset + count])
    }
    /// Exactly `count` bytes, sharing the input's storage (no copy: for large payloads).
    public mutating func slice(_ count: Int) -> ArraySlice<UInt8>? {
        guard count >= 0, remaining >= count else { return nil }
        defer { offset += count }
        return bytes[offset..<offset + count]
    }
    /// A 16-bit length, then that many bytes, refused above `max`.
    public mutating func blob16(max: Int) -> [UInt8]? {
        let start = offset
        guard let n = u16(), Int(n) <= max, let b = raw(Int(n)) else { offset = start; return nil }
        return b
    }
    /// A peer ID or other 256-bit key.
    public mutating func peerID() -> PeerID? {
        guard let b = raw(PeerID.byteCount) else { return nil }
        return PeerID(digest: b)
    }
}

extension Contact {
    /// The compact form used inside DHT messages: public key, then the UDP endpoint (family 4 or
    /// 6, address, port), then the TCP port on the same address (0 for none).
    /// IPv4: 41 bytes; IPv6: 53 bytes. Nil if the contact has no UDP address.
    public func encodeCompact(into w: inout WireWriter) -> Bool {
        guard let udp = address(for: .udp) else { return false }
        w.raw(publicKey.bytes)
        Self.encodeEndpoint(udp, tcpPort: address(for: .tcp).flatMap { $0.ip == udp.ip ? $0.port : nil } ?? 0, into: &w)
        return true
    }

    /// Writes an endpoint: family, address, UDP port, TCP port.
    static func encodeEndpoint(_ udp: SocketAddress, tcpPort: UInt16, into w: inout WireWriter) {
        switch udp.ip {
        case .v4: w.u8(4)
        case .v6: w.u8(6)
        }
        w.raw(udp.ip.bytes)
        w.u16(udp.port)
        w.u16(tcpPort)
    }

    /// The compact size of this contact (0 if it has no UDP address).
    public var compactSize: Int {
        guard let udp = address(for: .udp) else { return 0 }
        if case .v4 = udp.ip { return 32 + 1 + 4 + 4 }
        return 32 + 1 + 16 + 4
    }

    /// Reads a compact contact; nil if malformed (bad family, port 0, unspecified address, bad key).
    public init?(compact r: inout WireReader) {
        guard let key = r.raw(PublicKey.byteCount), let pk = try? PublicKey(bytes: key) else { return nil }
        guard let c = Self.decodeEndpoint(&r, publicKey: pk) else { return nil }
        self = c
    }

    /// Builds a contact from a UDP address and an optional TCP port on the same address.
    public static func fromEndpoint(publicKey: PublicKey, udp: SocketAddress, tcpPort: UInt16) -> Contact? {
        var addresses = [TransportAddress(.udp, udp)]
        if tcpPort != 0 { addresses.append(TransportAddress(.tcp, SocketAddress(ip: udp.ip, port: tcpPort))) }
        return try? Contact(publicKey: publicKey, addresses: addresses)
    }

    static func decodeEndpoint(_ r: inout WireReader, publicKey: PublicKey) -> Contact? {
        let ip: IPAddress
        switch r.u8() {
        case 4:
            guard let b = r.raw(4) else { return nil }
            ip = .v4(b[0], b[1], b[2], b[3])
        case 6:
            guard let b = r.raw(16) else { return nil }
            ip = .v6(b)
        default:
            return nil
        }
        guard let port = r.u16(), let tcpPort = r.u16() else { return nil }
        return fromEndpoint(publicKey: publicKey, udp: SocketAddress(ip: ip, port: port), tcpPort: tcpPort)
    }
}
