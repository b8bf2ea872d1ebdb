import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// One GPU as this host sees it.
public struct GPUInfo: Sendable, Equatable, Codable {
    /// Where the facts came from.
    public enum Source: String, Sendable, Codable {
        /// NVIDIA's management library.
        case nvml
        /// `nvidia-smi --query-gpu` output.
        case nvidiaSMI = "nvidia-smi"
        /// `rocm-smi` output.
        case rocmSMI = "rocm-smi"
        /// Declared in the config file.
        case config
        /// Simulated (`--simulate-gpus`), for testnets.
        case simulated
    }

    /// The driver's index.
    public var index: Int
    /// The model name as reported ("NVIDIA GeForce RTX 4090").
    public var name: String
    /// The normalised model (`rtx-4090`), see `GPUCatalogue.slug(for:memoryMiB:)`.
    public var slug: String
    /// `nvidia`, `amd`, ...
    public var vendor: String
    /// The GPU's UUID, when reported.
    public var uuid: String?
    /// Total memory, MiB.
    public var memoryTotalMiB: Int
    /// Free memory, MiB, when reported.
    public var memoryFreeMiB: Int?
    /// Compute capability ("8.9"), NVIDIA only.
    public var computeCapability: String?
    /// Driver version, when reported.
    public var driverVersion: String?
    /// The CUDA version the driver supports ("12.4"), when reported (NVML).
    public var cudaVersion: String?
    /// Where these facts came from.
    public var source: Source

    /// A GPU from its facts.
    public init(index: Int, name: String, slug: String, vendor: String, uuid: String?, memoryTotalMiB: Int, memoryFreeMiB: Int?,
                computeCapability: String?, driverVersion: String?, cudaVersion: String? = nil, source: Source) {
        self.index = index
        self.name = name
        self.slug = slug
        self.vendor = vendor
        self.uuid = uuid
        self.memoryTotalMiB = memoryTotalMiB
        self.memoryFreeMiB = memoryFreeMiB
        self.computeCapability = computeCapability
        self.driverVersion = driverVersion
        self.cudaVersion = cudaVersion
        self.source = source
    }

    enum CodingKeys: String, CodingKey {
        case index, name, slug, vendor, uuid, memoryTotalMiB = "memory_total_mib", memoryFreeMiB = "memory_free_mib"
        case computeCapability = "compute_capability", driverVersion = "driver_version", cudaVersion = "cuda_version", source
    }
}

/// A detection output that could not be read, naming the line and the problem.
public struct DetectionError: Error, Equatable, CustomStringConvertible {
    /// 1-based line number (0: the whole input).
    public var line: Int
    /// What is wrong.
    public var message: String
    /// Makes an error.
    public init(line: Int, _ message: String) { self.line = line; self.message = message }
    /// "line N: message".
    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

/// Parses `nvidia-smi --query-gpu=... --format=csv` output.
public enum NvidiaSMI {
    /// The arguments this code runs `nvidia-smi` with.
    public static let arguments = ["--query-gpu=index,name,uuid,memory.total,memory.free,compute_cap,driver_version", "--format=csv"]

    /// Parses the CSV (with its header; units in values or not; any spacing). Columns are found
    /// by their header names, so extra or reordered columns are fine; `name` and `memory.total`
    /// are required. Values such as `[N/A]` or `[Not Supported]` count as absent.
    public static func parse(_ text: String) throws(DetectionError) -> [GPUInfo] {
        // Split on any line break: in Swift "\r\n" is one Character, not "\r" then "\n".
        let lines = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated()
            .map { (number: $0.offset + 1, text: $0.element.trimmedString) }
            .filter { !$0.text.isEmpty }
        guard let header = lines.first else { throw DetectionError(line: 0, "empty output") }
        let columns = header.text.split(separator: ",").map { column in
            // "memory.total [MiB]" -> "memory.total"
            String(column.split(separator: "[").first ?? "").trimmedString.lowercased()
        }
        func column(_ name: String) -> Int? { columns.firstIndex(of: name) }
        guard let nameAt = column("name"), let totalAt = column("memory.total") else {
            throw DetectionError(line: header.number, "the header has no 'name' and 'memory.total' columns: \(header.text)")
        }
        var gpus: [GPUInfo] = []
        for row in lines.dropFirst() {
            let fields = row.text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmedString }
            guard fields.count == columns.count else {
                throw DetectionError(line: row.number, "\(fields.count) fields where the header has \(columns.count)")
            }
            func value(_ at: Int?) -> String? {
                guard let at, !fields[at].isEmpty, !fields[at].hasPrefix("[") else { return nil }
                return fields[at]
            }
            guard let name = value(nameAt) else { throw DetectionError(line: row.number, "no GPU name") }
            guard let total = value(totalAt).flatMap(mebibytes) else {
                throw DetectionError(line: row.number, "memory.total '\(fields[totalAt])' is not a size in MiB")
            }
            let free = value(column("memory.free")).flatMap(mebibytes)
            let index = value(column("index")).flatMap { Int($0) } ?? gpus.count
            gpus.append(GPUInfo(index: index, name: name, slug: GPUCatalogue.slug(for: name, memoryMiB: total), vendor: "nvidia",
                                uuid: value(column("uuid")), memoryTotalMiB: total, memoryFreeMiB: free,
                                computeCapability: value(column("compute_cap")), driverVersion: value(column("driver_version")),
                                source: .nvidiaSMI))
        }
        return gpus
    }

