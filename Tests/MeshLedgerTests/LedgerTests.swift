import Foundation
import GRDB
import MeshCore
import MeshCrypto
import MeshGossip
@testable import MeshLedger
import MeshMarket
import Testing

/// Receipts signed by real keys, and scratch ledgers in the temp directory.
enum Fixture {
    static let day: UInt64 = 86_400_000
    static let t0: UInt64 = 1_790_000_000_000

    static func receipt(provider: SigningKey, renter: SigningKey, at: UInt64 = t0, seconds: UInt64 = 600, model: String = "rtx-4090",
                        price: UInt32 = 1000, job: UInt64 = 0) -> Negotiation.Receipt {
        var jobID = [UInt8](repeating: 0, count: 16)
        withUnsafeBytes(of: job.bigEndian) { for (i, b) in $0.enumerated() { jobID[8 + i] = b } }
        jobID[0] = 1
        var r = Negotiation.Receipt(jobID: jobID, provider: provider.publicKey, renter: renter.publicKey,
                                    specDigest: Array(repeating: 1, count: 32), inputsDigest: Array(repeating: 2, count: 32),
                                    outputsDigest: Array(repeating: 3, count: 32), price: Price(millipoints: price), gpus: 1, gpuModel: model,
                                    startedAt: at, wallMilliseconds: seconds * 1000, exitStatus: 0, signaled: false, timedOut: false)
        r.signAsProvider(provider)
        r.signAsRenter(renter)
        return r
    }

    static func path(_ name: String) -> String {
        NSTemporaryDirectory() + "gm-ledger-\(name)-\(UInt32.random(in: 0...UInt32.max)).sqlite"
    }

    static func remove(_ path: String) {
        for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
    }
}

@Suite("Ledger store")
struct LedgerStoreTests {
    @Test("migrations run from an empty database and from every earlier schema, keeping what was stored")
    func migrations() throws {
        let fresh = Fixture.path("fresh")
        defer { Fixture.remove(fresh) }
        let all = Ledger.migrator.migrations
        #expect(try Ledger(path: fresh).appliedMigrations() == all.sorted())

        let p = SigningKey(), r = SigningKey()
        let receipt = Fixture.receipt(provider: p, renter: r)
        for (i, last) in all.enumerated() {
            let path = Fixture.path("from-\(i)")
            defer { Fixture.remove(path) }
            do {
                // A database left at `last` by an earlier version, holding a receipt.
                let queue = try DatabaseQueue(path: path)
                try Ledger.migrator.migrate(queue, upTo: last)
                try queue.write { db in
                    try db.execute(sql: """
                        INSERT INTO receipts (id, body, provider_signature, renter_signature, provider, renter, gpu_model, gpu_ms, charge, started_at, source, stored_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'own', 1)
                        """, arguments: [Data(receipt.id), Data(receipt.body), Data(receipt.providerSignature), Data(receipt.renterSignature),
                                         Data(p.publicKey.bytes), Data(r.publicKey.bytes), receipt.gpuModel, Int64(receipt.gpuMilliseconds),
                                         Int64(receipt.charge), Int64(receipt.startedAt)])
                }
                try queue.close()
            }
            let ledger = try Ledger(path: path)
            #expect(try ledger.appliedMigrations() == all.sorted())
            #expect(try ledger.receipts().map(\.receipt) == [receipt])
            #expect(try ledger.verify().ok)
        }
    }

    @Test("only verified receipts are stored; duplicates are ignored; the source is kept")
    func ingest() throws {
        let path = Fixture.path("ingest")
        defer { Fixture.remove(path) }
        let ledger = try Ledger(path: path)
        let p = SigningKey(), r = SigningKey()
        let good = (0..<5).map { Fixture.receipt(provider: p, renter: r, job: UInt64($0)) }
        var forged = Fixture.receipt(provider: p, renter: r, job: 99)
        forged.charge += 1  // the signatures no longer cover it
        var unsigned = Fixture.receipt(provider: p, renter: r, job: 98)
        unsigned.renterSignature = SigningKey().signature(for: unsigned.body)
        var result = try ledger.ingest(good + [forged, unsigned], source: .gossip, heardFrom: p.publicKey, now: 5)
        #expect(result.stored == 5 && result.refused == 2 && result.duplicates == 0)
        result = try ledger.ingest(Array(good.prefix(2)), source: .own, now: 6)
        #expect(result.stored == 0 && result.duplicates == 2)
        let held = try ledger.receipts()
        #expect(Set(held.map(\.receipt)) == Set(good))
        #expect(held.allSatisfy { $0.source == .gossip && $0.heardFrom == p.publicKey && $0.storedAt == 5 })
        #expect(try ledger.receipts(involving: SigningKey().publicKey).isEmpty)
        #expect(try ledger.counts().peers == 2)
        // Reopening finds them all (WAL, durable).
        #expect(try Ledger(path: path).receipts().count == 5)
    }

