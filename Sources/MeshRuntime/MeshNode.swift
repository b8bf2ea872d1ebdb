import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshDHT
import MeshGossip
import MeshMarket
import Metrics

/// What a node counts. Each counter is also reported to swift-metrics as
/// `gpumesh_<name>_total` with a `peer` dimension, except the dropped-datagram counters, which
/// are one metric, `gpumesh_datagrams_dropped_total`, with a `reason` dimension as well.
public enum NodeCounter: String, CaseIterable, Sendable, Codable {
    /// Datagrams received.
    case datagramsIn = "datagrams_in"
    /// Datagrams sent.
    case datagramsOut = "datagrams_out"
    /// Sends the socket refused or dropped.
    case datagramsSendFailed = "datagrams_send_failed"
    /// Outgoing datagrams dropped on purpose by the testnet's injected loss.
    case datagramsDroppedInjected = "datagrams_dropped_injected"
    /// Datagrams dropped: shorter than a sealed header.
    case droppedTooShort = "datagrams_dropped_too_short"
    /// Datagrams dropped: not wire version 1.
    case droppedBadVersion = "datagrams_dropped_bad_version"
    /// Datagrams dropped: reserved flags set.
    case droppedBadFlags = "datagrams_dropped_bad_flags"
    /// Datagrams dropped: the sender key is not a valid point.
    case droppedBadSenderKey = "datagrams_dropped_bad_sender_key"
    /// Datagrams dropped: our own key as sender.
    case droppedFromSelf = "datagrams_dropped_from_self"
    /// Datagrams dropped: timestamp outside the clock-skew window.
    case droppedStale = "datagrams_dropped_stale"
    /// Datagrams dropped: failed authentication (forged, corrupted, or another mesh key).
    case droppedAuthFailed = "datagrams_dropped_auth_failed"
    /// Datagrams dropped: replayed.
    case droppedReplay = "datagrams_dropped_replay"
    /// Datagrams dropped: the replay memory was full.
    case droppedReplayMemoryFull = "datagrams_dropped_replay_memory_full"
    /// Datagrams dropped: authenticated, but the body is not a known message.
    case droppedMalformed = "datagrams_dropped_malformed"
    /// Datagrams dropped: a reply that matched no outstanding request.
    case droppedUnsolicited = "datagrams_dropped_unsolicited"
    /// Pings answered with a pong.
    case probesAnswered = "probes_answered"
    /// Pings sent.
    case probesSent = "probes_sent"
    /// Pongs that answered our pings.
    case probeReplies = "probe_replies"
    /// Pings that got no pong in time.
    case probeTimeouts = "probe_timeouts"
    /// Info requests answered with our contact.
    case infoAnswered = "info_answered"
    /// Cookie challenges sent instead of a larger reply to an unproven address.
    case cookieChallengesSent = "cookie_challenges_sent"
    /// Secure channels established (either side).
    case channelsEstablished = "channels_established"
    /// Secure channel handshakes that failed (either side).
    case channelHandshakesFailed = "channel_handshakes_failed"
    /// Channels closed because their first message named no service this node offers (or none
    /// came within the handshake timeout).
    case channelsRefused = "channels_refused"
    /// Control requests answered.
    case controlRequests = "control_requests"
    /// DHT requests received and handed to the routing layer.
    case dhtRequestsIn = "dht_requests_in"
    /// DHT requests sent (retries included).
    case dhtRequestsOut = "dht_requests_out"
    /// DHT requests that got no answer in time.
    case dhtTimeouts = "dht_timeouts"
    /// DHT requests sent again with an address cookie.
    case dhtCookieRetries = "dht_cookie_retries"
    /// Iterative DHT lookups finished (searches, joins, bucket refreshes).
    case dhtLookups = "dht_lookups"
    /// DHT record reads (GET operations) finished.
    case dhtGets = "dht_gets"
    /// DHT record publishes (PUT operations) finished.
    case dhtPuts = "dht_puts"
    /// Gossip datagrams received and handed to the gossip layer.
    case gossipIn = "gossip_in"
    /// Capability records refused by searches (forged, expired, misplaced, ...).
    case capabilityRecordsRefused = "capability_records_refused"
    /// Heartbeats delivered by gossip but refused (malformed, or replayed: sequence not newer).
    case heartbeatsRefused = "gossip_heartbeats_refused"
    /// Capability announcements delivered by gossip but refused (the record does not verify or
    /// is not the announcer's).
    case announcementsRefused = "gossip_announcements_refused"
    /// Co-signed receipts heard on gossip that verified.
    case receiptsHeard = "gossip_receipts_heard"
    /// Receipts on gossip refused: malformed, a signature that does not verify, or sent by neither party.
    case receiptsRefused = "gossip_receipts_refused"
    /// Reports heard on gossip and kept (they name another peer and decode).
    case reportsHeard = "gossip_reports_heard"
    /// Reports on gossip refused: malformed, or about their own sender.
    case reportsRefused = "gossip_reports_refused"
    /// Job requests received as a provider.
    case jobsRequested = "jobs_requested"
    /// Job requests declined (outside policy, busy, malformed).
    case jobsDeclined = "jobs_declined"
    /// Jobs that ended with a co-signed receipt (either role).
    case jobsCompleted = "jobs_completed"
    /// Jobs that failed or were cancelled after the quote (either role).
    case jobsFailed = "jobs_failed"
    /// Receipts handed to the ledger to store (own ones and gossiped ones; duplicates included).
    case ledgerReceiptsWritten = "ledger_receipts_written"
    /// Reports heard on gossip handed to the ledger to store.
    case ledgerReportsWritten = "ledger_reports_written"

