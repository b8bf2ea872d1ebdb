import MeshCore
import MeshCrypto

/// What a renter wants run (immutable, valid by construction): read from a TOML file (`gpumesh run job.toml`), validated before
/// anything is sent, and carried to the provider in a canonical binary form (the form quotes and
/// receipts hash).
///
/// ```toml
/// name = "train"
/// executor = "sandbox"               # sandbox, docker or podman
/// image = "python:3.12-slim"         # container executors only
/// command = ["python3", "train.py", "--epochs", "3"]
/// inputs = ["train.py", "data/train.csv"]   # local files, sent to the provider
/// outputs = ["model/*.bin", "log.txt"]       # globs, relative to the work directory
/// max_price = 1.5                    # points per GPU-hour
/// provider = "gpm1:..."              # optional: skip the search
///
/// [env]
/// SEED = "7"
///
/// [resources]
/// gpus = 1
/// gpu_model = "rtx-4090"
/// min_vram = "24GiB"
/// cpu_cores = 4
/// memory = "8GiB"
/// disk = "10GiB"
/// time_limit = "30m"
/// ```
public struct JobSpec: Sendable, Equatable {
    /// A short name for people (letters, digits, `.`, `_`, `-`; at most 64).
    public let name: String
    /// How the provider runs it.
    public let executor: Executor
    /// The container image (docker and podman only).
    public let image: String?
    /// The program and its arguments.
    public let command: [String]
    /// Environment variables set for the job (nothing else is inherited).
    public let environment: [String: String]
    /// Local files sent to the provider, placed in the work directory under their base names.
    public let inputs: [String]
    /// Globs, relative to the work directory, of the files brought back.
    public let outputs: [String]
    /// What the job needs.
    public let resources: Resources
    /// The most the renter pays per GPU-hour (per hour for a job without GPUs).
    public let maxPrice: Price?
    /// A provider to use instead of searching: a contact string or a peer ID.
    public let provider: String?

    /// What a job needs from its provider.
    public struct Resources: Sendable, Equatable {
        /// GPUs (0: none; the job then sees no GPU device).
        public var gpus = 0
        /// A GPU model (catalogue slug), if the job needs one.
        public var gpuModel: String?
        /// Least VRAM per GPU, MiB.
        public var minVRAMMiB = 0
        /// CPU cores.
        public var cpuCores = 1
        /// Memory limit, MiB.
        public var memoryMiB = 1024
        /// Disk for the work directory, MiB.
        public var diskMiB = 1024
        /// Wall-clock limit, seconds; the job is killed then.
        public var timeLimitSeconds = 600

        /// The defaults.
        public init() {}
    }

    /// Limits every spec must respect.
    public enum Limits {
        /// Arguments in `command`.
        public static let maxArguments = 256
        /// Bytes in one argument, one variable's value, one path or glob.
        public static let maxStringBytes = 4096
        /// Environment variables.
        public static let maxVariables = 64
        /// Input files and output globs (each).
        public static let maxFiles = 1000
        /// GPUs.
        public static let maxGPUs = 16
        /// Time limit, seconds (7 days).
        public static let maxTimeLimit = 7 * 86_400
        /// The encoded spec, bytes.
        public static let maxEncodedBytes = 256 * 1024
    }

    /// A problem with a spec: the field at fault, the line where the file has it (0: none), what
    /// is wrong.
    public struct Problem: Error, Equatable, CustomStringConvertible, Sendable {
        /// The field, as written in the file (`resources.memory`).
        public var field: String
        /// 1-based line, 0 if the field is missing or the problem is not tied to a line.
        public var line: Int
        /// What is wrong.
        public var message: String

        /// `line 3: resources.memory: ...`.
        public var description: String { (line > 0 ? "line \(line): " : "") + "\(field): \(message)" }
    }

    /// A spec from its parts, validated.
    public init(name: String, executor: Executor = .sandbox, image: String? = nil, command: [String], environment: [String: String] = [:],
                inputs: [String] = [], outputs: [String] = [], resources: Resources = Resources(), maxPrice: Price? = nil,
                provider: String? = nil) throws(Problem) {
        self.init(unchecked: name, executor: executor, image: image, command: command, environment: environment, inputs: inputs,
                  outputs: outputs, resources: resources, maxPrice: maxPrice, provider: provider)
        if let problem = self.problem { throw problem }
    }

    // MARK: TOML

    static let knownKeys: Set<String> = ["name", "executor", "image", "command", "inputs", "outputs", "max_price", "provider",
                                         "resources.gpus", "resources.gpu_model", "resources.min_vram", "resources.cpu_cores",
                                         "resources.memory", "resources.disk", "resources.time_limit"]

