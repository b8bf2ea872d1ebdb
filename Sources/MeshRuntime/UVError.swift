import CLibUV

/// An error from a libuv call: the negative status code and the name of the call that returned it.
public struct UVError: Error, Equatable, Hashable, CustomStringConvertible, Sendable {
    /// libuv's negative error code (`UV_EADDRINUSE`, ...).
    public let code: Int32
    /// The libuv function (or runtime operation) that failed.
    public let call: String

    /// Makes an error from a libuv status code and the call that returned it.
    public init(code: Int32, call: String) {
        self.code = code
        self.call = call
    }

    /// libuv's short name for the code, such as `EADDRINUSE`.
    public var name: String { String(cString: uv_err_name(code)) }
    /// libuv's message for the code, such as `address already in use`.
    public var message: String { String(cString: uv_strerror(code)) }
    /// `call: NAME (message)`.
    public var description: String { "\(call): \(name) (\(message))" }

    /// Address already in use.
    public static let addressInUse = Int32(UV_EADDRINUSE.rawValue)
    /// Connection refused.
    public static let connectionRefused = Int32(UV_ECONNREFUSED.rawValue)
    /// Connection reset by peer.
    public static let connectionReset = Int32(UV_ECONNRESET.rawValue)
    /// No such file or directory.
    public static let noEntry = Int32(UV_ENOENT.rawValue)
    /// Operation canceled (a handle was closed with the operation pending).
    public static let canceled = Int32(UV_ECANCELED.rawValue)
    /// Timed out.
    public static let timedOut = Int32(UV_ETIMEDOUT.rawValue)
    /// End of stream.
    public static let endOfFile = Int32(UV_EOF.rawValue)
    /// Resource temporarily unavailable.
    public static let wouldBlock = Int32(UV_EAGAIN.rawValue)
    /// Broken pipe.
    public static let brokenPipe = Int32(UV_EPIPE.rawValue)
    /// Invalid argument.
    public static let invalidArgument = Int32(UV_EINVAL.rawValue)
    /// Name too long.
    public static let nameTooLong = Int32(UV_ENAMETOOLONG.rawValue)
}

/// The one checking door for libuv: turns a negative status into a `UVError` naming the call.
@inline(__always)
@discardableResult
func uvCheck(_ status: Int32, _ call: @autoclosure () -> String) throws(UVError) -> Int32 {
    if status < 0 { throw UVError(code: status, call: call()) }
    return status
}