    @Test("verify finds a tampered row, a forged signature and a column that disagrees with its body")
    func tamper() throws {
        let path = Fixture.path("tamper")
        defer { Fixture.remove(path) }
        let ledger = try Ledger(path: path)
        let p = SigningKey(), r = SigningKey()
        let receipts = (0..<3).map { Fixture.receipt(provider: p, renter: r, job: UInt64($0)) }
        try ledger.ingest(receipts, source: .own, now: 1)
        #expect(try ledger.verify().ok)
        let queue = try DatabaseQueue(path: path)
        try queue.write { db in
            var body = receipts[0].body
            body[body.count - 10] ^= 1
            try db.execute(sql: "UPDATE receipts SET body = ? WHERE id = ?", arguments: [Data(body), Data(receipts[0].id)])
            try db.execute(sql: "UPDATE receipts SET charge = charge + 1000 WHERE id = ?", arguments: [Data(receipts[1].id)])
        }
        try queue.close()
        let audit = try ledger.verify()
        #expect(!audit.ok && audit.receipts == 3 && audit.problems.count == 2)
        #expect(audit.problems.contains { $0.contains(Hex.encode(receipts[0].id)) && $0.contains("does not verify") })
        #expect(audit.problems.contains { $0.contains(Hex.encode(receipts[1].id)) && $0.contains("columns") })
    }

