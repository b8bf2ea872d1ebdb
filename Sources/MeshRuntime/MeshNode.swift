import Foundation
import Logging
import MeshCore
import MeshCrypto
import Metrics

/// What a node counts. Each counter is also reported to swift-metrics as
/// `gpumesh_<name>_total` with a `peer` dimension.
public enum NodeCounter: String, CaseIterable, Sendable, Codable {
    /// Datagrams received.
    case datagramsIn = "datagrams_in"
    /// Datagrams sent.
    case datagramsOut = "datagrams_out"
    /// Datagrams dropped because they were not a well-formed message.
    case datagramsDroppedMalformed = "datagrams_dropped_malformed"
    /// Pongs that matched no outstanding ping (late, forged or from the wrong address).
    case datagramsDroppedUnsolicited = "datagrams_dropped_unsolicited"
    /// Sends the socket refused or dropped.
    case datagramsSendFailed = "datagrams_send_failed"
    /// Pings answered with a pong.
    case probesAnswered = "probes_answered"
    /// Pings sent.
    case probesSent = "probes_sent"
    /// Pongs that answered our pings.
    case probeReplies = "probe_replies"
    /// Pings that got no pong in time.
    case probeTimeouts = "probe_timeouts"
    /// TCP connections accepted.
    case tcpAccepted = "tcp_accepted"
    /// Control requests answered.
    case controlRequests = "control_requests"
}

/// Why a node could not start or an operation failed.
public enum NodeError: Error, CustomStringConvertible, Equatable {
    /// A node already answers on this control socket.
    case alreadyRunning(controlSocket: String)
    /// The control socket path exceeds the kernel's limit.
    case controlPathTooLong(path: String, bytes: Int)
    /// Binding a socket failed.
    case bind(what: String, UVError)
    /// No pong arrived in time.
    case probeTimeout(SocketAddress)
    /// The TCP banner was missing or malformed.
    case badBanner(SocketAddress)
    /// The node has stopped.
    case stopped

    /// A message for people.
    public var description: String {
        switch self {
        case .alreadyRunning(let p): return "a node is already running with this data directory (control socket \(p) answers)"
        case .controlPathTooLong(let p, let n):
            return "control socket path \(p) is \(n) bytes; the limit is \(StreamEndpoint.maxUnixPathBytes): use a shorter --data-dir"
        case .bind(let what, let e): return "cannot bind \(what): \(e)"
        case .probeTimeout(let a): return "no answer from \(a)"
        case .badBanner(let a): return "\(a) did not send a GPUMesh banner"
        case .stopped: return "the node has stopped"
        }
    }
}

/// A node's status, as `node.status` returns it over the control socket.
public struct NodeStatus: Codable, Sendable, Equatable {
    /// The node's peer ID (hex).
    public var peerID: String
    /// The node's Ed25519 public key (hex).
    public var publicKey: String
    /// The contact string other peers can use.
    public var contact: String
    /// The bound UDP address.
    public var udp: String
    /// The bound TCP address.
    public var tcp: String
    /// The control socket path, if any.
    public var controlSocket: String?
    /// Seconds since the node started.
    public var uptimeSeconds: Double
    /// The software version.
    public var version: String
    /// Counter values by name.
    public var counters: [String: Int]

    enum CodingKeys: String, CodingKey {
        case peerID = "peer_id", publicKey = "public_key", contact, udp, tcp
        case controlSocket = "control_socket", uptimeSeconds = "uptime_s", version, counters
    }
}

/// The result of a probe.
public struct ProbeResult: Sendable, Equatable {
    /// The ID the answering peer claimed.
    public var peerID: PeerID
    /// Measured round-trip time.
    public var roundTrip: Duration
}

