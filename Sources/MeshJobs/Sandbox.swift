import Foundation
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// How the `sandbox` executor confines one job.
public struct SandboxPolicy: Sendable, Equatable {
    /// The job's work directory on the host; the job sees it as `/work` and can write nowhere else
    /// that outlives it (`/tmp` is a fresh tmpfs).
    public var workDirectory: String
    /// Wall-clock limit: the whole sandbox is killed then.
    public var timeLimitSeconds: Int
    /// Address-space limit (RLIMIT_AS) of every process in the job.
    public var memoryBytes: UInt64
    /// Largest file the job may write (RLIMIT_FSIZE).
    public var fileSizeBytes: UInt64
    /// Processes the job may have at once (RLIMIT_NPROC, counted for the uid it runs as).
    public var maxProcesses: Int
    /// The job's environment; nothing of the provider's is inherited. `PATH`, `HOME` (`/work`)
    /// and `TMPDIR` (`/tmp`) are set unless given.
    public var environment: [String: String]
    /// Device nodes bound in (the GPUs', only when the job asks for GPUs).
    public var devices: [String]
    /// Paths that must stay invisible even if they lie under a bound system directory (the
    /// provider's data directory and home): a tmpfs is mounted over each.
    public var hiddenPaths: [String]
    /// The uid and gid the job runs as when the provider runs as root (nobody by default);
    /// otherwise the job keeps the provider's uid and sees none of its files.
    public var unprivilegedUser: (uid: UInt32, gid: UInt32)

    /// A policy with the common defaults: 1 GiB of memory, 1 GiB files, 256 processes.
    public init(workDirectory: String, timeLimitSeconds: Int, memoryBytes: UInt64 = 1 << 30, fileSizeBytes: UInt64 = 1 << 30,
                maxProcesses: Int = 256, environment: [String: String] = [:], devices: [String] = [], hiddenPaths: [String] = [],
                unprivilegedUser: (uid: UInt32, gid: UInt32) = (65534, 65534)) {
        self.workDirectory = workDirectory
        self.timeLimitSeconds = timeLimitSeconds
        self.memoryBytes = memoryBytes
        self.fileSizeBytes = fileSizeBytes
        self.maxProcesses = maxProcesses
        self.environment = environment
        self.devices = devices
        self.hiddenPaths = hiddenPaths
        self.unprivilegedUser = unprivilegedUser
    }

    /// Equal when every field is.
    public static func == (a: SandboxPolicy, b: SandboxPolicy) -> Bool {
        a.workDirectory == b.workDirectory && a.timeLimitSeconds == b.timeLimitSeconds && a.memoryBytes == b.memoryBytes
            && a.fileSizeBytes == b.fileSizeBytes && a.maxProcesses == b.maxProcesses && a.environment == b.environment
            && a.devices == b.devices && a.hiddenPaths == b.hiddenPaths && a.unprivilegedUser == b.unprivilegedUser
    }
}

/// The `sandbox` executor: bubblewrap with every namespace unshared (no network but a private
/// loopback, its own PID space), the host's `/usr` read-only and nothing else of the host but a
/// few `/etc` files the dynamic linker and `id` need, a fresh `/tmp`, the work directory at
/// `/work`; limits set with `prlimit`; run as an unprivileged uid (`setpriv`) when the provider is
/// root. Killing the outermost process (bubblewrap) kills the whole sandbox: its child is PID 1
/// of the job's namespace and dies with it (`--die-with-parent`), taking every process in the
/// namespace along.
public enum Sandbox {
    /// The programs the executor needs, found on `PATH`.
    public struct Tools: Sendable, Equatable {
        /// bubblewrap.
        public var bwrap: String
        /// util-linux `prlimit`.
        public var prlimit: String
        /// util-linux `setpriv` (needed only when running as root).
        public var setpriv: String?

        /// The tools at these paths.
        public init(bwrap: String, prlimit: String, setpriv: String?) {
            self.bwrap = bwrap
            self.prlimit = prlimit
            self.setpriv = setpriv
        }

        /// Finds the tools on `PATH`; the error names what is missing.
        public static func find(path: String? = ProcessInfo.processInfo.environment["PATH"]) -> Result<Tools, SandboxError> {
            guard let bwrap = GPUDetector.find("bwrap", in: path) else { return .failure(.missingTool("bwrap (Debian package bubblewrap)")) }
            guard let prlimit = GPUDetector.find("prlimit", in: path) else { return .failure(.missingTool("prlimit (Debian package util-linux)")) }
            let setpriv = GPUDetector.find("setpriv", in: path)
            if getuid() == 0 && setpriv == nil { return .failure(.missingTool("setpriv (Debian package util-linux), needed when running as root")) }
            return .success(Tools(bwrap: bwrap, prlimit: prlimit, setpriv: setpriv))
        }
    }

