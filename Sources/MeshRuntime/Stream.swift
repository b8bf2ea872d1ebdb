import CLibUV
import MeshCore
import MeshCrypto
#if canImport(Glibc)
import Glibc
#endif

/// Where a stream listens or connects: TCP or a Unix-domain socket path.
public enum StreamEndpoint: Hashable, Sendable, CustomStringConvertible {
    /// A TCP address.
    case tcp(SocketAddress)
    /// A Unix-domain socket path (libuv pipe).
    case unix(String)

    /// `tcp:ADDR` or `unix:PATH`.
    public var description: String {
        switch self {
        case .tcp(let a): return "tcp:\(a)"
        case .unix(let p): return "unix:\(p)"
        }
    }

    /// The longest Unix socket path the kernel accepts (`sun_path` less its terminating NUL).
    public static let maxUnixPathBytes = 107

    var handleType: uv_handle_type { if case .tcp = self { UV_TCP } else { UV_NAMED_PIPE } }
}

/// A connected byte stream (TCP or Unix socket) on an event loop. Loop-confined, except the
/// `async` methods, which may be called from any thread.
///
/// Writes: bytes are written at once when the kernel takes them; otherwise a copy joins the write
/// queue. `queuedWriteBytes` tells how much is waiting; `write(_:) async` suspends while it is at or
/// above `highWaterMark` and resumes when it has drained below `lowWaterMark`, so a slow reader
/// makes a fast writer wait instead of buffering without bound.
public final class StreamConnection: LoopHandle, @unchecked Sendable {
    /// What a read delivers.
    public enum ReadEvent {
        /// Bytes, valid only during the call (they live in the loop's shared read buffer).
        case data(UnsafeRawBufferPointer)
        /// The peer closed its side; the connection closes once queued writes are flushed.
        case end
        /// A read error; the connection is closing.
        case failed(UVError)
    }

    /// The endpoint kind this connection uses.
    public let kind: StreamEndpoint
    /// Bytes accepted by `write` and not yet handed to the kernel.
    public private(set) var queuedWriteBytes = 0
    /// The largest value `queuedWriteBytes` has reached (for tests and statistics).
    public private(set) var peakQueuedWriteBytes = 0
    /// At or above this many queued bytes, `write(_:) async` waits.
    public var highWaterMark = 1 << 20
    /// Waiting writers resume once the queue drains below this.
    public var lowWaterMark = 256 << 10
    /// Bytes received so far.
    public private(set) var bytesRead = 0
    /// Bytes written so far (handed to the kernel).
    public private(set) var bytesWritten = 0
    /// Why the connection closed, once it has (nil for a clean close).
    public private(set) var closeError: UVError?
    /// Called on the loop when the write queue drains below the low-water mark (for layers
    /// above, such as secure channels, that keep writers of their own waiting).
    public var onWriteQueueDrained: (() -> Void)?

    private var reader: ((ReadEvent) -> Void)?
    private var readingPaused = false
    private var blockedWriters: [(bytes: [UInt8], continuation: CheckedContinuation<Void, Error>)] = []
    private var blockedHead = 0
    private var closeHandlers: [(UVError?) -> Void] = []
    private var didFinishClosing = false
    private var shutdownRequested = false

    init(loop: EventLoop, kind: StreamEndpoint) {
        self.kind = kind
        super.init(loop: loop, type: kind.handleType)
    }

