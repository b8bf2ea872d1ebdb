import Foundation
import MeshCore
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

struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs the binary to completion with a time limit.
func run(_ arguments: [String], environment: [String: String] = [:], timeout: TimeInterval = 60) throws -> RunResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: gpumeshBinary)
    p.arguments = arguments
    var env = ProcessInfo.processInfo.environment
    env["GPUMESH_HOME"] = nil
    for (k, v) in environment { env[k] = v }
    p.environment = env
    let out = Pipe(), err = Pipe()
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

@Suite("gpumesh CLI", .timeLimit(.minutes(3)))
struct CLITests {
    @Test("the binary exists and prints help and its version")
    func help() throws {
        #expect(FileManager.default.isExecutableFile(atPath: gpumeshBinary), "build it first: swift build")
        let r = try run(["--help"])
        #expect(r.status == 0)
        for sub in ["init", "id", "node", "status", "demo", "bench"] { #expect(r.stdout.contains(sub)) }
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
        let out = Pipe()
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

    @Test("the demo runs a local mesh in which every peer reaches every other, and exits 0")
    func demo() throws {
        let r = try run(["demo", "--nodes", "6", "--json"], timeout: 120)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try json(r.stdout)
        #expect(s["peers"] as? Int == 6)
        #expect(s["probes"] as? Int == 30)
        #expect(s["probes_answered"] as? Int == 30)
        #expect(s["tcp_verified"] as? Int == 6)
        #expect((s["problems"] as? [Any])?.isEmpty == true)
        let text = try run(["demo", "--nodes", "3"], timeout: 120)
        #expect(text.status == 0)
        #expect(text.stdout.contains("reached 2/2 peers"))
        #expect(try run(["demo", "--nodes", "1"]).status != 0)
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
