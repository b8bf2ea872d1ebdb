import Foundation
import GRDB
import MeshCore
import MeshCrypto
import MeshGossip
import MeshMarket

/// This peer's ledger: the receipts and reports it holds (its own and gossiped), its direct
/// experience of other peers, and the reputation scores it last computed, in one SQLite file
/// (WAL mode, `synchronous = FULL`).
///
/// Everything is verified before it is stored (both receipt signatures, a report's gossip
/// envelope); duplicates are ignored. A store call that returned is on disk: a process killed
/// afterwards loses nothing it acknowledged. Thread-safe (GRDB serialises writes); calls block,
/// so a loop thread should make them from a worker queue.
public final class Ledger: Sendable {
    /// The database file.
    public let path: String
    private let pool: DatabasePool

    /// Where a receipt came from.
    public enum Source: String, Sendable, Codable {
        /// This peer was a party to the job.
        case own
        /// Heard on gossip.
        case gossip
        /// Imported from a file (`ledger import`, or the receipts log of an older version).
        case imported = "import"
    }

    /// Why the ledger failed.
    public enum Failure: Error, CustomStringConvertible, Equatable {
        /// The file is not a healthy database.
        case corrupt(path: String, detail: String)
        /// The disk is full.
        case diskFull(path: String)
        /// Anything else SQLite or the file system said.
        case storage(String)

        /// One line for people, with the way forward.
        public var description: String {
            switch self {
            case .corrupt(let path, let detail):
                "the ledger \(path) is damaged (\(detail)); move it aside (`mv \(path) \(path).damaged`) and start again: "
                    + "the node rebuilds it from its own receipts log and from gossip, and `gpumesh ledger import` reads an export back"
            case .diskFull(let path): "the disk holding \(path) is full; free some space and retry (nothing acknowledged was lost)"
            case .storage(let text): "ledger: \(text)"
            }
        }
    }

    /// What one ingest did.
    public struct IngestResult: Sendable, Equatable, Codable {
        /// Newly stored.
        public var stored = 0
        /// Already held.
        public var duplicates = 0
        /// Refused: a signature or the arithmetic did not verify.
        public var refused = 0

        /// An empty result.
        public init() {}
    }

    /// Opens (creating, migrating) the ledger at `path`; a damaged file is a clear error.
    public convenience init(path: String) throws(Failure) { try self.init(path: path, maxPageCount: nil) }

    /// As `init(path:)`, with the database capped at `maxPageCount` pages (a full disk, for tests).
    init(path: String, maxPageCount: Int?) throws(Failure) {
        self.path = path
        var config = Configuration()
        config.busyMode = .timeout(10)
        config.prepareDatabase { db in
            if let maxPageCount { try db.execute(sql: "PRAGMA max_page_count = \(maxPageCount)") }
            try db.execute(sql: "PRAGMA synchronous = FULL")
            try db.execute(sql: "PRAGMA cache_size = -32768")  // 32 MiB: index pages stay cached while ingesting
        }
        do {
            pool = try DatabasePool(path: path, configuration: config)
            let check = try pool.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") } ?? "no answer"
            guard check == "ok" else { throw Failure.corrupt(path: path, detail: check) }
            try Self.migrator.migrate(pool)
        } catch let f as Failure {
            throw f
        } catch {
            throw Self.failure(error, path: path)
        }
    }

    static func failure(_ error: any Error, path: String) -> Failure {
        if let e = error as? DatabaseError {
            switch e.resultCode {
            case .SQLITE_CORRUPT, .SQLITE_NOTADB: return .corrupt(path: path, detail: e.message ?? "\(e.resultCode)")
            case .SQLITE_FULL: return .diskFull(path: path)
            default: return .storage(e.message ?? "\(e)")
            }
        }
        return .storage("\(error)")
    }

    private func write<T>(_ body: (Database) throws -> T) throws(Failure) -> T {
        do { return try pool.write(body) } catch { throw Self.failure(error, path: path) }
    }

