import Foundation
import MeshCore
import MeshCrypto
import MeshLedger
import MeshMarket
@testable import MeshRuntime
import Testing

@Suite("Ledger in the node")
struct LedgerNodeTests {
    static func receipt(_ provider: SigningKey, _ renter: SigningKey, job: UInt8) -> Negotiation.Receipt {
        var r = Negotiation.Receipt(jobID: [UInt8](repeating: job, count: 16), provider: provider.publicKey, renter: renter.publicKey,
                                    specDigest: [UInt8](repeating: 1, count: 32), inputsDigest: [UInt8](repeating: 2, count: 32),
                                    outputsDigest: [UInt8](repeating: 3, count: 32), price: Price(millipoints: 1000), gpus: 1, gpuModel: "rtx-4090",
                                    startedAt: 1_790_000_000_000 + UInt64(job), wallMilliseconds: 60_000, exitStatus: 0, signaled: false, timedOut: false)
        r.signAsProvider(provider)
        r.signAsRenter(renter)
        return r
    }

    @Test("receipts an older node kept in receipts.log move into the ledger once: a torn last record is cut, the log renamed")
    func importsReceiptsLog() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let me = SigningKey(), other = SigningKey()
        let receipts = (1...3).map { Self.receipt(me, other, job: UInt8($0)) }
        do {
            let log = try ReceiptStore(path: dir + "/receipts.log")
            for r in receipts { try log.append(r) }
        }
        // A crash in the middle of a fourth record.
        let h = try #require(FileHandle(forWritingAtPath: dir + "/receipts.log"))
        try h.seekToEnd()
        try h.write(contentsOf: [0, 0, 1, 0, 7, 7, 7])
        try h.close()
        try await withLoop { loop in
            var options = loopbackOptions()
            options.identity = me
            options.dataDirectory = dir
            let node = try await MeshNode.start(on: loop, options: options)
            #expect(Set(node.storedReceipts) == Set(receipts))
            #expect(!FileManager.default.fileExists(atPath: dir + "/receipts.log"))
            #expect(FileManager.default.fileExists(atPath: dir + "/receipts.log.imported"))
            #expect(try node.ledgerCounts().receipts == 3)
            await node.stop()
            // A second start finds them in the ledger and imports nothing again.
            let again = try await MeshNode.start(on: loop, options: options)
            #expect(try again.ledgerCounts().receipts == 3 && again.ledgerCounts().ownReceipts == 3)
            let points = try again.rewardPoints()
            #expect(points.first { $0.peer == Hex.encode(me.publicKey.bytes) }?.jobsProvided == 3)
            await again.stop()
        }
    }

    @Test("a damaged ledger stops the node from starting with a clear error, and leaves the file for the operator")
    func damagedLedger() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: dir + "/ledger.sqlite", contents: Data(repeating: 0x42, count: 4096))
        try await withLoop { loop in
            var options = loopbackOptions()
            options.dataDirectory = dir
            do {
                _ = try await MeshNode.start(on: loop, options: options)
                Issue.record("a node started on a damaged ledger")
            } catch {
                #expect("\(error)".contains("damaged") && "\(error)".contains("move it aside"), "\(error)")
            }
            #expect(FileManager.default.contents(atPath: dir + "/ledger.sqlite") == Data(repeating: 0x42, count: 4096))
        }
    }
}