    /// "24564 MiB" or "24564" -> 24564.
    static func mebibytes(_ text: String) -> Int? {
        let number = text.hasSuffix("MiB") ? String(text.dropLast(3)).trimmedString : text
        return Int(number)
    }
}

/// Parses `--simulate-gpus` specs: `"2x rtx-4090,1x a100-80gb"` (a count and `x` may be left
/// out for one GPU). Known models take their memory from the catalogue; unknown ones need a
/// size, as in `1x my-gpu:24GiB`.
public enum SimulatedGPUs {
    /// The GPUs the spec describes, indexed from 0, marked as coming from `source` (`.simulated`
    /// for `--simulate-gpus`, `.config` for GPUs declared in the config file).
    public static func parse(_ spec: String, source: GPUInfo.Source = .simulated) throws(DetectionError) -> [GPUInfo] {
        var out: [GPUInfo] = []
        for part in spec.split(separator: ",").map({ $0.trimmedString }) where !part.isEmpty {
            var count = 1
            var model = Substring(part)
            if let x = part.firstIndex(of: "x"), let n = Int(part[..<x].trimmedString) {
                guard (1...64).contains(n) else { throw DetectionError(line: 0, "'\(part)': the count must be 1 to 64") }
                count = n
                model = part[part.index(after: x)...]
            }
            let words = model.trimmedString.split(separator: ":", maxSplits: 1)
            guard let first = words.first, !first.isEmpty else { throw DetectionError(line: 0, "'\(part)' names no model") }
            let slug = GPUCatalogue.slug(for: String(first))
            let known = GPUCatalogue.model(slug)
            let memory: Int
            if words.count == 2 {
                guard let size = ByteSize.parse(String(words[1])) else {
                    throw DetectionError(line: 0, "'\(part)': '\(words[1])' is not a size such as 24GiB")
                }
                memory = Int(size / 1_048_576)
            } else if let known {
                memory = Int(known.vramGiB * 1024)
            } else if case let variants = GPUCatalogue.models.filter({ $0.slug.hasPrefix(slug + "-") && $0.slug.hasSuffix("gb") }), !variants.isEmpty {
                throw DetectionError(line: 0, "'\(first)' comes in several sizes: \(variants.map(\.slug).joined(separator: ", "))")
            } else {
                throw DetectionError(line: 0, "'\(first)' is not a known model; give its memory, e.g. \(first):24GiB")
            }
            for _ in 0..<count {
                out.append(GPUInfo(index: out.count, name: String(first), slug: slug, vendor: known?.vendor ?? "unknown", uuid: nil,
                                   memoryTotalMiB: memory, memoryFreeMiB: memory, computeCapability: known?.computeCapability, driverVersion: nil,
                                   source: source))
            }
        }
        guard !out.isEmpty else { throw DetectionError(line: 0, "no GPUs in '\(spec)'") }
        return out
    }
}

/// CPU, memory and disk of this host, from /proc and statvfs.
public struct HostFacts: Sendable, Equatable, Codable {
    /// The CPU model name.
    public var cpuModel: String
    /// Logical cores online.
    public var cpuCores: Int
    /// Total memory, MiB.
    public var ramMiB: Int
    /// Free disk space where jobs run, MiB.
    public var diskFreeMiB: Int

    /// Host facts from their parts.
    public init(cpuModel: String, cpuCores: Int, ramMiB: Int, diskFreeMiB: Int) {
        self.cpuModel = cpuModel
        self.cpuCores = cpuCores
        self.ramMiB = ramMiB
        self.diskFreeMiB = diskFreeMiB
    }

    enum CodingKeys: String, CodingKey { case cpuModel = "cpu_model", cpuCores = "cpu_cores", ramMiB = "ram_mib", diskFreeMiB = "disk_free_mib" }

    /// The first `model name` in /proc/cpuinfo text (ARM kernels may have none: "unknown").
    public static func cpuModel(fromCPUInfo text: String) -> String {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].trimmedString == "model name" {
                return parts[1].trimmedString
            }
        }
        return "unknown"
    }

    /// `MemTotal` from /proc/meminfo text, in MiB.
    public static func memoryMiB(fromMemInfo text: String) -> Int? {
        for line in text.split(separator: "\n") where line.hasPrefix("MemTotal:") {
            let fields = line.split(separator: " ")
            guard fields.count >= 2, let kib = Int(fields[1]) else { return nil }
            return kib / 1024
        }
        return nil
    }

    /// Free space (for unprivileged users) on the file system holding `path`, in MiB.
    public static func diskFreeMiB(at path: String) -> Int? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return Int(UInt64(s.f_bavail) * UInt64(s.f_frsize) / 1_048_576)
    }

    /// This host's facts; the disk figure is for `workDirectory`.
    public static func current(workDirectory: String) -> HostFacts {
        func read(_ path: String) -> String {
            guard let f = fopen(path, "r") else { return "" }
            defer { fclose(f) }
            var out = [UInt8]()
            var buffer = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = fread(&buffer, 1, buffer.count, f)
                if n <= 0 { break }
                out += buffer[0..<n]
            }
            return String(decoding: out, as: UTF8.self)
        }
        return HostFacts(cpuModel: cpuModel(fromCPUInfo: read("/proc/cpuinfo")), cpuCores: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))),
                         ramMiB: memoryMiB(fromMemInfo: read("/proc/meminfo")) ?? 0, diskFreeMiB: diskFreeMiB(at: workDirectory) ?? 0)
    }
}

extension StringProtocol {
    /// The text without surrounding white space, as a String.
    var trimmedString: String { String(trimmingWhitespace()) }
}
