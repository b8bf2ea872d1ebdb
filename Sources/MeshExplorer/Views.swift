import Foundation
import MeshCore
import MeshCrypto
import MeshGossip
import MeshJobs
import MeshLedger
import MeshMarket
import MeshRuntime
import Synchronization

// The explorer's views: what each page and its JSON twin show, gathered from one node's own
// DHT view, gossip and ledger. Every view is a plain Codable value (the JSON API encodes it
// as is, with snake_case keys); the pages render the same values as HTML.

/// GPUs of one model across the providers this node has heard announce.
public struct ModelCapacity: Codable, Sendable, Equatable {
    /// The model's slug (`rtx-4090`).
    public var model: String
    /// Its vendor.
    public var vendor: String
    /// GPUs offered.
    public var gpus: Int
    /// Their memory together, MiB.
    public var vramMiB: Int
    /// Providers offering at least one.
    public var providers: Int
    /// Free job slots on those providers.
    public var freeSlots: Int
}

/// Receipts whose jobs started in one hour.
public struct HourCount: Codable, Sendable, Equatable {
    /// The hour's start, Unix seconds.
    public var hourStart: UInt64
    /// Receipts (finished, co-signed jobs) that started in it.
    public var jobs: Int
}

/// The overview page: the mesh as this node sees it.
public struct OverviewView: Codable, Sendable, Equatable {
    /// This node's peer ID.
    public var peerID: String
    /// This node's contact string.
    public var contact: String
    /// The software version.
    public var version: String
    /// Seconds since the node started.
    public var uptimeSeconds: Double
    /// When this view was made, Unix ms.
    public var generatedAtMs: UInt64
    /// Peers in the DHT routing table.
    public var peersKnown: Int
    /// Whether the node has joined the DHT.
    public var dhtJoined: Bool
    /// DHT records this node stores for others.
    public var dhtRecords: Int
    /// Peers whose heartbeats this node has heard, and how many of them are not silent.
    public var heartbeatPeers: Int, heartbeatPeersAlive: Int
    /// Providers with a live capability record heard on gossip (this node's own offer included).
    public var providers: Int
    /// GPUs, their memory (MiB), free and total job slots across those providers.
    public var gpus: Int, vramMiB: Int, freeSlots: Int, totalSlots: Int
    /// Capacity by model, most GPUs first.
    public var models: [ModelCapacity]
    /// Jobs (receipts) per hour over the last 24 hours, oldest first; every hour present.
    public var jobsPerHour: [HourCount]
    /// Receipts held: all, this node's own, and reports kept.
    public var receiptsSeen: Int, ownReceipts: Int, reportsSeen: Int
    /// Peers the ledger names.
    public var ledgerPeers: Int
    /// Datagrams in, out and dropped (every reason together).
    public var datagramsIn: Int, datagramsOut: Int, datagramsDropped: Int
    /// This node's jobs: running now, completed, failed (both roles, since it started).
    public var jobsRunning: Int, jobsCompleted: Int, jobsFailed: Int
}

/// The capacity page: offers that match a filter, best first (as `find` ranks them).
public struct CapacityView: Codable, Sendable, Equatable {
    /// Offers heard in all.
    public var offersKnown: Int
    /// Offers that match the filter.
    public var matched: Int
    /// The best `limit` of them (as `find --json` prints offers, without round-trip times).
    public var offers: [OfferJSON]
}

/// A peer this node knows of, with where it knows it from.
public struct PeerSummary: Codable, Sendable, Equatable {
    /// The peer ID.
    public var peerID: String
    /// Its contact string, when known.
    public var contact: String?
    /// In this node's routing table.
    public var inRoutingTable: Bool
    /// Offers GPUs (a live record heard on gossip).
    public var provider: Bool
    /// Share of expected heartbeats heard (nil: none heard).
    public var availability: Double?
    /// This node's view of its reputation (nil: no evidence).
    public var reputation: Double?
}

