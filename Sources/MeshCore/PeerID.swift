import MeshCrypto

/// A peer's identifier: BLAKE2b-256 of its Ed25519 public key, held as four big-endian words
/// so that XOR distance and ordering are cheap.
public struct PeerID: Hashable, Comparable, Sendable, CustomStringConvertible {
    /// Length of a peer ID in bytes.
    public static let byteCount = 32

    /// The four 64-bit words, most significant first.
    public let words: (UInt64, UInt64, UInt64, UInt64)

    /// The ID of the peer whose public key is `key`.
    public init(publicKey key: PublicKey) {
        self.init(digest: Blake2b.hash(key.bytes, outputLength: 32))!
    }

    /// Wraps a 32-byte digest; nil if the length is wrong.
    public init?(digest bytes: some Collection<UInt8>) {
        guard bytes.count == Self.byteCount else { return nil }
        var w: [UInt64] = [0, 0, 0, 0]
        for (i, b) in bytes.enumerated() { w[i / 8] = w[i / 8] << 8 | UInt64(b) }
        words = (w[0], w[1], w[2], w[3])
    }

    /// Makes an ID from its words (most significant first).
    public init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// Parses 64 hex characters.
    public init?(hex: some StringProtocol) {
        guard hex.utf8.count == 64, let bytes = Hex.decode(hex) else { return nil }
        self.init(digest: bytes)
    }

    /// Domain separation for the ID puzzle.
    static let puzzleContext = Array("gpumesh/id-puzzle/v1".utf8)

    /// The S/Kademlia static puzzle's score: leading zero bits of BLAKE2b-256 of
    /// `"gpumesh/id-puzzle/v1"` followed by the ID. A mesh admits only IDs scoring at least its
    /// difficulty, so minting many IDs (a Sybil attack, or aiming at one key) costs 2^difficulty
    /// key generations each, while checking one costs a single hash.
    public var puzzleBits: Int {
        PeerID(digest: Blake2b.hash(Self.puzzleContext + bytes, outputLength: 32))!.leadingZeroBitCount  // 32 bytes by construction
    }

    /// True if the ID meets `difficulty`.
    public func meetsPuzzle(_ difficulty: Int) -> Bool { difficulty <= 0 || puzzleBits >= difficulty }

    /// Bit `i` counted from the least significant (0) to the most significant (255).
    public func bit(_ i: Int) -> Bool {
        precondition((0..<256).contains(i))
        let word: UInt64
        switch i / 64 {
        case 3: word = words.0
        case 2: word = words.1
        case 1: word = words.2
        default: word = words.3
        }
        return word >> UInt64(i % 64) & 1 == 1
    }

    /// The 32 bytes, big-endian.
    public var bytes: [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(32)
        for w in [words.0, words.1, words.2, words.3] {
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: w >> UInt64(shift))) }
        }
        return out
    }

    /// Lowercase hex, 64 characters.
    public var hex: String { Hex.encode(bytes) }

    /// The first 12 hex characters, for logs and tables.
    public var short: String { String(hex.prefix(12)) }

    /// The full hex form.
    public var description: String { hex }

    /// Kademlia XOR distance to another ID.
    public func distance(to other: PeerID) -> PeerID {
        PeerID(words: (words.0 ^ other.words.0, words.1 ^ other.words.1, words.2 ^ other.words.2, words.3 ^ other.words.3))
    }

    /// Number of leading zero bits (256 for the zero ID).
    public var leadingZeroBitCount: Int {
        if words.0 != 0 { return words.0.leadingZeroBitCount }
        if words.1 != 0 { return 64 + words.1.leadingZeroBitCount }
        if words.2 != 0 { return 128 + words.2.leadingZeroBitCount }
        return 192 + words.3.leadingZeroBitCount
    }

    /// Equality of all four words.
    public static func == (a: PeerID, b: PeerID) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    /// Big-endian numeric order.
    public static func < (a: PeerID, b: PeerID) -> Bool {
        if a.words.0 != b.words.0 { return a.words.0 < b.words.0 }
        if a.words.1 != b.words.1 { return a.words.1 < b.words.1 }
        if a.words.2 != b.words.2 { return a.words.2 < b.words.2 }
        return a.words.3 < b.words.3
    }

    /// Hashes all four words.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0); hasher.combine(words.1); hasher.combine(words.2); hasher.combine(words.3)
    }
}
