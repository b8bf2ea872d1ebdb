import MeshCore
import MeshCrypto

/// What a peer needs to run channel handshakes, computed once per identity: the Ed25519 key,
/// its X25519 form (the Noise static key) and the identity proof (key and signature over the
/// static key), which is the same for every handshake.
public struct ChannelIdentity: Sendable {
    /// The Ed25519 identity.
    public let signingKey: SigningKey
    /// The Noise static key: the identity's X25519 form.
    public let staticKey: X25519KeyPair
    /// The handshake payload proving the identity: public key (32) and signature (64).
    public let proof: [UInt8]

    /// Derives the static key and signs it.
    public init(_ signingKey: SigningKey) {
        self.signingKey = signingKey
        staticKey = X25519KeyPair(converting: signingKey)
        proof = signingKey.publicKey.bytes + signingKey.signature(for: SecureChannel.identityContext + staticKey.publicKey)
    }
}

/// The services a channel can be opened for: the first application message on a channel is
/// the service's name (UTF-8, at most 64 bytes).
public enum ChannelService {
    /// Echoes every message (the demo and tests).
    public static let echo = "gpumesh/echo/1"
    /// Gossip messages too large for one datagram.
    public static let gossip = "gpumesh/gossip/1"
    /// Job negotiation.
    public static let jobs = "gpumesh/jobs/1"

    /// The service name in a first message, if it is one.
    public static func name(_ bytes: [UInt8]) -> String? {
        guard (1...64).contains(bytes.count), let s = String(validating: bytes, as: UTF8.self) else { return nil }
        return s
    }
}

/// An authenticated, encrypted channel over a stream: `Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b`
/// with the mesh key as the pre-shared key, each side's Ed25519 identity bound to its Noise
/// static key by a signature in the handshake payload. Loop-confined, except the `async`
/// methods. Docs/PROTOCOL.md specifies the bytes.
///
/// - An outsider of a private mesh fails on the first message (psk0) and learns no identity.
/// - The initiator names the peer it means to reach and aborts if another identity answers.
/// - Application messages of any size up to `Settings.maxMessageBytes` are split into frames of
///   at most 65,535 bytes; each direction rekeys every `Settings.rekeyInterval` frames.
/// - A frame that fails authentication closes the channel.
public final class SecureChannel: @unchecked Sendable {
    /// The Noise protocol name.
    public static let protocolName = "Noise_XXpsk0_25519_ChaChaPoly_BLAKE2b"
    /// The prologue both sides hash: names the GPUMesh channel protocol version.
    public static let prologue = Array("GPUMesh channel v1".utf8)
    /// Domain separation for the identity signature over the Noise static key.
    public static let identityContext = Array("gpumesh/noise-identity/v1".utf8)
    /// The most application bytes in one transport frame (65,535 less the type byte and the tag).
    public static let maxFragment = Noise.maxMessageLength - 1 - AEAD.tagByteCount

    /// Tunables.
    public struct Settings: Sendable {
        /// A handshake not finished within this is dropped.
        public var handshakeTimeout: Duration = .seconds(10)
        /// Each direction's key is replaced (Noise REKEY) after this many frames.
        public var rekeyInterval: UInt64 = 1 << 16
        /// The largest application message accepted.
        public var maxMessageBytes = 64 << 20
        /// Makes the defaults.
        public init() {}
    }

    /// Why a channel failed.
    public enum Failure: Error, Equatable, CustomStringConvertible, Sendable {
        /// The TCP connection could not be made.
        case connect(UVError)
        /// The handshake did not finish in time.
        case handshakeTimeout
        /// A Noise error: `decryptFailed` in the handshake usually means a different mesh key.
        case noise(Noise.Failure)
        /// The handshake payload did not prove an identity.
        case badIdentity(String)
        /// The responder proved an identity other than the one the initiator meant to reach.
        case unexpectedPeer(expected: PeerID, actual: PeerID)
        /// The peer broke the framing rules.
        case protocolViolation(String)
        /// An application message exceeded the limit.
        case messageTooLarge(Int)
        /// The connection closed (with the transport error, if any).
        case closed(UVError?)
        /// The peer hung up before the handshake finished: typically it refused our mesh key.
        case peerClosedDuringHandshake
        /// A transport frame failed authentication (corrupted or tampered with).
        case frameAuthenticationFailed