/// One page of the peers this node knows of, sorted by peer ID.
public struct PeersView: Codable, Sendable, Equatable {
    /// Peers known in all.
    public var total: Int
    /// Providers among them.
    public var providers: Int
    /// Where this page starts in the sorted list, and how many it holds at most.
    public var offset: Int, limit: Int
    /// The page.
    public var peers: [PeerSummary]
}

/// A receipt as the peer page lists it.
public struct ReceiptView: Codable, Sendable, Equatable {
    /// The receipt ID and the job's, hex.
    public var id: String, jobID: String
    /// The peer's part in it: `provider` or `renter`.
    public var role: String
    /// The other party's peer ID.
    public var counterpart: String
    /// GPU model and count.
    public var gpuModel: String, gpus: Int
    /// GPU time, ms, and the charge, millipoints.
    public var gpuMs: UInt64, chargeMillipoints: UInt64
    /// When the job started, Unix ms.
    public var startedAtMs: UInt64
    /// The job's exit status.
    public var exitStatus: Int32
    /// How this node got it: own, gossip or import.
    public var source: String
}

/// Heartbeats heard from a peer: its uptime as this node can tell.
public struct UptimeView: Codable, Sendable, Equatable {
    /// First and last heartbeat heard, Unix ms.
    public var firstHeardMs: UInt64, lastHeardMs: UInt64
    /// Heartbeats heard.
    public var heartbeats: Int
    /// Share of the heartbeats expected since the first that arrived, 0 to 1.
    public var availability: Double
    /// No heartbeat for two intervals.
    public var silent: Bool
    /// The uptime the peer reported in its latest heartbeat, seconds.
    public var reportedUptimeSeconds: UInt32
    /// Its heartbeat interval, seconds.
    public var intervalSeconds: Int
}

/// A peer's reputation in this node's view, with the evidence behind it.
public struct ReputationView: Codable, Sendable, Equatable {
    /// The score, 0 to 1 (0.5: no evidence).
    public var score: Double
    /// False when nothing is known about the peer (the score is the prior).
    public var hasEvidence: Bool
    /// The full computation (nil: no evidence).
    public var detail: Reputation.Score?
    /// The evidence and arithmetic for people, as `gpumesh reputation PEER --explain` prints it.
    public var explanation: [String]
}

/// The peer page.
public struct PeerView: Codable, Sendable, Equatable {
    /// The peer ID and public key (hex; nil when only the ID is known).
    public var peerID: String, publicKey: String?
    /// True for this node itself.
    public var isSelf: Bool
    /// How it is reached, when known.
    public var contact: String?
    /// Its routing-table entry: bucket and milliseconds since last seen (nil: not in the table).
    public var bucket: Int?, lastSeenMsAgo: UInt64?
    /// Its live offer, if it provides.
    public var offer: OfferJSON?
    /// Its heartbeats (nil: none heard).
    public var uptime: UptimeView?
    /// This node's view of its reputation.
    public var reputation: ReputationView
    /// Receipts naming it, newest first (at most `receiptsShown`).
    public var receipts: [ReceiptView]
    /// How many receipts are shown at most.
    public var receiptsShown: Int
    /// Its points per epoch, oldest first.
    public var points: [Rewards.Entry]
}

/// The jobs page: this node's jobs in both roles, newest first.
public struct JobsView: Codable, Sendable, Equatable {
    /// The jobs.
    public var jobs: [JobInfo]
    /// Jobs per state.
    public var states: [String: Int]
}

/// One job and the start of its log.
public struct JobView: Codable, Sendable, Equatable {
    /// The job.
    public var job: JobInfo
    /// Its log from `logOffset` (UTF-8, invalid bytes replaced).
    public var log: String
    /// Where `log` starts and where the next read continues, in bytes.
    public var logOffset: UInt64, logNext: UInt64
}

/// Points of the mesh for one epoch, as this node's receipts give them.
public struct EpochTotal: Codable, Sendable, Equatable {
    /// The epoch (days since 1970-01-01 UTC).
    public var epoch: UInt64
    /// Points earned by all providers together, millipoints.
    public var earnedMillipoints: UInt64
    /// Receipts (jobs provided) in it.
    public var jobs: Int
}

