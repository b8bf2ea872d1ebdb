import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshJobs
import MeshMarket
import MeshRuntime

/// Flags that shape what this host offers (shared by `node --provide` and `offer show`).
struct OfferOptions: ParsableArguments {
    @Option(name: .customLong("simulate-gpus"), help: ArgumentHelp("Offer simulated GPUs instead of detecting them, e.g. \"2x rtx-4090,1x a100-80gb\" or \"1x my-gpu:20GiB\".",
                               valueName: "spec"))
    var simulateGPUs: String?
    @Option(help: ArgumentHelp("Points per GPU-hour (overrides [provider] price).", valueName: "points")) var price: String?
    @Option(help: ArgumentHelp("Concurrent job slots (overrides [provider] slots).", valueName: "n")) var slots: Int?
    @Option(help: ArgumentHelp("Capability record lifetime in seconds (overrides [provider] record_lifetime_s).", valueName: "s"))
    var offerLifetime: Int?

    func validate() throws {
        if let price, Price(parsing: price) == nil { throw ValidationError("--price: '\(price)' is not a number of points such as 1.5 (at most three decimals)") }
        if let slots, !(1...255).contains(slots) { throw ValidationError("--slots must be 1 to 255") }
        if let offerLifetime, !(10...86_400).contains(offerLifetime) { throw ValidationError("--offer-lifetime must be 10 to 86400 seconds") }
        if let simulateGPUs {
            do { _ = try SimulatedGPUs.parse(simulateGPUs) } catch { throw ValidationError("--simulate-gpus: \(error)") }
        }
    }

    /// The `[provider]` terms with the flags applied.
    func terms(_ config: NodeConfig) -> ProviderConfig {
        var t = config.provider
        if let price { t.price = Price(parsing: price)! }
        if let slots { t.slots = slots }
        if let offerLifetime { t.recordLifetimeSeconds = offerLifetime }
        return t
    }

    /// This host's GPUs: simulated, else declared in the config, else detected. Throws, saying
    /// what was tried, when there are none.
    func gpus(_ config: NodeConfig) throws -> [GPUInfo] {
        if let simulateGPUs { return try SimulatedGPUs.parse(simulateGPUs) }
        if let declared = config.provider.gpus {
            do { return try SimulatedGPUs.parse(declared, source: .config) } catch { throw CLIError("[provider] gpus: \(error)") }
        }
        let found = GPUDetector.detect()
        guard !found.gpus.isEmpty else {
            throw CLIError("no GPUs found (\(found.attempts.joined(separator: "; "))); declare them with [provider] gpus in the config, or use --simulate-gpus")
        }
        return found.gpus
    }

    /// The capability this host offers, as `contact`.
    func capability(contact: Contact, config: NodeConfig, workDirectory: String) throws -> Capability {
        let offer = OfferBuilder.capability(contact: contact, gpus: try gpus(config), host: HostFacts.current(workDirectory: workDirectory),
                                            terms: terms(config), available: OfferBuilder.availableExecutors())
        if let problem = offer.problem { throw CLIError("this offer cannot be published: \(problem)") }
        return offer
    }
}

/// "2x rtx-4090, 1x a100-80gb".
func describeGPUs(_ gpus: [GPUGroup]) -> String {
    gpus.map { "\($0.count)x \($0.slug)" }.joined(separator: ", ")
}

/// Pads or cuts `s` to `width` columns.
func column(_ s: String, _ width: Int) -> String {
    s.count >= width ? String(s.prefix(width)) : s + String(repeating: " ", count: width - s.count)
}

