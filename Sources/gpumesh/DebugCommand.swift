import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshRuntime
#if canImport(Glibc)
import Glibc
#endif

extension GPUMesh {
    /// `gpumesh mesh-key ...`: private mesh keys.
    struct MeshKeyCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "mesh-key",
            abstract: "Make and inspect private mesh keys.",
            subcommands: [New.self, Show.self])

        /// `gpumesh mesh-key new --out FILE`.
        struct New: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Write a fresh random mesh key to FILE (mode 0600; never overwrites).",
                discussion: "Give the file to every member (securely); start each node with --mesh-key FILE.")

            @Option(help: ArgumentHelp("Where to write the key.", valueName: "file")) var out: String
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                let key = MeshKey.generate()
                do { try key.write(to: out) } catch { throw CLIError("\(error)") }
                if json {
                    try printJSON(["file": out, "fingerprint": key.fingerprint])
                } else {
                    print("wrote \(out) (mode 0600), mesh fingerprint \(key.fingerprint)")
                    print("start members with: gpumesh node --mesh-key \(out)")
                }
            }
        }

        /// `gpumesh mesh-key show FILE`.
        struct Show: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Print a mesh key file's public fingerprint.")
            @Argument(help: ArgumentHelp("The mesh key file.", valueName: "file")) var file: String

            func run() async throws {
                do { print(try MeshKey.read(from: file).fingerprint) } catch { throw CLIError("\(error)") }
            }
        }
    }

    /// `gpumesh debug ...`: tools for testing interoperability and reachability.
    struct Debug: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Interoperability and reachability tools.",
            subcommands: [Echo.self, Ping.self, Publish.self])
    }
}

/// Options shared by the debug commands: which identity and mesh to use.
struct DebugIdentityOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Use this data directory's identity (default: a fresh throwaway identity).", valueName: "dir"))
    var dataDir: String?
    @Option(help: ArgumentHelp("The private mesh key file (default: the public mesh).", valueName: "file"))
    var meshKey: String?

    func identity() throws -> SigningKey {
        guard let dataDir else { return SigningKey() }
        return try DataDirectory(path: dataDir).loadIdentity()
    }

    func mesh() throws -> MeshKey {
        guard let meshKey else { return .publicMesh }
        do { return try MeshKey.read(from: meshKey) } catch { throw CLIError("\(error)") }
    }
}

extension GPUMesh.Debug {
    /// `gpumesh debug echo --listen ADDR`: answer Noise channels by echoing each message.
    struct Echo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Accept secure channels on ADDR and echo every application message back.",
            discussion: """
            Prints its contact string, then serves until SIGINT or SIGTERM. For checking another
            implementation of the channel protocol (Docs/PROTOCOL.md) against this one.
            """)

        @Option(help: ArgumentHelp("TCP address to listen on, HOST:PORT.", valueName: "addr")) var listen: String
        @OptionGroup var options: DebugIdentityOptions
        @Flag(help: "Print the contact as JSON.") var json = false

        func run() async throws {
            let address: SocketAddress
            do { address = try SocketAddress(parsing: listen) } catch { throw ValidationError("--listen: \(error)") }
            let identity = ChannelIdentity(try options.identity())
            let mesh = try options.mesh()
            let loop = try EventLoop(name: "echo")
            defer { loop.shutdown() }
            let served = LoopCounter()
            let signals = SignalOnce()
            let bound = try await loop.submit { () -> SocketAddress in
                let listener = try StreamListener.listen(on: loop, at: .tcp(address)) { connection in
                    SecureChannel.accept(connection, identity: identity, meshKey: mesh) { result in
                        guard case .success(let channel) = result else { return }
                        served.value += 1
                        channel.setMessageHandler { channel.send($0) }
                    }
                }
                for sig in [SIGINT, SIGTERM] { _ = try SignalWatcher.watch(on: loop, signal: sig) { signals.fire($0) } }
                return listener.tcpAddress!
            }
            let contact = try Contact(publicKey: identity.signingKey.publicKey, addresses: [TransportAddress(.tcp, bound.advertisable)])
            if json {
                try printJSON(["contact": contact.description, "listen": bound.description, "mesh": mesh.isPublicMesh ? "public" : mesh.fingerprint])
            } else {
                print("echoing secure channels on \(bound)")
                print("contact  \(contact)")
            }
            flushOutput()
            _ = await signals.wait()
            let count = try await loop.submit { served.value }
            if !json { print("served \(count) channel(s)") }
        }
    }

    /// `gpumesh debug ping CONTACT`: sealed ping round trips.
    struct Ping: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Send sealed pings to CONTACT and print each round-trip time.",
            discussion: "Exit status 1 when no ping is answered (peer down, or in another mesh).")

        @Argument(help: ArgumentHelp("The peer's contact string (gpm1:...).", valueName: "contact")) var contact: String
        @Option(help: "How many pings.") var count = 3
        @Option(help: "Seconds to wait for each answer.") var timeout = 2.0
        @OptionGroup var options: DebugIdentityOptions
        @Flag(help: "Print the result as JSON.") var json = false

        func validate() throws {
            guard (1...1000).contains(count) else { throw ValidationError("--count must be 1...1000") }
            guard timeout > 0 && timeout <= 60 else { throw ValidationError("--timeout must be in (0, 60]") }
            do { _ = try Contact(parsing: contact) } catch { throw ValidationError("contact: \(error)") }
        }

        func run() async throws {
            bootstrapLogging("warning")
            let target = try Contact(parsing: contact)
            let loop = try EventLoop(name: "ping")
            defer { loop.shutdown() }
            var config = NodeConfig()
            let v6 = target.address(for: .udp).map { if case .v6 = $0.ip { true } else { false } } ?? false
            config.udpListen = SocketAddress(ip: v6 ? .v6([UInt8](repeating: 0, count: 16)) : .v4(0, 0, 0, 0), port: 0)
            config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
            let node = try await MeshNode.start(on: loop, options: .init(identity: try options.identity(), config: config,
                                                                          meshKey: try options.mesh(), logger: Logger(label: "gpumesh.ping")))
            var rtts: [Double] = []
            var failures: [String] = []
            for i in 0..<count {
                do {
                    let r = try await node.ping(target, timeout: .milliseconds(Int64(timeout * 1000)))
                    rtts.append(r.roundTrip.milliseconds)
                    if !json { print(String(format: "pong from %@: seq=%d time=%.3f ms", r.peerID.short, i, r.roundTrip.milliseconds)) }
                } catch {
                    failures.append("\(error)")
                    if !json { print("seq=\(i): \(error)") }
                }
            }
            await node.stop()
            let sorted = rtts.sorted()
            if json {
                try printJSON(["peer_id": JSONValue.string(target.peerID.hex), "sent": .int(count), "answered": .int(rtts.count),
                               "rtt_ms_min": .double(sorted.first ?? 0), "rtt_ms_p50": .double(percentile(sorted, 0.5) ?? 0),
                               "rtt_ms_max": .double(sorted.last ?? 0)])
            } else {
                print("\(count) sent, \(rtts.count) answered" + (sorted.isEmpty ? "" : String(format: ", rtt min/p50/max %.3f/%.3f/%.3f ms", sorted.first!, percentile(sorted, 0.5) ?? 0, sorted.last!)))
            }
            if rtts.isEmpty { throw ExitCode(1) }
        }
    }
}
