import MeshCore

extension Kademlia {
    /// A DHT message: a request or the response to one, matched by `requestID`.
    public struct Message: Equatable, Sendable {
        /// Chosen by the requester, echoed by the response.
        public var requestID: UInt64
        /// What it says.
        public var body: Body

        /// The message kinds.
        public enum Body: Equatable, Sendable {
            /// Are you alive?
            case ping
            /// Yes.
            case pong
            /// Which nodes do you know closest to `target`?
            case findNode(target: PeerID)
            /// These (at most k), nearest first.
            case nodes([Contact])
        }

        /// Makes a message.
        public init(requestID: UInt64, body: Body) {
            self.requestID = requestID
            self.body = body
        }

        /// True for pong and nodes.
        public var isResponse: Bool {
            switch body { case .pong, .nodes: true; case .ping, .findNode: false }
        }
    }

    /// Identifies a lookup started with `Instance.startLookup`.
    public typealias LookupID = UInt64

    /// What the instance asks its shell to do.
    public enum Directive: Equatable, Sendable {
        /// Send `message` to `contact`.
        case send(Message, to: Contact)
        /// Call `onTimeout(requestID:now:)` at `deadline` (milliseconds, the caller's clock).
        case setTimeout(requestID: UInt64, deadline: UInt64)
        /// A lookup finished: the closest nodes that answered, nearest first.
        case lookupFinished(LookupID, result: [Node], hops: Int, requests: Int)
    }

    /// A Kademlia node as a pure state machine: events in, directives out. It never reads a
    /// clock or global randomness; `now` comes with every event and randomness from a seed.
    public struct Instance: Sendable {
        /// This node.
        public let local: Contact
        /// The tunables.
        public let settings: Settings
        /// The routing table.
        public private(set) var table: RoutingTable
        private var rng: SplitMix64
        private var pending: [UInt64: Pending] = [:]
        private var lookups: [LookupID: Lookup] = [:]
        private var nextLookupID: LookupID = 1
        /// Round-trip estimates for the peers talked to most recently (bounded: a long-running
        /// node meets far more peers than it needs to remember timings for).
        private var rtt = LRUCache<PeerID, RoundTrip>(capacity: 4096)
        private struct RoundTrip: Sendable { var smoothed: Double; var variance: Double }
        /// Nodes waiting for a full bucket's least recently seen node to answer a ping.
        private var evictionPings: Set<PeerID> = []
        /// Requests sent and answered, for statistics.
        public private(set) var requestsSent = 0

        private struct Pending: Sendable {
            let to: Contact
            let body: Message.Body
            let sentAt: UInt64
            let lookup: LookupID?
            let isEvictionPing: Bool
            let attempt: Int
        }

        /// A request that times out is sent once more (with twice the timeout) before its node
        /// counts as failed: under 10% loss a request or its answer is lost 19% of the time, and
        /// one retry brings a false failure down to about 4%.
        public static let attempts = 2

        /// Request timeout bounds (ms); within them the timeout follows the measured RTT.
        public static let minTimeout: UInt64 = 50
        /// The longest a request waits.
        public static let maxTimeout: UInt64 = 2_000
        /// The timeout for a node never measured.
        public static let defaultTimeout: UInt64 = 1_000

        /// A node for `local`, with randomness from `seed`.
        public init(local: Contact, settings: Settings = Settings(), seed: UInt64) {
            self.local = local
            self.settings = settings
            table = RoutingTable(localID: local.peerID, settings: settings)
            rng = SplitMix64(seed: seed)
        }

        /// The timeout for a request to `id`: smoothed RTT plus four deviations (RFC 6298), bounded.
        public func timeout(for id: PeerID) -> UInt64 {
            guard let r = rtt.peek(id) else { return Self.defaultTimeout }
            return min(max(UInt64(r.smoothed + 4 * r.variance), Self.minTimeout), Self.maxTimeout)
        }

        private mutating func measured(_ id: PeerID, sample: Double) {
            if let r = rtt.value(for: id) {
                let variance = 0.75 * r.variance + 0.25 * abs(r.smoothed - sample)
                rtt.insert(RoundTrip(smoothed: 0.875 * r.smoothed + 0.125 * sample, variance: variance), for: id)
            } else {
                rtt.insert(RoundTrip(smoothed: sample, variance: sample / 2), for: id)
            }
        }

        private mutating func request(_ body: Message.Body, to contact: Contact, now: UInt64, lookup: LookupID? = nil,
                                      eviction: Bool = false, attempt: Int = 0) -> [Directive] {
            var id = rng.next()
            while pending[id] != nil { id = rng.next() }
            pending[id] = Pending(to: contact, body: body, sentAt: now, lookup: lookup, isEvictionPing: eviction, attempt: attempt)
            requestsSent += 1
            let wait = min(timeout(for: contact.peerID) << UInt64(attempt), Self.maxTimeout)
            return [.send(Message(requestID: id, body: body), to: contact), .setTimeout(requestID: id, deadline: now + wait)]
        }

        /// Learns about `contact`; a full bucket triggers a ping of its least recently seen node.
        private mutating func heard(from contact: Contact, now: UInt64) -> [Directive] {
            switch table.observe(Node(contact: contact, lastSeen: now)) {
            case .bucketFull(let lrs) where !evictionPings.contains(lrs.id):
                evictionPings.insert(lrs.id)
                return request(.ping, to: lrs.contact, now: now, eviction: true)
            default:
                return []
            }
        }

