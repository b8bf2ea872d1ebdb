#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A small owner-only file holding one secret behind a header that names its format:
/// written 0600 with `O_EXCL` (never overwritten), refused on read when group or others have
/// any permission. The identity key and mesh keys are such files.
public struct SecretFile: Sendable {
    /// The first bytes of the file, naming its format and version.
    public let magic: [UInt8]
    /// The secret's length in bytes.
    public let secretByteCount: Int
    /// Describes a secret file format.
    public init(magic: String, secretByteCount: Int) {
        self.magic = Array(magic.utf8)
        self.secretByteCount = secretByteCount
    }

    /// Why a secret file could not be written or read.
    public enum Failure: Error, Equatable, CustomStringConvertible, Sendable {
        /// The file to be written exists already; secrets are never overwritten.
        case exists(path: String)
        /// No file at this path.
        case notFound(path: String)
        /// Group or others have some permission on the file (mode shown in octal).
        case insecurePermissions(path: String, mode: UInt32)
        /// The file is not of the expected format or is truncated.
        case malformed(path: String, reason: String)
        /// An operating-system error.
        case system(path: String, operation: String, errno: Int32)

        /// A message for people.
        public var description: String {
            switch self {
            case .exists(let p): return "\(p) already exists; refusing to overwrite a secret"
            case .notFound(let p): return "no file at \(p)"
            case .insecurePermissions(let p, let m):
                return "\(p) has mode \(String(m, radix: 8)); it holds a secret and must be readable by its owner only (chmod 600 \(p))"
            case .malformed(let p, let r): return "\(p) is not a valid GPUMesh secret file: \(r)"
            case .system(let p, let op, let e): return "\(op) \(p): \(String(cString: strerror(e)))"
            }
        }
    }

    /// Writes `secret` to a new file at `path` with mode 0600; refuses to overwrite.
    public func write(_ secret: SecretBytes, to path: String) throws(Failure) {
        precondition(secret.count == secretByteCount)
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
        secret.withUnsafeBytes { contents.append(contentsOf: $0) }
        defer { wipe(&contents) }
        let written = contents.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, $0.count) }
        guard written == contents.count else {
            let e = errno
            unlink(path)
            throw .system(path: path, operation: "write", errno: written < 0 ? e : EIO)
        }
        guard fsync(fd) == 0 else { throw .system(path: path, operation: "fsync", errno: errno) }
    }

    /// Reads the secret at `path`, refusing files that group or others can access.
    public func read(from path: String) throws(Failure) -> SecretBytes {
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
        let expected = magic.count + secretByteCount
        guard Int(st.st_size) == expected else {
            throw .malformed(path: path, reason: "size is \(st.st_size) bytes, expected \(expected)")
        }
        let buffer = SecretBytes(count: expected)
        let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress!, expected) }
        guard got == expected else { throw .malformed(path: path, reason: "short read") }
        let headerOK = buffer.withUnsafeBytes { Array($0[0..<magic.count]) == magic }
        guard headerOK else {
            throw .malformed(path: path, reason: "missing header \"\(String(decoding: magic.dropLast(), as: UTF8.self))\"")
        }
        return buffer.withUnsafeBytes { SecretBytes(copying: UnsafeRawBufferPointer(rebasing: $0[magic.count...])) }
    }
}

/// The identity key file: the 32-byte Ed25519 seed behind the header `GPUMESH-ED25519-SEED-V1\n`.
public enum KeyFile {
    /// The file format.
    public static let format = SecretFile(magic: "GPUMESH-ED25519-SEED-V1\n", secretByteCount: SigningKey.seedByteCount)
    /// The header bytes.
    public static var magic: [UInt8] { format.magic }
    /// Why the key file could not be written or read.
    public typealias Failure = SecretFile.Failure

    /// Writes `key`'s seed to a new file at `path` with mode 0600; refuses to overwrite.
    public static func write(_ key: SigningKey, to path: String) throws(SecretFile.Failure) {
        try format.write(key.seed, to: path)
    }

    /// Reads the identity at `path`, refusing files that group or others can access.
    public static func read(from path: String) throws(SecretFile.Failure) -> SigningKey {
        let seed = try format.read(from: path)
        do { return try SigningKey(seed: seed) } catch { throw .malformed(path: path, reason: error.reason) }
    }
}
