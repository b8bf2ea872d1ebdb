import Foundation
import MeshCore
import MeshCrypto
@testable import MeshRuntime
import Testing

@Suite("Sockets", .timeLimit(.minutes(3)))
struct SocketTests {
    @Test("two UDP sockets on one loop exchange datagrams and see each other's addresses")
    func udpExchange() async throws {
        try await withLoop { loop in
            let received = Box<[(String, SocketAddress)]>([])
            let (stream, got) = AsyncStream.makeStream(of: Void.self)
            let (a, b) = try await loop.submit { () -> (UDPSocket, UDPSocket) in
                let a = try UDPSocket.bind(on: loop, to: loopback)
                let b = try UDPSocket.bind(on: loop, to: loopback)
                try b.startReceiving { bytes, from in
                    received.mutate { $0.append((String(decoding: bytes, as: UTF8.self), from)) }
                    b.send(Array("pong:".utf8) + Array(bytes), to: from)
                }
                try a.startReceiving { bytes, from in
                    received.mutate { $0.append((String(decoding: bytes, as: UTF8.self), from)) }
                    got.yield()
                }
                #expect(a.localAddress.port != 0 && a.localAddress.port != b.localAddress.port)
                #expect(a.send(Array("ping".utf8), to: b.localAddress))
                return (a, b)
            }
            for await _ in stream { break }
            let r = received.value
            #expect(r.count == 2)
            #expect(r[0].0 == "ping" && r[0].1 == a.localAddress)
            #expect(r[1].0 == "pong:ping" && r[1].1 == b.localAddress)
            let stats = try await loop.submit { (a.statistics, b.statistics) }
            #expect(stats.0.sent == 1 && stats.0.received == 1)
            #expect(stats.1.sent == 1 && stats.1.received == 1)
        }
    }

    @Test("an empty datagram is delivered as empty, not mistaken for 'nothing to read'")
    func udpEmptyDatagram() async throws {
        try await withLoop { loop in
            let sizes = Box<[Int]>([])
            let (stream, got) = AsyncStream.makeStream(of: Void.self)
            try await loop.submit {
                let a = try UDPSocket.bind(on: loop, to: loopback)
                let b = try UDPSocket.bind(on: loop, to: loopback)
                try b.startReceiving { bytes, _ in sizes.mutate { $0.append(bytes.count) }; if sizes.value.count == 2 { got.yield() } }
                a.send([], to: b.localAddress)
                a.send([7, 7, 7], to: b.localAddress)
            }
            for await _ in stream { break }
            #expect(sizes.value == [0, 3])
        }
    }

    @Test("UDP over IPv6 loopback, where the host has it")
    func udpIPv6() async throws {
        try await withLoop { loop in
            let v6 = SocketAddress(ip: .loopbackV6, port: 0)
            guard (try? await loop.submit({ try UDPSocket.bind(on: loop, to: v6).close() })) != nil else {
                return  // no ::1 on this host (some containers); IPv4 is covered above
            }
            let (stream, got) = AsyncStream.makeStream(of: SocketAddress.self)
            try await loop.submit {
                let a = try UDPSocket.bind(on: loop, to: v6)
                let b = try UDPSocket.bind(on: loop, to: v6)
                try b.startReceiving { _, from in got.yield(from) }
                a.send([1, 2, 3], to: b.localAddress)
            }
            for await from in stream {
                #expect(from.ip == .loopbackV6)
                #expect(from.description.hasPrefix("[::1]:"))
                break
            }
        }
    }

