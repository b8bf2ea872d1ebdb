import Foundation
import MeshCore
import MeshCrypto
@testable import MeshRuntime
import Testing

/// A channel server on `loop`: accepts channels, echoes every message, reports outcomes.
private final class EchoServer: @unchecked Sendable {
    let identity = SigningKey()
    let outcomes = Box<[Result<PeerID, SecureChannel.Failure>]>([])
    var address: SocketAddress!
    var contact: Contact { try! Contact(publicKey: identity.publicKey, addresses: [TransportAddress(.tcp, address)]) }

    init(on loop: EventLoop, meshKey: MeshKey, settings: SecureChannel.Settings = .init(), echo: Bool = true) async throws {
        address = try await loop.submit { [identity, outcomes] () -> SocketAddress in
            let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { conn in
                SecureChannel.accept(conn, identity: ChannelIdentity(identity), meshKey: meshKey, settings: settings) { result in
                    switch result {
                    case .success(let ch):
                        outcomes.mutate { $0.append(.success(ch.remotePeerID!)) }
                        if echo { ch.setMessageHandler { ch.send($0) } }
                    case .failure(let f):
                        outcomes.mutate { $0.append(.failure(f)) }
                    }
                }
            }
            return l.tcpAddress!
        }
    }

    func waitForOutcome() async throws -> Result<PeerID, SecureChannel.Failure> {
        for _ in 0..<500 {
            if let first = outcomes.value.first { return first }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw SecureChannel.Failure.handshakeTimeout
    }
}

/// A TCP proxy that forwards both ways and flips one bit at a given offset of one direction.
private func flippingProxy(on loop: EventLoop, to target: SocketAddress, flipOffset: Int, clientToServer: Bool) async throws -> SocketAddress {
    try await loop.submit { () -> SocketAddress in
        let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { inbound in
            StreamConnection.connect(on: loop, to: .tcp(target)) { result in
                guard case .success(let outbound) = result else { inbound.close(); return }
                func pipe(_ from: StreamConnection, _ to: StreamConnection, flip: Bool) {
                    var seen = 0
                    from.startReading { event in
                        guard case .data(let b) = event else { to.closeGracefully(); return }
                        var bytes = Array(b)
                        if flip, flipOffset >= seen, flipOffset < seen + bytes.count { bytes[flipOffset - seen] ^= 0x10 }
                        seen += b.count
                        to.write(bytes)
                    }
                    from.onClose { _ in to.close() }
                }
                pipe(inbound, outbound, flip: clientToServer)
                pipe(outbound, inbound, flip: !clientToServer)
            }
        }
        return l.tcpAddress!
    }
}

@Suite("Secure channels", .timeLimit(.minutes(3)))
struct SecureChannelTests {
    @Test("handshake proves both identities; 16 MiB echo arrives intact across many rekeys")
    func echo16MiB() async throws {
        let serverLoop = try EventLoop(name: "srv")
        defer { serverLoop.shutdown() }
        try await withLoop("cli") { loop in
            var settings = SecureChannel.Settings()
            settings.rekeyInterval = 7  // rekey constantly: both sides must stay in step
            let mesh = MeshKey.generate()
            let server = try await EchoServer(on: serverLoop, meshKey: mesh, settings: settings)
            let me = SigningKey()
            let channel = try await SecureChannel.connect(on: loop, to: server.contact, identity: ChannelIdentity(me), meshKey: mesh, settings: settings)
            #expect(channel.remotePeerID == server.contact.peerID)
            #expect(try await server.waitForOutcome() == .success(PeerID(publicKey: me.publicKey)))
            let messages = try await channel.messages()

            // Sizes around the fragment boundary, then bulk: 16 MiB in all.
            var sizes = [0, 1, SecureChannel.maxFragment - 1, SecureChannel.maxFragment, SecureChannel.maxFragment + 1, 200_000]
            let fixed = sizes.reduce(0, +)
            sizes += Array(repeating: 256 << 10, count: (16 << 20 - fixed) / (256 << 10))
            sizes.append(16 << 20 - sizes.reduce(0, +))
            #expect(sizes.reduce(0, +) == 16 << 20)
            let plan = sizes
            let sender = Task {
                let hasher = Blake2b.Hasher()
                for size in plan {
                    let m = SecureRandom.bytes(size)
                    hasher.update(m)
                    try await channel.send(m)
                }
                return hasher.finalize()
            }
            let receiver = Blake2b.Hasher()
            var received = 0
            var count = 0
            for try await m in messages {
                #expect(m.count == sizes[count])
                receiver.update(m)
                received += m.count
                count += 1
                if count == sizes.count { break }
            }
            #expect(received == 16 << 20)
            #expect(try await sender.value == receiver.finalize())
            let frames = try await loop.submit { (channel.framesSent, channel.framesReceived) }
            #expect(frames.0 > 256 && frames.1 == frames.0, "fragmented into many frames, each rekeyed every 7")
            try await loop.submit { channel.close() }
        }
    }

