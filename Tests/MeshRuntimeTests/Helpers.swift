import Foundation
import Logging
import MeshCrypto
import MeshCore
@testable import MeshRuntime
import Synchronization

/// Runs `body` with a fresh loop and always shuts the loop down afterwards.
func withLoop<T>(_ name: String = "test", _ body: (EventLoop) async throws -> T) async throws -> T {
    let loop = try EventLoop(name: name)
    do {
        let result = try await body(loop)
        loop.shutdown()
        return result
    } catch {
        loop.shutdown()
        throw error
    }
}

/// The kernel identities (`socket:[inode]`) of every socket this process holds open.
///
/// Tests run in parallel, so a process-wide descriptor count drifts; socket inode numbers are
/// never reused while the process runs, so "none of my sockets is still open" is exact.
func openSocketIdentities() -> Set<String> {
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return Set(fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\($0)") }
        .filter { $0.hasPrefix("socket:") })
}

/// The kernel identity of one handle's socket (loop thread).
func socketIdentity(_ handle: LoopHandle) -> String? {
    guard let fd = handle.fileDescriptor else { return nil }
    return try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(fd)")
}

/// A value shared between a test and loop callbacks.
final class Box<T: Sendable>: @unchecked Sendable {
    private let lock = Mutex<Void>(())
    private var _value: T
    init(_ value: T) { _value = value }
    var value: T {
        get { lock.withLock { _ in _value } }
        set { lock.withLock { _ in _value = newValue } }
    }
    func mutate<R>(_ body: (inout T) -> R) -> R { lock.withLock { _ in body(&_value) } }
}

/// A fresh temporary directory (short path: Unix socket paths are limited to 107 bytes).
func makeTempDirectory() throws -> String {
    let path = "/tmp/gm-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

let loopback = SocketAddress(ip: .loopbackV4, port: 0)

/// Options for a node on 127.0.0.1 with free ports and a fresh identity, joining through `bootstrap`.
func loopbackOptions(bootstrap: [Contact] = [], logger: Logger = Logger(label: "test")) -> MeshNode.Options {
    var config = NodeConfig()
    config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
    var o = MeshNode.Options(identity: SigningKey(), config: config, logger: logger)
    o.bootstrap = bootstrap
    return o
}

/// Polls `condition` every 50 ms until it holds or `seconds` pass; its last answer.
func eventually(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}
