import MeshCore
import MeshCrypto

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
            /// Please keep this record.
            case store(Record)
            /// What became of a STORE.
            case stored(StoreStatus)
            /// Which records do you hold under `key`, from position `offset` on?
            case findValue(key: PeerID, offset: UInt16)
            /// A page of the records under a key: `total` held, this page starting at `offset`.
            case values(total: UInt16, offset: UInt16, records: [Record])
        }

        /// Makes a message.
        public init(requestID: UInt64, body: Body) {
            self.requestID = requestID
            self.body = body
        }

        /// True for pong, nodes, stored and values.
        public var isResponse: Bool {
            switch body {
            case .pong, .nodes, .stored, .values: true
            case .ping, .findNode, .store, .findValue: false
            }
        }

        /// True if the response `body` is the kind that answers request `request`.
        static func answers(_ request: Body, with body: Body) -> Bool {
            switch (request, body) {
            case (.ping, .pong), (.findNode, .nodes), (.store, .stored), (.findValue, .values): true
            default: false
            }
        }
    }

    /// Identifies a lookup, put or get started on an `Instance`.
    public typealias LookupID = UInt64

    /// How a put went.
    public struct PutOutcome: Equatable, Sendable {
        /// The record's key.
        public var key: PeerID
        /// Storing nodes that hold the record now.
        public var stored = 0
        /// Storing nodes that refused it (full, or holding a newer one).
        public var refused = 0
        /// Storing nodes that did not answer.
        public var failed = 0
        /// Hops of the lookup that found the storing nodes.
        public var hops = 0
        /// Requests sent, lookup included.
        public var requests = 0
    }

    /// How a get went.
    public struct GetOutcome: Equatable, Sendable {
        /// The key read.
        public var key: PeerID
        /// Valid, unexpired records, one per publisher (the highest sequence seen), in publisher order.
        public var records: [Record] = []
        /// Storing nodes that answered.
        public var responders = 0
        /// Hops of the lookup that found the storing nodes.
        public var hops = 0
        /// Requests sent, lookup included.
        public var requests = 0
        /// Records dropped because they failed verification.
        public var rejected = 0
    }

    /// What the instance asks its shell to do.
    public enum Directive: Equatable, Sendable {
        /// Send `message` to `contact`.
        case send(Message, to: Contact)
        /// Call `onTimeout(requestID:now:)` at `deadline` (milliseconds, the caller's clock).
        case setTimeout(requestID: UInt64, deadline: UInt64)
        /// A lookup finished: the closest nodes that answered, nearest first.
        case lookupFinished(LookupID, result: [Node], hops: Int, requests: Int)
        /// A put finished.
        case putFinished(LookupID, PutOutcome)
        /// A get finished.
        case getFinished(LookupID, GetOutcome)
    }

    /// Why `Instance.publish` refused.
    public enum PublishError: Error, Equatable, CustomStringConvertible {
        /// The instance was made without a signing key.
        case noSigningKey
        /// The value is over `Settings.maxValueBytes`.
        case valueTooLarge(Int, max: Int)
        /// The lifetime is zero or over `Settings.maxRecordLifetime`.
        case badLifetime(UInt64, max: UInt64)

        /// Words for people.
        public var description: String {
            switch self {
            case .noSigningKey: "this DHT instance has no signing key"
            case .valueTooLarge(let n, let max): "the value is \(n) bytes; the limit is \(max)"
            case .badLifetime(let t, let max): "a record lives from 1 ms to \(max) ms, not \(t) ms"
            }
        }
    }

    /// A Kademlia node as a pure state machine: events in, directives out. It never reads a
    /// clock or global randomness; `now` (Unix milliseconds in a real node, virtual time in a
    /// simulation) comes with every event and randomness from a seed.
    public struct Instance: Sendable {
        /// This node.
        public let local: Contact
        /// The tunables.
        public let settings: Settings
        /// The routing table.
        public private(set) var table: RoutingTable
        /// The records this node stores for others (and its own).
        public private(set) var store: RecordStore
        private let signer: SigningKey?
        private var rng: SplitMix64
        private var pending: [UInt64: Pending] = [:]
        private var lookups: [LookupID: Lookup] = [:]
        /// Disjoint-path lookups: the group each path belongs to, and the groups by their ID.
        private var pathGroup: [LookupID: LookupID] = [:]
        private var groups: [LookupID: DisjointGroup] = [:]
        private var operations: [LookupID: Operation] = [:]
        private var puts: [LookupID: PutState] = [:]
        private var gets: [LookupID: GetState] = [:]
        private var nextLookupID: LookupID = 1
        /// Records this node publishes and keeps alive, by key.
        private var published: [PeerID: Published] = [:]
        private var bucketRefreshedAt = [UInt64](repeating: 0, count: 256)
        /// Round-trip estimates for the peers talked to most recently (bounded: a long-running
        /// node meets far more peers than it needs to remember timings for).
        private var rtt = LRUCache<PeerID, RoundTrip>(capacity: 4096)
        private struct RoundTrip: Sendable { var smoothed: Double; var variance: Double }
        /// Nodes waiting for a full bucket's least recently seen node to answer a ping.
        private var evictionPings: Set<PeerID> = []
        /// Unproven requesters being pinged before they may enter the table.
        private var verifications: Set<PeerID> = []
        /// Requests sent, for statistics.
        public private(set) var requestsSent = 0
        /// Records sent to newly met nodes that are closer to their keys than most holders.
        public private(set) var replicationsSent = 0

        private enum Purpose: Sendable, Equatable {
            case eviction, verification, lookup(LookupID), store(LookupID?), fetch(LookupID)
        }

        private struct Pending: Sendable {
            let to: Contact
            let body: Message.Body
            let sentAt: UInt64
            let purpose: Purpose
            let attempt: Int
        }

        private enum Operation: Sendable {
            case put(Record)
            case get(key: PeerID, limit: Int, verify: Bool)
        }

        private struct PutState: Sendable {
            var outcome: PutOutcome
            var outstanding: Int
        }

        private struct GetState: Sendable {
            var outcome: GetOutcome
            let limit: Int
            let verify: Bool
            let nodes: [Node]
            var next = 0
            var inFlight = 0
            var pages: [PeerID: Int] = [:]
            var found: [PublicKey: Record] = [:]
        }

        /// A lookup run as d disjoint paths (S/Kademlia): no node is asked by two paths, so one
        /// adversary steering a path cannot capture the others; the result merges them.
        private struct DisjointGroup: Sendable {
            let target: PeerID
            var running: Set<LookupID>
            var claimedBy: [PeerID: LookupID] = [:]
            var perPath: [LookupID: [Node]] = [:]
            var hops = 0
            var requests = 0
        }

        private struct Published: Sendable {
            var record: Record
            let lifetime: UInt64
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
        /// A newly met node gets the records of a key from this node only when fewer than this
        /// many known nodes are closer to the key than this node (so it hears from a few holders,
        /// not all twenty).
        public static let replicationRank = 3
        /// Most keys checked for re-replication per newly met node.
        public static let replicationKeysPerNewcomer = 256
        private var replicationCursor = 0

        /// A node for `local`, with randomness from `seed`. `signer` (the node's identity) signs
        /// the records it publishes; without one, `publish` refuses.
        public init(local: Contact, settings: Settings = Settings(), seed: UInt64, signer: SigningKey? = nil) {
            precondition(signer == nil || signer!.publicKey == local.publicKey, "the signer must be the local identity")
            self.local = local
            self.settings = settings
            self.signer = signer
            table = RoutingTable(localID: local.peerID, settings: settings)
            store = RecordStore(settings: settings)
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

        private mutating func request(_ body: Message.Body, to contact: Contact, now: UInt64, purpose: Purpose,
                                      attempt: Int = 0) -> [Directive] {
            var id = rng.next()
            while pending[id] != nil { id = rng.next() }
            pending[id] = Pending(to: contact, body: body, sentAt: now, purpose: purpose, attempt: attempt)
            requestsSent += 1
            switch purpose {
            case .store(let op?): puts[op]?.outcome.requests += 1
            case .fetch(let op): gets[op]?.outcome.requests += 1
            default: break
            }
            let wait = min(timeout(for: contact.peerID) << UInt64(attempt), Self.maxTimeout)
            return [.send(Message(requestID: id, body: body), to: contact), .setTimeout(requestID: id, deadline: now + wait)]
        }

        /// Learns about `contact`; a full bucket triggers a ping of its least recently seen node,
        /// and a node new to the table gets the records it should now hold.
        private mutating func heard(from contact: Contact, now: UInt64) -> [Directive] {
            guard contact.peerID.meetsPuzzle(settings.idDifficulty) else { return [] }
            switch table.observe(Node(contact: contact, lastSeen: now)) {
            case .bucketFull(let lrs) where !evictionPings.contains(lrs.id) && now >= lrs.lastSeen + settings.livenessWindow:
                // A least recently seen node heard from within the liveness window is taken to be
                // alive without asking; the newcomer waits in the replacement cache.
                evictionPings.insert(lrs.id)
                return request(.ping, to: lrs.contact, now: now, purpose: .eviction)
            case .added where store.count > 0:
                return replicate(to: contact, now: now)
            default:
                return []
            }
        }

        /// A requester whose address is unproven enters the table only after it answers a PING
        /// at that address, and is pinged only if its bucket has room (a full bucket would not
        /// take it anyway, and most requesters fall in the full, far buckets).
        private mutating func verify(_ contact: Contact, now: UInt64) -> [Directive] {
            let node = Node(contact: contact, lastSeen: now)
            guard contact.peerID.meetsPuzzle(settings.idDifficulty), !verifications.contains(contact.peerID),
                  verifications.count < 256, table.hasRoom(for: node) else { return [] }
            verifications.insert(contact.peerID)
            return request(.ping, to: contact, now: now, purpose: .verification)
        }

        /// Sends `newcomer` the records of every key it is now among the k closest to, when this
        /// node is one of the few closest holders (Kademlia's re-replication on join).
        private mutating func replicate(to newcomer: Contact, now: UInt64) -> [Directive] {
            var out: [Directive] = []
            let localID = local.peerID
            // A bounded share of the keys per newcomer, rotating, so a node holding thousands of
            // keys does not stall its loop when many nodes join at once.
            let keys = store.keys
            let n = min(keys.count, Self.replicationKeysPerNewcomer)
            let start = keys.isEmpty ? 0 : replicationCursor % keys.count
            replicationCursor &+= n
            for i in 0..<n {
                let key = keys[(start + i) % keys.count]
                let records = store.records(for: key, now: now)
                guard !records.isEmpty else { continue }
                let closest = table.closest(to: key, count: settings.k)
                guard closest.contains(where: { $0.id == newcomer.peerID }) else { continue }
                let mine = localID.distance(to: key)
                let closer = closest.lazy.filter { $0.id != newcomer.peerID && $0.id.distance(to: key) < mine }.count
                guard closer < Self.replicationRank else { continue }
                for record in records {
                    replicationsSent += 1
                    out += request(.store(record), to: newcomer, now: now, purpose: .store(nil))
                }
            }
            return out
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
            for b in from..<256 {
                bucketRefreshedAt[b] = now
                out += startLookup(randomID(inBucket: b), now: now).1
            }
            return out
        }

        /// Starts an iterative lookup for the k nodes closest to `target` (over
        /// `settings.disjointPaths` disjoint paths when that is above 1).
        public mutating func startLookup(_ target: PeerID, now: UInt64) -> (LookupID, [Directive]) {
            let id = nextLookupID
            nextLookupID += 1
            let seeds = table.closest(to: target, count: settings.k)
            let d = settings.disjointPaths
            // Reads converge on the nearest few; stores and plain lookups on all k.
            var width: Int?
            if case .get? = operations[id], settings.readLookupWidth > 0 { width = settings.readLookupWidth }
            guard d > 1, seeds.count >= d else {
                lookups[id] = Lookup(target: target, seeds: seeds, settings: settings, width: width)
                return (id, drive(id, now: now))
            }
            // The seeds are dealt out round-robin, each path starting from its share.
            var group = DisjointGroup(target: target, running: [])
            var paths: [LookupID] = []
            for p in 0..<d {
                let pathID = nextLookupID
                nextLookupID += 1
                let share = stride(from: p, to: seeds.count, by: d).map { seeds[$0] }
                for n in share { group.claimedBy[n.id] = pathID }
                lookups[pathID] = Lookup(target: target, seeds: share, settings: settings, width: width)
                pathGroup[pathID] = id
                group.running.insert(pathID)
                paths.append(pathID)
            }
            groups[id] = group
            var out: [Directive] = []
            for pathID in paths { out += drive(pathID, now: now) }
            return (id, out)
        }

        /// A path of a disjoint lookup finished: merge it; when all have, finish the group.
        private mutating func pathDone(_ pathID: LookupID, _ lookup: Lookup, now: UInt64) -> [Directive] {
            guard let groupID = pathGroup.removeValue(forKey: pathID), var group = groups[groupID] else { return [] }
            group.running.remove(pathID)
            group.perPath[pathID] = lookup.result
            group.hops = max(group.hops, lookup.hops)
            group.requests += lookup.requestsSent
            guard group.running.isEmpty else {
                groups[groupID] = group
                return []
            }
            groups[groupID] = nil
            let target = group.target
            let merged: [Node]
            if case .get? = operations[groupID] {
                // A read goes to each path's closest nodes in turn, so one clean path suffices.
                let paths = group.perPath.keys.sorted().map { group.perPath[$0]! }
                var interleaved: [Node] = []
                for rank in 0..<(paths.map(\.count).max() ?? 0) {
                    for p in paths where rank < p.count { interleaved.append(p[rank]) }
                }
                merged = interleaved
            } else {
                merged = Array(group.perPath.values.joined().sorted { $0.id.distance(to: target) < $1.id.distance(to: target) }.prefix(settings.k))
            }
            return lookupDone(groupID, result: merged, hops: group.hops, requests: group.requests, now: now)
        }

        /// Keeps a disjoint path's new candidates to nodes no other path of its group has claimed.
        private mutating func disjoint(_ nodes: [Node], for pathID: LookupID) -> [Node] {
            guard let groupID = pathGroup[pathID], var group = groups[groupID] else { return nodes }
            var kept: [Node] = []
            for n in nodes {
                if let owner = group.claimedBy[n.id], owner != pathID { continue }
                group.claimedBy[n.id] = pathID
                kept.append(n)
            }
            groups[groupID] = group
            return kept
        }

        // MARK: Records

        /// Signs `value` under `key` with this node's identity, stores it locally and on the k
        /// nodes closest to `key`, and keeps republishing it (with a higher sequence and a fresh
        /// expiry) once half its lifetime has passed, until `unpublish`. With `keepAlive` false it
        /// is stored once and this node stops republishing anything under `key` (a last word,
        /// such as a tombstone).
        public mutating func publish(key: PeerID, value: [UInt8], lifetime: UInt64, keepAlive: Bool = true,
                                     now: UInt64) throws(PublishError) -> (LookupID, [Directive]) {
            guard let signer else { throw .noSigningKey }
            guard value.count <= settings.maxValueBytes else { throw .valueTooLarge(value.count, max: settings.maxValueBytes) }
            guard lifetime > 0, lifetime <= settings.maxRecordLifetime else { throw .badLifetime(lifetime, max: settings.maxRecordLifetime) }
            // Wall-clock milliseconds make sequences grow across restarts; +1 keeps them growing within one.
            let sequence = max(now, (published[key]?.record.sequence ?? 0) + 1)
            let record = Record.sign(key: key, value: value, sequence: sequence, expiresAt: now + lifetime, by: signer)
            published[key] = keepAlive ? Published(record: record, lifetime: lifetime) : nil
            return put(record, now: now)
        }

        /// Stops republishing the record under `key` (it stays stored until it expires).
        public mutating func unpublish(key: PeerID) { published[key] = nil }

        /// The records this node keeps alive.
        public var publishedRecords: [Record] { published.keys.sorted().map { published[$0]!.record } }

        /// Stores an already-signed record locally (when valid) and on the k nodes closest to its key.
        public mutating func put(_ record: Record, now: UInt64) -> (LookupID, [Directive]) {
            _ = store.store(record, now: now)
            let (id, out) = startOperation(.put(record), target: record.key, now: now)
            return (id, out)
        }

        /// Finds the nodes closest to `key` and reads the records they hold under it, up to
        /// `limit` publishers. Every record is checked (key, size, expiry) and, unless `verify` is
        /// false, its signature too; a caller whose values carry their own signature (capability
        /// records) checks that one instead and saves one Ed25519 verification per record.
        public mutating func get(key: PeerID, limit: Int = 64, verify: Bool = true, now: UInt64) -> (LookupID, [Directive]) {
            startOperation(.get(key: key, limit: max(1, limit), verify: verify), target: key, now: now)
        }

        private mutating func startOperation(_ op: Operation, target: PeerID, now: UInt64) -> (LookupID, [Directive]) {
            let id = nextLookupID
            operations[id] = op
            return startLookup(target, now: now)
        }

        private mutating func lookupDone(_ id: LookupID, result: [Node], hops: Int, requests: Int, now: UInt64) -> [Directive] {
            guard let op = operations.removeValue(forKey: id) else {
                return [.lookupFinished(id, result: result, hops: hops, requests: requests)]
            }
            switch op {
            case .put(let record):
                let targets = result
                puts[id] = PutState(outcome: PutOutcome(key: record.key, hops: hops, requests: requests),
                                    outstanding: targets.count)
                var out: [Directive] = []
                for node in targets { out += request(.store(record), to: node.contact, now: now, purpose: .store(id)) }
                return out + finishPutIfDone(id)
            case .get(let key, let limit, let verify):
                var state = GetState(outcome: GetOutcome(key: key, hops: hops, requests: requests),
                                     limit: limit, verify: verify, nodes: result)
                for r in store.records(for: key, now: now) { state.found[r.publisher] = r }
                gets[id] = state
                return pumpGet(id, now: now)
            }
        }

        private mutating func finishPutIfDone(_ id: LookupID) -> [Directive] {
            guard let state = puts[id], state.outstanding == 0 else { return [] }
            puts[id] = nil
            return [.putFinished(id, state.outcome)]
        }

        private mutating func pumpGet(_ id: LookupID, now: UInt64) -> [Directive] {
            guard var state = gets[id] else { return [] }
            var out: [Directive] = []
            let width = max(settings.readWidth, settings.disjointPaths)  // at least one reader per path
            while state.inFlight < settings.alpha, state.outcome.responders + state.inFlight < width,
                  state.next < state.nodes.count {
                let node = state.nodes[state.next]
                state.next += 1
                state.inFlight += 1
                gets[id] = state
                out += request(.findValue(key: state.outcome.key, offset: 0), to: node.contact, now: now, purpose: .fetch(id))
                state = gets[id]!
            }
            if state.inFlight == 0 {
                gets[id] = nil
                var outcome = state.outcome
                outcome.records = Array(state.found.values.sorted(by: Record.publisherOrder).prefix(state.limit))
                out.append(.getFinished(id, outcome))
            } else {
                gets[id] = state
            }
            return out
        }

        /// Takes a page of records from `from` for get `id`; asks for the next page if there is one.
        private mutating func received(page records: [Record], total: UInt16, offset: UInt16, from: Contact,
                                       get id: LookupID, now: UInt64) -> [Directive] {
            guard var state = gets[id] else { return [] }
            for r in records {
                // Another holder's copy of a record already verified needs no second signature check.
                if let held = state.found[r.publisher], held.encoded == r.encoded { continue }
                guard r.key == state.outcome.key, r.problem(now: now, settings: settings, verifySignature: state.verify) == nil else {
                    state.outcome.rejected += 1
                    continue
                }
                if let held = state.found[r.publisher], held.sequence >= r.sequence { continue }
                state.found[r.publisher] = r
            }
            let pages = state.pages[from.peerID, default: 0] + 1
            state.pages[from.peerID] = pages
            let nextOffset = Int(offset) + records.count
            if !records.isEmpty, nextOffset < Int(total), pages < settings.maxPagesPerNode, state.found.count < state.limit,
               nextOffset <= Int(UInt16.max) {
                gets[id] = state
                return request(.findValue(key: state.outcome.key, offset: UInt16(nextOffset)), to: from, now: now, purpose: .fetch(id))
            }
            state.inFlight -= 1
            state.outcome.responders += 1
            gets[id] = state
            return pumpGet(id, now: now)
        }

        /// The page of records under `key` from `offset` that fits one datagram.
        func page(of key: PeerID, from offset: UInt16, now: UInt64) -> Message.Body {
            let all = store.records(for: key, now: now)
            let total = UInt16(clamping: all.count)
            var records: [Record] = []
            var bytes = 0
            var i = Int(offset)
            while i < Int(total) {
                let size = all[i].encoded.count
                if bytes + size > Wire.maxRecordBytes { break }
                bytes += size
                records.append(all[i])
                i += 1
            }
            return .values(total: total, offset: offset, records: records)
        }

        // MARK: Periodic work

        /// Housekeeping, to call about once a second: drops expired records, republishes this
        /// node's own records once half their lifetime has passed, and refreshes buckets not
        /// heard from for `bucketRefreshInterval`.
        public mutating func tick(now: UInt64) -> [Directive] {
            store.purge(now: now)
            var out: [Directive] = []
            for key in published.keys.sorted() {
                let p = published[key]!
                guard p.record.expiresAt <= now + p.lifetime / 2, let signer else { continue }
                let record = Record.sign(key: key, value: p.record.value, sequence: max(now, p.record.sequence + 1),
                                         expiresAt: now + p.lifetime, by: signer)
                published[key]!.record = record
                out += put(record, now: now).1
            }
            guard now > settings.bucketRefreshInterval else { return out }
            for b in table.staleBuckets(before: now - settings.bucketRefreshInterval)
            where bucketRefreshedAt[b] + settings.bucketRefreshInterval <= now {
                bucketRefreshedAt[b] = now
                out += startLookup(randomID(inBucket: b), now: now).1
            }
            return out
        }

        private mutating func drive(_ id: LookupID, now: UInt64) -> [Directive] {
            guard var lookup = lookups[id] else { return [] }
            var out: [Directive] = []
            let asks = lookup.next()
            lookups[id] = lookup
            for node in asks { out += request(.findNode(target: lookup.target), to: node.contact, now: now, purpose: .lookup(id)) }
            if lookup.isFinished {
                lookups[id] = nil
                if pathGroup[id] != nil {
                    out += pathDone(id, lookup, now: now)
                } else {
                    out += lookupDone(id, result: lookup.result, hops: lookup.hops, requests: lookup.requestsSent, now: now)
                }
            }
            return out
        }

        // MARK: Events

        /// Handles a message from `sender` (already authenticated by the transport).
        /// `addressProven` says whether the sender's address is known to be its own (it answered
        /// a request, or returned an address cookie); requests from unproven addresses are
        /// answered but do not enter the routing table, so a spoofed source cannot plant entries.
        public mutating func onMessage(_ message: Message, from sender: Contact, now: UInt64, addressProven: Bool = true) -> [Directive] {
            guard sender.peerID != local.peerID else { return [] }
            // An ID that fails the mesh's puzzle is not a member: no answer, no table entry.
            guard sender.peerID.meetsPuzzle(settings.idDifficulty) else { return [] }
            if !message.isResponse {
                var out = addressProven ? heard(from: sender, now: now) : verify(sender, now: now)
                let reply: Message.Body
                switch message.body {
                case .ping:
                    reply = .pong
                case .findNode(let target):
                    let closest = table.closest(to: target, count: settings.k + 1).filter { $0.id != sender.peerID }.prefix(settings.k)
                    reply = .nodes(closest.map(\.contact))
                case .store(let record):
                    reply = .stored(store.store(record, now: now))
                case .findValue(let key, let offset):
                    reply = page(of: key, from: offset, now: now)
                default:
                    return out
                }
                out.append(.send(Message(requestID: message.requestID, body: reply), to: sender))
                return out
            }
            // A response: only from the node the request went to, and of the kind asked for.
            guard let p = pending[message.requestID], p.to.peerID == sender.peerID,
                  Message.answers(p.body, with: message.body) else { return [] }
            pending[message.requestID] = nil
            measured(sender.peerID, sample: Double(now >= p.sentAt ? now - p.sentAt : 0))
            var out = heard(from: sender, now: now)
            switch (p.purpose, message.body) {
            case (.eviction, _):
                evictionPings.remove(sender.peerID)
            case (.verification, _):
                verifications.remove(sender.peerID)  // answered from its address: `heard` above took it in
            case (.lookup(let lookupID), .nodes(let contacts)):
                guard var lookup = lookups[lookupID] else { break }
                let closer = disjoint(contacts.prefix(settings.k)
                    .filter { $0.peerID != local.peerID && $0.peerID.meetsPuzzle(settings.idDifficulty) }
                    .map { Node(contact: $0, lastSeen: now) }, for: lookupID)
                lookup.responded(sender.peerID, closer: closer)
                lookups[lookupID] = lookup
                out += drive(lookupID, now: now)
            case (.store(let op?), .stored(let status)):
                guard puts[op] != nil else { break }
                if status.isHeld { puts[op]!.outcome.stored += 1 } else { puts[op]!.outcome.refused += 1 }
                puts[op]!.outstanding -= 1
                out += finishPutIfDone(op)
            case (.fetch(let op), .values(let total, let offset, let records)):
                out += received(page: records, total: total, offset: offset, from: p.to, get: op, now: now)
            default:
                break
            }
            return out
        }

        /// Handles a request's deadline: if no answer came, the request is retried once, then
        /// the node is counted as failed.
        public mutating func onTimeout(requestID: UInt64, now: UInt64) -> [Directive] {
            guard let p = pending.removeValue(forKey: requestID) else { return [] }
            if p.attempt + 1 < Self.attempts {
                return request(p.body, to: p.to, now: now, purpose: p.purpose, attempt: p.attempt + 1)
            }
            if p.purpose == .verification {
                verifications.remove(p.to.peerID)
                return []
            }
            // A node that does not answer leaves the table; the newest waiting candidate takes its place.
            table.nodeFailed(p.to.peerID)
            switch p.purpose {
            case .eviction:
                evictionPings.remove(p.to.peerID)
            case .verification:
                break
            case .lookup(let lookupID):
                guard var lookup = lookups[lookupID] else { return [] }
                lookup.failed(p.to.peerID)
                lookups[lookupID] = lookup
                return drive(lookupID, now: now)
            case .store(let op?):
                guard puts[op] != nil else { return [] }
                puts[op]!.outcome.failed += 1
                puts[op]!.outstanding -= 1
                return finishPutIfDone(op)
            case .fetch(let op):
                guard gets[op] != nil else { return [] }
                gets[op]!.inFlight -= 1
                return pumpGet(op, now: now)
            case .store(nil):
                break
            }
            return []
        }

        /// Requests awaiting an answer.
        public var pendingRequests: Int { pending.count }
        /// Lookups, puts and gets in progress.
        public var activeLookups: Int { lookups.count - pathGroup.count + groups.count + puts.count + gets.count }
    }
}
