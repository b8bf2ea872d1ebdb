import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshGossip
import MeshJobs
import MeshMarket

/// A job as this node sees it, in either role (what `gpumesh jobs` lists).
public struct JobInfo: Codable, Sendable, Equatable {
    /// The job ID (32 hex digits).
    public var id: String
    /// `renter` or `provider`.
    public var role: String
    /// The spec's name.
    public var name: String
    /// The other side's peer ID, once known.
    public var peer: String?
    /// `preparing`, `finding`, `negotiating`, `sending-inputs`, `running`, `receiving-outputs`,
    /// `completed`, `failed` or `cancelled`.
    public var state: String
    /// Providers tried (renter).
    public var attempts: Int = 0
    /// Unix seconds.
    public var createdAt: Double
    /// Unix seconds.
    public var updatedAt: Double
    /// Input bytes in all, and sent or received so far.
    public var inputBytes: UInt64 = 0, inputBytesDone: UInt64 = 0
    /// Output bytes in all, and sent or received so far.
    public var outputBytes: UInt64 = 0, outputBytesDone: UInt64 = 0
    /// The job's exit status, once finished.
    public var exitStatus: Int32?
    /// Killed at its time limit.
    public var timedOut: Bool?
    /// Wall time, seconds.
    public var wallSeconds: Double?
    /// Seconds the inputs took to send, from the accept to the provider's `started` (renter).
    public var inputSeconds: Double?
    /// Where the outputs are (renter).
    public var outputDirectory: String?
    /// The outputs' paths relative to `outputDirectory`.
    public var outputs: [String]?
    /// The receipt's ID (hex), once co-signed.
    public var receipt: String?
    /// What the receipt charges, points.
    public var charge: String?
    /// Why it failed, with the reason code first.
    public var failure: String?
    /// Bytes of log so far.
    public var logBytes: UInt64 = 0

    /// True once the job is over.
    public var isFinished: Bool { ["completed", "failed", "cancelled"].contains(state) }

    enum CodingKeys: String, CodingKey {
        case id, role, name, peer, state, attempts, createdAt = "created_at", updatedAt = "updated_at"
        case inputBytes = "input_bytes", inputBytesDone = "input_bytes_done", outputBytes = "output_bytes", outputBytesDone = "output_bytes_done"
        case exitStatus = "exit_status", timedOut = "timed_out", wallSeconds = "wall_s", inputSeconds = "input_s"
        case outputDirectory = "output_directory", outputs, receipt, charge, failure, logBytes = "log_bytes"
    }
}

/// A renter's request to run a job.
public struct JobRequest: Sendable {
    /// The validated spec.
    public var spec: JobSpec
    /// Local paths of the inputs, in the spec's order (absolute, or relative to the node's directory).
    public var inputPaths: [String]
    /// The directory under which `<job-id>/` receives the outputs.
    public var outputRoot: String
    /// A provider to use instead of searching.
    public var provider: Contact?
    /// Further providers to try when one declines, fails or disappears.
    public var retries: Int
    /// Timeouts for each step.
    public var timeouts = Negotiation.Timeouts()

    /// A request.
    public init(spec: JobSpec, inputPaths: [String], outputRoot: String, provider: Contact? = nil, retries: Int = 0) {
        self.spec = spec
        self.inputPaths = inputPaths
        self.outputRoot = outputRoot
        self.provider = provider
        self.retries = retries
    }
}

/// Errors of the jobs service.
public enum JobError: Error, CustomStringConvertible, Sendable {
    /// The job failed; the info says how.
    case failed(JobInfo)
    /// No such job.
    case unknown(String)
    /// A request that cannot start.
    case badRequest(String)

    /// One line for people.
    public var description: String {
        switch self {
        case .failed(let info): "job \(info.id.prefix(12)) \(info.state): \(info.failure ?? "unknown reason")"
        case .unknown(let id): "no job \(id) on this node"
        case .badRequest(let why): why
        }
    }
}

/// Streams a list of files over a channel as chunks, with backpressure (loop thread): reads a
/// chunk only when the channel has room, so memory stays at one chunk per sender.
final class ChunkSender {
    private let channel: SecureChannel
    private let files: [(path: String, size: UInt64, chunks: [[UInt8]]?)]
    private var file = 0
    private var offset: UInt64 = 0
    private var reader: JobFiles.Reader?
    private let progress: (Int) -> Void
    private let done: (Result<Void, JobFiles.Failure>) -> Void
    private var finished = false
    private let followLinks: Bool

    /// `followLinks`: the renter's own inputs may be links; a provider's outputs may not.
    /// `chunks`: the file's chunk hashes when already known (from hashing it), else computed here.
    init(channel: SecureChannel, files: [(path: String, size: UInt64, chunks: [[UInt8]]?)], progress: @escaping (Int) -> Void,
         done: @escaping (Result<Void, JobFiles.Failure>) -> Void, followLinks: Bool = false) {
        self.channel = channel
        self.files = files
        self.followLinks = followLinks
        self.progress = progress
        self.done = done
    }

    func start() {
        channel.setWritableHandler { [weak self] in self?.pump() }
        pump()
    }

    func stop() { finished = true }

    private func pump() {
        while !finished {
            while file < files.count, offset >= files[file].size {
                file += 1
                offset = 0
                reader = nil
            }
            if file == files.count {
                finished = true
                done(.success(()))
                return
            }
            guard channel.isWritable else { return }
            do throws(JobFiles.Failure) {
                if reader == nil { reader = try JobFiles.Reader(path: files[file].path, followLinks: followLinks) }
                let want = Int(min(UInt64(Negotiation.chunkBytes), files[file].size - offset))
                let index = Int(offset / UInt64(Negotiation.chunkBytes))
                let known = files[file].chunks.flatMap { index < $0.count ? $0[index] : nil }
                let reader = reader!
                let at = offset
                // Read straight into the message: no zeroed buffer, no second copy.
                guard let message = try Negotiation.Message.encodedChunk(file: UInt16(file), offset: offset, hash: known, count: want,
                                                                          fill: { (buffer) throws(JobFiles.Failure) in try reader.read(at: at, into: buffer) })
                else { throw JobFiles.Failure("\(files[file].path) changed size while being sent") }
                channel.send(message)
                offset += UInt64(want)
                progress(want)
            } catch {
                finished = true
                done(.failure(error))
                return
            }
        }
    }
}

/// One job's log, appended to a file under the node's jobs directory (loop thread).
final class JobLog {
    let path: String
    private let handle: FileHandle?
    private(set) var bytes: UInt64 = 0

    init(path: String) {
        self.path = path
        _ = FileManager.default.createFile(atPath: path, contents: nil)
        handle = FileHandle(forWritingAtPath: path)
    }

    func append(_ data: [UInt8]) {
        bytes += UInt64(data.count)
        try? handle?.write(contentsOf: data)
    }

    deinit { try? handle?.close() }

    /// Up to `max` bytes from `offset`.
    static func read(_ path: String, from offset: UInt64, max: Int) -> [UInt8] {
        guard let h = FileHandle(forReadingAtPath: path) else { return [] }
        defer { try? h.close() }
        try? h.seek(toOffset: offset)
        return [UInt8]((try? h.read(upToCount: max)) ?? Data())
    }
}
