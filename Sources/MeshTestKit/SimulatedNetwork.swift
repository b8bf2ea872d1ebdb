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

    /// Where the virtual clock starts: a plausible Unix time in milliseconds, since records
    /// carry absolute expiry times.
    public static let epoch: UInt64 = 1_800_000_000_000
    /// The virtual clock, in milliseconds.
    public private(set) var now: UInt64 = SimulatedNetwork.epoch
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
    /// Adversarial members of the mesh: they answer every FIND_NODE with the Sybil identities
    /// closest to the target (hiding the honest nodes), and otherwise behave.
    public var liars: Set<PeerID> = []
    /// The adversary's Sybil identities (see `addSybils`): the adversary answers for all of them,
    /// FIND_NODE with more Sybils closest to the target, everything else as an empty success.
    public private(set) var sybils: [Contact] = []
    private var sybilIDs: Set<PeerID> = []
    /// Groups that cannot reach each other while set; nodes in no group reach everyone.
    public var partitions: [Set<PeerID>] = []
    /// Messages delivered so far.
    public private(set) var delivered = 0
    /// Messages lost so far (loss or partition).
    public private(set) var lost = 0
    /// Finished lookups, by the node that ran them.
    public private(set) var finished: [PeerID: [Kademlia.LookupID: (result: [Kademlia.Node], hops: Int)]] = [:]
    /// Finished puts, by the node that ran them.
    public private(set) var finishedPuts: [PeerID: [Kademlia.LookupID: Kademlia.PutOutcome]] = [:]
    /// Finished gets, by the node that ran them.
    public private(set) var finishedGets: [PeerID: [Kademlia.LookupID: Kademlia.GetOutcome]] = [:]
    /// Every node's signing key (real Ed25519 keys, derived from the seed).
    public private(set) var keys: [PeerID: SigningKey] = [:]
    /// When the most recent lookup finished (virtual ms): `run()` goes on to later timeouts,
    /// so a lookup's latency is this minus its start.
    public private(set) var lastLookupFinishedAt: UInt64 = 0
    /// The settings every node uses.
    public let settings: Kademlia.Settings

    private var heap = MinHeap<Scheduled>()
    /// An event and when it happens; ties keep the order they were scheduled in.
    private struct Scheduled: Comparable {
        let time: UInt64
        let seq: Int
        let event: Event
        static func < (a: Scheduled, b: Scheduled) -> Bool { a.time != b.time ? a.time < b.time : a.seq < b.seq }
        static func == (a: Scheduled, b: Scheduled) -> Bool { a.time == b.time && a.seq == b.seq }
    }
    private var seq = 0
    private var rng: SplitMix64

    /// `count` nodes on loopback addresses (diversity limits off), keys and seeds from `seed`.
    public init(count: Int, seed: UInt64, settings: Kademlia.Settings? = nil) {
        rng = SplitMix64(seed: seed)
        var s = settings ?? Kademlia.Settings()
        if settings == nil { s.maxPerPrefixPerBucket = nil }
        self.settings = s
        for i in 0..<count {
            let contact = makeIdentity(index: i)
            nodes[contact.peerID] = Kademlia.Instance(local: contact, settings: s, seed: rng.next(), signer: keys[contact.peerID]!)
        }
    }

    /// Creates `count` Sybil identities for the adversary (real key pairs, random IDs).
    public mutating func addSybils(_ count: Int) {
        for _ in 0..<count {
            let seedBytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let key = try! SigningKey(seed: SecretBytes(copying: seedBytes))  // 32 bytes are always a valid seed
            let c = try! Contact(publicKey: key.publicKey, addresses: [TransportAddress(.udp, SocketAddress(ip: .v4(10, 66, 0, 1), port: UInt16(1 + sybils.count % 60_000)))])
            sybils.append(c)
            sybilIDs.insert(c.peerID)
        }
    }

    /// What the adversary answers (nil: a liar's request it handles honestly).
    private func adversaryAnswer(_ message: Kademlia.Message) -> Kademlia.Message? {
        let body: Kademlia.Message.Body
        switch message.body {
        case .findNode(let target):
            body = .nodes(Array(sybils.sorted { $0.peerID.distance(to: target) < $1.peerID.distance(to: target) }.prefix(settings.k)))
        case .ping: body = .pong
        case .findValue(_, let offset): body = .values(total: 0, offset: offset, records: [])
        case .store: body = .stored(.stored)
        default: return nil
        }
        return Kademlia.Message(requestID: message.requestID, body: body)
    }

    /// Schedules an answer from an adversarial identity `from` to node `to`.
    private mutating func deliverAnswer(_ answer: Kademlia.Message, from: PeerID, to: PeerID) {
        let sender = sybils.first { $0.peerID == from } ?? contacts.first { $0.peerID == from }!
        deliver(answer, from: sender, to: to)
    }

    /// A key pair from the seeded generator and a loopback contact for node `index`.
    private mutating func makeIdentity(index i: Int) -> Contact {
        let seedBytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let signer = try! SigningKey(seed: SecretBytes(copying: seedBytes))  // 32 bytes are always a valid seed
        let address = SocketAddress(ip: .v4(127, 0, UInt8(i / 60_000), 1), port: UInt16(1000 + i % 60_000))
        let contact = try! Contact(publicKey: signer.publicKey, addresses: [TransportAddress(.udp, address)])  // one valid address
        contacts.append(contact)
        keys[contact.peerID] = signer
        return contact
    }

    private mutating func push(_ event: Event, at time: UInt64) {
        seq += 1
        heap.push(Scheduled(time: time, seq: seq, event: event))
    }

    /// Schedules `message` to arrive at `to` after a latency drawn from `latency`.
    private mutating func deliver(_ message: Kademlia.Message, from: Contact, to: PeerID) {
        let span = latency.upperBound - latency.lowerBound + 1
        push(.deliver(message, from: from, to: to), at: now + latency.lowerBound + rng.next() % span)
    }

    private func separated(_ a: PeerID, _ b: PeerID) -> Bool {
        guard let ga = partitions.firstIndex(where: { $0.contains(a) }), let gb = partitions.firstIndex(where: { $0.contains(b) }) else { return false }
        return ga != gb
    }

    private mutating func apply(_ directives: [Kademlia.Directive], at id: PeerID) {
        guard !directives.isEmpty else { return }
        let node = nodes[id]!.local
        for d in directives {
            switch d {
            case .send(let message, let to):
                let drop = dead.contains(to.peerID) || separated(node.peerID, to.peerID)
                    || (lossRate > 0 && Double(rng.next() % 1_000_000) / 1_000_000 < lossRate)
                if drop { lost += 1; continue }
                deliver(message, from: node, to: to.peerID)
            case .setTimeout(let id, let deadline):
                push(.timeout(requestID: id, at: node.peerID), at: deadline)
            case .lookupFinished(let id, let result, let hops, _):
                finished[node.peerID, default: [:]][id] = (result, hops)
                lastLookupFinishedAt = now
            case .putFinished(let id, let outcome):
                finishedPuts[node.peerID, default: [:]][id] = outcome
            case .getFinished(let id, let outcome):
                finishedGets[node.peerID, default: [:]][id] = outcome
            }
        }
    }

    /// Runs events until nothing is left to happen.
    public mutating func run() {
        while let next = heap.pop() {
            now = max(now, next.time)
            switch next.event {
            case .deliver(let message, let from, let to):
                if sybilIDs.contains(to) || liars.contains(to), let answer = adversaryAnswer(message) {
                    delivered += 1
                    deliverAnswer(answer, from: to, to: from.peerID)
                    continue
                }
                guard !dead.contains(to), nodes[to] != nil else { continue }
                delivered += 1
                let t = now
                let out = nodes[to]!.onMessage(message, from: from, now: t)  // mutated in place: no copy of the table
                apply(out, at: to)
            case .timeout(let id, let at):
                guard !dead.contains(at), nodes[at] != nil else { continue }
                let t = now
                let out = nodes[at]!.onTimeout(requestID: id, now: t)
                apply(out, at: at)
            }
        }
    }

    /// Every node but the first joins through node 0, one after another; then all refresh once.
    public mutating func joinAll() {
        for c in contacts.dropFirst() {
            let (t, seed) = (now, contacts[0])
            let (_, out) = nodes[c.peerID]!.bootstrap([seed], now: t)
            apply(out, at: c.peerID)
            run()
        }
        refreshAll()
    }

    /// Every node refreshes its buckets (as it would periodically), then the network runs quiet.
    public mutating func refreshAll() {
        for c in contacts where !dead.contains(c.peerID) {
            let t = now
            let out = nodes[c.peerID]!.refresh(now: t)
            apply(out, at: c.peerID)
        }
        run()
    }

    /// Runs one lookup for `target` from `start` to completion and returns its outcome.
    public mutating func lookup(_ target: PeerID, from start: PeerID) -> (result: [Kademlia.Node], hops: Int)? {
        let t = now
        let (id, out) = nodes[start]!.startLookup(target, now: t)
        apply(out, at: start)
        run()
        return finished[start]?[id]
    }

    /// Publishes `value` under `key` from node `publisher` and runs until the put finishes.
    public mutating func publish(_ value: [UInt8], under key: PeerID, from publisher: PeerID,
                                 lifetime: UInt64 = 3_600_000) throws -> Kademlia.PutOutcome? {
        let t = now
        let (id, out) = try nodes[publisher]!.publish(key: key, value: value, lifetime: lifetime, now: t)
        apply(out, at: publisher)
        run()
        return finishedPuts[publisher]?[id]
    }

    /// Reads the records under `key` from node `reader`.
    public mutating func get(_ key: PeerID, from reader: PeerID, limit: Int = 64) -> Kademlia.GetOutcome? {
        let t = now
        let (id, out) = nodes[reader]!.get(key: key, limit: limit, now: t)
        apply(out, at: reader)
        run()
        return finishedGets[reader]?[id]
    }

    /// Hands one node's directives to the network (for tests that drive an instance directly).
    public mutating func inject(_ directives: [Kademlia.Directive], from node: PeerID) {
        apply(directives, at: node)
        run()
    }

    /// Moves the clock forward by `milliseconds`, then lets every live node do its housekeeping
    /// (`tick`) once, and runs until quiet.
    public mutating func advance(by milliseconds: UInt64) {
        now += milliseconds
        for c in contacts where !dead.contains(c.peerID) {
            let t = now
            let out = nodes[c.peerID]!.tick(now: t)
            apply(out, at: c.peerID)
        }
        run()
    }

    /// Adds one node and joins it through node 0; returns its ID.
    @discardableResult
    public mutating func addNode() -> PeerID {
        let contact = makeIdentity(index: contacts.count)
        var node = Kademlia.Instance(local: contact, settings: settings, seed: rng.next(), signer: keys[contact.peerID]!)
        let seed = contacts.first { !dead.contains($0.peerID) && $0 != contact }.map { [$0] } ?? []
        let (_, out) = node.bootstrap(seed, now: now)
        nodes[contact.peerID] = node
        apply(out, at: contact.peerID)
        run()
        return contact.peerID
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
