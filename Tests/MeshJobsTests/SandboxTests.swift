import Foundation
@testable import MeshJobs
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// The sandbox's tools, if this host has them and the sandbox works (user namespaces allowed).
private let sandboxTools: Sandbox.Tools? = {
    guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else { return nil }
    return tools
}()

private let asRoot = getuid() == 0

/// Runs `command` in the sandbox and collects what it printed.
private func run(_ command: [String], _ policy: SandboxPolicy) async throws -> (exit: JobExit, stdout: String, stderr: String) {
    let tools = try #require(sandboxTools)
    let argv = try Sandbox.commandLine(command, policy: policy, tools: tools)
    let out = Box(""), err = Box("")
    let exit: JobExit = try await withCheckedThrowingContinuation { continuation in
        do {
            _ = try JobProcess.start(argv, timeLimitSeconds: policy.timeLimitSeconds, onOutput: { stream, bytes in
                (stream == .stdout ? out : err).mutate { $0 += String(decoding: bytes, as: UTF8.self) }
            }, onExit: { continuation.resume(returning: $0) })
        } catch {
            continuation.resume(throwing: error)
        }
    }
    return (exit, out.value, err.value)
}

private func workDirectory() throws -> String {
    let path = "/tmp/gm-job-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Host processes whose command line contains `marker`.
private func processes(containing marker: String) -> Int {
    let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return entries.filter { e in
        guard e.first?.isNumber == true, let data = FileManager.default.contents(atPath: "/proc/\(e)/cmdline") else { return false }
        return String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self).contains(marker)
    }.count
}

@Suite("Sandbox executor", .enabled(if: sandboxTools != nil, "bubblewrap, prlimit (and setpriv as root) with user namespaces are needed"),
       .timeLimit(.minutes(2)), .serialized)
struct SandboxTests {
    @Test("a job works in /work with only its own environment; the system is read-only and its /tmp vanishes with it")
    func confinement() async throws {
        let dir = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "input\n".write(toFile: dir + "/in.txt", atomically: true, encoding: .utf8)
        let marker = "gm-marker-\(UUID().uuidString.prefix(8))"
        let script = """
        echo "seed=$SEED home=$HOME"; env | sort | tr '\\n' ' '; echo; id -u
        echo data > out.txt; mkdir -p sub; cp in.txt sub/copy.txt
        touch /usr/gm-test 2>/dev/null && echo WROTE-USR
        echo x > /tmp/\(marker) && echo TMP-OK
        """
        let r = try await run(["sh", "-c", script], SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30, environment: ["SEED": "7"]))
        #expect(r.exit.succeeded, "\(r.exit) \(r.stderr)")
        #expect(r.stdout.contains("seed=7 home=/work"))
        #expect(!r.stdout.contains("HOSTNAME=") && !r.stdout.contains("SWIFT") && !r.stdout.contains("/root"), "\(r.stdout)")
        if asRoot { #expect(r.stdout.contains("\n65534\n")) }
        #expect(!r.stdout.contains("WROTE-USR") && r.stdout.contains("TMP-OK"))
        #expect(try String(contentsOfFile: dir + "/out.txt", encoding: .utf8) == "data\n")
        #expect(try String(contentsOfFile: dir + "/sub/copy.txt", encoding: .utf8) == "input\n")
        #expect(!FileManager.default.fileExists(atPath: "/tmp/" + marker))
    }