    /// The counter for a datagram dropped by the sealer.
    static func dropped(_ reason: DatagramSealer.Drop) -> NodeCounter {
        switch reason {
        case .tooShort: .droppedTooShort
        case .badVersion: .droppedBadVersion
        case .badFlags: .droppedBadFlags
        case .badSenderKey: .droppedBadSenderKey
        case .fromSelf: .droppedFromSelf
        case .stale: .droppedStale
        case .authFailed: .droppedAuthFailed
        case .replay: .droppedReplay
        case .replayMemoryFull: .droppedReplayMemoryFull
        }
    }

    /// True for the counters of dropped datagrams.
    public var isDrop: Bool { rawValue.hasPrefix("datagrams_dropped_") }

    /// The swift-metrics label and dimensions this counter is reported under for the node `peer`.
    public func metric(peer: String) -> (label: String, dimensions: [(String, String)]) {
        if isDrop { return ("gpumesh_datagrams_dropped_total", [("peer", peer), ("reason", String(rawValue.dropFirst("datagrams_dropped_".count)))]) }
        return ("gpumesh_\(rawValue)_total", [("peer", peer)])
    }

    /// Position in `allCases`, looked up once rather than searched on every datagram.
    private static let indices = Dictionary(uniqueKeysWithValues: allCases.enumerated().map { ($1, $0) })
    var index: Int { Self.indices[self]! }
}

/// Why a node could not start or an operation failed.
public enum NodeError: Error, CustomStringConvertible, Equatable {
    /// A node already answers on this control socket.
    case alreadyRunning(controlSocket: String)
    /// The control socket path exceeds the kernel's limit.
    case controlPathTooLong(path: String, bytes: Int)
    /// Binding a socket failed.
    case bind(what: String, UVError)
    /// No answer arrived in time.
    case timeout(SocketAddress)
    /// The contact has no address for the transport needed.
    case noAddress(Transport)
    /// The peer's answer was not what was asked for.
    case badAnswer(String)
    /// The node has stopped.
    case stopped
    /// This node's own ID does not meet the mesh's ID puzzle.
    case idPuzzle(bits: Int, difficulty: Int)
    /// The request itself was refused (bad value, lifetime, ...).
    case badRequest(String)
    /// The ledger could not be opened or written (the text says why and what to do).
    case ledger(String)

