import CLibUV
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Errors of the event loop itself.
public enum EventLoopError: Error, Equatable, CustomStringConvertible, Sendable {
    /// The loop has shut down; the work was not run.
    case shutDown
    /// A loop-confined method was called from another thread.
    case wrongThread

    /// A message for people.
    public var description: String {
        switch self {
        case .shutDown: return "the event loop has shut down"
        case .wrongThread: return "called off the event loop's thread"
        }
    }
}

/// One libuv loop running on its own thread.
///
/// Every handle created on a loop is touched only by that loop's thread. Other threads hand work
/// in through `execute(_:)`, a mutex-guarded queue whose arrival wakes the loop through a
/// `uv_async_t`; `submit(_:)` does the same and resumes the caller when the work is done.
/// `shutdown()` closes every handle still open, lets the close callbacks run and joins the thread.
public final class EventLoop: @unchecked Sendable {
    /// The loop's name, used in diagnostics.
    public let name: String

    let uv: UnsafeMutablePointer<uv_loop_t>
    let wakeup: UnsafeMutablePointer<uv_async_t>
    private let inbox = Mutex(Inbox())
    private let threadID = Atomic<UInt>(0)
    private let joinState = Mutex(JoinState())

    /// A scratch buffer for reads: libuv hands data to read callbacks synchronously, so every
    /// handle of this loop can share it (one buffer per loop, not per socket).
    let readBuffer: UnsafeMutableRawBufferPointer
    /// The read buffer's size: several full channel frames, so they can be opened in place.
    static let readBufferBytes = 256 * 1024

    /// Set when the thread has exited: true if `uv_loop_close` found no handle left open.
    public var closedCleanly: Bool { cleanClose.load(ordering: .acquiring) }
    private let cleanClose = Atomic<Bool>(false)

    /// Handles adopted and not yet closed (loop thread only).
    var openHandleCount = 0

    private struct Inbox {
        var jobs: [@Sendable () -> Void] = []
        var stopRequested = false
        var closed = false  // the wakeup handle is closed: nobody may uv_async_send any more
    }

    private struct JoinState {
        var thread: pthread_t?
        var joined = false
    }

    /// Creates the loop and starts its thread.
    public init(name: String = "gpumesh-loop") throws(UVError) {
        self.name = name
        uv = .allocate(capacity: 1)
        wakeup = .allocate(capacity: 1)
        readBuffer = .allocate(byteCount: EventLoop.readBufferBytes, alignment: 16)
        // Every stored property is initialised by now, so a throw below runs `deinit`,
        // which frees the three allocations: the failure paths must not free them again.
        try uvCheck(uv_loop_init(uv), "uv_loop_init")
        let asyncStatus = uv_async_init(uv, wakeup) { handle in
            let loop = Unmanaged<EventLoop>.fromOpaque(handle!.pointee.data).takeUnretainedValue()
            loop.drainInbox()
        }
        do {
            try uvCheck(asyncStatus, "uv_async_init")
        } catch {
            uv_loop_close(uv)
            throw error
        }
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()

        // The thread holds a reference to the loop until it exits.
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let loop = Unmanaged<EventLoop>.fromOpaque(arg!).takeRetainedValue()
            loop.runOnThread()
            return nil
        }, context)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        joinState.withLock { $0.thread = thread }
    }

    deinit {
        uv.deallocate()
        wakeup.deallocate()
        readBuffer.deallocate()
    }

    private func runOnThread() {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        uv_run(uv, UV_RUN_DEFAULT)
        // Every handle is closed and its close callback has run.
        cleanClose.store(uv_loop_close(uv) == 0, ordering: .releasing)
    }

    /// True when called on this loop's thread.
    public var inEventLoop: Bool {
        threadID.load(ordering: .acquiring) == UInt(pthread_self())
    }

    /// Traps when not called on this loop's thread; guards every loop-confined method.
    @inline(__always)
    func preconditionInLoop(_ function: StaticString = #function) {
        precondition(inEventLoop, "\(function) must be called on event loop '\(name)'")
    }

    /// Queues `work` to run on the loop thread, from any thread. Returns false (and drops the work)
    /// once the loop has shut down.
    @discardableResult
    public func execute(_ work: @escaping @Sendable () -> Void) -> Bool {
        inbox.withLock { state in
            guard !state.closed else { return false }
            let wasEmpty = state.jobs.isEmpty
            state.jobs.append(work)
            // One wake-up covers every job queued before the loop drains; send it under the lock
            // so that it can never race with the loop closing the async handle.
            if wasEmpty { uv_async_send(wakeup) }
            return true
        }
    }

    /// Runs `work` on the loop thread and returns its result to the caller.
    public func submit<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, Error>) in
            let accepted = execute {
                continuation.resume(with: Result { try work() })
            }
            if !accepted { continuation.resume(throwing: EventLoopError.shutDown) }
        }
    }

    private func drainInbox() {
        let (jobs, stop) = inbox.withLock { state -> ([@Sendable () -> Void], Bool) in
            let jobs = state.jobs
            state.jobs.removeAll(keepingCapacity: true)
            return (jobs, state.stopRequested)
        }
        for job in jobs { job() }
        if stop { closeEverything() }
    }

    private func closeEverything() {
        // Refuse new work, then run what was queued before the refusal.
        let late = inbox.withLock { state -> [@Sendable () -> Void] in
            state.closed = true
            defer { state.jobs = [] }
            return state.jobs
        }
        for job in late { job() }
        closeAllHandles(includingWakeup: true)
    }

    /// Closes every handle, runs their close callbacks and joins the loop thread. Idempotent;
    /// blocks the caller until done, so it must not be called on the loop thread itself.
    public func shutdown() {
        precondition(!inEventLoop, "EventLoop.shutdown() must not be called on its own thread")
        inbox.withLock { state in
            guard !state.stopRequested else { return }
            state.stopRequested = true
            if !state.closed { uv_async_send(wakeup) }
        }
        joinState.withLock { state in
            guard !state.joined, let thread = state.thread else { return }
            pthread_join(thread, nil)
            state.joined = true
        }
    }

    /// Monotonic time in nanoseconds (`uv_hrtime`), for measuring round trips.
    public static func monotonicNanoseconds() -> UInt64 { uv_hrtime() }

    /// How many handles are open on this loop (call on the loop thread).
    public var openHandles: Int {
        preconditionInLoop()
        return openHandleCount
    }
}

extension EventLoop {
    /// Closes every adopted handle; with `includingWakeup`, also the loop's own async handle, after
    /// which the loop runs out of handles and `uv_run` returns (loop thread).
    func closeAllHandles(includingWakeup: Bool) {
        preconditionInLoop()
        let context = (wakeup: UnsafeMutableRawPointer(wakeup), includingWakeup: includingWakeup)
        withUnsafePointer(to: context) { ctx in
            uv_walk(uv, { handle, arg in
                let ctx = arg!.assumingMemoryBound(to: (wakeup: UnsafeMutableRawPointer, includingWakeup: Bool).self).pointee
                guard let handle, uv_is_closing(handle) == 0 else { return }
                if UnsafeMutableRawPointer(handle) == ctx.wakeup {
                    if ctx.includingWakeup { uv_close(handle, nil) }  // its memory belongs to the loop
                } else if let data = handle.pointee.data {
                    Unmanaged<LoopHandle>.fromOpaque(data).takeUnretainedValue().close()
                } else {
                    uv_close(handle, nil)
                }
            }, UnsafeMutableRawPointer(mutating: ctx))
        }
    }
}
