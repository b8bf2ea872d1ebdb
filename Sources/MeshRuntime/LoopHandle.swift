import CLibUV

/// The base of every libuv handle wrapper.
///
/// The handle's memory is allocated with `uv_handle_size`, so one class serves every handle type.
/// Once libuv knows the handle (`adopt()`), the handle holds a strong reference to its wrapper in
/// `handle->data`; the reference is released in the close callback, which is the only place the
/// wrapper learns that libuv is done with the memory. Everything here is loop-confined.
public class LoopHandle: @unchecked Sendable {
    /// The loop this handle lives on.
    public let loop: EventLoop
    let raw: UnsafeMutableRawPointer
    private var adopted = false
    /// True once `close()` has been called (the close may still be in progress).
    public private(set) var isClosing = false

    init(loop: EventLoop, type: uv_handle_type) {
        self.loop = loop
        let size = uv_handle_size(type)
        raw = .allocate(byteCount: size, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: size)
    }

    deinit { raw.deallocate() }

    var handle: UnsafeMutablePointer<uv_handle_t> { raw.assumingMemoryBound(to: uv_handle_t.self) }

    /// Call right after a successful `uv_*_init`: from here on libuv owns the memory until close.
    func adopt() {
        precondition(!adopted)
        adopted = true
        handle.pointee.data = Unmanaged.passRetained(self).toOpaque()
        loop.openHandleCount += 1
    }

    /// Starts closing the handle (idempotent). Pending operations fail with `ECANCELED`;
    /// `didClose()` runs when libuv has let go of the handle.
    public func close() {
        guard !isClosing else { return }
        isClosing = true
        willClose()
        guard adopted else { didClose(); return }
        uv_close(handle) { handle in
            let wrapper = Unmanaged<LoopHandle>.fromOpaque(handle!.pointee.data).takeRetainedValue()
            wrapper.loop.openHandleCount -= 1
            wrapper.didClose()
        }
    }

    /// The OS descriptor behind the handle, while it is open (nil for timers and the like).
    var fileDescriptor: Int32? {
        guard adopted, !isClosing else { return nil }
        var fd: uv_os_fd_t = -1
        return uv_fileno(handle, &fd) == 0 ? fd : nil
    }

    /// Subclasses stop their work here (called once, when closing starts).
    func willClose() {}
    /// Subclasses report closure here (called once, after libuv released the handle).
    func didClose() {}
}

/// Recovers the wrapper stored in a handle's `data` (valid until its close callback).
@inline(__always)
func wrapper<T: LoopHandle>(_ handle: UnsafeMutableRawPointer?, as type: T.Type) -> T {
    let h = handle!.assumingMemoryBound(to: uv_handle_t.self)
    return Unmanaged<T>.fromOpaque(h.pointee.data).takeUnretainedValue()
}
