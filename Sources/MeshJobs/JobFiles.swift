import Foundation
import MeshCore
import MeshCrypto
#if canImport(Glibc)
import Glibc
#endif

/// File handling for job work directories: inputs written without following links, outputs
/// collected by glob without following links (a job must not get the provider to read or send a
/// file outside its work directory), content hashed with `FileHash`.
public enum JobFiles {
    /// A file found for a manifest.
    public struct Found: Sendable, Equatable {
        /// Path relative to the directory searched.
        public var path: String
        /// Size in bytes.
        public var size: UInt64
        /// The content's `FileHash`.
        public var hash: [UInt8]
        /// The content's chunk hashes.
        public var chunks: [[UInt8]]
    }

    /// Why a file operation failed.
    public struct Failure: Error, CustomStringConvertible, Equatable {
        /// What failed, in words.
        public var description: String
        /// A failure described in words.
        public init(_ description: String) { self.description = description }
        static func errno(_ what: String, _ path: String) -> Failure { Failure("\(what) \(path): \(String(cString: strerror(Glibc.errno)))") }
    }

    /// A regular file's size and `FileHash` (not following a link at `path` unless `followLinks`).
    public static func hash(path: String, followLinks: Bool = false) throws(Failure) -> (size: UInt64, hash: [UInt8]) {
        let h = try hashChunks(path: path, followLinks: followLinks)
        return (h.size, h.hash)
    }

    /// A regular file's size, `FileHash` and chunk hashes (kept so a transfer need not hash again).
    public static func hashChunks(path: String, followLinks: Bool = false) throws(Failure) -> (size: UInt64, hash: [UInt8], chunks: [[UInt8]]) {
        let fd = open(path, O_RDONLY | O_CLOEXEC | (followLinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else { throw .errno("cannot open", path) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { throw Failure("\(path) is not a regular file") }
        var buffer = [UInt8](repeating: 0, count: FileHash.chunkBytes)
        var total: UInt64 = 0
        var chunks: [[UInt8]] = []
        while true {
            // Fill a whole chunk (reads may return less).
            var filled = 0
            while filled < buffer.count {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + filled, $0.count - filled) }
                if n < 0 && Glibc.errno == EINTR { continue }
                guard n >= 0 else { throw .errno("cannot read", path) }
                if n == 0 { break }
                filled += n
            }
            if filled == 0 { break }
            chunks.append(buffer.withUnsafeBytes { FileHash.chunk(UnsafeRawBufferPointer(rebasing: $0[0..<filled])) })
            total += UInt64(filled)
            if filled < buffer.count { break }
        }
        return (total, FileHash.file(size: total, chunkHashes: chunks), chunks)
    }

    /// The regular files under `directory` whose relative paths match any of `globs`
    /// (`fnmatch` with `FNM_PATHNAME`: `*` does not cross `/`), sorted by path, hashed. Links
    /// are neither followed nor reported; at most `maxFiles` files are hashed.
    public static func collect(in directory: String, globs: [String], maxFiles: Int) throws(Failure) -> [Found] {
        var matches: [String] = []
        var stack = [""]
        while let relative = stack.popLast() {
            let dirPath = relative.isEmpty ? directory : directory + "/" + relative
            guard let dir = opendir(dirPath) else { continue }
            defer { closedir(dir) }
            while let entry = readdir(dir) {
                let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
                if name == "." || name == ".." { continue }
                let rel = relative.isEmpty ? name : relative + "/" + name
                var st = stat()
                guard lstat(directory + "/" + rel, &st) == 0 else { continue }
                switch st.st_mode & S_IFMT {
                case S_IFDIR: stack.append(rel)
                case S_IFREG:
                    if globs.contains(where: { fnmatch($0, rel, FNM_PATHNAME) == 0 }) {
                        matches.append(rel)
                        if matches.count > maxFiles { throw Failure("more than \(maxFiles) output files match") }
                    }
                default: continue
                }
            }
        }
        var out: [Found] = []
        for rel in matches.sorted() {
            let (size, hash, chunks) = try hashChunks(path: directory + "/" + rel)
            out.append(Found(path: rel, size: size, hash: hash, chunks: chunks))
        }
        return out
    }

    /// Writes byte ranges into the files of a manifest, one file open at a time, never following
    /// a link and never writing outside `directory`. Files are created with `O_EXCL`.
    public final class Writer {
        private let directory: String
        private let names: [String]
        private var open: (index: Int, fd: Int32)?

        /// A writer for files `names` (safe relative paths) under `directory`.
        public init(directory: String, names: [String]) {
            self.directory = directory
            self.names = names
        }

        /// The path file `index` is written to.
        public func path(_ index: Int) -> String { directory + "/" + names[index] }

        /// Writes `data` at `offset` into file `index` (creating it, and its directories, first).
        public func write(file index: Int, offset: UInt64, data: some Foundation.ContiguousBytes) throws(Failure) {
            if open?.index != index {
                closeCurrent()
                let p = path(index)
                let parent = (p as NSString).deletingLastPathComponent
                do { try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true) }
                catch { throw Failure("cannot create \(parent): \(error.localizedDescription)") }
                let fd = Glibc.open(p, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw .errno("cannot create", p) }
                open = (index, fd)
            }
            let fd = open!.fd
            let failed = data.withUnsafeBytes { buffer in
                var done = 0
                while done < buffer.count {
                    let n = pwrite(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                    if n < 0 && Glibc.errno == EINTR { continue }
                    guard n > 0 else { return true }
                    done += n
                }
                return false
            }
            if failed { throw .errno("cannot write", path(index)) }
        }

        /// Creates the empty files of the manifest that no chunk will touch.
        public func touch(file index: Int) throws(Failure) {
            try write(file: index, offset: 0, data: [UInt8]())
        }

        /// Closes the open file, first flushing it to disk if `sync` (results worth keeping
        /// across a crash; a job's inputs are not).
        public func finish(sync: Bool = true) throws(Failure) {
            if sync, let (_, fd) = open, fsync(fd) != 0 { throw .errno("cannot flush", directory) }
            closeCurrent()
        }

        private func closeCurrent() {
            if let (_, fd) = open { close(fd) }
            open = nil
        }

        deinit { closeCurrent() }
    }

    /// Reads byte ranges of a file (not following a link unless asked to).
    public final class Reader {
        private let fd: Int32
        /// The file's path.
        public let path: String

        /// Opens `path` for reading.
        public init(path: String, followLinks: Bool = false) throws(Failure) {
            self.path = path
            fd = Glibc.open(path, O_RDONLY | O_CLOEXEC | (followLinks ? 0 : O_NOFOLLOW))
            guard fd >= 0 else { throw .errno("cannot open", path) }
        }

        /// Up to `count` bytes from `offset`.
        public func read(at offset: UInt64, count: Int) throws(Failure) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: count)
            let done = out.withUnsafeMutableBytes { buffer in Result { () throws(Failure) in try read(at: offset, into: buffer) } }
            out.removeLast(count - (try done.get()))
            return out
        }