    /// A message for people.
    public var description: String {
        switch self {
        case .alreadyRunning(let p): return "a node is already running with this data directory (control socket \(p) answers)"
        case .controlPathTooLong(let p, let n):
            return "control socket path \(p) is \(n) bytes; the limit is \(StreamEndpoint.maxUnixPathBytes): use a shorter --data-dir"
        case .bind(let what, let e): return "cannot bind \(what): \(e)"
        case .timeout(let a): return "no answer from \(a) (down, unreachable, or in another mesh)"
        case .noAddress(let t): return "the contact has no \(t.rawValue) address"
        case .badAnswer(let why): return "bad answer: \(why)"
        case .stopped: return "the node has stopped"
        case .badRequest(let why): return why
        case .ledger(let why): return why
        case .idPuzzle(let bits, let d):
            return "this identity's ID scores \(bits) puzzle bits but the mesh requires \(d): make one that meets it with `gpumesh init --id-difficulty \(d)` in a new data directory"
        }
    }
}

/// Loss and delay a testnet injects into a node's outgoing datagrams.
public struct Impairment: Sendable, Equatable {
    /// The share of datagrams dropped (0 to 1).
    public var lossRate: Double
    /// Delay added to every datagram, milliseconds.
    public var delayMilliseconds: Int
    /// Seeds the generator that draws the losses.
    public var seed: UInt64

    /// An impairment.
    public init(lossRate: Double, delayMilliseconds: Int, seed: UInt64) {
        self.lossRate = lossRate
        self.delayMilliseconds = delayMilliseconds
        self.seed = seed
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
    /// `public`, or the private mesh key's fingerprint.
    public var mesh: String
    /// The control socket path, if any.
    public var controlSocket: String?
    /// Seconds since the node started.
    public var uptimeSeconds: Double
    /// The software version.
    public var version: String
    /// Counter values by name.
    public var counters: [String: Int]
    /// Peers in the DHT routing table.
    public var dhtPeers: Int = 0
    /// True once the node has joined the DHT (or has no bootstrap peers to join through).
    public var dhtJoined: Bool = false
    /// DHT records stored here.
    public var dhtRecords: Int = 0

    enum CodingKeys: String, CodingKey {
        case peerID = "peer_id", publicKey = "public_key", contact, udp, tcp, mesh
        case controlSocket = "control_socket", uptimeSeconds = "uptime_s", version, counters
        case dhtPeers = "dht_peers", dhtJoined = "dht_joined", dhtRecords = "dht_records"
    }
}

/// The result of a probe.
public struct ProbeResult: Sendable, Equatable {
    /// The peer that answered (proven by the sealed pong).
    public var peerID: PeerID
    /// Measured round-trip time.
    public var roundTrip: Duration
}

/// A GPUMesh peer on an event loop: a UDP socket speaking sealed datagrams, a TCP listener
/// accepting Noise channels, and a control socket.
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
        /// The mesh to join (the public mesh by default).
        public var meshKey: MeshKey
        /// Where to open the control socket; nil for none (embedded nodes).
        public var controlSocketPath: String?
        /// Channel tunables.
        public var channelSettings = SecureChannel.Settings()
        /// Sealed-datagram tunables.
        public var datagramSettings = DatagramSealer.Settings()
        /// The logger (the node adds its peer ID as metadata).
        public var logger: Logger
        /// Peers to join the DHT through (none: this node is the first of its mesh).
        public var bootstrap: [Contact] = []
        /// Gossip tunables; nil takes the defaults.
        public var gossipSettings: Gossip.Settings?
        /// Where the node keeps jobs' work directories, logs and receipts; nil: a fresh
        /// temporary directory, removed when the node stops.
        public var dataDirectory: String?
        /// DHT tunables; nil takes the defaults, with the IP-prefix diversity limit off when the
        /// node advertises a loopback address (a loopback testnet has one prefix).
        public var dhtSettings: Kademlia.Settings?
        /// Loss and delay injected into this node's outgoing datagrams (testnets: the kernel here
        /// has no netem); nil: none.
        public var impairment: Impairment?
        /// Where the node's counters go (a Prometheus registry's factory, say); nil: the
        /// process-wide `MetricsSystem` factory.
        public var metricsFactory: (any MetricsFactory)?

