#if canImport(Glibc)
import Glibc
#endif
import MeshCore
import MeshCrypto

extension Gossip {
    /// Tunables. Every member of a mesh may choose its own; none has to agree.
    public struct Settings: Sendable, Equatable {
        /// Peers in the gossip sample.
        public var sampleSize = 8
        /// Neighbours (sample and inbound peers) a forwarded message is pushed to at once; the rest
        /// get an IHAVE. Each node then receives about this many copies: the duplicates per message
        /// are about `eagerFanout - 1`, and the IHAVEs repair what the pushes missed.
        public var eagerFanout = 3
        /// Further neighbours a forwarded message is announced to (IHAVE) at once; the others hear
        /// of it in the next digest. With only 2, about 1% of nodes waited for a digest, which set
        /// the p99 latency.
        public var lazyFanout = 5
        /// Most inbound peers (peers whose sample holds this node) kept; one more is sent a PRUNE
        /// and picks someone else. Without the cap, samples drawn from DHT routing tables piled
        /// onto the few nodes every table knows (one node was in 813 of 1,000 samples, 133 in none).
        public var maxInbound = 12
        /// How long a peer that pruned this node is kept out of its sample (ms).
        public var pruneBackoff: UInt64 = 60_000
        /// A message that has travelled this many hops is delivered but not forwarded.
        public var maxHops: UInt8 = 16
        /// Largest encoded message (bytes) accepted. Up to `Wire.maxDatagramMessageBytes` a
        /// message travels in datagrams; beyond, over secure channels.
        public var maxMessageBytes = 65_536
        /// A message's lifetime when this node publishes it (ms).
        public var messageLifetime: UInt64 = 60_000
        /// Furthest ahead a received message may expire (ms); later is refused.
        public var maxLifetime: UInt64 = 120_000
        /// How long a message ID is remembered (ms); longer than `maxLifetime`, so an expired
        /// message can never be delivered a second time.
        public var seenLifetime: UInt64 = 180_000
        /// Wait after an IHAVE before asking for the message (ms): the push may still arrive.
        public var iwantDelay: UInt64 = 40
        /// Wait for an IWANT's answer before asking the next peer that announced it (ms).
        public var iwantTimeout: UInt64 = 250
        /// Interval of the periodic digest of recent IDs to the sample (ms), against loss.
        public var digestInterval: UInt64 = 1_000
        /// Messages kept for IWANTs: those received within this (ms).
        public var digestWindow: UInt64 = 10_000
        /// Messages announced in digests: those received within this (ms), each to each peer at
        /// most once and never to a peer it was already exchanged with (pushed or announced either
        /// way). Before this rule the digests repeated every ID to every peer for 10 s: half of all
        /// gossip datagrams, and the CPU that set the p99 latency at 1,000 nodes.
        public var digestHistory: UInt64 = 3_000
        /// With nothing to announce, an empty digest (a keepalive) goes out at most this often (ms).
        public var keepaliveInterval: UInt64 = 5_000
        /// An inbound peer not heard from for this long is forgotten (ms).
        public var inboundLifetime: UInt64 = 15_000
        /// Messages per second one origin may publish on one topic (heartbeats: `heartbeatRate`).
        public var originRate = 20.0
        /// Burst allowed above `originRate`.
        public var originBurst = 40.0
        /// Heartbeats per second per origin.
        public var heartbeatRate = 0.2
        /// Heartbeat burst.
        public var heartbeatBurst = 2.0
        /// A peer whose score falls below this is graylisted.
        public var graylistThreshold = -5.0
        /// How long a graylisted peer is ignored and kept out of the sample (ms).
        public var graylistDuration: UInt64 = 60_000
        /// Scores move back toward 0 by this factor per second.
        public var scoreDecayPerSecond = 0.97

        /// The defaults.
        public init() {}
    }

