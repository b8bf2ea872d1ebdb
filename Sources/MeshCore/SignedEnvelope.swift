import MeshCrypto

/// A signed statement that travels between peers (capability records now; receipts and reports
/// later): who signed it, a sequence number, an expiry and an application body, with an Ed25519
/// signature over the exact bytes, domain-separated per kind so that a signature made for one
/// kind of statement is never valid for another.
///
/// Wire form (big-endian): `version (1) | signer key (32) | sequence (8) | expires_at_ms (8) |
/// body length (2) | body | signature (64)`. The signature covers the kind's domain string
/// followed by every byte before the signature.
public struct SignedEnvelope: Sendable, Hashable {
    /// The envelope format version.
    public static let version: UInt8 = 1
    /// Bytes around the body.
    public static let overhead = 1 + 32 + 8 + 8 + 2 + 64
    /// The largest body (its length is 16 bits); callers check before signing.
    public static let maxBody = Int(UInt16.max)

    /// Who signed it.
    public let signer: PublicKey
    /// Higher replaces lower for the same signer and kind.
    public let sequence: UInt64
    /// When it stops being valid (Unix milliseconds).
    public let expiresAt: UInt64
    /// The application's bytes.
    public let body: [UInt8]
    /// The exact bytes, signature included.
    public let encoded: [UInt8]

    /// Signs `body` (at most `maxBody` bytes) for the kind named by `domain` (e.g. `"gpumesh/capability/v1"`).
    public static func sign(domain: String, body: [UInt8], sequence: UInt64, expiresAt: UInt64, by signer: SigningKey) -> SignedEnvelope {
        var w = WireWriter(capacity: overhead + body.count)
        w.u8(version)
        w.raw(signer.publicKey.bytes)
        w.u64(sequence)
        w.u64(expiresAt)
        w.blob16(body)
        w.raw(signer.signature(for: Array(domain.utf8) + w.bytes))
        return SignedEnvelope(signer: signer.publicKey, sequence: sequence, expiresAt: expiresAt, body: body, encoded: w.bytes)
    }

    private init(signer: PublicKey, sequence: UInt64, expiresAt: UInt64, body: [UInt8], encoded: [UInt8]) {
        self.signer = signer
        self.sequence = sequence
        self.expiresAt = expiresAt
        self.body = body
        self.encoded = encoded
    }

    /// Parses untrusted bytes (structure only; `isSignatureValid(domain:)` says whether to trust
    /// them). Nil if malformed, of another version, or followed by extra bytes.
    public init?(decoding bytes: [UInt8]) {
        var r = WireReader(bytes)
        guard r.u8() == Self.version, let pk = r.raw(32), let signer = try? PublicKey(bytes: pk),
              let sequence = r.u64(), let expiresAt = r.u64(), let body = r.blob16(max: Int(UInt16.max)),
              r.raw(64) != nil, r.isAtEnd else { return nil }
        self.init(signer: signer, sequence: sequence, expiresAt: expiresAt, body: body, encoded: bytes)
    }

    /// True if the signer signed these exact bytes for the kind named by `domain`.
    public func isSignatureValid(domain: String) -> Bool {
        signer.isValidSignature(Array(encoded.suffix(64)), for: Array(domain.utf8) + encoded.dropLast(64))
    }
}
