import CSodium

/// The Noise Protocol Framework (revision 34) over X25519, ChaCha20-Poly1305 and BLAKE2b.
///
/// General code: any of the fifteen fundamental patterns (N, K, X, NN, NK, NX, KN, KK, KX, XN,
/// XK, XX, IN, IK, IX) with any `pskN` modifiers, so the published vectors for all of them pass;
/// GPUMesh channels use `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b`. Pure: no I/O, no clock; the
/// source of ephemeral keys is injected.
public enum Noise {
    /// The longest Noise message (handshake or transport), in bytes.
    public static let maxMessageLength = 65_535
    /// BLAKE2b's output length, Noise's HASHLEN.
    static let hashLength = 64
    /// BLAKE2b's block length, used by HMAC.
    static let blockLength = 128

    /// A handshake token.
    public enum Token: String, Sendable, Equatable {
        /// Send or receive an ephemeral public key.
        case e
        /// Send or receive a static public key (encrypted once a key is set).
        case s
        /// Mix in DH(ephemeral, remote ephemeral).
        case ee
        /// Mix in DH of the initiator's ephemeral and the responder's static.
        case es
        /// Mix in DH of the initiator's static and the responder's ephemeral.
        case se
        /// Mix in DH(static, remote static).
        case ss
        /// Mix in the next pre-shared key.
        case psk
    }

    /// A handshake pattern: pre-messages and message token lists (initiator first, alternating).
    public struct Pattern: Sendable, Equatable {
        /// The pattern's name, with modifiers (`XXpsk0`).
        public let name: String
        /// Keys the responder knows beforehand about the initiator (`s` or nothing).
        public let initiatorPreMessage: [Token]
        /// Keys the initiator knows beforehand about the responder.
        public let responderPreMessage: [Token]
        /// The handshake messages' tokens.
        public let messages: [[Token]]

        /// True for N, K and X: a single message, after which only the initiator sends.
        public var isOneWay: Bool { messages.count == 1 }
        /// How many pre-shared keys the pattern consumes.
        public var pskCount: Int { messages.joined().filter { $0 == .psk }.count }

        private static let fundamental: [String: (pre: ([Token], [Token]), messages: [[Token]])] = [
            "N": (([], [.s]), [[.e, .es]]),
            "K": (([.s], [.s]), [[.e, .es, .ss]]),
            "X": (([], [.s]), [[.e, .es, .s, .ss]]),
            "NN": (([], []), [[.e], [.e, .ee]]),
            "NK": (([], [.s]), [[.e, .es], [.e, .ee]]),
            "NX": (([], []), [[.e], [.e, .ee, .s, .es]]),
            "KN": (([.s], []), [[.e], [.e, .ee, .se]]),
            "KK": (([.s], [.s]), [[.e, .es, .ss], [.e, .ee, .se]]),
            "KX": (([.s], []), [[.e], [.e, .ee, .se, .s, .es]]),
            "XN": (([], []), [[.e], [.e, .ee], [.s, .se]]),
            "XK": (([], [.s]), [[.e, .es], [.e, .ee], [.s, .se]]),
            "XX": (([], []), [[.e], [.e, .ee, .s, .es], [.s, .se]]),
            "IN": (([], []), [[.e, .s], [.e, .ee, .se]]),
            "IK": (([], [.s]), [[.e, .es, .s, .ss], [.e, .ee, .se]]),
            "IX": (([], []), [[.e, .s], [.e, .ee, .se, .s, .es]]),
        ]

        /// Parses a pattern name such as `XX`, `XXpsk0` or `NNpsk0+psk2`; nil if unknown.
        public init?(_ name: String) {
            let base = String(name.prefix { $0.isUppercase })
            guard let def = Self.fundamental[base] else { return nil }
            var messages = def.messages
            let modifiers = name.dropFirst(base.count)
            if !modifiers.isEmpty {
                for modifier in modifiers.split(separator: "+", omittingEmptySubsequences: false) {
                    guard modifier.hasPrefix("psk"), let n = Int(modifier.dropFirst(3)), n >= 0, n <= messages.count,
                          String(n) == modifier.dropFirst(3) else { return nil }
                    if n == 0 { messages[0].insert(.psk, at: 0) } else { messages[n - 1].append(.psk) }
                }
            }
            self.name = name
            initiatorPreMessage = def.pre.0
            responderPreMessage = def.pre.1
            self.messages = messages
        }
    }

