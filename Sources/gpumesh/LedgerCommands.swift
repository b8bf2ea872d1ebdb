import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshLedger
import MeshMarket

/// Opening the ledger of a data directory and naming peers in it.
struct LedgerAccess {
    let ledger: Ledger
    let me: SigningKey
    let friends: [PublicKey]

    /// The ledger of `dir` (the node may be running: SQLite's WAL lets both use it).
    init(_ dir: DataDirectory) throws {
        let path = dir.path + "/ledger.sqlite"
        guard FileManager.default.fileExists(atPath: path) else {
            throw CLIError("no ledger at \(path) yet (a node makes it when it first starts: `gpumesh node --data-dir \(dir.path)`)")
        }
        do { ledger = try Ledger(path: path) } catch { throw CLIError("\(error)") }
        me = try dir.loadIdentity()
        let friendIDs = Set(try dir.loadConfig().friends)
        do { friends = try ledger.peerKeys(withIDs: friendIDs) } catch { throw CLIError("\(error)") }
    }

    /// The peer a prefix names: of its peer ID or its public key, at least 4 hex digits, unambiguous.
    func peer(_ prefix: String) throws -> PublicKey {
        let p = prefix.lowercased()
        guard p.count >= 4, p.allSatisfy(\.isHexDigit) else { throw CLIError("'\(prefix)' is not a peer: give at least 4 hex digits of its peer ID or key") }
        var keys: [PublicKey]
        do { keys = try ledger.peerKeys() } catch { throw CLIError("\(error)") }
        keys.append(me.publicKey)
        let matches = Set(keys.filter { PeerID(publicKey: $0).hex.hasPrefix(p) || Hex.encode($0.bytes).hasPrefix(p) })
        guard matches.count == 1, let key = matches.first else {
            throw CLIError(matches.isEmpty ? "no peer \(prefix) in this ledger (it holds no receipt naming it)"
                                           : "\(prefix) matches \(matches.count) peers; give more digits")
        }
        return key
    }
}

