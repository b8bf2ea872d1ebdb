import MeshCrypto

/// Sealed datagrams (wire version 1): every UDP datagram proves its sender and is encrypted.
///
/// Layout: version (1) | flags (1) | sender Ed25519 key (32) | nonce (24: timestamp ms, 8 bytes
/// big-endian, then 16 random bytes) | cookie (16, only if flag bit 0) | body sealed with
/// XChaCha20-Poly1305, the header as associated data. The key is derived from the two peers'
/// static X25519 keys (converted from their Ed25519 keys) and the mesh key; see Docs/PROTOCOL.md.
///
/// Pure and loop-confined: the clock and randomness are injected; caches are bounded.
public final class DatagramSealer {
    /// The wire version of sealed datagrams.
    public static let version: UInt8 = 1
    /// Header length without a cookie.
    public static let headerLength = 58
    /// Cookie length.
    public static let cookieLength = 16
    /// Bytes a sealed datagram adds to its body (header without cookie, plus the tag).
    public static let overhead = headerLength + AEAD.tagByteCount
    /// Flag bit: a cookie follows the nonce.
    static let cookieFlag: UInt8 = 0x01
    /// Domain separation for datagram keys.
    static let keyContext = Array("gpumesh/datagram/v1".utf8)

    /// Tunables.
    public struct Settings: Sendable {
        /// Datagrams whose timestamp is further than this from our clock are dropped (ms).
        public var maxClockSkewMilliseconds: UInt64 = 30_000
        /// Derived keys kept (one per peer talked to).
        public var keyCacheCapacity = 1024
        /// Nonces remembered to refuse replays; when full, new datagrams are refused (fail closed).
        public var replayCapacity = 1 << 17
        /// Makes the defaults.
        public init() {}
    }

    /// Why a datagram was dropped.
    public enum Drop: String, Error, CaseIterable, Sendable {
        /// Shorter than a header and tag.
        case tooShort = "too_short"
        /// Not wire version 1.
        case badVersion = "bad_version"
        /// Reserved flag bits set.
        case badFlags = "bad_flags"
        /// The sender key is not a valid Ed25519 point.
        case badSenderKey = "bad_sender_key"
        /// Our own key as sender: a reflection.
        case fromSelf = "from_self"
        /// Timestamp outside the clock-skew window.
        case stale
        /// Authentication failed: forged, corrupted, or sealed under another mesh key.
        case authFailed = "auth_failed"
        /// Seen before.
        case replay
        /// The replay memory is full; refused rather than risk accepting a replay.
        case replayMemoryFull = "replay_memory_full"
    }

    /// A datagram that opened.
    public struct Opened {
        /// The proven sender.
        public var sender: PublicKey
        /// The decrypted body.
        public var body: [UInt8]
        /// The cookie the sender attached, if any (to be checked by `AddressCookies`).
        public var cookie: [UInt8]?
    }

    /// Our identity's public key.
    public let publicKey: PublicKey
    private let staticKey: X25519KeyPair
    private let meshKey: MeshKey
    private let settings: Settings
    private let now: () -> UInt64
    private let random: (Int) -> [UInt8]
    private var keys: LRUCache<PublicKey, SecretBytes>
    private var seen: Set<NonceID> = []
    private var seenOrder: [NonceID] = []
    private var seenHead = 0

    private struct NonceID: Hashable { let t: UInt64; let a: UInt64; let b: UInt64 }

    /// Makes a sealer for `identity` in the mesh of `meshKey`.
    /// - Parameters:
    ///   - now: wall-clock time in milliseconds since the Unix epoch.
    ///   - random: returns that many random bytes.
    public init(identity: SigningKey, meshKey: MeshKey, settings: Settings = Settings(),
                now: @escaping () -> UInt64, random: @escaping (Int) -> [UInt8]) {
        publicKey = identity.publicKey
        staticKey = X25519KeyPair(converting: identity)
        self.meshKey = meshKey
        self.settings = settings
        self.now = now
        self.random = random
        keys = LRUCache(capacity: settings.keyCacheCapacity)
    }

    /// The symmetric key shared with `peer` (cached).
    private func key(for peer: PublicKey) -> SecretBytes? {
        if let k = keys.value(for: peer) { return k }
        // The direct map (no subgroup check) is enough to derive a shared key; see `x25519ForAgreement`.
        guard let theirs = peer.x25519ForAgreement(), let shared = try? staticKey.sharedSecret(with: theirs) else { return nil }
        let (lo, hi) = publicKey.bytes.lexicographicallyPrecedes(peer.bytes) ? (publicKey.bytes, peer.bytes) : (peer.bytes, publicKey.bytes)
        let h = Blake2b.Hasher(outputLength: 32, key: meshKey.secret)
        h.update(Self.keyContext)
        h.update(shared)
        h.update(lo)
        h.update(hi)
        var digest = h.finalize()
        defer { wipe(&digest) }
        let k = SecretBytes(copying: digest)
        keys.insert(k, for: peer)
        return k
    }