    @Test("a different mesh key fails on both sides with a clear error")
    func wrongMeshKey() async throws {
        try await withLoop { loop in
            let server = try await EchoServer(on: loop, meshKey: .generate())
            do {
                _ = try await SecureChannel.connect(on: loop, to: server.contact, identity: ChannelIdentity(SigningKey()), meshKey: .generate())
                Issue.record("handshake with a different mesh key succeeded")
            } catch let f as SecureChannel.Failure {
                #expect(f == .peerClosedDuringHandshake)
                #expect(f.description.contains("mesh key"))
            }
            let serverSide = try await server.waitForOutcome()
            #expect(serverSide == .failure(.noise(.decryptFailed)))
            #expect(SecureChannel.Failure.noise(.decryptFailed).description.contains("different mesh key"))
        }
    }

    @Test("the initiator refuses a responder that proves an unexpected identity")
    func unexpectedIdentity() async throws {
        try await withLoop { loop in
            let server = try await EchoServer(on: loop, meshKey: .publicMesh)
            let impostorContact = try Contact(publicKey: SigningKey().publicKey, addresses: [TransportAddress(.tcp, server.address)])
            await #expect(throws: SecureChannel.Failure.unexpectedPeer(expected: impostorContact.peerID, actual: server.contact.peerID)) {
                try await SecureChannel.connect(on: loop, to: impostorContact, identity: ChannelIdentity(SigningKey()), meshKey: .publicMesh)
            }
        }
    }

    @Test("a bit flipped in any handshake message or transport frame closes the channel",
          arguments: [(5, true), (40, true), (60, false), (140, false), (70, true), (180, true), (400, true)])
    func flippedBit(offset: Int, clientToServer: Bool) async throws {
        try await withLoop { loop in
            let server = try await EchoServer(on: loop, meshKey: .publicMesh)
            let proxy = try await flippingProxy(on: loop, to: server.address, flipOffset: offset, clientToServer: clientToServer)
            let viaProxy = try Contact(publicKey: server.identity.publicKey, addresses: [TransportAddress(.tcp, proxy)])
            do {
                let channel = try await SecureChannel.connect(on: loop, to: viaProxy, identity: ChannelIdentity(SigningKey()), meshKey: .publicMesh)
                // The handshake survived: the flip lands in a transport frame (the request or its echo).
                let messages = try await channel.messages()
                try await channel.send([UInt8](repeating: 0xaa, count: 300))
                var got: [[UInt8]] = []
                do { for try await m in messages { got.append(m) } } catch {}
                #expect(got.isEmpty, "a tampered frame was delivered")
                let failure = try await loop.submit { channel.failure }
                let serverFailure = server.outcomes.value.count > 1 ? nil : try? await server.waitForOutcome()
                #expect(failure != nil || serverFailure != nil)
            } catch let f as SecureChannel.Failure {
                #expect(f != .handshakeTimeout, "offset \(offset)")
            }
        }
    }

    @Test("a connection that never completes the handshake is dropped after the timeout")
    func handshakeTimeout() async throws {
        try await withLoop { loop in
            var settings = SecureChannel.Settings()
            settings.handshakeTimeout = .milliseconds(100)
            let server = try await EchoServer(on: loop, meshKey: .publicMesh, settings: settings)
            let silent = try await StreamConnection.connect(on: loop, to: .tcp(server.address))
            #expect(try await server.waitForOutcome() == .failure(.handshakeTimeout))
            let closed = Box(false)
            try await loop.submit { silent.onClose { _ in closed.value = true }; silent.startReading { _ in } }
            for _ in 0..<200 where !closed.value { try await Task.sleep(for: .milliseconds(5)) }
            #expect(closed.value, "the server hung up")
        }
    }

    @Test("senders wait for a slow reader: the write queue stays within one message of the mark")
    func backpressure() async throws {
        try await withLoop { loop in
            let server = try await EchoServer(on: loop, meshKey: .publicMesh, echo: false)
            let channel = try await SecureChannel.connect(on: loop, to: server.contact, identity: ChannelIdentity(SigningKey()), meshKey: .publicMesh)
            try await loop.submit { channel.connection.highWaterMark = 256 << 10; channel.connection.lowWaterMark = 64 << 10 }
            let message = [UInt8](repeating: 1, count: 64 << 10)
            for _ in 0..<64 { try await channel.send(message) }  // 4 MiB; the server reads but never answers
            let peak = try await loop.submit { channel.connection.peakQueuedWriteBytes }
            #expect(peak <= (256 << 10) + message.count + 64, "peak \(peak)")
            try await loop.submit { channel.close() }
        }
    }
}
