import Foundation
import Logging
import MeshCore
import MeshCrypto
@testable import MeshRuntime
import Testing

private func options(control: String? = nil) -> MeshNode.Options {
    var config = NodeConfig()
    config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
    return .init(identity: SigningKey(), config: config, controlSocketPath: control, logger: Logger(label: "test"))
}

/// Sends raw lines to a control socket and returns the lines it answers, until `count` arrived or it closed.
private func rawControl(_ path: String, send: [UInt8], expect count: Int, on loop: EventLoop) async throws -> [String] {
    let c = try await StreamConnection.connect(on: loop, to: .unix(path))
    let (stream, cont) = AsyncStream.makeStream(of: String.self)
    try await loop.submit {
        var buffer = LineBuffer(maxLineBytes: 1 << 20)
        var got = 0
        c.startReading { event in
            guard case .data(let b) = event, case .lines(let lines) = buffer.append(b) else { return }
            for l in lines { cont.yield(String(decoding: l, as: UTF8.self)); got += 1 }
            if got >= count { c.close() }
        }
        c.onClose { _ in cont.finish() }
        c.write(send)
    }
    var out: [String] = []
    for await line in stream { out.append(line) }
    return out
}

@Suite("MeshNode", .timeLimit(.minutes(2)))
struct NodeTests {
    @Test("two nodes sharing a loop probe each other and count what they did")
    func probes() async throws {
        try await withLoop { loop in
            let a = try await MeshNode.start(on: loop, options: options())
            let b = try await MeshNode.start(on: loop, options: options())
            let r = try await a.ping(b.udpAddress)
            #expect(r.peerID == b.peerID)
            #expect(r.roundTrip > .zero)
            #expect(try await b.ping(a.contact.address(for: .udp)!).peerID == a.peerID)
            let ca = try await loop.submit { a.counters }
            let cb = try await loop.submit { b.counters }
            #expect(ca[.probesSent] == 1 && ca[.probeReplies] == 1 && ca[.probesAnswered] == 1)
            #expect(cb[.probesSent] == 1 && cb[.probeReplies] == 1 && cb[.probesAnswered] == 1)
            #expect(ca[.datagramsIn] == 2 && ca[.datagramsOut] == 2)
            #expect(try await a.tcpHello(b.tcpAddress) == b.peerID)
            #expect(try await loop.submit { b.counters[.tcpAccepted] } == 1)
            await a.stop(); await b.stop()
        }
    }