    /// Seals `body` for `recipient`, attaching `cookie` if given. Nil if the recipient key is invalid.
    public func seal(_ body: some ContiguousBytes, to recipient: PublicKey, cookie: [UInt8]? = nil) -> [UInt8]? {
        guard let key = key(for: recipient) else { return nil }
        precondition(cookie == nil || cookie!.count == Self.cookieLength)
        var out: [UInt8] = [Self.version, cookie == nil ? 0 : Self.cookieFlag]
        out.reserveCapacity(Self.overhead + (cookie?.count ?? 0) + body.withUnsafeBytes { $0.count })
        out += publicKey.bytes
        withUnsafeBytes(of: now().bigEndian) { out.append(contentsOf: $0) }
        out += random(16)
        if let cookie { out += cookie }
        let headerEnd = out.count
        let nonce = Array(out[34..<58])
        let header = Array(out[0..<headerEnd])
        body.withUnsafeBytes { b in
            header.withUnsafeBytes { h in
                nonce.withUnsafeBytes { n in AEAD.xChaChaPoly.seal(b, ad: h, nonce: n, key: key, appendingTo: &out) }
            }
        }
        return out
    }

    /// Opens an untrusted datagram: checks every field, authenticates, refuses replays.
    public func open(_ datagram: UnsafeRawBufferPointer) -> Result<Opened, Drop> {
        guard datagram.count >= Self.overhead else { return .failure(.tooShort) }
        guard datagram[0] == Self.version else { return .failure(.badVersion) }
        let flags = datagram[1]
        guard flags & ~Self.cookieFlag == 0 else { return .failure(.badFlags) }
        let headerEnd = Self.headerLength + (flags & Self.cookieFlag != 0 ? Self.cookieLength : 0)
        guard datagram.count >= headerEnd + AEAD.tagByteCount else { return .failure(.tooShort) }
        guard let sender = try? PublicKey(bytes: datagram[2..<34]) else { return .failure(.badSenderKey) }
        guard sender != publicKey else { return .failure(.fromSelf) }
        var timestamp: UInt64 = 0
        for i in 34..<42 { timestamp = timestamp << 8 | UInt64(datagram[i]) }
        let clock = now()
        let skew = clock > timestamp ? clock - timestamp : timestamp - clock
        guard skew <= settings.maxClockSkewMilliseconds else { return .failure(.stale) }
        guard let key = key(for: sender) else { return .failure(.badSenderKey) }
        var body: [UInt8] = []
        do {
            try AEAD.xChaChaPoly.open(UnsafeRawBufferPointer(rebasing: datagram[headerEnd...]),
                                      ad: UnsafeRawBufferPointer(rebasing: datagram[0..<headerEnd]),
                                      nonce: UnsafeRawBufferPointer(rebasing: datagram[34..<58]), key: key, appendingTo: &body)
        } catch {
            return .failure(.authFailed)
        }
        // Only authenticated datagrams reach the replay memory, so outsiders cannot fill it.
        var a: UInt64 = 0, b: UInt64 = 0
        for i in 42..<50 { a = a << 8 | UInt64(datagram[i]) }
        for i in 50..<58 { b = b << 8 | UInt64(datagram[i]) }
        let id = NonceID(t: timestamp, a: a, b: b)
        forgetExpired(now: clock)
        guard !seen.contains(id) else { return .failure(.replay) }
        guard seen.count < settings.replayCapacity else { return .failure(.replayMemoryFull) }
        seen.insert(id)
        seenOrder.append(id)
        let cookie = flags & Self.cookieFlag != 0 ? Array(datagram[58..<74]) : nil
        return .success(Opened(sender: sender, body: body, cookie: cookie))
    }

    /// Forgets nonces whose timestamps left the window: they would be refused as stale anyway.
    /// Entries arrive in roughly time order; one out of order is kept until those before it expire.
    private func forgetExpired(now clock: UInt64) {
        let horizon = clock > 2 * settings.maxClockSkewMilliseconds ? clock - 2 * settings.maxClockSkewMilliseconds : 0
        while seenHead < seenOrder.count, seenOrder[seenHead].t < horizon {
            seen.remove(seenOrder[seenHead])
            seenHead += 1
        }
        if seenHead > 4096 && seenHead * 2 > seenOrder.count {
            seenOrder.removeFirst(seenHead)
            seenHead = 0
        }
    }

    /// How many nonces are remembered (for tests and status).
    public var rememberedNonces: Int { seen.count }
    /// How many derived keys are cached.
    public var cachedKeys: Int { keys.count }
}

/// Stateless cookies that prove a sender can receive at its source address (no amplification).
///
/// cookie = BLAKE2b-128 keyed with a local secret over the address bytes, port and the current
/// minute; accepted for the current and the previous minute.
public struct AddressCookies {
    private let secret: SecretBytes
    private let now: () -> UInt64

    /// Makes a cookie jar with a fresh secret; `now` is wall-clock milliseconds.
    public init(secret: SecretBytes, now: @escaping () -> UInt64) {
        self.secret = secret
        self.now = now
    }

    private func cookie(_ address: SocketAddress, epoch: UInt64) -> [UInt8] {
        var data = address.ip.bytes
        withUnsafeBytes(of: address.port.bigEndian) { data.append(contentsOf: $0) }
        withUnsafeBytes(of: epoch.bigEndian) { data.append(contentsOf: $0) }
        return Blake2b.hash(data, outputLength: 16, key: secret)
    }

    /// The cookie for `address` now.
    public func make(for address: SocketAddress) -> [UInt8] { cookie(address, epoch: now() / 60_000) }

    /// True if `cookie` was made for `address` this minute or the last.
    public func verify(_ cookie: [UInt8], from address: SocketAddress) -> Bool {
        let epoch = now() / 60_000
        return constantTimeEquals(cookie, self.cookie(address, epoch: epoch))
            || (epoch > 0 && constantTimeEquals(cookie, self.cookie(address, epoch: epoch - 1)))
    }
}