    /// Why a received message was dropped.
    public enum DropReason: String, Sendable, CaseIterable, Codable, CodingKeyRepresentable {
        /// Not a well-formed message (or of an unknown topic).
        case malformed
        /// Over `maxMessageBytes`.
        case tooLarge = "too_large"
        /// The signature does not verify.
        case badSignature = "bad_signature"
        /// Already expired.
        case expired
        /// Expires further ahead than allowed.
        case expiryTooFar = "expiry_too_far"
        /// Its origin exceeded its rate on that topic.
        case rateLimited = "rate_limited"
        /// The sending peer is graylisted.
        case graylisted

        /// True when the sending peer is to blame (its standing drops).
        public var blamesSender: Bool {
            switch self {
            case .malformed, .tooLarge, .badSignature, .expiryTooFar: true
            case .expired, .rateLimited, .graylisted: false
            }
        }
    }

    /// What the shell must do.
    public enum Directive: Sendable, Equatable {
        /// Send a gossip datagram body to a peer.
        case send(Wire, to: Contact)
        /// Hand a message to the application (once per message ID, ever).
        case deliver(Message)
    }

    /// Counters.
    public struct Stats: Sendable, Equatable, Codable {
        /// Messages this node published.
        public var published = 0
        /// Messages delivered to the application.
        public var delivered = 0
        /// Copies received of messages already seen.
        public var duplicates = 0
        /// Pushes sent (first sends and forwards).
        public var pushesSent = 0
        /// IHAVE datagrams sent.
        public var ihaveSent = 0
        /// IWANT datagrams sent.
        public var iwantSent = 0
        /// Messages sent in answer to IWANTs.
        public var repairsSent = 0
        /// Messages dropped, by reason.
        public var dropped: [DropReason: Int] = [:]
        /// Peers graylisted.
        public var graylisted = 0
        /// PRUNEs sent (inbound set full).
        public var prunesSent = 0
        /// PRUNEs received (this node left a peer's neighbours).
        public var prunesReceived = 0

        enum CodingKeys: String, CodingKey {
            case published, delivered, duplicates, pushesSent = "pushes_sent", ihaveSent = "ihave_sent", iwantSent = "iwant_sent"
            case repairsSent = "repairs_sent", dropped, graylisted, prunesSent = "prunes_sent", prunesReceived = "prunes_received"
        }
    }

    /// A publish refused before anything was sent.
    public enum PublishError: Error, Equatable, CustomStringConvertible {
        /// This instance has no signing key.
        case noSigningKey
        /// The message would be larger than one datagram allows.
        case tooLarge(Int, max: Int)
        /// This node exceeded its own rate on the topic.
        case rateLimited(Topic)

        /// Words for people.
        public var description: String {
            switch self {
            case .noSigningKey: "this gossip instance has no signing key"
            case .tooLarge(let n, let max): "the message is \(n) bytes; the limit is \(max)"
            case .rateLimited(let t): "publishing too fast on topic \(t)"
            }
        }
    }

    /// One peer's gossip, as a pure state machine: events in (`receive`, `publish`, `tick`,
    /// `setCandidates`), directives out; time and randomness are injected.
    public struct Instance: Sendable {
        /// This node.
        public let local: Contact
        /// The tunables.
        public let settings: Settings
        private let signer: SigningKey?
        private var rng: SplitMix64
        /// The peers messages are pushed to, drawn from diverse DHT buckets.
        public private(set) var sample: [Contact] = []
        private var candidates: [Contact] = []
        /// Peers that gossip with this node without being in its sample (they have it in theirs),
        /// with when they were last heard: links work both ways (sample and inbound peers are the
        /// neighbours), so no node is left out because few samples picked it.
        private var inbound: [PeerID: (contact: Contact, at: UInt64)] = [:]
        /// Peers that pruned this node, until when they stay out of its sample.
        private var prunedBy: [PeerID: UInt64] = [:]
        /// Sample members added since the last link requests went out.
        private var newlySampled: [Contact] = []
        private var seen: [MessageID: UInt64] = [:]
        private var seenOrder: [(id: MessageID, at: UInt64)] = []
        private var seenHead = 0
        private var recent: [MessageID: Recent] = [:]
        private var recentOrder: [(id: MessageID, at: UInt64)] = []
        private var recentHead = 0
        private var rejected = LRUCache<MessageID, DropReason>(capacity: 4096)
        private var wants: [MessageID: Want] = [:]
        private var scores: [PeerID: Score] = [:]
        private var graylist: [PeerID: UInt64] = [:]
        private var buckets = LRUCache<BucketKey, TokenBucket>(capacity: 8192)
        private var lastSequence: UInt64 = 0
        private var nextDigestAt: UInt64 = 0
        private var lastKeepalive: UInt64 = 0
        /// Counters.
        public private(set) var stats = Stats()