        /// Joins through `seeds`: learns them and looks up its own ID, which fills the table
        /// with the nodes around it and announces it to them.
        public mutating func bootstrap(_ seeds: [Contact], now: UInt64) -> (LookupID, [Directive]) {
            var out: [Directive] = []
            for s in seeds where s.peerID != local.peerID { out += heard(from: s, now: now) }
            let (id, more) = startLookup(local.peerID, now: now)
            return (id, out + more)
        }

        /// A random ID that falls in bucket `index` of this node's table: shares exactly
        /// `255 - index` leading bits with the local ID.
        public mutating func randomID(inBucket index: Int) -> PeerID {
            precondition((0..<256).contains(index))
            let shared = 255 - index
            var words = [rng.next(), rng.next(), rng.next(), rng.next()]
            // Distance: zeros above bit `shared`, a one at it, random below.
            for w in 0..<4 {
                let first = w * 64
                if shared >= first + 64 { words[w] = 0; continue }
                if shared < first { continue }
                let bit = shared - first  // 0 = most significant bit of this word
                let keep: UInt64 = bit == 63 ? 0 : (UInt64.max >> UInt64(bit + 1))
                words[w] = (words[w] & keep) | (UInt64(1) << UInt64(63 - bit))
            }
            let local = self.local.peerID.words
            return PeerID(words: (local.0 ^ words[0], local.1 ^ words[1], local.2 ^ words[2], local.3 ^ words[3]))
        }

        /// Refreshes the table: looks up a random ID in every bucket from the closest neighbour's
        /// outwards, so each region of the ID space is explored (after joining, and periodically).
        public mutating func refresh(now: UInt64) -> [Directive] {
            guard let nearest = table.closest(to: local.peerID, count: 1).first, let from = table.bucketIndex(for: nearest.id) else { return [] }
            var out: [Directive] = []
            for b in from..<256 { out += startLookup(randomID(inBucket: b), now: now).1 }
            return out
        }

        /// Starts an iterative lookup for the k nodes closest to `target`.
        public mutating func startLookup(_ target: PeerID, now: UInt64) -> (LookupID, [Directive]) {
            let id = nextLookupID
            nextLookupID += 1
            lookups[id] = Lookup(target: target, seeds: table.closest(to: target, count: settings.k), settings: settings)
            return (id, drive(id, now: now))
        }

        private mutating func drive(_ id: LookupID, now: UInt64) -> [Directive] {
            guard var lookup = lookups[id] else { return [] }
            var out: [Directive] = []
            for node in lookup.next() { out += request(.findNode(target: lookup.target), to: node.contact, now: now, lookup: id) }
            if lookup.isFinished {
                lookups[id] = nil
                out.append(.lookupFinished(id, result: lookup.result, hops: lookup.hops, requests: lookup.requestsSent))
            } else {
                lookups[id] = lookup
            }
            return out
        }

        /// Handles a message from `sender` (already authenticated by the transport).
        public mutating func onMessage(_ message: Message, from sender: Contact, now: UInt64) -> [Directive] {
            guard sender.peerID != local.peerID else { return [] }
            if !message.isResponse {
                var out = heard(from: sender, now: now)
                switch message.body {
                case .ping:
                    out.append(.send(Message(requestID: message.requestID, body: .pong), to: sender))
                case .findNode(let target):
                    let closest = table.closest(to: target, count: settings.k + 1).filter { $0.id != sender.peerID }.prefix(settings.k)
                    out.append(.send(Message(requestID: message.requestID, body: .nodes(closest.map(\.contact))), to: sender))
                default:
                    break
                }
                return out
            }
            // A response: only from the node the request went to.
            guard let p = pending[message.requestID], p.to.peerID == sender.peerID else { return [] }
            pending[message.requestID] = nil
            measured(sender.peerID, sample: Double(now >= p.sentAt ? now - p.sentAt : 0))
            if p.isEvictionPing { evictionPings.remove(sender.peerID) }
            var out = heard(from: sender, now: now)
            if let lookupID = p.lookup, var lookup = lookups[lookupID] {
                var closer: [Node] = []
                if case .nodes(let contacts) = message.body {
                    closer = contacts.prefix(settings.k).filter { $0.peerID != local.peerID }.map { Node(contact: $0, lastSeen: now) }
                }
                lookup.responded(sender.peerID, closer: closer)
                lookups[lookupID] = lookup
                out += drive(lookupID, now: now)
            }
            return out
        }

        /// Handles a request's deadline: if no answer came, the node is counted as failed.
        public mutating func onTimeout(requestID: UInt64, now: UInt64) -> [Directive] {
            guard let p = pending.removeValue(forKey: requestID) else { return [] }
            if p.attempt + 1 < Self.attempts {
                return request(p.body, to: p.to, now: now, lookup: p.lookup, eviction: p.isEvictionPing, attempt: p.attempt + 1)
            }
            if p.isEvictionPing { evictionPings.remove(p.to.peerID) }
            // A node that does not answer leaves the table; the newest waiting candidate takes its place.
            table.nodeFailed(p.to.peerID)
            guard let lookupID = p.lookup, var lookup = lookups[lookupID] else { return [] }
            lookup.failed(p.to.peerID)
            lookups[lookupID] = lookup
            return drive(lookupID, now: now)
        }

        /// Requests awaiting an answer.
        public var pendingRequests: Int { pending.count }
        /// Lookups in progress.
        public var activeLookups: Int { lookups.count }
    }
}