    /// Parses and validates a job file. Errors name the field and its line.
    public init(toml text: String) throws(Problem) {
        let file: ConfigFile
        do { file = try ConfigFile(parsing: text) } catch { throw Problem(field: "file", line: error.line, message: error.message) }
        func line(_ key: String) -> Int { file[key]?.line ?? 0 }
        func get<T>(_ key: String, _ read: (String) throws(ConfigFile.Error) -> T?) throws(Problem) -> T? {
            do { return try read(key) } catch { throw Problem(field: key, line: error.line, message: error.message) }
        }
        for (key, entry) in file.entries.sorted(by: { $0.value.line < $1.value.line }) where !Self.knownKeys.contains(key) && !key.hasPrefix("env.") {
            throw Problem(field: key, line: entry.line, message: "unknown field (fields: \(Self.knownKeys.sorted().joined(separator: ", ")), and [env])")
        }
        guard let name = try get("name", file.string) else { throw Problem(field: "name", line: 0, message: "missing") }
        var executor = Executor.sandbox
        if let e = try get("executor", file.string) {
            guard let parsed = Executor(rawValue: e) else {
                throw Problem(field: "executor", line: line("executor"),
                              message: "'\(e)' is not an executor (one of \(Executor.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            executor = parsed
        }
        guard let command = try get("command", file.strings) else {
            throw Problem(field: "command", line: 0, message: "missing (a list: [\"program\", \"argument\", ...])")
        }
        var environment: [String: String] = [:]
        for (key, entry) in file.entries where key.hasPrefix("env.") {
            guard case .string(let value) = entry.value else { throw Problem(field: key, line: entry.line, message: "must be a string") }
            environment[String(key.dropFirst(4))] = value
        }
        var resources = Resources()
        if let n = try get("resources.gpus", file.integer) { resources.gpus = n }
        resources.gpuModel = try get("resources.gpu_model", file.string)
        if let n = try get("resources.cpu_cores", file.integer) { resources.cpuCores = n }
        func size(_ key: String) throws(Problem) -> Int? {
            guard let entry = file[key] else { return nil }
            let bytes: UInt64?
            switch entry.value {
            case .string(let s): bytes = ByteSize.parse(s)
            default: bytes = nil
            }
            guard let bytes, bytes / 1_048_576 <= UInt64(Int32.max) else {
                throw Problem(field: key, line: entry.line, message: "expected a size such as \"8GiB\" or \"512MiB\"")
            }
            return Int(bytes / 1_048_576)
        }
        if let v = try size("resources.min_vram") { resources.minVRAMMiB = v }
        if let v = try size("resources.memory") { resources.memoryMiB = v }
        if let v = try size("resources.disk") { resources.diskMiB = v }
        if let entry = file["resources.time_limit"] {
            let seconds: Int?
            switch entry.value {
            case .string(let s): seconds = DurationText.seconds(s)
            case .integer(let n): seconds = n
            default: seconds = nil
            }
            guard let seconds else {
                throw Problem(field: "resources.time_limit", line: entry.line, message: "expected a duration such as \"30m\", \"2h\" or a number of seconds")
            }
            resources.timeLimitSeconds = seconds
        }
        let spec = JobSpec(unchecked: name, executor: executor, image: try get("image", file.string), command: command, environment: environment,
                           inputs: try get("inputs", file.strings) ?? [], outputs: try get("outputs", file.strings) ?? [],
                           resources: resources, maxPrice: try get("max_price", file.price), provider: try get("provider", file.string))
        if var problem = spec.problem {
            problem.line = line(problem.field)
            throw problem
        }
        self = spec
    }

    private init(unchecked name: String, executor: Executor, image: String?, command: [String], environment: [String: String], inputs: [String],
                 outputs: [String], resources: Resources, maxPrice: Price?, provider: String?) {
        self.name = name
        self.executor = executor
        self.image = image
        self.command = command
        self.environment = environment
        self.inputs = inputs
        self.outputs = outputs
        self.resources = resources
        self.maxPrice = maxPrice
        self.provider = provider
    }

    // MARK: Validation

    /// The first problem with this spec, or nil if it is valid.
    public var problem: Problem? {
        func p(_ field: String, _ message: String) -> Problem { Problem(field: field, line: 0, message: message) }
        let nameOK = name.utf8.allSatisfy { $0.isASCIIAlnum || $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-") }
        guard (1...64).contains(name.utf8.count), nameOK else { return p("name", "1-64 letters, digits, '.', '_' or '-'") }
        switch executor {
        case .sandbox:
            if image != nil { return p("image", "only the docker and podman executors run images; the sandbox runs the host's programs") }
        case .docker, .podman:
            guard let image, !image.isEmpty else { return p("image", "required for the \(executor.rawValue) executor") }
            guard image.utf8.count <= 256, !image.hasPrefix("-"), image.utf8.allSatisfy({ $0 > 32 && $0 < 127 }) else {
                return p("image", "not an image reference")
            }
        }
        guard !command.isEmpty, !command[0].isEmpty else { return p("command", "must name a program") }
        guard command.count <= Limits.maxArguments else { return p("command", "at most \(Limits.maxArguments) arguments") }
        if let long = command.first(where: { $0.utf8.count > Limits.maxStringBytes || $0.utf8.contains(0) }) {
            return p("command", "argument '\(long.prefix(20))...' is longer than \(Limits.maxStringBytes) bytes or holds a NUL")
        }
        guard environment.count <= Limits.maxVariables else { return p("env", "at most \(Limits.maxVariables) variables") }
        for (key, value) in environment.sorted(by: { $0.key < $1.key }) {
            guard let first = key.utf8.first, first == UInt8(ascii: "_") || first.isASCIILetter,
                  key.utf8.count <= 128, key.utf8.allSatisfy({ $0 == UInt8(ascii: "_") || $0.isASCIIAlnum }) else {
                return p("env.\(key)", "a variable name is letters, digits and '_', not starting with a digit")
            }
            guard value.utf8.count <= Limits.maxStringBytes, !value.utf8.contains(0) else { return p("env.\(key)", "longer than \(Limits.maxStringBytes) bytes or holds a NUL") }
        }
        guard inputs.count <= Limits.maxFiles else { return p("inputs", "at most \(Limits.maxFiles) files") }
        var baseNames: Set<String> = []
        for path in inputs {
            guard !path.isEmpty, path.utf8.count <= Limits.maxStringBytes, !path.utf8.contains(0), !path.hasSuffix("/") else {
                return p("inputs", "'\(path)' is not a file path")
            }
            let base = JobSpec.baseName(path)
            guard base != "." && base != ".." else { return p("inputs", "'\(path)' is not a file path") }
            guard baseNames.insert(base).inserted else { return p("inputs", "two inputs are named '\(base)' (inputs land in the work directory under their base names)") }
        }
        guard outputs.count <= Limits.maxFiles else { return p("outputs", "at most \(Limits.maxFiles) globs") }
        for glob in outputs {
            guard !glob.isEmpty, glob.utf8.count <= Limits.maxStringBytes, !glob.utf8.contains(0) else { return p("outputs", "empty or too long") }
            guard !glob.hasPrefix("/"), !glob.split(separator: "/").contains("..") else {
                return p("outputs", "'\(glob)' must stay inside the work directory (relative, no '..')")
            }
        }
        let r = resources
        guard (0...Limits.maxGPUs).contains(r.gpus) else { return p("resources.gpus", "0 to \(Limits.maxGPUs)") }
        if r.gpus == 0 && (r.gpuModel != nil || r.minVRAMMiB > 0) {
            return p(r.gpuModel != nil ? "resources.gpu_model" : "resources.min_vram", "asks for a GPU, but resources.gpus is 0")
        }
        if let model = r.gpuModel, model.isEmpty || model.utf8.count > 64 { return p("resources.gpu_model", "1-64 characters") }
        guard r.minVRAMMiB >= 0 else { return p("resources.min_vram", "must not be negative") }
        guard (1...1024).contains(r.cpuCores) else { return p("resources.cpu_cores", "1 to 1024") }
        guard (16...(16 << 20)).contains(r.memoryMiB) else { return p("resources.memory", "16MiB to 16TiB") }
        guard (1...(1 << 30)).contains(r.diskMiB) else { return p("resources.disk", "at least 1MiB") }
        guard (1...Limits.maxTimeLimit).contains(r.timeLimitSeconds) else { return p("resources.time_limit", "1 second to 7 days") }
        if let provider {
            let isPeerID = provider.utf8.count == 64 && provider.utf8.allSatisfy { $0.isHexDigit }
            if !isPeerID, (try? Contact(parsing: provider)) == nil { return p("provider", "neither a contact string (gpm1:...) nor a 64-digit peer ID") }
        }
        return nil
    }

    /// The last path component.
    public static func baseName(_ path: String) -> String {
        String(path.split(separator: "/", omittingEmptySubsequences: true).last ?? Substring(path))
    }

    // MARK: Binary form

    /// The canonical bytes (big-endian): `version (1) = 1 | name (s8) | executor (1) | image (s16, empty: none) |
    /// argc (2) | args (s16 each) | envc (1) | (key s8, value s16) sorted by key | inputs: n (2) | base names (s16) |
    /// outputs: n (2) | globs (s16) | gpus (1) | gpu_model (s8) | min_vram_mib (4) | cpu_cores (2) | memory_mib (4) |
    /// disk_mib (4) | time_limit_s (4) | has_max_price (1) | max_price_millipoints (4)`; executor is its capability bit. Inputs go by base name: the
    /// renter's local paths stay private. `provider` is the renter's business and is not sent.
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 512)
        func s16(_ s: String) { w.blob16(Array(s.utf8)) }
        w.u8(1)
        w.string8(name)
        w.u8(executor.bit)
        s16(image ?? "")
        w.u16(UInt16(command.count))
        command.forEach(s16)
        w.u8(UInt8(environment.count))
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) { w.string8(k); s16(v) }
        w.u16(UInt16(inputs.count))
        inputs.map(Self.baseName).forEach(s16)
        w.u16(UInt16(outputs.count))
        outputs.forEach(s16)
        w.u8(UInt8(resources.gpus))
        w.string8(resources.gpuModel ?? "")
        w.u32(UInt32(resources.minVRAMMiB))
        w.u16(UInt16(resources.cpuCores))
        w.u32(UInt32(resources.memoryMiB))
        w.u32(UInt32(resources.diskMiB))
        w.u32(UInt32(resources.timeLimitSeconds))
        w.u8(maxPrice == nil ? 0 : 1)
        w.u32(maxPrice?.millipoints ?? 0)
        return w.bytes
    }

