import CSodium

/// Authenticated encryption with libsodium's ChaCha20-Poly1305 constructions.
public struct AEAD: Sendable {
    /// Length of keys.
    public static let keyByteCount = 32
    /// Length of the authentication tag appended to every ciphertext.
    public static let tagByteCount = 16

    /// ChaCha20-Poly1305 (IETF, RFC 8439): 12-byte nonces. Noise's cipher.
    public static let chaChaPoly = AEAD(nonceByteCount: 12,
                                        encrypt: crypto_aead_chacha20poly1305_ietf_encrypt,
                                        decrypt: crypto_aead_chacha20poly1305_ietf_decrypt)
    /// XChaCha20-Poly1305 (IETF): 24-byte nonces, safe to choose at random. Sealed datagrams' cipher.
    public static let xChaChaPoly = AEAD(nonceByteCount: 24,
                                         encrypt: crypto_aead_xchacha20poly1305_ietf_encrypt,
                                         decrypt: crypto_aead_xchacha20poly1305_ietf_decrypt)

    /// Length of this construction's nonces.
    public let nonceByteCount: Int

    private typealias Encrypt = @Sendable (UnsafeMutablePointer<UInt8>, UnsafeMutablePointer<UInt64>?, UnsafePointer<UInt8>?, UInt64,
                                           UnsafePointer<UInt8>?, UInt64, UnsafePointer<UInt8>?, UnsafePointer<UInt8>, UnsafePointer<UInt8>) -> Int32
    private typealias Decrypt = @Sendable (UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt64>?, UnsafeMutablePointer<UInt8>?,
                                           UnsafePointer<UInt8>, UInt64, UnsafePointer<UInt8>?, UInt64, UnsafePointer<UInt8>, UnsafePointer<UInt8>) -> Int32
    private let encrypt: Encrypt
    private let decrypt: Decrypt

    private init(nonceByteCount: Int, encrypt: @escaping Encrypt, decrypt: @escaping Decrypt) {
        self.nonceByteCount = nonceByteCount
        self.encrypt = encrypt
        self.decrypt = decrypt
    }

    /// Encrypts `plaintext` with associated data `ad`, appending the ciphertext and tag to `out`.
    public func seal(_ plaintext: UnsafeRawBufferPointer, ad: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     key: SecretBytes, appendingTo out: inout [UInt8]) {
        precondition(nonce.count == nonceByteCount && key.count == Self.keyByteCount)
        Sodium.ensureInitialised()
        let start = out.count
        out.appendZeros(plaintext.count + Self.tagByteCount)
        var clen: UInt64 = 0
        out.withUnsafeMutableBytes { o in
            key.withUnsafeBytes { k in
                _ = encrypt((o.baseAddress! + start).assumingMemoryBound(to: UInt8.self), &clen,
                            plaintext.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(plaintext.count),
                            ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count), nil,
                            nonce.baseAddress!.assumingMemoryBound(to: UInt8.self), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
    }

    /// Encrypts `buffer[start...]` in place with associated data `ad` and appends the tag
    /// (libsodium allows the ciphertext to overwrite the plaintext).
    public func sealInPlace(_ buffer: inout [UInt8], from start: Int, ad: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer,
                            key: SecretBytes) {
        precondition(nonce.count == nonceByteCount && key.count == Self.keyByteCount && start <= buffer.count)
        Sodium.ensureInitialised()
        let plainCount = buffer.count - start
        buffer.appendZeros(Self.tagByteCount)
        var clen: UInt64 = 0
        buffer.withUnsafeMutableBytes { b in
            key.withUnsafeBytes { k in
                let p = (b.baseAddress! + start).assumingMemoryBound(to: UInt8.self)
                _ = encrypt(p, &clen, p, UInt64(plainCount), ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count), nil,
                            nonce.baseAddress!.assumingMemoryBound(to: UInt8.self), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
    }

    /// Decrypts and authenticates `buffer` (ciphertext and tag) in place (libsodium allows the
    /// plaintext to overwrite the ciphertext); returns the plaintext's length, at the buffer's start.
    public func openInPlace(_ buffer: UnsafeMutableRawBufferPointer, ad: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer,
                            key: SecretBytes) throws(CryptoError) -> Int {
        precondition(nonce.count == nonceByteCount && key.count == Self.keyByteCount)
        Sodium.ensureInitialised()
        guard buffer.count >= Self.tagByteCount else { throw CryptoError("ciphertext shorter than its tag") }
        var mlen: UInt64 = 0
        let p = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
        let status = key.withUnsafeBytes { k in
            decrypt(p, &mlen, nil, p, UInt64(buffer.count), ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count),
                    nonce.baseAddress!.assumingMemoryBound(to: UInt8.self), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
        guard status == 0 else { throw CryptoError("authentication failed") }
        return Int(mlen)
    }

    /// Decrypts and authenticates; appends the plaintext to `out`, or throws and appends nothing.
    public func open(_ ciphertext: UnsafeRawBufferPointer, ad: UnsafeRawBufferPointer, nonce: UnsafeRawBufferPointer,
                     key: SecretBytes, appendingTo out: inout [UInt8]) throws(CryptoError) {
        precondition(nonce.count == nonceByteCount && key.count == Self.keyByteCount)
        Sodium.ensureInitialised()
        guard ciphertext.count >= Self.tagByteCount else { throw CryptoError("ciphertext shorter than its tag") }
        let start = out.count
        let plainCount = ciphertext.count - Self.tagByteCount
        out.appendZeros(plainCount)
        var mlen: UInt64 = 0
        let status = out.withUnsafeMutableBytes { o in
            key.withUnsafeBytes { k in
                decrypt((o.baseAddress! + start).assumingMemoryBound(to: UInt8.self), &mlen, nil,
                        ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self), UInt64(ciphertext.count),
                        ad.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(ad.count),
                        nonce.baseAddress!.assumingMemoryBound(to: UInt8.self), k.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        if status != 0 {
            out.removeLast(plainCount)
            throw CryptoError("authentication failed")
        }
    }
}

/// A block of zeros to grow buffers from: `append(contentsOf:)` of contiguous bytes is one copy
/// even in debug builds, where appending a repeated element goes byte by byte.
private let zeroBlock = [UInt8](repeating: 0, count: 64 << 10)

extension Array where Element == UInt8 {
    /// Appends `count` zero bytes (to be overwritten in place by a C call).
    /// No `reserveCapacity` here: an exact reservation on every call would defeat the array's
    /// geometric growth and copy the whole buffer each time it grows by a frame.
    mutating func appendZeros(_ count: Int) {
        var left = count
        while left > 0 {
            let n = Swift.min(left, zeroBlock.count)
            append(contentsOf: zeroBlock[0..<n])
            left -= n
        }
    }
}
