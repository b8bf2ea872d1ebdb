import MeshCore
import MeshCrypto
import MeshGossip

/// A deterministic network of `Gossip.Instance`s: a virtual clock, an event heap, seeded latency
/// and loss. Each node's candidates are what a Kademlia table would hold (up to 3 nodes per
/// bucket), so samples are drawn from diverse buckets as on a real mesh. The same seed replays a
/// run exactly.
public struct GossipSimulation {
    private enum Event {
        case deliver(Gossip.Wire, from: Int, to: Int)
        case wake(Int)
    }

    private struct Scheduled: Comparable {
        let time: UInt64
        let seq: Int
        let event: Event
        static func < (a: Scheduled, b: Scheduled) -> Bool { a.time != b.time ? a.time < b.time : a.seq < b.seq }
        static func == (a: Scheduled, b: Scheduled) -> Bool { a.time == b.time && a.seq == b.seq }
    }

    /// The virtual clock (Unix ms).
    public private(set) var now: UInt64 = 1_800_000_000_000
    /// The nodes.
    public private(set) var nodes: [Gossip.Instance] = []
    /// Their signing keys.
    public private(set) var keys: [SigningKey] = []
    /// Their contacts.
    public private(set) var contacts: [Contact] = []
    /// Nodes that have left: they neither receive nor send.
    public var dead: Set<Int> = []
    /// The share of datagrams lost (0...1).
    public var lossRate = 0.0
    /// Latency of each datagram, drawn uniformly (ms).
    public var latency: ClosedRange<UInt64> = 1...10
    /// Datagrams sent, and lost.
    public private(set) var sent = 0, lost = 0
    /// Deliveries to the application: message ID -> node -> how many times (must stay 1) and when first.
    public private(set) var deliveries: [Gossip.MessageID: [Int: (count: Int, at: UInt64)]] = [:]
    /// When each message was published.
    public private(set) var publishedAt: [Gossip.MessageID: UInt64] = [:]
    private var heap = MinHeap<Scheduled>()
    private var seq = 0
    private var rng: SplitMix64
    private var index: [PeerID: Int] = [:]
    /// When each node's next wake is scheduled (.max: none).
    private var wakeAt: [UInt64] = []

    /// `count` nodes with real keys derived from `seed`.
    public init(count: Int, seed: UInt64, settings: Gossip.Settings = Gossip.Settings()) {
        rng = SplitMix64(seed: seed)
        for i in 0..<count {
            let seedBytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let key = try! SigningKey(seed: SecretBytes(copying: seedBytes))  // 32 bytes are always a valid seed
            let contact = try! Contact(publicKey: key.publicKey,
                                       addresses: [TransportAddress(.udp, SocketAddress(ip: .v4(127, 0, UInt8(i / 250), UInt8(1 + i % 250)), port: 7400))])
            keys.append(key)
            contacts.append(contact)
            index[contact.peerID] = i
            nodes.append(Gossip.Instance(local: contact, signer: key, settings: settings, seed: rng.next()))
        }
        // Candidates as a Kademlia table holds them: a few nodes per bucket, and the oldest ones
        // (Kademlia keeps long-lived contacts): 3 of the 6 that joined first. Every table then
        // holds the same early nodes in its far buckets, the skew a real mesh shows.
        for i in 0..<count {
            var byBucket: [Int: [Int]] = [:]
            for j in 0..<count where j != i {
                byBucket[contacts[i].peerID.distance(to: contacts[j].peerID).leadingZeroBitCount, default: []].append(j)
            }
            var chosen: [Contact] = []
            for b in byBucket.keys.sorted() {
                var members = Array(byBucket[b]!.prefix(6))
                rng.shuffle(&members)
                chosen += members.prefix(3).map { contacts[$0] }
            }
            let links = nodes[i].setCandidates(chosen, now: now)
            wakeAt.append(.max)
            apply(links, at: i)
        }
    }

    private mutating func schedule(_ event: Event, at time: UInt64) {
        seq += 1
        heap.push(Scheduled(time: max(time, now), seq: seq, event: event))
    }

    private mutating func apply(_ directives: [Gossip.Directive], at node: Int) {
        for d in directives {
            switch d {
            case .deliver(let m):
                var perNode = deliveries[m.id, default: [:]]
                let prior = perNode[node]
                perNode[node] = (count: (prior?.count ?? 0) + 1, at: prior?.at ?? now)
                deliveries[m.id] = perNode
            case .send(let wire, let peer):
                sent += 1
                guard let to = index[peer.peerID] else { continue }
                if Double(rng.next() % 1_000_000) / 1_000_000 < lossRate { lost += 1; continue }
                schedule(.deliver(wire, from: node, to: to), at: now + latency.lowerBound + rng.next() % (latency.upperBound - latency.lowerBound + 1))
            }
        }
        scheduleWake(node)
    }

    /// Schedules the node's next tick, unless an earlier one is already scheduled.
    private mutating func scheduleWake(_ node: Int) {
        let at = max(nodes[node].nextWake, now)
        guard at < wakeAt[node] else { return }
        wakeAt[node] = at
        schedule(.wake(node), at: at)
    }

    /// Node `from` publishes; nil if its instance refused (rate limit).
    public mutating func publish(from: Int, topic: Gossip.Topic = .debug, payload: [UInt8]) -> Gossip.MessageID? {
        guard let (message, out) = try? nodes[from].publish(topic: topic, payload: payload, now: now) else { return nil }
        publishedAt[message.id] = now
        apply(out, at: from)
        return message.id
    }

    /// Node `from` sends `wire` to node `to` directly (an attacker's forged or flooded traffic).
    public mutating func inject(_ wire: Gossip.Wire, from: Int, to: Int) {
        sent += 1
        schedule(.deliver(wire, from: from, to: to), at: now + 1)
    }

    /// Runs events until the clock passes `until` (virtual ms from now).
    public mutating func run(for duration: UInt64) {
        let end = now + duration
        while let next = heap.min, next.time <= end {
            _ = heap.pop()
            now = next.time
            switch next.event {
            case .deliver(let wire, let from, let to):
                guard !dead.contains(to), !dead.contains(from) else { lost += 1; continue }
                apply(nodes[to].receive(wire, from: contacts[from], now: now), at: to)
            case .wake(let node):
                guard wakeAt[node] == now, !dead.contains(node) else { continue }  // superseded by an earlier wake
                wakeAt[node] = .max
                apply(nodes[node].tick(now: now), at: node)
            }
        }
        now = end
    }

    /// The share of live nodes (other than the publisher) that delivered message `id`.
    public func coverage(_ id: Gossip.MessageID, publisher: Int) -> Double {
        let live = (0..<nodes.count).filter { !dead.contains($0) && $0 != publisher }
        let got = live.filter { deliveries[id]?[$0] != nil }.count
        return live.isEmpty ? 1 : Double(got) / Double(live.count)
    }

    /// The most times any node delivered any one message (1 when delivery is at most once).
    public var maxDeliveriesPerNode: Int {
        deliveries.values.flatMap(\.values).map(\.count).max() ?? 0
    }

    /// Delivery latencies (ms) of message `id` at every node that delivered it.
    public func latencies(_ id: Gossip.MessageID) -> [UInt64] {
        guard let start = publishedAt[id] else { return [] }
        return (deliveries[id] ?? [:]).values.map { $0.at - start }
    }
}
