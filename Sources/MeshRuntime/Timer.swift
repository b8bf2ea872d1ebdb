import CLibUV

/// A libuv timer. One-shot timers close themselves after firing; repeating ones run until cancelled.
/// Loop-confined: create, fire and cancel on the loop thread.
public final class LoopTimer: LoopHandle, @unchecked Sendable {
    private var body: (() -> Void)?
    private let repeats: Bool

    private init(loop: EventLoop, repeats: Bool, body: @escaping () -> Void) {
        self.body = body
        self.repeats = repeats
        super.init(loop: loop, type: UV_TIMER)
    }

    /// Starts a timer that calls `body` after `delay`, then every `interval` if one is given.
    /// Delays are rounded up to whole milliseconds (libuv's timer resolution).
    @discardableResult
    public static func schedule(on loop: EventLoop, after delay: Duration, repeating interval: Duration? = nil,
                                _ body: @escaping () -> Void) throws(UVError) -> LoopTimer {
        loop.preconditionInLoop()
        let timer = LoopTimer(loop: loop, repeats: interval != nil, body: body)
        let t = timer.raw.assumingMemoryBound(to: uv_timer_t.self)
        try uvCheck(uv_timer_init(loop.uv, t), "uv_timer_init")
        timer.adopt()
        let status: Int32 = uv_timer_start(t, { t in
            let timer = wrapper(UnsafeMutableRawPointer(t), as: LoopTimer.self)
            guard !timer.isClosing else { return }
            if !timer.repeats {
                let body = timer.body
                timer.close()
                body?()
            } else {
                timer.body?()
            }
        }, milliseconds(delay), interval.map(milliseconds) ?? 0)
        do { try uvCheck(status, "uv_timer_start") } catch { timer.close(); throw error }
        return timer
    }

    /// Stops the timer; its body will not run again. Idempotent.
    public func cancel() { close() }

    override func willClose() { body = nil }

    private static func milliseconds(_ d: Duration) -> UInt64 {
        let (seconds, attoseconds) = d.components
        guard seconds >= 0 else { return 0 }
        let ms = UInt64(seconds) * 1000 + UInt64((attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        return ms
    }
}

extension EventLoop {
    /// Schedules `body` on this loop after `delay` (call on the loop thread).
    @discardableResult
    public func schedule(after delay: Duration, repeating interval: Duration? = nil,
                         _ body: @escaping () -> Void) throws(UVError) -> LoopTimer {
        try LoopTimer.schedule(on: self, after: delay, repeating: interval, body)
    }
}
