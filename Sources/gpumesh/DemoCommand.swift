import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshRuntime

extension GPUMesh {
    /// `gpumesh demo`: a small mesh in one process, on loopback.
    struct Demo: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a small local mesh in one process and narrate what the peers did.",
            discussion: """
            Starts --nodes peers (fresh identities, 127.0.0.1, free ports) on --loops shared event loops.
            Every peer probes every other over UDP and opens a TCP connection to its neighbour; the
            demo checks each answer comes from the peer the contact names, prints what happened and
            stops everything. Exit status 0 when every peer reached every other.
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
            if !json { print("GPUMesh demo: \(nodes) peers on \(loops) shared event loops, one process, 127.0.0.1\n") }

            let eventLoops = try (0..<loops).map { try EventLoop(name: "demo-\($0)") }
            defer { eventLoops.forEach { $0.shutdown() } }
            var config = NodeConfig()
            config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
            config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
            var peers: [MeshNode] = []
            for i in 0..<nodes {
                peers.append(try await MeshNode.start(on: eventLoops[i % loops],
                                                      options: .init(identity: SigningKey(), config: config, logger: logger)))
            }
            if !json {
                print("started \(nodes) peers:")
                for (i, p) in peers.enumerated() {
                    print("  #\(i) \(p.peerID.short)  udp \(p.udpAddress)  tcp \(p.tcpAddress)  loop \(i % loops)")
                }
                print("")
            }

            // Every peer probes every other, all at once; each pong must carry the expected ID.
            let contacts = peers.map(\.contact)
            let outcomes = await withTaskGroup(of: (Int, Int, Result<ProbeResult, Error>).self) { group in
                for (i, p) in peers.enumerated() {
                    for (j, c) in contacts.enumerated() where j != i {
                        group.addTask { (i, j, await Result(catching: { try await p.ping(c.address(for: .udp)!, timeout: .seconds(3)) })) }
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
            // Each peer connects to its neighbour over TCP and checks the banner's ID.
            var tcpOK = [Bool](repeating: false, count: nodes)
            for (i, p) in peers.enumerated() {
                let j = (i + 1) % nodes
                do {
                    let id = try await p.tcpHello(contacts[j].address(for: .tcp)!)
                    if id == contacts[j].peerID { tcpOK[i] = true } else { problems.append("#\(i) -> #\(j) tcp: banner claimed \(id.short)") }
                } catch {
                    problems.append("#\(i) -> #\(j) tcp: \(error)")
                }
            }
            var totals: [String: Int] = [:]
            for p in peers {
                for (name, value) in try await p.status().counters { totals[name, default: 0] += value }
            }
            for p in peers { await p.stop() }

            rtts.sort()
            let summary = DemoSummary(
                peers: nodes, loops: loops, probes: outcomes.count, probesAnswered: reached.reduce(0, +),
                tcpConnections: nodes, tcpVerified: tcpOK.filter { $0 }.count,
                rttMsP50: percentile(rtts, 0.5), rttMsP99: percentile(rtts, 0.99), rttMsMax: rtts.last ?? 0,
                seconds: Date().timeIntervalSince(started), counters: totals, problems: problems)
            if json {
                try printJSON(summary)
            } else {
                print("each peer probed the \(nodes - 1) others over UDP and greeted its neighbour over TCP:")
                for (i, p) in peers.enumerated() {
                    let mark = reached[i] == nodes - 1 && tcpOK[i] ? "ok " : "!! "
                    print("  \(mark)#\(i) \(p.peerID.short) reached \(reached[i])/\(nodes - 1) peers by UDP; TCP to #\((i + 1) % nodes): \(tcpOK[i] ? "identity matches" : "FAILED")")
                }
                print("")
                print(String(format: "probes: %d/%d answered by the peer the contact names; RTT p50 %.3f ms, p99 %.3f ms, max %.3f ms",
                             summary.probesAnswered, summary.probes, summary.rttMsP50, summary.rttMsP99, summary.rttMsMax))
                print("datagrams: \(totals["datagrams_out"] ?? 0) sent, \(totals["datagrams_in"] ?? 0) received, \(totals["datagrams_dropped_malformed"] ?? 0) dropped")
                print("tcp: \(summary.tcpVerified)/\(nodes) neighbour connections verified")
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
    var probes: Int
    var probesAnswered: Int
    var tcpConnections: Int
    var tcpVerified: Int
    var rttMsP50: Double
    var rttMsP99: Double
    var rttMsMax: Double
    var seconds: Double
    var counters: [String: Int]
    var problems: [String]

    enum CodingKeys: String, CodingKey {
        case peers, loops, probes, probesAnswered = "probes_answered", tcpConnections = "tcp_connections"
        case tcpVerified = "tcp_verified", rttMsP50 = "rtt_ms_p50", rttMsP99 = "rtt_ms_p99", rttMsMax = "rtt_ms_max"
        case seconds, counters, problems
    }
}

/// The `q` quantile (0...1) of sorted values, nearest rank; 0 for none.
func percentile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
    return sorted[min(max(rank, 0), sorted.count - 1)]
}

extension Result where Failure == Error {
    /// Captures an async throwing call's outcome.
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