    private func read<T>(_ body: (Database) throws -> T) throws(Failure) -> T {
        do { return try pool.read(body) } catch { throw Self.failure(error, path: path) }
    }

    // MARK: Schema

    /// The forward-only migrations, in order. Never edit one that shipped: add the next.
    public static var migrator: DatabaseMigrator {
        var m = DatabaseMigrator()
        m.registerMigration("v1-receipts") { db in
            try db.execute(sql: """
                CREATE TABLE receipts (
                    seq INTEGER PRIMARY KEY,
                    id BLOB NOT NULL UNIQUE,
                    body BLOB NOT NULL,
                    provider_signature BLOB NOT NULL,
                    renter_signature BLOB NOT NULL,
                    provider BLOB NOT NULL,
                    renter BLOB NOT NULL,
                    gpu_model TEXT NOT NULL,
                    gpu_ms INTEGER NOT NULL,
                    charge INTEGER NOT NULL,
                    started_at INTEGER NOT NULL,
                    source TEXT NOT NULL,
                    heard_from BLOB,
                    stored_at INTEGER NOT NULL
                );
                CREATE INDEX receipts_provider ON receipts(provider);
                CREATE INDEX receipts_renter ON receipts(renter);
                CREATE TABLE peers (
                    key BLOB PRIMARY KEY,
                    first_seen INTEGER NOT NULL,
                    last_seen INTEGER NOT NULL
                ) WITHOUT ROWID;
                """)
        }
        m.registerMigration("v2-reports-experience") { db in
            try db.execute(sql: """
                CREATE TABLE reports (
                    id BLOB PRIMARY KEY,
                    envelope BLOB NOT NULL,
                    reporter BLOB NOT NULL,
                    subject BLOB NOT NULL,
                    kind TEXT NOT NULL,
                    job_id BLOB,
                    observed_at INTEGER NOT NULL,
                    stored_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE INDEX reports_subject ON reports(subject);
                CREATE TABLE experience (
                    id INTEGER PRIMARY KEY,
                    peer BLOB NOT NULL,
                    role TEXT NOT NULL,
                    outcome TEXT NOT NULL,
                    job_id BLOB,
                    at INTEGER NOT NULL,
                    note TEXT NOT NULL DEFAULT ''
                );
                CREATE INDEX experience_peer ON experience(peer);
                CREATE TABLE reputation (
                    peer BLOB PRIMARY KEY,
                    value REAL NOT NULL,
                    alpha REAL NOT NULL,
                    beta REAL NOT NULL,
                    trust REAL NOT NULL,
                    computed_at INTEGER NOT NULL
                ) WITHOUT ROWID;
                CREATE TABLE reward_epochs (
                    epoch INTEGER NOT NULL,
                    peer BLOB NOT NULL,
                    earned_millipoints INTEGER NOT NULL,
                    spent_millipoints INTEGER NOT NULL,
                    gpu_ms INTEGER NOT NULL,
                    jobs_provided INTEGER NOT NULL,
                    jobs_rented INTEGER NOT NULL,
                    PRIMARY KEY (epoch, peer)
                ) WITHOUT ROWID;
                """)
        }
        m.registerMigration("v3-jobs") { db in
            try db.execute(sql: """
                CREATE TABLE jobs (
                    id TEXT PRIMARY KEY,
                    role TEXT NOT NULL,
                    peer TEXT,
                    state TEXT NOT NULL,
                    receipt TEXT,
                    created_at REAL NOT NULL,
                    updated_at REAL NOT NULL,
                    record TEXT NOT NULL
                );
                CREATE INDEX jobs_created ON jobs(created_at);
                """)
        }
        m.registerMigration("v4-receipts-by-time") { db in
            // The explorer counts receipts per hour over the last day, and this peer's own
            // receipts on every overview (a scan of 100k receipts took 20 ms; the index, none).
            try db.execute(sql: "CREATE INDEX receipts_started_at ON receipts(started_at)")
            try db.execute(sql: "CREATE INDEX receipts_own ON receipts(source) WHERE source = 'own'")
        }
        return m
    }

