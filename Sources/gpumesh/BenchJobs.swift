import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshJobs
import MeshMarket
import MeshRuntime

extension GPUMesh {
    /// `gpumesh bench jobs`: the whole deal on loopback, and its parts.
    struct JobsBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "jobs",
            abstract: "Run jobs between two nodes on loopback: round trips, sandbox start, input transfer vs the raw channel.",
            discussion: """
            A provider (simulated GPU, sandbox executor) and a renter run on separate loops in this process.
            roundtrip: find + negotiate + run `true` in the sandbox + co-signed receipt, one job at a time.
            sandbox_start: `true` in the same sandbox, started directly (spawn to exit).
            transfer: jobs whose input is --input-mib of data, from the accept to the provider's `started`,
            against a plain channel between two loops measured in the same run. The first transfer is
            reported on its own (transfer_first_mb_per_s): on a fresh machine or VM its page-cache writes
            land on memory never touched before, which costs more than the steady state, where the
            page cache recycles pages; transfer_mb_per_s is the median of --transfers after it.
            """)

        @Option(help: ArgumentHelp("Round-trip jobs.", valueName: "n")) var jobs = 30
        @Option(help: ArgumentHelp("Input size for the transfer measurement, MiB (0: skip).", valueName: "mib")) var inputMib = 256
        @Option(help: ArgumentHelp("Transfers measured after the first.", valueName: "n")) var transfers = 3
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard (1...1000).contains(jobs) else { throw ValidationError("--jobs must be 1 to 1000") }
            guard (0...4096).contains(inputMib) else { throw ValidationError("--input-mib must be 0 to 4096") }
            guard (1...20).contains(transfers) else { throw ValidationError("--transfers must be 1 to 20") }
        }

        func run() async throws {
            bootstrapLogging("error")
            guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else {
                throw CLIError("the sandbox does not work on this host (bubblewrap, prlimit and user namespaces are needed)")
            }
            let scratch = NSTemporaryDirectory() + "gpumesh-bench-jobs-" + Hex.encode(SecureRandom.bytes(4))
            try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: scratch) }

            // Sandbox start alone.
            var starts: [Double] = []
            for i in 0..<max(10, jobs) {
                benchProgress("sandbox start \(i + 1)", json: json)
                starts.append(try Self.sandboxStart(tools: tools, scratch: scratch))
            }

            let providerLoop = try EventLoop(name: "bench-provider")
            defer { providerLoop.shutdown() }
            let renterLoop = try EventLoop(name: "bench-renter")
            defer { renterLoop.shutdown() }
            func options(_ bootstrap: [Contact]) -> MeshNode.Options {
                var o = loopbackNodeOptions(bootstrap)
                o.config.provider.maxInputMiB = max(inputMib, 1) * 2
                return o
            }
            let provider = try await MeshNode.start(on: providerLoop, options: options([]))
            let renter = try await MeshNode.start(on: renterLoop, options: options([provider.contact]))
            defer { Task { await renter.stop(); await provider.stop() } }
            try await provideSimulated(provider, gpus: "1x rtx-4090", slots: 1, cpuModel: "bench")

            let spec = try JobSpec(name: "true", command: ["true"], resources: { var r = JobSpec.Resources(); r.gpus = 1; return r }())
            var roundTrips: [Double] = []
            for i in 0..<jobs + 2 {
                benchProgress("round trip \(i + 1)/\(jobs + 2)", json: json)
                let start = EventLoop.monotonicNanoseconds()
                _ = try await renter.runJob(JobRequest(spec: spec, inputPaths: [], outputRoot: scratch + "/out"))
                // The first two warm caches (DHT routes, channel paths) and are not counted.
                if i >= 2 { roundTrips.append(Double(EventLoop.monotonicNanoseconds() - start) / 1e6) }
            }

            var transfer: Double?
            var firstTransfer: Double?
            var channel: Double?
            if inputMib > 0 {
                benchProgress("writing a \(inputMib) MiB input", json: json)
                let path = scratch + "/input.bin"
                try Self.writeInput(path, mib: inputMib)
                let big = try JobSpec(name: "transfer", command: ["true"], inputs: ["input.bin"],
                                      resources: { var r = JobSpec.Resources(); r.gpus = 1; r.diskMiB = inputMib + 64; return r }())
                var rates: [Double] = []
                for i in 0...transfers {
                    benchProgress("sending \(inputMib) MiB (\(i + 1)/\(transfers + 1))", json: json)
                    let info = try await renter.runJob(JobRequest(spec: big, inputPaths: [path], outputRoot: scratch + "/out", provider: provider.contact))
                    guard let s = info.inputSeconds, s > 0 else { throw CLIError("the transfer job reported no input time") }
                    rates.append(Double(info.inputBytes) / s / 1e6)
                }
                firstTransfer = rates[0]
                transfer = percentile(Array(rates.dropFirst()), 0.5)
                benchProgress("raw channel", json: json)
                channel = try await TransportBench.channelThroughput(seconds: 2)
            }
            benchProgress("", json: json)

            let p50 = percentile(roundTrips, 0.5) ?? 0
            let p99 = percentile(roundTrips, 0.99) ?? 0
            let start50 = percentile(starts, 0.5) ?? 0
            func r1(_ x: Double) -> Double { (x * 10).rounded() / 10 }
            var result: [String: JSONValue] = [
                "jobs": .int(roundTrips.count),
                "roundtrip_ms_p50": .double(r1(p50)),
                "roundtrip_ms_p99": .double(r1(p99)),
                "sandbox_start_ms_p50": .double(r1(start50)),
                "roundtrip_minus_sandbox_ms": .double(r1(p50 - start50)),
                "input_mib": .int(inputMib),
            ]
            if let transfer, let firstTransfer, let channel {
                result["transfer_mb_per_s"] = .double(r1(transfer))
                result["transfer_first_mb_per_s"] = .double(r1(firstTransfer))
                result["channel_mb_per_s"] = .double(r1(channel))
                result["transfer_to_channel_ratio"] = .double((transfer / channel * 1000).rounded() / 1000)
            }
            if json { try GPUMesh.printBenchJSON(result); return }
            print(String(format: "round trip (find + negotiate + sandboxed true + receipt)  p50 %.1f ms  p99 %.1f ms  (%d jobs)", p50, p99, roundTrips.count))
            print(String(format: "sandbox start (true, spawn to exit)                      p50 %.1f ms", start50))
            print(String(format: "round trip minus sandbox start                           %.1f ms  (goal <= 50)", p50 - start50))
            if let transfer, let firstTransfer, let channel {
                print(String(format: "input transfer (%d MiB, median of %d)                     %.1f MB/s  (first: %.1f MB/s)", inputMib, transfers, transfer, firstTransfer))
                print(String(format: "raw channel (same run)                                   %.1f MB/s  (ratio %.2f, goal >= 0.5)", channel, transfer / channel))
            }
        }

        /// Milliseconds from spawning `true` in a sandbox to its exit.
        static func sandboxStart(tools: Sandbox.Tools, scratch: String) throws -> Double {
            let dir = scratch + "/start-" + Hex.encode(SecureRandom.bytes(4))
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let argv = try Sandbox.commandLine(["true"], policy: SandboxPolicy(workDirectory: dir, timeLimitSeconds: 10), tools: tools)
            let done = DispatchSemaphore(value: 0)
            let start = EventLoop.monotonicNanoseconds()
            _ = try JobProcess.start(argv, timeLimitSeconds: 10, onOutput: { _, _ in }, onExit: { _ in done.signal() })
            done.wait()
            return Double(EventLoop.monotonicNanoseconds() - start) / 1e6
        }

        /// Writes `mib` MiB of incompressible bytes.
        static func writeInput(_ path: String, mib: Int) throws {
            guard FileManager.default.createFile(atPath: path, contents: nil), let handle = FileHandle(forWritingAtPath: path) else {
                throw CLIError("cannot write \(path)")
            }
            defer { try? handle.close() }
            var rng = SplitMix64(seed: 1)
            var block = [UInt8](repeating: 0, count: 1 << 20)
            for _ in 0..<mib {
                block.withUnsafeMutableBytes { raw in
                    let words = raw.bindMemory(to: UInt64.self)
                    for i in words.indices { words[i] = rng.next() }
                }
                try handle.write(contentsOf: block)
            }
        }
    }
}
