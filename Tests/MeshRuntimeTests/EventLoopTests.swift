import Foundation
import MeshCore
@testable import MeshRuntime
import Testing

@Suite("EventLoop", .timeLimit(.minutes(2)))
struct EventLoopTests {
    @Test("timers fire in deadline order, repeating timers repeat until cancelled")
    func timersFireInOrder() async throws {
        try await withLoop { loop in
            let fired = Box<[Int]>([])
            let (stream, done) = AsyncStream.makeStream(of: Void.self)
            try await loop.submit {
                for delay in [30, 0, 20, 10, 40] {
                    try loop.schedule(after: .milliseconds(delay)) {
                        fired.mutate { $0.append(delay) }
                        if fired.value.count == 5 { done.yield() }
                    }
                }
            }
            for await _ in stream { break }
            #expect(fired.value == [0, 10, 20, 30, 40])

            let ticks = Box(0)
            let (tickStream, tickDone) = AsyncStream.makeStream(of: Void.self)
            try await loop.submit {
                var timer: LoopTimer?
                timer = try loop.schedule(after: .milliseconds(1), repeating: .milliseconds(2)) {
                    ticks.value += 1
                    if ticks.value == 3 {
                        timer?.cancel()
                        // A cancelled timer never fires again: check a while later.
                        try! loop.schedule(after: .milliseconds(20)) { tickDone.yield() }
                    }
                }
            }
            for await _ in tickStream { break }
            #expect(ticks.value == 3)
            #expect(try await loop.submit { loop.openHandles } == 0)
        }
    }

    @Test("work submitted from many threads runs on the loop thread, in per-thread order")
    func crossThreadSubmission() async throws {
        try await withLoop { loop in
            let perThread = 5_000
            let threads = 4
            let seen = Box<[[Int]]>(Array(repeating: [], count: threads))
            let offLoop = Box(0)
            await withTaskGroup(of: Void.self) { group in
                for t in 0..<threads {
                    group.addTask {
                        for i in 0..<perThread {
                            loop.execute {
                                if !loop.inEventLoop { offLoop.value += 1 }
                                seen.mutate { $0[t].append(i) }
                            }
                        }
                    }
                }
            }
            // A submit queued after all the executes runs after them.
            let total = try await loop.submit { seen.value.map(\.count).reduce(0, +) }
            #expect(total == threads * perThread)
            #expect(offLoop.value == 0)
            for t in 0..<threads { #expect(seen.value[t] == Array(0..<perThread)) }
            #expect(!loop.inEventLoop)
        }
    }

    @Test("shutdown closes every open handle, runs close callbacks and refuses later work")
    func shutdownWithOpenHandles() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let loop = try EventLoop(name: "shutdown")
        let sockets = Box<[String]>([])
        let closedReasons = Box<[String]>([])
        let socketPath = dir + "/ctl.sock"
        let listenerAddress = try await loop.submit { () -> SocketAddress in
            let udp = try UDPSocket.bind(on: loop, to: loopback)
            try loop.schedule(after: .milliseconds(1), repeating: .milliseconds(1)) {}
            try loop.schedule(after: .seconds(3600)) {}
            let unix = try StreamListener.listen(on: loop, at: .unix(socketPath)) { _ in }
            let tcp = try StreamListener.listen(on: loop, at: .tcp(loopback)) { conn in
                sockets.mutate { $0.append(socketIdentity(conn)!) }
                conn.onClose { _ in closedReasons.mutate { $0.append("server side") } }
            }
            sockets.mutate { $0 += [udp, unix, tcp].map { socketIdentity($0)! } }
            return tcp.tcpAddress!
        }
        let client = try await StreamConnection.connect(on: loop, to: .tcp(listenerAddress))
        try await loop.submit {
            client.onClose { _ in closedReasons.mutate { $0.append("client side") } }
            sockets.mutate { $0.append(socketIdentity(client)!) }
        }
        // Wait for the server side to be accepted, so both ends are open at shutdown.
        while sockets.value.count < 5 { try await Task.sleep(for: .milliseconds(2)) }
        #expect(openSocketIdentities().isSuperset(of: sockets.value))
        #expect(FileManager.default.fileExists(atPath: socketPath))
        #expect(try await loop.submit { loop.openHandles } >= 6)

        loop.shutdown()
        loop.shutdown()  // idempotent

        #expect(Set(closedReasons.value) == ["client side", "server side"])
        #expect(!FileManager.default.fileExists(atPath: socketPath), "a Unix listener removes its socket file")
        #expect(openSocketIdentities().isDisjoint(with: sockets.value), "every socket is closed")
        #expect(loop.closedCleanly, "uv_loop_close found no handle left open")
        #expect(loop.execute {} == false)
        await #expect(throws: EventLoopError.shutDown) { try await loop.submit { 1 } }
    }

