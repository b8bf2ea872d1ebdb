import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshDHT
import MeshGossip
import MeshLedger
import MeshTestKit

extension GPUMesh {
    /// `gpumesh simulate`: the protocol state machines on a simulated network and clock.
    struct Simulate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run the DHT, gossip and reputation state machines on a simulated network, reproducibly from a seed.",
            discussion: """
            Virtual time, seeded latency (1-10 ms a message), loss and partitions; real Ed25519 keys.
            Phases: --peers peers join; --churn replaces that share of them in ten rounds (they leave
            without a word; newcomers join); --lookups lookups for live peers' IDs with
            --loss; a partition that cuts off --partition of the mesh, then heals; --sybils of the peers
            lie in every FIND_NODE answer; gossip among --gossip-peers peers; and a reputation scenario
            in which --sybils of 1,000 peers co-sign fake receipts for each other. The same --seed gives
            a byte-identical --report (it holds no wall-clock figures). Docs/RESEARCH.md explains every
            field.
            """)

        @Option(help: ArgumentHelp("Peers.", valueName: "n")) var peers = 1_000
        @Option(help: ArgumentHelp("Share of the peers replaced by newcomers during the run, 0 to 1.", valueName: "rate")) var churn = 0.0
        @Option(help: ArgumentHelp("Share of messages lost, 0 to 0.5.", valueName: "p")) var loss = 0.0
        @Option(help: ArgumentHelp("Lookups per phase.", valueName: "n")) var lookups = 1_000
        @Option(help: ArgumentHelp("Share of the peers cut off by a partition that then heals (0: none).", valueName: "share")) var partition = 0.0
        @Option(help: ArgumentHelp("Share of the peers that lie (DHT answers; fake receipts in the reputation scenario).", valueName: "share"))
        var sybils = 0.0
        @Option(help: ArgumentHelp("Peers in the gossip phase (0: skip).", valueName: "n")) var gossipPeers = 1_000
        @Option(help: ArgumentHelp("Seed.", valueName: "n")) var seed: UInt64 = 1
        @Option(help: ArgumentHelp("Write the report (JSON) here.", valueName: "file")) var report: String?
        @Flag(help: "Print the report as JSON.") var json = false

        func validate() throws {
            guard (2...100_000).contains(peers) else { throw ValidationError("--peers must be 2 to 100000") }
            guard (0...1).contains(churn) else { throw ValidationError("--churn must be 0 to 1 (a share of the peers)") }
            guard (0...0.5).contains(loss) else { throw ValidationError("--loss must be 0 to 0.5") }
            guard (0...0.5).contains(partition) else { throw ValidationError("--partition must be 0 to 0.5") }
            guard (0...0.5).contains(sybils) else { throw ValidationError("--sybils must be 0 to 0.5") }
            guard (1...100_000).contains(lookups) else { throw ValidationError("--lookups must be 1 to 100000") }
            guard (0...20_000).contains(gossipPeers), gossipPeers != 1 else { throw ValidationError("--gossip-peers must be 0 or 2 to 20000") }
        }

        func run() async throws {
            let wall = Date()
            let report = SimulationReport.run(peers: peers, churn: churn, loss: loss, lookups: lookups, partition: partition, sybils: sybils,
                                              gossipPeers: gossipPeers, seed: seed) { text in
                benchProgress(text, json: json || isatty(STDOUT_FILENO) == 0)
            }
            benchProgress("", json: json || isatty(STDOUT_FILENO) == 0)
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
            let data = try encoder.encode(report)
            if let path = self.report {
                guard FileManager.default.createFile(atPath: path, contents: data + Data("\n".utf8)) else { throw CLIError("cannot write \(path)") }
            }
            if json {
                FileHandle.standardOutput.write(data + Data("\n".utf8))
                return
            }
            print(report.summary)
            print(String(format: "(%.1f s of wall time for %.1f s of virtual time)", Date().timeIntervalSince(wall), Double(report.virtualMilliseconds) / 1000))
        }
    }
}

/// What `gpumesh simulate` reports: only figures of the simulated run, so a seed reproduces it
/// byte for byte.
struct SimulationReport: Codable, Equatable {
    struct Lookups: Codable, Equatable {
        var lookups = 0
        var succeeded = 0
        var success = 0.0
        var hopsP50 = 0
        var hopsP99 = 0
        var latencyMsP50 = 0.0
        var latencyMsP99 = 0.0
        var messages = 0

