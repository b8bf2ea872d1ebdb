import Foundation
import MeshCore
import MeshCrypto

/// Reputation as this peer sees it: a pure function of the evidence it holds, with the clock
/// passed in.
///
/// - **Direct experience** (this peer's own jobs): successes and failures (failures, no-shows,
///   failed verifications), each weighed by `0.5^(age / halfLife)`.
/// - **Hearsay**: a co-signed receipt is each party's testimony that the other delivered (a
///   success); a report is its author's testimony of a failure. How much a witness counts is
///   this peer's trust in it, computed EigenTrust-style: local trust `c[i][j]` is what `i`
///   testified about `j` (decayed successes minus failures, at least 0, normalised over `j`);
///   this peer's own row is its direct experience; global trust is the fixed point of
///   `t = (1 − a)·Cᵀt + a·p`, with `p` spread evenly over the pre-trusted set (this peer and its
///   friends) and a witness with no testimony sending its share to `p`. A witness's weight is its
///   trust over the largest trust of any witness, and one witness's testimony about one peer
///   counts at most `witnessCap` (decayed) events.
/// - **Score**: a beta reputation `α / (α + β)` with `α = 1 + D·s_direct + s_hearsay` and
///   `β = 1 + D·f_direct + f_hearsay`; `D = directWeight`, so direct evidence outweighs hearsay.
///   Peers with no evidence score 0.5.
///
/// Peers that only vouch for each other get no trust unless someone trusted vouches for them, so
/// a Sybil collective co-signing fake receipts cannot lift itself.
public enum Reputation {
    /// The parameters.
    public struct Parameters: Sendable, Equatable {
        /// Evidence loses half its weight every this many milliseconds (default 30 days).
        public var halfLifeMilliseconds: Double = 30 * 86_400_000
        /// How many times a direct event counts compared with one from the most trusted witness.
        public var directWeight: Double = 4
        /// EigenTrust's restart weight towards the pre-trusted set.
        public var restart: Double = 0.15
        /// Most decayed events one witness's testimony about one peer can count.
        public var witnessCap: Double = 20
        /// Power iterations at most (stops earlier when the change is below 1e-10).
        public var iterations = 60

        /// The defaults.
        public init() {}
    }

    /// Whether an event went well.
    public enum Outcome: String, Sendable, Codable, CaseIterable {
        /// The job completed with a co-signed receipt.
        case success
        /// The job failed on the peer's side (an error, a cancel, a timeout).
        case failure
        /// The peer agreed and never delivered, or vanished.
        case noShow = "no_show"
        /// The peer's outputs or receipt did not verify.
        case failedVerification = "failed_verification"
        /// The renter took the outputs and never countersigned.
        case unsigned

        /// True for `success`.
        public var isSuccess: Bool { self == .success }
    }

    /// One event of this peer's own experience.
    public struct DirectEvent: Sendable, Equatable {
        /// The other peer.
        public var peer: PublicKey
        /// What happened.
        public var outcome: Outcome
        /// When (Unix ms).
        public var at: UInt64

        /// An event.
        public init(peer: PublicKey, outcome: Outcome, at: UInt64) {
            self.peer = peer
            self.outcome = outcome
            self.at = at
        }
    }

    /// One testimony: `witness` says `subject` did well (`success`) or not.
    public struct Testimony: Sendable, Equatable {
        /// Who says so (a receipt's party, a report's author).
        public var witness: PublicKey
        /// About whom.
        public var subject: PublicKey
        /// What.
        public var outcome: Outcome
        /// When (Unix ms).
        public var at: UInt64

        /// A testimony.
        public init(witness: PublicKey, subject: PublicKey, outcome: Outcome, at: UInt64) {
            self.witness = witness
            self.subject = subject
            self.outcome = outcome
            self.at = at
        }
    }

    /// Everything the computation reads.
    public struct Evidence: Sendable {
        /// This peer.
        public var me: PublicKey
        /// Peers trusted from the start besides this one.
        public var friends: [PublicKey]
        /// This peer's own experience.
        public var direct: [DirectEvent]
        /// Others' testimonies (receipts count twice: each party about the other).
        public var testimonies: [Testimony]

        /// Evidence.
        public init(me: PublicKey, friends: [PublicKey] = [], direct: [DirectEvent] = [], testimonies: [Testimony] = []) {
            self.me = me
            self.friends = friends
            self.direct = direct
            self.testimonies = testimonies
        }
    }