    @Test("a damaged file is a clear error naming the way forward, not a crash")
    func corrupt() throws {
        let path = Fixture.path("corrupt")
        defer { Fixture.remove(path) }
        _ = FileManager.default.createFile(atPath: path, contents: Data(repeating: 0x5a, count: 8192))
        #expect {
            _ = try Ledger(path: path)
        } throws: { error in
            guard let f = error as? Ledger.Failure, case .corrupt = f else { return false }
            return f.description.contains("move it aside")
        }
        // A real database whose pages were overwritten in the middle.
        let good = Fixture.path("damaged")
        defer { Fixture.remove(good) }
        do {
            let ledger = try Ledger(path: good)
            let p = SigningKey(), r = SigningKey()
            try ledger.ingest((0..<300).map { Fixture.receipt(provider: p, renter: r, job: UInt64($0)) }, source: .own, now: 1)
        }
        let q = try DatabaseQueue(path: good)
        try q.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA wal_checkpoint(TRUNCATE)") }
        try q.close()
        let h = try #require(FileHandle(forUpdatingAtPath: good))
        try h.seek(toOffset: 4096 * 3)
        h.write(Data(repeating: 0xff, count: 4096 * 4))
        try h.close()
        #expect {
            let ledger = try Ledger(path: good)
            _ = try ledger.receipts()
        } throws: { error in
            guard let f = error as? Ledger.Failure, case .corrupt = f else { return false }
            return true
        }
    }

    @Test("a full disk is a clear error; what was stored before stays, and storing works again once there is room")
    func diskFull() throws {
        let path = Fixture.path("full")
        defer { Fixture.remove(path) }
        let p = SigningKey(), r = SigningKey()
        let receipts = (0..<400).map { Fixture.receipt(provider: p, renter: r, job: UInt64($0)) }
        var stored = 0
        do {
            let ledger = try Ledger(path: path, maxPageCount: 40)
            var failure: Ledger.Failure?
            for i in stride(from: 0, to: receipts.count, by: 20) {
                do { stored += try ledger.ingest(Array(receipts[i..<i + 20]), source: .own, now: 1).stored }
                catch { failure = error; break }
            }
            let f = try #require(failure, "40 pages held 400 receipts?")
            #expect(f == .diskFull(path: path) && f.description.contains("full"))
            #expect(stored > 0 && stored % 20 == 0)
        }
        let roomy = try Ledger(path: path)
        #expect(try roomy.receipts().count == stored && roomy.verify().ok)
        #expect(try roomy.ingest(receipts, source: .own, now: 2).stored == receipts.count - stored)
    }

    @Test("export writes every receipt as a JSON line that imports back into a fresh ledger")
    func exportImport() throws {
        let a = Fixture.path("export-a"), b = Fixture.path("export-b"), out = Fixture.path("export") + ".jsonl"
        defer { Fixture.remove(a); Fixture.remove(b); try? FileManager.default.removeItem(atPath: out) }
        let ledger = try Ledger(path: a)
        let p = SigningKey(), r = SigningKey()
        let receipts = (0..<7).map { Fixture.receipt(provider: p, renter: r, at: Fixture.t0 + UInt64($0), job: UInt64($0)) }
        try ledger.ingest(receipts, source: .own, now: 1)
        #expect(try ledger.export(to: out) == 7)
        let lines = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 7)
        let first = try JSONDecoder().decode(ExportedReceipt.self, from: Data(lines[0].utf8))
        #expect(first.id == Hex.encode(receipts[0].id) && first.provider == Hex.encode(p.publicKey.bytes) && first.gpuModel == "rtx-4090")
        let other = try Ledger(path: b)
        let result = try other.importReceipts(from: out, now: 2)
        #expect(result.stored == 7 && result.refused == 0)
        #expect(try other.receipts().map(\.receipt) == receipts)
    }

    @Test("a report is stored only with a valid envelope, once")
    func reports() throws {
        let path = Fixture.path("reports")
        defer { Fixture.remove(path) }
        let ledger = try Ledger(path: path)
        let reporter = SigningKey(), subject = SigningKey()
        let report = try #require(Gossip.Report(kind: .noShow, subject: subject.publicKey, jobID: Array(repeating: 7, count: 16), observedAt: 5))
        let message = Gossip.Message.sign(topic: .report, payload: report.encode(), sequence: 1, expiresAt: 10_000, by: reporter)
        #expect(try ledger.storeReport(message, now: 1))
        #expect(try !ledger.storeReport(message, now: 2))
        var bytes = message.envelope.encoded
        bytes[bytes.count - 1] ^= 1
        let forged = try #require(Gossip.Message(decoding: bytes))
        #expect(try !ledger.storeReport(forged, now: 3))
        // A report about oneself is refused.
        let selfReport = try #require(Gossip.Report(kind: .noShow, subject: reporter.publicKey, jobID: nil, observedAt: 5))
        #expect(try !ledger.storeReport(Gossip.Message.sign(topic: .report, payload: selfReport.encode(), sequence: 2, expiresAt: 10_000, by: reporter), now: 4))
        #expect(try ledger.counts().reports == 1)
        #expect(try ledger.verify().ok)
    }
}