/// One peer's points in one epoch.
public struct LeaderboardRow: Codable, Sendable, Equatable {
    /// The peer ID.
    public var peerID: String
    /// Earned as a provider and spent as a renter, millipoints.
    public var earnedMillipoints: UInt64, spentMillipoints: UInt64
    /// GPU time provided, ms.
    public var gpuMs: UInt64
    /// Receipts as provider and as renter.
    public var jobsProvided: Int, jobsRented: Int

    init(_ e: Rewards.Entry) {
        peerID = Hex.decode(e.peer).flatMap { try? PublicKey(bytes: $0) }.map { PeerID(publicKey: $0).hex } ?? e.peer
        earnedMillipoints = e.earnedMillipoints
        spentMillipoints = e.spentMillipoints
        gpuMs = e.gpuMilliseconds
        jobsProvided = e.jobsProvided
        jobsRented = e.jobsRented
    }
}

/// The rewards page: the leaderboard of one epoch and the totals of every epoch.
public struct RewardsView: Codable, Sendable, Equatable {
    /// The epoch shown.
    public var epoch: UInt64
    /// The current epoch.
    public var currentEpoch: UInt64
    /// The epoch's peers, most earned first (then most spent): the first `limit` of them.
    public var leaderboard: [LeaderboardRow]
    /// Peers with points in the epoch, shown or not.
    public var peersWithPoints: Int
    /// Every epoch with receipts, oldest first (at most the last 60).
    public var epochs: [EpochTotal]
}

/// A request the explorer cannot answer, with the HTTP status and a message for people.
public struct ExplorerProblem: Error, Equatable, CustomStringConvertible, Sendable {
    /// 400, 404, 503.
    public var status: Int
    /// What was wrong.
    public var message: String
    /// Makes a problem.
    public init(_ status: Int, _ message: String) { self.status = status; self.message = message }
    /// The message.
    public var description: String { message }
}

/// Gathers the views from a running node (any thread). Ledger reads happen on the calling task;
/// node state is read on the node's loop.
struct ViewSource: Sendable {
    let node: MeshNode
    let rewards: RewardsCache
    /// Receipts the peer page lists at most.
    static let receiptsShown = 50

    private static var now: UInt64 { UInt64(Date().timeIntervalSince1970 * 1000) }

    private func ledger<T>(_ body: (Ledger) throws -> T) throws(ExplorerProblem) -> T {
        do { return try body(node.ledgerStore) } catch { throw ExplorerProblem(503, "the ledger cannot be read: \(error)") }
    }

    private func live<T>(_ body: () async throws -> T) async throws(ExplorerProblem) -> T {
        do { return try await body() } catch { throw ExplorerProblem(503, "the node cannot answer: \(error)") }
    }

    /// Live offers heard on gossip plus this node's own, newest record per provider.
    private func offers() async throws(ExplorerProblem) -> [CapabilityRecord] {
        try await live {
            var records = try await node.announcedOffers()
            if let own = try await node.currentOffer(), !own.capability.withdrawn, !records.contains(where: { $0.provider == own.provider }) {
                records.append(own)
            }
            return records
        }
    }

