import MeshCore
import Foundation
import MeshCrypto

/// What a provider accepts (the `[provider]` job policy plus what its host has), as a pure
/// check of a request: a request outside it is declined with its reason before anything runs.
public struct ProviderPolicy: Sendable, Equatable {
    /// Price per GPU-hour: the quote's price and the floor a renter's maximum must reach.
    public var price: Price
    /// Executors that work on this host and are offered.
    public var executors: [Executor]
    /// Container images allowed (exact, or a prefix ending in `*`).
    public var images: [String]
    /// Longest time limit accepted, seconds.
    public var maxDurationSeconds: Int
    /// Most input bytes per job.
    public var maxInputBytes: UInt64
    /// Most output bytes per job.
    public var maxOutputBytes: UInt64
    /// Most memory per job, MiB.
    public var maxMemoryMiB: Int
    /// Renters allowed, by peer ID; empty: anyone.
    public var allowRenters: Set<PeerID>
    /// The host's GPUs.
    public var gpus: [GPUGroup]
    /// The host's CPU cores.
    public var cpuCores: Int
    /// Free disk for work directories, MiB.
    public var diskFreeMiB: Int
    /// Least renter reputation (0 to 1) accepted; 0: no floor.
    public var minRenterReputation = 0.0
    /// This provider's view of the requesting renter's reputation (nil: no history, counted as
    /// `Ranking.unknownReputation`).
    public var renterReputation: Double?

    /// A policy.
    public init(price: Price, executors: [Executor], images: [String] = [], maxDurationSeconds: Int = 3_600,
                maxInputBytes: UInt64 = 4 << 30, maxOutputBytes: UInt64 = 4 << 30, maxMemoryMiB: Int, allowRenters: Set<PeerID> = [],
                gpus: [GPUGroup], cpuCores: Int, diskFreeMiB: Int) {
        self.price = price
        self.executors = executors
        self.images = images
        self.maxDurationSeconds = maxDurationSeconds
        self.maxInputBytes = maxInputBytes
        self.maxOutputBytes = maxOutputBytes
        self.maxMemoryMiB = maxMemoryMiB
        self.allowRenters = allowRenters
        self.gpus = gpus
        self.cpuCores = cpuCores
        self.diskFreeMiB = diskFreeMiB
    }

    /// True if `image` is on the list (exactly, or under a `prefix*` entry).
    public func allows(image: String) -> Bool {
        images.contains { entry in
            entry.hasSuffix("*") ? image.hasPrefix(entry.dropLast()) : entry == image
        }
    }

    /// Why the request would be declined, or nil if it is within policy. Checked in order: who
    /// asks, the executor and image, the price, the resources, the limits, then a free slot.
    public func evaluate(_ spec: JobSpec, inputBytes: UInt64, renter: PublicKey, freeSlots: Int) -> (reason: Negotiation.Reason, note: String)? {
        if !allowRenters.isEmpty, !allowRenters.contains(PeerID(publicKey: renter)) { return (.notAllowed, "this provider runs jobs only for the renters it lists") }
        if minRenterReputation > 0 {
            let r = renterReputation ?? Ranking.unknownReputation
            if r < minRenterReputation {
                return (.notAllowed, String(format: "this provider asks renters for a reputation of at least %.2f; yours here is %.2f", minRenterReputation, r))
            }
        }
        if executors.isEmpty { return (.executor, "this peer does not run jobs (it provides no executor)") }
        guard executors.contains(spec.executor) else {
            return (.executor, "executor \(spec.executor.rawValue) is not offered here (offered: \(executors.map(\.rawValue).joined(separator: ", ")))")
        }
        if spec.executor != .sandbox {
            guard let image = spec.image, allows(image: image) else { return (.image, "image \(spec.image ?? "(none)") is not allowed here") }
        }
        if let max = spec.maxPrice, max < price { return (.price, "the price here is \(price) points per GPU-hour, above the maximum of \(max)") }
        let r = spec.resources
        if r.gpus > 0 {
            let matching = gpus.filter { g in
                (r.gpuModel.map { $0 == g.slug } ?? true) && g.vramMiB >= r.minVRAMMiB
            }
            let count = matching.reduce(0) { $0 + $1.count }
            guard count >= r.gpus else {
                let want = "\(r.gpus) GPU\(r.gpus == 1 ? "" : "s")" + (r.gpuModel.map { " \($0)" } ?? "") + (r.minVRAMMiB > 0 ? " with \(r.minVRAMMiB) MiB" : "")
                return (.resources, "asked for \(want); \(count) here match")
            }
        }
        if r.cpuCores > cpuCores { return (.resources, "asked for \(r.cpuCores) CPU cores; this host has \(cpuCores)") }
        if r.memoryMiB > maxMemoryMiB { return (.resources, "asked for \(r.memoryMiB) MiB of memory; at most \(maxMemoryMiB) MiB here") }
        if r.timeLimitSeconds > maxDurationSeconds { return (.limits, "time limit \(r.timeLimitSeconds) s is over the \(maxDurationSeconds) s accepted here") }
        if inputBytes > maxInputBytes { return (.limits, "inputs of \(inputBytes) bytes are over the \(maxInputBytes) accepted here") }
        if r.diskMiB > diskFreeMiB { return (.resources, "asked for \(r.diskMiB) MiB of disk; \(diskFreeMiB) MiB free here") }
        if freeSlots <= 0 { return (.busy, "every job slot is taken; try again later") }
        return nil
    }
}
