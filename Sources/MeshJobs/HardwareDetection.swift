import Foundation
import MeshCore

/// Parses `rocm-smi --showproductname --showmeminfo vram --showuniqueid --json` output: one
/// object per card (`card0`, `card1`, ...) whose values are strings. The name comes from
/// `Card series` (else `Card model`, else `Device Name`), the memory from `VRAM Total Memory (B)`;
/// key case does not matter. A card without a name or a memory figure is an error naming it.
public enum ROCmSMI {
    /// The arguments this code runs `rocm-smi` with.
    public static let arguments = ["--showproductname", "--showmeminfo", "vram", "--showuniqueid", "--json"]

    /// The GPUs in the JSON text.
    public static func parse(_ text: String) throws(DetectionError) -> [GPUInfo] {
        let top: JSONValue
        do { top = try JSONDecoder().decode(JSONValue.self, from: Data(text.utf8)) } catch {
            throw DetectionError(line: 0, "rocm-smi output is not JSON")
        }
        guard case .object(let cards) = top else { throw DetectionError(line: 0, "rocm-smi output is not a JSON object") }
        let names = cards.keys.filter { $0.lowercased().hasPrefix("card") && Int($0.dropFirst(4)) != nil }
            .sorted { Int($0.dropFirst(4))! < Int($1.dropFirst(4))! }
        var gpus: [GPUInfo] = []
        for card in names {
            guard case .object(let raw) = cards[card]! else { throw DetectionError(line: 0, "\(card) is not an object") }
            let fields = Dictionary(raw.map { ($0.key.lowercased(), $0.value.stringValue ?? "") }, uniquingKeysWith: { a, _ in a })
            func field(_ keys: String...) -> String? { keys.lazy.compactMap { fields[$0] }.first { !$0.isEmpty && $0 != "N/A" } }
            guard let name = field("card series", "card model", "device name") else { throw DetectionError(line: 0, "\(card) has no product name") }
            guard let bytes = field("vram total memory (b)").flatMap({ UInt64($0) }) else {
                throw DetectionError(line: 0, "\(card) has no 'VRAM Total Memory (B)' figure")
            }
            let total = Int(bytes / 1_048_576)
            let used = field("vram total used memory (b)").flatMap { UInt64($0) }.map { Int($0 / 1_048_576) }
            gpus.append(GPUInfo(index: Int(card.dropFirst(4))!, name: name, slug: GPUCatalogue.slug(for: name, memoryMiB: total), vendor: "amd",
                                uuid: field("unique id"), memoryTotalMiB: total, memoryFreeMiB: used.map { max(0, total - $0) },
                                computeCapability: nil, driverVersion: nil, source: .rocmSMI))
        }
        return gpus
    }
}

/// What this host's GPU detection found, and what it tried on the way.
public struct DetectedGPUs: Sendable {
    /// The GPUs (empty when none was found).
    public var gpus: [GPUInfo]
    /// One line per method tried and why it gave nothing ("nvml: NVML is not available (...)").
    public var attempts: [String]
}

/// Finds this host's GPUs: NVML first, then `nvidia-smi`, then `rocm-smi`. Declared GPUs (the
/// config's `[provider] gpus`) and simulated ones (`--simulate-gpus`) bypass it.
public enum GPUDetector {
    /// Runs the methods in order and returns the first that finds GPUs.
    public static func detect(nvmlLibrary: String = NVML.defaultLibrary, searchPath: String? = nil) -> DetectedGPUs {
        var attempts: [String] = []
        do {
            let gpus = try NVML.detect(library: nvmlLibrary)
            if !gpus.isEmpty { return DetectedGPUs(gpus: gpus, attempts: attempts) }
            attempts.append("nvml: no GPUs")
        } catch {
            attempts.append("nvml: \(error)")
        }
        for (tool, arguments, parse) in [("nvidia-smi", NvidiaSMI.arguments, NvidiaSMI.parse), ("rocm-smi", ROCmSMI.arguments, ROCmSMI.parse)]
            as [(String, [String], (String) throws(DetectionError) -> [GPUInfo])] {
            guard let program = find(tool, in: searchPath) else { attempts.append("\(tool): not installed"); continue }
            do {
                let output = try run(program, arguments)
                let gpus = try parse(output)
                if !gpus.isEmpty { return DetectedGPUs(gpus: gpus, attempts: attempts) }
                attempts.append("\(tool): no GPUs")
            } catch {
                attempts.append("\(tool): \(error)")
            }
        }
        return DetectedGPUs(gpus: [], attempts: attempts)
    }

    /// The full path of `program` on `PATH` (or `searchPath`, colon-separated), if executable.
    public static func find(_ program: String, in searchPath: String? = nil) -> String? {
        let path = searchPath ?? ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/\(program)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// Runs a detection tool and returns its standard output; killed after `timeout` (a wedged
    /// driver can make `nvidia-smi` hang).
    public static func run(_ program: String, _ arguments: [String], timeout: Duration = .seconds(15)) throws(DetectionError) -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: program)
        process.arguments = arguments
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        do { try process.run() } catch { throw DetectionError(line: 0, "cannot run \(program): \(error.localizedDescription)") }
        let killer = DispatchWorkItem { if process.isRunning { process.terminate() } }
        DispatchQueue.global().asyncAfter(deadline: .now() + .milliseconds(Int(timeout.components.seconds * 1000)), execute: killer)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        killer.cancel()
        guard process.terminationReason == .exit, process.terminationStatus == 0 else {
            throw DetectionError(line: 0, "\(program) failed (status \(process.terminationStatus))")
        }
        return String(decoding: data, as: UTF8.self)
    }
}