        /// Makes options.
        public init(identity: SigningKey, config: NodeConfig, meshKey: MeshKey = .publicMesh,
                    controlSocketPath: String? = nil, logger: Logger) {
            self.identity = identity
            self.config = config
            self.meshKey = meshKey
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
    /// The mesh this node belongs to.
    public let meshKey: MeshKey

    /// The services channels can ask for, by name (see `serve`).
    private var services: [String: (SecureChannel) -> Void] = [:]

    private(set) var logger: Logger
    let startedAt = EventLoop.monotonicNanoseconds()
    private let udp: UDPSocket
    private let tcp: StreamListener
    private var control: ControlServer?
    private let channelIdentity: ChannelIdentity
    private let channelSettings: SecureChannel.Settings
    private let sealer: DatagramSealer
    /// Injected loss and delay, and the seeded generator that draws them (loop thread).
    private let impairment: Impairment?
    private var impairmentRNG: SplitMix64
    private let cookies: AddressCookies
    private var provenAddresses = LRUCache<SocketAddress, UInt64>(capacity: 4096)
    /// Remote hosts already logged as using another mesh key: said once, at debug level.
    private var loggedMeshMismatch = LRUCache<IPAddress, Bool>(capacity: 256)
    private var counts = [Int](repeating: 0, count: NodeCounter.allCases.count)
    private let metrics: [Counter]
    private var pending: [UInt64: PendingRequest] = [:]
    private(set) var stopped = false
    var dht: DHTShell!
    var gossip: GossipShell!
    /// This node's published offer, while it provides.
    var provider: ProviderState?
    /// Other peers' heartbeats, as heard on gossip.
    var liveness = Gossip.Liveness()
    /// Providers heard announcing their capability records on gossip.
    var capacityView = CapacityView()
    /// Sends this node's heartbeats while it provides.
    var heartbeatTimer: LoopTimer?
    /// The `[provider]` settings (price, slots, job policy).
    let providerConfig: ProviderConfig
    /// Where jobs, logs and receipts live.
    public let dataDirectory: String
    /// True when `dataDirectory` is a temporary one this node removes when it stops.
    private let ownsDataDirectory: Bool
    /// Jobs in both roles.
    var jobs: JobsService!
    /// Receipts, reports, experience and reputation.
    var ledger: LedgerService!

    /// How long an address stays proven after it returned a valid cookie (ms).
    static let proofLifetimeMilliseconds: UInt64 = 10 * 60_000

    private struct PendingRequest {
        enum Kind { case ping, info }
        let kind: Kind
        let target: SocketAddress
        let peer: PublicKey
        let timer: LoopTimer?
        var cookieRetried = false
        let completion: (Result<DatagramMessage, NodeError>) -> Void
    }

    /// Wall-clock milliseconds since the Unix epoch (the sealed-datagram timestamp clock).
    static func wallClockMilliseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
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
        meshKey = options.meshKey
        let id = PeerID(publicKey: options.identity.publicKey)
        peerID = id
        logger = options.logger
        logger[metadataKey: "peer"] = "\(id.short)"
        let factory = options.metricsFactory ?? MetricsSystem.factory
        metrics = NodeCounter.allCases.map {
            let (label, dimensions) = $0.metric(peer: id.short)
            return Counter(label: label, dimensions: dimensions, factory: factory)
        }
        channelIdentity = ChannelIdentity(options.identity)
        channelSettings = options.channelSettings
        impairment = options.impairment
        impairmentRNG = SplitMix64(seed: options.impairment?.seed ?? 0)
        sealer = DatagramSealer(identity: options.identity, meshKey: options.meshKey, settings: options.datagramSettings,
                                now: Self.wallClockMilliseconds, random: SecureRandom.bytes)
        cookies = AddressCookies(secret: SecureRandom.secret(32), now: Self.wallClockMilliseconds)

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
        tcpAddress = tcp.tcpAddress!  // a listener bound to a TCP endpoint always has one

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
        providerConfig = options.config.provider
        if let dir = options.dataDirectory {
            dataDirectory = dir
            ownsDataDirectory = false
        } else {
            dataDirectory = NSTemporaryDirectory() + "gpumesh-node-" + Hex.encode(SecureRandom.bytes(6))
            ownsDataDirectory = true
        }
        var dhtSettings = options.dhtSettings ?? Kademlia.Settings()
        if options.dhtSettings == nil {
            dhtSettings.idDifficulty = options.config.idDifficulty
            dhtSettings.disjointPaths = options.config.disjointPaths
        }
        guard id.meetsPuzzle(dhtSettings.idDifficulty) else {
            udp.close(); tcp.close(); control?.close()
            throw NodeError.idPuzzle(bits: id.puzzleBits, difficulty: dhtSettings.idDifficulty)
        }
        if options.dhtSettings == nil {
            if let n = options.config.ipDiversityLimit {
                dhtSettings.maxPerPrefixPerBucket = n == 0 ? nil : n
            } else if contact.address(for: .udp)?.ip.isLoopback == true {
                dhtSettings.maxPerPrefixPerBucket = nil
            }
        }
        let instance = Kademlia.Instance(local: contact, settings: dhtSettings, seed: SecureRandom.uint64(), signer: options.identity)
        dht = DHTShell(instance: instance, loop: loop, tcpPort: contact.address(for: .tcp)?.port ?? 0, logger: logger,
                       count: { [unowned self] in bump($0) },
                       send: { [unowned self] body, peer, address, cookie in sendBody(body, to: peer, at: address, cookie: cookie) })
        gossip = GossipShell(instance: Gossip.Instance(local: contact, signer: options.identity,
                                                       settings: options.gossipSettings ?? Gossip.Settings(), seed: SecureRandom.uint64()),
                             loop: loop,
                             candidates: { [unowned self] in (0..<256).flatMap { self.dht.instance.table.nodes(inBucket: $0).map(\.contact) } },
                             lookup: { [unowned self] in dht.instance.table.node($0)?.contact },
                             send: { [unowned self] body, peer, address in sendBody(body, to: peer, at: address, cookie: nil) },
                             open: { [unowned self] contact, done in openChannel(to: contact, service: ChannelService.gossip, done) })
        do {
            // The data directory first: the ledger and the jobs live in it.
            try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            try startServing()
            try dht.start()
            try gossip.start()
            serve(ChannelService.gossip) { [unowned self] in gossip.attach($0) }
            try startGossipApplications(heartbeatSeconds: options.config.provider.heartbeatIntervalSeconds)
            ledger = try LedgerService(node: self, friends: options.config.friends)
            ledger.start()
            jobs = try JobsService(node: self)
            serve(ChannelService.jobs) { [unowned self] in jobs.accept($0) }
        } catch {
            // Whatever started is stopped, so no timer or handle outlives a node that never was.
            stopOnLoop()
            throw error
        }
        dht.join(through: options.bootstrap)
        logger.info("node started", metadata: ["udp": "\(udpAddress)", "tcp": "\(tcpAddress)",
                                               "mesh": "\(meshKey.isPublicMesh ? "public" : meshKey.fingerprint)"])
    }

