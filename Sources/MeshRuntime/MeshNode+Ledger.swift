import Dispatch
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
import MeshLedger
import MeshMarket

/// The node's ledger (`<data>/ledger.sqlite`) and what it keeps up to date: receipts (own ones
/// stored durably before the job counts as done, gossiped ones in batches), reports heard on
/// gossip, this node's experience of its peers, and the reputation scores searches and the
/// provider policy read. Database work other than an own receipt runs on a serial queue off the
/// loop; the scores are copied back to the loop after each recompute. Loop-confined otherwise.
final class LedgerService: @unchecked Sendable {
    unowned let node: MeshNode
    let ledger: Ledger
    private let queue = DispatchQueue(label: "gpumesh.ledger")
    private let friends: Set<String>
    /// The last computed scores (loop thread).
    private(set) var scores: [PublicKey: Double] = [:]
    /// The last computed scores with their evidence and arithmetic (loop thread).
    private(set) var details: [PublicKey: Reputation.Score] = [:]
    private var pending: [(receipt: Negotiation.Receipt, from: PublicKey)] = []
    private var flushTimer: LoopTimer?
    private var recomputeTimer: LoopTimer?
    private var recomputing = false
    private var soonTimer: LoopTimer?
    private var recomputeAgain = false
    private var stopped = false

    /// Gossiped receipts are stored in batches of at most this many, at most this often.
    static let batchSize = 512
    static let batchDelay: Duration = .milliseconds(200)

    init(node: MeshNode, friends: [String]) throws {
        self.node = node
        self.friends = Set(friends)
        let path = node.dataDirectory + "/ledger.sqlite"
        do { ledger = try Ledger(path: path) } catch { throw NodeError.ledger("\(error)") }
        // Receipts kept by an earlier version in receipts.log move into the ledger once.
        let log = node.dataDirectory + "/receipts.log"
        if FileManager.default.fileExists(atPath: log) {
            let old = try ReceiptStore(path: log)
            do { try ledger.ingest(old.receipts, source: .own, now: MeshNode.wallClockMilliseconds()) } catch { throw NodeError.ledger("\(error)") }
            try? FileManager.default.moveItem(atPath: log, toPath: log + ".imported")
        }
    }

    func start(recomputeEvery seconds: Int = 60) {
        recompute()
        recomputeTimer = try? node.loop.schedule(after: .seconds(seconds), repeating: .seconds(seconds)) { [unowned self] in recompute() }
    }

    /// Stores what is pending and waits for the queue (loop thread, at stop).
    func stop() {
        stopped = true
        recomputeTimer?.cancel()
        flushTimer?.cancel()
        soonTimer?.cancel()
        flush()
        waitForWrites()
    }

    private var now: UInt64 { MeshNode.wallClockMilliseconds() }

    /// Waits until everything queued so far is stored.
    func waitForWrites() { queue.sync {} }

    /// Runs `body` on the ledger's queue, logging what it failed to store (`what`).
    private func write(_ what: String, _ body: @escaping @Sendable (Ledger) throws -> Void) {
        let logger = node.logger
        queue.async { [ledger] in
            do { try body(ledger) } catch { logger.error("\(what) not stored: \(error)") }
        }
    }

    /// This node's view of `peer` (nil: no evidence yet).
    func reputation(_ peer: PublicKey) -> Double? { scores[peer] }

    /// Stores a receipt this node is a party to, durably, before returning (loop thread: one
    /// small transaction).
    func storeOwn(_ receipt: Negotiation.Receipt) throws(Ledger.Failure) {
        node.bump(.ledgerReceiptsWritten)
        try ledger.ingest([receipt], source: .own, now: now)
        scheduleRecompute()
    }

    /// A receipt heard on gossip from `origin` that already verified: stored with the next batch.
    func heard(_ receipt: Negotiation.Receipt, from origin: PublicKey) {
        guard !stopped else { return }
        pending.append((receipt, origin))
        if pending.count >= Self.batchSize { flush(); return }
        if flushTimer == nil {
            flushTimer = try? node.loop.schedule(after: Self.batchDelay) { [unowned self] in
                flushTimer = nil
                flush()
            }
        }
    }

    private func flush() {
        guard !pending.isEmpty else { return }
        let batch = pending
        pending = []
        node.bump(.ledgerReceiptsWritten, by: batch.count)
        let now = self.now
        var byOrigin: [PublicKey: [Negotiation.Receipt]] = [:]
        for (r, from) in batch { byOrigin[from, default: []].append(r) }
        for (from, receipts) in byOrigin.sorted(by: { $0.key.bytes.lexicographicallyPrecedes($1.key.bytes) }) {
            write("gossiped receipts") { try $0.ingest(receipts, source: .gossip, heardFrom: from, now: now, verified: true) }
        }
        scheduleRecompute()
    }