extension GPUMesh {
    /// `gpumesh reputation [PEER] [--explain]`.
    struct ReputationCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "reputation",
            abstract: "This peer's view of other peers' reputation, from the evidence in its ledger.",
            discussion: """
            Recomputes every score from the ledger (receipts, reports, this peer's own experience) and
            stores them, as the node does every minute. Without PEER: the best-rated peers. With
            --explain: the evidence and the arithmetic behind PEER's score (Docs/ARCHITECTURE.md,
            "Ledger", gives the formulas).
            """)

        @OptionGroup var common: CommonOptions
        @Argument(help: ArgumentHelp("A peer: at least 4 hex digits of its peer ID or key.", valueName: "peer")) var peer: String?
        @Flag(help: "Show the evidence and the arithmetic.") var explain = false
        @Option(help: ArgumentHelp("Most peers listed.", valueName: "n")) var limit = 20
        @Flag(help: "Print JSON.") var json = false

        func validate() throws {
            if explain && peer == nil { throw ValidationError("--explain needs a PEER") }
        }

        func run() async throws {
            let access = try LedgerAccess(common.directory)
            let now = UInt64(Date().timeIntervalSince1970 * 1000)
            let scores: [PublicKey: Reputation.Score]
            do { scores = try access.ledger.recomputeReputation(me: access.me.publicKey, friends: access.friends, now: now) }
            catch { throw CLIError("\(error)") }
            guard let peer else {
                let top = scores.values.sorted { ($0.value, $1.peer) > ($1.value, $0.peer) }.prefix(max(0, limit))
                if json { try printJSON(Array(top)); return }
                guard !top.isEmpty else { print("no evidence about any peer yet"); return }
                print(column("PEER", 14) + column("SCORE", 8) + column("TRUST", 9) + column("DIRECT +/-", 14) + "HEARSAY +/-")
                for s in top {
                    let key = try PublicKey(bytes: Hex.decode(s.peer) ?? [])
                    print(column(String(PeerID(publicKey: key).hex.prefix(12)), 14) + column(String(format: "%.3f", s.value), 8)
                          + column(String(format: "%.4f", s.trust), 9) + column(String(format: "%.1f/%.1f", s.directSuccesses, s.directFailures), 14)
                          + String(format: "%.1f/%.1f", s.hearsaySuccesses, s.hearsayFailures))
                }
                return
            }
            let key = try access.peer(peer)
            let score = scores[key] ?? Reputation.unknown(key)
            let id = PeerID(publicKey: key).hex
            if json {
                var object = try JSONValue(encoding: score)
                if case .object(var o) = object { o["peer_id"] = .string(id); object = .object(o) }
                try printJSON(object)
                return
            }
            print("peer \(id)")
            print(String(format: "score %.4f", score.value) + (score.directEvents == 0 && score.witnesses.isEmpty ? "  (no evidence: the prior)" : ""))
            guard explain else { return }
            print("")
            for line in score.explanation(name: Reputation.shortPeerID) { print(line) }
        }
    }

    /// `gpumesh rewards [PEER] [--epoch E]`.
    struct RewardsCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "rewards",
            abstract: "Reward points per epoch (UTC day), computed from the receipts this peer holds.",
            discussion: """
            Points are a pure function of the receipts: any peer holding the same receipts computes the
            same numbers. A provider earns, per GPU-hour, the GPU model's performance class (the larger
            of its FP32 and FP16 TFLOPS in the catalogue); a renter spends each receipt's charge.
            """)

        @OptionGroup var common: CommonOptions
        @Argument(help: ArgumentHelp("Only this peer (at least 4 hex digits of its peer ID or key).", valueName: "peer")) var peer: String?
        @Option(help: ArgumentHelp("Only this epoch (days since 1970-01-01 UTC; 'today' for the current one).", valueName: "e")) var epoch: String?
        @Option(help: ArgumentHelp("Most rows shown.", valueName: "n")) var limit = 50
        @Flag(help: "Print JSON.") var json = false

        func run() async throws {
            var only: UInt64?
            if let epoch {
                if epoch == "today" { only = Rewards.epoch(of: UInt64(Date().timeIntervalSince1970 * 1000)) }
                else if let e = UInt64(epoch) { only = e }
                else { throw ValidationError("--epoch must be a day number or 'today'") }
            }
            let access = try LedgerAccess(common.directory)
            var entries: [Rewards.Entry]
            do { entries = try access.ledger.recomputeRewards(epoch: only) } catch { throw CLIError("\(error)") }
            if let peer {
                let hex = Hex.encode(try access.peer(peer).bytes)
                entries = entries.filter { $0.peer == hex }
            }
            let shown = Array(entries.prefix(max(0, limit)))
            if json { try printJSON(shown); return }
            guard !shown.isEmpty else { print("no receipts in that range"); return }
            print(column("EPOCH", 8) + column("DAY", 12) + column("PEER", 14) + column("EARNED", 12) + column("SPENT", 12) + column("GPU-H", 9) + "JOBS P/R")
            for e in shown {
                let key = try PublicKey(bytes: Hex.decode(e.peer) ?? [])
                let day = Date(timeIntervalSince1970: Double(e.epoch) * 86_400).formatted(.iso8601.year().month().day())
                print(column("\(e.epoch)", 8) + column(day, 12) + column(String(PeerID(publicKey: key).hex.prefix(12)), 14)
                      + column(String(format: "%.3f", Double(e.earnedMillipoints) / 1000), 12) + column(String(format: "%.3f", Double(e.spentMillipoints) / 1000), 12)
                      + column(String(format: "%.2f", Double(e.gpuMilliseconds) / 3_600_000), 9) + "\(e.jobsProvided)/\(e.jobsRented)")
            }
        }
    }

    /// `gpumesh ledger ...`.
    struct LedgerCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ledger",
            abstract: "Look after this peer's ledger: status, export, import, verify.",
            subcommands: [Status.self, Export.self, Import.self, Verify.self, IngestTest.self])

        /// `gpumesh ledger status`.
        struct Status: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "What the ledger holds.")
            @OptionGroup var common: CommonOptions
            @Flag(help: "Print JSON.") var json = false

            func run() async throws {
                let access = try LedgerAccess(common.directory)
                let c: Ledger.Counts
                do { c = try access.ledger.counts() } catch { throw CLIError("\(error)") }
                if json { try printJSON(c); return }
                print("\(access.ledger.path)")
                print("receipts \(c.receipts) (own \(c.ownReceipts)), reports \(c.reports), peers \(c.peers), experience events \(c.experience)")
            }
        }

        /// `gpumesh ledger export --out FILE`.
        struct Export: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Write every receipt held as JSON Lines (wire form in hex plus decoded fields), for settlement or analysis.")
            @OptionGroup var common: CommonOptions
            @Option(help: ArgumentHelp("The file to write.", valueName: "file")) var out: String
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                let access = try LedgerAccess(common.directory)
                let n: Int
                do { n = try access.ledger.export(to: out) } catch { throw CLIError("\(error)") }
                if json { try printJSON(["receipts": .int(n), "file": .string(out)] as [String: JSONValue]) } else { print("wrote \(n) receipts to \(out)") }
            }
        }

        /// `gpumesh ledger import FILE`.
        struct Import: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Read receipts from an export; the ones that verify are stored.")
            @OptionGroup var common: CommonOptions
            @Argument(help: ArgumentHelp("An export (JSON Lines).", valueName: "file")) var file: String
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                let access = try LedgerAccess(common.directory)
                let r: Ledger.IngestResult
                do { r = try access.ledger.importReceipts(from: file, now: UInt64(Date().timeIntervalSince1970 * 1000)) } catch { throw CLIError("\(error)") }
                if json { try printJSON(r) } else { print("stored \(r.stored), already held \(r.duplicates), refused \(r.refused)") }
            }
        }

        /// `gpumesh ledger verify`.
        struct Verify: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Re-check the database's integrity and every stored signature; exit 1 if anything fails.")
            @OptionGroup var common: CommonOptions
            @Option(help: ArgumentHelp("A ledger file to check instead of the data directory's.", valueName: "file")) var db: String?
            @Flag(help: "Print JSON.") var json = false

            func run() async throws {
                let ledger: Ledger
                if let db { do { ledger = try Ledger(path: db) } catch { throw CLIError("\(error)") } } else { ledger = try LedgerAccess(common.directory).ledger }
                let audit: Ledger.Audit
                do { audit = try ledger.verify() } catch { throw CLIError("\(error)") }
                if json {
                    var object = try JSONValue(encoding: audit)
                    if case .object(var o) = object { o["ok"] = .bool(audit.ok); object = .object(o) }
                    try printJSON(object)
                } else {
                    print("integrity: \(audit.integrity)")
                    print("receipts checked \(audit.receipts), reports checked \(audit.reports), problems \(audit.problems.count)")
                    for p in audit.problems { print("  \(p)") }
                }
                if !audit.ok { throw ExitCode(1) }
            }
        }

        /// `gpumesh ledger ingest-test`: stores synthetic receipts in batches, printing each
        /// acknowledged count (used to test that a killed process loses nothing acknowledged).
        struct IngestTest: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                commandName: "ingest-test", abstract: "Store synthetic receipts in batches, printing 'acked N' after each commit.",
                shouldDisplay: false)
            @Option(help: ArgumentHelp("The ledger file.", valueName: "file")) var db: String
            @Option(help: ArgumentHelp("Receipts.", valueName: "n")) var count = 10_000
            @Option(help: ArgumentHelp("Receipts per transaction.", valueName: "n")) var batch = 50

            func run() async throws {
                guard count > 0, batch > 0 else { throw ValidationError("--count and --batch must be positive") }
                let ledger: Ledger
                do { ledger = try Ledger(path: db) } catch { throw CLIError("\(error)") }
                let receipts = SyntheticReceipts.make(count: count, peers: 20, seed: 1)
                var acked = 0
                while acked < count {
                    let slice = Array(receipts[acked..<min(count, acked + batch)])
                    do { try ledger.ingest(slice, source: .imported, now: 1, verified: true) } catch { throw CLIError("\(error)") }
                    acked += slice.count
                    print("acked \(acked)")
                    flushOutput()
                }
            }
        }
    }
}