        /// A message kept for repairs, with the peers known to have it or to have been told of it.
        private struct Recent: Sendable {
            var bytes: [UInt8]
            var hops: UInt8
            var at: UInt64
            var peers: [PeerID]

            mutating func exchanged(with peer: PeerID) {
                if !peers.contains(peer) { peers.append(peer) }
            }
        }

        private struct Want: Sendable {
            /// Announcers not asked yet.
            var announcers: [Contact]
            /// Every peer that announced it (they need no digest of it).
            var heardFrom: [PeerID]
            var deadline: UInt64
        }

        private struct Score: Sendable {
            var value: Double
            var at: UInt64
        }

        private struct BucketKey: Hashable, Sendable {
            let origin: PublicKey
            let topic: Topic
        }

        private struct TokenBucket: Sendable {
            var tokens: Double
            var at: UInt64
        }

        /// A gossip instance for `local`; `signer` (the node's identity) signs what it publishes.
        public init(local: Contact, signer: SigningKey?, settings: Settings = Settings(), seed: UInt64) {
            precondition(signer == nil || signer!.publicKey == local.publicKey, "the signer must be the local identity")
            self.local = local
            self.signer = signer
            self.settings = settings
            rng = SplitMix64(seed: seed)
        }

        // MARK: Sample

        /// Offers the peers this node knows (its DHT routing table); the sample keeps its members
        /// that are still known and fills up from buckets it does not cover yet.
        /// New sample members are told at once with an empty IHAVE (a link request): a peer with
        /// no room answers with a PRUNE now rather than after the next keepalive.
        @discardableResult
        public mutating func setCandidates(_ contacts: [Contact], now: UInt64) -> [Directive] {
            candidates = contacts.filter { $0.peerID != local.peerID }
            refillSample(now: now)
            return linkRequests()
        }

        /// Empty IHAVEs to the peers that joined the sample since the last call.
        private mutating func linkRequests() -> [Directive] {
            defer { newlySampled = [] }
            return newlySampled.map { .send(.ihave([]), to: $0) }
        }

        private mutating func refillSample(now: UInt64) {
            let known = Set(candidates.map(\.peerID))
            let barred = Set(graylist.filter { $0.value > now }.keys).union(prunedBy.filter { $0.value > now }.keys)
            sample.removeAll { !known.contains($0.peerID) || barred.contains($0.peerID) }
            guard sample.count < settings.sampleSize else { return }
            var inSample = Set(sample.map(\.peerID))
            var coveredBuckets = Set(sample.map { bucket(of: $0.peerID) })
            var pool = candidates.filter { !inSample.contains($0.peerID) && !barred.contains($0.peerID) }
            // Shuffle, then prefer one peer per bucket not yet covered.
            rng.shuffle(&pool)
            for pass in 0..<2 {
                for c in pool where sample.count < settings.sampleSize && !inSample.contains(c.peerID) {
                    let b = bucket(of: c.peerID)
                    if pass == 0 && coveredBuckets.contains(b) { continue }
                    sample.append(c)
                    newlySampled.append(c)
                    inSample.insert(c.peerID)
                    coveredBuckets.insert(b)
                }
            }
        }

        private func bucket(of id: PeerID) -> Int { local.peerID.distance(to: id).leadingZeroBitCount }

        // MARK: Standing

