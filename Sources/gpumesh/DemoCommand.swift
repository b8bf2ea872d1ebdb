import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshDHT
import MeshExplorer
import MeshCrypto
import MeshRuntime

extension GPUMesh {
    /// `gpumesh demo`: a small mesh in one process, on loopback.
    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a small local mesh in one process and narrate what the peers did.",
            discussion: """
            Starts --nodes peers (fresh identities, 127.0.0.1, free ports) on --loops shared event loops,
            in a private mesh with a fresh mesh key. Act one: every peer pings every other with sealed
            datagrams, asks its neighbour for its contact (proving its address with a cookie), opens a
            Noise channel to it that proves both identities, and joins the DHT. Act two (4 peers or
            more): peers #2 and up provide simulated GPUs of mixed models; renters #0 and #1 find
            providers by model and VRAM, run real sandboxed jobs with inputs and outputs, and
            countersign receipts; the receipts spread by gossip, and three peers show the reputation
            and points they compute from them. Exit status 0 when everything succeeded; with --keep
            the mesh stays up until Ctrl-C and peer #0 answers other commands. With --explorer ADDR
            peer #0 serves its explorer there from the start (watch the story in a browser), and the
            mesh stays up until Ctrl-C.
            """)

        @Option(help: "Number of peers (2...64).") var nodes = 16
        @Flag(help: "Leave the mesh running after the story (until Ctrl-C) and print how to reach it.") var keep = false
        @Option(help: "Number of event loops the peers share (1...8).") var loops = 2
        @Option(help: ArgumentHelp("Serve peer #0's explorer at this address, HOST:PORT (port 0: any free port); implies --keep.", valueName: "addr"))
        var explorer: String?
        @Option(help: ArgumentHelp("Log level.", valueName: "level")) var logLevel = "error"
        @Flag(help: "Print the result as JSON.") var json = false

        func validate() throws {
            guard (2...64).contains(nodes) else { throw ValidationError("--nodes must be 2...64") }
            guard (1...8).contains(loops) else { throw ValidationError("--loops must be 1...8") }
            if let explorer {
                do { _ = try Explorer.parseListen(explorer, allowPublic: false) } catch { throw ValidationError("--explorer: \(error)") }
            }
        }

        func run() async throws {
            bootstrapLogging(logLevel)
            let logger = Logger(label: "gpumesh.demo")
            let started = Date()
            let meshKey = MeshKey.generate()
            if !json {
                print("GPUMesh demo: \(nodes) peers on \(loops) shared event loops, one process, 127.0.0.1")
                print("private mesh \(meshKey.fingerprint) (fresh key: every datagram and handshake needs it)\n")
            }

            let eventLoops = try (0..<loops).map { try EventLoop(name: "demo-\($0)") }
            defer { eventLoops.forEach { $0.shutdown() } }
            var config = NodeConfig()
            config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
            config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
            // Providers' heartbeats every 5 s, so liveness (and the explorer's uptime) shows within the story.
            config.provider.heartbeatIntervalSeconds = 5
            var peers: [MeshNode] = []
            // With --keep, peer #0 gets a data directory with its key and a control socket, so
            // other gpumesh commands can be pointed at it.
            let keep = keep || explorer != nil
            let metrics = ExplorerMetrics()
            var explorerServer: Explorer?
            let keepDir = NSTemporaryDirectory() + "gpumesh-demo-" + Hex.encode(SecureRandom.bytes(4)) + "/peer0"
            for i in 0..<nodes {
                var options = MeshNode.Options(identity: SigningKey(), config: config, meshKey: meshKey, logger: logger)
                if keep && i == 0 {
                    try FileManager.default.createDirectory(atPath: keepDir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
                    do { try KeyFile.write(options.identity, to: keepDir + "/identity.key") } catch { throw CLIError("\(error)") }
                    options.dataDirectory = keepDir
                    options.controlSocketPath = keepDir + "/node.sock"
                    if explorer != nil { options.metricsFactory = metrics.factory }
                }
                let node = try await MeshNode.start(on: eventLoops[i % loops], options: options)
                if i == 0, let explorer {
                    do {
                        let server = try Explorer(node: node, metrics: metrics, settings: .init(listen: explorer), logger: logger)
                        let port = try await server.start()
                        explorerServer = server
                        // With --json, standard output is the summary alone: the address goes to standard error.
                        if json { FileHandle.standardError.write(Data("peer #0's explorer: \(server.url(port: port))\n".utf8)) }
                        else { print("peer #0's explorer: \(server.url(port: port))\n") }
                        flushOutput()
                    } catch {
                        await node.stop()
                        throw CLIError("\(error)")
                    }
                }
                // Each peer echoes what arrives on channels opened to it.
                try await node.loop.submit { node.serve(ChannelService.echo) { ch in ch.setMessageHandler { ch.send($0) } } }
                peers.append(node)
            }
            if !json {
                print("started \(nodes) peers:")
                for (i, p) in peers.enumerated() {
                    print("  #\(i) \(p.peerID.short)  udp \(p.udpAddress)  tcp \(p.tcpAddress)  loop \(i % loops)")
                }
                print("")
            }

            // Every peer pings every other, all at once; a pong opens only if its sender holds the key the contact names.
            let contacts = peers.map(\.contact)
            let outcomes = await withTaskGroup(of: (Int, Int, Result<ProbeResult, Error>).self) { group in
                for (i, p) in peers.enumerated() {
                    for (j, c) in contacts.enumerated() where j != i {
                        group.addTask { (i, j, await Result(catching: { try await p.ping(c, timeout: .seconds(3)) })) }
                    }
                }
                var all: [(Int, Int, Result<ProbeResult, Error>)] = []
                for await o in group { all.append(o) }
                return all
            }
            var reached = [Int](repeating: 0, count: nodes)
            var rtts: [Double] = []
            var problems: [String] = []
            for (i, j, result) in outcomes {
                switch result {
                case .success(let r) where r.peerID == contacts[j].peerID:
                    reached[i] += 1
                    rtts.append(r.roundTrip.milliseconds)
                case .success(let r):
                    problems.append("#\(i) -> #\(j): answer claimed \(r.peerID.short), expected \(contacts[j].peerID.short)")
                case .failure(let e):
                    problems.append("#\(i) -> #\(j): \(e)")
                }
            }
            // Each peer asks its neighbour for its contact (an unproven address gets a cookie
            // challenge first), then opens a Noise channel to it and has a message echoed.
            var infoOK = [Bool](repeating: false, count: nodes)
            var channelOK = [Bool](repeating: false, count: nodes)
            for (i, p) in peers.enumerated() {
                let j = (i + 1) % nodes
                do {
                    infoOK[i] = try await p.requestInfo(contacts[j]) == contacts[j]
                    if !infoOK[i] { problems.append("#\(i) -> #\(j) info: contact differs") }
                } catch {
                    problems.append("#\(i) -> #\(j) info: \(error)")
                }
                do {
                    let channel = try await p.openChannel(to: contacts[j], service: ChannelService.echo)
                    let replies = try await channel.messages()
                    let hello = Array("hello from #\(i)".utf8)
                    try await channel.send(hello)
                    for try await reply in replies { channelOK[i] = reply == hello && channel.remotePeerID == contacts[j].peerID; break }
                    channel.closeFromAnyThread()
                    if !channelOK[i] { problems.append("#\(i) -> #\(j) channel: echo or identity mismatch") }
                } catch {
                    problems.append("#\(i) -> #\(j) channel: \(error)")
                }
            }
            // The DHT: every peer joins through #0, #1 publishes a signed record, every other peer
            // finds the nodes closest to its key and reads it back.
            for p in peers.dropFirst() { p.join([contacts[0]]) }
            var dhtJoined = 0
            let joinDeadline = Date().addingTimeInterval(20)
            while Date() < joinDeadline {
                var joined = 0, busy = 0
                for p in peers {
                    let s = try await p.dhtState()
                    if s.joined && (s.peers > 0 || nodes == 1) { joined += 1 }
                    busy += s.activeOperations
                }
                dhtJoined = joined
                if joined == nodes && busy == 0 { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            if dhtJoined < nodes { problems.append("dht: only \(dhtJoined)/\(nodes) peers joined") }
            let key = Kademlia.key(named: "demo/hello")
            var readers = 0
            var lookupHops: [Int] = []
            if nodes > 1 {
                let put = try await peers[1].publish(key: key, value: Array("hello from #1".utf8), lifetime: .seconds(60))
                if put.stored == 0 { problems.append("dht: no peer stored #1's record") }
                for (i, p) in peers.enumerated() where i != 1 {
                    let got = try await p.get(key: key)
                    lookupHops.append(got.hops)
                    if got.records.count == 1, got.records[0].value == Array("hello from #1".utf8),
                       got.records[0].publisher == peers[1].identity.publicKey { readers += 1 }
                    else { problems.append("#\(i) dht: did not read #1's record") }
                }
            }
            rtts.sort()
            if !json {
                print("act one: every peer pinged the \(nodes - 1) others with sealed datagrams, then asked its neighbour for")
                print("its contact and opened a Noise channel to it:")
                for (i, p) in peers.enumerated() {
                    let ok = reached[i] == nodes - 1 && infoOK[i] && channelOK[i]
                    print("  \(ok ? "ok " : "!! ")#\(i) \(p.peerID.short) reached \(reached[i])/\(nodes - 1) peers; to #\((i + 1) % nodes): contact \(infoOK[i] ? "received" : "FAILED"), channel \(channelOK[i] ? "proved its identity and echoed" : "FAILED")")
                }
                print(String(format: "  probes: %d/%d answered by the peer the contact names; RTT p50 %.3f ms, p99 %.3f ms, max %.3f ms",
                             reached.reduce(0, +), outcomes.count, percentile(rtts, 0.5) ?? 0, percentile(rtts, 0.99) ?? 0, rtts.last ?? 0))
                print("  dht: \(dhtJoined)/\(nodes) peers joined through #0; #1 signed a record under \"demo/hello\", \(readers)/\(max(nodes - 1, 0)) others read it back (at most \(lookupHops.max() ?? 0) hop\(lookupHops.max() == 1 ? "" : "s"))")
                print("")
            }
            var market: DemoMarket?
            if nodes >= 4 {
                market = try await DemoMarket.run(peers, say: { if !json { print($0) } }, problems: &problems)
                if !json { print("") }
            }
            var totals: [String: Int] = [:]
            for p in peers {
                for (name, value) in try await p.status().counters { totals[name, default: 0] += value }
            }
            if keep {
                if !json {
                    print("the mesh stays up (Ctrl-C stops it); peer #0 answers other commands:")
                    for c in ["status", "peers", "find --gpu rtx-4090", "jobs", "reputation", "rewards", "ledger status"] {
                        print("  gpumesh \(c) --data-dir \(keepDir)")
                    }
                    flushOutput()
                }
                await waitForInterrupt()
            }
            await explorerServer?.stop()
            for p in peers { await p.stop() }
            if keep { try? FileManager.default.removeItem(atPath: (keepDir as NSString).deletingLastPathComponent) }

            let summary = DemoSummary(
                peers: nodes, loops: loops, mesh: meshKey.fingerprint, probes: outcomes.count, probesAnswered: reached.reduce(0, +),
                infoRequests: nodes, infoAnswered: infoOK.filter { $0 }.count,
                channels: nodes, channelsVerified: channelOK.filter { $0 }.count,
                rttMsP50: percentile(rtts, 0.5) ?? 0, rttMsP99: percentile(rtts, 0.99) ?? 0, rttMsMax: rtts.last ?? 0,
                dhtJoined: dhtJoined, dhtRecordReaders: readers, dhtLookupHopsMax: lookupHops.max() ?? 0,
                market: market, seconds: Date().timeIntervalSince(started), counters: totals, problems: problems)
            if json {
                try printJSON(summary)
            } else {
                let dropped = totals.filter { $0.key.hasPrefix("datagrams_dropped_") }.values.reduce(0, +)
                print("datagrams: \(totals["datagrams_out"] ?? 0) sent, \(totals["datagrams_in"] ?? 0) received, \(dropped) dropped; \(totals["cookie_challenges_sent"] ?? 0) cookie challenges")
                for p in problems { print("problem: \(p)") }
                print(String(format: "done in %.2f s; every peer stopped, nothing left running.", summary.seconds))
            }
            if !problems.isEmpty { throw ExitCode(1) }
        }
    }
}

/// What `gpumesh demo --json` prints.
struct DemoSummary: Encodable {
    var peers: Int
    var loops: Int
    var mesh: String
    var probes: Int
    var probesAnswered: Int
    var infoRequests: Int
    var infoAnswered: Int
    var channels: Int
    var channelsVerified: Int
    var rttMsP50: Double
    var rttMsP99: Double
    var rttMsMax: Double
    var dhtJoined: Int
    var dhtRecordReaders: Int
    var dhtLookupHopsMax: Int
    var market: DemoMarket?
    var seconds: Double
    var counters: [String: Int]
    var problems: [String]

    enum CodingKeys: String, CodingKey {
        case peers, loops, mesh, probes, probesAnswered = "probes_answered", infoRequests = "info_requests"
        case infoAnswered = "info_answered", channels, channelsVerified = "channels_verified", rttMsP50 = "rtt_ms_p50", rttMsP99 = "rtt_ms_p99", rttMsMax = "rtt_ms_max"
        case dhtJoined = "dht_joined", dhtRecordReaders = "dht_record_readers", dhtLookupHopsMax = "dht_lookup_hops_max"
        case market, seconds, counters, problems
    }
}


/// Returns when the process gets SIGINT or SIGTERM.
func waitForInterrupt() async {
    await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
        let once = OnceFlag()
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { if once.take() { c.resume() } }
            source.resume()
            sources.append(source)
        }
        once.hold(sources.map { $0 as AnyObject })
    }
}

/// A flag set once from any thread (and the signal sources that may set it, kept alive).
final class OnceFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var set = false
    private var held: [AnyObject] = []
    /// True for the first caller only.
    func take() -> Bool { lock.withLock { defer { set = true }; return !set } }
    /// Keeps `objects` alive as long as the flag.
    func hold(_ objects: [AnyObject]) { lock.withLock { held += objects } }
}

extension Result where Failure == Error {
    /// Captures an async throwing call's outcome.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
