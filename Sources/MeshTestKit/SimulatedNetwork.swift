import MeshCore
import MeshCrypto
import MeshDHT

/// A deterministic network of `Kademlia.Instance`s for tests and simulation: a virtual clock,
/// an event heap ordered by time then sequence, and latency, loss and partitions drawn from a
/// seeded generator. The same seed replays a run exactly.
public struct SimulatedNetwork {
    private enum Event {
        case deliver(Kademlia.Message, from: Contact, to: PeerID)
        case timeout(requestID: UInt64, at: PeerID)
    }

    /// The virtual clock, in milliseconds.
    public private(set) var now: UInt64 = 0
    /// Every node, by ID.
    public private(set) var nodes: [PeerID: Kademlia.Instance] = [:]
    /// Every node's contact, in creation order (node 0 is the usual bootstrap peer).
    public private(set) var contacts: [Contact] = []
    /// Nodes that have left without warning: they neither receive nor answer.
    public var dead: Set<PeerID> = []
    /// The share of messages lost in transit (0...1).
    public var lossRate: Double = 0
    /// Latency of each message, drawn uniformly from this range (milliseconds).
    public var latency: ClosedRange<UInt64> = 1...10
    /// Groups that cannot reach each other while set; nodes in no group reach everyone.
    public var partitions: [Set<PeerID>] = []
    /// Messages delivered so far.
    public private(set) var delivered = 0
    /// Messages lost so far (loss or partition).
    public private(set) var lost = 0
    /// Finished lookups, by the node that ran them.
    public private(set) var finished: [PeerID: [Kademlia.LookupID: (result: [Kademlia.Node], hops: Int)]] = [:]
    /// The settings every node uses.
    public let settings: Kademlia.Settings

    private var heap: [(time: UInt64, seq: Int, event: Event)] = []
    private var seq = 0
    private var rng: SplitMix64

