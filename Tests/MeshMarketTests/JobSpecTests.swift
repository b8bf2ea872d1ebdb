import MeshCore
import MeshCrypto
@testable import MeshMarket
import Testing

@Suite("Job specs")
struct JobSpecTests {
    static let example = """
    name = "train"
    executor = "docker"
    image = "python:3.12-slim"
    command = ["python3", "train.py", "--epochs", "3"]
    inputs = ["train.py", "data/train.csv"]
    outputs = ["model/*.bin", "log.txt"]
    max_price = 1.5

    [env]
    SEED = "7"
    _MODE = "fast"

    [resources]
    gpus = 2
    gpu_model = "rtx-4090"
    min_vram = "24GiB"
    cpu_cores = 4
    memory = "8GiB"
    disk = "10GiB"
    time_limit = "1h30m"
    """

    @Test("a full spec parses with every field; a minimal one takes the defaults")
    func parses() throws {
        let spec = try JobSpec(toml: Self.example)
        #expect(spec.name == "train" && spec.executor == .docker && spec.image == "python:3.12-slim")
        #expect(spec.command == ["python3", "train.py", "--epochs", "3"])
        #expect(spec.environment == ["SEED": "7", "_MODE": "fast"])
        #expect(spec.inputs == ["train.py", "data/train.csv"] && spec.outputs == ["model/*.bin", "log.txt"])
        #expect(spec.maxPrice == Price(parsing: "1.5") && spec.provider == nil)
        let r = spec.resources
        #expect(r.gpus == 2 && r.gpuModel == "rtx-4090" && r.minVRAMMiB == 24_576 && r.cpuCores == 4)
        #expect(r.memoryMiB == 8_192 && r.diskMiB == 10_240 && r.timeLimitSeconds == 5_400)

        let minimal = try JobSpec(toml: "name = \"hello\"\ncommand = [\"echo\", \"hi\"]\n")
        #expect(minimal.executor == .sandbox && minimal.resources == JobSpec.Resources() && minimal.inputs.isEmpty && minimal.maxPrice == nil)
        #expect(try JobSpec(toml: "name = \"t\"\ncommand = [\"true\"]\n[resources]\ntime_limit = 90\n").resources.timeLimitSeconds == 90)
        let peer = String(repeating: "ab", count: 32)
        #expect(try JobSpec(toml: "name = \"t\"\ncommand = [\"true\"]\nprovider = \"\(peer)\"\n").provider == peer)
    }

    @Test("every problem names its field and line")
    func problems() {
        let cases: [(String, String)] = [
            ("name = \"x\"\ncommand = [\"true\"]\ncolour = \"red\"\n", "line 3: colour: unknown field"),
            ("command = [\"true\"]\n", "name: missing"),
            ("name = \"x\"\n", "command: missing"),
            ("name = \"a b\"\ncommand = [\"true\"]\n", "line 1: name: 1-64 letters"),
            ("name = \"x\"\nexecutor = \"qemu\"\ncommand = [\"true\"]\n", "line 2: executor: 'qemu' is not an executor"),
            ("name = \"x\"\nimage = \"alpine\"\ncommand = [\"true\"]\n", "line 2: image: only the docker and podman executors run images"),
            ("name = \"x\"\nexecutor = \"podman\"\ncommand = [\"true\"]\n", "image: required for the podman executor"),
            ("name = \"x\"\ncommand = []\n", "line 2: command: must name a program"),
            ("name = \"x\"\ncommand = [\"true\"]\n[env]\n1ABC = \"v\"\n", "line 4: env.1ABC: a variable name"),
            ("name = \"x\"\ncommand = [\"true\"]\n[env]\nA = 1\n", "line 4: env.A: must be a string"),
            ("name = \"x\"\ncommand = [\"true\"]\noutputs = [\"../secret\"]\n", "line 3: outputs: '../secret' must stay inside the work directory"),
            ("name = \"x\"\ncommand = [\"true\"]\noutputs = [\"/etc/passwd\"]\n", "line 3: outputs: '/etc/passwd' must stay inside"),
            ("name = \"x\"\ncommand = [\"true\"]\ninputs = [\"a/data.csv\", \"b/data.csv\"]\n", "line 3: inputs: two inputs are named 'data.csv'"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\ngpu_model = \"rtx-4090\"\n", "line 4: resources.gpu_model: asks for a GPU, but resources.gpus is 0"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\ngpus = 17\n", "line 4: resources.gpus: 0 to 16"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\nmemory = \"lots\"\n", "line 4: resources.memory: expected a size"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\nmemory = \"1e30TiB\"\n", "line 4: resources.memory: expected a size"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\nmemory = \"1MiB\"\n", "line 4: resources.memory: 16MiB to 16TiB"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\ntime_limit = \"forever\"\n", "line 4: resources.time_limit: expected a duration"),
            ("name = \"x\"\ncommand = [\"true\"]\n[resources]\ntime_limit = \"8d\"\n", "line 4: resources.time_limit: 1 second to 7 days"),
            ("name = \"x\"\ncommand = [\"true\"]\nprovider = \"someone\"\n", "line 3: provider: neither a contact string"),
            ("name = \"x\"\ncommand = [\"true\"]\nmax_price = \"cheap\"\n", "line 3: max_price:"),
            ("name = \"x\"\ncommand = [\"true\"\n", "line 2: file:"),
        ]
        for (text, expected) in cases {
            #expect { try JobSpec(toml: text) } throws: { error in
                let said = "\(error)"
                if !said.hasPrefix(expected) { Issue.record("for \(text.debugDescription): said '\(said)', expected '\(expected)...'") }
                return true
            }
        }
    }

    @Test("the binary form round-trips (inputs by base name, the provider choice stays local); malformed or invalid bytes are refused")
    func binary() throws {
        let spec = try JobSpec(toml: Self.example + "\n")
        let decoded = try #require(JobSpec(decoding: spec.encode()))
        #expect(decoded.inputs == ["train.py", "train.csv"] && decoded.provider == nil)
        #expect(decoded.encode() == spec.encode() && decoded.digest == spec.digest)
        #expect(decoded.command == spec.command && decoded.environment == spec.environment && decoded.resources == spec.resources)
        #expect(decoded.maxPrice == spec.maxPrice && decoded.image == spec.image && decoded.outputs == spec.outputs)
        let free = try JobSpec(name: "free", command: ["true"])
        #expect(JobSpec(decoding: free.encode())?.maxPrice == nil)
        let bytes = spec.encode()
        #expect(JobSpec(decoding: bytes + [0]) == nil)
        #expect(JobSpec(decoding: Array(bytes.dropLast())) == nil)
        var rng = SplitMix64(seed: 5)
        var accepted = 0
        for _ in 0..<3_000 {
            var b = bytes
            for _ in 0..<(1 + Int(rng.next() % 4)) { b[Int(rng.next() % UInt64(b.count))] = UInt8(truncatingIfNeeded: rng.next()) }
            if let s = JobSpec(decoding: b) { accepted += 1; #expect(s.problem == nil) }
        }
        #expect(accepted < 3_000)
    }
}
