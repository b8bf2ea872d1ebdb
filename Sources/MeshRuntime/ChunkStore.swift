import Dispatch
import Foundation
import MeshJobs
import MeshMarket
import Synchronization

/// Checks received chunks against their hashes and writes them into a job's files on a serial
/// queue off the loop thread, and reports each back on the loop in the order it was submitted.
///
/// Hashing a chunk and copying it into the page cache cost more than decrypting it; done on the
/// loop they capped a transfer at a quarter of the channel's speed. The loop now only decrypts
/// and decodes, the queue hashes and writes, and the session hears of each chunk afterwards
/// (`onChunkStored`). The queue is the jobs service's one I/O queue, so whatever a store does is
/// ordered with whatever the service queued before it (removing an earlier attempt's files).
///
/// The store also paces the channel the chunks arrive on: it stops reading above `highWater`
/// queued bytes and reads again below `lowWater`, so TCP slows the sender.
///
/// Confinement: `completions`, `queuedBytes` and `readingPaused` belong to the loop; `writer`
/// belongs to the queue.
final class ChunkStore: @unchecked Sendable {
    /// Queued bytes over which the store stops reading the channel.
    static let highWater = 8 << 20
    /// Queued bytes under which a paused channel reads again.
    static let lowWater = 2 << 20

    private let loop: EventLoop
    private let queue: DispatchQueue
    private let writer: JobFiles.Writer
    private let cancelled = Atomic<Bool>(false)
    private var completions: [((Result<Bool, JobFiles.Failure>) -> Void)?] = []
    private var head = 0
    /// Bytes submitted and not yet reported back (loop thread).
    private(set) var queuedBytes = 0
    /// The channel the chunks arrive on, and whether the store paused its reading.
    private weak var channel: SecureChannel?
    private var readingPaused = false

    /// A store writing files `names` under `directory` from chunks arriving on `channel`; with
    /// `fresh`, whatever is at `directory` is removed first (on the queue, so after any earlier
    /// store's writes there).
    init(loop: EventLoop, queue: DispatchQueue, channel: SecureChannel?, directory: String, names: [String], fresh: Bool = false) {
        self.loop = loop
        self.queue = queue
        self.channel = channel
        self.writer = JobFiles.Writer(directory: directory, names: names)
        if fresh { queue.async { try? FileManager.default.removeItem(atPath: directory) } }
    }

    /// Queues one chunk (loop thread): it is written at `offset` into file `file` if it hashes to
    /// `hash`. `done` runs on the loop with true (written), false (it did not match; nothing
    /// written) or the write's failure, in submission order; never after `discard`.
    func submit(file: Int, offset: UInt64, data: ArraySlice<UInt8>, hash: [UInt8], done: @escaping (Result<Bool, JobFiles.Failure>) -> Void) {
        loop.preconditionInLoop()
        completions.append(done)
        queuedBytes += data.count
        queue.async { [self] in
            var result: Result<Bool, JobFiles.Failure> = .success(false)
            if !cancelled.load(ordering: .relaxed), Negotiation.chunkHash(data) == hash {
                do throws(JobFiles.Failure) {
                    try writer.write(file: file, offset: offset, data: data)
                    result = .success(true)
                } catch {
                    result = .failure(error)
                }
            }
            _ = loop.execute { [self, result] in complete(result, bytes: data.count) }
        }
        if !readingPaused, queuedBytes > Self.highWater {
            readingPaused = true
            channel?.pauseReading()
        }
    }

    private func complete(_ result: Result<Bool, JobFiles.Failure>, bytes: Int) {
        queuedBytes -= bytes
        guard !cancelled.load(ordering: .relaxed), head < completions.count else { return }
        if readingPaused, queuedBytes < Self.lowWater {
            readingPaused = false
            channel?.resumeReading()
        }
        let done = completions[head]
        completions[head] = nil  // releases what it captured now, not when the queue next empties
        head += 1
        if head == completions.count {
            completions.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 {
            completions.removeFirst(head)
            head = 0
        }
        done?(result)
    }

    /// Creates files `empty` (which no chunk touches) and closes the files, flushing them to disk
    /// if `sync`. Waits on the loop thread for the queue to get there: call it once every chunk
    /// was reported, when the queue holds at most other stores' few chunks.
    func finish(creating empty: [Int], sync: Bool) throws(JobFiles.Failure) {
        loop.preconditionInLoop()
        let result = queue.sync { [writer] () -> Result<Void, JobFiles.Failure> in
            do throws(JobFiles.Failure) {
                for i in empty { try writer.touch(file: i) }
                try writer.finish(sync: sync)
                return .success(())
            } catch {
                return .failure(error)
            }
        }
        try result.get()
    }

    /// Stops the store (loop thread): queued chunks are skipped and never reported. Whoever
    /// removes the files afterwards does it on the queue, so after any write still running.
    func discard() {
        cancelled.store(true, ordering: .relaxed)
        completions = []
        head = 0
    }
}