    func overview() async throws(ExplorerProblem) -> OverviewView {
        let (status, gossip, jobs) = try await live { (try await node.status(), try await node.gossipSnapshot(), try await node.jobList()) }
        let records = try await offers()
        let now = Self.now
        let counts = try ledger { try $0.counts() }
        let hourNow = now / 3_600_000
        let perHour = try ledger { try $0.receiptsPerHour(since: (hourNow - 23) * 3_600_000) }
        var models: [String: ModelCapacity] = [:]
        var providersOf: [String: Set<PublicKey>] = [:]
        var gpus = 0, vram = 0, free = 0, total = 0
        for r in records {
            let c = r.capability
            free += c.freeSlots
            total += c.totalSlots
            for g in c.gpus {
                gpus += g.count
                vram += g.count * g.vramMiB
                var m = models[g.slug] ?? ModelCapacity(model: g.slug, vendor: g.vendor, gpus: 0, vramMiB: 0, providers: 0, freeSlots: 0)
                m.gpus += g.count
                m.vramMiB += g.count * g.vramMiB
                if providersOf[g.slug, default: []].insert(r.provider).inserted {
                    m.providers += 1
                    m.freeSlots += c.freeSlots
                }
                models[g.slug] = m
            }
        }
        let counters = status.counters
        let dropped = counters.filter { NodeCounter(rawValue: $0.key)?.isDrop == true }.values.reduce(0, +)
        return OverviewView(
            peerID: status.peerID, contact: status.contact, version: status.version, uptimeSeconds: status.uptimeSeconds, generatedAtMs: now,
            peersKnown: status.dhtPeers, dhtJoined: status.dhtJoined, dhtRecords: status.dhtRecords,
            heartbeatPeers: gossip.heartbeatPeers, heartbeatPeersAlive: gossip.heartbeatPeersAlive,
            providers: records.count, gpus: gpus, vramMiB: vram, freeSlots: free, totalSlots: total,
            models: models.values.sorted { ($0.gpus, $1.model) > ($1.gpus, $0.model) },
            jobsPerHour: (hourNow - 23...hourNow).map { HourCount(hourStart: $0 * 3600, jobs: perHour[$0] ?? 0) },
            receiptsSeen: counts.receipts, ownReceipts: counts.ownReceipts, reportsSeen: counts.reports, ledgerPeers: counts.peers,
            datagramsIn: counters[NodeCounter.datagramsIn.rawValue] ?? 0, datagramsOut: counters[NodeCounter.datagramsOut.rawValue] ?? 0,
            datagramsDropped: dropped,
            jobsRunning: jobs.filter { !$0.isFinished }.count, jobsCompleted: jobs.filter { $0.state == "completed" }.count,
            jobsFailed: jobs.filter { $0.state == "failed" || $0.state == "cancelled" }.count)
    }

    func capacity(_ query: CapabilityQuery) async throws(ExplorerProblem) -> CapacityView {
        let records = try await offers()
        let scores = try await live { try await node.reputationDetails() }
        let matching = records.filter { query.matches($0.capability) }
            .map { RankedOffer(record: $0, reputation: scores[$0.provider]?.value) }
            .filter { o in query.minReputation.map { (o.reputation ?? Ranking.unknownReputation) >= $0 } ?? true }
            .sorted(by: Ranking.precedes)
        return CapacityView(offersKnown: records.count, matched: matching.count,
                            offers: matching.prefix(query.limit).map(OfferJSON.init))
    }

    /// What the node knows of other peers: its routing table, the heartbeats it heard, the
    /// offers it heard, and its reputation view.
    private func peerSources() async throws(ExplorerProblem)
        -> (dht: DHTSnapshot, liveness: [PeerLiveness], records: [CapabilityRecord], scores: [PublicKey: Reputation.Score]) {
        let (dht, liveness, scores) = try await live { (try await node.dhtSnapshot(), try await node.peerLiveness(), try await node.reputationDetails()) }
        return (dht, liveness, try await offers(), scores)
    }