    var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }

    /// Initialises the libuv handle for this connection's kind.
    func initHandle() throws(UVError) {
        switch kind {
        case .tcp:
            try uvCheck(uv_tcp_init(loop.uv, raw.assumingMemoryBound(to: uv_tcp_t.self)), "uv_tcp_init")
        case .unix:
            try uvCheck(uv_pipe_init(loop.uv, raw.assumingMemoryBound(to: uv_pipe_t.self), 0), "uv_pipe_init")
        }
        adopt()
    }

    // MARK: Connecting

    /// Connects to `endpoint` and calls `completion` on the loop thread (call on the loop thread).
    /// A connection not established within `timeout` fails with `ETIMEDOUT`.
    public static func connect(on loop: EventLoop, to endpoint: StreamEndpoint, timeout: Duration = .seconds(10),
                               _ completion: @escaping (Result<StreamConnection, UVError>) -> Void) {
        loop.preconditionInLoop()
        let connection = StreamConnection(loop: loop, kind: endpoint)
        do {
            try connection.initHandle()
        } catch {
            completion(.failure(error))
            return
        }
        let pending = PendingConnect(connection: connection, completion: completion)
        let req = UnsafeMutablePointer<uv_connect_t>.allocate(capacity: 1)
        req.pointee.data = Unmanaged.passRetained(pending).toOpaque()
        let callback: uv_connect_cb = { req, status in
            let pending = Unmanaged<PendingConnect>.fromOpaque(req!.pointee.data).takeRetainedValue()
            req!.deallocate()
            pending.finish(status: status)
        }
        switch endpoint {
        case .tcp(let address):
            let status = address.withSockAddr { uv_tcp_connect(req, connection.raw.assumingMemoryBound(to: uv_tcp_t.self), $0, callback) }
            if status < 0 {
                Unmanaged<PendingConnect>.fromOpaque(req.pointee.data).release()
                req.deallocate()
                connection.close()
                completion(.failure(UVError(code: status, call: "uv_tcp_connect(\(address))")))
                return
            }
        case .unix(let path):
            guard path.utf8.count <= StreamEndpoint.maxUnixPathBytes else {
                Unmanaged<PendingConnect>.fromOpaque(req.pointee.data).release()
                req.deallocate()
                connection.close()
                completion(.failure(UVError(code: UVError.nameTooLong, call: "uv_pipe_connect(\(path))")))
                return
            }
            uv_pipe_connect(req, connection.raw.assumingMemoryBound(to: uv_pipe_t.self), path, callback)
        }
        pending.timer = try? LoopTimer.schedule(on: loop, after: timeout) { [weak pending] in
            pending?.timedOut = true
            connection.close()  // the connect callback then reports ECANCELED, turned into ETIMEDOUT
        }
    }

    /// Connects to `endpoint` from any thread.
    public static func connect(on loop: EventLoop, to endpoint: StreamEndpoint,
                               timeout: Duration = .seconds(10)) async throws -> StreamConnection {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<StreamConnection, Error>) in
            let accepted = loop.execute {
                connect(on: loop, to: endpoint, timeout: timeout) { continuation.resume(with: $0.mapError { $0 }) }
            }
            if !accepted { continuation.resume(throwing: EventLoopError.shutDown) }
        }
    }

    private final class PendingConnect {
        let connection: StreamConnection
        let completion: (Result<StreamConnection, UVError>) -> Void
        var timer: LoopTimer?
        var timedOut = false

        init(connection: StreamConnection, completion: @escaping (Result<StreamConnection, UVError>) -> Void) {
            self.connection = connection
            self.completion = completion
        }

        func finish(status: Int32) {
            timer?.cancel()
            let call: String
            switch connection.kind {
            case .tcp(let a): call = "uv_tcp_connect(\(a))"
            case .unix(let p): call = "uv_pipe_connect(\(p))"
            }
            if timedOut {
                completion(.failure(UVError(code: UVError.timedOut, call: call)))
            } else if status < 0 {
                connection.close()
                completion(.failure(UVError(code: status, call: call)))
            } else {
                connection.configureAfterConnect()
                completion(.success(connection))
            }
        }
    }

    func configureAfterConnect() {
        if case .tcp = kind { uv_tcp_nodelay(raw.assumingMemoryBound(to: uv_tcp_t.self), 1) }
    }

    // MARK: Addresses

    /// The local TCP address (nil for Unix sockets or when unavailable).
    public var localAddress: SocketAddress? {
        guard case .tcp = kind, !isClosing else { return nil }
        return try? SocketAddress.fromGetsockname("uv_tcp_getsockname") { uv_tcp_getsockname(raw.assumingMemoryBound(to: uv_tcp_t.self), $0, $1) }
    }

    /// The remote TCP address (nil for Unix sockets or when unavailable).
    public var remoteAddress: SocketAddress? {
        guard case .tcp = kind, !isClosing else { return nil }
        return try? SocketAddress.fromGetsockname("uv_tcp_getpeername") { uv_tcp_getpeername(raw.assumingMemoryBound(to: uv_tcp_t.self), $0, $1) }
    }

    // MARK: Reading

    /// Starts delivering reads to `handler` (replacing any earlier handler).
    public func startReading(_ handler: @escaping (ReadEvent) -> Void) {
        loop.preconditionInLoop()
        let wasReading = reader != nil
        reader = handler
        if !wasReading && !readingPaused { beginReads() }
    }

    private func beginReads() {
        guard !isClosing else { return }
        let status = uv_read_start(stream, { handle, _, buf in
            let c = wrapper(UnsafeMutableRawPointer(handle), as: StreamConnection.self)
            buf!.pointee = uv_buf_init(c.loop.readBuffer.baseAddress!.assumingMemoryBound(to: CChar.self), UInt32(c.loop.readBuffer.count))
        }, { stream, nread, buf in
            wrapper(UnsafeMutableRawPointer(stream), as: StreamConnection.self).didRead(nread: nread, buf: buf!)
        })
        if status < 0 { fail(UVError(code: status, call: "uv_read_start")) }
    }

    private func didRead(nread: Int, buf: UnsafePointer<uv_buf_t>) {
        guard !isClosing else { return }
        if nread > 0 {
            bytesRead += nread
            reader?(.data(UnsafeRawBufferPointer(start: buf.pointee.base, count: nread)))
        } else if nread == Int(UVError.endOfFile) {
            reader?(.end)
            closeGracefully()
        } else if nread < 0 {
            let error = UVError(code: Int32(nread), call: "read")
            reader?(.failed(error))
            fail(error)
        }
    }

    /// Stops reading until `resumeReading()`; the kernel's buffer then fills and TCP slows the sender.
    public func pauseReading() {
        loop.preconditionInLoop()
        guard !readingPaused else { return }
        readingPaused = true
        if reader != nil && !isClosing { uv_read_stop(stream) }
    }

    /// Resumes reading after `pauseReading()`.
    public func resumeReading() {
        loop.preconditionInLoop()
        guard readingPaused else { return }
        readingPaused = false
        if reader != nil { beginReads() }
    }

    // MARK: Writing

    /// True while the write queue is below the high-water mark.
    public var isWritable: Bool { queuedWriteBytes < highWaterMark }

    /// Writes `bytes` (loop thread). Never blocks; the queue grows instead, so loop-side writers
    /// should watch `isWritable`. `completion` runs once the bytes are handed to the kernel, or
    /// with the error that stopped them.
    public func write(_ bytes: some ContiguousBytes, completion: ((UVError?) -> Void)? = nil) {
        loop.preconditionInLoop()
        bytes.withUnsafeBytes { enqueue($0, completion: completion) }
    }

    private func enqueue(_ bytes: UnsafeRawBufferPointer, completion: ((UVError?) -> Void)?) {
        guard !isClosing, !shutdownRequested else {
            completion?(UVError(code: UVError.canceled, call: "write"))
            return
        }
        guard bytes.count > 0 else { completion?(nil); return }
        var offset = 0
        if queuedWriteBytes == 0 {
            var buf = uv_buf_init(UnsafeMutableRawPointer(mutating: bytes.baseAddress!).assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
            let n = uv_try_write(stream, &buf, 1)
            if n == Int32(bytes.count) {
                bytesWritten += bytes.count
                completion?(nil)
                return
            }
            if n > 0 {
                offset = Int(n)
                bytesWritten += offset
            } else if n != UVError.wouldBlock && n != Int32(UV_ENOSYS.rawValue) {
                let error = UVError(code: n, call: "uv_try_write")
                completion?(error)
                fail(error)
                return
            }
        }
        let remaining = bytes.count - offset
        let request = WriteRequest(count: remaining, completion: completion)
        request.payload.copyMemory(from: bytes.baseAddress! + offset, byteCount: remaining)
        request.req.pointee.data = Unmanaged.passRetained(request).toOpaque()
        var buf = uv_buf_init(request.payload.assumingMemoryBound(to: CChar.self), UInt32(remaining))
        let status = uv_write(request.req, stream, &buf, 1) { req, status in
            let request = Unmanaged<WriteRequest>.fromOpaque(req!.pointee.data).takeRetainedValue()
            let connection = wrapper(UnsafeMutableRawPointer(req!.pointee.handle), as: StreamConnection.self)
            connection.writeFinished(request, status: status)
        }
        if status < 0 {
            Unmanaged<WriteRequest>.fromOpaque(request.req.pointee.data).release()
            let error = UVError(code: status, call: "uv_write")
            completion?(error)
            fail(error)
            return
        }
        queuedWriteBytes += remaining
        peakQueuedWriteBytes = max(peakQueuedWriteBytes, queuedWriteBytes)
    }

    private func writeFinished(_ request: WriteRequest, status: Int32) {
        queuedWriteBytes -= request.count
        if status < 0 {
            let error = UVError(code: status, call: "uv_write")
            request.completion?(error)
            if status != UVError.canceled { fail(error) }
            return
        }
        bytesWritten += request.count
        request.completion?(nil)
        releaseBlockedWriters()
        if queuedWriteBytes < lowWaterMark, !isClosing { onWriteQueueDrained?() }
    }

    private func releaseBlockedWriters() {
        guard blockedHead < blockedWriters.count, queuedWriteBytes < lowWaterMark || queuedWriteBytes == 0 else { return }
        while blockedHead < blockedWriters.count, queuedWriteBytes < highWaterMark, !isClosing {
            let next = blockedWriters[blockedHead]
            blockedHead += 1
            next.bytes.withUnsafeBytes { enqueue($0, completion: nil) }
            next.continuation.resume()
        }
        if blockedHead == blockedWriters.count {
            blockedWriters.removeAll(keepingCapacity: true)
            blockedHead = 0
        }
    }

    /// Writes `bytes` from any thread, waiting while the write queue is over the high-water mark.
    /// Returns when the bytes are accepted into the queue; throws if the connection is closed.
    public func write(_ bytes: [UInt8]) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
            let accepted = loop.execute { [self] in
                if isClosing || shutdownRequested {
                    continuation.resume(throwing: closeError ?? UVError(code: UVError.canceled, call: "write"))
                } else if blockedHead == blockedWriters.count && queuedWriteBytes < highWaterMark {
                    bytes.withUnsafeBytes { enqueue($0, completion: nil) }
                    continuation.resume()
                } else {
                    blockedWriters.append((bytes, continuation))
                }
            }
            if !accepted { continuation.resume(throwing: EventLoopError.shutDown) }
        }
    }

    // MARK: Closing

    /// Calls `handler` once the connection has closed, with the error that closed it (nil if clean).
    /// If it is already closed, calls it at once.
    public func onClose(_ handler: @escaping (UVError?) -> Void) {
        loop.preconditionInLoop()
        if didFinishClosing { handler(closeError) } else { closeHandlers.append(handler) }
    }

    /// Flushes queued writes, shuts down the write side, then closes (loop thread).
    public func closeGracefully() {
        loop.preconditionInLoop()
        guard !isClosing, !shutdownRequested else { return }
        shutdownRequested = true
        let req = UnsafeMutablePointer<uv_shutdown_t>.allocate(capacity: 1)
        let status = uv_shutdown(req, stream) { req, _ in
            let connection = wrapper(UnsafeMutableRawPointer(req!.pointee.handle), as: StreamConnection.self)
            req!.deallocate()
            connection.close()
        }
        if status < 0 {
            req.deallocate()
            close()
        }
    }

    /// Closes from any thread, after flushing what is queued.
    public func closeGracefullyFromAnyThread() {
        loop.execute { [self] in closeGracefully() }
    }

    private func fail(_ error: UVError) {
        if closeError == nil { closeError = error }
        close()
    }

    override func willClose() {
        reader = nil
        onWriteQueueDrained = nil
        let error = closeError ?? UVError(code: UVError.canceled, call: "write")
        let waiting = blockedWriters[blockedHead...]
        blockedWriters = []
        blockedHead = 0
        for writer in waiting { writer.continuation.resume(throwing: error) }
    }

    override func didClose() {
        didFinishClosing = true
        let handlers = closeHandlers
        closeHandlers = []
        for h in handlers { h(closeError) }
    }
}