/// Deterministic receipts signed by real keys, for benchmarks and durability tests.
enum SyntheticReceipts {
    /// `count` receipts among `peers` keys derived from `seed`; receipt `i` has job number `i`
    /// (the last 8 bytes of its job ID), a start time `i` seconds after 2026-09-01, and a mix of
    /// GPU models.
    static func make(count: Int, peers: Int, seed: UInt64) -> [Negotiation.Receipt] {
        var rng = SplitMix64(seed: seed)
        let keys = (0..<max(2, peers)).map { _ in
            try! SigningKey(seed: SecretBytes(copying: (0..<4).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } }))
        }
        let models = ["rtx-4090", "a100-80gb", "h100-80gb", "rtx-3060"]
        return (0..<count).map { i in
            let a = Int(rng.next() % UInt64(keys.count))
            let b = (a + 1 + Int(rng.next() % UInt64(keys.count - 1))) % keys.count
            var job = [UInt8](repeating: 0, count: 8) + withUnsafeBytes(of: UInt64(i).bigEndian) { Array($0) }
            job[0] = 1
            var r = Negotiation.Receipt(jobID: job, provider: keys[a].publicKey, renter: keys[b].publicKey,
                                        specDigest: [UInt8](repeating: 1, count: 32), inputsDigest: [UInt8](repeating: 2, count: 32),
                                        outputsDigest: [UInt8](repeating: 3, count: 32), price: Price(millipoints: UInt32(500 + i % 1000)), gpus: 1 + i % 4,
                                        gpuModel: models[i % models.count], startedAt: 1_788_220_800_000 + UInt64(i) * 1000,
                                        wallMilliseconds: UInt64(1000 + i % 600_000), exitStatus: 0, signaled: false, timedOut: false)
            r.signAsProvider(keys[a])
            r.signAsRenter(keys[b])
            return r
        }
    }
}