    /// Why a handshake or transport operation failed.
    public enum Failure: Error, Equatable, CustomStringConvertible, Sendable {
        /// The protocol name is malformed or names an unsupported primitive.
        case unsupportedProtocol(String)
        /// A key the pattern needs was not supplied (or has the wrong length).
        case missingKey(String)
        /// It is the other side's turn, or the handshake is over.
        case outOfTurn
        /// A message is shorter than its tokens require.
        case truncated
        /// Authentication failed: wrong key, wrong pre-shared key or tampered bytes.
        case decryptFailed
        /// A DH result was all zeros (a low-order public key).
        case invalidPublicKey
        /// A message would exceed 65,535 bytes.
        case messageTooLong(Int)
        /// The cipher's nonce is exhausted; rekeying or a new handshake is needed.
        case nonceExhausted

        /// A message for people.
        public var description: String {
            switch self {
            case .unsupportedProtocol(let n): return "unsupported Noise protocol '\(n)'"
            case .missingKey(let k): return "missing or malformed key: \(k)"
            case .outOfTurn: return "Noise message out of turn"
            case .truncated: return "Noise message truncated"
            case .decryptFailed: return "Noise decryption failed (wrong key, wrong mesh key, or tampered message)"
            case .invalidPublicKey: return "invalid (low-order) public key"
            case .messageTooLong(let n): return "Noise message of \(n) bytes exceeds 65,535"
            case .nonceExhausted: return "Noise nonce exhausted"
            }
        }
    }

    /// Which side of the handshake this is.
    public enum Role: Sendable {
        /// Sends the first message.
        case initiator
        /// Receives the first message.
        case responder
    }

    // MARK: Hash functions

    static func hash(_ parts: [UInt8]...) -> [UInt8] {
        let h = Blake2b.Hasher(outputLength: hashLength)
        for p in parts { h.update(p) }
        return h.finalize()
    }

    /// HMAC-BLAKE2b (RFC 2104 over BLAKE2b-512, 128-byte blocks), as Noise defines HMAC-HASH.
    static func hmac(key: [UInt8], _ data: [UInt8]...) -> [UInt8] {
        precondition(key.count <= blockLength)
        var ipad = [UInt8](repeating: 0x36, count: blockLength)
        var opad = [UInt8](repeating: 0x5c, count: blockLength)
        for (i, b) in key.enumerated() { ipad[i] ^= b; opad[i] ^= b }
        defer { wipe(&ipad); wipe(&opad) }
        let inner = Blake2b.Hasher(outputLength: hashLength)
        inner.update(ipad)
        for d in data { inner.update(d) }
        var innerDigest = inner.finalize()
        defer { wipe(&innerDigest) }
        return hash(opad, innerDigest)
    }

    /// Noise's HKDF: two or three 64-byte outputs from a chaining key and input key material.
    static func hkdf(chainingKey: [UInt8], input: [UInt8], outputs: Int) -> [[UInt8]] {
        var tempKey = hmac(key: chainingKey, input)
        defer { wipe(&tempKey) }
        let o1 = hmac(key: tempKey, [1])
        let o2 = hmac(key: tempKey, o1, [2])
        if outputs == 2 { return [o1, o2] }
        return [o1, o2, hmac(key: tempKey, o2, [3])]
    }
}

extension Noise {
    /// A Noise CipherState: a ChaCha20-Poly1305 key and a 64-bit counter nonce.
    public final class CipherState {
        private var key: SecretBytes?
        /// The next nonce.
        public private(set) var nonce: UInt64 = 0

        /// Makes a cipher state, with or without a key.
        public init(key: SecretBytes? = nil) { self.key = key }

        /// True once a key is set.
        public var hasKey: Bool { key != nil }

