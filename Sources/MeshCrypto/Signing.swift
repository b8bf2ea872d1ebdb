import CSodium

/// An Ed25519 public key (32 bytes): verifies signatures made by its `SigningKey`.
public struct PublicKey: Hashable, Sendable, ContiguousBytes, CustomStringConvertible {
    /// Length of an Ed25519 public key in bytes.
    public static let byteCount = 32
    /// Length of an Ed25519 signature in bytes.
    public static let signatureByteCount = 64

    /// The raw key bytes.
    public let bytes: [UInt8]

    /// Wraps 32 raw bytes; throws if the length is wrong.
    public init(bytes: some Collection<UInt8>) throws(CryptoError) {
        guard bytes.count == Self.byteCount else {
            throw CryptoError("an Ed25519 public key is \(Self.byteCount) bytes, got \(bytes.count)")
        }
        self.bytes = Array(bytes)
    }

    /// Checks a detached signature over `message`.
    public func isValidSignature(_ signature: some ContiguousBytes, for message: some ContiguousBytes) -> Bool {
        Sodium.ensureInitialised()
        return signature.withUnsafeBytes { s in
            guard s.count == Self.signatureByteCount else { return false }
            return message.withUnsafeBytes { m in
                bytes.withUnsafeBufferPointer { k in
                    crypto_sign_verify_detached(s.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                                m.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(m.count),
                                                k.baseAddress!) == 0
                }
            }
        }
    }

    /// Calls `body` with the key bytes.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes(body)
    }

    /// Lowercase hex of the key.
    public var description: String { Hex.encode(bytes) }
}

/// An Ed25519 signing key (the peer's long-term identity). Its secret is wiped on release.
public final class SigningKey: Sendable {
    /// Length of the seed from which a key pair is derived.
    public static let seedByteCount = 32

    /// The 32-byte seed: the only secret that is stored on disk.
    public let seed: SecretBytes
    /// libsodium's 64-byte expanded secret key (seed || public key).
    let expandedSecret: SecretBytes
    /// The matching public key.
    public let publicKey: PublicKey

    /// Generates a fresh random key pair.
    public convenience init() {
        let seed = SecureRandom.secret(Self.seedByteCount)
        try! self.init(seed: seed)  // a 32-byte seed cannot fail
    }

    /// Derives the key pair from a 32-byte seed.
    public init(seed: SecretBytes) throws(CryptoError) {
        Sodium.ensureInitialised()
        guard seed.count == Self.seedByteCount else {
            throw CryptoError("an Ed25519 seed is \(Self.seedByteCount) bytes, got \(seed.count)")
        }
        let expanded = SecretBytes(count: Int(crypto_sign_secretkeybytes()))
        var pk = [UInt8](repeating: 0, count: PublicKey.byteCount)
        let status = seed.withUnsafeBytes { s in
            expanded.withUnsafeMutableBytes { e in
                crypto_sign_seed_keypair(&pk, e.baseAddress!.assumingMemoryBound(to: UInt8.self),
                                         s.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        try Sodium.check(status, "crypto_sign_seed_keypair")
        self.seed = seed
        self.expandedSecret = expanded
        self.publicKey = try PublicKey(bytes: pk)
    }

    /// Signs `message`, returning a 64-byte detached signature.
    public func signature(for message: some ContiguousBytes) -> [UInt8] {
        var sig = [UInt8](repeating: 0, count: PublicKey.signatureByteCount)
        message.withUnsafeBytes { m in
            expandedSecret.withUnsafeBytes { e in
                _ = crypto_sign_detached(&sig, nil, m.baseAddress?.assumingMemoryBound(to: UInt8.self), UInt64(m.count),
                                         e.baseAddress!.assumingMemoryBound(to: UInt8.self))
            }
        }
        return sig
    }
}

/// Lowercase hexadecimal encoding.
public enum Hex {
    private static let digits: [UInt8] = Array("0123456789abcdef".utf8)

    /// Encodes bytes as lowercase hex.
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        var out = [UInt8]()
        out.reserveCapacity(bytes.underestimatedCount * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes hex (either case); returns nil for odd length or a non-hex character.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }

    private static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
