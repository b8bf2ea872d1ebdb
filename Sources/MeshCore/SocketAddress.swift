#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as a plain value.
public enum IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// An IPv4 address; the four bytes in network order.
    case v4(UInt8, UInt8, UInt8, UInt8)
    /// An IPv6 address; the sixteen bytes in network order.
    case v6([UInt8])

    /// The IPv4 loopback address 127.0.0.1.
    public static let loopbackV4 = IPAddress.v4(127, 0, 0, 1)
    /// The IPv6 loopback address ::1.
    public static let loopbackV6 = IPAddress.v6([UInt8](repeating: 0, count: 15) + [1])

    /// Parses dotted-quad IPv4 or RFC 4291 IPv6 text (no brackets, no zone).
    public init?(_ text: some StringProtocol) {
        let s = String(text)
        if s.contains(":") {
            var raw = in6_addr()
            guard inet_pton(AF_INET6, s, &raw) == 1 else { return nil }
            self = .v6(withUnsafeBytes(of: &raw) { Array($0) })
        } else {
            var raw = in_addr()
            guard inet_pton(AF_INET, s, &raw) == 1 else { return nil }
            let b = withUnsafeBytes(of: &raw) { Array($0) }
            self = .v4(b[0], b[1], b[2], b[3])
        }
    }

    /// The address bytes in network order (4 or 16).
    public var bytes: [UInt8] {
        switch self {
        case .v4(let a, let b, let c, let d): return [a, b, c, d]
        case .v6(let bytes): return bytes
        }
    }

    /// True for 127.0.0.0/8 and ::1.
    public var isLoopback: Bool {
        switch self {
        case .v4(let a, _, _, _): return a == 127
        case .v6(let b): return b == IPAddress.loopbackV6.bytes
        }
    }

    /// True for 0.0.0.0 and ::.
    public var isUnspecified: Bool { bytes.allSatisfy { $0 == 0 } }

    /// Canonical text (RFC 5952 for IPv6).
    public var description: String {
        switch self {
        case .v4(let a, let b, let c, let d): return "\(a).\(b).\(c).\(d)"
        case .v6(let bytes):
            var raw = in6_addr()
            withUnsafeMutableBytes(of: &raw) { $0.copyBytes(from: bytes) }
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            inet_ntop(AF_INET6, &raw, &buf, socklen_t(buf.count))
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }
}

/// An IP address and port: `1.2.3.4:5` or `[::1]:5`.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The IP address.
    public var ip: IPAddress
    /// The port (0 means "any" when binding).
    public var port: UInt16

    /// Makes an address from its parts.
    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Why text is not a socket address.
    public enum ParseError: Error, Equatable, CustomStringConvertible, Sendable {
        /// No `:port` at the end.
        case missingPort(String)
        /// An IPv6 address must be written in brackets, `[::1]:7400`.
        case ipv6NeedsBrackets(String)
        /// The host part is not an IPv4 or IPv6 literal (host names are not resolved).
        case badHost(String)
        /// The port is not a number from 0 to 65535.
        case badPort(String)

        /// A message for people.
        public var description: String {
            switch self {
            case .missingPort(let s): return "'\(s)' has no port; write HOST:PORT, e.g. 127.0.0.1:7400"
            case .ipv6NeedsBrackets(let s): return "'\(s)': write IPv6 addresses in brackets, e.g. [::1]:7400"
            case .badHost(let s): return "'\(s)' is not an IPv4 or IPv6 address (host names are not resolved)"
            case .badPort(let s): return "'\(s)' is not a port number from 0 to 65535"
            }
        }
    }

    /// Parses `1.2.3.4:5` or `[::1]:5`.
    public init(parsing text: some StringProtocol) throws(ParseError) {
        let s = String(text)
        let hostPart: Substring
        let portPart: Substring
        if s.hasPrefix("[") {
            guard let close = s.firstIndex(of: "]") else { throw .badHost(s) }
            hostPart = s[s.index(after: s.startIndex)..<close]
            let rest = s[s.index(after: close)...]
            guard rest.hasPrefix(":") else { throw .missingPort(s) }
            portPart = rest.dropFirst()
        } else {
            guard let colon = s.lastIndex(of: ":") else { throw .missingPort(s) }
            hostPart = s[..<colon]
            if hostPart.contains(":") { throw .ipv6NeedsBrackets(s) }
            portPart = s[s.index(after: colon)...]
        }
        guard !portPart.isEmpty, portPart.utf8.count <= 5, portPart.utf8.allSatisfy({ (48...57).contains($0) }),
              let port = UInt16(portPart) else { throw .badPort(String(portPart)) }
        guard let ip = IPAddress(hostPart) else { throw .badHost(String(hostPart)) }
        if s.hasPrefix("["), case .v4 = ip { throw .badHost(String(hostPart)) }
        self.init(ip: ip, port: port)
    }

    /// The address to advertise for a socket bound here: a wildcard bind (0.0.0.0 or ::) becomes
    /// the loopback address of its family, the only one sure to reach it; others stay as they are.
    public var advertisable: SocketAddress {
        guard ip.isUnspecified else { return self }
        if case .v6 = ip { return SocketAddress(ip: .loopbackV6, port: port) }
        return SocketAddress(ip: .loopbackV4, port: port)
    }

    /// `1.2.3.4:5` or `[::1]:5`.
    public var description: String {
        switch ip {
        case .v4: return "\(ip):\(port)"
        case .v6: return "[\(ip)]:\(port)"
        }
    }
}