/// A GPUMesh peer running on an event loop: its UDP socket, TCP listener and control socket.
///
/// Loop-confined state; the `async` methods may be called from any thread. Many nodes can share
/// one loop (that is how a demo or testnet fits in one process).
public final class MeshNode: @unchecked Sendable {
    /// What a node needs to start.
    public struct Options: Sendable {
        /// The node's long-term identity.
        public var identity: SigningKey
        /// Listen addresses and other settings.
        public var config: NodeConfig
        /// Where to open the control socket; nil for none (embedded nodes).
        public var controlSocketPath: String?
        /// The logger (the node adds its peer ID as metadata).
        public var logger: Logger

        /// Makes options.
        public init(identity: SigningKey, config: NodeConfig, controlSocketPath: String? = nil, logger: Logger) {
            self.identity = identity
            self.config = config
            self.controlSocketPath = controlSocketPath
            self.logger = logger
        }
    }

    /// The loop the node runs on.
    public let loop: EventLoop
    /// The node's identity.
    public let identity: SigningKey
    /// The node's peer ID.
    public let peerID: PeerID
    /// How other peers reach this node.
    public let contact: Contact
    /// The bound UDP address.
    public let udpAddress: SocketAddress
    /// The bound TCP address.
    public let tcpAddress: SocketAddress
    /// The control socket path, if one is open.
    public let controlSocketPath: String?

    private var logger: Logger
    private let startedAt = EventLoop.monotonicNanoseconds()
    private let udp: UDPSocket
    private let tcp: StreamListener
    private var control: ControlServer?
    private var counts = [Int](repeating: 0, count: NodeCounter.allCases.count)
    private let metrics: [Counter]
    private var pendingProbes: [UInt64: PendingProbe] = [:]
    private var stopped = false

    private struct PendingProbe {
        let target: SocketAddress
        let sentAt: UInt64
        let timer: LoopTimer?
        let completion: (Result<ProbeResult, NodeError>) -> Void
    }

    /// Starts a node on `loop`: binds UDP and TCP, opens the control socket, starts serving.
    public static func start(on loop: EventLoop, options: Options) async throws -> MeshNode {
        if let path = options.controlSocketPath { try await prepareControlSocket(path, on: loop) }
        return try await loop.submit { try MeshNode(loop: loop, options: options) }
    }

    /// Refuses to start over a live node's control socket and removes a stale one.
    private static func prepareControlSocket(_ path: String, on loop: EventLoop) async throws {
        guard path.utf8.count <= StreamEndpoint.maxUnixPathBytes else {
            throw NodeError.controlPathTooLong(path: path, bytes: path.utf8.count)
        }
        guard FileManager.default.fileExists(atPath: path) else { return }
        do {
            let probe = try await StreamConnection.connect(on: loop, to: .unix(path), timeout: .seconds(2))
            try await loop.submit { probe.close() }
            throw NodeError.alreadyRunning(controlSocket: path)
        } catch let error as UVError where error.code == UVError.connectionRefused {
            unlink(path)  // left behind by a node that was killed
        }
    }

    private init(loop: EventLoop, options: Options) throws {
        loop.preconditionInLoop()
        self.loop = loop
        identity = options.identity
        let id = PeerID(publicKey: options.identity.publicKey)
        peerID = id
        logger = options.logger
        logger[metadataKey: "peer"] = "\(id.short)"
        metrics = NodeCounter.allCases.map { Counter(label: "gpumesh_\($0.rawValue)_total", dimensions: [("peer", id.short)]) }

        do { udp = try UDPSocket.bind(on: loop, to: options.config.udpListen) }
        catch { throw NodeError.bind(what: "UDP \(options.config.udpListen)", error) }
        let tcpListener: StreamListener
        do {
            tcpListener = try StreamListener.listen(on: loop, at: .tcp(options.config.tcpListen)) { _ in }
        } catch {
            udp.close()
            throw NodeError.bind(what: "TCP \(options.config.tcpListen)", error)
        }
        tcp = tcpListener
        udpAddress = udp.localAddress
        guard case .tcp(let boundTCP) = tcp.endpoint else { preconditionFailure("TCP listener without TCP endpoint") }
        tcpAddress = boundTCP

        var advertised = options.config.advertise
        if advertised.isEmpty {
            advertised = [TransportAddress(.udp, udpAddress.advertisable), TransportAddress(.tcp, tcpAddress.advertisable)]
        }
        do {
            contact = try Contact(publicKey: identity.publicKey, addresses: advertised)
        } catch {
            udp.close(); tcp.close()
            throw error
        }

        if let path = options.controlSocketPath {
            do {
                control = try ControlServer(on: loop, path: path, logger: logger)
            } catch {
                udp.close(); tcp.close()
                throw error
            }
        }
        controlSocketPath = options.controlSocketPath
        try startServing()
        logger.info("node started", metadata: ["udp": "\(udpAddress)", "tcp": "\(tcpAddress)"])
    }

