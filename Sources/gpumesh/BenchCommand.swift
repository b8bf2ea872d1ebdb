import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto
import MeshRuntime
#if canImport(Glibc)
import Glibc
#endif

extension GPUMesh {
    /// `gpumesh bench ...`: measured figures, run from a release build.
    struct Bench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Measure the mesh's building blocks (run from a release build).",
            discussion: "Build first: swift build -c release --product gpumesh. Figures go in Docs/BENCHMARKS.md.",
            subcommands: [LoopBench.self, TransportBench.self, DHTBench.self, FindBench.self, GossipBench.self, JobsBench.self, LedgerBench.self, ExplorerBench.self])
    }

    /// Options every benchmark takes.
    struct BenchOptions: ParsableArguments {
        @Option(help: "Seconds per measurement.") var seconds = 2.0
        @Flag(help: "Print one JSON object.") var json = false

        func validate() throws {
            guard seconds > 0 && seconds <= 60 else { throw ValidationError("--seconds must be in (0, 60]") }
        }

        /// Adds what every result states (build, cores, measure length) and prints it as JSON.
        func printJSON(_ figures: [String: JSONValue]) throws {
            var result = figures
            result["seconds_per_measure"] = .double(seconds)
            try printBenchJSON(result)
        }
    }

    /// Prints a benchmark's figures as one JSON object, with the build kind and core count that
    /// every result must state.
    static func printBenchJSON(_ figures: [String: JSONValue]) throws {
        var result = figures
        #if DEBUG
        result["build"] = .string("debug")
        #else
        result["build"] = .string("release")
        #endif
        result["cpu_cores"] = .int(ProcessInfo.processInfo.activeProcessorCount)
        try gpumesh.printJSON(result)
    }

    /// `gpumesh bench loop`: the event loop, UDP and TCP on loopback.
    struct LoopBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "loop",
            abstract: "UDP round trips, cross-thread submissions and TCP throughput on one event loop.")

        @OptionGroup var options: BenchOptions
        var seconds: Double { options.seconds }

        func run() async throws {
            let loop = try EventLoop(name: "bench")
            defer { loop.shutdown() }
            let raw = try rawUDPRoundTrips()
            let window1 = try await udpEcho(on: loop, window: 1)
            let window32 = try await udpEcho(on: loop, window: 32)
            let submissions = try await crossThread(on: loop)
            let tcp = try await tcpThroughput()
            let result: [String: JSONValue] = [
                "udp_roundtrips_per_s": .int(Int(window1)),
                "udp_raw_syscall_roundtrips_per_s": .int(Int(raw)),
                "udp_loop_to_raw_ratio": .double((window1 / raw * 1000).rounded() / 1000),
                "udp_echo_datagrams_per_s_window_32": .int(Int(window32)),
                "cross_thread_submissions_per_s": .int(Int(submissions)),
                "tcp_loopback_mb_per_s": .double((tcp * 10).rounded() / 10),
                "datagram_bytes": .int(1024),
            ]
            if options.json {
                try options.printJSON(result)
            } else {
                print("udp round trips (1 KiB, one in flight)  \(Int(window1))/s")
                print("  same over raw blocking syscalls       \(Int(raw))/s (loop/raw \(String(format: "%.2f", window1 / raw)))")
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

        /// The baseline: the same 1 KiB ping-pong over two plain blocking sockets in one thread
        /// (sendto/recvfrom, no event loop), so the loop's figure can be read as a ratio.
        private func rawUDPRoundTrips() throws -> Double {
            func boundSocket() throws -> (Int32, sockaddr_in) {
                let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
                guard fd >= 0 else { throw CLIError("socket: errno \(errno)") }
                var addr = sockaddr_in()
                addr.sin_family = sa_family_t(AF_INET)
                addr.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
                var len = socklen_t(MemoryLayout<sockaddr_in>.size)
                let ok = withUnsafeMutablePointer(to: &addr) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
                }
                guard ok else { close(fd); throw CLIError("bind: errno \(errno)") }
                return (fd, addr)
            }
            let (a, aAddr) = try boundSocket()
            defer { close(a) }
            let (b, bAddr) = try boundSocket()
            defer { close(b) }
            var payload = [UInt8](repeating: 0xab, count: 1024)
            var buffer = [UInt8](repeating: 0, count: 2048)
            func send(_ fd: Int32, to addr: sockaddr_in) {
                var to = addr
                _ = withUnsafePointer(to: &to) { p in
                    p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(fd, &payload, payload.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                }
            }
            let start = EventLoop.monotonicNanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            var count = 0
            while EventLoop.monotonicNanoseconds() < deadline {
                send(a, to: bAddr)
                guard recv(b, &buffer, buffer.count, 0) == payload.count else { throw CLIError("raw baseline: short read") }
                send(b, to: aAddr)
                guard recv(a, &buffer, buffer.count, 0) == payload.count else { throw CLIError("raw baseline: short read") }
                count += 1
            }
            return Double(count) / (Double(EventLoop.monotonicNanoseconds() - start) / 1e9)
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
                try StreamListener.listen(on: server, at: .tcp(SocketAddress(ip: .loopbackV4, port: 0))) { c in
                    c.startReading { if case .data(let b) = $0 { received.value += b.count } }
                }.tcpAddress!
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
///
/// Padded to its own cache lines: it is written on every message by one loop thread, and when
/// the heap happened to place it beside data the other loop thread writes, false sharing alone
/// halved the measured channel throughput (channel/raw 0.35 instead of 0.64).
final class LoopCounter: @unchecked Sendable {
    private var before: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
    var value = 0
    private var after: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0, 0)
}

extension GPUMesh {
    /// `gpumesh bench transport`: secure channels and sealed datagrams against their primitives.
    struct TransportBench: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "transport",
            abstract: "Channel throughput vs raw AEAD, handshakes vs their primitives, datagram sealing.")

        @OptionGroup var options: BenchOptions
        var seconds: Double { options.seconds }

        func run() async throws {
            bootstrapLogging("error")
            let raw = rawAEAD()
            let channel = try await channelThroughput()
            let primitives = handshakePrimitiveMicroseconds()
            let handshakes = try await handshakeRate()
            let handshakeMicroseconds = 1e6 / handshakes
            let datagrams = sealOpenRate()
            let result: [String: JSONValue] = [
                "channel_mb_per_s": .double(round1(channel)),
                "raw_aead_mb_per_s": .double(round1(raw)),
                "channel_to_raw_ratio": .double((channel / raw * 1000).rounded() / 1000),
                "handshakes_per_s": .int(Int(handshakes)),
                "handshake_us": .double(round1(handshakeMicroseconds)),
                "handshake_primitives_us": .double(round1(primitives)),
                "handshake_to_primitives_ratio": .double((handshakeMicroseconds / primitives * 1000).rounded() / 1000),
                "datagram_seal_open_per_s": .int(Int(datagrams)),
                "message_bytes": .int(64 << 10),
            ]
            if options.json {
                try options.printJSON(result)
            } else {
                print(String(format: "channel (one, loopback TCP, 64 KiB messages)  %.1f MB/s", channel))
                print(String(format: "raw ChaCha20-Poly1305 (same run, in-process)  %.1f MB/s  (channel/raw %.2f)", raw, channel / raw))
                print(String(format: "handshakes (XXpsk0, sequential, both sides)   %.0f/s = %.1f us", handshakes, handshakeMicroseconds))
                print(String(format: "  their primitive operations                  %.1f us  (ratio %.2f)", primitives, handshakeMicroseconds / primitives))
                print(String(format: "datagram seal + open                          %.0f/s", datagrams))
            }
        }

        private func round1(_ x: Double) -> Double { (x * 10).rounded() / 10 }

        private func timed(_ body: () -> Int) -> Double {
            let start = EventLoop.monotonicNanoseconds()
            let n = body()
            return Double(n) / (Double(EventLoop.monotonicNanoseconds() - start) / 1e9)
        }

        /// ChaCha20-Poly1305 (IETF) over 64 KiB buffers, one thread: the channel's cipher, unframed.
        private func rawAEAD() -> Double {
            let key = SecureRandom.secret(32)
            let plaintext = [UInt8](repeating: 0x42, count: 64 << 10)
            let nonce = [UInt8](repeating: 0, count: 12)
            var out: [UInt8] = []
            out.reserveCapacity(plaintext.count + 16)
            let deadline = EventLoop.monotonicNanoseconds() + UInt64(seconds * 1e9)
            let perSecond = timed {
                var n = 0
                while EventLoop.monotonicNanoseconds() < deadline {
                    out.removeAll(keepingCapacity: true)
                    plaintext.withUnsafeBytes { p in nonce.withUnsafeBytes { AEAD.chaChaPoly.seal(p, ad: UnsafeRawBufferPointer(start: nil, count: 0), nonce: $0, key: key, appendingTo: &out) } }
                    n += 1
                }
                return n
            }
            return perSecond * Double(plaintext.count) / 1e6
        }

        /// A channel server on `loop` whose accepted channels go to `onChannel`; returns its contact.
        private static func channelServer(on loop: EventLoop, _ onChannel: @escaping @Sendable (SecureChannel) -> Void) async throws -> Contact {
            let identity = ChannelIdentity(SigningKey())
            let address = try await loop.submit {
                try StreamListener.listen(on: loop, at: .tcp(SocketAddress(ip: .loopbackV4, port: 0))) { c in
                    SecureChannel.accept(c, identity: identity, meshKey: .publicMesh) { if case .success(let ch) = $0 { onChannel(ch) } }
                }.tcpAddress!
            }
            return try Contact(publicKey: identity.signingKey.publicKey, addresses: [TransportAddress(.tcp, address)])
        }

        /// One channel between two loops over loopback TCP; the sender waits on backpressure.
        private func channelThroughput() async throws -> Double { try await Self.channelThroughput(seconds: seconds) }

        /// One channel between two loops over loopback TCP for `seconds`; MB/s delivered.
        static func channelThroughput(seconds: Double) async throws -> Double {
            let server = try EventLoop(name: "bench-server")
            defer { server.shutdown() }
            let client = try EventLoop(name: "bench-client")
            defer { client.shutdown() }
            let received = LoopCounter()
            let contact = try await channelServer(on: server) { ch in ch.setMessageHandler { received.value += $0.count } }
            let channel = try await SecureChannel.connect(on: client, to: contact, identity: ChannelIdentity(SigningKey()), meshKey: .publicMesh)
            // The sender runs on the client loop, as a node's transfers do: it sends while the
            // channel is writable and resumes when the write queue drains, with no thread hop.
            let message = [UInt8](repeating: 0x5a, count: 64 << 10)
            let duration = seconds
            let (start, sent): (UInt64, Int) = try await withCheckedThrowingContinuation { continuation in
                client.execute {
                    let start = EventLoop.monotonicNanoseconds()
                    let deadline = start + UInt64(duration * 1e9)
                    var sent = 0
                    var done = false
                    func pump() {
                        while !done && channel.isWritable {
                            if EventLoop.monotonicNanoseconds() >= deadline {
                                done = true
                                continuation.resume(returning: (start, sent))
                                return
                            }
                            channel.send(message)
                            sent += message.count
                        }
                    }
                    channel.setWritableHandler(pump)
                    pump()
                }
            }
            while try await server.submit({ received.value }) < sent { try await Task.sleep(for: .milliseconds(1)) }
            let elapsed = Double(EventLoop.monotonicNanoseconds() - start) / 1e9
            try await client.submit { channel.close() }
            return Double(sent) / elapsed / 1e6
        }

        /// Full handshakes, one after another: TCP connect, three Noise messages, both identities checked.
        private func handshakeRate() async throws -> Double {
            let server = try EventLoop(name: "bench-server")
            defer { server.shutdown() }
            let client = try EventLoop(name: "bench-client")
            defer { client.shutdown() }
            let clientIdentity = ChannelIdentity(SigningKey())
            let contact = try await Self.channelServer(on: server) { _ in }
            let start = EventLoop.monotonicNanoseconds()
            let deadline = start + UInt64(seconds * 1e9)
            var count = 0
            while EventLoop.monotonicNanoseconds() < deadline {
                let channel = try await SecureChannel.connect(on: client, to: contact, identity: clientIdentity, meshKey: .publicMesh)
                channel.closeFromAnyThread()
                count += 1
            }
            return Double(count) / (Double(EventLoop.monotonicNanoseconds() - start) / 1e9)
        }

        /// What one XXpsk0 handshake must compute, both sides together: 2 ephemeral key pairs,
        /// 6 X25519 operations (ee, es, se on each side), 2 signature checks and 2 Ed25519-to-X25519
        /// conversions of the peer's key. Timed with the same libsodium calls the handshake makes.
        private func handshakePrimitiveMicroseconds() -> Double {
            let iterations = max(200, Int(seconds * 500))
            let signer = SigningKey()
            let peer = X25519KeyPair()
            let message = [UInt8](repeating: 1, count: 57)
            let signature = signer.signature(for: message)
            func perOp(_ body: () -> Void) -> Double {
                let start = EventLoop.monotonicNanoseconds()
                for _ in 0..<iterations { body() }
                return Double(EventLoop.monotonicNanoseconds() - start) / Double(iterations) / 1e3
            }
            let keygen = perOp { _ = X25519KeyPair() }
            let dh = perOp { _ = try? peer.sharedSecret(with: peer.publicKey) }
            let verify = perOp { _ = signer.publicKey.isValidSignature(signature, for: message) }
            let convert = perOp { _ = try? signer.publicKey.x25519() }
            return 2 * keygen + 6 * dh + 2 * verify + 2 * convert
        }

        /// Seal a small body for a peer and open it there, keys cached (the steady state).
        private func sealOpenRate() -> Double {
            let a = SigningKey(), b = SigningKey()
            let now: () -> UInt64 = { UInt64(Date().timeIntervalSince1970 * 1000) }
            var settings = DatagramSealer.Settings()
            settings.replayCapacity = 1 << 22
            let sa = DatagramSealer(identity: a, meshKey: .publicMesh, now: now, random: SecureRandom.bytes)
            let sb = DatagramSealer(identity: b, meshKey: .publicMesh, settings: settings, now: now, random: SecureRandom.bytes)
            let body = DatagramMessage.ping(nonce: 1).encoded()
            let deadline = EventLoop.monotonicNanoseconds() + UInt64(seconds * 1e9)
            return timed {
                var n = 0
                while EventLoop.monotonicNanoseconds() < deadline {
                    guard let d = sa.seal(body, to: b.publicKey), case .success = d.withUnsafeBytes({ sb.open($0) }) else { break }
                    n += 1
                }
                return n
            }
        }
    }
}