    /// `count` nodes on loopback addresses (diversity limits off), keys and seeds from `seed`.
    public init(count: Int, seed: UInt64, settings: Kademlia.Settings? = nil) {
        rng = SplitMix64(seed: seed)
        var s = settings ?? Kademlia.Settings()
        if settings == nil { s.maxPerPrefixPerBucket = nil }
        self.settings = s
        for i in 0..<count {
            let key = try! PublicKey(bytes: (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) })  // 32 bytes always fit
            let port = UInt16(1000 + i % 60_000)
            let contact = try! Contact(publicKey: key, addresses: [TransportAddress(.udp, SocketAddress(ip: .v4(127, 0, UInt8(i / 60_000), 1), port: port))])
            contacts.append(contact)
            nodes[contact.peerID] = Kademlia.Instance(local: contact, settings: s, seed: rng.next())
        }
    }

    private mutating func push(_ event: Event, at time: UInt64) {
        seq += 1
        heap.append((time, seq, event))
        var i = heap.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard (heap[i].time, heap[i].seq) < (heap[parent].time, heap[parent].seq) else { break }
            heap.swapAt(i, parent)
            i = parent
        }
    }

    private mutating func pop() -> (time: UInt64, seq: Int, event: Event)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < heap.count && (heap[l].time, heap[l].seq) < (heap[m].time, heap[m].seq) { m = l }
            if r < heap.count && (heap[r].time, heap[r].seq) < (heap[m].time, heap[m].seq) { m = r }
            if m == i { break }
            heap.swapAt(i, m)
            i = m
        }
        return top
    }

    private func separated(_ a: PeerID, _ b: PeerID) -> Bool {
        guard let ga = partitions.firstIndex(where: { $0.contains(a) }), let gb = partitions.firstIndex(where: { $0.contains(b) }) else { return false }
        return ga != gb
    }

    private mutating func apply(_ directives: [Kademlia.Directive], at node: Contact) {
        for d in directives {
            switch d {
            case .send(let message, let to):
                let drop = dead.contains(to.peerID) || separated(node.peerID, to.peerID)
                    || (lossRate > 0 && Double(rng.next() % 1_000_000) / 1_000_000 < lossRate)
                if drop { lost += 1; continue }
                let span = latency.upperBound - latency.lowerBound + 1
                push(.deliver(message, from: node, to: to.peerID), at: now + latency.lowerBound + rng.next() % span)
            case .setTimeout(let id, let deadline):
                push(.timeout(requestID: id, at: node.peerID), at: deadline)
            case .lookupFinished(let id, let result, let hops, _):
                finished[node.peerID, default: [:]][id] = (result, hops)
            }
        }
    }

    /// Runs events until nothing is left to happen.
    public mutating func run() {
        while let (time, _, event) = pop() {
            now = max(now, time)
            switch event {
            case .deliver(let message, let from, let to):
                guard !dead.contains(to), var node = nodes[to] else { continue }
                delivered += 1
                let out = node.onMessage(message, from: from, now: now)
                nodes[to] = node
                apply(out, at: node.local)
            case .timeout(let id, let at):
                guard !dead.contains(at), var node = nodes[at] else { continue }
                let out = node.onTimeout(requestID: id, now: now)
                nodes[at] = node
                apply(out, at: node.local)
            }
        }
    }

    /// Every node but the first joins through node 0, one after another; then all refresh once.
    public mutating func joinAll() {
        for c in contacts.dropFirst() {
            var node = nodes[c.peerID]!
            let (_, out) = node.bootstrap([contacts[0]], now: now)
            nodes[c.peerID] = node
            apply(out, at: c)
            run()
        }
        refreshAll()
    }

    /// Every node refreshes its buckets (as it would periodically), then the network runs quiet.
    public mutating func refreshAll() {
        for c in contacts where !dead.contains(c.peerID) {
            var node = nodes[c.peerID]!
            let out = node.refresh(now: now)
            nodes[c.peerID] = node
            apply(out, at: c)
        }
        run()
    }

    /// Runs one lookup for `target` from `start` to completion and returns its outcome.
    public mutating func lookup(_ target: PeerID, from start: PeerID) -> (result: [Kademlia.Node], hops: Int)? {
        var node = nodes[start]!
        let (id, out) = node.startLookup(target, now: now)
        nodes[start] = node
        apply(out, at: node.local)
        run()
        return finished[start]?[id]
    }

    /// How a batch of lookups compared with the brute-force answer.
    public struct LookupScore: Sendable, Equatable {
        /// Lookups run.
        public var lookups = 0
        /// Lookups that returned exactly the k closest live nodes (other than the asker).
        public var exact = 0
        /// Lookups whose nearest result was the closest live node.
        public var closestFound = 0
        /// Of all lookups' k closest live nodes, how many the results contained.
        public var overlap = 0
        /// Results that named a node that has left.
        public var deadInResults = 0
        /// Each lookup's hop count, in order.
        public var hops: [Int] = []

        /// The median hop count.
        public var medianHops: Int { hops.isEmpty ? 0 : hops.sorted()[hops.count / 2] }
    }

    /// Runs `count` lookups for random keys from random live nodes and scores them. When
    /// (With partitions set, exactness is not expected: some of the closest nodes are unreachable.)
    public mutating func scoreLookups(_ count: Int) -> LookupScore {
        var score = LookupScore()
        for _ in 0..<count {
            let target = randomTarget()
            let start = randomLive()
            guard let r = lookup(target, from: start) else { continue }
            let expected = closestLive(to: target, settings.k, excluding: start)
            let got = r.result.map(\.id)
            score.lookups += 1
            if got == expected { score.exact += 1 }
            if got.first != nil && got.first == expected.first { score.closestFound += 1 }
            score.overlap += Set(expected).intersection(got).count
            score.deadInResults += got.filter { dead.contains($0) }.count
            score.hops.append(r.hops)
        }
        return score
    }

    /// A random 256-bit key.
    public mutating func randomTarget() -> PeerID {
        PeerID(words: (rng.next(), rng.next(), rng.next(), rng.next()))
    }

    /// A random node that has not left.
    public mutating func randomLive() -> PeerID {
        let live = contacts.filter { !dead.contains($0.peerID) }
        return live[Int(rng.next() % UInt64(live.count))].peerID
    }

    /// The brute-force answer: the k live nodes closest to `target`, other than the asker (a
    /// lookup finds others; the asker knows itself).
    public func closestLive(to target: PeerID, _ k: Int, excluding asker: PeerID) -> [PeerID] {
        contacts.map(\.peerID).filter { !dead.contains($0) && $0 != asker }
            .sorted { $0.distance(to: target) < $1.distance(to: target) }.prefix(k).map { $0 }
    }
}