    private func startServing() throws {
        try udp.startReceiving { [unowned self] bytes, from in self.received(bytes, from: from) }
        tcp.setAcceptHandler { [unowned self] connection in self.accepted(connection) }
        control?.register("node.status") { [unowned self] _, reply in
            reply(Result { try self.statusJSON() }.mapError { .serverError("\($0)") })
        }
        control?.register("node.ping") { [unowned self] params, reply in
            guard let text = params?["address"]?.stringValue, let address = try? SocketAddress(parsing: text) else {
                reply(.failure(.invalidParams("expected {\"address\": \"HOST:PORT\"}")))
                return
            }
            self.probe(address, timeout: .seconds(2)) { result in
                switch result {
                case .success(let r):
                    reply(.success(.object(["peer_id": .string(r.peerID.hex), "rtt_ms": .double(r.roundTrip.milliseconds)])))
                case .failure(let e):
                    reply(.failure(.serverError("\(e)")))
                }
            }
        }
    }

    // MARK: Counters

    private func bump(_ counter: NodeCounter, by n: Int = 1) {
        let i = NodeCounter.allCases.firstIndex(of: counter)!
        counts[i] += n
        metrics[i].increment(by: Int64(n))
    }

    /// The current counter values (loop thread).
    public var counters: [NodeCounter: Int] {
        loop.preconditionInLoop()
        var out: [NodeCounter: Int] = [:]
        for (i, c) in NodeCounter.allCases.enumerated() { out[c] = counts[i] + (c == .controlRequests ? (control?.requests ?? 0) : 0) }
        return out
    }

    // MARK: UDP

    private func received(_ bytes: UnsafeRawBufferPointer, from: SocketAddress) {
        bump(.datagramsIn)
        guard let probe = ProbeMessage(decoding: bytes) else {
            bump(.datagramsDroppedMalformed)
            logger.trace("dropped malformed datagram", metadata: ["from": "\(from)", "bytes": "\(bytes.count)"])
            return
        }
        switch probe.kind {
        case .ping:
            // Same size as the ping: answering an unproven address amplifies nothing.
            send(ProbeMessage(kind: .pong, nonce: probe.nonce, sender: peerID).encoded(), to: from)
            bump(.probesAnswered)
        case .pong:
            guard let pending = pendingProbes[probe.nonce], pending.target == from else {
                bump(.datagramsDroppedUnsolicited)
                return
            }
            pendingProbes[probe.nonce] = nil
            pending.timer?.cancel()
            bump(.probeReplies)
            let rtt = EventLoop.monotonicNanoseconds() - pending.sentAt
            pending.completion(.success(ProbeResult(peerID: probe.sender, roundTrip: .nanoseconds(Int64(rtt)))))
        }
    }

    private func send(_ bytes: [UInt8], to address: SocketAddress) {
        if udp.send(bytes, to: address) { bump(.datagramsOut) } else { bump(.datagramsSendFailed) }
    }