        enum CodingKeys: String, CodingKey {
            case lookups, succeeded, success, hopsP50 = "hops_p50", hopsP99 = "hops_p99", latencyMsP50 = "latency_ms_p50", latencyMsP99 = "latency_ms_p99", messages
        }
    }
    struct Churn: Codable, Equatable {
        var rate = 0.0
        var left = 0
        var joined = 0
        var live = 0
    }
    struct Partition: Codable, Equatable {
        var share = 0.0
        var cutOff = 0
        var duringCrossLookups = Lookups()
        var afterHeal = Lookups()

        enum CodingKeys: String, CodingKey { case share, cutOff = "cut_off", duringCrossLookups = "during_cross_lookups", afterHeal = "after_heal" }
    }
    struct Sybil: Codable, Equatable {
        var share = 0.0
        var liars = 0
        var lookups = Lookups()
    }
    struct Gossip: Codable, Equatable {
        var peers = 0
        var messages = 0
        var coverageMean = 0.0
        var coverageMin = 0.0
        var latencyMsP50 = 0.0
        var latencyMsP99 = 0.0
        var sent = 0
        var lost = 0

        enum CodingKeys: String, CodingKey {
            case peers, messages, coverageMean = "coverage_mean", coverageMin = "coverage_min", latencyMsP50 = "latency_ms_p50", latencyMsP99 = "latency_ms_p99", sent, lost
        }
    }
    struct ReputationFigures: Codable, Equatable {
        var peers = 0
        var sybils = 0
        var fakeReceipts = 0
        var honestReceipts = 0
        var honestProviderScoreMedian = 0.0
        var sybilScoreMax = 0.0
        var sybilsAboveHonestMedian = 0

        enum CodingKeys: String, CodingKey {
            case peers, sybils, fakeReceipts = "fake_receipts", honestReceipts = "honest_receipts"
            case honestProviderScoreMedian = "honest_provider_score_median", sybilScoreMax = "sybil_score_max", sybilsAboveHonestMedian = "sybils_above_honest_median"
        }
    }

    var seed: UInt64 = 0
    var peers = 0
    var loss = 0.0
    var joinMessages = 0
    var churn = Churn()
    var lookups = Lookups()
    var partition: Partition?
    var sybil: Sybil?
    var gossip: Gossip?
    var reputation: ReputationFigures?
    var virtualMilliseconds: UInt64 = 0

    enum CodingKeys: String, CodingKey {
        case seed, peers, loss, joinMessages = "join_messages", churn, lookups, partition, sybil, gossip, reputation
        case virtualMilliseconds = "virtual_ms"
    }

    static func run(peers: Int, churn: Double, loss: Double, lookups: Int, partition: Double, sybils: Double, gossipPeers: Int, seed: UInt64,
                    progress: (String) -> Void) -> SimulationReport {
        var r = SimulationReport(seed: seed, peers: peers, loss: loss)
        progress("joining \(peers) peers")
        var net = SimulatedNetwork(count: peers, seed: seed)
        let start = net.now
        net.joinAll()
        r.joinMessages = net.delivered + net.lost

        // Churn: ten rounds; leavers say nothing, newcomers join. (No housekeeping tick between
        // rounds: at 10,000 peers every tick starts lookups on every peer, which costs minutes;
        // dead contacts are found the way a real peer finds them, by timing out.)
        let replaced = Int((churn * Double(peers)).rounded())
        r.churn.rate = churn
        for round in 0..<10 where replaced > 0 {
            progress("churn round \(round + 1)/10")
            let n = replaced / 10 + (round < replaced % 10 ? 1 : 0)
            var leaving = 0
            while leaving < n {
                let id = net.randomLive()
                guard id != net.contacts[0].peerID else { continue }  // the bootstrap peer stays
                net.dead.insert(id)
                leaving += 1
            }
            r.churn.left += n
            for _ in 0..<n {
                net.addNode()
                r.churn.joined += 1
            }
        }
        r.churn.live = net.contacts.count - net.dead.count

        net.lossRate = loss
        progress("lookups")
        r.lookups = measure(&net, lookups)

        if partition > 0 {
            progress("partition")
            var p = Partition(share: partition)
            var live = net.contacts.map(\.peerID).filter { !net.dead.contains($0) }
            live.sort { $0.distance(to: PeerID(words: (seed, 0, 0, 0))) < $1.distance(to: PeerID(words: (seed, 0, 0, 0))) }
            let cut = Set(live.prefix(Int(Double(live.count) * partition)))
            p.cutOff = cut.count
            net.partitions = [cut, Set(live).subtracting(cut)]
            p.duringCrossLookups = measure(&net, lookups, from: { !cut.contains($0) }, to: { cut.contains($0) })
            net.partitions = []
            p.afterHeal = measure(&net, lookups, from: { !cut.contains($0) }, to: { cut.contains($0) })
            r.partition = p
        }
        if sybils > 0 {
            progress("lying peers")
            var s = Sybil(share: sybils)
            let live = net.contacts.map(\.peerID).filter { !net.dead.contains($0) }
            var liars = Set<PeerID>()
            var rng = SplitMix64(seed: seed &+ 0x5b)
            while liars.count < Int(Double(live.count) * sybils) { liars.insert(live[Int(rng.next() % UInt64(live.count))]) }
            net.liars = liars
            s.liars = liars.count
            s.lookups = measure(&net, lookups, from: { !liars.contains($0) }, to: { !liars.contains($0) })
            net.liars = []
            r.sybil = s
        }
        r.virtualMilliseconds = net.now - start

        if gossipPeers >= 2 {
            progress("gossip among \(gossipPeers) peers")
            r.gossip = gossipPhase(peers: gossipPeers, churn: churn, loss: loss, seed: seed)
        }
        progress("reputation")
        r.reputation = reputationPhase(sybilShare: sybils, seed: seed)
        return r
    }

