import CSodium

/// An error from a libsodium call or from misuse of a MeshCrypto type.
public struct CryptoError: Error, Equatable, CustomStringConvertible, Sendable {
    /// What went wrong, in words.
    public let reason: String
    /// Makes an error with a reason.
    public init(_ reason: String) { self.reason = reason }
    /// A human-readable account of the error.
    public var description: String { reason }
}

/// The one door to libsodium: initialises the library once and checks every status code.
enum Sodium {
    /// `sodium_init()` result, run exactly once (Swift runs global initialisers lazily and atomically).
    private static let initialised: Bool = sodium_init() >= 0

    /// Ensures libsodium is initialised; traps only if the library itself cannot start (no entropy source).
    @inline(__always)
    static func ensureInitialised() {
        precondition(initialised, "libsodium failed to initialise (sodium_init() < 0)")
    }

    /// Turns a libsodium status code into a thrown `CryptoError` naming the call.
    @inline(__always)
    static func check(_ status: Int32, _ call: StaticString) throws(CryptoError) {
        if status != 0 { throw CryptoError("\(call) failed") }
    }
}

/// Cryptographically secure random bytes from libsodium.
public enum SecureRandom {
    /// Returns `count` random bytes.
    public static func bytes(_ count: Int) -> [UInt8] {
        Sodium.ensureInitialised()
        var out = [UInt8](repeating: 0, count: count)
        out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return out
    }

    /// Fills a secret buffer with random bytes.
    public static func secret(_ count: Int) -> SecretBytes {
        Sodium.ensureInitialised()
        let s = SecretBytes(count: count)
        s.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, $0.count) }
        return s
    }

    /// A uniformly random 64-bit value.
    public static func uint64() -> UInt64 {
        Sodium.ensureInitialised()
        var v: UInt64 = 0
        withUnsafeMutableBytes(of: &v) { randombytes_buf($0.baseAddress!, 8) }
        return v
    }
}

/// Compares two byte sequences in time independent of their contents (lengths are public).
public func constantTimeEquals(_ a: some ContiguousBytes, _ b: some ContiguousBytes) -> Bool {
    Sodium.ensureInitialised()
    return a.withUnsafeBytes { pa in
        b.withUnsafeBytes { pb in
            pa.count == pb.count && (pa.count == 0 || sodium_memcmp(pa.baseAddress!, pb.baseAddress!, pa.count) == 0)
        }
    }
}

/// Types that expose their bytes for reading (like Foundation's `ContiguousBytes`, without Foundation).
public protocol ContiguousBytes {
    /// Calls `body` with a pointer to the bytes.
    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R
}

extension Array: ContiguousBytes where Element == UInt8 {}
extension ArraySlice: ContiguousBytes where Element == UInt8 {}
extension UnsafeRawBufferPointer: ContiguousBytes {
    /// Calls `body` with this buffer.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R { try body(self) }
}
