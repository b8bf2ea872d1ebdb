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
