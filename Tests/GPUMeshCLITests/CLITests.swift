import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshRuntime
import Testing

/// The built `gpumesh` executable: beside the test bundle, else in the package's debug build folder.
let gpumeshBinary: String = {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var candidates = [URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("gpumesh").path]
    var dir = URL(fileURLWithPath: #filePath)
    for _ in 0..<3 { dir.deleteLastPathComponent() }
    candidates.append(dir.appendingPathComponent(".build/debug/gpumesh").path)
    return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates[0]
}()

/// The independent Python peer.
let interopScript: String = {
    var dir = URL(fileURLWithPath: #filePath)
    dir.deleteLastPathComponent()
    dir.deleteLastPathComponent()
    return dir.appendingPathComponent("interop/python_peer.py").path
}()

/// True when python3 can import the interop test's packages.
let pythonInteropAvailable: Bool = {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["python3", "-c", "import noise, nacl"]
    p.standardOutput = FileHandle.nullDevice
    p.standardError = FileHandle.nullDevice
    guard (try? p.run()) != nil else { return false }
    p.waitUntilExit()
    return p.terminationStatus == 0
}()

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// True when this process may create network namespaces (root with iproute2).
let networkNamespacesWork: Bool = {
    guard getuid() == 0, let r = try? runProgram("/usr/bin/env", ["sh", "-c", "ip netns add gmprobe$$ && ip netns del gmprobe$$"], timeout: 10) else { return false }
    return r.status == 0
}()

/// Runs the binary to completion with a time limit.
func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 60) throws -> RunResult {
    try runProgram(gpumeshBinary, arguments, environment: environment, timeout: timeout)
}

/// Runs a program to completion with a time limit.
func runProgram(_ program: String, _ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 60) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: program)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["GPUMESH_HOME"] = nil
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = closeOnExecPipe(), err = closeOnExecPipe()
    p.standardOutput = out
    p.standardError = err
    try p.run()
    // Drain both pipes while waiting, so a chatty child never blocks on a full pipe.
    let outData = Box(Data()), errData = Box(Data())
    let group = DispatchGroup()
    for (pipe, box) in [(out, outData), (err, errData)] {
        group.enter()
        DispatchQueue.global().async { box.value = pipe.fileHandleForReading.readDataToEndOfFile(); group.leave() }
    }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(10_000) }
    if p.isRunning { p.terminate(); Issue.record("gpumesh \(arguments.joined(separator: " ")) ran past \(timeout) s") }
    p.waitUntilExit()
    group.wait()
    return RunResult(status: p.terminationStatus, stdout: String(decoding: outData.value, as: UTF8.self),
                     stderr: String(decoding: errData.value, as: UTF8.self))
}

/// A pipe whose ends no other child inherits: Foundation's are inheritable, so a long-lived
/// process spawned by another test meanwhile would hold this one's write end and delay its
/// end-of-file until it exited. (The child still gets the ends it is given, through dup2.)
func closeOnExecPipe() -> Pipe {
    let p = Pipe()
    for fd in [p.fileHandleForReading.fileDescriptor, p.fileHandleForWriting.fileDescriptor] { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    return p
}

/// GET `path` from 127.0.0.1:`port` through bash's /dev/tcp (no client library between the test
/// and the server): the head and the body.
func httpGet(port: Int, _ path: String) throws -> (head: String, body: String) {
    let script = "exec 3<>/dev/tcp/127.0.0.1/\(port) && printf 'GET \(path) HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\nConnection: close\\r\\n\\r\\n' >&3 && cat <&3"
    let r = try runProgram("/bin/bash", ["-c", script], timeout: 30)
    let parts = r.stdout.components(separatedBy: "\r\n\r\n")
    return (parts.first ?? "", parts.dropFirst().joined(separator: "\r\n\r\n"))
}

final class Box<T>: @unchecked Sendable {
    var value: T
    init(_ value: T) { self.value = value }
}

func tempDataDir() throws -> String {
    let base = "/tmp/gm-cli-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: base, withIntermediateDirectories: true)
    return base + "/data"
}

func json(_ text: String) throws -> [String: Any] {
    let line = text.split(separator: "\n").first.map(String.init) ?? ""
    return try #require(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "not a JSON object: \(text)")
}

/// A `gpumesh` process in the background whose first output line is JSON.
final class Background {
    let process = Process()
    let firstLine: [String: Any]

    init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: gpumeshBinary)
        process.arguments = arguments
        let out = closeOnExecPipe()
        process.standardOutput = out
        process.standardError = FileHandle.nullDevice
        try process.run()
        var line = Data()
        while !line.contains(10) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        firstLine = try json(String(decoding: line, as: UTF8.self))
    }

    func stop() -> Int32 {
        process.terminate()
        process.waitUntilExit()
        return process.terminationStatus
    }

    deinit { if process.isRunning { process.interrupt() } }
}