    /// Why the sandbox cannot run here.
    public enum SandboxError: Error, Equatable, CustomStringConvertible {
        /// A program is missing.
        case missingTool(String)
        /// The probe job did not succeed (e.g. user namespaces are disabled).
        case probeFailed(String)

        /// Words for people.
        public var description: String {
            switch self {
            case .missingTool(let t): "missing \(t)"
            case .probeFailed(let why): "the sandbox does not work on this host: \(why)"
            }
        }
    }

    /// `/etc` files bound read-only when present: the dynamic linker's cache, the alternatives
    /// symlinks Debian resolves programs through, users and groups (no passwords), the time zone.
    static let etcFiles = ["/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives", "/etc/passwd", "/etc/group",
                           "/etc/nsswitch.conf", "/etc/localtime"]
    /// Top-level directories that merged-/usr systems make symlinks into `/usr`.
    static let usrLinks = ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"]

    /// The full argument vector (program first) that runs `command` under `policy`.
    /// `runningAsRoot` chooses whether the job drops to `policy.unprivilegedUser`; `otherProcesses`
    /// is how many processes the job's uid already has (added to the process limit, which the
    /// kernel counts over the whole uid).
    public static func arguments(command: [String], policy: SandboxPolicy, tools: Tools, runningAsRoot: Bool,
                                 otherProcesses: Int = 0) -> [String] {
        var argv: [String] = []
        if runningAsRoot, let setpriv = tools.setpriv {
            argv += [setpriv, "--reuid=\(policy.unprivilegedUser.uid)", "--regid=\(policy.unprivilegedUser.gid)", "--clear-groups", "--"]
        }
        let nproc = policy.maxProcesses + otherProcesses
        argv += [tools.prlimit, "--as=\(policy.memoryBytes)", "--fsize=\(policy.fileSizeBytes)", "--nproc=\(nproc)", "--core=0", "--"]
        argv += [tools.bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--hostname", "gpumesh-job", "--clearenv"]
        var env = policy.environment
        env["PATH"] = env["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        env["HOME"] = env["HOME"] ?? "/work"
        env["TMPDIR"] = env["TMPDIR"] ?? "/tmp"
        for (k, v) in env.sorted(by: { $0.key < $1.key }) { argv += ["--setenv", k, v] }
        argv += ["--ro-bind", "/usr", "/usr"]
        let fm = FileManager.default
        for dir in usrLinks {
            if let target = try? fm.destinationOfSymbolicLink(atPath: dir) {
                argv += ["--symlink", target, dir]
            } else if fm.fileExists(atPath: dir) {
                argv += ["--ro-bind", dir, dir]
            }
        }
        for file in etcFiles { argv += ["--ro-bind-try", file, file] }
        argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for device in policy.devices { argv += ["--dev-bind", device, device] }
        for hidden in policy.hiddenPaths where isUnder(hidden, boundRoots) { argv += ["--tmpfs", hidden] }
        argv += ["--bind", policy.workDirectory, "/work", "--chdir", "/work", "--"]
        return argv + command
    }

    /// Hands the work directory (and everything in it) to the uid the job runs as, when the
    /// provider is root; otherwise the job already owns it.
    public static func prepareWorkDirectory(_ path: String, policy: SandboxPolicy, runningAsRoot: Bool) throws {
        guard runningAsRoot else { return }
        let (uid, gid) = policy.unprivilegedUser
        func own(_ p: String) throws {
            guard lchown(p, uid, gid) == 0 else { throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: p]) }
        }
        try own(path)
        let items = FileManager.default.enumerator(atPath: path)
        while let item = items?.nextObject() as? String { try own(path + "/" + item) }
    }

    /// Prepares `policy.workDirectory` for the job's uid and returns the command line that runs
    /// `command` there as this process may: a root provider's job drops to `unprivilegedUser`;
    /// otherwise the job keeps this uid. Either way the kernel's process limit counts every process
    /// of that uid, so the limit is set to the job's allowance on top of those running now.
    public static func commandLine(_ command: [String], policy: SandboxPolicy, tools: Tools) throws -> [String] {
        let root = getuid() == 0
        try prepareWorkDirectory(policy.workDirectory, policy: policy, runningAsRoot: root)
        let uid = root ? policy.unprivilegedUser.uid : getuid()
        return arguments(command: command, policy: policy, tools: tools, runningAsRoot: root, otherProcesses: processCount(uid: uid))
    }