        /// A message for people.
        public var description: String {
            switch self {
            case .connect(let e): return "cannot connect: \(e)"
            case .handshakeTimeout: return "handshake timed out"
            case .noise(.decryptFailed): return "handshake failed: the peer uses a different mesh key, or the bytes were tampered with"
            case .noise(let e): return "handshake failed: \(e)"
            case .badIdentity(let why): return "peer did not prove its identity: \(why)"
            case .unexpectedPeer(let e, let a): return "expected peer \(e.short) but \(a.short) answered"
            case .protocolViolation(let why): return "protocol violation: \(why)"
            case .messageTooLarge(let n): return "message of \(n) bytes exceeds the limit"
            case .closed(let e): return e.map { "channel closed: \($0)" } ?? "channel closed"
            case .frameAuthenticationFailed: return "a frame failed authentication (corrupted or tampered with); channel closed"
            case .peerClosedDuringHandshake:
                return "the peer closed the connection during the handshake (it probably uses a different mesh key)"
            }
        }
    }

    private enum FrameType: UInt8 {
        case final = 0, fragment = 1, close = 2
    }

    /// The loop the channel lives on.
    public let loop: EventLoop
    /// The underlying stream.
    public let connection: StreamConnection
    /// The peer's proven identity (set once the handshake completes).
    public private(set) var remoteIdentity: PublicKey?
    /// The peer's ID (valid once the handshake completes).
    public var remotePeerID: PeerID? { remoteIdentity.map(PeerID.init(publicKey:)) }
    /// The handshake hash, unique to this session (once complete).
    public private(set) var handshakeHash: [UInt8]?
    /// Frames sent and received so far (transport phase).
    public private(set) var framesSent: UInt64 = 0
    /// Frames received so far (transport phase).
    public private(set) var framesReceived: UInt64 = 0
    /// Why the channel closed, once it has.
    public private(set) var failure: Failure?

    private let identity: ChannelIdentity
    private let settings: Settings
    private let expectedPeer: PeerID?
    private var handshake: Noise.HandshakeState?
    private var transport: Noise.Transport?
    private var inbound: [UInt8] = []
    private var inboundStart = 0
    private var partial: [UInt8] = []
    private var onMessage: (([UInt8]) -> Void)?
    private var onWritable: (() -> Void)?
    private var pendingMessages: [[UInt8]] = []
    private var closeHandlers: [(Failure?) -> Void] = []
    private var completion: ((Result<SecureChannel, Failure>) -> Void)?
    private var timer: LoopTimer?
    private var blockedSenders: [(message: [UInt8], continuation: CheckedContinuation<Void, Error>)] = []
    private var finished = false

    private init(connection: StreamConnection, identity: ChannelIdentity, meshKey: MeshKey, role: Noise.Role,
                 expectedPeer: PeerID?, settings: Settings) throws(Noise.Failure) {
        loop = connection.loop
        self.connection = connection
        self.identity = identity
        self.settings = settings
        self.expectedPeer = expectedPeer
        handshake = try Noise.HandshakeState(protocolName: Self.protocolName, role: role, prologue: Self.prologue,
                                             localStatic: identity.staticKey, presharedKeys: [meshKey.secret])
    }

    // MARK: Establishing