@Suite("Reward points")
struct RewardsTests {
    @Test("points follow the documented formula and are identical under any ingest order, and a tally kept up to date batch by batch agrees")
    func determinism() throws {
        let providers = (0..<4).map { _ in SigningKey() }, renters = (0..<3).map { _ in SigningKey() }
        let models = ["rtx-4090", "h100-80gb", "gtx-1080-ti", "not-in-the-catalogue"]
        var receipts: [Negotiation.Receipt] = []
        for i in 0..<120 {
            receipts.append(Fixture.receipt(provider: providers[i % 4], renter: renters[i % 3], at: Fixture.t0 + UInt64(i) * Fixture.day / 10,
                                            seconds: UInt64(60 + i * 7), model: models[i % 4], price: UInt32(500 + i), job: UInt64(i)))
        }
        // One GPU-hour on an RTX 4090 earns 330 points; unknown models weigh 1.
        #expect(Rewards.earned(gpuMilliseconds: 3_600_000, gpuModel: "rtx-4090") == 330_000)
        #expect(Rewards.earned(gpuMilliseconds: 3_600_000, gpuModel: "h100-80gb") == 989_000)
        #expect(Rewards.earned(gpuMilliseconds: 3_600_000, gpuModel: "not-in-the-catalogue") == 1_000)

        var rng = SplitMix64(seed: 3)
        var results: [[Rewards.Entry]] = []
        for attempt in 0..<3 {
            let path = Fixture.path("rewards-\(attempt)")
            defer { Fixture.remove(path) }
            let ledger = try Ledger(path: path)
            var shuffled = receipts
            for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            // In batches of different sizes, with repeats; a tally reads only what each batch added.
            var start = 0
            var tally = Rewards.Tally()
            var position: Int64 = 0
            while start < shuffled.count {
                let n = 1 + Int(rng.next() % 17)
                try ledger.ingest(Array(shuffled[start..<min(shuffled.count, start + n)]), source: .gossip, now: 1)
                try ledger.ingest(Array(shuffled[start..<min(shuffled.count, start + 1)]), source: .gossip, now: 1)
                start += n
                let (facts, last) = try ledger.rewardFacts(after: position)
                #expect(facts.count <= n && last >= position)
                tally.add(facts)
                position = last
            }
            #expect(try ledger.rewardFacts(after: position).facts.isEmpty)
            results.append(try ledger.recomputeRewards())
            #expect(tally.entries() == results.last)
            #expect(tally.entries(peer: providers[1].publicKey) == results.last?.filter { $0.peer == Hex.encode(providers[1].publicKey.bytes) })
        }
        #expect(results[0] == results[1] && results[1] == results[2])
        // The totals agree with the receipts.
        let earned = results[0].reduce(UInt64(0)) { $0 + $1.earnedMillipoints }
        #expect(earned == receipts.reduce(UInt64(0)) { $0 + Rewards.earned(gpuMilliseconds: $1.gpuMilliseconds, gpuModel: $1.gpuModel) })
        #expect(results[0].reduce(UInt64(0)) { $0 + $1.spentMillipoints } == receipts.reduce(UInt64(0)) { $0 + $1.charge })
        #expect(results[0].reduce(0) { $0 + $1.jobsProvided } == 120)
        // One epoch alone is the same as that epoch's part of all.
        let epoch = Rewards.epoch(of: Fixture.t0 + 3 * Fixture.day)
        #expect(Rewards.compute(receipts.map(Rewards.Facts.init), epoch: epoch) == results[0].filter { $0.epoch == epoch })
    }
}

@Suite("Reputation")
struct ReputationTests {
    @Test("50 Sybils co-signing fake receipts stay below an honest provider with 10 real receipts")
    func sybils() throws {
        let path = Fixture.path("sybil")
        defer { Fixture.remove(path) }
        let ledger = try Ledger(path: path)
        let me = SigningKey()
        let renters = (0..<3).map { _ in SigningKey() }
        let honest = SigningKey()
        let now = Fixture.t0 + 10 * Fixture.day
        // This peer provided to the three renters (its own receipts: direct experience).
        try ledger.ingest(renters.enumerated().map { Fixture.receipt(provider: me, renter: $1, at: now - Fixture.day, job: UInt64(1000 + $0)) },
                          source: .own, now: now)
        // The honest provider served those renters 10 times.
        try ledger.ingest((0..<10).map { Fixture.receipt(provider: honest, renter: renters[$0 % 3], at: now - UInt64($0) * 3_600_000, job: UInt64($0)) },
                          source: .gossip, now: now)
        // 50 Sybils co-sign 2,000 fake receipts for each other.
        let sybils = (0..<50).map { _ in SigningKey() }
        var rng = SplitMix64(seed: 9)
        var fakes: [Negotiation.Receipt] = []
        for i in 0..<2_000 {
            let a = Int(rng.next() % 50), b = (a + 1 + Int(rng.next() % 49)) % 50
            fakes.append(Fixture.receipt(provider: sybils[a], renter: sybils[b], at: now - UInt64(i) * 60_000, seconds: 36_000, model: "h100-80gb", job: UInt64(10_000 + i)))
        }
        #expect(try ledger.ingest(fakes, source: .gossip, now: now).stored == 2_000)
        // They also report the honest provider as a no-show, many times over.
        for (i, s) in sybils.enumerated() {
            let report = try #require(Gossip.Report(kind: .noShow, subject: honest.publicKey, jobID: nil, observedAt: now - 1000))
            #expect(try ledger.storeReport(Gossip.Message.sign(topic: .report, payload: report.encode(), sequence: UInt64(i), expiresAt: now + 1, by: s), now: now))
        }
        let scores = try ledger.recomputeReputation(me: me.publicKey, now: now)
        let honestScore = try #require(scores[honest.publicKey])
        let bestSybil = sybils.compactMap { scores[$0.publicKey]?.value }.max() ?? 0
        #expect(honestScore.value > 0.5)
        #expect(honestScore.value > bestSybil, "honest \(honestScore.value), best Sybil \(bestSybil)")
        #expect(sybils.allSatisfy { (scores[$0.publicKey]?.trust ?? 0) == 0 })
        #expect(honestScore.hearsayFailures == 0)  // the Sybils' reports weigh nothing
        // Their points are their own business: the ledger still counts them (rewards are not reputation).
        #expect(try ledger.recomputeRewards().contains { $0.peer == Hex.encode(sybils[0].publicKey.bytes) && $0.earnedMillipoints > 0 })
    }