    @Test("uvCheck names the failing call and the libuv error")
    func errorsNameTheCall() async throws {
        try await withLoop { loop in
            let taken = try await loop.submit { () -> SocketAddress in
                let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { _ in }
                return l.tcpAddress!
            }
            do {
                try await loop.submit { _ = try StreamListener.listen(on: loop, at: .tcp(taken)) { _ in } }
                Issue.record("binding a port in use succeeded")
            } catch let error as UVError {
                #expect(error.code == UVError.addressInUse)
                #expect(error.name == "EADDRINUSE")
                #expect(error.description.contains("uv_listen") || error.description.contains("uv_tcp_bind"))
                #expect(error.description.contains(String(taken.port)))
            }
            // A port nobody listens on: find one by binding and closing.
            let free = try await loop.submit { () -> SocketAddress in
                let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { _ in }
                l.close()
                return l.tcpAddress!
            }
            do {
                _ = try await StreamConnection.connect(on: loop, to: .tcp(free))
                Issue.record("connecting to a closed port succeeded")
            } catch let error as UVError {
                #expect(error.code == UVError.connectionRefused)
                #expect(error.call.hasPrefix("uv_tcp_connect"))
            }
            do {
                _ = try await StreamConnection.connect(on: loop, to: .unix("/nonexistent-dir/x.sock"))
                Issue.record("connecting to a missing socket succeeded")
            } catch let error as UVError {
                #expect(error.code == UVError.noEntry)
                #expect(error.call.hasPrefix("uv_pipe_connect"))
            }
        }
    }

    @Test("several consumers share one loop; many open/close cycles leak no handles or descriptors")
    func noLeaks() async throws {
        let dir = try makeTempDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sockets = Box<Set<String>>([])
        var loops: [EventLoop] = []
        for cycle in 0..<20 {
            try await withLoop("leak\(cycle)") { loop in
                loops.append(loop)
                for round in 0..<10 {
                    let path = "\(dir)/s\(round).sock"
                    let (server, udp) = try await loop.submit { () -> (SocketAddress, UDPSocket) in
                        let l = try StreamListener.listen(on: loop, at: .tcp(loopback)) { conn in
                            sockets.mutate { _ = $0.insert(socketIdentity(conn)!) }
                            conn.startReading { event in if case .data = event { conn.write([1]) } }
                        }
                        let u = try StreamListener.listen(on: loop, at: .unix(path)) { $0.close() }
                        let udp = try UDPSocket.bind(on: loop, to: loopback)
                        sockets.mutate { $0.formUnion([l, u, udp].map { socketIdentity($0)! }) }
                        return (l.tcpAddress!, udp)
                    }
                    let client = try await StreamConnection.connect(on: loop, to: .tcp(server))
                    let (stream, got) = AsyncStream.makeStream(of: Void.self)
                    try await loop.submit {
                        client.startReading { if case .data = $0 { got.yield() } }
                        client.write([0])
                    }
                    for await _ in stream { break }
                    let pipe = try await StreamConnection.connect(on: loop, to: .unix(path))
                    try await loop.submit {
                        sockets.mutate { $0.formUnion([client, pipe].compactMap { socketIdentity($0) }) }
                        client.close(); pipe.close(); udp.close()
                    }
                }
                // Close the listeners too; once the close callbacks ran, the loop holds nothing.
                try await loop.submit { uvWalkCloseAll(loop) }
                #expect(try await loop.submit { loop.openHandles } == 0)
            }
        }
        #expect(sockets.value.count >= 20 * 10 * 4)
        #expect(openSocketIdentities().isDisjoint(with: sockets.value), "every socket is closed")
        let allClean = loops.allSatisfy { $0.closedCleanly }
        #expect(allClean)

        // Within one loop: UDP sockets opened and closed leave no handle behind.
        try await withLoop { loop in
            let mine = try await loop.submit { () -> [String] in
                (0..<500).map { _ in
                    let s = try! UDPSocket.bind(on: loop, to: loopback)
                    defer { s.close() }
                    return socketIdentity(s)!
                }
            }
            // Close callbacks run on the next loop iteration.
            try await loop.submit {}
            #expect(try await loop.submit { loop.openHandles } == 0)
            #expect(openSocketIdentities().isDisjoint(with: mine))
        }
    }
}

/// Closes every handle of `loop` (test helper; loop thread).
func uvWalkCloseAll(_ loop: EventLoop) {
    loop.preconditionInLoop()
    loop.closeAllHandles(includingWakeup: false)
}
