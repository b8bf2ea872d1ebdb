import MeshCore
import MeshCrypto
import MeshJobs
import MeshMarket

/// Reward points: a pure function of the receipts a peer holds, in integers, so two peers
/// holding the same receipts compute the same points whatever order they heard them in.
///
/// - An epoch is one UTC day of the receipt's `startedAt` (`epoch = startedAt / 86,400,000`).
/// - A provider earns, per receipt, `gpuMilliseconds × weight / 3,600` millipoints (rounded
///   down), where `weight` is the GPU model's performance class: the larger of its FP32 and FP16
///   (dense tensor) TFLOPS in the GPU catalogue, rounded, at least 1; a model the catalogue does
///   not know weighs 1. So one GPU-hour on an RTX 4090 earns 330 points, on an H100 989.
/// - A renter spends the receipt's `charge` (millipoints: price × GPU time, as both signed).
public enum Rewards {
    /// Milliseconds in an epoch (one day).
    public static let epochMilliseconds: UInt64 = 86_400_000

    /// The epoch a time (Unix ms) falls in.
    public static func epoch(of milliseconds: UInt64) -> UInt64 { milliseconds / epochMilliseconds }

    /// Points per GPU-hour for a GPU model slug.
    public static func weight(gpuModel slug: String) -> UInt64 {
        guard let m = GPUCatalogue.model(slug) else { return 1 }
        return UInt64(max(1, max(m.fp32TFLOPS, m.fp16TFLOPS).rounded()))
    }

    /// Millipoints a provider earns for one receipt.
    public static func earned(gpuMilliseconds: UInt64, gpuModel: String) -> UInt64 {
        let (product, overflow) = gpuMilliseconds.multipliedReportingOverflow(by: weight(gpuModel: gpuModel))
        return overflow ? UInt64.max / 3_600 : product / 3_600
    }

    /// One peer's figures in one epoch.
    public struct Entry: Sendable, Equatable, Codable {
        /// The peer (hex of its public key).
        public var peer: String
        /// The epoch.
        public var epoch: UInt64
        /// Millipoints earned as a provider.
        public var earnedMillipoints: UInt64 = 0
        /// Millipoints spent as a renter.
        public var spentMillipoints: UInt64 = 0
        /// GPU milliseconds provided.
        public var gpuMilliseconds: UInt64 = 0
        /// Receipts as provider.
        public var jobsProvided: Int = 0
        /// Receipts as renter.
        public var jobsRented: Int = 0

        enum CodingKeys: String, CodingKey {
            case peer, epoch, earnedMillipoints = "earned_millipoints", spentMillipoints = "spent_millipoints"
            case gpuMilliseconds = "gpu_ms", jobsProvided = "jobs_provided", jobsRented = "jobs_rented"
        }
    }

    /// What rewards need of a receipt.
    public struct Facts: Sendable, Equatable {
        /// The provider's key.
        public var provider: PublicKey
        /// The renter's key.
        public var renter: PublicKey
        /// The GPU model slug.
        public var gpuModel: String
        /// GPU milliseconds.
        public var gpuMilliseconds: UInt64
        /// The charge (millipoints).
        public var charge: UInt64
        /// When the job started (Unix ms).
        public var startedAt: UInt64

        /// The facts of a receipt.
        public init(_ r: Negotiation.Receipt) {
            self.init(provider: r.provider, renter: r.renter, gpuModel: r.gpuModel, gpuMilliseconds: r.gpuMilliseconds, charge: r.charge, startedAt: r.startedAt)
        }

        /// Facts given one by one.
        public init(provider: PublicKey, renter: PublicKey, gpuModel: String, gpuMilliseconds: UInt64, charge: UInt64, startedAt: UInt64) {
            self.provider = provider
            self.renter = renter
            self.gpuModel = gpuModel
            self.gpuMilliseconds = gpuMilliseconds
            self.charge = charge
            self.startedAt = startedAt
        }
    }

    /// Every peer's entry in every epoch (or only `epoch`), sorted by epoch, then points earned
    /// (most first), then peer. Sums saturate instead of overflowing.
    public static func compute(_ receipts: some Sequence<Facts>, epoch only: UInt64? = nil) -> [Entry] {
        var tally = Tally()
        tally.add(receipts, epoch: only)
        return tally.entries()
    }

    /// Running sums per epoch and peer: receipts can be added in any order and any number of
    /// batches, and the entries are the same as `compute` over all of them.
    public struct Tally: Sendable {
        private var table: [UInt64: [PublicKey: Entry]] = [:]

        /// An empty tally.
        public init() {}

        /// Adds receipts (only those of `epoch`, when given).
        public mutating func add(_ receipts: some Sequence<Facts>, epoch only: UInt64? = nil) {
            for r in receipts {
                let e = Rewards.epoch(of: r.startedAt)
                if let only, e != only { continue }
                table[e, default: [:]][r.provider, default: Entry(peer: Hex.encode(r.provider.bytes), epoch: e)].add(provided: r)
                table[e, default: [:]][r.renter, default: Entry(peer: Hex.encode(r.renter.bytes), epoch: e)].add(rented: r)
            }
        }

        /// The epochs with receipts, oldest first.
        public var epochs: [UInt64] { table.keys.sorted() }

        /// Every entry (or those of `epoch`), sorted as `compute` sorts them.
        public func entries(epoch only: UInt64? = nil) -> [Entry] {
            (only.map { [$0] } ?? epochs).flatMap { e in
                (table[e] ?? [:]).values.sorted { ($0.earnedMillipoints, $1.peer) > ($1.earnedMillipoints, $0.peer) }
            }
        }

        /// `peer`'s entries, oldest epoch first.
        public func entries(peer: PublicKey) -> [Entry] {
            epochs.compactMap { table[$0]?[peer] }
        }
    }
}

extension Rewards.Entry {
    mutating func add(provided r: Rewards.Facts) {
        earnedMillipoints = earnedMillipoints.addingSaturating(Rewards.earned(gpuMilliseconds: r.gpuMilliseconds, gpuModel: r.gpuModel))
        gpuMilliseconds = gpuMilliseconds.addingSaturating(r.gpuMilliseconds)
        jobsProvided += 1
    }

    mutating func add(rented r: Rewards.Facts) {
        spentMillipoints = spentMillipoints.addingSaturating(r.charge)
        jobsRented += 1
    }
}

extension UInt64 {
    func addingSaturating(_ x: UInt64) -> UInt64 {
        let (s, o) = addingReportingOverflow(x)
        return o ? .max : s
    }
}