        private static func nonceBytes(_ n: UInt64) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: 12)
            withUnsafeBytes(of: n.littleEndian) { bytes.replaceSubrange(4..<12, with: $0) }
            return bytes
        }

        /// Encrypts `buffer[start...]` in place (no associated data) and appends the tag: a
        /// standard Noise transport message, produced without copying. Requires a key.
        public func encryptInPlace(_ buffer: inout [UInt8], from start: Int) throws(Failure) {
            guard let key else { throw .missingKey("transport key") }
            guard nonce != UInt64.max else { throw .nonceExhausted }
            let n = Self.nonceBytes(nonce)
            n.withUnsafeBytes { AEAD.chaChaPoly.sealInPlace(&buffer, from: start, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: $0, key: key) }
            nonce += 1
        }

        /// Decrypts a transport message (empty associated data) in place; returns the plaintext's
        /// length, at the buffer's start. The nonce advances only on success.
        public func decryptInPlace(_ buffer: UnsafeMutableRawBufferPointer) throws(Failure) -> Int {
            guard let key else { throw .missingKey("transport key") }
            guard nonce != UInt64.max else { throw .nonceExhausted }
            let n = Self.nonceBytes(nonce)
            let count = n.withUnsafeBytes { try? AEAD.chaChaPoly.openInPlace(buffer, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: $0, key: key) }
            guard let count else { throw .decryptFailed }
            nonce += 1
            return count
        }

        /// Encrypts (or, without a key, passes through) `plaintext` with associated data `ad`.
        public func encrypt(ad: [UInt8], _ plaintext: [UInt8]) throws(Failure) -> [UInt8] {
            guard let key else { return plaintext }
            guard nonce != UInt64.max else { throw .nonceExhausted }
            var out: [UInt8] = []
            out.reserveCapacity(plaintext.count + AEAD.tagByteCount)
            let n = Self.nonceBytes(nonce)
            plaintext.withUnsafeBytes { p in ad.withUnsafeBytes { a in n.withUnsafeBytes { AEAD.chaChaPoly.seal(p, ad: a, nonce: $0, key: key, appendingTo: &out) } } }
            nonce += 1
            return out
        }

        /// Decrypts (or passes through) `ciphertext`; the nonce advances only on success.
        public func decrypt(ad: [UInt8], _ ciphertext: [UInt8]) throws(Failure) -> [UInt8] {
            guard let key else { return ciphertext }
            guard nonce != UInt64.max else { throw .nonceExhausted }
            var out: [UInt8] = []
            out.reserveCapacity(max(ciphertext.count - AEAD.tagByteCount, 0))
            let n = Self.nonceBytes(nonce)
            let opened = ciphertext.withUnsafeBytes { c in
                ad.withUnsafeBytes { a in
                    n.withUnsafeBytes { nb in (try? AEAD.chaChaPoly.open(c, ad: a, nonce: nb, key: key, appendingTo: &out)) != nil }
                }
            }
            guard opened else { throw .decryptFailed }
            nonce += 1
            return out
        }

        /// Replaces the key with REKEY(k): the first 32 bytes of encrypting 32 zeros at nonce 2^64-1.
        public func rekey() {
            guard let key else { return }
            var out: [UInt8] = []
            let zeros = [UInt8](repeating: 0, count: 32)
            let n = Self.nonceBytes(UInt64.max)
            zeros.withUnsafeBytes { z in n.withUnsafeBytes { AEAD.chaChaPoly.seal(z, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: $0, key: key, appendingTo: &out) } }
            self.key = SecretBytes(copying: out[0..<32])
            wipe(&out)
        }
    }

    /// Noise's SymmetricState: chaining key, handshake hash and the current cipher.
    struct SymmetricState {
        var chainingKey: [UInt8]
        var handshakeHash: [UInt8]
        private var cipherKey: CipherState

        init(protocolName: String) {
            let name = Array(protocolName.utf8)
            handshakeHash = name.count <= hashLength ? name + [UInt8](repeating: 0, count: hashLength - name.count) : hash(name)
            chainingKey = handshakeHash
            cipherKey = CipherState()
        }

        var current: CipherState { cipherKey }

        mutating func mixHash(_ data: [UInt8]) { handshakeHash = hash(handshakeHash, data) }

        mutating func mixKey(_ input: [UInt8]) {
            var out = hkdf(chainingKey: chainingKey, input: input, outputs: 2)
            wipe(&chainingKey)
            chainingKey = out[0]
            cipherKey = CipherState(key: SecretBytes(copying: out[1][0..<32]))
            wipe(&out[1])
        }

        mutating func mixKeyAndHash(_ input: [UInt8]) {
            var out = hkdf(chainingKey: chainingKey, input: input, outputs: 3)
            wipe(&chainingKey)
            chainingKey = out[0]
            mixHash(out[1])
            cipherKey = CipherState(key: SecretBytes(copying: out[2][0..<32]))
            wipe(&out[2])
        }

        mutating func encryptAndHash(_ plaintext: [UInt8]) throws(Failure) -> [UInt8] {
            let c = try cipherKey.encrypt(ad: handshakeHash, plaintext)
            mixHash(c)
            return c
        }

        mutating func decryptAndHash(_ ciphertext: [UInt8]) throws(Failure) -> [UInt8] {
            let p = try cipherKey.decrypt(ad: handshakeHash, ciphertext)
            mixHash(ciphertext)
            return p
        }

        func split() -> (CipherState, CipherState) {
            var out = hkdf(chainingKey: chainingKey, input: [], outputs: 2)
            defer { wipe(&out[0]); wipe(&out[1]) }
            return (CipherState(key: SecretBytes(copying: out[0][0..<32])), CipherState(key: SecretBytes(copying: out[1][0..<32])))
        }

        mutating func wipeSecrets() { wipe(&chainingKey) }
    }
}