    /// One witness's part in a score.
    public struct Contribution: Sendable, Equatable, Codable {
        /// The witness (hex key).
        public var witness: String
        /// Its weight (trust over the largest witness trust).
        public var weight: Double
        /// Decayed successes it reports (after the cap).
        public var successes: Double
        /// Decayed failures it reports (after the cap).
        public var failures: Double
    }

    /// A score and the arithmetic behind it.
    public struct Score: Sendable, Equatable, Codable {
        /// The peer (hex key).
        public var peer: String
        /// `alpha / (alpha + beta)`, 0 to 1.
        public var value: Double
        /// `1 + D·directSuccesses + hearsaySuccesses`.
        public var alpha: Double
        /// `1 + D·directFailures + hearsayFailures`.
        public var beta: Double
        /// Decayed direct successes.
        public var directSuccesses: Double
        /// Decayed direct failures.
        public var directFailures: Double
        /// Direct events, undecayed.
        public var directEvents: Int
        /// Weighted hearsay successes.
        public var hearsaySuccesses: Double
        /// Weighted hearsay failures.
        public var hearsayFailures: Double
        /// The peer's global trust (EigenTrust), 0 to 1.
        public var trust: Double
        /// Witnesses with any weight, heaviest first (at most 20).
        public var witnesses: [Contribution]

        enum CodingKeys: String, CodingKey {
            case peer, value, alpha, beta, trust, witnesses
            case directSuccesses = "direct_successes", directFailures = "direct_failures", directEvents = "direct_events"
            case hearsaySuccesses = "hearsay_successes", hearsayFailures = "hearsay_failures"
        }

        /// The evidence and arithmetic behind the score, one line each, for people (`reputation
        /// --explain` and the explorer's peer page); `name` shortens a witness's hex key.
        public func explanation(parameters p: Parameters = Parameters(), name: (String) -> String = { String($0.prefix(12)) }) -> [String] {
            var lines = [
                String(format: "direct experience: %d events; decayed successes %.3f, failures %.3f (half-life %.0f days)",
                       directEvents, directSuccesses, directFailures, p.halfLifeMilliseconds / 86_400_000),
                String(format: "hearsay: %d witnesses with weight; weighted successes %.3f, failures %.3f", witnesses.count,
                       hearsaySuccesses, hearsayFailures),
            ]
            for w in witnesses {
                lines.append(String(format: "  witness %@  weight %.4f  successes %.3f  failures %.3f", name(w.witness), w.weight, w.successes, w.failures))
            }
            lines.append(String(format: "alpha = 1 + %.0f x %.3f + %.3f = %.4f", p.directWeight, directSuccesses, hearsaySuccesses, alpha))
            lines.append(String(format: "beta  = 1 + %.0f x %.3f + %.3f = %.4f", p.directWeight, directFailures, hearsayFailures, beta))
            lines.append(String(format: "score = alpha / (alpha + beta) = %.4f / %.4f = %.4f", alpha, alpha + beta, value))
            lines.append(String(format: "its own trust as a witness (EigenTrust): %.6f", trust))
            return lines
        }
    }

    /// The first 12 hex digits of the peer ID of a hex public key (the key's own digits when it
    /// does not decode).
    public static func shortPeerID(_ hexKey: String) -> String {
        guard let bytes = Hex.decode(hexKey), let key = try? PublicKey(bytes: bytes) else { return String(hexKey.prefix(12)) }
        return String(PeerID(publicKey: key).hex.prefix(12))
    }