        private mutating func score(_ id: PeerID, now: UInt64) -> Double {
            guard var s = scores[id] else { return 0 }
            let seconds = Double(now &- s.at) / 1000
            if now > s.at {
                s.value *= pow(settings.scoreDecayPerSecond, seconds)
                s.at = now
                scores[id] = abs(s.value) < 0.01 ? nil : s
            }
            return s.value
        }

        private mutating func blame(_ peer: Contact, now: UInt64) {
            let value = score(peer.peerID, now: now) - 1
            scores[peer.peerID] = Score(value: value, at: now)
            if value < settings.graylistThreshold, graylist[peer.peerID] == nil {
                graylist[peer.peerID] = now + settings.graylistDuration
                stats.graylisted += 1
                refillSample(now: now)
            }
        }

        /// True if `id` is graylisted now.
        public func isGraylisted(_ id: PeerID, now: UInt64) -> Bool {
            guard let until = graylist[id] else { return false }
            return until > now
        }

        /// The standing of a peer (0 neutral; negative after invalid messages; decays toward 0).
        public mutating func standing(of id: PeerID, now: UInt64) -> Double { score(id, now: now) }

        private mutating func allow(_ message: Message, now: UInt64) -> Bool {
            let (rate, burst) = message.topic == .heartbeat ? (settings.heartbeatRate, settings.heartbeatBurst) : (settings.originRate, settings.originBurst)
            let key = BucketKey(origin: message.origin, topic: message.topic)
            var b = buckets.value(for: key) ?? TokenBucket(tokens: burst, at: now)
            b.tokens = min(burst, b.tokens + rate * Double(now &- b.at) / 1000)
            b.at = max(b.at, now)
            let ok = b.tokens >= 1
            if ok { b.tokens -= 1 }
            _ = buckets.insert(b, for: key)
            return ok
        }

        private mutating func drop(_ reason: DropReason, id: MessageID?, from peer: Contact, now: UInt64) -> [Directive] {
            stats.dropped[reason, default: 0] += 1
            if let id { _ = rejected.insert(reason, for: id) }
            if reason.blamesSender { blame(peer, now: now) }
            return []
        }

        // MARK: Events

        /// Signs and sends a message: pushed to every neighbour.
        public mutating func publish(topic: Topic, payload: [UInt8], now: UInt64) throws(PublishError) -> (Message, [Directive]) {
            guard let signer else { throw .noSigningKey }
            let size = SignedEnvelope.overhead + 1 + payload.count
            guard size <= settings.maxMessageBytes, 1 + payload.count <= SignedEnvelope.maxBody else {
                throw .tooLarge(size, max: min(settings.maxMessageBytes, SignedEnvelope.overhead + SignedEnvelope.maxBody))
            }
            lastSequence = max(now, lastSequence + 1)
            let message = Message.sign(topic: topic, payload: payload, sequence: lastSequence, expiresAt: now + settings.messageLifetime, by: signer)
            guard allow(message, now: now) else { throw .rateLimited(topic) }
            stats.published += 1
            let targets = neighbours
            remember(message, hops: 0, now: now, exchangedWith: targets.map(\.peerID))
            var out: [Directive] = []
            for peer in targets {
                out.append(.send(.push(hops: 1, message: message.envelope.encoded), to: peer))
                stats.pushesSent += 1
            }
            return (message, out)
        }

        /// Handles a gossip datagram from `peer` (already authenticated by the transport).
        public mutating func receive(_ wire: Wire, from peer: Contact, now: UInt64) -> [Directive] {
            if isGraylisted(peer.peerID, now: now) { return drop(.graylisted, id: nil, from: peer, now: now) }
            if case .prune = wire {
                stats.prunesReceived += 1
                prunedBy[peer.peerID] = now + settings.pruneBackoff
                inbound[peer.peerID] = nil
                if sample.contains(where: { $0.peerID == peer.peerID }) { refillSample(now: now) }
                return linkRequests()
            }
            var out: [Directive] = []
            if !sample.contains(where: { $0.peerID == peer.peerID }) {
                if inbound[peer.peerID] != nil || inbound.count < settings.maxInbound {
                    inbound[peer.peerID] = (peer, now)
                } else if case .ihave = wire {
                    // Full: this peer should gossip with someone else. (Pushes may be repairs
                    // this node asked for, so they are not answered with a PRUNE.)
                    out.append(.send(.prune, to: peer))
                    stats.prunesSent += 1
                }
            }
            out += receive(wire, acceptedFrom: peer, now: now)
            return out + linkRequests()
        }