    /// `count` lookups, each from a random live peer (passing `from`) for the ID of another
    /// (passing `to`); a lookup succeeds when that peer comes back first.
    static func measure(_ net: inout SimulatedNetwork, _ count: Int, from: (PeerID) -> Bool = { _ in true },
                        to: (PeerID) -> Bool = { _ in true }) -> Lookups {
        var l = Lookups()
        let before = net.delivered + net.lost
        var hops: [Int] = []
        var latencies: [Double] = []
        var attempts = 0
        while l.lookups < count && attempts < count * 20 {
            attempts += 1
            let a = net.randomLive(), b = net.randomLive()
            guard a != b, from(a), to(b) else { continue }
            let t = net.now
            l.lookups += 1
            guard let result = net.lookup(b, from: a) else { continue }
            if result.result.first?.id == b { l.succeeded += 1 }
            hops.append(result.hops)
            latencies.append(Double(net.lastLookupFinishedAt - t))
        }
        l.success = l.lookups == 0 ? 0 : (Double(l.succeeded) / Double(l.lookups) * 10_000).rounded() / 10_000
        l.hopsP50 = percentile(hops, 0.5) ?? 0
        l.hopsP99 = percentile(hops, 0.99) ?? 0
        l.latencyMsP50 = percentile(latencies, 0.5) ?? 0
        l.latencyMsP99 = percentile(latencies, 0.99) ?? 0
        l.messages = net.delivered + net.lost - before
        return l
    }

    static func gossipPhase(peers: Int, churn: Double, loss: Double, seed: UInt64) -> Gossip {
        var g = Gossip(peers: peers)
        var net = GossipSimulation(count: peers, seed: seed &+ 0x60)
        net.lossRate = loss
        net.run(for: 5_000)  // links form
        var rng = SplitMix64(seed: seed &+ 0x61)
        // Peers that left (the churn share, at most half) neither relay nor deliver.
        while Double(net.dead.count) < Double(peers) * min(churn, 0.5) * 0.5 { net.dead.insert(Int(rng.next() % UInt64(peers))) }
        var ids: [(MeshGossip.Gossip.MessageID, Int)] = []
        for i in 0..<20 {
            var from = Int(rng.next() % UInt64(peers))
            while net.dead.contains(from) { from = Int(rng.next() % UInt64(peers)) }
            if let id = net.publish(from: from, payload: Array("simulated message \(i)".utf8)) { ids.append((id, from)) }
            net.run(for: 500)
        }
        net.run(for: 30_000)
        let coverages = ids.map { net.coverage($0.0, publisher: $0.1) }
        let latencies = ids.flatMap { net.latencies($0.0) }.map { Double($0) }
        g.messages = ids.count
        g.coverageMean = coverages.isEmpty ? 0 : (coverages.reduce(0, +) / Double(coverages.count) * 10_000).rounded() / 10_000
        g.coverageMin = ((coverages.min() ?? 0) * 10_000).rounded() / 10_000
        g.latencyMsP50 = percentile(latencies, 0.5) ?? 0
        g.latencyMsP99 = percentile(latencies, 0.99) ?? 0
        g.sent = net.sent
        g.lost = net.lost
        return g
    }