    /// The migrations applied, oldest first.
    public func appliedMigrations() throws(Failure) -> [String] {
        try read { db in try Self.migrator.appliedIdentifiers(db).sorted() }
    }

    // MARK: Receipts

    /// Verifies and stores receipts in one transaction (durable when it returns). Receipts
    /// already known to verify (`verified`) skip the signature checks.
    @discardableResult
    public func ingest(_ receipts: [Negotiation.Receipt], source: Source, heardFrom: PublicKey? = nil, now: UInt64,
                       verified: Bool = false) throws(Failure) -> IngestResult {
        var result = IngestResult()
        var good: [(receipt: Negotiation.Receipt, body: [UInt8])] = []
        good.reserveCapacity(receipts.count)
        for r in receipts {
            if verified { good.append((r, r.body)); continue }
            if let body = r.verifiedBody { good.append((r, body)) } else { result.refused += 1 }
        }
        guard !good.isEmpty else { return result }
        return try write { db in
            let insert = try db.cachedStatement(sql: """
                INSERT OR IGNORE INTO receipts (id, body, provider_signature, renter_signature, provider, renter, gpu_model, gpu_ms, charge,
                                                started_at, source, heard_from, stored_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """)
            let peer = try db.cachedStatement(sql: """
                INSERT INTO peers (key, first_seen, last_seen) VALUES (?, ?, ?)
                ON CONFLICT(key) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), last_seen = max(last_seen, excluded.last_seen)
                """)
            let from = heardFrom.map { Data($0.bytes) }
            var seen: [PublicKey: (first: UInt64, last: UInt64)] = [:]
            for (r, body) in good {
                try insert.execute(arguments: [Data(Blake2b.hash(body, outputLength: 32)), Data(body), Data(r.providerSignature), Data(r.renterSignature),
                                               Data(r.provider.bytes), Data(r.renter.bytes), r.gpuModel, Int64(clamping: r.gpuMilliseconds),
                                               Int64(clamping: r.charge), Int64(clamping: r.startedAt), source.rawValue, from, Int64(clamping: now)])
                if db.changesCount == 0 { result.duplicates += 1; continue }
                result.stored += 1
                for k in [r.provider, r.renter] {
                    let s = seen[k] ?? (r.startedAt, r.startedAt)
                    seen[k] = (min(s.first, r.startedAt), max(s.last, r.startedAt))
                }
            }
            // One row per peer per batch, not two per receipt.
            for (k, s) in seen {
                try peer.execute(arguments: [Data(k.bytes), Int64(clamping: s.first), Int64(clamping: s.last)])
            }
            return result
        }
    }

    /// A stored receipt and where it came from.
    public struct Stored: Sendable, Equatable {
        /// The receipt.
        public var receipt: Negotiation.Receipt
        /// Its source.
        public var source: Source
        /// The gossip origin it was heard from, if any.
        public var heardFrom: PublicKey?
        /// When it was stored (Unix ms).
        public var storedAt: UInt64
    }