/// One queued write: the libuv request and a private copy of the bytes, in one allocation.
private final class WriteRequest {
    let block: UnsafeMutableRawPointer
    let count: Int
    let completion: ((UVError?) -> Void)?
    private static let reqSize = (uv_req_size(UV_WRITE) + 15) & ~15

    init(count: Int, completion: ((UVError?) -> Void)?) {
        self.count = count
        self.completion = completion
        block = .allocate(byteCount: Self.reqSize + count, alignment: 16)
    }

    var req: UnsafeMutablePointer<uv_write_t> { block.assumingMemoryBound(to: uv_write_t.self) }
    var payload: UnsafeMutableRawPointer { block + Self.reqSize }

    deinit { block.deallocate() }
}

/// A listening stream socket (TCP or Unix) that hands each accepted connection to a handler.
/// Loop-confined. A Unix listener removes its socket file when closed.
public final class StreamListener: LoopHandle, @unchecked Sendable {
    /// The bound endpoint (TCP port resolved when bound to port 0).
    public private(set) var endpoint: StreamEndpoint
    /// Accepts that failed (the connection was dropped and counted).
    public private(set) var acceptErrors = 0
    private var onAccept: ((StreamConnection) -> Void)?

    private init(loop: EventLoop, endpoint: StreamEndpoint, onAccept: @escaping (StreamConnection) -> Void) {
        self.endpoint = endpoint
        self.onAccept = onAccept
        super.init(loop: loop, type: endpoint.handleType)
    }