    @Test("64 MiB over TCP to a deliberately slow reader arrives intact, with a bounded write queue")
    func tcpBulkTransferWithSlowReader() async throws {
        let serverLoop = try EventLoop(name: "server")
        defer { serverLoop.shutdown() }
        try await withLoop("client") { clientLoop in
            let total = 64 << 20
            let chunk = 64 << 10
            let result = Box<(count: Int, digest: [UInt8], pauses: Int)?>(nil)
            let serverSide = Box<StreamConnection?>(nil)
            let (finished, finish) = AsyncStream.makeStream(of: Void.self)
            let server = try await serverLoop.submit { () -> SocketAddress in
                let listener = try StreamListener.listen(on: serverLoop, at: .tcp(loopback)) { conn in
                    final class ReaderState { var hasher = Blake2b.Hasher(); var count = 0; var pauses = 0; var sincePause = 0 }
                    let state = ReaderState()
                    serverSide.value = conn
                    conn.startReading { event in
                        switch event {
                        case .data(let bytes):
                            state.hasher.update(bytes)
                            state.count += bytes.count
                            state.sincePause += bytes.count
                            if state.count == total {
                                result.value = (state.count, state.hasher.finalize(), state.pauses)
                                finish.yield()
                            } else if state.pauses == 0 && state.count >= 1 << 20 {
                                // Stop outright after the first MiB; the test resumes us once the
                                // writer is seen blocked at its high-water mark.
                                state.pauses += 1
                                state.sincePause = 0
                                conn.pauseReading()
                            } else if state.sincePause >= 2 << 20 {
                                // Then a slow reader: stop for 5 ms every 2 MiB.
                                state.sincePause = 0
                                state.pauses += 1
                                conn.pauseReading()
                                try! serverLoop.schedule(after: .milliseconds(5)) { conn.resumeReading() }
                            }
                        case .end, .failed:
                            finish.yield()
                        }
                    }
                }
                return listener.tcpAddress!
            }
            let client = try await StreamConnection.connect(on: clientLoop, to: .tcp(server))
            let (hwm, lwm) = try await clientLoop.submit { () -> (Int, Int) in
                client.highWaterMark = 512 << 10
                client.lowWaterMark = 128 << 10
                return (client.highWaterMark, client.lowWaterMark)
            }
            #expect(lwm < hwm)
            let writer = Task {
                let sender = Blake2b.Hasher()
                var sent = 0
                while sent < total {
                    let piece = SecureRandom.bytes(chunk)
                    sender.update(piece)
                    try await client.write(piece)
                    sent += chunk
                }
                return sender.finalize()
            }
            // The reader has stopped: the writer must end up blocked with a full queue.
            while try await clientLoop.submit({ client.queuedWriteBytes }) < hwm {
                try await Task.sleep(for: .milliseconds(5))
            }
            try await serverLoop.submit { serverSide.value?.resumeReading() }
            let expected = try await writer.value
            for await _ in finished { break }
            let r = try #require(result.value)
            #expect(r.count == total)
            #expect(r.digest == expected)
            #expect(r.pauses >= 10, "the reader really was slow")
            let peak = try await clientLoop.submit { client.peakQueuedWriteBytes }
            #expect(peak <= hwm + chunk, "write queue peaked at \(peak) bytes; bound is \(hwm + chunk)")
            #expect(peak >= hwm, "the stopped reader made the writer queue up to the high-water mark")
            try await clientLoop.submit { client.closeGracefully() }
        }
    }

    @Test("a Unix-domain socket carries a request and reply; the listener removes its file on close")
    func unixSocketExchange() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/node.sock"
        try await withLoop { loop in
            let listener = try await loop.submit {
                try StreamListener.listen(on: loop, at: .unix(path)) { conn in
                    conn.startReading { event in
                        if case .data(let bytes) = event { conn.write(Array("echo:".utf8) + Array(bytes)) }
                    }
                }
            }
            let client = try await StreamConnection.connect(on: loop, to: .unix(path))
            let (stream, got) = AsyncStream.makeStream(of: String.self)
            try await loop.submit {
                client.startReading { if case .data(let b) = $0 { got.yield(String(decoding: b, as: UTF8.self)) } }
            }
            try await client.write(Array("hello".utf8))
            for await reply in stream { #expect(reply == "echo:hello"); break }
            #expect(FileManager.default.fileExists(atPath: path))
            try await loop.submit { listener.close() }
            try await loop.submit {}
            #expect(!FileManager.default.fileExists(atPath: path))
        }
    }

    @Test("closing a connection fails blocked writers instead of leaving them suspended")
    func blockedWritersFailOnClose() async throws {
        try await withLoop { loop in
            let server = try await loop.submit { () -> SocketAddress in
                // Accept but never read: the client's queue fills up.
                let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { conn in conn.pauseReading() }
                return l.tcpAddress!
            }
            let client = try await StreamConnection.connect(on: loop, to: .tcp(server))
            try await loop.submit { client.highWaterMark = 64 << 10; client.lowWaterMark = 16 << 10 }
            let writer = Task {
                var n = 0
                do {
                    while n < 10_000 { try await client.write([UInt8](repeating: 1, count: 64 << 10)); n += 1 }
                } catch {
                    return (n, true)
                }
                return (n, false)
            }
            // Wait until the writer is blocked behind a full queue.
            while try await loop.submit({ client.queuedWriteBytes }) < 64 << 10 { try await Task.sleep(for: .milliseconds(10)) }
            try await loop.submit { client.close() }
            let (written, failed) = await writer.value
            #expect(failed)
            #expect(written < 10_000)
        }
    }
}