    /// The peers this node knows of (routing table, heartbeats, offers, ledger), sorted by ID:
    /// `limit` of them from `offset`.
    func peers(offset: Int, limit: Int) async throws(ExplorerProblem) -> PeersView {
        let (dht, liveness, records, scores) = try await peerSources()
        let ledgerKeys = try ledger { try $0.peerKeys() }
        // Keyed and sorted by peer ID (its numeric order is its hex order); hex strings are made
        // only for the page shown.
        var out: [PeerID: PeerSummary] = [:]
        func update(_ id: PeerID, _ change: (inout PeerSummary) -> Void) {
            var e = out[id] ?? PeerSummary(peerID: "", contact: nil, inRoutingTable: false, provider: false, availability: nil, reputation: nil)
            change(&e)
            out[id] = e
        }
        for p in dht.peers { if let id = PeerID(hex: p.peerID) { update(id) { $0.inRoutingTable = true; $0.contact = p.contact } } }
        for l in liveness { if let id = PeerID(hex: l.peerID) { update(id) { $0.availability = l.availability } } }
        for r in records {
            update(r.capability.contact.peerID) { $0.provider = true; $0.contact = $0.contact ?? r.capability.contact.description }
        }
        for k in ledgerKeys { update(PeerID(publicKey: k)) { $0.reputation = scores[k]?.value } }
        let inLedger = Set(ledgerKeys)
        for (k, s) in scores where !inLedger.contains(k) { update(PeerID(publicKey: k)) { $0.reputation = s.value } }
        out[node.peerID] = nil
        let ids = out.keys.sorted()
        let page = ids.dropFirst(offset).prefix(limit).map { id in
            var e = out[id]!
            e.peerID = id.hex
            return e
        }
        return PeersView(total: ids.count, providers: out.values.filter(\.provider).count, offset: offset, limit: limit, peers: page)
    }

    /// The peer page for `id` (64 hex digits); 404 when this node knows nothing of it.
    func peer(_ text: String) async throws(ExplorerProblem) -> PeerView {
        guard let id = PeerID(hex: text.lowercased()) else {
            throw ExplorerProblem(400, "'\(text.prefix(80))' is not a peer ID: give its 64 hex digits")
        }
        let (dht, liveness, records, scores) = try await peerSources()
        let record = records.first { PeerID(publicKey: $0.provider) == id }
        // The peer's key: from the routing table, an offer, the scores or the ledger.
        var key: PublicKey?
        if id == node.peerID { key = node.identity.publicKey }
        key = key ?? record?.provider
        key = key ?? scores.keys.first { PeerID(publicKey: $0) == id }
        if key == nil {
            key = try ledger { try $0.peerKeys().first { PeerID(publicKey: $0) == id } }
        }
        let entry = dht.peers.first { $0.peerID == id.hex }
        if key == nil, let entry, let contact = try? Contact(parsing: entry.contact) { key = contact.publicKey }
        let beats = liveness.first { $0.peerID == id.hex }
        guard key != nil || entry != nil || beats != nil else {
            throw ExplorerProblem(404, "no peer \(id.hex) in this node's view (routing table, heartbeats, offers, ledger)")
        }
        let score = key.flatMap { scores[$0] }
        var receipts: [ReceiptView] = []
        var points: [Rewards.Entry] = []
        if let key {
            receipts = try ledger { try $0.receipts(involving: key, limit: Self.receiptsShown, newestFirst: true) }.map { s in
                let r = s.receipt
                let asProvider = r.provider == key
                return ReceiptView(id: Hex.encode(r.id), jobID: Hex.encode(r.jobID), role: asProvider ? "provider" : "renter",
                                   counterpart: PeerID(publicKey: asProvider ? r.renter : r.provider).hex, gpuModel: r.gpuModel, gpus: r.gpus,
                                   gpuMs: r.gpuMilliseconds, chargeMillipoints: r.charge, startedAtMs: r.startedAt, exitStatus: r.exitStatus,
                                   source: s.source.rawValue)
            }
            points = try ledger { try rewards.tally($0) }.entries(peer: key)
        }
        let uptime = beats.map { b in
            UptimeView(firstHeardMs: b.entry.firstHeard, lastHeardMs: b.entry.lastHeard, heartbeats: b.entry.count, availability: b.availability,
                       silent: b.silent, reportedUptimeSeconds: b.entry.latest.uptimeSeconds, intervalSeconds: Int(b.entry.latest.intervalSeconds))
        }
        let reputation = ReputationView(score: score?.value ?? Ranking.unknownReputation, hasEvidence: score != nil, detail: score,
                                        explanation: score?.explanation(name: Reputation.shortPeerID) ?? [])
        return PeerView(peerID: id.hex, publicKey: key.map { Hex.encode($0.bytes) }, isSelf: id == node.peerID,
                        contact: entry?.contact ?? record?.capability.contact.description ?? (id == node.peerID ? node.contact.description : nil),
                        bucket: entry?.bucket, lastSeenMsAgo: entry?.lastSeenMillisecondsAgo,
                        offer: record.map { OfferJSON(RankedOffer(record: $0, reputation: score?.value)) }, uptime: uptime, reputation: reputation,
                        receipts: receipts, receiptsShown: Self.receiptsShown, points: points)
    }

