import Foundation
import MeshMarket
#if canImport(Glibc)
import Glibc
#endif

/// The receipts log nodes kept before the ledger (`receipts.log`), now only read once at start
/// and imported into the ledger: each record is `length (4, big-endian) | receipt wire form`, flushed to disk
/// (`fsync`) before `append` returns. A torn last record (a crash mid-write) is cut off when the
/// file is opened; a record that does not verify is skipped and counted.
public final class ReceiptStore: @unchecked Sendable {
    /// The file.
    public let path: String
    private let fd: Int32
    private let lock = NSLock()
    private var loaded: [Negotiation.Receipt] = []
    private var ids = Set<[UInt8]>()
    /// Records skipped at open because they did not parse or verify.
    public private(set) var skipped = 0

    /// Why the store could not be used.
    public struct Failure: Error, CustomStringConvertible {
        /// What failed, in words.
        public var description: String
    }

    /// Opens (creating) the store at `path` and reads what it holds.
    public init(path: String) throws {
        self.path = path
        fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Failure(description: "cannot open \(path): \(String(cString: strerror(errno)))") }
        let data = (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data()
        let bytes = [UInt8](data)
        var offset = 0
        while offset + 4 <= bytes.count {
            let n = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            guard offset + 4 + n <= bytes.count else { break }
            let record = Array(bytes[offset + 4..<offset + 4 + n])
            if let r = Negotiation.Receipt(decoding: record), r.isValid, ids.insert(r.id).inserted { loaded.append(r) } else { skipped += 1 }
            offset += 4 + n
        }
        if offset < bytes.count { _ = ftruncate(fd, off_t(offset)) }
        lseek(fd, 0, SEEK_END)
    }

    deinit { close(fd) }

    /// Every receipt held, oldest first.
    public var receipts: [Negotiation.Receipt] { lock.withLock { loaded } }

    /// Appends a verified receipt and flushes it to disk; false if it was already held.
    @discardableResult
    public func append(_ receipt: Negotiation.Receipt) throws -> Bool {
        guard receipt.isValid else { throw Failure(description: "refusing a receipt that does not verify") }
        return try lock.withLock {
            guard ids.insert(receipt.id).inserted else { return false }
            let body = receipt.encoded
            let n = UInt32(body.count)
            let record = [UInt8(n >> 24), UInt8(truncatingIfNeeded: n >> 16), UInt8(truncatingIfNeeded: n >> 8), UInt8(truncatingIfNeeded: n)] + body
            let written = record.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            guard written == record.count, fsync(fd) == 0 else {
                let why = String(cString: strerror(errno))
                ids.remove(receipt.id)
                if written > 0 { _ = ftruncate(fd, lseek(fd, 0, SEEK_CUR) - off_t(written)); lseek(fd, 0, SEEK_END) }
                throw Failure(description: "cannot store the receipt in \(path): \(why)")
            }
            loaded.append(receipt)
            return true
        }
    }
}