    /// Sends a probe to `address` and calls `completion` with the pong or the failure (loop thread).
    public func probe(_ address: SocketAddress, timeout: Duration = .seconds(2),
                      _ completion: @escaping (Result<ProbeResult, NodeError>) -> Void) {
        loop.preconditionInLoop()
        guard !stopped else { completion(.failure(.stopped)); return }
        var nonce = SecureRandom.uint64()
        while pendingProbes[nonce] != nil { nonce = SecureRandom.uint64() }
        let timer = try? loop.schedule(after: timeout) { [self] in
            guard let pending = pendingProbes.removeValue(forKey: nonce) else { return }
            bump(.probeTimeouts)
            pending.completion(.failure(.probeTimeout(address)))
        }
        pendingProbes[nonce] = PendingProbe(target: address, sentAt: EventLoop.monotonicNanoseconds(), timer: timer, completion: completion)
        bump(.probesSent)
        send(ProbeMessage(kind: .ping, nonce: nonce, sender: peerID).encoded(), to: address)
    }

    /// Sends a probe to `address` and waits for the pong (from any thread).
    public func ping(_ address: SocketAddress, timeout: Duration = .seconds(2)) async throws -> ProbeResult {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<ProbeResult, Error>) in
            let accepted = loop.execute { [self] in
                probe(address, timeout: timeout) { continuation.resume(with: $0.mapError { $0 }) }
            }
            if !accepted { continuation.resume(throwing: NodeError.stopped) }
        }
    }

    // MARK: TCP

    private func accepted(_ connection: StreamConnection) {
        bump(.tcpAccepted)
        // Wire version 0: announce our ID and close. Noise channels replace this.
        connection.write(TCPBanner.encode(peerID))
        connection.closeGracefully()
    }

    /// Connects to a node's TCP address and returns the peer ID its banner claims (from any thread).
    public func tcpHello(_ address: SocketAddress, timeout: Duration = .seconds(5)) async throws -> PeerID {
        let connection = try await StreamConnection.connect(on: loop, to: .tcp(address), timeout: timeout)
        let (stream, continuation) = AsyncStream.makeStream(of: [UInt8].self)
        try await loop.submit {
            var received: [UInt8] = []
            connection.startReading { event in
                if case .data(let bytes) = event {
                    received.append(contentsOf: bytes.prefix(TCPBanner.size - received.count))
                    if received.count == TCPBanner.size { continuation.yield(received); connection.close() }
                }
            }
            let timer = try? self.loop.schedule(after: timeout) { connection.close() }
            connection.onClose { _ in timer?.cancel(); continuation.finish() }
        }
        for await banner in stream {
            if let id = TCPBanner.decode(banner) { return id }
            break
        }
        throw NodeError.badBanner(address)
    }

    // MARK: Status and lifecycle

    /// The node's status (from any thread).
    public func status() async throws -> NodeStatus {
        try await loop.submit { try self.makeStatus() }
    }

    private func makeStatus() throws -> NodeStatus {
        let uptime = Double(EventLoop.monotonicNanoseconds() - startedAt) / 1e9
        var values: [String: Int] = [:]
        for (counter, value) in counters { values[counter.rawValue] = value }
        return NodeStatus(peerID: peerID.hex, publicKey: Hex.encode(identity.publicKey.bytes), contact: contact.description,
                          udp: udpAddress.description, tcp: tcpAddress.description, controlSocket: controlSocketPath,
                          uptimeSeconds: (uptime * 1000).rounded() / 1000, version: GPUMeshVersion.current, counters: values)
    }

    private func statusJSON() throws -> JSONValue {
        let data = try JSONEncoder().encode(makeStatus())
        return try JSONDecoder().decode(JSONValue.self, from: data)
    }

    /// Stops the node: closes its sockets, removes the control socket, fails outstanding probes.
    public func stop() async {
        _ = try? await loop.submit { self.stopOnLoop() }
    }

    private func stopOnLoop() {
        guard !stopped else { return }
        stopped = true
        control?.close()
        control = nil
        udp.close()
        tcp.close()
        let pending = pendingProbes
        pendingProbes = [:]
        for p in pending.values {
            p.timer?.cancel()
            p.completion(.failure(.stopped))
        }
        logger.info("node stopped")
    }
}

