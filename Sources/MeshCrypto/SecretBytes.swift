import CSodium

/// Secret key material in memory that is wiped (`sodium_memzero`) when released.
///
/// A reference type so the bytes are never silently copied: there is exactly one buffer to wipe.
/// Its contents are written only while it is being built (`withUnsafeMutableBytes`), so sharing
/// the finished value across threads is safe.
public final class SecretBytes: @unchecked Sendable, ContiguousBytes {
    private let storage: UnsafeMutableRawBufferPointer

    /// The number of bytes held.
    public let count: Int

    /// Allocates `count` zeroed bytes.
    public init(count: Int) {
        precondition(count >= 0)
        self.count = count
        storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        storage.initializeMemory(as: UInt8.self, repeating: 0)
    }

    /// Copies `bytes` into a new secret buffer. The caller should wipe its own copy.
    public convenience init(copying bytes: some ContiguousBytes) {
        let n = bytes.withUnsafeBytes { $0.count }
        self.init(count: n)
        bytes.withUnsafeBytes { src in
            if n > 0 { storage.baseAddress!.copyMemory(from: src.baseAddress!, byteCount: n) }
        }
    }

    deinit {
        sodium_memzero(storage.baseAddress!, storage.count)
        storage.deallocate()
    }

    /// Calls `body` with the secret bytes.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage.baseAddress, count: count))
    }

    /// Calls `body` with the secret bytes, writable (only while building the secret).
    public func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeMutableRawBufferPointer(start: storage.baseAddress, count: count))
    }

    /// Overwrites the bytes with zeros now, before release.
    public func wipe() {
        sodium_memzero(storage.baseAddress!, storage.count)
    }
}

/// Wipes a plain byte array in place (for transient copies of secrets).
public func wipe(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { if let base = $0.baseAddress { sodium_memzero(base, $0.count) } }
}