        private mutating func receive(_ wire: Wire, acceptedFrom peer: Contact, now: UInt64) -> [Directive] {
            switch wire {
            case .prune:
                return []
            case .push(let hops, let bytes):
                return receivePush(hops: hops, bytes: bytes, from: peer, now: now)
            case .ihave(let ids):
                for id in ids { recent[id]?.exchanged(with: peer.peerID) }
                for id in ids where seen[id] == nil && rejected.peek(id) == nil {
                    if var want = wants[id] {
                        if !want.heardFrom.contains(peer.peerID), want.heardFrom.count < 2 * settings.sampleSize {
                            want.announcers.append(peer)
                            want.heardFrom.append(peer.peerID)
                            wants[id] = want
                        }
                    } else if wants.count < 4096 {
                        wants[id] = Want(announcers: [peer], heardFrom: [peer.peerID], deadline: now + settings.iwantDelay)
                    }
                }
                return []
            case .iwant(let ids):
                var out: [Directive] = []
                for id in ids {
                    guard let m = recent[id] else { continue }
                    recent[id]!.exchanged(with: peer.peerID)
                    out.append(.send(.push(hops: m.hops &+ 1, message: m.bytes), to: peer))
                    stats.repairsSent += 1
                }
                return out
            }
        }

        private mutating func receivePush(hops: UInt8, bytes: [UInt8], from peer: Contact, now: UInt64) -> [Directive] {
            guard bytes.count <= settings.maxMessageBytes else { return drop(.tooLarge, id: nil, from: peer, now: now) }
            guard let message = Message(decoding: bytes) else { return drop(.malformed, id: nil, from: peer, now: now) }
            let id = message.id
            if seen[id] != nil {
                stats.duplicates += 1
                recent[id]?.exchanged(with: peer.peerID)
                return []
            }
            if let reason = rejected.peek(id) { return drop(reason, id: nil, from: peer, now: now) }
            let e = message.envelope
            if e.expiresAt <= now { return drop(.expired, id: id, from: peer, now: now) }
            if e.expiresAt - now > settings.maxLifetime { return drop(.expiryTooFar, id: id, from: peer, now: now) }
            if !e.isSignatureValid(domain: domain) { return drop(.badSignature, id: id, from: peer, now: now) }
            if !allow(message, now: now) { return drop(.rateLimited, id: id, from: peer, now: now) }
            // At the hop limit, or back at its origin, a message goes no further.
            var targets: [Contact] = []
            if hops < settings.maxHops && message.origin != local.publicKey {
                targets = neighbours.filter { $0.peerID != peer.peerID && $0.publicKey != message.origin }
                rng.shuffle(&targets)
                targets = Array(targets.prefix(settings.eagerFanout + settings.lazyFanout))
            }
            let announcers = wants[id]?.heardFrom.filter { $0 != peer.peerID } ?? []
            remember(message, hops: hops, now: now, exchangedWith: [peer.peerID] + announcers + targets.map(\.peerID))
            wants[id] = nil
            stats.delivered += 1
            // Push to a few neighbours, announce to a few more; never back to the sender or the
            // origin. The digest tells everyone else.
            var out: [Directive] = [.deliver(message)]
            for (i, t) in targets.enumerated() {
                if i < settings.eagerFanout {
                    out.append(.send(.push(hops: hops &+ 1, message: bytes), to: t))
                    stats.pushesSent += 1
                } else {
                    out.append(.send(.ihave([id]), to: t))
                    stats.ihaveSent += 1
                }
            }
            return out
        }