    /// Every peer the evidence names, scored at `now`.
    public static func compute(_ evidence: Evidence, now: UInt64, parameters: Parameters = Parameters()) -> [PublicKey: Score] {
        let p = parameters
        func decay(_ at: UInt64) -> Double { at >= now ? 1 : pow(0.5, Double(now - at) / p.halfLifeMilliseconds) }

        // Index peers.
        var index: [PublicKey: Int] = [:]
        var keys: [PublicKey] = []
        func id(_ k: PublicKey) -> Int {
            if let i = index[k] { return i }
            index[k] = keys.count
            keys.append(k)
            return keys.count - 1
        }
        let me = id(evidence.me)
        for f in evidence.friends { _ = id(f) }

        // Direct experience.
        var directS: [Int: Double] = [:], directF: [Int: Double] = [:], directN: [Int: Int] = [:]
        for e in evidence.direct {
            let j = id(e.peer)
            if e.outcome.isSuccess { directS[j, default: 0] += decay(e.at) } else { directF[j, default: 0] += decay(e.at) }
            directN[j, default: 0] += 1
        }
        // Testimonies per (witness, subject), decayed.
        struct Pair: Hashable { var witness: Int; var subject: Int }
        var said: [Pair: (s: Double, f: Double)] = [:]
        for t in evidence.testimonies where t.witness != t.subject {
            let pair = Pair(witness: id(t.witness), subject: id(t.subject))
            if pair.witness == me { continue }  // this peer's own receipts are direct experience
            var v = said[pair] ?? (0, 0)
            if t.outcome.isSuccess { v.s += decay(t.at) } else { v.f += decay(t.at) }
            said[pair] = v
        }
        for (k, v) in said { said[k] = (min(v.s, p.witnessCap), min(v.f, p.witnessCap)) }

        // Local trust rows: witness -> [(subject, weight)], normalised.
        let n = keys.count
        var rows: [[(Int, Double)]] = Array(repeating: [], count: n)
        for (pair, v) in said where v.s > v.f { rows[pair.witness].append((pair.subject, v.s - v.f)) }
        for (j, s) in directS where j != me {
            let net = p.directWeight * (s - (directF[j] ?? 0))
            if net > 0 { rows[me].append((j, net)) }
        }
        for i in 0..<n {
            rows[i].sort { $0.0 < $1.0 }  // first: float sums in a fixed order, whatever the dictionary's
            let total = rows[i].reduce(0) { $0 + $1.1 }
            rows[i] = total > 0 ? rows[i].map { ($0.0, $0.1 / total) } : []
        }
        // Pre-trusted distribution.
        let pre = Array(Set([me] + evidence.friends.map { index[$0]! })).sorted()
        var pVec = [Double](repeating: 0, count: n)
        for i in pre { pVec[i] = 1 / Double(pre.count) }
        var t = pVec
        for _ in 0..<p.iterations {
            var next = [Double](repeating: 0, count: n)
            var dangling = 0.0
            for i in 0..<n where t[i] > 0 {
                if rows[i].isEmpty { dangling += t[i]; continue }
                for (j, c) in rows[i] { next[j] += t[i] * c }
            }
            var delta = 0.0
            for i in 0..<n {
                let v = (1 - p.restart) * (next[i] + dangling * pVec[i]) + p.restart * pVec[i]
                delta += abs(v - t[i])
                next[i] = v
            }
            t = next
            if delta < 1e-10 { break }
        }

        // Witness weights: trust over the largest trust among witnesses (this peer excluded).
        let witnessIDs = Set(said.keys.map(\.witness))
        let maxTrust = witnessIDs.map { t[$0] }.max() ?? 0
        func weight(_ i: Int) -> Double { maxTrust > 0 ? t[i] / maxTrust : 0 }

        var hearsay: [Int: [(Int, Double, Double)]] = [:]
        for (pair, v) in said { hearsay[pair.subject, default: []].append((pair.witness, v.s, v.f)) }

        var out: [PublicKey: Score] = [:]
        for j in 0..<n where j != me {
            let ds = directS[j] ?? 0, df = directF[j] ?? 0
            var hs = 0.0, hf = 0.0
            var contributions: [Contribution] = []
            for (w, s, f) in (hearsay[j] ?? []).sorted(by: { $0.0 < $1.0 }) {
                let wt = weight(w)
                guard wt > 0 else { continue }
                hs += wt * s
                hf += wt * f
                contributions.append(Contribution(witness: Hex.encode(keys[w].bytes), weight: wt, successes: s, failures: f))
            }
            contributions.sort { ($0.weight, $1.witness) > ($1.weight, $0.witness) }
            let alpha = 1 + p.directWeight * ds + hs
            let beta = 1 + p.directWeight * df + hf
            out[keys[j]] = Score(peer: Hex.encode(keys[j].bytes), value: alpha / (alpha + beta), alpha: alpha, beta: beta,
                                 directSuccesses: ds, directFailures: df, directEvents: directN[j] ?? 0,
                                 hearsaySuccesses: hs, hearsayFailures: hf, trust: t[j], witnesses: Array(contributions.prefix(20)))
        }
        return out
    }

    /// The score of a peer with no evidence.
    public static func unknown(_ peer: PublicKey) -> Score {
        Score(peer: Hex.encode(peer.bytes), value: 0.5, alpha: 1, beta: 1, directSuccesses: 0, directFailures: 0, directEvents: 0,
              hearsaySuccesses: 0, hearsayFailures: 0, trust: 0, witnesses: [])
    }
}