    @Test("10,000 random datagrams are dropped and counted; the node still answers a valid peer")
    func hostileDatagrams() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options())
            let peer = try await MeshNode.start(on: loop, options: options())
            let (stream, done) = AsyncStream.makeStream(of: Void.self)
            let target = node.udpAddress
            try await loop.submit {
                let attacker = try UDPSocket.bind(on: loop, to: loopback)
                var sent = 0
                func burst() {
                    for _ in 0..<500 {
                        var bytes = (0..<Int.random(in: 0...1400)).map { _ in UInt8.random(in: 0...255) }
                        if sent % 3 == 0 && bytes.count >= 3 { bytes[0] = 0x47; bytes[1] = 0x4d; bytes[2] = 0 }  // probe-like prefix
                        attacker.send(bytes, to: target)
                        sent += 1
                    }
                    if sent < 10_000 { try! loop.schedule(after: .milliseconds(1)) { burst() } } else { attacker.close(); done.yield() }
                }
                burst()
            }
            for await _ in stream { break }
            // Forged pongs (valid shape, unknown nonce) are dropped as unsolicited.
            let forged = ProbeMessage(kind: .pong, nonce: 42, sender: peer.peerID).encoded()
            try await loop.submit {
                let s = try UDPSocket.bind(on: loop, to: loopback)
                for _ in 0..<10 { s.send(forged, to: target) }
                s.close()
            }
            #expect(try await peer.ping(target).peerID == node.peerID)
            let c = try await loop.submit { node.counters }
            let dropped = c[.datagramsDroppedMalformed]! + c[.datagramsDroppedUnsolicited]!
            #expect(c[.datagramsIn]! - c[.probesAnswered]! == dropped, "every datagram is answered or counted as dropped")
            #expect(c[.datagramsDroppedUnsolicited]! >= 10)
            #expect(c[.probesAnswered]! >= 1)
            await node.stop(); await peer.stop()
        }
    }

    @Test("a probe to a silent address times out and is counted")
    func probeTimeout() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options())
            let silent = try await loop.submit { try UDPSocket.bind(on: loop, to: loopback) }
            await #expect(throws: NodeError.probeTimeout(silent.localAddress)) {
                try await node.ping(silent.localAddress, timeout: .milliseconds(50))
            }
            #expect(try await loop.submit { node.counters[.probeTimeouts] } == 1)
            await node.stop()
            await #expect(throws: NodeError.stopped) { try await node.ping(silent.localAddress) }
        }
    }

    @Test("the control socket answers JSON-RPC 2.0 and refuses malformed requests precisely")
    func controlSocket() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/node.sock"
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options(control: path))
            let mode = try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as! Int
            #expect(mode == 0o600)

            let status = try await ControlClient.call("node.status", socketPath: path, on: loop)
            #expect(status["peer_id"]?.stringValue == node.peerID.hex)
            #expect(status["udp"]?.stringValue == node.udpAddress.description)
            #expect(try Contact(parsing: status["contact"]!.stringValue!) == node.contact)
            #expect(status["counters"]?["datagrams_in"]?.intValue == 0)

            let peer = try await MeshNode.start(on: loop, options: options())
            let ping = try await ControlClient.call("node.ping", params: .object(["address": .string(peer.udpAddress.description)]),
                                                    socketPath: path, on: loop)
            #expect(ping["peer_id"]?.stringValue == peer.peerID.hex)
            #expect((ping["rtt_ms"]?.doubleValue ?? -1) >= 0)

            await #expect(throws: ControlClient.Failure.remote(.methodNotFound("node.fly"))) {
                try await ControlClient.call("node.fly", socketPath: path, on: loop)
            }
            await #expect(throws: ControlClient.Failure.remote(.invalidParams("expected {\"address\": \"HOST:PORT\"}"))) {
                try await ControlClient.call("node.ping", params: .object(["address": .string("nowhere")]), socketPath: path, on: loop)
            }

            // Several requests on one connection, malformed ones among them; a notification gets no answer.
            let lines = [
                "this is not json",
                "[1,2]",
                #"{"jsonrpc":"1.0","id":1,"method":"node.status"}"#,
                #"{"jsonrpc":"2.0","id":2}"#,
                #"{"jsonrpc":"2.0","id":{"x":1},"method":"node.status"}"#,
                #"{"jsonrpc":"2.0","id":3,"method":"node.status","params":5}"#,
                #"{"jsonrpc":"2.0","method":"node.status"}"#,
                #"{"jsonrpc":"2.0","id":"last","method":"node.status"}"#,
            ].joined(separator: "\n") + "\n"
            let answers = try await rawControl(path, send: Array(lines.utf8), expect: 7, on: loop)
            let decoded = try answers.map { try JSONDecoder().decode(JSONRPC.Response.self, from: Data($0.utf8)) }
            #expect(decoded.map { $0.error?.code ?? 0 } == [-32700, -32600, -32600, -32600, -32600, -32600, 0])
            #expect(decoded.last?.id == .string("last"))
            #expect(decoded[2].id == .int(1))

            // A line longer than the limit is refused and the connection closed.
            let huge = [UInt8](repeating: UInt8(ascii: "a"), count: JSONRPC.maxLineBytes + 10)
            let refused = try await rawControl(path, send: huge, expect: 1, on: loop)
            #expect(refused.count == 1 && refused[0].contains("-32600"))

            // The node still serves after all that.
            #expect(try await ControlClient.call("node.status", socketPath: path, on: loop)["peer_id"] != nil)
            await node.stop()
            await peer.stop()
            #expect(!FileManager.default.fileExists(atPath: path))
            await #expect(throws: ControlClient.Failure.noNode(path: path)) {
                try await ControlClient.call("node.status", socketPath: path, on: loop)
            }
        }
    }

    @Test("a stale control socket is replaced; a live one refuses a second node")
    func controlSocketOwnership() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/node.sock"
        // A stale socket: bound, then its process 'died' (the fd closed without unlinking).
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: Array(path.utf8)) }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        close(fd)
        #expect(FileManager.default.fileExists(atPath: path))

        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options(control: path))
            await #expect(throws: NodeError.alreadyRunning(controlSocket: path)) {
                try await MeshNode.start(on: loop, options: options(control: path))
            }
            #expect(try await ControlClient.call("node.status", socketPath: path, on: loop)["peer_id"]?.stringValue == node.peerID.hex)
            await node.stop()
            let long = "/tmp/" + String(repeating: "d", count: 120) + "/node.sock"
            await #expect(throws: NodeError.controlPathTooLong(path: long, bytes: long.utf8.count)) {
                try await MeshNode.start(on: loop, options: options(control: long))
            }
        }
    }

    @Test("binding a port in use is a clear error and leaves nothing open")
    func bindConflict() async throws {
        try await withLoop { loop in
            let first = try await MeshNode.start(on: loop, options: options())
            var o = options()
            o.config.tcpListen = first.tcpAddress
            do {
                _ = try await MeshNode.start(on: loop, options: o)
                Issue.record("second bind succeeded")
            } catch let e as NodeError {
                guard case .bind(let what, let uv) = e else { Issue.record("wrong error \(e)"); return }
                #expect(what.hasPrefix("TCP"))
                #expect(uv.code == UVError.addressInUse)
            }
            await first.stop()
            try await loop.submit {}
            #expect(try await loop.submit { loop.openHandles } == 0)
        }
    }
}
