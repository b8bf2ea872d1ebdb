import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshLedger
import MeshMarket
import MeshRuntime

extension GPUMesh {
    /// `gpumesh bench ledger`: ingest against the signature floor, reputation, rewards, size.
    struct LedgerBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "ledger",
            abstract: "Measure the ledger: verified durable ingest vs the signature floor, reputation recompute, rewards, size.",
            discussion: """
            signature_floor: verifying each receipt's two Ed25519 signatures alone (bodies encoded in
            advance), one core. ingest: verify + store in a fresh WAL database (synchronous FULL,
            --batch receipts per transaction), one core. reputation: --receipts receipts over --peers
            peers, evidence read from the database, EigenTrust and scores computed and stored.
            rewards: one epoch computed from the database and stored.
            """)

        @Option(help: ArgumentHelp("Receipts for the ingest and signature figures.", valueName: "n")) var ingest = 20_000
        @Option(help: ArgumentHelp("Receipts for the reputation and rewards figures.", valueName: "n")) var receipts = 100_000
        @Option(help: ArgumentHelp("Peers those receipts are spread over.", valueName: "n")) var peers = 10_000
        @Option(help: ArgumentHelp("Receipts per ingest transaction.", valueName: "n")) var batch = 1_000
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard (100...1_000_000).contains(ingest), (100...1_000_000).contains(receipts) else { throw ValidationError("--ingest and --receipts must be 100 to 1000000") }
            guard (2...1_000_000).contains(peers) else { throw ValidationError("--peers must be 2 to 1000000") }
            guard (1...100_000).contains(batch) else { throw ValidationError("--batch must be 1 to 100000") }
        }

        func run() async throws {
            let scratch = NSTemporaryDirectory() + "gpumesh-bench-ledger-" + Hex.encode(SecureRandom.bytes(4))
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: scratch) }
            func seconds(_ start: UInt64) -> Double { Double(EventLoop.monotonicNanoseconds() - start) / 1e9 }

            benchProgress("signing \(ingest) receipts", json: json)
            let small = SyntheticReceipts.make(count: ingest, peers: 200, seed: 7)

            // The floor: two signature checks per receipt, nothing else.
            benchProgress("signature floor", json: json)
            let providerContext = Array("gpumesh/receipt/provider/v1".utf8), renterContext = Array("gpumesh/receipt/renter/v1".utf8)
            let signed = small.map { r in (r, providerContext + r.body, renterContext + r.body) }
            var start = EventLoop.monotonicNanoseconds()
            var valid = 0
            for (r, pm, rm) in signed where r.provider.isValidSignature(r.providerSignature, for: pm) && r.renter.isValidSignature(r.renterSignature, for: rm) {
                valid += 1
            }
            let floor = Double(signed.count) / seconds(start)
            guard valid == signed.count else { throw CLIError("a synthetic receipt did not verify") }

            // Verified, durable ingest.
            benchProgress("ingest", json: json)
            let ingestPath = scratch + "/ingest.sqlite"
            let ledger = try Ledger(path: ingestPath)
            start = EventLoop.monotonicNanoseconds()
            var stored = 0
            for i in stride(from: 0, to: small.count, by: batch) {
                stored += try ledger.ingest(Array(small[i..<min(small.count, i + batch)]), source: .gossip, now: 1).stored
            }
            let ingestRate = Double(small.count) / seconds(start)
            guard stored == small.count else { throw CLIError("ingest stored \(stored) of \(small.count)") }
            // The storing part alone (receipts taken as verified), for where the time goes.
            benchProgress("store only", json: json)
            let storeLedger = try Ledger(path: scratch + "/store.sqlite")
            start = EventLoop.monotonicNanoseconds()
            for i in stride(from: 0, to: small.count, by: batch) {
                try storeLedger.ingest(Array(small[i..<min(small.count, i + batch)]), source: .gossip, now: 1, verified: true)
            }
            let storeRate = Double(small.count) / seconds(start)

            // Reputation and rewards over a big ledger.
            benchProgress("signing \(receipts) receipts over \(peers) peers", json: json)
            let big = SyntheticReceipts.make(count: receipts, peers: peers, seed: 8)
            let bigPath = scratch + "/big.sqlite"
            let bigLedger = try Ledger(path: bigPath)
            benchProgress("storing them", json: json)
            for i in stride(from: 0, to: big.count, by: 10_000) {
                try bigLedger.ingest(Array(big[i..<min(big.count, i + 10_000)]), source: .gossip, now: 1, verified: true)
            }
            let me = SigningKey()
            benchProgress("reputation", json: json)
            start = EventLoop.monotonicNanoseconds()
            let scores = try bigLedger.recomputeReputation(me: me.publicKey, now: big.last!.startedAt + 1)
            let reputationMs = seconds(start) * 1000
            benchProgress("rewards", json: json)
            start = EventLoop.monotonicNanoseconds()
            let epoch = Rewards.epoch(of: big[0].startedAt)
            let entries = try bigLedger.recomputeRewards(epoch: epoch)
            let rewardsMs = seconds(start) * 1000
            try bigLedger.checkpoint()
            let size = Self.size(bigPath)
            benchProgress("", json: json)

            func r1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
            let result: [String: JSONValue] = [
                "ingest_receipts": .int(small.count),
                "ingest_batch": .int(batch),
                "signature_floor_receipts_per_s": .double(r1(floor)),
                "ingest_receipts_per_s": .double(r1(ingestRate)),
                "ingest_to_floor_ratio": .double((ingestRate / floor * 1000).rounded() / 1000),
                "store_only_receipts_per_s": .double(r1(storeRate)),
                "receipts": .int(big.count),
                "peers": .int(peers),
                "peers_scored": .int(scores.count),
                "reputation_recompute_ms": .double(r1(reputationMs)),
                "rewards_epoch_ms": .double(r1(rewardsMs)),
                "rewards_entries": .int(entries.count),
                "db_mib_per_100k_receipts": .double(r1(size / 1_048_576 * 100_000 / Double(big.count))),
            ]
            if json { try GPUMesh.printBenchJSON(result); return }
            print(String(format: "signature floor (2 Ed25519 checks, 1 core)        %.0f receipts/s", floor))
            print(String(format: "ingest (verify + store, durable, batch %d)     %.0f receipts/s  (%.2f of the floor, goal >= 0.8)", batch, ingestRate, ingestRate / floor))
            print(String(format: "reputation recompute (%d receipts, %d peers)  %.1f ms  (goal <= 1000)", big.count, peers, reputationMs))
            print(String(format: "rewards, one epoch                                  %.1f ms", rewardsMs))
            print(String(format: "database size                                       %.1f MiB per 100k receipts", size / 1_048_576 * 100_000 / Double(big.count)))
        }

        /// Bytes of a database with its WAL and shared-memory files.
        static func size(_ path: String) -> Double {
            ["", "-wal", "-shm"].reduce(0) { total, suffix in
                total + Double((try? FileManager.default.attributesOfItem(atPath: path + suffix)[.size] as? Int) ?? 0)
            }
        }
    }
}
