import Logging
import MeshCore
import MeshCrypto
import MeshGossip

/// Drives a `Gossip.Instance` on a node's loop: datagram bodies in, directives out as sealed
/// datagrams and deliveries to subscribers; one timer for the instance's next wake; the sample
/// refreshed from the DHT routing table every second. A message too large for one datagram
/// travels over a secure channel (service `gpumesh/gossip/1`, one PUSH body per channel
/// message), opened on demand and closed after 30 s unused. Loop-confined.
final class GossipShell {
    typealias Send = (_ body: [UInt8], _ to: PublicKey, _ at: SocketAddress) -> Void
    typealias Open = (_ contact: Contact, _ completion: @escaping (Result<SecureChannel, SecureChannel.Failure>) -> Void) -> Void

    /// An outbound channel to one peer: connecting (with what waits for it) or open.
    private enum Link {
        case connecting([[UInt8]])
        case open(SecureChannel)
    }

    /// Channels unused this long are closed (ms).
    static let channelIdle: UInt64 = 30_000
    /// Bodies queued behind one connecting channel at most.
    static let maxQueued = 32

    private(set) var instance: Gossip.Instance
    private let loop: EventLoop
    private let send: Send
    private let candidates: () -> [Contact]
    private var wakeTimer: LoopTimer?
    private var armedFor: UInt64 = .max
    private var refreshTimer: LoopTimer?
    private var subscribers: [Gossip.Topic: [(Gossip.Message) -> Void]] = [:]
    private var stopped = false
    private let open: Open
    private let lookup: (PeerID) -> Contact?
    private var links: [PeerID: Link] = [:]
    private var inboundChannels: [ObjectIdentifier: SecureChannel] = [:]
    private var lastUsed: [ObjectIdentifier: UInt64] = [:]
    /// Messages sent over channels.
    private(set) var channelPushesSent = 0
    /// Messages received over channels.
    private(set) var channelPushesReceived = 0

    /// `lookup` finds a peer's contact (with its TCP address) in the routing table; `open`
    /// opens a gossip channel.
    init(instance: Gossip.Instance, loop: EventLoop, candidates: @escaping () -> [Contact], lookup: @escaping (PeerID) -> Contact?,
         send: @escaping Send, open: @escaping Open) {
        self.instance = instance
        self.loop = loop
        self.candidates = candidates
        self.lookup = lookup
        self.send = send
        self.open = open
    }

    func start() throws {
        refreshTimer = try loop.schedule(after: .milliseconds(100), repeating: .seconds(1)) { [unowned self] in
            apply(instance.setCandidates(candidates(), now: DHTShell.now()))
            closeIdleChannels()
        }
        arm()  // the wake timer exists from the start: a node's handle count is steady from then on
    }

    func stop() {
        stopped = true
        refreshTimer?.cancel()
        wakeTimer?.cancel()
        subscribers = [:]
        for case .open(let channel) in links.values { channel.close() }
        for channel in inboundChannels.values { channel.close() }
        links = [:]
        inboundChannels = [:]
    }

    /// Calls `handler` (on the loop) with every message delivered on `topic`, once per message.
    func subscribe(_ topic: Gossip.Topic, _ handler: @escaping (Gossip.Message) -> Void) {
        subscribers[topic, default: []].append(handler)
    }

    /// Publishes a message from this node.
    func publish(_ topic: Gossip.Topic, payload: [UInt8]) throws(Gossip.PublishError) -> Gossip.Message {
        let (message, out) = try instance.publish(topic: topic, payload: payload, now: DHTShell.now())
        apply(out)
        return message
    }

    /// A gossip datagram body from an authenticated sender. To an address not proven to be the
    /// sender's, the answers to an IWANT may total at most three times the IWANT's datagram
    /// (`Gossip.Wire.paddedIWantBytes` makes one message fit): the rest are not sent.
    func received(_ body: [UInt8], from sender: Contact, proven: Bool, datagramBytes: Int) -> Bool {
        guard let wire = Gossip.Wire(decoding: body) else { return false }
        var out = instance.receive(wire, from: sender, now: DHTShell.now())
        if case .iwant = wire, !proven {
            var budget = 3 * datagramBytes
            out = out.filter { d in
                guard case .send(.push(_, let message), _) = d else { return true }
                budget -= DatagramSealer.overhead + 2 + message.count  // type and hops, then the message
                return budget >= 0
            }
        }
        apply(out)
        return true
    }