    /// A report heard on gossip: kept if it verifies (counted either way).
    func heard(report message: Gossip.Message) {
        guard let report = Gossip.Report(decoding: message.payload), report.subject != message.origin else {
            node.bump(.reportsRefused)
            return
        }
        node.bump(.reportsHeard)
        node.bump(.ledgerReportsWritten)
        let now = self.now
        write("report") { try $0.storeReport(message, now: now) }
        scheduleRecompute()
    }

    /// Records this node's experience of `peer` and, for the kinds reports carry, tells the mesh.
    func experienced(_ outcome: Reputation.Outcome, peer: PublicKey, role: String, jobID: [UInt8], note: String) {
        let now = self.now
        write("experience") { try $0.recordExperience(peer: peer, role: role, outcome: outcome, jobID: jobID, at: now, note: note) }
        let kind: Gossip.Report.Kind? = switch outcome {
        case .failedVerification: .failedVerification
        case .noShow: .noShow
        case .unsigned: .unsigned
        case .success, .failure: nil
        }
        if let kind, !stopped, let report = Gossip.Report(kind: kind, subject: peer, jobID: jobID.count == 16 ? jobID : nil, observedAt: now,
                                                         note: String(note.utf8.prefix(Gossip.Report.maxNoteBytes)) ?? "") {
            do { _ = try node.gossip.publish(.report, payload: report.encode()) } catch { node.logger.debug("report not published: \(error)") }
        }
        scheduleRecompute()
    }

    /// Keeps a finished job's record (on the queue; the job list in memory is the live view).
    func save(_ info: JobInfo) {
        guard let json = try? JSONEncoder().encode(info) else { return }
        let row = Ledger.JobRow(id: info.id, role: info.role, peer: info.peer, state: info.state, receipt: info.receipt,
                                createdAt: info.createdAt, updatedAt: info.updatedAt, record: String(decoding: json, as: UTF8.self))
        write("job record") { try $0.saveJobs([row]) }
    }

    /// Recomputes within a second (coalescing bursts of evidence into one recompute).
    private func scheduleRecompute() {
        if recomputing { recomputeAgain = true; return }
        guard soonTimer == nil, !stopped else { return }
        soonTimer = try? node.loop.schedule(after: .seconds(1)) { [unowned self] in
            soonTimer = nil
            recompute()
        }
    }

    /// Recomputes every score on the queue and copies them to the loop.
    func recompute(then done: (@Sendable () -> Void)? = nil) {
        guard !stopped else { done?(); return }
        recomputing = true
        let me = node.identity.publicKey
        let friends = self.friends
        let now = self.now
        let loop = node.loop
        let logger = node.logger
        queue.async { [ledger, self] in
            var result: [PublicKey: Reputation.Score] = [:]
            do {
                let keys = try ledger.peerKeys(withIDs: friends)
                result = try ledger.recomputeReputation(me: me, friends: keys, now: now)
            } catch {
                logger.error("reputation not recomputed: \(error)")
            }
            _ = loop.execute { [self, result] in
                details = result
                scores = result.mapValues(\.value)
                recomputing = false
                done?()
                if recomputeAgain {
                    recomputeAgain = false
                    scheduleRecompute()
                }
            }
        }
    }
}

extension MeshNode {
    /// What this node's ledger holds (from any thread).
    public func ledgerCounts() throws -> Ledger.Counts {
        do { return try ledger.ledger.counts() } catch { throw NodeError.ledger("\(error)") }
    }

    /// Recomputes this node's reputation view now and returns it (from any thread).
    public func recomputeReputation() async -> [PublicKey: Double] {
        await withCheckedContinuation { (c: CheckedContinuation<[PublicKey: Double], Never>) in
            let accepted = loop.execute { [self] in
                ledger.recompute { [self] in _ = loop.execute { [self] in c.resume(returning: ledger.scores) } }
            }
            if !accepted { c.resume(returning: [:]) }
        }
    }

    /// The last computed reputation view with each score's evidence (from any thread; the node
    /// recomputes it a second after new evidence and every minute).
    public func reputationDetails() async throws -> [PublicKey: Reputation.Score] {
        try await loop.submit { self.ledger.details }
    }

    /// This node's ledger, for reading (from any thread; the node is its only writer).
    public var ledgerStore: Ledger { ledger.ledger }

    /// Reward points computed from the receipts this node holds (from any thread; nothing stored).
    public func rewardPoints(epoch: UInt64? = nil) throws -> [Rewards.Entry] {
        do { return Rewards.compute(try ledger.ledger.rewardFacts(), epoch: epoch) } catch { throw NodeError.ledger("\(error)") }
    }
}