        /// Fills `buffer` from `offset` (fewer bytes only at the end of the file); returns how many.
        public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(Failure) -> Int {
            var done = 0
            while done < buffer.count {
                let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
                if n < 0 && Glibc.errno == EINTR { continue }
                guard n >= 0 else { throw .errno("cannot read", path) }
                if n == 0 { break }
                done += n
            }
            return done
        }

        deinit { close(fd) }
    }
}

/// How a job is started by each executor: the argument vector, and what stops it for good.
public struct ExecutorPlan: Sendable, Equatable {
    /// The command line (program first).
    public var argv: [String]
    /// For containers: the command that removes the container when the job is killed or ends
    /// early (killing the client does not stop a container).
    public var cleanup: [String]?
}

/// Container executors (`docker`, `podman`): the job runs in `image` with no network, the work
/// directory at `/work`, limits on memory, processes, CPUs and file size, no capabilities, and
/// GPUs only when asked for.
public enum ContainerExecutor {
    /// The `run` command for a job named `name` (used for cleanup).
    public static func plan(runtime: String, program: String, name: String, image: String, command: [String], environment: [String: String],
                            workDirectory: String, memoryMiB: Int, cpuCores: Int, gpus: Int, maxProcesses: Int = 256,
                            fileSizeBytes: UInt64) -> ExecutorPlan {
        var argv = [program, "run", "--rm", "--name", name, "--network", "none", "--memory", "\(memoryMiB)m", "--memory-swap", "\(memoryMiB)m",
                    "--pids-limit", "\(maxProcesses)", "--cpus", "\(cpuCores)", "--ulimit", "fsize=\(fileSizeBytes):\(fileSizeBytes)",
                    "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--volume", "\(workDirectory):/work", "--workdir", "/work"]
        if gpus > 0 {
            argv += runtime == "podman" ? ["--device", "nvidia.com/gpu=all"] : ["--gpus", "\(gpus)"]
        }
        for (k, v) in environment.sorted(by: { $0.key < $1.key }) { argv += ["--env", "\(k)=\(v)"] }
        argv += ["--", image] + command
        return ExecutorPlan(argv: argv, cleanup: [program, "rm", "--force", name])
    }
}

extension Sandbox {
    /// The GPU device nodes bound into a sandbox that asks for GPUs: NVIDIA's control, UVM and
    /// per-GPU nodes, and DRI render nodes, as present on this host.
    public static func gpuDevices(dev: String = "/dev") -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dev)) ?? []
        var out = names.filter { $0.hasPrefix("nvidia") }.sorted().map { dev + "/" + $0 }
        let dri = dev + "/dri"
        if let render = try? FileManager.default.contentsOfDirectory(atPath: dri) {
            out += render.filter { $0.hasPrefix("renderD") }.sorted().map { dri + "/" + $0 }
        }
        return out
    }
}
