import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshDHT
import MeshCrypto
import MeshRuntime

extension GPUMesh {
    /// `gpumesh demo`: a small mesh in one process, on loopback.
    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a small local mesh in one process and narrate what the peers did.",
            discussion: """
            Starts --nodes peers (fresh identities, 127.0.0.1, free ports) on --loops shared event loops,
            in a private mesh with a fresh mesh key. Every peer pings every other with sealed
            datagrams, asks its neighbour for its contact (proving its address with a cookie), and
            opens a Noise channel to it that proves both identities and echoes a message. Then it
            prints what happened and stops everything. Exit status 0 when everything succeeded.
            """)

        @Option(help: "Number of peers (2...64).") var nodes = 8
        @Option(help: "Number of event loops the peers share (1...8).") var loops = 2
        @Option(help: ArgumentHelp("Log level.", valueName: "level")) var logLevel = "warning"
        @Flag(help: "Print the result as JSON.") var json = false

        func validate() throws {
            guard (2...64).contains(nodes) else { throw ValidationError("--nodes must be 2...64") }
            guard (1...8).contains(loops) else { throw ValidationError("--loops must be 1...8") }
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
            var peers: [MeshNode] = []
            for i in 0..<nodes {
                let node = try await MeshNode.start(on: eventLoops[i % loops],
                                                    options: .init(identity: SigningKey(), config: config, meshKey: meshKey, logger: logger))
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
            var totals: [String: Int] = [:]
            for p in peers {
                for (name, value) in try await p.status().counters { totals[name, default: 0] += value }
            }
            for p in peers { await p.stop() }

            rtts.sort()
            let summary = DemoSummary(
                peers: nodes, loops: loops, mesh: meshKey.fingerprint, probes: outcomes.count, probesAnswered: reached.reduce(0, +),
                infoRequests: nodes, infoAnswered: infoOK.filter { $0 }.count,
                channels: nodes, channelsVerified: channelOK.filter { $0 }.count,
                rttMsP50: percentile(rtts, 0.5) ?? 0, rttMsP99: percentile(rtts, 0.99) ?? 0, rttMsMax: rtts.last ?? 0,
                dhtJoined: dhtJoined, dhtRecordReaders: readers, dhtLookupHopsMax: lookupHops.max() ?? 0,
                seconds: Date().timeIntervalSince(started), counters: totals, problems: problems)
            if json {
                try printJSON(summary)
            } else {
                print("each peer pinged the \(nodes - 1) others with sealed datagrams, then asked its neighbour for its")
                print("contact and opened a Noise channel to it:")
                for (i, p) in peers.enumerated() {
                    let ok = reached[i] == nodes - 1 && infoOK[i] && channelOK[i]
                    print("  \(ok ? "ok " : "!! ")#\(i) \(p.peerID.short) reached \(reached[i])/\(nodes - 1) peers; to #\((i + 1) % nodes): contact \(infoOK[i] ? "received" : "FAILED"), channel \(channelOK[i] ? "proved its identity and echoed" : "FAILED")")
                }
                print("")
                print(String(format: "probes: %d/%d answered by the peer the contact names; RTT p50 %.3f ms, p99 %.3f ms, max %.3f ms",
                             summary.probesAnswered, summary.probes, summary.rttMsP50, summary.rttMsP99, summary.rttMsMax))
                let dropped = totals.filter { $0.key.hasPrefix("datagrams_dropped_") }.values.reduce(0, +)
                print("datagrams: \(totals["datagrams_out"] ?? 0) sent, \(totals["datagrams_in"] ?? 0) received, \(dropped) dropped; \(totals["cookie_challenges_sent"] ?? 0) cookie challenges")
                print("channels: \(summary.channelsVerified)/\(nodes) proved both identities and echoed")
                print("dht: \(dhtJoined)/\(nodes) peers joined through #0; #1 signed a record under \"demo/hello\", \(readers)/\(max(nodes - 1, 0)) others read it back (at most \(summary.dhtLookupHopsMax) hop\(summary.dhtLookupHopsMax == 1 ? "" : "s"))")
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
    var seconds: Double
    var counters: [String: Int]
    var problems: [String]

    enum CodingKeys: String, CodingKey {
        case peers, loops, mesh, probes, probesAnswered = "probes_answered", infoRequests = "info_requests"
        case infoAnswered = "info_answered", channels, channelsVerified = "channels_verified", rttMsP50 = "rtt_ms_p50", rttMsP99 = "rtt_ms_p99", rttMsMax = "rtt_ms_max"
        case dhtJoined = "dht_joined", dhtRecordReaders = "dht_record_readers", dhtLookupHopsMax = "dht_lookup_hops_max"
        case seconds, counters, problems
    }
}


extension Result where Failure == Error {
    /// Captures an async throwing call's outcome.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
