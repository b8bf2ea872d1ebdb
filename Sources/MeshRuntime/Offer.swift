import Foundation
import MeshCore
import MeshJobs
import MeshMarket

/// Turns what this host has (detected, declared or simulated GPUs; CPU, memory, disk) and the
/// provider's terms into the capability it publishes.
public enum OfferBuilder {
    /// The memory a renter reasons in: the catalogue's size when the model is known and the
    /// driver's figure is within 10% of it (a 24 GiB card reports 24,564 MiB), else the figure
    /// reported.
    public static func nominalVRAMMiB(_ gpu: GPUInfo) -> Int {
        guard let model = GPUCatalogue.model(gpu.slug) else { return gpu.memoryTotalMiB }
        let catalogue = Int(model.vramGiB * 1024)
        return abs(catalogue - gpu.memoryTotalMiB) <= catalogue / 10 ? catalogue : gpu.memoryTotalMiB
    }

    /// GPUs grouped by vendor, model, memory and compute capability, in first-seen order.
    public static func groups(_ gpus: [GPUInfo]) -> [GPUGroup] {
        var out: [GPUGroup] = []
        for gpu in gpus {
            let vendor = GPUCatalogue.model(gpu.slug)?.vendor ?? sanitised(gpu.vendor, max: Capability.maxVendorBytes, fallback: "unknown")
            let group = GPUGroup(vendor: vendor, slug: sanitised(gpu.slug, max: Capability.maxSlugBytes, fallback: "unknown"),
                                 vramMiB: nominalVRAMMiB(gpu), count: 1,
                                 computeCapability: gpu.computeCapability.flatMap(ComputeCapability.init(parsing:)))
            if let i = out.firstIndex(where: { $0.vendor == group.vendor && $0.slug == group.slug && $0.vramMiB == group.vramMiB
                && $0.computeCapability == group.computeCapability && $0.count < Capability.maxGPUsPerGroup }) {
                out[i].count += 1
            } else {
                out.append(group)
            }
        }
        return out
    }

    /// A slug-safe form of a name: lowercase, characters outside `a-z0-9-` dropped, cut to `max`.
    static func sanitised(_ s: String, max: Int, fallback: String) -> String {
        let kept = String(String.UnicodeScalarView(s.lowercased().unicodeScalars.filter { ($0 >= "a" && $0 <= "z") || ($0 >= "0" && $0 <= "9") || $0 == "-" }))
        let cut = String(kept.prefix(max))
        return cut.isEmpty ? fallback : cut
    }

    /// The capability `contact` offers: its GPUs, the host's facts and the `[provider]` terms;
    /// every slot free. Executors are the configured ones, or `available` when none is configured.
    public static func capability(contact: Contact, gpus: [GPUInfo], host: HostFacts, terms: ProviderConfig,
                                  available: [Executor]) -> Capability {
        var cpu = host.cpuModel
        while cpu.utf8.count > Capability.maxCPUModelBytes { cpu.removeLast() }
        return Capability(contact: contact, gpus: groups(gpus), cpuModel: cpu, cpuCores: host.cpuCores, ramMiB: host.ramMiB,
                          diskFreeMiB: host.diskFreeMiB, executors: terms.executors.isEmpty ? available : terms.executors,
                          price: terms.price, freeSlots: terms.slots, totalSlots: terms.slots, region: terms.region)
    }

    /// The executors that work on this host: the sandbox if its tools are on `PATH` and a probe
    /// job runs (user namespaces may be disabled), docker or podman if `<runtime> info` answers
    /// within 10 s (the program alone may have no daemon behind it).
    public static func availableExecutors(path: String? = nil) -> [Executor] {
        var out: [Executor] = []
        if case .success(let tools) = Sandbox.Tools.find(path: path),
           case .success = Sandbox.probe(tools: tools) {
            out.append(.sandbox)
        }
        for (executor, program) in [(Executor.docker, "docker"), (.podman, "podman")] {
            if let found = GPUDetector.find(program, in: path), (try? GPUDetector.run(found, ["info"], timeout: .seconds(10))) != nil {
                out.append(executor)
            }
        }
        return out
    }
}