    /// Runs `true` in a sandbox to learn whether the executor works on this host.
    public static func probe(tools: Tools, scratch: String = NSTemporaryDirectory()) -> Result<Void, SandboxError> {
        let dir = scratch + "/gpumesh-probe-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let policy = SandboxPolicy(workDirectory: dir, timeLimitSeconds: 10, memoryBytes: 256 << 20)
        let argv: [String]
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            argv = try commandLine(["sh", "-c", "echo ok > probe"], policy: policy, tools: tools)
        } catch {
            return .failure(.probeFailed("cannot prepare \(dir): \(error)"))
        }
        let done = DispatchSemaphore(value: 0)
        let said = Box("")
        let result = Box<JobExit?>(nil)
        do {
            _ = try JobProcess.start(argv, timeLimitSeconds: 10, onOutput: { _, b in said.mutate { $0 += String(decoding: b, as: UTF8.self) } },
                                     onExit: { exit in result.mutate { $0 = exit }; done.signal() })
        } catch {
            return .failure(.probeFailed("\(error)"))
        }
        done.wait()
        guard let exit = result.value, exit.succeeded, (try? String(contentsOfFile: dir + "/probe", encoding: .utf8)) == "ok\n" else {
            return .failure(.probeFailed(said.value.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? "the probe job failed" : said.value))
        }
        return .success(())
    }

    /// Host directories the sandbox can see (read-only).
    static let boundRoots = ["/usr", "/etc"]

    static func isUnder(_ path: String, _ roots: [String]) -> Bool {
        let p = (path as NSString).standardizingPath
        return roots.contains { p == $0 || p.hasPrefix($0 + "/") }
    }

    /// How many processes `uid` has now (from /proc).
    public static func processCount(uid: uid_t = getuid()) -> Int {
        // A /proc/PID directory is owned by the process's uid: one stat per process instead of
        // reading and parsing its status file (this runs before every job).
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        var n = 0
        var st = stat()
        for e in entries where e.first?.isNumber == true {
            if stat("/proc/" + e, &st) == 0, st.st_uid == uid { n += 1 }
        }
        return n
    }

    /// The descendants of `pid` now (from each /proc/PID/stat's parent field), nearest first.
    public static func descendants(of pid: pid_t) -> [pid_t] {
        var children: [pid_t: [pid_t]] = [:]
        for e in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where e.first?.isNumber == true {
            guard let stat = try? String(contentsOfFile: "/proc/\(e)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { continue }
            // "pid (comm) state ppid ...": the name may hold spaces or parentheses, so read after the last ')'.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 1, let ppid = pid_t(fields[1]), let child = pid_t(e) else { continue }
            children[ppid, default: []].append(child)
        }
        var out: [pid_t] = []
        var frontier = [pid]
        while let p = frontier.popLast() {
            for c in children[p] ?? [] where !out.contains(c) {
                out.append(c)
                frontier.append(c)
            }
        }
        return out
    }
}

/// How a job's process ended.
public struct JobExit: Sendable, Equatable {
    /// The exit status, or the signal number if `signaled`.
    public var status: Int32
    /// True if a signal ended it.
    public var signaled: Bool
    /// True if it was killed at its time limit.
    public var timedOut: Bool
    /// True if it was cancelled.
    public var cancelled: Bool
    /// Wall time, seconds.
    public var wallSeconds: Double

    /// True for a normal exit with status 0.
    public var succeeded: Bool { !signaled && status == 0 && !timedOut && !cancelled }
}

/// A running job process: its standard output and error streamed to a handler, killed with its
/// whole sandbox at the time limit or on `cancel()`. Callbacks arrive on a private queue.
public final class JobProcess: @unchecked Sendable {
    /// Which output stream a chunk came from.
    public enum Stream: UInt8, Sendable { case stdout = 1, stderr = 2 }

    private let process = Process()
    private let lock = NSLock()
    private var timedOut = false
    private var cancelled = false
    private var finished = false
    private var openStreams = 2
    private var exitStatus: (Int32, Bool)?
    private let started = Date()
    private let queue = DispatchQueue(label: "gpumesh.job")
    private var onExit: ((JobExit) -> Void)?
    /// A running job keeps itself alive (its callers may drop it) until it has reported its exit.
    private var keepAlive: JobProcess?

    /// The process ID of the outermost process (the sandbox's).
    public var pid: Int32 { process.processIdentifier }

    private init() {}