extension Noise {
    /// The ciphers a finished handshake yields, from this side's point of view.
    public struct Transport {
        /// Encrypts what this side sends.
        public let send: CipherState
        /// Decrypts what this side receives (unused by a one-way pattern's initiator).
        public let receive: CipherState
        /// The handshake hash, unique to this session (for channel binding).
        public let handshakeHash: [UInt8]
    }

    /// A Noise HandshakeState for one side of one handshake.
    public final class HandshakeState {
        /// The pattern being run.
        public let pattern: Pattern
        /// This side's role.
        public let role: Role
        /// The remote static public key, once known (given beforehand or received).
        public private(set) var remoteStatic: [UInt8]?
        /// The finished handshake's ciphers; nil until the last message is written or read.
        public private(set) var transport: Transport?

        private var symmetric: SymmetricState
        private let localStatic: X25519KeyPair?
        private var localEphemeral: X25519KeyPair?
        private var remoteEphemeral: [UInt8]?
        private var psks: [SecretBytes]
        private let makeEphemeral: () -> X25519KeyPair
        private var messageIndex = 0
        private let usesPSK: Bool

        /// Starts a handshake.
        /// - Parameters:
        ///   - protocolName: such as `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b`.
        ///   - prologue: data both sides must agree on (it is hashed, not sent).
        ///   - localStatic: this side's static key, if the pattern sends or pre-shares one.
        ///   - remoteStatic: the other side's static public key, if the pattern pre-shares it.
        ///   - presharedKeys: 32-byte keys, one per `psk` token, in order.
        ///   - makeEphemeral: the source of ephemeral keys (random by default; fixed in tests).
        public init(protocolName: String, role: Role, prologue: [UInt8] = [], localStatic: X25519KeyPair? = nil,
                    remoteStatic: [UInt8]? = nil, presharedKeys: [SecretBytes] = [],
                    makeEphemeral: @escaping () -> X25519KeyPair = { X25519KeyPair() }) throws(Failure) {
            let parts = protocolName.split(separator: "_")
            guard parts.count == 5, parts[0] == "Noise", parts[2] == "25519", parts[3] == "ChaChaPoly", parts[4] == "BLAKE2b",
                  let pattern = Pattern(String(parts[1])) else { throw .unsupportedProtocol(protocolName) }
            self.pattern = pattern
            self.role = role
            self.localStatic = localStatic
            self.remoteStatic = remoteStatic
            self.makeEphemeral = makeEphemeral
            psks = presharedKeys
            usesPSK = pattern.pskCount > 0
            guard psks.count == pattern.pskCount, psks.allSatisfy({ $0.count == 32 }) else {
                throw .missingKey("\(pattern.pskCount) pre-shared key(s) of 32 bytes")
            }
            symmetric = SymmetricState(protocolName: protocolName)
            symmetric.mixHash(prologue)
            let (mine, theirs) = role == .initiator ? (pattern.initiatorPreMessage, pattern.responderPreMessage)
                                                    : (pattern.responderPreMessage, pattern.initiatorPreMessage)
            if mine.contains(.s) && localStatic == nil { throw .missingKey("local static key") }
            if theirs.contains(.s) && remoteStatic?.count != 32 { throw .missingKey("remote static key") }
            let needsLocalStatic = pattern.messages.enumerated().contains { i, tokens in
                tokens.contains(.s) && (i % 2 == 0) == (role == .initiator)
            }
            if needsLocalStatic && localStatic == nil { throw .missingKey("local static key") }
            // Pre-messages: the initiator's keys are hashed first, then the responder's.
            for token in pattern.initiatorPreMessage where token == .s {
                symmetric.mixHash(role == .initiator ? localStatic!.publicKey : remoteStatic!)
            }
            for token in pattern.responderPreMessage where token == .s {
                symmetric.mixHash(role == .responder ? localStatic!.publicKey : remoteStatic!)
            }
        }