        private mutating func remember(_ message: Message, hops: UInt8, now: UInt64, exchangedWith peers: [PeerID]) {
            seen[message.id] = now
            seenOrder.append((message.id, now))
            recent[message.id] = Recent(bytes: message.envelope.encoded, hops: hops, at: now, peers: peers)
            recentOrder.append((message.id, now))
        }

        /// Inbound peers, in a stable order.
        private var inboundPeers: [Contact] {
            inbound.keys.sorted().map { inbound[$0]!.contact }
        }

        /// The sample, then the inbound peers.
        public var neighbours: [Contact] { sample + inboundPeers }

        /// The earliest time `tick` has work to do.
        public var nextWake: UInt64 {
            wants.values.reduce(nextDigestAt) { min($0, $1.deadline) }
        }

        /// Timed work: IWANTs for announced messages that did not arrive, the periodic digest to
        /// the sample, forgetting old IDs. Call at `nextWake` (or more often).
        public mutating func tick(now: UInt64) -> [Directive] {
            var out: [Directive] = []
            var asks: [PeerID: (Contact, [MessageID])] = [:]
            for id in wants.keys.sorted() {
                guard var want = wants[id], want.deadline <= now else { continue }
                if seen[id] != nil || want.announcers.isEmpty {
                    wants[id] = nil
                    continue
                }
                let from = want.announcers.removeFirst()
                want.deadline = now + settings.iwantTimeout
                wants[id] = want
                asks[from.peerID, default: (from, [])].1.append(id)
            }
            for key in asks.keys.sorted() {
                let (peer, ids) = asks[key]!
                for chunk in stride(from: 0, to: ids.count, by: Wire.maxIDs) {
                    out.append(.send(.iwant(Array(ids[chunk..<min(chunk + Wire.maxIDs, ids.count)])), to: peer))
                    stats.iwantSent += 1
                }
            }
            // Forget: IDs after seenLifetime, message bodies after digestWindow.
            while seenHead < seenOrder.count, seenOrder[seenHead].at + settings.seenLifetime <= now {
                seen[seenOrder[seenHead].id] = nil
                seenHead += 1
            }
            if seenHead > 4096 { seenOrder.removeFirst(seenHead); seenHead = 0 }
            while recentHead < recentOrder.count, recentOrder[recentHead].at + settings.digestWindow <= now {
                recent[recentOrder[recentHead].id] = nil
                recentHead += 1
            }
            if recentHead > 4096 { recentOrder.removeFirst(recentHead); recentHead = 0 }
            for (id, until) in graylist where until <= now { graylist[id] = nil }
            for (id, until) in prunedBy where until <= now { prunedBy[id] = nil }
            for (id, entry) in inbound where entry.at + settings.inboundLifetime <= now { inbound[id] = nil }
            if now >= nextDigestAt {
                // Jittered, so that nodes started together do not digest in step.
                nextDigestAt = now + settings.digestInterval / 2 + rng.next() % max(1, settings.digestInterval)
                out += digest(now: now)
            }
            return out
        }

        /// The periodic digest: to each sample and inbound peer, the recent IDs it has not been
        /// told of and has not told this node of; with nothing to say to the sample for a while,
        /// an empty one (a keepalive) keeps this node in its sample peers' inbound sets.
        private mutating func digest(now: UInt64) -> [Directive] {
            var out: [Directive] = []
            let fresh = recentOrder[recentHead...].filter { $0.at + settings.digestHistory > now }.map(\.id)
            let keepalive = now >= lastKeepalive + settings.keepaliveInterval
            if keepalive { lastKeepalive = now }
            for (isSample, peer) in sample.map({ (true, $0) }) + inboundPeers.map({ (false, $0) }) {
                let ids = fresh.filter { recent[$0].map { !$0.peers.contains(peer.peerID) } ?? false }.suffix(Wire.maxIDs)
                if ids.isEmpty && !(isSample && keepalive) { continue }
                for id in ids { recent[id]!.exchanged(with: peer.peerID) }
                out.append(.send(.ihave(Array(ids)), to: peer))
                stats.ihaveSent += 1
            }
            return out
        }
    }
}