    /// Receipts held, optionally only those `peer` is a party to, oldest job first (newest
    /// first with `newestFirst`).
    public func receipts(involving peer: PublicKey? = nil, limit: Int = .max, newestFirst: Bool = false) throws(Failure) -> [Stored] {
        let order = newestFirst ? "started_at DESC, id DESC" : "started_at, id"
        return try read { db in
            let rows: [Row]
            if let peer {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM receipts WHERE provider = ? OR renter = ? ORDER BY \(order) LIMIT ?",
                                        arguments: [Data(peer.bytes), Data(peer.bytes), Int64(clamping: limit)])
            } else {
                rows = try Row.fetchAll(db, sql: "SELECT * FROM receipts ORDER BY \(order) LIMIT ?", arguments: [Int64(clamping: limit)])
            }
            return rows.compactMap(Self.stored)
        }
    }

    /// How many held receipts' jobs started in each hour from `since` (Unix ms) on: hour number
    /// (Unix ms / 3,600,000) to count, hours without receipts left out.
    public func receiptsPerHour(since: UInt64) throws(Failure) -> [UInt64: Int] {
        try read { db in
            var out: [UInt64: Int] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT started_at / 3600000, COUNT(*) FROM receipts WHERE started_at >= ? GROUP BY 1",
                                        arguments: [Int64(clamping: since)]) {
                out[UInt64(max(0, row[0] as Int64))] = row[1]
            }
            return out
        }
    }

    static func stored(_ row: Row) -> Stored? {
        let body: Data = row["body"], ps: Data = row["provider_signature"], rs: Data = row["renter_signature"]
        var w = WireWriter(capacity: body.count + 130)
        w.blob16([UInt8](body)); w.raw([UInt8](ps)); w.raw([UInt8](rs))
        guard let r = Negotiation.Receipt(decoding: w.bytes) else { return nil }
        let from: Data? = row["heard_from"]
        return Stored(receipt: r, source: Source(rawValue: row["source"]) ?? .imported, heardFrom: from.flatMap { try? PublicKey(bytes: $0) },
                      storedAt: UInt64(max(0, row["stored_at"] as Int64)))
    }

    /// Moves the write-ahead log into the database file and truncates it (the file's size is
    /// then the data's).
    public func checkpoint() throws(Failure) {
        do { try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") } }
        catch { throw Self.failure(error, path: path) }
    }

    /// The keys of every peer named by a stored receipt.
    public func peerKeys() throws(Failure) -> [PublicKey] {
        try read { db in try Data.fetchAll(db, sql: "SELECT key FROM peers ORDER BY key").compactMap { try? PublicKey(bytes: $0) } }
    }

    /// The keys, among the peers stored receipts name, whose peer IDs (hex) are in `ids`: the
    /// pre-trusted friends a config lists by peer ID.
    public func peerKeys(withIDs ids: Set<String>) throws(Failure) -> [PublicKey] {
        ids.isEmpty ? [] : try peerKeys().filter { ids.contains(PeerID(publicKey: $0).hex) }
    }

    /// How many receipts, reports, peers and experience events are held.
    public struct Counts: Sendable, Equatable, Codable {
        /// Receipts.
        public var receipts = 0
        /// Of which this peer's own.
        public var ownReceipts = 0
        /// Reports.
        public var reports = 0
        /// Peers named by receipts.
        public var peers = 0
        /// Direct-experience events besides receipts.
        public var experience = 0

        enum CodingKeys: String, CodingKey { case receipts, ownReceipts = "own_receipts", reports, peers, experience }
    }

    /// The counts.
    public func counts() throws(Failure) -> Counts {
        try read { db in
            var c = Counts()
            c.receipts = try Int.fetchOne(db, sql: "SELECT count(*) FROM receipts") ?? 0
            c.ownReceipts = try Int.fetchOne(db, sql: "SELECT count(*) FROM receipts WHERE source = 'own'") ?? 0
            c.reports = try Int.fetchOne(db, sql: "SELECT count(*) FROM reports") ?? 0
            c.peers = try Int.fetchOne(db, sql: "SELECT count(*) FROM peers") ?? 0
            c.experience = try Int.fetchOne(db, sql: "SELECT count(*) FROM experience") ?? 0
            return c
        }
    }

    // MARK: Reports and experience

    /// Stores a gossiped report after checking its envelope's signature; false if it was held
    /// already or does not verify.
    @discardableResult
    public func storeReport(_ message: Gossip.Message, now: UInt64) throws(Failure) -> Bool {
        guard message.topic == .report, message.envelope.isSignatureValid(domain: Gossip.domain),
              let report = Gossip.Report(decoding: message.payload), report.subject != message.origin else { return false }
        return try write { db in
            try db.execute(sql: """
                INSERT OR IGNORE INTO reports (id, envelope, reporter, subject, kind, job_id, observed_at, stored_at)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                """, arguments: [Data(message.id.bytes), Data(message.envelope.encoded), Data(message.origin.bytes), Data(report.subject.bytes),
                                 report.kind.description, report.jobID.map { Data($0) }, Int64(clamping: report.observedAt), Int64(clamping: now)])
            return db.changesCount > 0
        }
    }

    /// Records this peer's own experience of `peer` (a failure of some kind; successes are the
    /// receipts themselves). `role` is the other peer's role in the job.
    public func recordExperience(peer: PublicKey, role: String, outcome: Reputation.Outcome, jobID: [UInt8]?, at: UInt64, note: String = "") throws(Failure) {
        try write { db in
            try db.execute(sql: "INSERT INTO experience (peer, role, outcome, job_id, at, note) VALUES (?, ?, ?, ?, ?, ?)",
                           arguments: [Data(peer.bytes), role, outcome.rawValue, jobID.map { Data($0) }, Int64(clamping: at), String(note.prefix(200))])
        }
    }

    // MARK: Jobs

    /// This peer's record of one of its jobs (either role): a few columns to query and the whole
    /// record as the JSON its owner keeps.
    public struct JobRow: Sendable, Equatable {
        /// The job ID.
        public var id: String
        /// `renter` or `provider`.
        public var role: String
        /// The other side's peer ID.
        public var peer: String?
        /// The job's state.
        public var state: String
        /// The receipt ID (hex), once there is one.
        public var receipt: String?
        /// When the job was created (Unix seconds).
        public var createdAt: Double
        /// When it last changed (Unix seconds).
        public var updatedAt: Double
        /// The whole record (JSON).
        public var record: String

        /// A row.
        public init(id: String, role: String, peer: String?, state: String, receipt: String?, createdAt: Double, updatedAt: Double, record: String) {
            self.id = id
            self.role = role
            self.peer = peer
            self.state = state
            self.receipt = receipt
            self.createdAt = createdAt
            self.updatedAt = updatedAt
            self.record = record
        }
    }

    /// Stores (or replaces) job records in one transaction.
    public func saveJobs(_ rows: [JobRow]) throws(Failure) {
        guard !rows.isEmpty else { return }
        try write { db in
            let upsert = try db.cachedStatement(sql: """
                INSERT INTO jobs (id, role, peer, state, receipt, created_at, updated_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                ON CONFLICT(id) DO UPDATE SET role = excluded.role, peer = excluded.peer, state = excluded.state, receipt = excluded.receipt,
                    created_at = excluded.created_at, updated_at = excluded.updated_at, record = excluded.record
                """)
            for j in rows {
                try upsert.execute(arguments: [j.id, j.role, j.peer, j.state, j.receipt, j.createdAt, j.updatedAt, j.record])
            }
        }
    }

    /// Every job record, oldest first.
    public func jobs() throws(Failure) -> [JobRow] {
        try read { db in
            try Row.fetchAll(db, sql: "SELECT * FROM jobs ORDER BY created_at, id").map {
                JobRow(id: $0["id"], role: $0["role"], peer: $0["peer"], state: $0["state"], receipt: $0["receipt"],
                       createdAt: $0["created_at"], updatedAt: $0["updated_at"], record: $0["record"])
            }
        }
    }

    // MARK: Reputation and rewards

    /// The evidence for `Reputation.compute` as `me` sees it.
    public func evidence(me: PublicKey, friends: [PublicKey] = []) throws(Failure) -> Reputation.Evidence {
        try read { db in
            var e = Reputation.Evidence(me: me, friends: friends)
            let meData = Data(me.bytes)
            let cursor = try Row.fetchCursor(db, sql: "SELECT provider, renter, started_at FROM receipts")
            var keys: [Data: PublicKey] = [:]
            func key(_ d: Data) -> PublicKey? {
                if let k = keys[d] { return k }
                guard let k = try? PublicKey(bytes: d) else { return nil }
                keys[d] = k
                return k
            }
            while let row = try cursor.next() {
                let pd: Data = row[0], rd: Data = row[1]
                guard let p = key(pd), let r = key(rd) else { continue }
                let at = UInt64(max(0, row[2] as Int64))
                if pd == meData { e.direct.append(.init(peer: r, outcome: .success, at: at)); continue }
                if rd == meData { e.direct.append(.init(peer: p, outcome: .success, at: at)); continue }
                e.testimonies.append(.init(witness: r, subject: p, outcome: .success, at: at))
                e.testimonies.append(.init(witness: p, subject: r, outcome: .success, at: at))
            }
            for row in try Row.fetchAll(db, sql: "SELECT reporter, subject, kind, observed_at FROM reports") {
                guard let w = key(row[0]), let s = key(row[1]) else { continue }
                let kind: String = row[2]
                let outcome = Reputation.Outcome(rawValue: kind) ?? .failure
                e.testimonies.append(.init(witness: w, subject: s, outcome: outcome.isSuccess ? .failure : outcome, at: UInt64(max(0, row[3] as Int64))))
            }
            for row in try Row.fetchAll(db, sql: "SELECT peer, outcome, at FROM experience") {
                guard let p = key(row[0]) else { continue }
                let outcome = Reputation.Outcome(rawValue: row[1]) ?? .failure
                e.direct.append(.init(peer: p, outcome: outcome, at: UInt64(max(0, row[2] as Int64))))
            }
            return e
        }
    }

    /// Recomputes every score and stores them; returns them.
    @discardableResult
    public func recomputeReputation(me: PublicKey, friends: [PublicKey] = [], now: UInt64,
                                    parameters: Reputation.Parameters = Reputation.Parameters()) throws(Failure) -> [PublicKey: Reputation.Score] {
        let scores = Reputation.compute(try evidence(me: me, friends: friends), now: now, parameters: parameters)
        try write { db in
            try db.execute(sql: "DELETE FROM reputation")
            let insert = try db.cachedStatement(sql: "INSERT INTO reputation (peer, value, alpha, beta, trust, computed_at) VALUES (?, ?, ?, ?, ?, ?)")
            for (k, s) in scores {
                try insert.execute(arguments: [Data(k.bytes), s.value, s.alpha, s.beta, s.trust, Int64(clamping: now)])
            }
        }
        return scores
    }

    /// A stored score (from the last recompute).
    public struct StoredScore: Sendable, Equatable, Codable {
        /// The score.
        public var value: Double
        /// Its alpha.
        public var alpha: Double
        /// Its beta.
        public var beta: Double
        /// The peer's global trust.
        public var trust: Double
        /// When it was computed (Unix ms).
        public var computedAt: UInt64

        enum CodingKeys: String, CodingKey { case value, alpha, beta, trust, computedAt = "computed_at" }
    }

    /// The stored score of `peer`, if the last recompute saw it.
    public func storedScore(_ peer: PublicKey) throws(Failure) -> StoredScore? {
        try read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM reputation WHERE peer = ?", arguments: [Data(peer.bytes)]) else { return nil }
            return StoredScore(value: row["value"], alpha: row["alpha"], beta: row["beta"], trust: row["trust"],
                               computedAt: UInt64(max(0, row["computed_at"] as Int64)))
        }
    }

    /// Every stored score, by peer.
    public func storedScores() throws(Failure) -> [PublicKey: Double] {
        try read { db in
            var out: [PublicKey: Double] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT peer, value FROM reputation") {
                if let k = try? PublicKey(bytes: row[0] as Data) { out[k] = row[1] }
            }
            return out
        }
    }

    /// The facts rewards need, of every receipt held (in storage order: callers must not depend
    /// on it, and `Rewards.compute` does not).
    public func rewardFacts() throws(Failure) -> [Rewards.Facts] { try rewardFacts(after: 0).facts }

    /// The facts of the receipts stored after storage position `position` (0: all), and the
    /// position of the last one (`position` when there is none). Receipts are only ever added,
    /// so a caller can keep a `Rewards.Tally` up to date by passing back the last position.
    public func rewardFacts(after position: Int64) throws(Failure) -> (facts: [Rewards.Facts], last: Int64) {
        try read { db in
            var out: [Rewards.Facts] = []
            var last = position
            let cursor = try Row.fetchCursor(db, sql: "SELECT provider, renter, gpu_model, gpu_ms, charge, started_at, seq FROM receipts WHERE seq > ? ORDER BY seq",
                                             arguments: [position])
            while let row = try cursor.next() {
                last = row[6]
                guard let p = try? PublicKey(bytes: row[0] as Data), let r = try? PublicKey(bytes: row[1] as Data) else { continue }
                out.append(Rewards.Facts(provider: p, renter: r, gpuModel: row[2], gpuMilliseconds: UInt64(max(0, row[3] as Int64)),
                                         charge: UInt64(max(0, row[4] as Int64)), startedAt: UInt64(max(0, row[5] as Int64))))
            }
            return (out, last)
        }
    }

    /// Computes the points of every epoch (or one) from the receipts held and stores them.
    @discardableResult
    public func recomputeRewards(epoch: UInt64? = nil) throws(Failure) -> [Rewards.Entry] {
        let entries = Rewards.compute(try rewardFacts(), epoch: epoch)
        try write { db in
            if let epoch { try db.execute(sql: "DELETE FROM reward_epochs WHERE epoch = ?", arguments: [Int64(clamping: epoch)]) }
            else { try db.execute(sql: "DELETE FROM reward_epochs") }
            let insert = try db.cachedStatement(sql: """
                INSERT INTO reward_epochs (epoch, peer, earned_millipoints, spent_millipoints, gpu_ms, jobs_provided, jobs_rented)
                VALUES (?, ?, ?, ?, ?, ?, ?)
                """)
            for e in entries {
                try insert.execute(arguments: [Int64(clamping: e.epoch), Data(Hex.decode(e.peer) ?? []), Int64(clamping: e.earnedMillipoints),
                                               Int64(clamping: e.spentMillipoints), Int64(clamping: e.gpuMilliseconds), e.jobsProvided, e.jobsRented])
            }
        }
        return entries
    }

    // MARK: Audit

    /// What `verify` found.
    public struct Audit: Sendable, Equatable, Codable {
        /// SQLite's `integrity_check` answer ("ok" when healthy).
        public var integrity = "ok"
        /// Receipts checked.
        public var receipts = 0
        /// Reports checked.
        public var reports = 0
        /// Rows that failed, with why (at most 100).
        public var problems: [String] = []
        /// True when nothing failed.
        public var ok: Bool { integrity == "ok" && problems.isEmpty }
    }

    /// Re-checks the database's integrity, every receipt's signatures, ID and columns, and every
    /// report's envelope.
    public func verify() throws(Failure) -> Audit {
        try read { db in
            var a = Audit()
            a.integrity = try String.fetchAll(db, sql: "PRAGMA integrity_check").joined(separator: "; ")
            func problem(_ s: String) { if a.problems.count < 100 { a.problems.append(s) } }
            let cursor = try Row.fetchCursor(db, sql: "SELECT * FROM receipts")
            while let row = try cursor.next() {
                a.receipts += 1
                let id: Data = row["id"]
                let hex = Hex.encode([UInt8](id))
                guard let s = Self.stored(row) else { problem("receipt \(hex): does not parse"); continue }
                let r = s.receipt
                if !r.isValid { problem("receipt \(hex): a signature or its arithmetic does not verify"); continue }
                if [UInt8](id) != r.id { problem("receipt \(hex): its ID is not the hash of its body") }
                let p: Data = row["provider"], rn: Data = row["renter"], model: String = row["gpu_model"]
                let gpu: Int64 = row["gpu_ms"], charge: Int64 = row["charge"], started: Int64 = row["started_at"]
                if [UInt8](p) != r.provider.bytes || [UInt8](rn) != r.renter.bytes || model != r.gpuModel || gpu != Int64(clamping: r.gpuMilliseconds)
                    || charge != Int64(clamping: r.charge) || started != Int64(clamping: r.startedAt) {
                    problem("receipt \(hex): its columns do not match its signed body")
                }
            }
            for row in try Row.fetchAll(db, sql: "SELECT id, envelope, reporter, subject FROM reports") {
                a.reports += 1
                let id: Data = row[0]
                let hex = Hex.encode([UInt8](id))
                guard let m = Gossip.Message(decoding: [UInt8](row[1] as Data)), m.envelope.isSignatureValid(domain: Gossip.domain),
                      m.id.bytes == [UInt8](id), let report = Gossip.Report(decoding: m.payload) else {
                    problem("report \(hex): its envelope does not verify")
                    continue
                }
                if m.origin.bytes != [UInt8](row[2] as Data) || report.subject.bytes != [UInt8](row[3] as Data) {
                    problem("report \(hex): its columns do not match its signed payload")
                }
            }
            return a
        }
    }

    /// Writes every receipt as JSON Lines (one object per receipt: the wire form in hex and its
    /// decoded fields) to `path`, flushed to disk; returns how many.
    public func export(to path: String) throws(Failure) -> Int {
        let stored = try receipts()
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw .storage("cannot write \(path)")
        }
        defer { try? h.close() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        do {
            for s in stored {
                try h.write(contentsOf: try encoder.encode(ExportedReceipt(s)) + Data("\n".utf8))
            }
            try h.synchronize()
        } catch {
            throw .storage("cannot write \(path): \(error.localizedDescription)")
        }
        return stored.count
    }

    /// Reads receipts exported by `export` (or any JSON Lines with a `wire` field) and ingests
    /// the ones that verify.
    public func importReceipts(from path: String, now: UInt64) throws(Failure) -> IngestResult {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw .storage("cannot read \(path)") }
        var receipts: [Negotiation.Receipt] = []
        var result = IngestResult()
        for line in text.split(separator: "\n") where !line.isEmpty {
            guard let e = try? JSONDecoder().decode(ExportedReceipt.self, from: Data(line.utf8)), let bytes = Hex.decode(e.wire),
                  let r = Negotiation.Receipt(decoding: bytes) else { result.refused += 1; continue }
            receipts.append(r)
        }
        var total = try ingest(receipts, source: .imported, now: now)
        total.refused += result.refused
        return total
    }
}