    func jobs() async throws(ExplorerProblem) -> JobsView {
        let jobs = try await live { try await node.jobList() }
        var states: [String: Int] = [:]
        for j in jobs { states[j.state, default: 0] += 1 }
        return JobsView(jobs: jobs, states: states)
    }

    /// A job (full ID or a prefix of at least 4 hex digits) and its log from `offset`.
    func job(_ id: String, logFrom offset: UInt64) async throws(ExplorerProblem) -> JobView {
        guard id.count >= 4, id.count <= 64, id.allSatisfy(\.isHexDigit) else {
            throw ExplorerProblem(400, "'\(id.prefix(80))' is not a job ID: give 4 to 64 hex digits")
        }
        do {
            var (job, bytes) = try await node.jobLog(id.lowercased(), from: offset)
            bytes.removeLast(Self.incompleteUTF8Tail(bytes))
            return JobView(job: job, log: String(decoding: bytes, as: UTF8.self), logOffset: offset, logNext: offset + UInt64(bytes.count))
        } catch let error as JobError {
            if case .unknown = error { throw ExplorerProblem(404, "no job \(id) on this node") }
            throw ExplorerProblem(400, "\(error)")
        } catch {
            throw ExplorerProblem(503, "the node cannot answer: \(error)")
        }
    }

    /// How many bytes at the end of `bytes` begin a UTF-8 sequence that the read cut short (0-3):
    /// they are left for the next read, so a character split by a read boundary is not mangled.
    static func incompleteUTF8Tail(_ bytes: [UInt8]) -> Int {
        guard !bytes.isEmpty else { return 0 }
        for back in 1...min(3, bytes.count) {
            let b = bytes[bytes.count - back]
            if b & 0xC0 == 0x80 { continue }  // a continuation byte: look further back
            let length = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1
            return length > back ? back : 0
        }
        return 0
    }

    func rewards(epoch: UInt64?, limit: Int) throws(ExplorerProblem) -> RewardsView {
        let tally = try ledger { try rewards.tally($0) }
        let current = Rewards.epoch(of: Self.now)
        let epochs = tally.epochs.suffix(60)
        let totals = epochs.map { e in
            tally.entries(epoch: e).reduce(into: EpochTotal(epoch: e, earnedMillipoints: 0, jobs: 0)) {
                let (sum, overflow) = $0.earnedMillipoints.addingReportingOverflow($1.earnedMillipoints)
                $0.earnedMillipoints = overflow ? .max : sum
                $0.jobs += $1.jobsProvided
            }
        }
        let shown = epoch ?? epochs.last ?? current
        let board = tally.entries(epoch: shown)
            .sorted { ($0.earnedMillipoints, $0.spentMillipoints, $1.peer) > ($1.earnedMillipoints, $1.spentMillipoints, $0.peer) }
        return RewardsView(epoch: shown, currentEpoch: current, leaderboard: board.prefix(limit).map(LeaderboardRow.init),
                           peersWithPoints: board.count, epochs: totals)
    }
}

/// The reward tally of the ledger, kept up to date incrementally: each read adds only the
/// receipts stored since the last one (receipts are never removed), so a page costs the new
/// receipts, not all of them. Shared by every request of one explorer.
final class RewardsCache: Sendable {
    private let state = Mutex<(tally: Rewards.Tally, last: Int64)>((Rewards.Tally(), 0))

    /// The tally over every receipt `ledger` holds now.
    func tally(_ ledger: Ledger) throws -> Rewards.Tally {
        try state.withLock { s in
            let (facts, last) = try ledger.rewardFacts(after: s.last)
            s.tally.add(facts)
            s.last = last
            return s.tally
        }
    }
}
