import CLibUV
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

extension SocketAddress {
    /// Calls `body` with this address as a C `sockaddr`.
    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>) throws -> R) rethrows -> R {
        switch ip {
        case .v4(let a, let b, let c, let d):
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: [a, b, c, d]) }
            return try withUnsafePointer(to: &sin) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
        case .v6(let bytes):
            var sin6 = sockaddr_in6()
            sin6.sin6_family = sa_family_t(AF_INET6)
            sin6.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: bytes) }
            return try withUnsafePointer(to: &sin6) { try $0.withMemoryRebound(to: sockaddr.self, capacity: 1, body) }
        }
    }

    /// Reads a C `sockaddr` (IPv4 or IPv6); nil for other families.
    init?(_ sa: UnsafePointer<sockaddr>) {
        switch Int32(sa.pointee.sa_family) {
        case AF_INET:
            let sin = UnsafeRawPointer(sa).loadUnaligned(as: sockaddr_in.self)
            let b = withUnsafeBytes(of: sin.sin_addr) { Array($0) }
            self.init(ip: .v4(b[0], b[1], b[2], b[3]), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = UnsafeRawPointer(sa).loadUnaligned(as: sockaddr_in6.self)
            self.init(ip: .v6(withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }), port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    /// Reads the local address of a socket through a libuv `getsockname`-style call.
    static func fromGetsockname(_ call: String, _ get: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<Int32>) -> Int32) throws(UVError) -> SocketAddress {
        var storage = sockaddr_storage()
        var length = Int32(MemoryLayout<sockaddr_storage>.size)
        let status = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { get($0, &length) }
        }
        try uvCheck(status, call)
        let parsed = withUnsafePointer(to: &storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { SocketAddress($0) } }
        guard let parsed else { throw UVError(code: UVError.invalidArgument, call: call) }
        return parsed
    }
}