    /// Parses and validates untrusted bytes; nil if malformed or invalid.
    public init?(decoding bytes: [UInt8]) {
        guard bytes.count <= Limits.maxEncodedBytes else { return nil }
        var r = WireReader(bytes)
        func s16() -> String? { r.blob16(max: Limits.maxStringBytes).flatMap { String(validating: $0, as: UTF8.self) } }
        guard r.u8() == 1, let name = r.string8(), let e = r.u8(), let executor = Executor.allCases.first(where: { $0.bit == e }), let image = s16(),
              let argc = r.u16() else { return nil }
        var command: [String] = []
        for _ in 0..<argc { guard let a = s16() else { return nil }; command.append(a) }
        guard let envc = r.u8() else { return nil }
        var environment: [String: String] = [:]
        var lastKey: String?
        for _ in 0..<envc {
            guard let k = r.string8(), let v = s16(), lastKey.map({ $0 < k }) ?? true else { return nil }  // sorted, no repeats
            environment[k] = v
            lastKey = k
        }
        guard let nIn = r.u16() else { return nil }
        var inputs: [String] = []
        for _ in 0..<nIn { guard let a = s16(), !a.contains("/") else { return nil }; inputs.append(a) }
        guard let nOut = r.u16() else { return nil }
        var outputs: [String] = []
        for _ in 0..<nOut { guard let a = s16() else { return nil }; outputs.append(a) }
        guard let gpus = r.u8(), let model = r.string8(), let vram = r.u32(), let cores = r.u16(), let memory = r.u32(),
              let disk = r.u32(), let time = r.u32(), let hasPrice = r.u8(), hasPrice <= 1, let price = r.u32(), r.isAtEnd,
              hasPrice == 1 || price == 0 else { return nil }
        var resources = Resources()
        resources.gpus = Int(gpus)
        resources.gpuModel = model.isEmpty ? nil : model
        resources.minVRAMMiB = Int(vram)
        resources.cpuCores = Int(cores)
        resources.memoryMiB = Int(memory)
        resources.diskMiB = Int(disk)
        resources.timeLimitSeconds = Int(time)
        self.init(unchecked: name, executor: executor, image: image.isEmpty ? nil : image, command: command, environment: environment,
                  inputs: inputs, outputs: outputs, resources: resources, maxPrice: hasPrice == 1 ? Price(millipoints: price) : nil,
                  provider: nil)
        if problem != nil { return nil }
    }

    /// BLAKE2b-256 of the canonical bytes: what quotes and receipts name.
    public var digest: [UInt8] { Blake2b.hash(encode(), outputLength: 32) }
}

extension UInt8 {
    var isASCIILetter: Bool { (65...90).contains(self) || (97...122).contains(self) }
    var isASCIIAlnum: Bool { isASCIILetter || (48...57).contains(self) }
    var isHexDigit: Bool { (48...57).contains(self) || (97...102).contains(self) || (65...70).contains(self) }
}
