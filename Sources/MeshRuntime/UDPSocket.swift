import CLibUV
import MeshCore
#if canImport(Glibc)
import Glibc
#endif

/// A UDP socket on an event loop. Loop-confined.
///
/// Sends go out at once with `uv_udp_try_send`; only when the kernel buffer is full are they copied
/// into a bounded queue (`maxQueuedSendBytes`); beyond that they are dropped and counted, never
/// buffered without bound. Received datagrams are handed to the handler straight from the loop's
/// shared read buffer: the handler must copy what it keeps.
public final class UDPSocket: LoopHandle, @unchecked Sendable {
    /// Called for each datagram with its bytes (valid only during the call) and its sender.
    public typealias Handler = (UnsafeRawBufferPointer, SocketAddress) -> Void

    /// Counters of what this socket did.
    public struct Statistics: Sendable, Equatable {
        /// Datagrams handed to the kernel or queued.
        public var sent = 0
        /// Datagrams dropped because the send queue was full.
        public var sendDroppedQueueFull = 0
        /// Datagrams the kernel refused (unreachable network, too large, ...).
        public var sendErrors = 0
        /// Datagrams received and handed to the handler.
        public var received = 0
        /// Datagrams dropped because they were larger than the read buffer.
        public var receiveTruncated = 0
        /// Receive errors reported by the kernel.
        public var receiveErrors = 0
    }

    /// The address the socket is bound to (port resolved when bound to port 0).
    public private(set) var localAddress: SocketAddress
    /// What the socket has done so far.
    public private(set) var statistics = Statistics()
    /// The most bytes queued behind a full kernel buffer before sends are dropped.
    public var maxQueuedSendBytes = 4 << 20

    private var handler: Handler?

    private init(loop: EventLoop, address: SocketAddress) {
        localAddress = address
        super.init(loop: loop, type: UV_UDP)
    }

    var udp: UnsafeMutablePointer<uv_udp_t> { raw.assumingMemoryBound(to: uv_udp_t.self) }

    /// The receive buffer each socket asks the kernel for.
    public static let receiveBufferBytes = 1 << 20

    /// Binds a socket to `address` (port 0 picks a free port). IPv6 sockets are IPv6-only.
    public static func bind(on loop: EventLoop, to address: SocketAddress) throws(UVError) -> UDPSocket {
        loop.preconditionInLoop()
        let socket = UDPSocket(loop: loop, address: address)
        try uvCheck(uv_udp_init(loop.uv, socket.udp), "uv_udp_init")
        socket.adopt()
        do {
            let flags: UInt32 = if case .v6 = address.ip { UInt32(UV_UDP_IPV6ONLY.rawValue) } else { 0 }
            try uvCheck(address.withSockAddr { uv_udp_bind(socket.udp, $0, flags) }, "uv_udp_bind(\(address))")
            socket.localAddress = try SocketAddress.fromGetsockname("uv_udp_getsockname") { uv_udp_getsockname(socket.udp, $0, $1) }
            // A larger receive buffer (best effort: the kernel caps it at net.core.rmem_max) rides
            // out bursts while the loop is busy; at the 208 KiB default the kernel dropped
            // replies when many nodes shared a starved CPU.
            var size = Int32(Self.receiveBufferBytes)
            _ = uv_recv_buffer_size(UnsafeMutableRawPointer(socket.udp).assumingMemoryBound(to: uv_handle_t.self), &size)
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// Starts handing received datagrams to `handler` (replacing any earlier handler).
    public func startReceiving(_ handler: @escaping Handler) throws(UVError) {
        loop.preconditionInLoop()
        let wasReceiving = self.handler != nil
        self.handler = handler
        guard !wasReceiving else { return }
        try uvCheck(uv_udp_recv_start(udp, { handle, _, buf in
            let socket = wrapper(UnsafeMutableRawPointer(handle), as: UDPSocket.self)
            buf!.pointee = uv_buf_init(socket.loop.readBuffer.baseAddress!.assumingMemoryBound(to: CChar.self),
                                       UInt32(socket.loop.readBuffer.count))
        }, { handle, nread, buf, addr, flags in
            let socket = wrapper(UnsafeMutableRawPointer(handle), as: UDPSocket.self)
            socket.received(nread: nread, buf: buf!, addr: addr, flags: flags)
        }), "uv_udp_recv_start")
    }

    private func received(nread: Int, buf: UnsafePointer<uv_buf_t>, addr: UnsafePointer<sockaddr>?, flags: UInt32) {
        if nread < 0 { statistics.receiveErrors += 1; return }
        guard let addr else { return }  // "nothing more to read", not an empty datagram
        if flags & UInt32(UV_UDP_PARTIAL.rawValue) != 0 { statistics.receiveTruncated += 1; return }
        guard let from = SocketAddress(addr), let handler, !isClosing else { return }
        statistics.received += 1
        handler(UnsafeRawBufferPointer(start: buf.pointee.base, count: nread), from)
    }

    /// Stops receiving; datagrams that arrive meanwhile stay in the kernel buffer.
    public func stopReceiving() {
        loop.preconditionInLoop()
        guard handler != nil, !isClosing else { return }
        handler = nil
        uv_udp_recv_stop(udp)
    }

    /// Sends one datagram. Returns false if it was dropped (queue full or kernel error).
    @discardableResult
    public func send(_ bytes: UnsafeRawBufferPointer, to address: SocketAddress) -> Bool {
        loop.preconditionInLoop()
        guard !isClosing else { return false }
        var buf = uv_buf_init(UnsafeMutableRawPointer(mutating: bytes.baseAddress)?.assumingMemoryBound(to: CChar.self),
                              UInt32(bytes.count))
        let status = address.withSockAddr { uv_udp_try_send(udp, &buf, 1, $0) }
        if status >= 0 { statistics.sent += 1; return true }
        guard status == UVError.wouldBlock else { statistics.sendErrors += 1; return false }
        // The kernel buffer is full: queue a copy, within bounds.
        guard uv_udp_get_send_queue_size(udp) + bytes.count <= maxQueuedSendBytes else {
            statistics.sendDroppedQueueFull += 1
            return false
        }
        let reqSize = uv_req_size(UV_UDP_SEND)
        let block = UnsafeMutableRawPointer.allocate(byteCount: reqSize + bytes.count, alignment: 16)
        if bytes.count > 0 { (block + reqSize).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count) }
        let req = block.assumingMemoryBound(to: uv_udp_send_t.self)
        var copy = uv_buf_init((block + reqSize).assumingMemoryBound(to: CChar.self), UInt32(bytes.count))
        let queued = address.withSockAddr {
            uv_udp_send(req, udp, &copy, 1, $0) { req, _ in UnsafeMutableRawPointer(req!).deallocate() }
        }
        if queued < 0 { block.deallocate(); statistics.sendErrors += 1; return false }
        statistics.sent += 1
        return true
    }

    /// Sends one datagram from an array.
    @discardableResult
    public func send(_ bytes: [UInt8], to address: SocketAddress) -> Bool {
        bytes.withUnsafeBytes { send($0, to: address) }
    }

    override func willClose() { handler = nil }
}
