import ArgumentParser
import Foundation
import MeshCore
import MeshRuntime

extension GPUMesh {
    /// `gpumesh bench ...`: measured figures, run from a release build.
    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure the mesh's building blocks (run from a release build).",
            discussion: "Build first: swift build -c release --product gpumesh. Figures go in Docs/BENCHMARKS.md.",
            subcommands: [LoopBench.self])
    }

    /// `gpumesh bench loop`: the event loop, UDP and TCP on loopback.
    struct LoopBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "loop",
            abstract: "UDP round trips, cross-thread submissions and TCP throughput on one event loop.")

        @Option(help: "Seconds per measurement.") var seconds = 2.0
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds must be in (0, 60]") }
        }

        func run() async throws {
            let loop = try EventLoop(name: "bench")
            defer { loop.shutdown() }
            let window1 = try await udpEcho(on: loop, window: 1)
            let window32 = try await udpEcho(on: loop, window: 32)
            let submissions = try await crossThread(on: loop)
            let tcp = try await tcpThroughput()
            var result: [String: JSONValue] = [
                "udp_roundtrips_per_s": .int(Int(window1)),
                "udp_echo_datagrams_per_s_window_32": .int(Int(window32)),
                "cross_thread_submissions_per_s": .int(Int(submissions)),
                "tcp_loopback_mb_per_s": .double((tcp * 10).rounded() / 10),
                "datagram_bytes": .int(1024),
                "seconds_per_measure": .double(seconds),
                "cpu_cores": .int(ProcessInfo.processInfo.activeProcessorCount),
            ]
            #if DEBUG
            result["build"] = .string("debug")
            #else
            result["build"] = .string("release")
            #endif
            if json {
                try printJSON(result)
            } else {
                print("udp round trips (1 KiB, one in flight)  \(Int(window1))/s")
                print("udp echo (1 KiB, 32 in flight)          \(Int(window32)) datagrams/s")
                print("cross-thread submissions                \(Int(submissions))/s")
                print(String(format: "tcp loopback, one connection            %.1f MB/s", tcp))
            }
        }

        /// Two sockets on one loop; A keeps `window` datagrams of 1 KiB in flight to B, which echoes.
        private func udpEcho(on loop: EventLoop, window: Int) async throws -> Double {
            let duration = seconds
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Double, Error>) in
                loop.execute {
                    do {
                        let a = try UDPSocket.bind(on: loop, to: SocketAddress(ip: .loopbackV4, port: 0))
                        let b = try UDPSocket.bind(on: loop, to: SocketAddress(ip: .loopbackV4, port: 0))
                        let payload = [UInt8](repeating: 0xab, count: 1024)
                        try b.startReceiving { bytes, from in b.send(bytes, to: from) }
                        let start = EventLoop.monotonicNanoseconds()
                        let deadline = start + UInt64(duration * 1e9)
                        var completed = 0
                        var outstanding = window
                        try a.startReceiving { _, _ in
                            completed += 1
                            outstanding -= 1
                            if EventLoop.monotonicNanoseconds() < deadline {
                                a.send(payload, to: b.localAddress)
                                outstanding += 1
                            } else if outstanding == 0 {
                                let elapsed = Double(EventLoop.monotonicNanoseconds() - start) / 1e9
                                a.close(); b.close()
                                continuation.resume(returning: Double(completed) / elapsed)
                            }
                        }
                        for _ in 0..<window { a.send(payload, to: b.localAddress) }
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
            }
        }

        /// One thread off the loop submits closures as fast as it can; the time runs until the loop ran the last.
        private func crossThread(on loop: EventLoop) async throws -> Double {
            let count = 500_000
            let counter = LoopCounter()
            let start = EventLoop.monotonicNanoseconds()
            let finished: UInt64 = await withCheckedContinuation { continuation in
                Thread.detachNewThread {
                    for _ in 0..<(count - 1) { loop.execute { counter.value += 1 } }
                    loop.execute {
                        counter.value += 1
                        continuation.resume(returning: EventLoop.monotonicNanoseconds())
                    }
                }
            }
            let total = try await loop.submit { counter.value }
            guard total == count else { throw CLIError("lost submissions: \(total) of \(count) ran") }
            return Double(count) / (Double(finished - start) / 1e9)
        }

        /// One TCP connection over loopback between two loops, 64 KiB writes, for the measure's duration.
        private func tcpThroughput() async throws -> Double {
            let server = try EventLoop(name: "bench-server")
            defer { server.shutdown() }
            let client = try EventLoop(name: "bench-client")
            defer { client.shutdown() }
            let received = LoopCounter()
            let address = try await server.submit { () -> SocketAddress in
                let l = try StreamListener.listen(on: server, at: .tcp(SocketAddress(ip: .loopbackV4, port: 0))) { c in
                    c.startReading { if case .data(let b) = $0 { received.value += b.count } }
                }
                guard case .tcp(let a) = l.endpoint else { fatalError("TCP listener without TCP endpoint") }
                return a
            }
            let connection = try await StreamConnection.connect(on: client, to: .tcp(address))
            let chunk = [UInt8](repeating: 0x5a, count: 64 << 10)
            let start = EventLoop.monotonicNanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            var sent = 0
            while EventLoop.monotonicNanoseconds() < deadline {
                try await connection.write(chunk)
                sent += chunk.count
            }
            while try await server.submit({ received.value }) < sent { try await Task.sleep(for: .milliseconds(1)) }
            let elapsed = Double(EventLoop.monotonicNanoseconds() - start) / 1e9
            try await client.submit { connection.close() }
            return Double(sent) / elapsed / 1e6
        }
    }
}

/// A counter touched only on one loop thread (the benchmark's confinement, not a lock).
final class LoopCounter: @unchecked Sendable {
    var value = 0
}