    /// Starts `argv` (program first) with an empty environment (the sandbox sets the job's) and
    /// `/dev/null` as input. `onOutput` gets chunks as they come; `onExit` once, after all output.
    public static func start(_ argv: [String], timeLimitSeconds: Int, onOutput: @escaping @Sendable (Stream, [UInt8]) -> Void,
                             onExit: @escaping @Sendable (JobExit) -> Void) throws -> JobProcess {
        let job = JobProcess()
        job.onExit = onExit
        job.process.executableURL = URL(fileURLWithPath: argv[0])
        job.process.arguments = Array(argv.dropFirst())
        job.process.environment = [:]
        job.process.standardInput = FileHandle.nullDevice
        // Plain pipes read by two threads with blocking reads: FileHandle's readability handlers
        // crashed libdispatch when the pipes closed under them.
        // Every end close-on-exec from the start (the child gets the write ends as its stdout and
        // stderr through dup2, which clears the flag): a process another thread spawns meanwhile
        // must not inherit a write end, or this job's output would not end until that one did
        // (seen: a sandbox test waited two minutes on a testnet started beside it).
        var fds: [Int32] = [0, 0, 0, 0]
        // (pipe2 is not in Swift's Glibc module: set the flag at once; the window is a few instructions.)
        guard pipe(&fds[0]) == 0 else { throw POSIXError(.EMFILE) }
        guard pipe(&fds[2]) == 0 else { close(fds[0]); close(fds[1]); throw POSIXError(.EMFILE) }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        job.process.standardOutput = FileHandle(fileDescriptor: fds[1], closeOnDealloc: false)
        job.process.standardError = FileHandle(fileDescriptor: fds[3], closeOnDealloc: false)
        job.readers = [(fds[0], Stream.stdout), (fds[2], Stream.stderr)]
        job.onOutput = onOutput
        job.process.terminationHandler = { [weak job] p in
            guard let job else { return }
            let status = (p.terminationStatus, p.terminationReason == .uncaughtSignal)
            job.queue.async {
                job.exitStatus = status
                job.finishIfDone()
            }
        }
        job.keepAlive = job
        do { try job.process.run() } catch {
            job.keepAlive = nil
            for fd in fds { close(fd) }
            throw error
        }
        close(fds[1])  // the child has its own copies of the write ends
        close(fds[3])
        for (fd, stream) in job.readers {
            let thread = Thread { [job] in job.drain(fd, stream) }
            thread.name = "gpumesh-job-output"
            thread.start()
        }
        job.queue.asyncAfter(deadline: .now() + .seconds(timeLimitSeconds)) { [weak job] in
            guard let job, !job.finished else { return }
            job.lock.withLock { job.timedOut = true }
            job.kill()
        }
        return job
    }

    private var readers: [(Int32, Stream)] = []
    private var onOutput: (@Sendable (Stream, [UInt8]) -> Void)?

    /// Reads one output pipe until end of file (on its own thread), then closes it.
    private func drain(_ fd: Int32, _ stream: Stream) {
        var buffer = [UInt8](repeating: 0, count: 65_536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            let chunk = Array(buffer[0..<n])
            queue.async { [self] in onOutput?(stream, chunk) }
        }
        close(fd)
        queue.async { [self] in streamClosed() }
    }

    private func streamClosed() {
        openStreams -= 1
        finishIfDone()
    }

    private func finishIfDone() {
        guard !finished, openStreams == 0, let (status, signaled) = exitStatus else { return }
        finished = true
        let (t, c) = lock.withLock { (timedOut, cancelled) }
        let exit = JobExit(status: status, signaled: signaled, timedOut: t, cancelled: c, wallSeconds: Date().timeIntervalSince(started))
        onExit?(exit)
        onExit = nil
        onOutput = nil
        keepAlive = nil
    }

    /// Kills the job and everything it started (from any thread).
    public func cancel() {
        lock.withLock { cancelled = true }
        kill()
    }

    private func kill() {
        let pid = process.processIdentifier
        guard pid > 0 && process.isRunning else { return }
        // bwrap's child arms "die with parent" only once it runs: killed in the instant after the
        // fork, the parent would leave it behind (seen under load). So its descendants go too;
        // once the sandbox's init dies, the kernel ends everything in its PID namespace.
        let descendants = Sandbox.descendants(of: pid)
        Glibc.kill(pid, SIGKILL)
        for d in descendants { Glibc.kill(d, SIGKILL) }
    }
}

/// A value shared between a job's callbacks and a waiting thread.
final class Box<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var _value: T
    init(_ value: T) { _value = value }
    var value: T { lock.withLock { _value } }
    func mutate(_ body: (inout T) -> Void) { lock.withLock { body(&_value) } }
}
