/// The key that makes a mesh private: 32 secret bytes every member holds. Every sealed datagram
/// and every Noise handshake mixes it in, so outsiders can neither read nor send anything.
public struct MeshKey: Sendable {
    /// Length of a mesh key.
    public static let byteCount = 32
    /// The mesh key file format: `GPUMESH-MESH-KEY-V1\n` and the 32 bytes, mode 0600.
    public static let fileFormat = SecretFile(magic: "GPUMESH-MESH-KEY-V1\n", secretByteCount: byteCount)

    /// The key bytes.
    public let secret: SecretBytes

    /// The public mesh's well-known key: BLAKE2b-256 of `gpumesh public mesh v1`. Using it
    /// keeps the same code path for everyone; it hides nothing from anyone.
    public static let publicMesh = MeshKey(secret: SecretBytes(copying: Blake2b.hash(Array("gpumesh public mesh v1".utf8))))

    /// Wraps 32 secret bytes.
    public init(secret: SecretBytes) {
        precondition(secret.count == Self.byteCount, "a mesh key is 32 bytes")
        self.secret = secret
    }

    /// A fresh random key for a new private mesh.
    public static func generate() -> MeshKey { MeshKey(secret: SecureRandom.secret(byteCount)) }

    /// Reads a mesh key file (refused if group or others can read it).
    public static func read(from path: String) throws(SecretFile.Failure) -> MeshKey {
        MeshKey(secret: try fileFormat.read(from: path))
    }

    /// Writes this key to a new file (mode 0600; never overwrites).
    public func write(to path: String) throws(SecretFile.Failure) { try Self.fileFormat.write(secret, to: path) }

    /// A short public fingerprint (first 8 bytes of BLAKE2b-256 of the key, hex) to compare meshes.
    public var fingerprint: String { Hex.encode(Blake2b.hash(secret, outputLength: 32).prefix(8)) }

    /// True for the public mesh's key.
    public var isPublicMesh: Bool { constantTimeEquals(secret, Self.publicMesh.secret) }
}