    private func apply(_ directives: [Gossip.Directive]) {
        guard !stopped else { return }
        for d in directives {
            switch d {
            case .send(let wire, let peer):
                let body = wire.encode()
                if body.count > 2 + Gossip.Wire.maxDatagramMessageBytes {
                    sendOverChannel(body, to: peer)
                } else if let address = peer.address(for: .udp) {
                    send(body, peer.publicKey, address)
                }
            case .deliver(let message):
                for handler in subscribers[message.topic] ?? [] { handler(message) }
            }
        }
        arm()
    }

    // MARK: Channels

    private func sendOverChannel(_ body: [UInt8], to peer: Contact) {
        switch links[peer.peerID] {
        case .open(let channel):
            if channel.send(body) {
                channelPushesSent += 1
                lastUsed[ObjectIdentifier(channel)] = DHTShell.now()
            }
        case .connecting(var queue):
            guard queue.count < Self.maxQueued else { return }
            queue.append(body)
            links[peer.peerID] = .connecting(queue)
        case nil:
            // The TCP address comes from the routing table: gossip senders are known by their UDP address only.
            guard let contact = peer.address(for: .tcp) != nil ? peer : lookup(peer.peerID) else { return }
            links[peer.peerID] = .connecting([body])
            open(contact) { [weak self] result in
                guard let self else { return }
                guard !stopped, case .connecting(let queue) = links[peer.peerID], case .success(let channel) = result else {
                    links[peer.peerID] = nil
                    if case .success(let channel) = result { channel.close() }
                    return
                }
                links[peer.peerID] = .open(channel)
                lastUsed[ObjectIdentifier(channel)] = DHTShell.now()
                channel.onClose { [weak self, weak channel] _ in
                    guard let self, let channel else { return }
                    if case .open(let current) = links[peer.peerID], current === channel { links[peer.peerID] = nil }
                    lastUsed[ObjectIdentifier(channel)] = nil
                }
                channel.setMessageHandler { [weak channel] _ in channel?.close() }  // nothing comes back on an outbound gossip channel
                for body in queue where channel.send(body) { channelPushesSent += 1 }
            }
        }
    }

    /// Takes over a channel a peer opened for gossip: each message must be one PUSH body.
    func attach(_ channel: SecureChannel) {
        guard !stopped, let key = channel.remoteIdentity else { channel.close(); return }
        let id = ObjectIdentifier(channel)
        inboundChannels[id] = channel
        lastUsed[id] = DHTShell.now()
        channel.onClose { [weak self] _ in
            self?.inboundChannels[id] = nil
            self?.lastUsed[id] = nil
        }
        let peerID = PeerID(publicKey: key)
        channel.setMessageHandler { [weak self, unowned channel] body in
            guard let self else { return }
            lastUsed[id] = DHTShell.now()
            guard body.count <= 2 + instance.settings.maxMessageBytes, body.first == Gossip.Wire.pushType,
                  let sender = lookup(peerID) ?? channel.connection.remoteAddress.flatMap({ try? Contact(publicKey: key, addresses: [TransportAddress(.tcp, $0)]) }),
                  received(body, from: sender, proven: true, datagramBytes: body.count) else {
                channel.close()
                return
            }
            channelPushesReceived += 1
        }
    }

    private func closeIdleChannels() {
        let now = DHTShell.now()
        for case .open(let channel) in links.values where (lastUsed[ObjectIdentifier(channel)] ?? 0) + Self.channelIdle <= now { channel.close() }
        for channel in inboundChannels.values where (lastUsed[ObjectIdentifier(channel)] ?? 0) + 2 * Self.channelIdle <= now { channel.close() }
    }

    /// Keeps the one wake timer set for the instance's next wake.
    private func arm() {
        guard !stopped else { return }
        let wake = instance.nextWake
        guard wake < armedFor else { return }
        wakeTimer?.cancel()
        armedFor = wake
        let now = DHTShell.now()
        wakeTimer = try? loop.schedule(after: .milliseconds(Int64(wake > now ? wake - now : 0))) { [unowned self] in
            armedFor = .max
            wakeTimer = nil
            apply(instance.tick(now: DHTShell.now()))
        }
    }
}
