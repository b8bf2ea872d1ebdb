import Logging
import MeshCore
import MeshCrypto
import MeshGossip

/// Drives a `Gossip.Instance` on a node's loop: datagram bodies in, directives out as sealed
/// datagrams and deliveries to subscribers; one timer for the instance's next wake; the sample
/// refreshed from the DHT routing table every second. Loop-confined.
final class GossipShell {
    typealias Send = (_ body: [UInt8], _ to: PublicKey, _ at: SocketAddress) -> Void

    private(set) var instance: Gossip.Instance
    private let loop: EventLoop
    private let send: Send
    private let candidates: () -> [Contact]
    private var wakeTimer: LoopTimer?
    private var armedFor: UInt64 = .max
    private var refreshTimer: LoopTimer?
    private var subscribers: [Gossip.Topic: [(Gossip.Message) -> Void]] = [:]
    private var stopped = false

    init(instance: Gossip.Instance, loop: EventLoop, candidates: @escaping () -> [Contact], send: @escaping Send) {
        self.instance = instance
        self.loop = loop
        self.candidates = candidates
        self.send = send
    }

    func start() throws {
        refreshTimer = try loop.schedule(after: .milliseconds(100), repeating: .seconds(1)) { [unowned self] in
            apply(instance.setCandidates(candidates(), now: DHTShell.now()))
        }
        arm()  // the wake timer exists from the start: a node's handle count is steady from then on
    }

    func stop() {
        stopped = true
        refreshTimer?.cancel()
        wakeTimer?.cancel()
        subscribers = [:]
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
                guard let address = peer.address(for: .udp) else { continue }
                send(wire.encode(), peer.publicKey, address)
            case .deliver(let message):
                for handler in subscribers[message.topic] ?? [] { handler(message) }
            }
        }
        arm()
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