// Serialized: each test blocks the thread it runs on while the binary works, and the async
// suites of the whole run share a pool of one thread per core (two on CI): tests running here
// side by side could hold every one of them and starve the rest past their time limits.
@Suite("gpumesh CLI", .serialized, .timeLimit(.minutes(3)))
struct CLITests {
    @Test("the binary exists and prints help and its version")
    func help() throws {
        #expect(FileManager.default.isExecutableFile(atPath: gpumeshBinary), "build it first: swift build")
        let r = try run(["--help"])
        #expect(r.status == 0)
        for sub in ["init", "id", "node", "status", "peers", "dht", "mesh-key", "demo", "debug", "bench", "run", "jobs", "job", "reputation", "rewards", "ledger", "testnet", "simulate"] { #expect(r.stdout.contains(sub)) }
        #expect(try run(["--version"]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == GPUMeshVersion.current)
    }

    @Test("init makes a 0700 directory, a 0600 key and a config; it never overwrites the key")
    func initDataDirectory() throws {
        let dir = try tempDataDir()
        let r = try run(["init", "--data-dir", dir, "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let out = try json(r.stdout)
        let peerID = try #require(out["peer_id"] as? String)
        #expect(PeerID(hex: peerID) != nil)
        let fm = FileManager.default
        #expect(try fm.attributesOfItem(atPath: dir)[.posixPermissions] as? Int == 0o700)
        #expect(try fm.attributesOfItem(atPath: dir + "/identity.key")[.posixPermissions] as? Int == 0o600)
        let config = try String(contentsOfFile: dir + "/config.toml", encoding: .utf8)
        #expect(config.contains("listen_udp") && config.contains("# "))
        let key = try Data(contentsOf: URL(fileURLWithPath: dir + "/identity.key"))

        let again = try run(["init", "--data-dir", dir])
        #expect(again.status == 1)
        #expect(again.stderr.contains("never overwritten"))
        #expect(try Data(contentsOf: URL(fileURLWithPath: dir + "/identity.key")) == key)

        // GPUMESH_HOME is the fallback for --data-dir.
        let id = try run(["id", "--json"], environment: ["GPUMESH_HOME": dir])
        #expect(id.status == 0)
        #expect(try json(id.stdout)["peer_id"] as? String == peerID)
        let contact = try Contact(parsing: try #require(json(id.stdout)["contact"] as? String))
        #expect(contact.peerID.hex == peerID)
        #expect(contact.address(for: .udp)?.description == "127.0.0.1:7400")
    }

    @Test("a key others can read is refused; a missing key says to run init; a broken config names its line")
    func refusals() throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        chmod(dir + "/identity.key", 0o644)
        let r = try run(["id", "--data-dir", dir])
        #expect(r.status == 1)
        #expect(r.stderr.contains("chmod 600"))
        chmod(dir + "/identity.key", 0o600)

        try "[node]\nlisten_udp = \"127.0.0.1:0\"\nlisten_tcp = nope\n".write(toFile: dir + "/config.toml", atomically: true, encoding: .utf8)
        let bad = try run(["node", "--data-dir", dir])
        #expect(bad.status != 0)
        #expect(bad.stderr.contains("config.toml: line 3"))

        let empty = try tempDataDir()
        let missing = try run(["id", "--data-dir", empty])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("gpumesh init"))
        #expect(try run(["node", "--data-dir", dir, "--udp", "nowhere"]).stderr.contains("--udp"))
        #expect(try run(["status", "--data-dir", dir, "--log-level", "loud"]).status != 0)
    }

    @Test("status with no node running exits 1 with a clear message")
    func statusWithoutNode() throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        for args in [["status", "--data-dir", dir], ["status", "--data-dir", dir, "--json"]] {
            let r = try run(args)
            #expect(r.status == 1)
            #expect(r.stderr.contains("no node is running"))
            #expect(r.stdout.isEmpty)
        }
    }

    @Test("node runs in the background, answers status --json, and exits 0 on SIGTERM removing its socket")
    func nodeLifecycle() throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        let node = Process()
        node.executableURL = URL(fileURLWithPath: gpumeshBinary)
        node.arguments = ["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--log-level", "warning"]
        let out = closeOnExecPipe()
        node.standardOutput = out
        node.standardError = FileHandle.nullDevice
        try node.run()
        defer { if node.isRunning { node.interrupt() } }

        // The first line of output is the start-up status: the node is ready once it is printed.
        var line = Data()
        let handle = out.fileHandleForReading
        while !line.contains(10) {
            let chunk = handle.availableData
            if chunk.isEmpty { break }
            line.append(chunk)
        }
        let started = try json(String(decoding: line, as: UTF8.self))
        let peerID = try #require(started["peer_id"] as? String)
        #expect(FileManager.default.fileExists(atPath: dir + "/node.sock"))
        #expect(try FileManager.default.attributesOfItem(atPath: dir + "/node.sock")[.posixPermissions] as? Int == 0o600)

        let status = try run(["status", "--data-dir", dir, "--json"])
        #expect(status.status == 0, "\(status.stderr)")
        let s = try json(status.stdout)
        #expect(s["peer_id"] as? String == peerID)
        #expect(s["udp"] as? String == started["udp"] as? String)
        #expect((s["uptime_s"] as? Double ?? -1) >= 0)
        let counters = try #require(s["counters"] as? [String: Int])
        #expect(counters["datagrams_in"] == 0)
        #expect(counters["control_requests"] != nil)
        let human = try run(["status", "--data-dir", dir])
        #expect(human.stdout.contains(peerID) && human.stdout.contains("uptime"))

        // A second node on the same data directory is refused.
        let second = try run(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        #expect(second.status != 0)
        #expect(second.stderr.contains("already running"))

        // The id command reports the live contact.
        let id = try run(["id", "--data-dir", dir, "--json"])
        #expect(try json(id.stdout)["contact"] as? String == started["contact"] as? String)

        node.terminate()  // SIGTERM
        node.waitUntilExit()
        #expect(node.terminationReason == .exit)
        #expect(node.terminationStatus == 0)
        #expect(!FileManager.default.fileExists(atPath: dir + "/node.sock"))
        #expect(try run(["status", "--data-dir", dir]).status == 1)
    }

    @Test("node --explorer serves the explorer (JSON and Prometheus over HTTP); explorer refuses a public address without --public and advises node --explorer when a node already runs")
    func explorer() throws {
        let refused = try run(["explorer", "--listen", "0.0.0.0:8080"])
        #expect(refused.status != 0 && refused.stderr.contains("not a loopback address") && refused.stderr.contains("--public"))
        #expect(try run(["node", "--explorer", "nonsense"]).stderr.contains("--explorer"))
        let lonePublic = try run(["node", "--public", "--data-dir", try tempDataDir()])
        #expect(lonePublic.status != 0 && lonePublic.stderr.contains("--public applies to an explorer"))

        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        let node = try Background(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--explorer", "127.0.0.1:0", "--json",
                                   "--log-level", "warning"])
        let started = node.firstLine
        let url = try #require(started["explorer"] as? String)
        let port = try #require(url.split(separator: ":").last.flatMap { Int($0.dropLast()) })
        #expect(url == "http://127.0.0.1:\(port)/")

        func fetch(_ path: String) throws -> (head: String, body: String) { try httpGet(port: port, path) }
        let overview = try fetch("/api/overview")
        #expect(overview.head.hasPrefix("HTTP/1.1 200") && overview.head.lowercased().contains("content-type: application/json"))
        #expect(try json(overview.body)["peer_id"] as? String == started["peer_id"] as? String)
        let metrics = try fetch("/metrics")
        #expect(metrics.head.hasPrefix("HTTP/1.1 200") && metrics.body.contains("gpumesh_datagrams_in_total{peer="))
        #expect(try fetch("/api/peers/nonsense").head.hasPrefix("HTTP/1.1 400"))

        let second = try run(["explorer", "--data-dir", dir, "--listen", "127.0.0.1:0", "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        #expect(second.status != 0 && second.stderr.contains("gpumesh node --explorer"))
        #expect(node.stop() == 0)

        // `[explorer] listen` in the config serves it without the flag; a public address there
        // needs `public = true` too.
        let configPath = dir + "/config.toml"
        let template = try String(contentsOfFile: configPath, encoding: .utf8)
        #expect(template.contains("[explorer]") && template.components(separatedBy: "\nlisten = \"\"").count == 2)
        try template.replacingOccurrences(of: "\nlisten = \"\"", with: "\nlisten = \"127.0.0.1:0\"")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        let configured = try Background(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--log-level", "warning"])
        #expect((configured.firstLine["explorer"] as? String)?.hasPrefix("http://127.0.0.1:") == true)
        #expect(configured.stop() == 0)
        try template.replacingOccurrences(of: "\nlisten = \"\"", with: "\nlisten = \"0.0.0.0:0\"")
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        let exposed = try run(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        #expect(exposed.status != 0 && exposed.stderr.contains("--public"))
    }

    @Test("a node joins through a peers file; peers, dht put and dht get work through the control socket")
    func dhtCommands() throws {
        let a = try tempDataDir(), b = try tempDataDir()
        #expect(try run(["init", "--data-dir", a]).status == 0)
        #expect(try run(["init", "--data-dir", b]).status == 0)
        let noNode = try run(["peers", "--data-dir", a])
        #expect(noNode.status == 1 && noNode.stderr.contains("no node is running"))
        let first = try Background(["node", "--data-dir", a, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json"])
        defer { _ = first.stop() }
        let contact = try #require(first.firstLine["contact"] as? String)
        let peersFile = b + "/peers.txt"
        try "# test mesh\n\n\(contact)   the first node\n".write(toFile: peersFile, atomically: true, encoding: .utf8)
        let second = try Background(["node", "--data-dir", b, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--peers-file", peersFile])
        defer { _ = second.stop() }
        var joined = false
        for _ in 0..<100 where !joined {
            let p = try json(try run(["peers", "--data-dir", b, "--json"]).stdout)
            joined = p["joined"] as? Bool == true && (p["peers"] as? [[String: Any]])?.count == 1
            if !joined { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(joined)
        let put = try run(["dht", "put", "--data-dir", b, "model/rtx-4090", "slot free", "--ttl", "120", "--json"])
        #expect(put.status == 0, "\(put.stderr)")
        #expect(try json(put.stdout)["stored"] as? Int == 1)
        let get = try run(["dht", "get", "--data-dir", a, "model/rtx-4090", "--json"])
        let records = try #require(try json(get.stdout)["records"] as? [[String: Any]])
        #expect(records.count == 1 && records.first?["value"] as? String == "slot free")
        #expect(records.first?["publisher_id"] as? String == second.firstLine["peer_id"] as? String)
        let human = try run(["dht", "get", "--data-dir", a, "model/rtx-4090"])
        #expect(human.stdout.contains("\"slot free\""))
        let bad = try run(["dht", "get", "--data-dir", a, "--key-hex", "xyz"])
        #expect(bad.status != 0 && bad.stderr.contains("64 hex digits"))
        let badPeers = try run(["node", "--data-dir", a, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--bootstrap", "gpm1:zz@udp:1.2.3.4:5"])
        #expect(badPeers.status != 0 && badPeers.stderr.contains("--bootstrap"))
        let status = try json(try run(["status", "--data-dir", b, "--json"]).stdout)
        #expect(status["dht_joined"] as? Bool == true && status["dht_peers"] as? Int == 1)
        // A clean stop saves the routing table; the next start rejoins through it with no peers file.
        #expect(second.stop() == 0)
        let cache = try String(contentsOfFile: b + "/peers.cache", encoding: .utf8)
        #expect(cache.contains(contact))
        #expect(try FileManager.default.attributesOfItem(atPath: b + "/peers.cache")[.posixPermissions] as? Int == 0o600)
        let again = try Background(["node", "--data-dir", b, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json"])
        defer { _ = again.stop() }
        var rejoined = false
        for _ in 0..<100 where !rejoined {
            let p = try json(try run(["peers", "--data-dir", b, "--json"]).stdout)
            rejoined = p["joined"] as? Bool == true && (p["peers"] as? [[String: Any]])?.count == 1 && p["bootstrap_peers"] as? Int == 1
            if !rejoined { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(rejoined)
    }

    @Test("node --provide publishes simulated GPUs; find lists them (table and JSON), refuses impossible queries, and drops a provider that stopped")
    func provideAndFind() throws {
        let a = try tempDataDir(), b = try tempDataDir()
        #expect(try run(["init", "--data-dir", a]).status == 0)
        #expect(try run(["init", "--data-dir", b]).status == 0)
        let shown = try run(["offer", "show", "--data-dir", a, "--simulate-gpus", "2x rtx-4090", "--price", "1.25", "--json"])
        #expect(shown.status == 0, "\(shown.stderr)")
        let offer = try json(shown.stdout)
        #expect(offer["total_gpus"] as? Int == 2 && offer["price"] as? Double == 1.25)
        #expect((offer["index_keys"] as? [String])?.contains("model/rtx-4090") == true)
        if !FileManager.default.fileExists(atPath: "/dev/nvidiactl") {  // a host with an NVIDIA driver finds its GPUs through NVML
            let noGPUs = try run(["offer", "show", "--data-dir", a], environment: ["PATH": "/nonexistent"])
            #expect(noGPUs.status == 1 && noGPUs.stderr.contains("no GPUs found") && noGPUs.stderr.contains("--simulate-gpus"))
        }

        let provider = try Background(["node", "--data-dir", a, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--provide",
                                       "--simulate-gpus", "2x rtx-4090", "--price", "1.25"])
        defer { _ = provider.stop() }
        let contact = try #require(provider.firstLine["contact"] as? String)
        let renter = try Background(["node", "--data-dir", b, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--bootstrap", contact])
        defer { _ = renter.stop() }
        var offers: [[String: Any]] = []
        for _ in 0..<100 where offers.isEmpty {
            let found = try run(["find", "--data-dir", b, "--gpu", "RTX 4090", "--min-vram", "24GiB", "--gpus", "2", "--max-price", "1.5", "--json"])
            offers = (try? json(found.stdout)["offers"] as? [[String: Any]]) ?? []
            if offers.isEmpty { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(offers.count == 1)
        #expect(offers.first?["peer_id"] as? String == provider.firstLine["peer_id"] as? String)
        #expect(offers.first?["rtt_ms"] as? Double != nil)
        let table = try run(["find", "--data-dir", b, "--gpu", "rtx-4090"])
        #expect(table.status == 0 && table.stdout.contains("PEER") && table.stdout.contains("2x rtx-4090") && table.stdout.contains("24 GiB"))
        let cheaper = try json(try run(["find", "--data-dir", b, "--gpu", "rtx-4090", "--max-price", "1", "--json"]).stdout)
        #expect((cheaper["offers"] as? [Any])?.isEmpty == true)
        // No history yet: every provider counts as 0.5.
        let trusted = try json(try run(["find", "--data-dir", b, "--gpu", "rtx-4090", "--min-reputation", "0.6", "--json"]).stdout)
        #expect((trusted["offers"] as? [Any])?.isEmpty == true)
        let neutral = try json(try run(["find", "--data-dir", b, "--gpu", "rtx-4090", "--min-reputation", "0.5", "--json"]).stdout)
        #expect((neutral["offers"] as? [Any])?.count == 1)
        for (args, message) in [(["--gpu", "rtx-4090", "--min-vram", "48GiB"], "no rtx-4090 has 48 GiB"),
                                (["--executor", "qemu"], "'qemu' is not one of sandbox, docker, podman"),
                                (["--min-vram", "24XB"], "is not a size"), (["--gpus", "0"], "--gpus"),
                                (["--vendor", "amd", "--gpu", "rtx-4090"], "rtx-4090 is a nvidia GPU, not amd")] {
            let r = try run(["find", "--data-dir", b] + args)
            #expect(r.status != 0 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        // The provider stops cleanly: its tombstone hides it at once.
        #expect(provider.stop() == 0)
        let after = try json(try run(["find", "--data-dir", b, "--gpu", "rtx-4090", "--json"]).stdout)
        #expect((after["offers"] as? [Any])?.isEmpty == true)
        #expect(after["withdrawn"] as? Int == 1)
    }

    @Test("run executes a job found through the mesh: logs on stdout, outputs in gpumesh-out/<job-id>/, a receipt; jobs, job logs and job show agree; bad job files name their line")
    func runJob() throws {
        let a = try tempDataDir(), b = try tempDataDir()
        #expect(try run(["init", "--data-dir", a]).status == 0)
        #expect(try run(["init", "--data-dir", b]).status == 0)
        let offer = try json(try run(["offer", "show", "--data-dir", a, "--simulate-gpus", "1x rtx-4090", "--json"]).stdout)
        guard (offer["executors"] as? [String])?.contains("sandbox") == true else { return }  // no working sandbox here (stated by offer show)
        let provider = try Background(["node", "--data-dir", a, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--provide",
                                       "--simulate-gpus", "1x rtx-4090"])
        defer { _ = provider.stop() }
        let contact = try #require(provider.firstLine["contact"] as? String)
        let renter = try Background(["node", "--data-dir", b, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--bootstrap", contact])
        defer { _ = renter.stop() }
        let work = try tempDataDir()
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)
        try "hello mesh\n".write(toFile: work + "/in.txt", atomically: true, encoding: .utf8)
        try """
        name = "upper"
        command = ["sh", "-c", "echo working; tr a-z A-Z < in.txt > out.txt"]
        inputs = ["in.txt"]
        outputs = ["out.txt"]
        max_price = 2
        [resources]
        gpus = 1
        time_limit = "30s"
        """.write(toFile: work + "/job.toml", atomically: true, encoding: .utf8)
        // The provider's record must be findable first.
        for _ in 0..<100 {
            let found = try run(["find", "--data-dir", b, "--gpu", "rtx-4090", "--json"])
            if ((try? json(found.stdout)["offers"] as? [Any]) ?? []).isEmpty == false { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let out = work + "/results"
        let r = try run(["run", "--data-dir", b, work + "/job.toml", "--out", out], timeout: 60)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("working"))
        #expect(r.stderr.contains("completed") && r.stderr.contains("receipt") && r.stderr.contains("out.txt"))
        let listed = try run(["jobs", "--data-dir", b, "--json"])
        let jobs = try #require(try JSONSerialization.jsonObject(with: Data(listed.stdout.utf8)) as? [[String: Any]])
        let job = try #require(jobs.first)
        let id = try #require(job["id"] as? String)
        #expect(job["state"] as? String == "completed" && job["role"] as? String == "renter" && job["exit_status"] as? Int == 0)
        #expect(FileManager.default.contents(atPath: out + "/" + id + "/out.txt") == Data("HELLO MESH\n".utf8))
        let logs = try run(["job", "logs", "--data-dir", b, String(id.prefix(8))])
        #expect(logs.status == 0 && logs.stdout == "working\n")
        let providerJobs = try run(["jobs", "--data-dir", a])
        #expect(providerJobs.status == 0 && providerJobs.stdout.contains(String(id.prefix(12))) && providerJobs.stdout.contains("provider"))
        let shown = try json(try run(["job", "show", "--data-dir", a, id, "--json"]).stdout)
        #expect(shown["receipt"] as? String == job["receipt"] as? String)
        // Bad job files and IDs: precise errors, nothing sent.
        try "name = \"x\"\ncommand = [\"true\"]\n[resources]\nmemory = \"lots\"\n".write(toFile: work + "/bad.toml", atomically: true, encoding: .utf8)
        let bad = try run(["run", "--data-dir", b, work + "/bad.toml"])
        #expect(bad.status == 1 && bad.stderr.contains("line 4") && bad.stderr.contains("resources.memory"), "\(bad.stderr)")
        try "name = \"x\"\ncommand = [\"true\"]\ninputs = [\"missing.bin\"]\n".write(toFile: work + "/missing.toml", atomically: true, encoding: .utf8)
        let missing = try run(["run", "--data-dir", b, work + "/missing.toml"])
        #expect(missing.status == 1 && missing.stderr.contains("missing.bin"))
        let unknown = try run(["job", "cancel", "--data-dir", b, "abcdef"])
        #expect(unknown.status == 1 && unknown.stderr.contains("no job abcdef"))
        #expect(try run(["jobs", "--data-dir", b, "--json"]).stdout == listed.stdout)

        // The ledger: the receipt is held, scores and points follow from it, export and verify.
        let status = try json(try run(["ledger", "status", "--data-dir", b, "--json"]).stdout)
        #expect(status["receipts"] as? Int == 1 && status["own_receipts"] as? Int == 1)
        let top = try run(["reputation", "--data-dir", b, "--json"])
        let scores = try #require(try JSONSerialization.jsonObject(with: Data(top.stdout.utf8)) as? [[String: Any]])
        let providerKey = try #require(scores.first?["peer"] as? String)
        #expect((scores.first?["value"] as? Double ?? 0) > 0.5)
        let explained = try run(["reputation", "--data-dir", b, String(providerKey.prefix(10)), "--explain"])
        #expect(explained.status == 0 && explained.stdout.contains("direct experience: 1 events") && explained.stdout.contains("score = alpha / (alpha + beta)"),
                "\(explained.stdout)\(explained.stderr)")
        let rewards = try run(["rewards", "--data-dir", b, "--json"])
        let entries = try #require(try JSONSerialization.jsonObject(with: Data(rewards.stdout.utf8)) as? [[String: Any]])
        #expect(entries.contains { $0["peer"] as? String == providerKey && $0["jobs_provided"] as? Int == 1 })
        #expect(entries.contains { $0["jobs_rented"] as? Int == 1 && ($0["spent_millipoints"] as? Int ?? -1) >= 0 })
        let export = work + "/receipts.jsonl"
        #expect(try run(["ledger", "export", "--data-dir", b, "--out", export]).status == 0)
        #expect(try String(contentsOfFile: export, encoding: .utf8).split(separator: "\n").count == 1)
        let verify = try json(try run(["ledger", "verify", "--data-dir", b, "--json"]).stdout)
        #expect(verify["ok"] as? Bool == true && verify["receipts"] as? Int == 1)
        let nobody = try run(["reputation", "--data-dir", b, "ffff0000"])
        #expect(nobody.status == 1 && nobody.stderr.contains("no peer ffff0000"))
    }

    @Test("a ledger process killed with SIGKILL in the middle of a 10,000-receipt ingest loses nothing it acknowledged")
    func ledgerKill() throws {
        let dir = try tempDataDir()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let db = dir + "/ledger.sqlite"
        let p = Process()
        p.executableURL = URL(fileURLWithPath: gpumeshBinary)
        p.arguments = ["ledger", "ingest-test", "--db", db, "--count", "10000", "--batch", "50"]
        let out = closeOnExecPipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        // Kill it at a moment chosen at random, once it has acknowledged something.
        let killAt = Int.random(in: 500...6_000)
        var acked = 0
        var buffer = ""
        let deadline = Date().addingTimeInterval(120)
        while acked < killAt && Date() < deadline && p.isRunning {
            let data = out.fileHandleForReading.availableData
            if data.isEmpty { break }
            buffer += String(decoding: data, as: UTF8.self)
            while let nl = buffer.firstIndex(of: "\n") {
                let line = buffer[..<nl]
                buffer = String(buffer[buffer.index(after: nl)...])
                if line.hasPrefix("acked "), let n = Int(line.dropFirst(6)) { acked = max(acked, n) }
            }
        }
        kill(p.processIdentifier, SIGKILL)
        p.waitUntilExit()
        #expect(p.terminationReason == .uncaughtSignal || acked == 10_000)
        #expect(acked > 0)
        // Everything acknowledged is there, nothing is damaged, and whole transactions only.
        let verify = try run(["ledger", "verify", "--db", db, "--json"])
        #expect(verify.status == 0, "\(verify.stdout)\(verify.stderr)")
        let v = try json(verify.stdout)
        let held = try #require(v["receipts"] as? Int)
        #expect(v["ok"] as? Bool == true)
        #expect(held >= acked && held <= 10_000 && held % 50 == 0, "acknowledged \(acked), held \(held)")
        // And the ingest can go on where it stopped: a second run stores the rest.
        let again = try run(["ledger", "ingest-test", "--db", db, "--count", "10000", "--batch", "500"], timeout: 120)
        #expect(again.status == 0)
        #expect(try json(try run(["ledger", "verify", "--db", db, "--json"]).stdout)["receipts"] as? Int == 10_000)
    }

    @Test("bench jobs --json prints round trip, sandbox start and transfer figures")
    func benchJobs() throws {
        let r = try run(["bench", "jobs", "--json", "--jobs", "3", "--input-mib", "4"], timeout: 150)
        if r.status != 0 && r.stderr.contains("sandbox does not work") { return }
        #expect(r.status == 0, "\(r.stderr)")
        let o = try json(r.stdout)
        for key in ["roundtrip_ms_p50", "roundtrip_ms_p99", "sandbox_start_ms_p50", "transfer_mb_per_s", "channel_mb_per_s"] {
            #expect((o[key] as? Double ?? 0) > 0, "\(key)")
        }
        #expect((o["roundtrip_ms_p99"] as? Double ?? 0) >= (o["roundtrip_ms_p50"] as? Double ?? 1))
        #expect(o["jobs"] as? Int == 3)
    }

    @Test("netns-mesh.sh brings up nodes in separate network namespaces that find each other, and down removes everything",
          .enabled(if: networkNamespacesWork, "network namespaces need root and iproute2 (ip netns add failed or ip is missing)"))
    func netnsMesh() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Bootstrap/netns-mesh.sh").path
        let prefix = "gmt" + String(UUID().uuidString.prefix(4)).lowercased()
        let state = "/tmp/\(prefix)-state"
        let env = ["GPUMESH_BIN": gpumeshBinary, "GPUMESH_NETNS_PREFIX": prefix, "GPUMESH_NETNS_STATE": state]
        func sh(_ args: [String]) throws -> RunResult { try runProgram("/bin/bash", [script] + args, environment: env, timeout: 120) }
        let up = try sh(["up", "3"])
        defer { _ = try? sh(["down"]) }
        #expect(up.status == 0, "\(up.stdout)\(up.stderr)")
        #expect(up.stdout.contains("udp:10.77.0.1:7400"))
        // Every node ends up knowing the two others, over addresses inside the namespaces.
        var known: [Int] = []
        for _ in 0..<100 {
            let status = try sh(["status"])
            known = status.stdout.split(separator: "\n").compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["dht_peers"] as? Int
            }
            if known.count == 3 && known.allSatisfy({ $0 >= 2 }) { break }
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(known == [2, 2, 2], "routing-table sizes \(known)")
        let down = try sh(["down"])
        #expect(down.status == 0)
        let namespaces = try runProgram("/usr/bin/env", ["ip", "netns", "list"], timeout: 10)
        #expect(!namespaces.stdout.contains(prefix), "namespaces left: \(namespaces.stdout)")
        #expect(!FileManager.default.fileExists(atPath: state))
        #expect(try sh(["up", "1"]).stderr.contains("N from 2 to 200"))
    }

    @Test("testnet: 30 real peers for 20 s under churn and loss produce a report whose counts add up; bad arguments get precise errors")
    func testnet() throws {
        let home = try tempDataDir()
        #expect(try run(["init", "--data-dir", home]).status == 0)
        let dir = (home as NSString).deletingLastPathComponent
        let offer = try json(try run(["offer", "show", "--data-dir", home, "--simulate-gpus", "1x rtx-4090", "--json"]).stdout)
        let sandbox = (offer["executors"] as? [String])?.contains("sandbox") == true
        let r = try run(["testnet", "--peers", "30", "--duration", "20s", "--churn", "0.2", "--loss", "0.01", "--jobs-per-min", sandbox ? "6" : "0",
                         "--report", dir + "/report.json"], timeout: 240)
        #expect(r.status == 0, "\(r.stderr)")
        let data = try #require(FileManager.default.contents(atPath: dir + "/report.json"))
        let o = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let l = try #require(o["lookups"] as? [String: Any]), g = try #require(o["gossip"] as? [String: Any])
        let j = try #require(o["jobs"] as? [String: Any]), c = try #require(o["churn"] as? [String: Any]), led = try #require(o["ledger"] as? [String: Any])
        func int(_ d: [String: Any], _ k: String) -> Int { d[k] as? Int ?? -1 }
        #expect(int(l, "lookups") == int(l, "succeeded") + int(l, "failed") && int(l, "lookups") >= 40)
        #expect((l["success"] as? Double ?? 0) >= 0.9, "\(l)")
        #expect(int(g, "messages") >= 15 && int(g, "deliveries") <= int(g, "expected_deliveries") && (g["coverage"] as? Double ?? 0) >= 0.9)
        #expect(int(j, "started") == int(j, "completed") + int(j, "failed") && int(j, "retried") <= int(j, "started"))
        if sandbox { #expect(int(j, "started") >= 1 && int(j, "completed") >= 1, "\(j)") }
        #expect(int(c, "left") == int(c, "joined") && int(c, "left") >= 1 && int(c, "live_at_end") == 30)
        #expect(int(led, "peers_checked") == 30 && int(led, "peers_holding_all") <= 30 && int(led, "receipts") >= int(j, "completed"))
        #expect(led["points_agree"] as? Bool == true)
        #expect(((o["counters"] as? [String: Int])?["datagrams_dropped_injected"] ?? 0) > 0, "the injected loss dropped something")
        for (bad, message) in [(["--duration", "soon"], "--duration must be 1s to 24h"), (["--peers", "1"], "--peers must be 2 to 500"),
                               (["--loss", "0.9"], "--loss must be 0 to 0.5"), (["--gpus", "3x nonsense-gpu"], "--gpus")] {
            let bad = try run(["testnet"] + bad)
            #expect(bad.status != 0 && bad.stderr.contains(message), "\(bad.stderr)")
        }
    }

    @Test("simulate: the same seed gives a byte-identical report whose figures add up; bad arguments get precise errors")
    func simulate() throws {
        let dir = try tempDataDir()
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let args = ["simulate", "--peers", "200", "--churn", "0.2", "--loss", "0.02", "--partition", "0.25", "--sybils", "0.1",
                    "--lookups", "100", "--gossip-peers", "150", "--seed", "7"]
        let a = try run(args + ["--report", dir + "/a.json"], timeout: 300)
        let b = try run(args + ["--report", dir + "/b.json"], timeout: 300)
        #expect(a.status == 0 && b.status == 0, "\(a.stderr)\(b.stderr)")
        let ra = try #require(FileManager.default.contents(atPath: dir + "/a.json"))
        #expect(ra == FileManager.default.contents(atPath: dir + "/b.json"))
        let other = try run(Array(args.dropLast()) + ["8", "--report", dir + "/c.json"], timeout: 300)
        #expect(other.status == 0 && FileManager.default.contents(atPath: dir + "/c.json") != ra, "another seed, another run")
        let r = try #require(try JSONSerialization.jsonObject(with: ra) as? [String: Any])
        let churn = try #require(r["churn"] as? [String: Any]), lookups = try #require(r["lookups"] as? [String: Any])
        #expect(churn["left"] as? Int == churn["joined"] as? Int && churn["live"] as? Int == 200 && (churn["left"] as? Int ?? 0) > 30)
        #expect(lookups["lookups"] as? Int == 100 && (lookups["succeeded"] as? Int ?? 101) <= 100 && (lookups["success"] as? Double ?? 0) >= 0.95)
        let partition = try #require(r["partition"] as? [String: Any])
        let during = try #require(partition["during_cross_lookups"] as? [String: Any]), healed = try #require(partition["after_heal"] as? [String: Any])
        #expect(during["succeeded"] as? Int == 0, "no lookup crosses a partition")
        #expect((healed["success"] as? Double ?? 0) >= 0.95, "lookups cross again once it heals")
        let gossip = try #require(r["gossip"] as? [String: Any])
        #expect((gossip["coverage_mean"] as? Double ?? 0) > 0.9 && (gossip["latency_ms_p50"] as? Double ?? 0) > 0)
        let rep = try #require(r["reputation"] as? [String: Any])
        #expect(rep["sybils_above_honest_median"] as? Int == 0 && (rep["sybils"] as? Int ?? 0) == 100)
        for (bad, message) in [(["--churn", "2"], "--churn must be 0 to 1"), (["--peers", "1"], "--peers must be 2 to 100000"),
                               (["--loss", "0.9"], "--loss must be 0 to 0.5"), (["--gossip-peers", "1"], "--gossip-peers")] {
            let r = try run(["simulate"] + bad)
            #expect(r.status != 0 && r.stderr.contains(message), "\(bad): \(r.stderr)")
        }
    }

    @Test("bench explorer --json prints every route's latency over a ledger and a throughput figure")
    func benchExplorer() throws {
        let r = try run(["bench", "explorer", "--json", "--receipts", "2000", "--peers", "100", "--requests", "3", "--concurrency", "2"], timeout: 180)
        #expect(r.status == 0, "\(r.stderr)")
        let o = try json(r.stdout)
        for route in ["api_overview", "api_capacity", "api_peer", "api_peers", "api_rewards", "api_jobs", "metrics", "page_overview", "page_peer", "page_peers", "page_rewards"] {
            let p50 = o[route + "_p50_ms"] as? Double ?? 0, p99 = o[route + "_p99_ms"] as? Double ?? 0
            #expect(p50 > 0 && p99 >= p50, "\(route)")
        }
        #expect((o["overview_requests_per_s"] as? Double ?? 0) > 0 && o["receipts"] as? Int == 2000)
        let bad = try run(["bench", "explorer", "--requests", "0"])
        #expect(bad.status != 0 && bad.stderr.contains("--requests"))
    }

    @Test("bench ledger --json prints ingest against the signature floor, recompute, rewards and size")
    func benchLedger() throws {
        let r = try run(["bench", "ledger", "--json", "--ingest", "500", "--receipts", "2000", "--peers", "200", "--batch", "100"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let o = try json(r.stdout)
        for key in ["ingest_receipts_per_s", "signature_floor_receipts_per_s", "reputation_recompute_ms", "rewards_epoch_ms", "db_mib_per_100k_receipts",
                    "store_only_receipts_per_s"] {
            #expect((o[key] as? Double ?? 0) > 0, "\(key)")
        }
        // Storing includes verifying, so it cannot beat verifying alone by much.
        #expect((o["ingest_receipts_per_s"] as? Double ?? .infinity) < 1.2 * (o["signature_floor_receipts_per_s"] as? Double ?? 0))
        #expect(o["peers_scored"] as? Int == 200 && o["receipts"] as? Int == 2000)
        let bad = try run(["bench", "ledger", "--peers", "1"])
        #expect(bad.status != 0 && bad.stderr.contains("--peers"))
    }

    @Test("debug publish on one node is delivered on another; gossip stats shows it; a bad topic is refused")
    func gossipCommands() throws {
        let a = try tempDataDir(), b = try tempDataDir()
        #expect(try run(["init", "--data-dir", a]).status == 0)
        #expect(try run(["init", "--data-dir", b]).status == 0)
        let first = try Background(["node", "--data-dir", a, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json"])
        defer { _ = first.stop() }
        let contact = try #require(first.firstLine["contact"] as? String)
        let second = try Background(["node", "--data-dir", b, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0", "--json", "--bootstrap", contact])
        defer { _ = second.stop() }
        var sampled = false
        for _ in 0..<100 where !sampled {
            sampled = (try json(try run(["gossip", "stats", "--data-dir", a, "--json"]).stdout)["sample"] as? [Any])?.count == 1
            if !sampled { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(sampled)
        let published = try run(["debug", "publish", "--data-dir", a, "debug", "hello, mesh", "--json"])
        #expect(published.status == 0, "\(published.stderr)")
        #expect((try json(published.stdout)["id"] as? String)?.count == 64)
        var delivered = 0
        for _ in 0..<50 where delivered == 0 {
            let stats = try json(try run(["gossip", "stats", "--data-dir", b, "--json"]).stdout)["stats"] as? [String: Any]
            delivered = stats?["delivered"] as? Int ?? 0
            if delivered == 0 { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(delivered == 1)
        let human = try run(["gossip", "stats", "--data-dir", b])
        #expect(human.status == 0 && human.stdout.contains("1 delivered"))
        let bad = try run(["debug", "publish", "--data-dir", a, "rumours", "x"])
        #expect(bad.status != 0 && bad.stderr.contains("'rumours' is not a topic"))
    }

    @Test("init --id-difficulty makes an identity that meets the puzzle; a node whose ID misses its mesh's difficulty refuses to start")
    func idPuzzle() throws {
        let dir = try tempDataDir()
        let made = try run(["init", "--data-dir", dir, "--id-difficulty", "6", "--json"])
        #expect(made.status == 0, "\(made.stderr)")
        let hex = try #require(try json(made.stdout)["peer_id"] as? String)
        let id = try #require(PeerID(hex: hex))
        #expect(id.puzzleBits >= 6)
        #expect(try String(contentsOfFile: dir + "/config.toml", encoding: .utf8).contains("id_difficulty = 6"))
        let plain = try tempDataDir()
        #expect(try run(["init", "--data-dir", plain]).status == 0)
        // Raise the plain identity's mesh to a difficulty it almost surely misses (1 in 2^20 meets it).
        let config = try String(contentsOfFile: plain + "/config.toml", encoding: .utf8).replacingOccurrences(of: "id_difficulty = 0", with: "id_difficulty = 20")
        try config.write(toFile: plain + "/config.toml", atomically: true, encoding: .utf8)
        let refused = try run(["node", "--data-dir", plain, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0"])
        #expect(refused.status != 0)
        #expect(refused.stderr.contains("--id-difficulty 20"), "\(refused.stderr)")
        #expect(!FileManager.default.fileExists(atPath: plain + "/node.sock"))
    }

    @Test("the demo runs a local mesh in which every peer reaches every other, and exits 0")
    func demo() throws {
        let r = try run(["demo", "--nodes", "6", "--json"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        #expect(s["peers"] as? Int == 6)
        #expect(s["probes"] as? Int == 30)
        #expect(s["probes_answered"] as? Int == 30)
        #expect(s["info_answered"] as? Int == 6)
        #expect(s["channels_verified"] as? Int == 6)
        #expect(s["dht_joined"] as? Int == 6)
        #expect(s["dht_record_readers"] as? Int == 5)
        #expect((s["mesh"] as? String)?.count == 16, "a fresh private mesh")
        #expect((s["problems"] as? [Any])?.isEmpty == true)
        // Act two: found providers, jobs that ran, receipts spread, points that agree.
        let market = try #require(s["market"] as? [String: Any])
        if market["sandbox"] as? Bool == true {
            let finds = try #require(market["finds"] as? [[String: Any]])
            #expect(finds.count == 2 && finds.allSatisfy { ($0["offers"] as? [Int])?.isEmpty == false })
            #expect((finds.first?["offers"] as? [Int]) == [2])  // the one h100 provider among peers #2-#5
            let jobs = try #require(market["jobs"] as? [[String: Any]])
            #expect(jobs.count == 4 && jobs.allSatisfy { $0["state"] as? String == "completed" && $0["output_ok"] as? Bool == true && $0["receipt"] is String })
            #expect(Set(jobs.compactMap { $0["provider"] as? Int }) == [2, 3])
            let views = try #require(market["views"] as? [[String: Any]])
            #expect(views.count == 3 && views.allSatisfy { $0["receipts_held"] as? Int == 4 })
            #expect(market["points_agree"] as? Bool == true)
            #expect(market["receipts_spread_ms"] is Double)
        } else {
            #expect((market["skipped"] as? String)?.contains("sandbox") == true)
        }
        let full = try run(["demo"], timeout: 120)
        #expect(full.status == 0, "\(full.stdout)\(full.stderr)")
        if !full.stdout.contains("jobs: skipped") {
            for phrase in ["renter #0 looked for h100-80gb", "sandboxed, output verified", "co-signed receipts reached", "points agree exactly"] {
                #expect(full.stdout.contains(phrase), "\(phrase)")
            }
        }
        let text = try run(["demo", "--nodes", "3"], timeout: 120)
        #expect(text.status == 0)
        #expect(text.stdout.contains("reached 2/2 peers"))
        #expect(text.stdout.contains("proved its identity and echoed"))
        #expect(text.stdout.contains("2/2 others read it back"))
        #expect(try run(["demo", "--nodes", "1"]).status != 0)
    }

    @Test("mesh-key new writes a 0600 key once; nodes in that mesh answer only its members")
    func privateMesh() throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        let keyFile = dir + "/mesh.key"
        let made = try run(["mesh-key", "new", "--out", keyFile, "--json"])
        #expect(made.status == 0)
        let fingerprint = try #require(json(made.stdout)["fingerprint"] as? String)
        #expect(try FileManager.default.attributesOfItem(atPath: keyFile)[.posixPermissions] as? Int == 0o600)
        #expect(try run(["mesh-key", "new", "--out", keyFile]).status == 1, "never overwrites")
        #expect(try run(["mesh-key", "show", keyFile]).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == fingerprint)

        let node = try Background(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
                                   "--mesh-key", keyFile, "--json", "--log-level", "warning"])
        #expect(node.firstLine["mesh"] as? String == fingerprint)
        let contact = try #require(node.firstLine["contact"] as? String)
        let member = try run(["debug", "ping", contact, "--mesh-key", keyFile, "--count", "2", "--json"])
        #expect(member.status == 0, "\(member.stderr)")
        #expect(try json(member.stdout)["answered"] as? Int == 2)
        let outsider = try run(["debug", "ping", contact, "--count", "1", "--timeout", "0.3"])
        #expect(outsider.status == 1)
        #expect(outsider.stdout.contains("no answer"))
        let status = try json(try run(["status", "--data-dir", dir, "--json"]).stdout)
        let counters = try #require(status["counters"] as? [String: Int])
        #expect(counters["probes_answered"] == 2)
        #expect((counters["datagrams_dropped_auth_failed"] ?? 0) >= 1)
        #expect(node.stop() == 0)
        #expect(try run(["debug", "ping", "gpm1:zz@udp:127.0.0.1:1"]).status != 0)
    }

    @Test("debug echo answers a channel opened by the library, proving its identity, in its mesh only")
    func echoInterop() async throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        let keyFile = dir + "/mesh.key"
        #expect(try run(["mesh-key", "new", "--out", keyFile]).status == 0)
        let echo = try Background(["debug", "echo", "--listen", "127.0.0.1:0", "--data-dir", dir, "--mesh-key", keyFile, "--json"])
        let contact = try Contact(parsing: try #require(echo.firstLine["contact"] as? String))
        let id = try json(try run(["id", "--data-dir", dir, "--json"]).stdout)
        #expect(contact.peerID.hex == id["peer_id"] as? String, "the echo server uses the data directory's identity")

        let loop = try EventLoop(name: "interop")
        defer { loop.shutdown() }
        let mesh = try MeshKey.read(from: keyFile)
        let channel = try await SecureChannel.connect(on: loop, to: contact, identity: ChannelIdentity(SigningKey()), meshKey: mesh)
        let replies = try await channel.messages()
        let big = SecureRandom.bytes(300_000)
        try await channel.send(Array("hello".utf8))
        try await channel.send(big)
        var got: [[UInt8]] = []
        for try await r in replies { got.append(r); if got.count == 2 { break } }
        #expect(got == [Array("hello".utf8), big])
        channel.closeFromAnyThread()
        await #expect(throws: SecureChannel.Failure.peerClosedDuringHandshake) {
            try await SecureChannel.connect(on: loop, to: contact, identity: ChannelIdentity(SigningKey()), meshKey: .publicMesh)
        }
        #expect(echo.stop() == 0)
    }

    @Test("an independent Python peer (stock Noise library + PyNaCl) speaks channels, datagrams and the DHT with the binary",
          .enabled(if: pythonInteropAvailable, "python3 with noiseprotocol and pynacl is needed (Bootstrap/setup.sh installs them)"))
    func pythonInterop() throws {
        let dir = try tempDataDir()
        #expect(try run(["init", "--data-dir", dir]).status == 0)
        let keyFile = dir + "/mesh.key"
        #expect(try run(["mesh-key", "new", "--out", keyFile]).status == 0)
        let echo = try Background(["debug", "echo", "--listen", "127.0.0.1:0", "--mesh-key", keyFile, "--json"])
        let node = try Background(["node", "--data-dir", dir, "--udp", "127.0.0.1:0", "--tcp", "127.0.0.1:0",
                                   "--mesh-key", keyFile, "--json", "--log-level", "warning"])
        func python(_ args: [String]) throws -> (Int32, [String: Any]) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", interopScript] + args
            let out = closeOnExecPipe()
            p.standardOutput = out
            try p.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            p.waitUntilExit()
            return (p.terminationStatus, try json(String(decoding: data, as: UTF8.self)))
        }
        let channel = try python(["channel", "--contact", try #require(echo.firstLine["contact"] as? String), "--mesh-key", keyFile])
        #expect(channel.0 == 0, "\(channel.1)")
        #expect(channel.1["echoed_bytes"] as? Int == 200_017)
        let datagram = try python(["datagram", "--contact", try #require(node.firstLine["contact"] as? String), "--mesh-key", keyFile])
        #expect(datagram.0 == 0, "\(datagram.1)")
        #expect(datagram.1["contact"] as? String == node.firstLine["contact"] as? String)
        let outsider = try python(["channel", "--contact", try #require(echo.firstLine["contact"] as? String)])
        #expect(outsider.0 == 1, "the public mesh key must not open a private mesh's channel")
        let counters = try #require(try json(try run(["status", "--data-dir", dir, "--json"]).stdout)["counters"] as? [String: Int])
        #expect(counters["probes_answered"] == 1 && counters["cookie_challenges_sent"] == 1 && counters["info_answered"] == 1)
        #expect(counters["datagrams_dropped_replay"] == 1)
        // The DHT: the Python peer is challenged, answered, checked, and its record stored and read back.
        let dht = try python(["dht", "--contact", try #require(node.firstLine["contact"] as? String), "--mesh-key", keyFile,
                              "--name", "model/rtx-4090"])
        #expect(dht.0 == 0, "\(dht.1)")
        #expect(dht.1["answered_the_nodes_ping"] as? Bool == true)
        let got = try run(["dht", "get", "--data-dir", dir, "model/rtx-4090", "--json"], timeout: 30)
        let records = try #require(try json(got.stdout)["records"] as? [[String: Any]])
        #expect(records.count == 1 && records.first?["value"] as? String == "from python")
        #expect(records.first?["publisher"] as? String == dht.1["publisher"] as? String)
        #expect(echo.stop() == 0 && node.stop() == 0)
    }

    @Test("bench transport --json prints channel, AEAD, handshake and datagram figures")
    func benchTransport() throws {
        let r = try run(["bench", "transport", "--seconds", "0.2", "--json"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        for key in ["channel_mb_per_s", "raw_aead_mb_per_s", "channel_to_raw_ratio", "handshake_us", "handshake_primitives_us",
                    "handshake_to_primitives_ratio"] {
            #expect((s[key] as? Double ?? 0) > 0, "\(key)")
        }
        for key in ["handshakes_per_s", "datagram_seal_open_per_s"] { #expect((s[key] as? Int ?? 0) > 0, "\(key)") }
    }

    @Test("bench loop --json prints one object with the loop's figures")
    func benchLoop() throws {
        let r = try run(["bench", "loop", "--seconds", "0.2", "--json"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        for key in ["udp_roundtrips_per_s", "cross_thread_submissions_per_s", "udp_echo_datagrams_per_s_window_32"] {
            #expect((s[key] as? Int ?? 0) > 0, "\(key)")
        }
        #expect((s["tcp_loopback_mb_per_s"] as? Double ?? 0) > 0)
        #expect(r.stdout.split(separator: "\n").count == 1)
    }
}

@Suite("gpumesh bench dht", .timeLimit(.minutes(3)))
struct DHTBenchTests {
    @Test("bench gossip --json prints coverage, latency, datagrams and duplicates")
    func benchGossip() throws {
        let r = try run(["bench", "gossip", "--json", "--nodes", "20", "--messages", "5", "--interval", "50"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        #expect(s["nodes"] as? Int == 20 && s["messages"] as? Int == 5)
        #expect(s["coverage"] as? Double == 1.0, "\(r.stdout)")
        for key in ["latency_ms_p50", "latency_ms_p99", "datagrams_per_node_per_message"] { #expect((s[key] as? Double ?? 0) > 0, "\(key)") }
        #expect(s["duplicates_per_node_per_message"] is Double)
    }

    @Test("bench find --json prints recall, precision, latency and cost, with every match found")
    func benchFind() throws {
        let r = try run(["bench", "find", "--json", "--nodes", "30", "--providers", "15", "--queries", "16", "--warmup", "4"], timeout: 150)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        #expect(s["queries"] as? Int == 16 && s["nodes"] as? Int == 30 && s["providers"] as? Int == 15)
        #expect(s["recall"] as? Double == 1.0, "\(r.stdout)")
        #expect(s["precision"] as? Double == 1.0, "\(r.stdout)")
        for key in ["latency_ms_p50", "latency_ms_p99", "records_fetched_per_query", "datagrams_per_query"] {
            #expect((s[key] as? Double ?? 0) > 0, "\(key)")
        }
        #expect((s["shards_read_per_query"] as? Double ?? 0) >= 32)
        let bad = try run(["bench", "find", "--nodes", "10", "--providers", "11"])
        #expect(bad.status != 0 && bad.stderr.contains("--providers must be 1 to --nodes"))
    }

    @Test("bench dht --json, over sockets and simulated, prints the issue's keys with sane values")
    func benchDHT() throws {
        for args in [["--nodes", "24", "--lookups", "30", "--warmup", "10"], ["--simulate", "--nodes", "60", "--lookups", "30"]] {
            let r = try run(["bench", "dht", "--json"] + args, timeout: 150)
            #expect(r.status == 0, "\(r.stderr)")
            let s = try json(r.stdout)
            #expect(s["nodes"] as? Int == Int(args[args.firstIndex(of: "--nodes")! + 1]))
            #expect(s["lookups"] as? Int == 30)
            #expect(s["success_rate"] as? Double == 1.0, "\(r.stdout)")
            for key in ["hops_p50", "hops_p99"] { #expect((s[key] as? Int ?? 0) >= 1, "\(key)") }
            for key in ["latency_ms_p50", "latency_ms_p99", "messages_per_lookup", "cpu_ms_per_lookup", "rss_mib_per_node"] {
                #expect(s[key] is Double, "\(key)")
            }
            #expect((s["messages_per_lookup"] as? Double ?? 0) >= 2)
        }
    }
}