    /// 1,000 peers: 50 renters and 200 providers trade honestly (2,000 receipts); a share of the
    /// peers are Sybils that co-sign 20 fake receipts each among themselves; the observer (an
    /// honest renter) scores everyone.
    static func reputationPhase(sybilShare: Double, seed: UInt64) -> ReputationFigures {
        let total = 1_000
        let sybilCount = Int(Double(total) * sybilShare)
        var rng = SplitMix64(seed: seed &+ 0x70)
        let keys = (0..<total).map { _ in
            try! SigningKey(seed: SecretBytes(copying: (0..<4).flatMap { _ in withUnsafeBytes(of: rng.next()) { Array($0) } })).publicKey
        }
        let renters = Array(keys[0..<50]), providers = Array(keys[50..<250]), sybils = Array(keys[(total - sybilCount)...])
        let now = SimulatedNetwork.epoch
        var evidence = Reputation.Evidence(me: renters[0])
        var f = ReputationFigures(peers: total, sybils: sybilCount)
        for i in 0..<2_000 {
            let renter = renters[Int(rng.next() % 50)], provider = providers[Int(rng.next() % 200)]
            let at = now - rng.next() % (30 * 86_400_000)
            if renter == renters[0] {
                evidence.direct.append(.init(peer: provider, outcome: .success, at: at))
            } else {
                evidence.testimonies.append(.init(witness: renter, subject: provider, outcome: .success, at: at))
                evidence.testimonies.append(.init(witness: provider, subject: renter, outcome: .success, at: at))
            }
            f.honestReceipts = i + 1
        }
        if sybils.count >= 2 {
            for _ in 0..<(sybils.count * 20) {
                let a = Int(rng.next() % UInt64(sybils.count)), b = (a + 1 + Int(rng.next() % UInt64(sybils.count - 1))) % sybils.count
                evidence.testimonies.append(.init(witness: sybils[b], subject: sybils[a], outcome: .success, at: now))
                evidence.testimonies.append(.init(witness: sybils[a], subject: sybils[b], outcome: .success, at: now))
                f.fakeReceipts += 1
            }
        }
        let scores = Reputation.compute(evidence, now: now)
        let honest = providers.map { scores[$0]?.value ?? 0.5 }.sorted()
        let median = honest[honest.count / 2]
        let sybilScores = sybils.map { scores[$0]?.value ?? 0.5 }
        f.honestProviderScoreMedian = (median * 10_000).rounded() / 10_000
        f.sybilScoreMax = ((sybilScores.max() ?? 0) * 10_000).rounded() / 10_000
        f.sybilsAboveHonestMedian = sybilScores.filter { $0 > median }.count
        return f
    }

    /// A few lines for people.
    var summary: String {
        var lines: [String] = []
        lines.append("simulated \(peers) peers (seed \(seed)); joining took \(joinMessages) messages")
        if churn.rate > 0 { lines.append("churn \(churn.rate): \(churn.left) left, \(churn.joined) joined, \(churn.live) live") }
        func show(_ l: Lookups) -> String {
            String(format: "%d/%d succeeded (%.4f), hops p50 %d p99 %d, latency p50 %.0f ms p99 %.0f ms, %d messages",
                   l.succeeded, l.lookups, l.success, l.hopsP50, l.hopsP99, l.latencyMsP50, l.latencyMsP99, l.messages)
        }
        lines.append("lookups (loss \(loss)): " + show(lookups))
        if let p = partition {
            lines.append("partition cutting off \(p.cutOff) peers: across it " + show(p.duringCrossLookups))
            lines.append("  after it healed: " + show(p.afterHeal))
        }
        if let s = sybil { lines.append("with \(s.liars) lying peers: " + show(s.lookups)) }
        if let g = gossip {
            lines.append(String(format: "gossip among %d peers: %d messages, coverage mean %.4f min %.4f, latency p50 %.0f ms p99 %.0f ms",
                                g.peers, g.messages, g.coverageMean, g.coverageMin, g.latencyMsP50, g.latencyMsP99))
        }
        if let rep = reputation {
            lines.append(String(format: "reputation: %d Sybils with %d fake receipts; honest providers' median score %.4f, best Sybil %.4f, %d Sybils above that median",
                                rep.sybils, rep.fakeReceipts, rep.honestProviderScoreMedian, rep.sybilScoreMax, rep.sybilsAboveHonestMedian))
        }
        return lines.joined(separator: "\n")
    }
}