    @Test("evidence decays with its half-life; direct evidence outweighs hearsay")
    func decay() {
        let me = SigningKey().publicKey, peer = SigningKey().publicKey
        var params = Reputation.Parameters()
        params.halfLifeMilliseconds = Double(Fixture.day)
        let now = Fixture.t0
        func score(_ events: [Reputation.DirectEvent]) -> Double {
            Reputation.compute(Reputation.Evidence(me: me, direct: events), now: now, parameters: params)[peer]!.value
        }
        let fresh = score([.init(peer: peer, outcome: .failure, at: now)])
        let dayOld = score([.init(peer: peer, outcome: .failure, at: now - Fixture.day)])
        let monthOld = score([.init(peer: peer, outcome: .failure, at: now - 30 * Fixture.day)])
        #expect(abs(fresh - 1 / (1 + 1 + 4)) < 1e-12)       // alpha 1, beta 1 + 4·1
        #expect(abs(dayOld - 1 / (1 + 1 + 4 * 0.5)) < 1e-12) // one half-life: half the weight
        #expect(fresh < dayOld && dayOld < monthOld && abs(monthOld - 0.5) < 1e-6)

        // One trusted witness reporting a success against this peer's own failure: direct wins.
        let witness = SigningKey().publicKey
        let e = Reputation.Evidence(me: me, direct: [.init(peer: witness, outcome: .success, at: now), .init(peer: peer, outcome: .failure, at: now)],
                                    testimonies: [.init(witness: witness, subject: peer, outcome: .success, at: now)])
        let s = Reputation.compute(e, now: now, parameters: params)[peer]!
        #expect(s.hearsaySuccesses == 1 && s.directFailures == 1 && s.value < 0.5)
    }

    @Test("the explanation's arithmetic is the stored score")
    func explain() throws {
        let path = Fixture.path("explain")
        defer { Fixture.remove(path) }
        let ledger = try Ledger(path: path)
        let me = SigningKey(), a = SigningKey(), b = SigningKey(), p = SigningKey()
        let now = Fixture.t0
        try ledger.ingest([Fixture.receipt(provider: me, renter: a, job: 1), Fixture.receipt(provider: me, renter: b, job: 2)], source: .own, now: now)
        try ledger.ingest([Fixture.receipt(provider: p, renter: a, job: 3), Fixture.receipt(provider: p, renter: b, job: 4)], source: .gossip, now: now)
        try ledger.recordExperience(peer: p.publicKey, role: "provider", outcome: .noShow, jobID: nil, at: now - 1000)
        let scores = try ledger.recomputeReputation(me: me.publicKey, now: now)
        let s = try #require(scores[p.publicKey])
        let stored = try #require(try ledger.storedScore(p.publicKey))
        #expect(stored.value == s.value && stored.alpha == s.alpha && stored.beta == s.beta)
        let params = Reputation.Parameters()
        #expect(abs(s.alpha - (1 + params.directWeight * s.directSuccesses + s.hearsaySuccesses)) < 1e-12)
        #expect(abs(s.beta - (1 + params.directWeight * s.directFailures + s.hearsayFailures)) < 1e-12)
        #expect(abs(s.value - s.alpha / (s.alpha + s.beta)) < 1e-12)
        #expect(s.directEvents == 1 && s.witnesses.count == 2)
        #expect(abs(s.hearsaySuccesses - s.witnesses.reduce(0) { $0 + $1.weight * $1.successes }) < 1e-12)
    }
}
