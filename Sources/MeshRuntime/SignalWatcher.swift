import CLibUV

/// Watches a POSIX signal on an event loop (libuv's `uv_signal_t`). Loop-confined.
public final class SignalWatcher: LoopHandle, @unchecked Sendable {
    private var handler: ((Int32) -> Void)?

    private init(loop: EventLoop, handler: @escaping (Int32) -> Void) {
        self.handler = handler
        super.init(loop: loop, type: UV_SIGNAL)
    }

    /// Calls `handler` on the loop thread each time `signal` arrives, until closed.
    public static func watch(on loop: EventLoop, signal: Int32, _ handler: @escaping (Int32) -> Void) throws(UVError) -> SignalWatcher {
        loop.preconditionInLoop()
        let watcher = SignalWatcher(loop: loop, handler: handler)
        let s = watcher.raw.assumingMemoryBound(to: uv_signal_t.self)
        try uvCheck(uv_signal_init(loop.uv, s), "uv_signal_init")
        watcher.adopt()
        let status = uv_signal_start(s, { s, signum in
            wrapper(UnsafeMutableRawPointer(s), as: SignalWatcher.self).handler?(signum)
        }, signal)
        do { try uvCheck(status, "uv_signal_start(\(signal))") } catch { watcher.close(); throw error }
        return watcher
    }

    override func willClose() { handler = nil }
}
