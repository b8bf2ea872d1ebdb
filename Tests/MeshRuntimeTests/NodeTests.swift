import Foundation
import InMemoryLogging
import Logging
import MeshCore
import MeshCrypto
@testable import MeshRuntime
import Testing

private func options(control: String? = nil, mesh: MeshKey = .publicMesh) -> MeshNode.Options {
    var config = NodeConfig()
    config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
    return .init(identity: SigningKey(), config: config, meshKey: mesh, controlSocketPath: control, logger: Logger(label: "test"))
}

/// A contact that names `node`'s key but sends its UDP to `udp`.
private func contact(_ node: MeshNode, udp: SocketAddress) throws -> Contact {
    try Contact(publicKey: node.identity.publicKey, addresses: [TransportAddress(.udp, udp)])
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

@Suite("MeshNode", .timeLimit(.minutes(6)))
struct NodeTests {
    @Test("two nodes sharing a loop ping each other with sealed datagrams and open a channel")
    func probes() async throws {
        try await withLoop { loop in
            let a = try await MeshNode.start(on: loop, options: options())
            let b = try await MeshNode.start(on: loop, options: options())
            let r = try await a.ping(b.contact)
            #expect(r.peerID == b.peerID)
            #expect(r.roundTrip > .zero)
            #expect(try await b.ping(a.contact).peerID == a.peerID)
            let ca = try await loop.submit { a.counters }
            let cb = try await loop.submit { b.counters }
            #expect(ca[.probesSent] == 1 && ca[.probeReplies] == 1 && ca[.probesAnswered] == 1)
            #expect(cb[.probesSent] == 1 && cb[.probeReplies] == 1 && cb[.probesAnswered] == 1)
            #expect(ca[.datagramsIn] == 2 && ca[.datagramsOut] == 2)
            #expect(NodeCounter.allCases.filter(\.isDrop).allSatisfy { ca[$0] == 0 })

            // A service b does not offer: b proves itself, reads the name, refuses and closes.
            let channel = try await a.openChannel(to: b.contact, service: "gpumesh/nothing/1")
            #expect(channel.remotePeerID == b.peerID)
            let closed = try await channel.messages()
            for try await _ in closed { Issue.record("a refused channel delivered a message") }
            #expect(try await loop.submit { b.counters[.channelsEstablished] } == 1)
            #expect(try await loop.submit { b.counters[.channelsRefused] } == 1)
            // A service it offers gets the channel, and the messages sent right behind the name.
            try await loop.submit { b.serve(ChannelService.echo) { ch in ch.setMessageHandler { ch.send($0) } } }
            let echo = try await a.openChannel(to: b.contact, service: ChannelService.echo)
            let replies = try await echo.messages()
            for i in 0..<3 { try await echo.send([UInt8(i)]) }
            var got: [[UInt8]] = []
            for try await r in replies { got.append(r); if got.count == 3 { break } }
            #expect(got == [[0], [1], [2]])
            echo.closeFromAnyThread()
            await a.stop(); await b.stop()
        }
    }

    @Test("an unproven address gets a same-size cookie challenge before the larger contact reply")
    func cookieExchange() async throws {
        try await withLoop { loop in
            let a = try await MeshNode.start(on: loop, options: options())
            let b = try await MeshNode.start(on: loop, options: options())
            #expect(try await a.requestInfo(b.contact) == b.contact)
            var cb = try await loop.submit { b.counters }
            #expect(cb[.cookieChallengesSent] == 1 && cb[.infoAnswered] == 1)
            // Now proven: no second challenge.
            #expect(try await a.requestInfo(b.contact) == b.contact)
            cb = try await loop.submit { b.counters }
            #expect(cb[.cookieChallengesSent] == 1 && cb[.infoAnswered] == 2)
            // The challenge is no larger than the request: both bodies are 25 bytes.
            #expect(DatagramMessage.infoRequest(nonce: 0).encoded().count == DatagramMessage.cookieChallenge(nonce: 0, cookie: [UInt8](repeating: 0, count: 16)).encoded().count)
            await a.stop(); await b.stop()
        }
    }

    @Test("nodes with different mesh keys cannot exchange one datagram or finish one handshake")
    func privateMeshes() async throws {
        try await withLoop { loop in
            let mesh = MeshKey.generate()
            let memberLog = InMemoryLogHandler()
            var memberOptions = options(mesh: mesh)
            memberOptions.logger = Logger(label: "member") { _ in var h = memberLog; h.logLevel = .debug; return h }
            let member = try await MeshNode.start(on: loop, options: memberOptions)
            let outsider = try await MeshNode.start(on: loop, options: options())
            let otherMember = try await MeshNode.start(on: loop, options: options(mesh: mesh))
            await #expect(throws: NodeError.timeout(member.udpAddress)) { try await outsider.ping(member.contact, timeout: .milliseconds(200)) }
            await #expect(throws: NodeError.timeout(outsider.udpAddress)) { try await member.ping(outsider.contact, timeout: .milliseconds(200)) }
            #expect(try await otherMember.ping(member.contact).peerID == member.peerID)
            for _ in 0..<3 {
                do {
                    _ = try await outsider.openChannel(to: member.contact, service: ChannelService.echo)
                    Issue.record("handshake across meshes succeeded")
                } catch let f as SecureChannel.Failure {
                    #expect(f == .peerClosedDuringHandshake)
                }
            }
            for _ in 0..<100 where try await loop.submit({ member.counters[.channelHandshakesFailed] })! < 3 { try await Task.sleep(for: .milliseconds(5)) }
            let c = try await loop.submit { member.counters }
            #expect(c[.droppedAuthFailed]! >= 1)
            // The member logged the mismatch once for that host, however often the outsider tried.
            let mentions = memberLog.entries.filter { $0.level == .debug && "\($0.message)".contains("another mesh key") }
            #expect(mentions.count == 1, "\(memberLog.entries.map { "\($0.message)" })")
            #expect(c[.probesAnswered] == 1, "only the fellow member was answered")
            #expect(c[.channelHandshakesFailed] == 3)
            await member.stop(); await outsider.stop(); await otherMember.stop()
        }
    }

    @Test("10,000 random datagrams, replays and stale datagrams are dropped and counted; the node still answers")
    func hostileDatagrams() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options())
            let peer = try await MeshNode.start(on: loop, options: options())
            let target = node.udpAddress
            let attackerKey = SigningKey()
            let now: @Sendable () -> UInt64 = { MeshNode.wallClockMilliseconds() }
            // The attacker has its own loop and waits for the node to read each burst, so the kernel
            // never drops anything on loopback and every count below is exact.
            let attackerLoop = try EventLoop(name: "attacker")
            defer { attackerLoop.shutdown() }
            let attacker = try await attackerLoop.submit { try UDPSocket.bind(on: attackerLoop, to: loopback) }
            func received() async throws -> Int { try await loop.submit { node.counters[.datagramsIn]! } }
            var sent = 0
            for burst in 0..<200 {
                try await attackerLoop.submit {
                    for i in 0..<50 {
                        var bytes = (0..<Int.random(in: 0...1400)).map { _ in UInt8.random(in: 0...255) }
                        if (burst + i) % 3 == 0 && bytes.count >= 80 { bytes[0] = 1; bytes[1] = 0 }  // plausible header
                        attacker.send(bytes, to: target)
                    }
                }
                sent += 50
                for _ in 0..<400 where try await received() < sent { try await Task.sleep(for: .milliseconds(5)) }
            }
            #expect(try await received() == 10_000)
            let afterRandom = try await loop.submit { node.counters }
            #expect(NodeCounter.allCases.filter(\.isDrop).reduce(0) { $0 + afterRandom[$1]! } == 10_000, "every random datagram dropped")
            #expect(afterRandom[.probesAnswered] == 0)
            // A valid sealed ping, the same bytes again (a replay), one from 5 minutes ago, an authentic
            // but malformed body, and a pong nobody asked for.
            try await attackerLoop.submit {
                let sealer = DatagramSealer(identity: attackerKey, meshKey: .publicMesh, now: now, random: SecureRandom.bytes)
                let old = DatagramSealer(identity: attackerKey, meshKey: .publicMesh, now: { now() - 300_000 }, random: SecureRandom.bytes)
                let ping = sealer.seal(DatagramMessage.ping(nonce: 7).encoded(), to: node.identity.publicKey)!
                attacker.send(ping, to: target)
                attacker.send(ping, to: target)
                attacker.send(old.seal(DatagramMessage.ping(nonce: 8).encoded(), to: node.identity.publicKey)!, to: target)
                attacker.send(sealer.seal([0xee, 1, 2], to: node.identity.publicKey)!, to: target)
                attacker.send(sealer.seal(DatagramMessage.pong(nonce: 99).encoded(), to: node.identity.publicKey)!, to: target)
            }
            for _ in 0..<400 where try await received() < 10_005 { try await Task.sleep(for: .milliseconds(5)) }
            let c = try await loop.submit { node.counters }
            func delta(_ k: NodeCounter) -> Int { c[k]! - afterRandom[k]! }
            #expect(delta(.probesAnswered) == 1 && delta(.droppedReplay) == 1 && delta(.droppedStale) == 1)
            #expect(delta(.droppedMalformed) == 1 && delta(.droppedUnsolicited) == 1)
            #expect(try await peer.ping(node.contact).peerID == node.peerID, "the node still answers a valid peer")
            let final = try await loop.submit { node.counters }
            let dropped = NodeCounter.allCases.filter(\.isDrop).reduce(0) { $0 + final[$1]! }
            #expect(final[.datagramsIn]! == dropped + final[.probesAnswered]!, "every datagram is answered or counted as dropped")
            await node.stop(); await peer.stop()
        }
    }

    @Test("random TCP byte streams cause no crash and no leak; a valid peer still gets a channel")
    func hostileStreams() async throws {
        try await withLoop { loop in
            var o = options()
            o.channelSettings.handshakeTimeout = .milliseconds(300)
            let node = try await MeshNode.start(on: loop, options: o)
            let baseline = try await loop.submit { loop.openHandles }
            var clients: [StreamConnection] = []
            for i in 0..<200 {
                let conn = try await StreamConnection.connect(on: loop, to: .tcp(node.tcpAddress))
                clients.append(conn)
                var bytes = (0..<Int.random(in: 0...3000)).map { _ in UInt8.random(in: 0...255) }
                if i % 4 == 0 && bytes.count > 2 { bytes[0] = 0; bytes[1] = UInt8(min(bytes.count - 2, 255)) }  // a plausible frame
                try await conn.write(bytes)
                if i % 2 == 0 { try await loop.submit { conn.closeGracefully() } }  // others stay silent until the timeout
            }
            let peer = try await MeshNode.start(on: loop, options: options())
            let channel = try await peer.openChannel(to: node.contact, service: ChannelService.echo)
            #expect(channel.remotePeerID == node.peerID)
            await peer.stop()
            // Every hostile connection ends on the node's side (handshake failure or timeout); the
            // test then closes its own ends, and nothing may be left.
            for _ in 0..<200 where try await loop.submit({ node.counters[.channelHandshakesFailed]! }) < 200 { try await Task.sleep(for: .milliseconds(10)) }
            let ours = clients
            try await loop.submit { ours.forEach { $0.close() } }
            for _ in 0..<200 where try await loop.submit({ loop.openHandles }) > baseline { try await Task.sleep(for: .milliseconds(10)) }
            #expect(try await loop.submit { loop.openHandles } <= baseline)
            #expect(try await loop.submit { node.counters[.channelHandshakesFailed] } == 200)
            await node.stop()
        }
    }

    @Test("a probe to a silent address times out and is counted")
    func probeTimeout() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: options())
            let silent = try await loop.submit { try UDPSocket.bind(on: loop, to: loopback) }
            let target = try contact(node, udp: silent.localAddress)
            await #expect(throws: NodeError.timeout(silent.localAddress)) {
                try await node.ping(target, timeout: .milliseconds(50))
            }
            #expect(try await loop.submit { node.counters[.probeTimeouts] } == 1)
            await node.stop()
            await #expect(throws: NodeError.stopped) { try await node.ping(target) }
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
            #expect(status["mesh"]?.stringValue == "public")

            let peer = try await MeshNode.start(on: loop, options: options())
            let ping = try await ControlClient.call("node.ping", params: .object(["contact": .string(peer.contact.description)]),
                                                    socketPath: path, on: loop)
            #expect(ping["peer_id"]?.stringValue == peer.peerID.hex)
            #expect((ping["rtt_ms"]?.doubleValue ?? -1) >= 0)

            await #expect(throws: ControlClient.Failure.remote(.methodNotFound("node.fly"))) {
                try await ControlClient.call("node.fly", socketPath: path, on: loop)
            }
            await #expect(throws: ControlClient.Failure.remote(.invalidParams("expected {\"contact\": \"gpm1:...\"}"))) {
                try await ControlClient.call("node.ping", params: .object(["contact": .string("nowhere")]), socketPath: path, on: loop)
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