/// One exported receipt: its wire form (hex; both signatures included) and its fields.
public struct ExportedReceipt: Codable, Sendable, Equatable {
    /// The receipt ID (hex).
    public var id: String
    /// The whole receipt's wire form (hex): verify it with `gpumesh ledger import` or PROTOCOL.md.
    public var wire: String
    /// The job ID (hex).
    public var jobID: String
    /// The provider's key (hex).
    public var provider: String
    /// The renter's key (hex).
    public var renter: String
    /// The GPU model slug.
    public var gpuModel: String
    /// GPUs.
    public var gpus: Int
    /// Price, millipoints per GPU-hour.
    public var priceMillipoints: UInt32
    /// GPU milliseconds.
    public var gpuMilliseconds: UInt64
    /// Charge, millipoints.
    public var chargeMillipoints: UInt64
    /// Start, Unix ms.
    public var startedAt: UInt64
    /// Exit status.
    public var exitStatus: Int32
    /// Where this peer got it.
    public var source: String

    enum CodingKeys: String, CodingKey {
        case id, wire, provider, renter, gpus, source
        case jobID = "job_id", gpuModel = "gpu_model", priceMillipoints = "price_millipoints", gpuMilliseconds = "gpu_ms"
        case chargeMillipoints = "charge_millipoints", startedAt = "started_at", exitStatus = "exit_status"
    }

    /// The export line of a stored receipt.
    public init(_ s: Ledger.Stored) {
        let r = s.receipt
        id = Hex.encode(r.id)
        wire = Hex.encode(r.encoded)
        jobID = Hex.encode(r.jobID)
        provider = Hex.encode(r.provider.bytes)
        renter = Hex.encode(r.renter.bytes)
        gpuModel = r.gpuModel
        gpus = r.gpus
        priceMillipoints = r.price.millipoints
        gpuMilliseconds = r.gpuMilliseconds
        chargeMillipoints = r.charge
        startedAt = r.startedAt
        exitStatus = r.exitStatus
        source = s.source.rawValue
    }
}