    /// Opens a channel to `contact` and proves both identities (loop thread); `completion` runs on the loop.
    public static func connect(on loop: EventLoop, to contact: Contact, identity: ChannelIdentity, meshKey: MeshKey,
                               settings: Settings = Settings(), _ completion: @escaping (Result<SecureChannel, Failure>) -> Void) {
        loop.preconditionInLoop()
        guard let address = contact.address(for: .tcp) else {
            completion(.failure(.connect(UVError(code: UVError.invalidArgument, call: "contact has no tcp address"))))
            return
        }
        StreamConnection.connect(on: loop, to: .tcp(address), timeout: settings.handshakeTimeout) { result in
            switch result {
            case .failure(let e): completion(.failure(.connect(e)))
            case .success(let connection):
                do throws(Noise.Failure) {
                    let channel = try SecureChannel(connection: connection, identity: identity, meshKey: meshKey,
                                                    role: .initiator, expectedPeer: contact.peerID, settings: settings)
                    channel.start(completion)
                    channel.sendHandshakeMessage(payload: [])
                } catch {
                    connection.close()
                    completion(.failure(.noise(error)))
                }
            }
        }
    }

    /// Opens a channel from any thread.
    public static func connect(on loop: EventLoop, to contact: Contact, identity: ChannelIdentity, meshKey: MeshKey,
                               settings: Settings = Settings()) async throws -> SecureChannel {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<SecureChannel, Error>) in
            let accepted = loop.execute {
                connect(on: loop, to: contact, identity: identity, meshKey: meshKey, settings: settings) {
                    continuation.resume(with: $0.mapError { $0 })
                }
            }
            if !accepted { continuation.resume(throwing: EventLoopError.shutDown) }
        }
    }

    /// Runs the responder's side of the handshake on an accepted connection (loop thread).
    public static func accept(_ connection: StreamConnection, identity: ChannelIdentity, meshKey: MeshKey,
                              settings: Settings = Settings(), _ completion: @escaping (Result<SecureChannel, Failure>) -> Void) {
        connection.loop.preconditionInLoop()
        do {
            let channel = try SecureChannel(connection: connection, identity: identity, meshKey: meshKey,
                                            role: .responder, expectedPeer: nil, settings: settings)
            channel.start(completion)
        } catch {
            connection.close()
            completion(.failure(.noise(error)))
        }
    }

    /// Wires the channel to its connection. The connection's callbacks hold the channel strongly:
    /// an open connection keeps its channel alive, and closing it (which drops every callback)
    /// releases it.
    private func start(_ completion: @escaping (Result<SecureChannel, Failure>) -> Void) {
        self.completion = completion
        timer = try? loop.schedule(after: settings.handshakeTimeout) { [weak self] in self?.fail(.handshakeTimeout) }
        connection.onClose { error in self.connectionClosed(error) }
        connection.startReading { event in
            if case .data(let bytes) = event { self.received(bytes) }
        }
        connection.onWriteQueueDrained = { self.releaseBlockedSenders() }
    }

    // MARK: Handshake

    private func sendHandshakeMessage(payload: [UInt8]) {
        guard let handshake else { return }
        do {
            writeFrame(try handshake.writeMessage(payload: payload))
            if handshake.isComplete { handshakeFinished() }
        } catch {
            fail(.noise(error))
        }
    }

    private func receivedHandshakeMessage(_ message: [UInt8]) {
        guard let handshake else { return }
        let payload: [UInt8]
        do { payload = try handshake.readMessage(message) } catch { fail(.noise(error)); return }
        // Messages 2 (from the responder) and 3 (from the initiator) carry identity proofs.
        if let remoteStatic = handshake.remoteStatic, remoteIdentity == nil {
            do { remoteIdentity = try verifyProof(payload, noiseStatic: remoteStatic) } catch { fail(error); return }
            if let expectedPeer, PeerID(publicKey: remoteIdentity!) != expectedPeer {
                fail(.unexpectedPeer(expected: expectedPeer, actual: PeerID(publicKey: remoteIdentity!)))
                return
            }
        } else if !payload.isEmpty {
            fail(.protocolViolation("unexpected handshake payload"))
            return
        }
        if handshake.isComplete {
            handshakeFinished()
        } else if handshake.isMyTurn {
            // The responder's message 2 and the initiator's message 3 both carry a proof.
            sendHandshakeMessage(payload: identity.proof)
        }
    }

    private func verifyProof(_ payload: [UInt8], noiseStatic: [UInt8]) throws(Failure) -> PublicKey {
        guard payload.count == PublicKey.byteCount + PublicKey.signatureByteCount else {
            throw .badIdentity("proof is \(payload.count) bytes, expected 96")
        }
        guard let key = try? PublicKey(bytes: payload[0..<32]) else { throw .badIdentity("malformed key") }
        guard key.isValidSignature(Array(payload[32...]), for: Self.identityContext + noiseStatic) else {
            throw .badIdentity("signature over the Noise static key does not verify")
        }
        guard let converted = try? key.x25519(), constantTimeEquals(converted, noiseStatic) else {
            throw .badIdentity("Noise static key is not the identity's X25519 key")
        }
        return key
    }

    private func handshakeFinished() {
        guard let handshake, let t = handshake.transport, remoteIdentity != nil else {
            fail(.badIdentity("handshake finished without an identity proof"))
            return
        }
        transport = t
        handshakeHash = t.handshakeHash
        self.handshake = nil
        timer?.cancel()
        timer = nil
        let done = completion
        completion = nil
        done?(.success(self))
    }

    /// True once both identities are proven and messages can flow.
    public var isEstablished: Bool { transport != nil && !finished }

    // MARK: Framing

    private func writeFrame(_ body: [UInt8]) {
        precondition(body.count <= Noise.maxMessageLength)
        var frame: [UInt8] = [UInt8(body.count >> 8), UInt8(body.count & 0xff)]
        frame += body
        connection.write(frame)
    }

    private func received(_ bytes: UnsafeRawBufferPointer) {
        if inbound.count == inboundStart {
            // Nothing pending: open whole frames straight from the read buffer, keep the tail.
            // The bytes are the loop's read buffer, which is this read's to use: frames are
            // decrypted in place there.
            let used = consumeFrames(UnsafeMutableRawBufferPointer(mutating: bytes))
            if !finished && used < bytes.count {
                inbound.removeAll(keepingCapacity: true)
                inboundStart = 0
                inbound.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[used...]))
            }
            return
        }
        inbound.append(contentsOf: bytes)
        let used = inbound.withUnsafeMutableBytes { consumeFrames(UnsafeMutableRawBufferPointer(rebasing: $0[inboundStart...])) }
        inboundStart += used
        if inboundStart > 0 && (inboundStart == inbound.count || inboundStart > 1 << 16) {
            inbound.removeFirst(inboundStart)
            inboundStart = 0
        }
    }

    /// Handles every complete frame at the start of `bytes`; returns how many bytes they used.
    private func consumeFrames(_ bytes: UnsafeMutableRawBufferPointer) -> Int {
        var offset = 0
        while !finished {
            let available = bytes.count - offset
            guard available >= 2 else { break }
            let length = Int(bytes[offset]) << 8 | Int(bytes[offset + 1])
            guard length > 0 else { fail(.protocolViolation("empty frame")); break }
            guard available >= 2 + length else { break }
            let frame = UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + 2 + length])
            offset += 2 + length
            if transport != nil {
                receivedTransportFrame(frame)
            } else {
                receivedHandshakeMessage(Array(frame[2...]))
            }
        }
        return offset
    }

    /// A transport frame: length (2) | a standard Noise transport message (empty associated
    /// data) whose plaintext is the data followed by one type byte.
    private func receivedTransportFrame(_ frame: UnsafeMutableRawBufferPointer) {
        guard let transport else { return }
        guard frame.count >= 2 + 1 + AEAD.tagByteCount else { fail(.protocolViolation("transport frame too short")); return }
        let before = partial.count
        guard before + frame.count - 2 - 1 - AEAD.tagByteCount <= settings.maxMessageBytes else {
            fail(.messageTooLarge(before + frame.count - 2 - 1 - AEAD.tagByteCount))
            return
        }
        // Decrypted where it lies, then copied once into the message (no zero-filled buffer first).
        let body = UnsafeMutableRawBufferPointer(rebasing: frame[2...])
        let plainCount: Int
        do {
            plainCount = try transport.receive.decryptInPlace(body)
        } catch {
            fail(.frameAuthenticationFailed)
            return
        }
        framesReceived += 1
        if framesReceived % settings.rekeyInterval == 0 { transport.receive.rekey() }
        let data = UnsafeRawBufferPointer(rebasing: body[..<(plainCount - 1)])
        guard let type = FrameType(rawValue: body[plainCount - 1]) else { fail(.protocolViolation("unknown frame type")); return }
        switch type {
        case .close:
            guard data.isEmpty else { fail(.protocolViolation("close frame with data")); return }
            finish(nil)
            connection.closeGracefully()
        case .fragment:
            // A message of several frames: room for eight at once, so a 256 KiB message is not
            // copied through four growing buffers.
            if before == 0 { partial.reserveCapacity(min(settings.maxMessageBytes, 8 * Noise.maxMessageLength)) }
            partial.append(contentsOf: data)
        case .final:
            let message: [UInt8]
            if before == 0 {
                message = Array(data)
            } else {
                partial.append(contentsOf: data)
                message = partial
                partial = []
            }
            if let onMessage { onMessage(message) } else { pendingMessages.append(message) }
        }
    }

    // MARK: Sending

    /// Sends one application message (loop thread). Never blocks: the write queue grows instead;
    /// use `send(_:) async` to wait for room. Returns false if the channel is not established.
    @discardableResult
    public func send(_ message: [UInt8]) -> Bool {
        loop.preconditionInLoop()
        guard let transport, !finished else { return false }
        guard message.count <= settings.maxMessageBytes else { fail(.messageTooLarge(message.count)); return false }
        // A message's frames are sealed into one buffer and written together (flushed every
        // 256 KiB), so a 64 KiB message costs one write, not one per frame.
        return message.withUnsafeBytes { bytes in
            var batch: [UInt8] = []
            batch.reserveCapacity(min(bytes.count, Self.writeBatchBytes) + 64)
            var offset = 0
            repeat {
                let n = min(Self.maxFragment, bytes.count - offset)
                let type: FrameType = offset + n == bytes.count ? .final : .fragment
                guard appendFrame(type, UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n]), transport, to: &batch) else { return false }
                offset += n
                if batch.count >= Self.writeBatchBytes || offset == bytes.count {
                    connection.write(batch)
                    batch.removeAll(keepingCapacity: true)
                }
            } while offset < bytes.count
            return true
        }
    }

    /// How many sealed bytes a send gathers before writing them.
    static let writeBatchBytes = 256 << 10

    /// Appends one frame to `out`: the length, then data and type byte encrypted in place.
    private func appendFrame(_ type: FrameType, _ data: UnsafeRawBufferPointer, _ transport: Noise.Transport,
                             to out: inout [UInt8]) -> Bool {
        let length = data.count + 1 + AEAD.tagByteCount
        out.append(UInt8(length >> 8))
        out.append(UInt8(length & 0xff))
        let start = out.count
        out.append(contentsOf: data)
        out.append(type.rawValue)
        do {
            try transport.send.encryptInPlace(&out, from: start)
        } catch {
            fail(.noise(error))
            return false
        }
        framesSent += 1
        if framesSent % settings.rekeyInterval == 0 { transport.send.rekey() }
        return true
    }

    /// Sends a message from any thread, waiting while the connection's write queue is full.
    public func send(_ message: [UInt8]) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            let accepted = loop.execute { [self] in
                if finished || transport == nil {
                    continuation.resume(throwing: failure ?? .closed(nil))
                } else if blockedSenders.isEmpty && connection.isWritable {
                    if send(message) { continuation.resume() } else { continuation.resume(throwing: failure ?? .closed(nil)) }
                } else {
                    blockedSenders.append((message, continuation))
                }
            }
            if !accepted { continuation.resume(throwing: EventLoopError.shutDown) }
        }
    }

    private func releaseBlockedSenders() {
        var i = 0
        while i < blockedSenders.count, connection.isWritable, !finished {
            let next = blockedSenders[i]
            i += 1
            if send(next.message) { next.continuation.resume() } else { next.continuation.resume(throwing: failure ?? .closed(nil)) }
        }
        blockedSenders.removeFirst(i)
        if blockedSenders.isEmpty, isWritable { onWritable?() }
    }

    /// True while the channel is established and its write queue is below the high-water mark:
    /// loop-side senders send while this holds and resume from `setWritableHandler`.
    public var isWritable: Bool { transport != nil && !finished && blockedSenders.isEmpty && connection.isWritable }

    /// Calls `handler` on the loop whenever the write queue drains below the low-water mark,
    /// so a sender on the loop can continue without any thread hop (loop thread).
    public func setWritableHandler(_ handler: @escaping () -> Void) {
        loop.preconditionInLoop()
        onWritable = handler
    }

    // MARK: Receiving

    /// Delivers each application message to `handler` on the loop (messages that arrived before
    /// a handler was set are delivered first).
    public func setMessageHandler(_ handler: @escaping ([UInt8]) -> Void) {
        loop.preconditionInLoop()
        onMessage = handler
        let queued = pendingMessages
        pendingMessages = []
        for m in queued { handler(m) }
    }

    /// Delivers only the next application message to `handler` (loop thread); later messages
    /// wait, queued, for the next handler. Used to read a channel's service name before the
    /// service takes the channel over.
    public func takeNextMessage(_ handler: @escaping ([UInt8]) -> Void) {
        loop.preconditionInLoop()
        if !pendingMessages.isEmpty {
            handler(pendingMessages.removeFirst())
            return
        }
        onMessage = { [unowned self] message in
            onMessage = nil
            handler(message)
        }
    }

    /// The application messages as an async sequence, from any thread (set up once per channel).
    public func messages() async throws -> AsyncThrowingStream<[UInt8], Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: [UInt8].self)
        try await loop.submit { [self] in
            setMessageHandler { continuation.yield($0) }
            onClose { failure in
                if let failure, failure != .closed(nil) { continuation.finish(throwing: failure) } else { continuation.finish() }
            }
        }
        return stream
    }

    /// Stops reading the connection until `resumeReading()` (loop thread), so TCP slows the
    /// sender; messages in what was already read are still delivered.
    public func pauseReading() {
        loop.preconditionInLoop()
        connection.pauseReading()
    }

    /// Reads again after `pauseReading()` (loop thread).
    public func resumeReading() {
        loop.preconditionInLoop()
        connection.resumeReading()
    }

    // MARK: Closing

    /// Calls `handler` once the channel is closed, with the failure (nil for a clean close).
    public func onClose(_ handler: @escaping (Failure?) -> Void) {
        loop.preconditionInLoop()
        if finished { handler(failure) } else { closeHandlers.append(handler) }
    }

    /// Closes cleanly: a close frame, then the stream after queued writes flush (loop thread).
    public func close() {
        loop.preconditionInLoop()
        guard !finished else { return }
        if let transport {
            var frame: [UInt8] = []
            if appendFrame(.close, UnsafeRawBufferPointer(start: nil, count: 0), transport, to: &frame) { connection.write(frame) }
        }
        finish(nil)
        connection.closeGracefully()
    }

    /// Closes from any thread.
    public func closeFromAnyThread() { loop.execute { [self] in close() } }

    private func fail(_ error: Failure) {
        guard !finished else { return }
        finish(error)
        connection.close()
    }

    private func connectionClosed(_ error: UVError?) {
        if transport == nil && completion != nil {
            fail(.peerClosedDuringHandshake)
        } else {
            if !finished { finish(error.map { .closed($0) } ?? .closed(nil)) }
        }
    }

    private func finish(_ error: Failure?) {
        guard !finished else { return }
        finished = true
        failure = error
        timer?.cancel()
        timer = nil
        handshake = nil
        let done = completion
        completion = nil
        done?(.failure(error ?? .closed(nil)))
        let waiting = blockedSenders
        blockedSenders = []
        for w in waiting { w.continuation.resume(throwing: error ?? .closed(nil)) }
        let handlers = closeHandlers
        closeHandlers = []
        for h in handlers { h(error) }
        onMessage = nil
        onWritable = nil
    }
}
