import CSodium

/// An X25519 key pair for Diffie-Hellman (Noise static and ephemeral keys, datagram keys).
public final class X25519KeyPair: Sendable {
    /// Length of X25519 keys and shared secrets.
    public static let byteCount = 32

    /// The private scalar, wiped on release.
    public let secret: SecretBytes
    /// The public key.
    public let publicKey: [UInt8]

    /// Generates a fresh random key pair.
    public convenience init() {
        try! self.init(secret: SecureRandom.secret(Self.byteCount))  // 32 random bytes are a valid scalar
    }

    /// Derives the public key from a 32-byte private scalar.
    public init(secret: SecretBytes) throws(CryptoError) {
        Sodium.ensureInitialised()
        guard secret.count == Self.byteCount else { throw CryptoError("an X25519 private key is 32 bytes, got \(secret.count)") }
        var pk = [UInt8](repeating: 0, count: Self.byteCount)
        let status = secret.withUnsafeBytes { crypto_scalarmult_curve25519_base(&pk, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        try Sodium.check(status, "crypto_scalarmult_curve25519_base")
        self.secret = secret
        publicKey = pk
    }

    /// The X25519 key pair birationally equivalent to an Ed25519 identity, so one identity key
    /// serves both signatures and key agreement.
    public convenience init(converting identity: SigningKey) {
        let x = SecretBytes(count: Self.byteCount)
        identity.withExpandedSecret { ed in
            x.withUnsafeMutableBytes { _ = crypto_sign_ed25519_sk_to_curve25519($0.baseAddress!.assumingMemoryBound(to: UInt8.self), ed) }
        }
        try! self.init(secret: x)  // the conversion always yields 32 bytes
    }

    /// The shared secret with `peerPublicKey`; throws for a low-order point (all-zero result).
    public func sharedSecret(with peerPublicKey: some ContiguousBytes) throws(CryptoError) -> SecretBytes {
        let out = SecretBytes(count: Self.byteCount)
        let status: Int32 = peerPublicKey.withUnsafeBytes { p in
            guard p.count == Self.byteCount else { return -2 }
            return secret.withUnsafeBytes { s in
                out.withUnsafeMutableBytes { o in
                    crypto_scalarmult_curve25519(o.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                 s.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                 p.baseAddress!.assumingMemoryBound(to: UInt8.self))
                }
            }
        }
        if status == -2 { throw CryptoError("an X25519 public key is 32 bytes") }
        try Sodium.check(status, "crypto_scalarmult_curve25519 (low-order public key)")
        return out
    }
}

extension PublicKey {
    /// The X25519 public key equivalent to this Ed25519 key; throws for keys that are not on the curve.
    public func x25519() throws(CryptoError) -> [UInt8] {
        Sodium.ensureInitialised()
        var out = [UInt8](repeating: 0, count: X25519KeyPair.byteCount)
        let status = bytes.withUnsafeBufferPointer { crypto_sign_ed25519_pk_to_curve25519(&out, $0.baseAddress!) }
        try Sodium.check(status, "crypto_sign_ed25519_pk_to_curve25519")
        return out
    }
}

extension SigningKey {
    /// Calls `body` with libsodium's 64-byte expanded secret key (MeshCrypto only).
    func withExpandedSecret<R>(_ body: (UnsafePointer<UInt8>) throws -> R) rethrows -> R {
        try expandedSecret.withUnsafeBytes { try body($0.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
    }
}