    private func startServing() throws {
        try udp.startReceiving { [unowned self] bytes, from in self.received(bytes, from: from) }
        tcp.setAcceptHandler { [unowned self] connection in self.accepted(connection) }
        control?.register("node.status") { [unowned self] _, reply in
            reply(Result { try self.statusJSON() }.mapError { .serverError("\($0)") })
        }
        if let control {
            registerDHTControl(control)
            registerMarketControl(control)
            registerGossipControl(control)
            registerJobsControl(control)
        }
        control?.register("node.ping") { [unowned self] params, reply in
            guard let text = params?["contact"]?.stringValue, let contact = try? Contact(parsing: text) else {
                reply(.failure(.invalidParams("expected {\"contact\": \"gpm1:...\"}")))
                return
            }
            self.probe(contact, timeout: .seconds(2)) { result in
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

    func bump(_ counter: NodeCounter, by n: Int = 1) {
        let i = counter.index
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

    // MARK: Datagrams

    private func received(_ bytes: UnsafeRawBufferPointer, from: SocketAddress) {
        bump(.datagramsIn)
        let opened: DatagramSealer.Opened
        switch sealer.open(bytes) {
        case .failure(let reason):
            bump(.dropped(reason))
            if reason == .authFailed { logMeshMismatchOnce(from.ip, "datagrams fail authentication") }
            return
        case .success(let o):
            opened = o
        }
        if let first = opened.body.first, Kademlia.Wire.isDHT(first) {
            receivedDHT(opened, from: from, datagramBytes: bytes.count)
            return
        }
        if let first = opened.body.first, Gossip.Wire.isGossip(first) {
            guard let sender = Contact.fromEndpoint(publicKey: opened.sender, udp: from, tcpPort: 0),
                  gossip.received(opened.body, from: sender, proven: isProven(from), datagramBytes: bytes.count) else {
                bump(.droppedMalformed)
                return
            }
            bump(.gossipIn)
            return
        }
        guard let message = DatagramMessage(decoding: opened.body) else {
            bump(.droppedMalformed)
            return
        }
        switch message {
        case .ping(let nonce):
            // Same size as the ping: answering an unproven address amplifies nothing.
            send(.pong(nonce: nonce), to: opened.sender, at: from)
            bump(.probesAnswered)
        case .infoRequest(let nonce):
            if let cookie = opened.cookie, cookies.verify(cookie, from: from) { markProven(from) }
            if isProven(from) {
                send(.infoReply(nonce: nonce, contact: contact.description), to: opened.sender, at: from)
                bump(.infoAnswered)
            } else {
                // The reply would be larger than the request: ask the sender to prove its address first.
                send(.cookieChallenge(nonce: nonce, cookie: cookies.make(for: from)), to: opened.sender, at: from)
                bump(.cookieChallengesSent)
            }
        case .pong(let nonce), .infoReply(let nonce, _):
            guard let request = pending[nonce], request.target == from, request.peer == opened.sender,
                  (request.kind == .ping) == (message.kind == .pong) else {
                bump(.droppedUnsolicited)
                return
            }
            pending[nonce] = nil
            request.timer?.cancel()
            request.completion(.success(message))
        case .cookieChallenge(let nonce, let cookie):
            if pending[nonce] == nil {
                if !dht.challenged(nonce, cookie: cookie, from: opened.sender, at: from) { bump(.droppedUnsolicited) }
                return
            }
            guard var request = pending[nonce], request.kind == .info, request.target == from, request.peer == opened.sender,
                  !request.cookieRetried else {
                bump(.droppedUnsolicited)
                return
            }
            request.cookieRetried = true
            pending[nonce] = request
            send(.infoRequest(nonce: nonce), to: request.peer, at: from, cookie: cookie)
        }
    }

    private func receivedDHT(_ opened: DatagramSealer.Opened, from: SocketAddress, datagramBytes: Int) {
        guard let (message, tcpPort) = Kademlia.Wire.decode(opened.body),
              let sender = Contact.fromEndpoint(publicKey: opened.sender, udp: from, tcpPort: tcpPort) else {
            bump(.droppedMalformed)
            return
        }
        if message.isResponse {
            // It answered a request ID only the peer at that address could have read: proven.
            if dht.response(message, from: sender, at: from) { markProven(from) } else { bump(.droppedUnsolicited) }
            return
        }
        if let cookie = opened.cookie, cookies.verify(cookie, from: from) { markProven(from) }
        let proven = isProven(from)
        let largestAnswer = DatagramSealer.overhead + Kademlia.Wire.maxBody
        if !proven, Kademlia.Wire.amplifies(message.body), datagramBytes * Kademlia.Wire.amplificationFactor < largestAnswer {
            // The answer could be more than three times the request: ask the sender to prove its
            // address first. (Padded requests are answered at once, and still stay out of the
            // routing table until the address is proven.)
            send(.cookieChallenge(nonce: message.requestID, cookie: cookies.make(for: from)), to: opened.sender, at: from)
            bump(.cookieChallengesSent)
            return
        }
        dht.request(message, from: sender, proven: proven)
    }

    private func markProven(_ address: SocketAddress) {
        provenAddresses.insert(Self.wallClockMilliseconds() + Self.proofLifetimeMilliseconds, for: address)
    }

    private func logMeshMismatchOnce(_ host: IPAddress, _ what: String) {
        guard loggedMeshMismatch.value(for: host) == nil else { return }
        loggedMeshMismatch.insert(true, for: host)
        logger.debug("\(what) from \(host): it probably uses another mesh key (logged once per host)")
    }

    private func isProven(_ address: SocketAddress) -> Bool {
        guard let until = provenAddresses.peek(address) else { return false }
        return until > Self.wallClockMilliseconds()
    }

    private func send(_ message: DatagramMessage, to peer: PublicKey, at address: SocketAddress, cookie: [UInt8]? = nil) {
        sendBody(message.encoded(), to: peer, at: address, cookie: cookie)
    }

    private func sendBody(_ body: [UInt8], to peer: PublicKey, at address: SocketAddress, cookie: [UInt8]?) {
        guard let datagram = sealer.seal(body, to: peer, cookie: cookie) else {
            bump(.datagramsSendFailed)
            return
        }
        if let impairment {
            if impairment.lossRate > 0, Double(impairmentRNG.next() >> 11) / Double(1 << 53) < impairment.lossRate {
                bump(.datagramsDroppedInjected)
                return
            }
            if impairment.delayMilliseconds > 0 {
                _ = try? loop.schedule(after: .milliseconds(impairment.delayMilliseconds)) { [weak self] in
                    guard let self, !stopped else { return }
                    bump(udp.send(datagram, to: address) ? .datagramsOut : .datagramsSendFailed)
                }
                return
            }
        }
        bump(udp.send(datagram, to: address) ? .datagramsOut : .datagramsSendFailed)
    }

    private func request(_ kind: PendingRequest.Kind, _ contact: Contact, timeout: Duration,
                         _ completion: @escaping (Result<DatagramMessage, NodeError>) -> Void) {
        loop.preconditionInLoop()
        guard !stopped else { completion(.failure(.stopped)); return }
        guard let address = contact.address(for: .udp) else { completion(.failure(.noAddress(.udp))); return }
        var nonce = SecureRandom.uint64()
        while pending[nonce] != nil { nonce = SecureRandom.uint64() }
        let timer = try? loop.schedule(after: timeout) { [self] in
            guard let request = pending.removeValue(forKey: nonce) else { return }
            if request.kind == .ping { bump(.probeTimeouts) }
            request.completion(.failure(.timeout(address)))
        }
        pending[nonce] = PendingRequest(kind: kind, target: address, peer: contact.publicKey, timer: timer, completion: completion)
        if kind == .ping { bump(.probesSent) }
        send(kind == .ping ? .ping(nonce: nonce) : .infoRequest(nonce: nonce), to: contact.publicKey, at: address)
    }

    /// Sends a sealed ping to `contact` and calls `completion` with the pong or the failure (loop thread).
    public func probe(_ contact: Contact, timeout: Duration = .seconds(2),
                      _ completion: @escaping (Result<ProbeResult, NodeError>) -> Void) {
        let sentAt = EventLoop.monotonicNanoseconds()
        request(.ping, contact, timeout: timeout) { [self] result in
            completion(result.map { _ in
                bump(.probeReplies)
                return ProbeResult(peerID: contact.peerID, roundTrip: .nanoseconds(Int64(EventLoop.monotonicNanoseconds() - sentAt)))
            })
        }
    }

    /// Pings `contact` and waits for its sealed pong (from any thread).
    public func ping(_ contact: Contact, timeout: Duration = .seconds(2)) async throws -> ProbeResult {
        try await onLoop { node, done in node.probe(contact, timeout: timeout, done) }
    }

    /// Asks `contact` for its current contact string, proving our address with a cookie if asked
    /// (from any thread).
    public func requestInfo(_ contact: Contact, timeout: Duration = .seconds(2)) async throws -> Contact {
        try await onLoop { node, done in
            node.request(.info, contact, timeout: timeout) { result in
                done(result.flatMap { message in
                    guard case .infoReply(_, let text) = message, let c = try? Contact(parsing: text) else {
                        return .failure(.badAnswer("info reply is not a contact"))
                    }
                    guard c.publicKey == contact.publicKey else { return .failure(.badAnswer("contact names another key")) }
                    return .success(c)
                })
            }
        }
    }

    /// Runs a loop-side operation from any thread and waits for its completion.
    func onLoop<T: Sendable>(_ body: @escaping @Sendable (MeshNode, @escaping (Result<T, NodeError>) -> Void) -> Void) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            let accepted = loop.execute { [self] in body(self) { continuation.resume(with: $0.mapError { $0 }) } }
            if !accepted { continuation.resume(throwing: NodeError.stopped) }
        }
    }

    // MARK: Channels

    private func accepted(_ connection: StreamConnection) {
        let remote = connection.remoteAddress
        SecureChannel.accept(connection, identity: channelIdentity, meshKey: meshKey, settings: channelSettings) { [self] result in
            switch result {
            case .success(let channel):
                bump(.channelsEstablished)
                logger.debug("channel accepted", metadata: ["remote": "\(channel.remotePeerID!.short)"])
                dispatch(channel)
            case .failure(let failure):
                bump(.channelHandshakesFailed)
                if failure == .noise(.decryptFailed), let remote {
                    logMeshMismatchOnce(remote.ip, "channel handshakes fail")
                } else {
                    logger.trace("channel handshake failed", metadata: ["reason": "\(failure)"])
                }
            }
        }
    }

    /// Hands channels whose first message is `service` to `handler` (loop thread); the handler
    /// owns the channel from then on (messages after the name wait for its message handler).
    public func serve(_ service: String, _ handler: @escaping (SecureChannel) -> Void) {
        loop.preconditionInLoop()
        services[service] = handler
    }

    /// Reads an accepted channel's service name and hands it over, or closes it.
    private func dispatch(_ channel: SecureChannel) {
        let timer = try? loop.schedule(after: channelSettings.handshakeTimeout) { [weak self, weak channel] in
            guard let channel, let self else { return }
            bump(.channelsRefused)
            channel.close()
        }
        channel.onClose { _ in timer?.cancel() }
        channel.takeNextMessage { [weak self, unowned channel] first in
            timer?.cancel()
            guard let self else { return }
            guard let name = ChannelService.name(first), let handler = services[name] else {
                bump(.channelsRefused)
                logger.debug("channel refused: unknown service", metadata: ["remote": "\(channel.remotePeerID!.short)"])
                channel.close()
                return
            }
            handler(channel)
        }
    }

    /// Opens a secure channel to `contact` for `service` (loop thread): both identities are
    /// proven and the service named before `completion` runs (on the loop).
    public func openChannel(to contact: Contact, service: String, _ completion: @escaping (Result<SecureChannel, SecureChannel.Failure>) -> Void) {
        loop.preconditionInLoop()
        SecureChannel.connect(on: loop, to: contact, identity: channelIdentity, meshKey: meshKey, settings: channelSettings) { [self] result in
            switch result {
            case .success(let channel):
                bump(.channelsEstablished)
                channel.send(Array(service.utf8))
                completion(.success(channel))
            case .failure(let failure):
                bump(.channelHandshakesFailed)
                completion(.failure(failure))
            }
        }
    }

    /// Opens a secure channel to `contact` for `service` (from any thread).
    public func openChannel(to contact: Contact, service: String) async throws -> SecureChannel {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<SecureChannel, Error>) in
            let accepted = loop.execute { [self] in
                openChannel(to: contact, service: service) { continuation.resume(with: $0.mapError { $0 }) }
            }
            if !accepted { continuation.resume(throwing: NodeError.stopped) }
        }
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
                          udp: udpAddress.description, tcp: tcpAddress.description,
                          mesh: meshKey.isPublicMesh ? "public" : meshKey.fingerprint, controlSocket: controlSocketPath,
                          uptimeSeconds: (uptime * 1000).rounded() / 1000, version: GPUMeshVersion.current, counters: values,
                          dhtPeers: dht.instance.table.count, dhtJoined: dht.joined || dht.seeds.isEmpty,
                          dhtRecords: dht.instance.store.count)
    }

    private func statusJSON() throws -> JSONValue { try JSONValue(encoding: makeStatus()) }

    /// Stops the node: withdraws its offer if it provides (waiting at most `withdrawTimeout` for
    /// the tombstones), closes its sockets, removes the control socket, fails outstanding requests.
    public func stop() async {
        _ = try? await withdrawOffer()
        _ = try? await loop.submit { self.stopOnLoop() }
    }

    private func stopOnLoop() {
        guard !stopped else { return }
        stopped = true
        control?.close()
        control = nil
        dht.stop()
        heartbeatTimer?.cancel()
        jobs?.stop()
        ledger?.stop()
        gossip.stop()
        udp.close()
        tcp.close()
        let waiting = pending
        pending = [:]
        for p in waiting.values {
            p.timer?.cancel()
            p.completion(.failure(.stopped))
        }
        if ownsDataDirectory { try? FileManager.default.removeItem(atPath: dataDirectory) }
        logger.info("node stopped")
    }
}
