import CSodium

/// BLAKE2b hashing (libsodium's `crypto_generichash`).
public enum Blake2b {
    /// Hashes `data` to `outputLength` bytes (16...64), optionally keyed (key of 16...64 bytes).
    public static func hash(_ data: some ContiguousBytes, outputLength: Int = 32, key: (some ContiguousBytes)? = [UInt8]?.none) -> [UInt8] {
        Sodium.ensureInitialised()
        precondition((16...64).contains(outputLength), "BLAKE2b output length must be 16...64")
        var out = [UInt8](repeating: 0, count: outputLength)
        data.withUnsafeBytes { d in
            out.withUnsafeMutableBytes { o in
                if let key {
                    key.withUnsafeBytes { k in
                        _ = crypto_generichash(o.baseAddress!.assumingMemoryBound(to: UInt8.self), outputLength,
                                               d.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(d.count),
                                               k.baseAddress?.assumingMemoryBound(to: UInt8.self), k.count)
                    }
                } else {
                    _ = crypto_generichash(o.baseAddress!.assumingMemoryBound(to: UInt8.self), outputLength,
                                           d.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(d.count), nil, 0)
                }
            }
        }
        return out
    }

    /// An incremental BLAKE2b hasher for data that arrives in pieces. Finalise it once.
    public final class Hasher {
        private let state: UnsafeMutableRawPointer
        private let outputLength: Int
        private var finished = false

        /// Starts a hash with the given output length (16...64 bytes), keyed if `key` is given (16...64 bytes).
        public init(outputLength: Int = 32, key: SecretBytes? = nil) {
            Sodium.ensureInitialised()
            precondition((16...64).contains(outputLength), "BLAKE2b output length must be 16...64")
            self.outputLength = outputLength
            state = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
            if let key {
                key.withUnsafeBytes { k in
                    _ = crypto_generichash_init(OpaquePointer(state), k.baseAddress?.assumingMemoryBound(to: UInt8.self), k.count, outputLength)
                }
            } else {
                crypto_generichash_init(OpaquePointer(state), nil, 0, outputLength)
            }
        }

        private init(copying other: Hasher) {
            outputLength = other.outputLength
            finished = other.finished
            state = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
            state.copyMemory(from: other.state, byteCount: crypto_generichash_statebytes())
        }

        /// An independent hasher in the same state (for value types that hold one copy-on-write).
        public func copy() -> Hasher { Hasher(copying: self) }

        /// Feeds more bytes.
        public func update(_ data: some ContiguousBytes) {
            precondition(!finished, "Blake2b.Hasher used after finalize()")
            data.withUnsafeBytes { d in
                _ = crypto_generichash_update(OpaquePointer(state),
                                              d.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(d.count))
            }
        }

        /// Finishes and returns the digest; the hasher cannot be used afterwards.
        public func finalize() -> [UInt8] {
            precondition(!finished, "Blake2b.Hasher.finalize() called twice")
            finished = true
            var out = [UInt8](repeating: 0, count: outputLength)
            out.withUnsafeMutableBytes { o in
                _ = crypto_generichash_final(OpaquePointer(state),
                                             o.baseAddress!.assumingMemoryBound(to: UInt8.self), outputLength)
            }
            return out
        }

        deinit {
            sodium_memzero(state, crypto_generichash_statebytes())
            state.deallocate()
        }
    }
}

/// The content hash of job files, built from fixed-size chunks so that every byte is hashed once
/// on its way through a transfer: each 256 KiB chunk (the last may be shorter) has a BLAKE2b-128
/// chunk hash, and the file hash is BLAKE2b-256 over `"gpumesh/file/v1" | size (8, big-endian) |
/// chunk hashes in order`.
public enum FileHash {
    /// Bytes per chunk.
    public static let chunkBytes = 256 << 10
    /// Bytes of a chunk hash.
    public static let chunkHashBytes = 16
    static let context = Array("gpumesh/file/v1".utf8)

    /// The hash of one chunk.
    public static func chunk(_ data: some ContiguousBytes) -> [UInt8] { Blake2b.hash(data, outputLength: chunkHashBytes) }

    /// The file hash from the file's size and its chunk hashes.
    public static func file(size: UInt64, chunkHashes: [[UInt8]]) -> [UInt8] {
        var b = Builder(size: size)
        for h in chunkHashes { b.add(h) }
        return b.finalize()
    }

    /// Builds a file hash chunk by chunk (copy-on-write, so copies of a holder stay independent).
    public struct Builder {
        private var hasher: Blake2b.Hasher

        /// A builder for a file of `size` bytes.
        public init(size: UInt64) {
            hasher = Blake2b.Hasher(outputLength: 32)
            hasher.update(FileHash.context)
            hasher.update((0..<8).map { UInt8(truncatingIfNeeded: size >> (56 - 8 * $0)) })
        }

        /// Adds the next chunk's hash.
        public mutating func add(_ chunkHash: [UInt8]) {
            if !isKnownUniquelyReferenced(&hasher) { hasher = hasher.copy() }
            hasher.update(chunkHash)
        }

        /// The file hash (the builder is spent).
        public func finalize() -> [UInt8] { hasher.copy().finalize() }
    }
}
