#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads and writes the identity key file: the 32-byte Ed25519 seed behind a short header,
/// owner-only (mode 0600). A file that others can read is refused.
public enum KeyFile {
    /// The first bytes of a key file, naming its format and version.
    public static let magic: [UInt8] = Array("GPUMESH-ED25519-SEED-V1\n".utf8)

    /// Why a key file could not be written or read.
    public enum Failure: Error, Equatable, CustomStringConvertible, Sendable {
        /// The file to be written exists already; keys are never overwritten.
        case exists(path: String)
        /// No file at this path.
        case notFound(path: String)
        /// Group or others have some permission on the file (mode shown in octal).
        case insecurePermissions(path: String, mode: UInt32)
        /// The file is not a GPUMesh key file or is truncated.
        case malformed(path: String, reason: String)
        /// An operating-system error.
        case system(path: String, operation: String, errno: Int32)

        /// A message for people.
        public var description: String {
            switch self {
            case .exists(let p): return "key file \(p) already exists; refusing to overwrite an identity"
            case .notFound(let p): return "no key file at \(p) (run `gpumesh init` first)"
            case .insecurePermissions(let p, let m):
                return "key file \(p) has mode \(String(m, radix: 8)); it must be readable by its owner only (chmod 600 \(p))"
            case .malformed(let p, let r): return "key file \(p) is not a valid GPUMesh key: \(r)"
            case .system(let p, let op, let e): return "\(op) \(p): \(String(cString: strerror(e)))"
            }
        }
    }

    /// Writes `key`'s seed to a new file at `path` with mode 0600; refuses to overwrite.
    public static func write(_ key: SigningKey, to path: String) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        if fd < 0 {
            let e = errno
            if e == EEXIST { throw .exists(path: path) }
            throw .system(path: path, operation: "create", errno: e)
        }
        defer { close(fd) }
        // O_CREAT honours the umask, which can only remove bits; make the mode exact.
        guard fchmod(fd, 0o600) == 0 else { throw .system(path: path, operation: "chmod", errno: errno) }
        var contents = magic
        key.seed.withUnsafeBytes { contents.append(contentsOf: $0) }
        defer { wipe(&contents) }
        let written = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        guard written == contents.count else {
            let e = errno
            unlink(path)
            throw .system(path: path, operation: "write", errno: written < 0 ? e : EIO)
        }
        guard fsync(fd) == 0 else { throw .system(path: path, operation: "fsync", errno: errno) }
    }

    /// Reads the key at `path`, refusing files that group or others can access.
    public static func read(from path: String) throws(Failure) -> SigningKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            if e == ENOENT { throw .notFound(path: path) }
            throw .system(path: path, operation: "open", errno: e)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw .system(path: path, operation: "stat", errno: errno) }
        let mode = UInt32(st.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw .insecurePermissions(path: path, mode: mode) }
        let expected = magic.count + SigningKey.seedByteCount
        guard Int(st.st_size) == expected else {
            throw .malformed(path: path, reason: "size is \(st.st_size) bytes, expected \(expected)")
        }
        let buffer = SecretBytes(count: expected)
        let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, expected) }
        guard got == expected else { throw .malformed(path: path, reason: "short read") }
        let headerOK = buffer.withUnsafeBytes { Array($0[0..<magic.count]) == magic }
        guard headerOK else { throw .malformed(path: path, reason: "missing header \"GPUMESH-ED25519-SEED-V1\"") }
        let seed = buffer.withUnsafeBytes { SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[magic.count...])) }
        do { return try SigningKey(seed: seed) } catch { throw .malformed(path: path, reason: error.reason) }
    }
}