        deinit { symmetric.wipeSecrets() }

        /// True when this side must write the next handshake message.
        public var isMyTurn: Bool {
            transport == nil && (messageIndex % 2 == 0) == (role == .initiator)
        }

        /// True once the handshake is finished.
        public var isComplete: Bool { transport != nil }

        /// The current handshake hash.
        public var handshakeHash: [UInt8] { symmetric.handshakeHash }

        /// Writes the next handshake message carrying `payload`.
        public func writeMessage(payload: [UInt8] = []) throws(Failure) -> [UInt8] {
            guard isMyTurn else { throw .outOfTurn }
            var out: [UInt8] = []
            for token in pattern.messages[messageIndex] {
                switch token {
                case .e:
                    let e = makeEphemeral()
                    localEphemeral = e
                    out += e.publicKey
                    symmetric.mixHash(e.publicKey)
                    if usesPSK { symmetric.mixKey(e.publicKey) }
                case .s:
                    out += try symmetric.encryptAndHash(localStatic!.publicKey)
                case .psk:
                    try mixPSK()
                default:
                    try mixDH(token)
                }
            }
            out += try symmetric.encryptAndHash(payload)
            guard out.count <= maxMessageLength else { throw .messageTooLong(out.count) }
            advance()
            return out
        }

        /// Reads the next handshake message and returns its payload.
        public func readMessage(_ message: [UInt8]) throws(Failure) -> [UInt8] {
            guard transport == nil, !isMyTurn else { throw .outOfTurn }
            guard message.count <= maxMessageLength else { throw .messageTooLong(message.count) }
            var rest = message[...]
            for token in pattern.messages[messageIndex] {
                switch token {
                case .e:
                    guard rest.count >= 32 else { throw .truncated }
                    let re = Array(rest.prefix(32))
                    rest = rest.dropFirst(32)
                    remoteEphemeral = re
                    symmetric.mixHash(re)
                    if usesPSK { symmetric.mixKey(re) }
                case .s:
                    let n = 32 + (symmetric.current.hasKey ? AEAD.tagByteCount : 0)
                    guard rest.count >= n else { throw .truncated }
                    remoteStatic = try symmetric.decryptAndHash(Array(rest.prefix(n)))
                    rest = rest.dropFirst(n)
                case .psk:
                    try mixPSK()
                default:
                    try mixDH(token)
                }
            }
            if symmetric.current.hasKey && rest.count < AEAD.tagByteCount { throw .truncated }
            let payload = try symmetric.decryptAndHash(Array(rest))
            advance()
            return payload
        }

        private func mixPSK() throws(Failure) {
            guard !psks.isEmpty else { throw .missingKey("pre-shared key") }
            let psk = psks.removeFirst()
            symmetric.mixKeyAndHash(psk.withUnsafeBytes { Array($0) })
        }

        private func mixDH(_ token: Token) throws(Failure) {
            let initiator = role == .initiator
            let (local, remote): (X25519KeyPair?, [UInt8]?)
            switch token {
            case .ee: (local, remote) = (localEphemeral, remoteEphemeral)
            case .es: (local, remote) = initiator ? (localEphemeral, remoteStatic) : (localStatic, remoteEphemeral)
            case .se: (local, remote) = initiator ? (localStatic, remoteEphemeral) : (localEphemeral, remoteStatic)
            case .ss: (local, remote) = (localStatic, remoteStatic)
            default: preconditionFailure("not a DH token")
            }
            guard let local, let remote else { throw .missingKey("key for \(token.rawValue)") }
            let shared: SecretBytes
            do { shared = try local.sharedSecret(with: remote) } catch { throw .invalidPublicKey }
            var bytes = shared.withUnsafeBytes { Array($0) }
            symmetric.mixKey(bytes)
            wipe(&bytes)
        }

        private func advance() {
            messageIndex += 1
            guard messageIndex == pattern.messages.count else { return }
            let (c1, c2) = symmetric.split()
            let hash = symmetric.handshakeHash
            transport = role == .initiator ? Transport(send: c1, receive: c2, handshakeHash: hash)
                                           : Transport(send: c2, receive: c1, handshakeHash: hash)
            symmetric.wipeSecrets()
            localEphemeral = nil
        }
    }
}