    /// Binds and listens at `endpoint`, calling `onAccept` for each new connection on the loop thread.
    public static func listen(on loop: EventLoop, at endpoint: StreamEndpoint, backlog: Int32 = 128,
                              onAccept: @escaping (StreamConnection) -> Void) throws(UVError) -> StreamListener {
        loop.preconditionInLoop()
        let listener = StreamListener(loop: loop, endpoint: endpoint, onAccept: onAccept)
        switch endpoint {
        case .tcp:
            try uvCheck(uv_tcp_init(loop.uv, listener.raw.assumingMemoryBound(to: uv_tcp_t.self)), "uv_tcp_init")
        case .unix:
            try uvCheck(uv_pipe_init(loop.uv, listener.raw.assumingMemoryBound(to: uv_pipe_t.self), 0), "uv_pipe_init")
        }
        listener.adopt()
        do throws(UVError) {
            switch endpoint {
            case .tcp(let address):
                let tcp = listener.raw.assumingMemoryBound(to: uv_tcp_t.self)
                let flags: UInt32 = if case .v6 = address.ip { UInt32(UV_TCP_IPV6ONLY.rawValue) } else { 0 }
                try uvCheck(address.withSockAddr { uv_tcp_bind(tcp, $0, flags) }, "uv_tcp_bind(\(address))")
                try uvCheck(uv_listen(listener.stream, backlog, acceptCallback), "uv_listen(\(address))")
                listener.endpoint = .tcp(try SocketAddress.fromGetsockname("uv_tcp_getsockname") { uv_tcp_getsockname(tcp, $0, $1) })
            case .unix(let path):
                guard path.utf8.count <= StreamEndpoint.maxUnixPathBytes else {
                    throw UVError(code: UVError.nameTooLong, call: "uv_pipe_bind(\(path))")
                }
                try uvCheck(uv_pipe_bind(listener.raw.assumingMemoryBound(to: uv_pipe_t.self), path), "uv_pipe_bind(\(path))")
                listener.ownsSocketFile = true
                try uvCheck(uv_listen(listener.stream, backlog, acceptCallback), "uv_listen(\(path))")
            }
        } catch {
            listener.close()
            throw error
        }
        return listener
    }