extension GPUMesh {
    /// `gpumesh offer`: what this host would publish.
    struct Offer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the capability record this host would publish as a provider.",
            subcommands: [Show.self], defaultSubcommand: Show.self)

        /// `gpumesh offer show`.
        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Print the signed capability record `gpumesh node --provide` would publish, and its index keys.",
                discussion: "GPUs come from --simulate-gpus, else [provider] gpus in the config, else detection (NVML, nvidia-smi, rocm-smi).")

            @OptionGroup var common: CommonOptions
            @OptionGroup var offer: OfferOptions
            @Flag(help: "Print the record as JSON.") var json = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let dir = common.directory
                let config = try dir.loadConfig()
                let identity = try dir.loadIdentity()
                // The contact a node started with this config would advertise.
                let udp = config.advertise.first { $0.transport == .udp }?.address
                    ?? SocketAddress(ip: config.udpListen.ip.isUnspecified ? .loopbackV4 : config.udpListen.ip, port: config.udpListen.port)
                guard let contact = Contact.fromEndpoint(publicKey: identity.publicKey, udp: udp, tcpPort: config.tcpListen.port) else {
                    throw CLIError("cannot make a contact for \(udp)")
                }
                let capability = try offer.capability(contact: contact, config: config, workDirectory: dir.path)
                let lifetime = UInt64(offer.terms(config).recordLifetimeSeconds) * 1000
                let now = UInt64(Date().timeIntervalSince1970 * 1000)
                let record = try CapabilityRecord.sign(capability, sequence: now, expiresAt: now + lifetime, by: identity)
                let names = CapabilityIndex.keys(for: capability).map(\.description)
                let shard = CapabilityIndex.shard(of: identity.publicKey)
                if json {
                    var object = try JSONValue(encoding: OfferJSON(RankedOffer(record: record)))
                    if case .object(var o) = object {
                        o["index_keys"] = .array(names.map { .string($0) })
                        o["shard"] = .int(shard)
                        o["record_bytes"] = .int(record.encoded.count)
                        o.removeValue(forKey: "rtt_ms")
                        o.removeValue(forKey: "reputation")
                        object = .object(o)
                    }
                    try printJSONValue(object)
                    return
                }
                let c = capability
                print("provider   \(contact.peerID.hex)")
                print("contact    \(contact)")
                for g in c.gpus {
                    print("gpus       \(g.count)x \(g.slug) (\(g.vendor), \(ByteSize.describe(mib: g.vramMiB))\(g.computeCapability.map { ", cc \($0)" } ?? ""))")
                }
                print("cpu        \(c.cpuModel), \(c.cpuCores) cores")
                print("memory     \(ByteSize.describe(mib: c.ramMiB)); disk free \(ByteSize.describe(mib: c.diskFreeMiB))")
                print("executors  \(c.executors.isEmpty ? "none found (install bubblewrap, docker or podman)" : c.executors.map(\.rawValue).joined(separator: ", "))")
                print("price      \(c.price) points per GPU-hour")
                print("slots      \(c.freeSlots) free of \(c.totalSlots)")
                if !c.region.isEmpty { print("region     \(c.region)") }
                print("record     \(record.encoded.count) bytes, lives \(lifetime / 1000) s, republished every \(Int(Double(lifetime / 1000) * 0.4)) s")
                print("index      \(names.joined(separator: " ")) (shard \(shard) of \(CapabilityIndex.defaultShards))")
            }
        }
    }

    /// `gpumesh find`: search the mesh for GPUs.
    struct Find: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Find providers whose GPUs match, through the running node.",
            discussion: """
            Reads the most selective capability index in the DHT, verifies every record, filters exactly and ranks by
            reputation, then price, then measured round-trip time. Sizes accept GiB, MiB, GB (24GiB, 24576MiB, 80GB).
            Example: gpumesh find --gpu rtx-4090 --min-vram 24GiB --gpus 2 --max-price 1.5 --limit 10
            """)

        @OptionGroup var common: CommonOptions
        @Option(help: ArgumentHelp("GPU model: a slug (rtx-4090) or a name (\"RTX 4090\").", valueName: "model")) var gpu: String?
        @Option(help: ArgumentHelp("GPU vendor: nvidia, amd, ...", valueName: "vendor")) var vendor: String?
        @Option(help: ArgumentHelp("Least memory per GPU, e.g. 24GiB.", valueName: "size")) var minVram: String?
        @Option(help: ArgumentHelp("Least matching GPUs on one provider.", valueName: "n")) var gpus = 1
        @Option(help: ArgumentHelp("Least CUDA compute capability, e.g. 8.0.", valueName: "x.y")) var minCc: String?
        @Option(help: ArgumentHelp("Executor the provider must offer: sandbox, docker, podman.", valueName: "name")) var executor: String?
        @Option(help: ArgumentHelp("Highest price, points per GPU-hour.", valueName: "points")) var maxPrice: String?
        @Option(help: ArgumentHelp("Least reputation, 0 to 1 (peers with no history count as 0.5).", valueName: "r")) var minReputation: Double?
        @Option(help: ArgumentHelp("Most results.", valueName: "n")) var limit = 10
        @Flag(help: "Include providers with no free slot.") var includeBusy = false
        @Flag(help: "Do not ping the shortlisted providers (no RTT column).") var noRtt = false
        @Flag(help: "Print the result as JSON.") var json = false

        /// The query the flags describe; every error names its flag.
        func query() throws -> CapabilityQuery {
            var text = CapabilityQuery.Text()
            text.gpu = gpu; text.vendor = vendor; text.minVRAM = minVram; text.gpus = String(gpus); text.minCC = minCc
            text.executor = executor; text.maxPrice = maxPrice; text.minReputation = minReputation.map { "\($0)" }
            text.limit = String(limit); text.includeBusy = includeBusy
            do { return try CapabilityQuery(text: text) } catch { throw ValidationError("\(error)") }
        }

        func validate() throws { _ = try query() }

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            var params = try JSONValue(encoding: try query())
            if case .object(var o) = params {
                o["measure_rtt"] = .bool(!noRtt)
                params = .object(o)
            }
            let answer = try await callNode(common.directory, "market.find", params: params, timeout: .seconds(60))
            if json { try printJSONValue(answer); return }
            let result = try decodeAnswer(FindResultJSON.self, from: answer)
            let refused = result.refused.values.reduce(0, +)
            let read = "read \(result.plan.joined(separator: ",")) (\(result.shardsRead) shards, \(result.recordsFetched) record\(result.recordsFetched == 1 ? "" : "s")"
                + "\(refused > 0 ? ", \(refused) refused" : "")\(result.shardsFailed > 0 ? ", \(result.shardsFailed) shards unreachable" : "")) in \(String(format: "%.0f", result.latencyMilliseconds)) ms"
            guard !result.offers.isEmpty else {
                print("no provider matches; \(read)")
                return
            }
            let summary = "\(result.matched) provider\(result.matched == 1 ? "" : "s") matched, \(result.offers.count) shown; \(read)"
            print(column("PEER", 14) + column("GPUS", 28) + column("VRAM", 10) + column("PRICE", 8) + column("SLOTS", 7) + column("RTT", 9) + "REPUTATION")
            for o in result.offers {
                let vram = o.gpus.map { ByteSize.describe(mib: $0.vramMiB) }.joined(separator: "/")
                let rtt = o.rttMilliseconds.map { String(format: "%.1f ms", $0) } ?? (noRtt ? "-" : "no answer")
                let rep = o.reputation.map { String(format: "%.2f", $0) } ?? "new"
                print(column(String(o.peerID.prefix(12)), 14) + column(describeGPUs(o.gpus), 28) + column(vram, 10) + column("\(o.price)", 8)
                      + column("\(o.freeSlots)/\(o.totalSlots)", 7) + column(rtt, 9) + rep)
            }
            print(summary)
        }
    }
}