    @Test("a job cannot reach the host's network: a port listening on the host's loopback is refused inside")
    func noNetwork() async throws {
        // A listener on the host's 127.0.0.1.
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #expect(fd >= 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && listen(fd, 4) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        #expect(bound)
        let port = UInt16(bigEndian: addr.sin_port)
        let dir = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; (echo hi > /dev/tcp/127.0.0.1/\(port)) 2>/dev/null && echo CONNECTED; exit 0"
        let r = try await run(["bash", "-c", script], SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30))
        #expect(r.exit.succeeded, "\(r.stderr)")
        #expect(!r.stdout.contains("CONNECTED"))
        #expect(r.stdout.split(separator: "\n") == ["lo"], "interfaces: \(r.stdout)")
        // Nothing reached the host's listener.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        #expect(accept(fd, nil, nil) == -1)
    }

    @Test("the provider's data directory and home are not visible, even under a bound system path")
    func dataDirectoryInvisible() async throws {
        let data = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: data) }
        try "secret\n".write(toFile: data + "/identity.key", atomically: true, encoding: .utf8)
        let dir = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let script = "cat \(data)/identity.key 2>&1; ls /root /home 2>&1; cat /etc/shadow 2>&1; ls /usr/share/doc >/dev/null && echo USR-OK; ls /etc/alternatives >/dev/null && echo ETC-OK"
        let policy = SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30, hiddenPaths: [data, "/usr/share/doc"])
        let r = try await run(["sh", "-c", script], policy)
        #expect(!r.stdout.contains("secret"))
        #expect(r.stdout.contains("No such file"))
        #expect(!r.stdout.contains("root:"), "shadow must not be readable")
        // A hidden path under /usr is an empty tmpfs; the rest of the system is there.
        #expect(r.stdout.contains("USR-OK") && r.stdout.contains("ETC-OK"))
        let hidden = try await run(["sh", "-c", "ls /usr/share/doc | wc -l"], policy)
        #expect(hidden.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0")
    }

    @Test("a job is killed at its time limit with all its children; cancel does the same")
    func timeLimitAndCancel() async throws {
        let dir = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let marker = "4242.\(Int.random(in: 100...999))"
        let r = try await run(["sh", "-c", "sleep \(marker) & sleep \(marker) & (sleep \(marker) &) ; wait"],
                              SandboxPolicy(workDirectory: dir, timeLimitSeconds: 1))
        #expect(r.exit.timedOut && !r.exit.succeeded)
        #expect(r.exit.wallSeconds < 10)
        for _ in 0..<50 where processes(containing: "sleep \(marker)") > 0 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(processes(containing: "sleep \(marker)") == 0)

        let tools = try #require(sandboxTools)
        let cancelMarker = "4343.\(Int.random(in: 100...999))"
        let policy = SandboxPolicy(workDirectory: dir, timeLimitSeconds: 60)
        let argv = try Sandbox.commandLine(["sh", "-c", "sleep \(cancelMarker) & wait"], policy: policy, tools: tools)
        let ended = Box<JobExit?>(nil)
        let job = try JobProcess.start(argv, timeLimitSeconds: 60, onOutput: { _, _ in }, onExit: { e in ended.mutate { $0 = e } })
        for _ in 0..<50 where processes(containing: "sleep \(cancelMarker)") == 0 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(processes(containing: "sleep \(cancelMarker)") > 0)
        job.cancel()
        for _ in 0..<100 where ended.value == nil { try await Task.sleep(for: .milliseconds(50)) }
        #expect(ended.value?.cancelled == true && ended.value?.timedOut == false)
        for _ in 0..<50 where processes(containing: "sleep \(cancelMarker)") > 0 { try await Task.sleep(for: .milliseconds(100)) }
        #expect(processes(containing: "sleep \(cancelMarker)") == 0)
    }

    @Test("memory, file size and process limits hold")
    func limits() async throws {
        let dir = try workDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // awk doubles a string until allocation fails under a 64 MiB address space.
        let memory = try await run(["awk", "BEGIN { s = \"a\"; while (1) s = s s }"],
                                   SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30, memoryBytes: 64 << 20))
        #expect(!memory.exit.succeeded && !memory.exit.timedOut, "\(memory.exit)")
        #expect(memory.stderr.contains("memory"), "\(memory.stderr)")
        // A 20 MB write stops at the 1 MiB file size limit.
        let size = try await run(["sh", "-c", "head -c 20000000 /dev/zero > big"],
                                 SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30, fileSizeBytes: 1 << 20))
        #expect(!size.exit.succeeded)
        let written = try FileManager.default.attributesOfItem(atPath: dir + "/big")[.size] as? Int ?? 0
        #expect(written <= 1 << 20)
        // Forty background processes under a limit of 12 (the sandbox itself takes three): forks
        // fail. (The limit counts every process of the job's uid, so the suite runs serialized.)
        let procs = try await run(["sh", "-c", "i=0; while [ $i -lt 40 ]; do sleep 2 & i=$((i+1)); done; wait; echo done"],
                                  SandboxPolicy(workDirectory: dir, timeLimitSeconds: 30, maxProcesses: 12))
        #expect(procs.stderr.lowercased().contains("fork") && !procs.stdout.contains("done"), "\(procs.stderr)")
    }
}