    /// The bound TCP address (port resolved), or nil for a Unix listener.
    public var tcpAddress: SocketAddress? {
        if case .tcp(let a) = endpoint { return a }
        return nil
    }

    /// Replaces the handler for accepted connections (loop thread).
    public func setAcceptHandler(_ handler: @escaping (StreamConnection) -> Void) {
        loop.preconditionInLoop()
        onAccept = handler
    }

    private var ownsSocketFile = false
    private var stream: UnsafeMutablePointer<uv_stream_t> { raw.assumingMemoryBound(to: uv_stream_t.self) }

    private static let acceptCallback: uv_connection_cb = { server, status in
        let listener = wrapper(UnsafeMutableRawPointer(server), as: StreamListener.self)
        listener.accept(status: status)
    }

    private func accept(status: Int32) {
        guard !isClosing else { return }
        guard status >= 0 else { acceptErrors += 1; return }
        let connection = StreamConnection(loop: loop, kind: endpoint)
        do {
            try connection.initHandle()
        } catch {
            acceptErrors += 1
            return
        }
        guard uv_accept(stream, connection.stream) == 0 else {
            acceptErrors += 1
            connection.close()
            return
        }
        connection.configureAfterConnect()
        onAccept?(connection)
    }

    override func willClose() {
        onAccept = nil
        if ownsSocketFile, case .unix(let path) = endpoint { unlink(path) }
    }
}