extension CapabilityQuery {
    /// A query as people write it: each field as text, nil when not given. The `find` command's
    /// flags and the explorer's capacity filter both read one.
    public struct Text: Sendable, Equatable {
        /// GPU model: a slug (rtx-4090) or a catalogue name ("RTX 4090").
        public var gpu: String?
        /// GPU vendor.
        public var vendor: String?
        /// Least memory per GPU, a size such as 24GiB.
        public var minVRAM: String?
        /// Least matching GPUs on one provider.
        public var gpus: String?
        /// Least CUDA compute capability, such as 8.0.
        public var minCC: String?
        /// Executor the provider must offer.
        public var executor: String?
        /// Highest price, points per GPU-hour.
        public var maxPrice: String?
        /// Least reputation, 0 to 1.
        public var minReputation: String?
        /// Most results.
        public var limit: String?
        /// Include providers with no free slot.
        public var includeBusy = false

        /// An empty query text (every field not given).
        public init() {}
    }

    /// Parses and validates `text`; a problem names the field (`--min-vram`, ...) and says what
    /// was wrong with its value.
    public init(text: Text, defaultLimit: Int = 10) throws(Problem) {
        self.init(limit: defaultLimit, includeBusy: text.includeBusy)
        if let g = text.gpus {
            guard let n = Int(g) else { throw Problem("--gpus", "'\(g)' is not a whole number") }
            gpus = n
        }
        if let l = text.limit {
            guard let n = Int(l) else { throw Problem("--limit", "'\(l)' is not a whole number") }
            limit = n
        }
        if let r = text.minReputation {
            guard let v = Double(r), v.isFinite else { throw Problem("--min-reputation", "'\(r)' is not a number from 0 to 1") }
            minReputation = v
        }
        if let gpu = text.gpu {
            let slug = GPUCatalogue.slug(for: gpu)
            guard slug != "unknown" else { throw Problem("--gpu", "'\(gpu)' names no model") }
            model = slug
        }
        if let v = text.vendor { vendor = v.lowercased() }
        if let size = text.minVRAM {
            guard let bytes = ByteSize.parse(size), bytes <= UInt64(Int.max) - 1_048_575 else {
                throw Problem("--min-vram", "'\(size)' is not a size such as 24GiB, 24576MiB or 80GB")
            }
            minVRAMMiB = Int((bytes + 1_048_575) / 1_048_576)
        }
        if let cc = text.minCC {
            guard let v = ComputeCapability(parsing: cc) else { throw Problem("--min-cc", "'\(cc)' is not a compute capability such as 8.0") }
            minComputeCapability = v
        }
        if let e = text.executor {
            guard let v = Executor(rawValue: e) else {
                throw Problem("--executor", "'\(e)' is not one of \(Executor.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            executor = v
        }
        if let p = text.maxPrice {
            guard let v = Price(parsing: p) else { throw Problem("--max-price", "'\(p)' is not a number of points such as 1.5") }
            maxPrice = v
        }
        try validate { slug in GPUCatalogue.model(slug).map { (vendor: $0.vendor, vramMiB: Int($0.vramGiB * 1024)) } }
    }
}

extension ByteSize {
    /// A size in MiB for people: whole GiB as `24 GiB`, other sizes of a GiB or more as
    /// `23.9 GiB`, smaller ones as `512 MiB` (the CLI's tables and the explorer's pages).
    public static func describe(mib: Int) -> String {
        if mib % 1024 == 0 { return "\(mib / 1024) GiB" }
        if mib >= 1024 { return String(format: "%.1f GiB", Double(mib) / 1024) }
        return "\(mib) MiB"
    }
}
