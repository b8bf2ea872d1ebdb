import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshExplorer
import MeshMarket
import MeshRuntime
#if canImport(Glibc)
import Glibc
#endif

extension GPUMesh {
    /// `gpumesh node`: run a peer until SIGINT or SIGTERM.
    struct Node: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Run a peer: UDP and TCP listeners and a control socket, until SIGINT or SIGTERM.",
            discussion: """
            Settings come from config.toml in the data directory; --udp and --tcp override it.
            The control socket (DATA_DIR/node.sock, mode 0600) speaks JSON-RPC 2.0; `gpumesh status` uses it.
            With --provide it publishes a signed capability record of this host's GPUs (detected, declared in
            [provider] gpus, or --simulate-gpus), republishes it before it expires, and withdraws it on stop.
            On SIGINT or SIGTERM the node withdraws its offer, closes its sockets, removes the control socket and exits 0.
            """)

        @OptionGroup var node: NodeOptions
        @Option(help: ArgumentHelp("Also serve the explorer (web pages, JSON API, Prometheus metrics) at this address, HOST:PORT; loopback only unless --public.", valueName: "addr"))
        var explorer: String?
        @Flag(name: .customLong("public"), help: "Let --explorer bind an address other than loopback.") var servePublic = false
        @Flag(help: "Print the start-up status as one JSON line.") var json = false

        func validate() throws {
            // Syntax only here: whether a public address is allowed also depends on the config.
            if let explorer {
                do { _ = try Explorer.parseListen(explorer, allowPublic: true) } catch { throw ValidationError("--explorer: \(error)") }
            }
        }

        func run() async throws {
            let config = try node.common.directory.loadConfig()
            let settings = (explorer ?? config.explorerListen).map { Explorer.Settings(listen: $0, allowPublic: servePublic || config.explorerPublic) }
            guard let settings else {
                if servePublic { throw CLIError("--public applies to an explorer: give --explorer ADDR or set [explorer] listen") }
                try await runNode(node, explorer: nil, json: json)
                return
            }
            try await runNode(node, explorer: try checked(settings), json: json)
        }
    }

    /// `gpumesh explorer`: a peer that serves its explorer.
    struct ExplorerCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "explorer",
            abstract: "Run a peer and serve its explorer: the mesh as this peer sees it, in a browser, in JSON and as metrics.",
            discussion: """
            The same peer as `gpumesh node` (same data directory, config and options), with the explorer served at \
            --listen: pages Overview, Capacity, Peers, Peer, Jobs and Rewards; JSON under /api/ (Docs/PROTOCOL.md, \
            "Explorer"); Prometheus text at /metrics. Everything shown comes from this peer's own routing table, \
            what it heard on gossip and its ledger: no indexer. Binds loopback only unless --public is given. \
            When a node already runs with this data directory, restart it with `gpumesh node --explorer ADDR` \
            instead (two peers cannot share one identity and data directory).
            """)

        @OptionGroup var node: NodeOptions
        @Option(help: ArgumentHelp("Address to serve on, HOST:PORT (port 0: any free port; default [explorer] listen, else 127.0.0.1:8080).", valueName: "addr"))
        var listen: String?
        @Flag(name: .customLong("public"), help: "Allow an address other than loopback (the explorer shows this peer's jobs, logs and ledger).")
        var servePublic = false
        @Flag(help: "Print the start-up status as one JSON line.") var json = false

        func validate() throws {
            // Syntax only here: whether a public address is allowed also depends on the config.
            if let listen {
                do { _ = try Explorer.parseListen(listen, allowPublic: true) } catch { throw ValidationError("--listen: \(error)") }
            }
        }

        func run() async throws {
            let config = try node.common.directory.loadConfig()
            let settings = Explorer.Settings(listen: listen ?? config.explorerListen ?? "127.0.0.1:8080", allowPublic: servePublic || config.explorerPublic)
            try await runNode(node, explorer: try checked(settings), json: json)
        }
    }

    /// `gpumesh status`: ask the running node.
    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the running node's peer ID, addresses, uptime and counters.",
            discussion: "Exits 1 with a message when no node runs with this data directory.")

        @OptionGroup var common: CommonOptions
        @Flag(help: "Print the result as JSON.") var json = false

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            let dir = common.directory
            guard let status = try await runningNodeStatus(dir) else {
                throw CLIError("no node is running with data directory \(dir.path) (no control socket answers at \(dir.controlSocket)); start one with `gpumesh node`")
            }
            if json {
                try printJSON(status)
            } else {
                print("peer ID  \(status.peerID)")
                printEndpoints(status, indent: "")
                print("uptime   \(String(format: "%.1f", status.uptimeSeconds)) s")
                print("version  \(status.version)")
                print("dht      \(status.dhtJoined ? "joined" : "not joined yet"), \(status.dhtPeers) peers, \(status.dhtRecords) records (`gpumesh peers` for the table)")
                print("counters")
                for (name, value) in status.counters.sorted(by: { $0.key < $1.key }) {
                    print("  \(name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(value)")
                }
            }
        }
    }
}

/// Prints how a node is reached (contact, sockets, mesh), one field a line; `node` and
/// `status` both show them.
func printEndpoints(_ status: NodeStatus, indent: String) {
    print("\(indent)contact  \(status.contact)")
    print("\(indent)udp      \(status.udp)")
    print("\(indent)tcp      \(status.tcp)")
    print("\(indent)mesh     \(status.mesh)")
}

/// Writes up to 64 of the routing table's most recently seen peers in the peers-file format,
/// atomically (a temporary file renamed over the old one), mode 0600. Failure is only logged:
/// the cache is a convenience.
func savePeersCache(_ snapshot: DHTSnapshot, to path: String, logger: Logger) {
    let peers = snapshot.peers.sorted { $0.lastSeenMillisecondsAgo < $1.lastSeenMillisecondsAgo }.prefix(64)
    guard !peers.isEmpty else { return }
    let text = "# Peers this node knew when it stopped (rewritten at every clean stop; safe to delete).\n"
        + peers.map(\.contact).joined(separator: "\n") + "\n"
    let temp = path + ".tmp"
    guard FileManager.default.createFile(atPath: temp, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]),
          rename(temp, path) == 0 else {
        unlink(temp)
        logger.warning("could not save the peers cache \(path)")
        return
    }
}

/// Asks the node running with `dir` for its status; nil when none answers.
func runningNodeStatus(_ dir: DataDirectory) async throws -> NodeStatus? {
    let result: JSONValue
    do {
        result = try await callNode(dir, "node.status", timeout: .seconds(5))
    } catch let error as CLIError where error.description == noNodeError(dir).description {
        return nil
    }
    do {
        return try JSONDecoder().decode(NodeStatus.self, from: JSONEncoder().encode(result))
    } catch {
        throw CLIError("the node's status answer is malformed: \(error)")
    }
}

/// Resumes one waiter with the first signal that arrives.
final class SignalOnce: @unchecked Sendable {
    private let lock = NSLock()
    private var signal: Int32?
    private var waiter: CheckedContinuation<Int32, Never>?

    func fire(_ sig: Int32) {
        lock.lock()
        guard signal == nil else { lock.unlock(); return }
        signal = sig
        let w = waiter
        waiter = nil
        lock.unlock()
        w?.resume(returning: sig)
    }

    func wait() async -> Int32 {
        await withCheckedContinuation { continuation in
            lock.lock()
            if let signal { lock.unlock(); continuation.resume(returning: signal); return }
            waiter = continuation
            lock.unlock()
        }
    }
}

/// The options of a running peer, shared by `gpumesh node` and `gpumesh explorer`.
struct NodeOptions: ParsableArguments {
    @OptionGroup var common: CommonOptions
    @Option(help: ArgumentHelp("UDP listen address, HOST:PORT (port 0: any free port).", valueName: "addr")) var udp: String?
    @Option(help: ArgumentHelp("TCP listen address, HOST:PORT (port 0: any free port).", valueName: "addr")) var tcp: String?
    @Option(help: ArgumentHelp("Join the private mesh whose key is in this file (default: the public mesh).", valueName: "file")) var meshKey: String?
    @Option(help: ArgumentHelp("Join the DHT through this peer (a contact string; repeatable).", valueName: "contact"))
    var bootstrap: [String] = []
    @Option(help: ArgumentHelp("Read bootstrap peers from this file, one contact a line (see Bootstrap/peers.example).", valueName: "file"))
    var peersFile: String?
    @Flag(help: "Publish this host's GPUs to the mesh (also [provider] enabled = true in the config).") var provide = false
    @OptionGroup(title: "Provider") var offer: OfferOptions

    func validate() throws {
        for b in bootstrap {
            do { _ = try Contact(parsing: b) } catch { throw ValidationError("--bootstrap: \(error)") }
        }
        for (flag, value) in [("--udp", udp), ("--tcp", tcp)] {
            if let value {
                do { _ = try SocketAddress(parsing: value) } catch { throw ValidationError("\(flag): \(error)") }
            }
        }
    }

}

/// `settings` when its address may be served (loopback, or public allowed); else the reason.
func checked(_ settings: Explorer.Settings) throws -> Explorer.Settings {
    do { _ = try Explorer.parseListen(settings.listen, allowPublic: settings.allowPublic) } catch { throw CLIError("explorer: \(error)") }
    return settings
}

/// Runs a peer until SIGINT or SIGTERM, with its explorer when `explorerSettings` is given.
func runNode(_ o: NodeOptions, explorer explorerSettings: Explorer.Settings?, json: Bool) async throws {
    let dir = o.common.directory
    var config = try dir.loadConfig()
    if let udp = o.udp { config.udpListen = try SocketAddress(parsing: udp) }
    if let tcp = o.tcp { config.tcpListen = try SocketAddress(parsing: tcp) }
    bootstrapLogging(o.common.logLevel ?? config.logLevel)
    let identity = try dir.loadIdentity()
    let mesh = try dir.loadMeshKey(flag: o.meshKey, config: config)
    let logger = Logger(label: "gpumesh.node")
    var seeds = config.bootstrap + (try o.bootstrap.map { try Contact(parsing: $0) })
    if let file = o.peersFile ?? config.peersFile {
        let path = file.hasPrefix("/") ? file : (o.peersFile != nil ? file : dir.path + "/" + file)
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            throw CLIError("cannot read the peers file \(path)")
        }
        do { seeds += try BootstrapPeers.parse(text) } catch { throw CLIError("\(path): \(error)") }
    }
    // Peers known when the node last stopped: rejoining works even if the bootstrap peers are gone.
    if let text = try? String(contentsOfFile: dir.peersCache, encoding: .utf8) {
        do {
            let cached = try BootstrapPeers.parse(text).filter { c in !seeds.contains { $0.peerID == c.peerID } }
            seeds += cached
            logger.debug("peers from the last run", metadata: ["count": "\(cached.count)"])
        } catch {
            logger.warning("ignoring \(dir.peersCache): \(error)")
        }
    }
    var options = MeshNode.Options(identity: identity, config: config, meshKey: mesh, controlSocketPath: dir.controlSocket, logger: logger)
    options.bootstrap = seeds
    options.dataDirectory = dir.path.hasPrefix("/") ? dir.path : FileManager.default.currentDirectoryPath + "/" + dir.path
    // The explorer's metrics registry must exist before the node creates its counters.
    let metrics = explorerSettings.map { _ in ExplorerMetrics() }
    options.metricsFactory = metrics?.factory

    let loop = try EventLoop(name: "node")
    let node: MeshNode
    do {
        node = try await MeshNode.start(on: loop, options: options)
    } catch NodeError.alreadyRunning(let socket) where explorerSettings != nil {
        loop.shutdown()
        throw CLIError("a node is already running with this data directory (control socket \(socket) answers): stop it and start it again with `gpumesh node --explorer ADDR`, or give this explorer its own --data-dir")
    } catch {
        loop.shutdown()
        throw CLIError("\(error)")
    }
    // Watch the signals before announcing readiness: whoever waits for the announcement may signal at once.
    let signals = SignalOnce()
    try await loop.submit {
        for sig in [SIGINT, SIGTERM] {
            _ = try SignalWatcher.watch(on: loop, signal: sig) { signals.fire($0) }
        }
    }
    var offered: Capability?
    var explorer: Explorer?
    var explorerURL: String?
    do {
        if o.provide || config.provider.enabled {
            let capability = try o.offer.capability(contact: node.contact, config: config, workDirectory: dir.path)
            let lifetime = Duration.seconds(o.offer.terms(config).recordLifetimeSeconds)
            let outcome = try await node.provide(capability, lifetime: lifetime)
            offered = capability
            logger.info("offer published", metadata: ["gpus": "\(describeGPUs(capability.gpus))", "keys": "\(outcome.keysStored)/\(outcome.indexNames.count)"])
        }
        if let explorerSettings, let metrics {
            let e = try Explorer(node: node, metrics: metrics, settings: explorerSettings, logger: Logger(label: "gpumesh.explorer"))
            let port = try await e.start()
            explorer = e
            explorerURL = e.url(port: port)
        }
    } catch {
        await node.stop()
        loop.shutdown()
        throw CLIError("\(error)")
    }
    let status = try await node.status()
    if json {
        var object = try JSONValue(encoding: status)
        if let explorerURL, case .object(var fields) = object {
            fields["explorer"] = .string(explorerURL)
            object = .object(fields)
        }
        try printJSONValue(object)
    } else {
        print("node \(status.peerID) running")
        printEndpoints(status, indent: "  ")
        print("  control  \(dir.controlSocket)")
        if let explorerURL { print("  explorer \(explorerURL)") }
        print(seeds.isEmpty ? "  dht      no bootstrap peers: waiting for others to join through this node"
                            : "  dht      joining through \(seeds.count) bootstrap peer\(seeds.count == 1 ? "" : "s")")
        if let offered {
            print("  offer    \(describeGPUs(offered.gpus)) at \(offered.price) points per GPU-hour, \(offered.totalSlots) slot\(offered.totalSlots == 1 ? "" : "s")")
        }
        print("stop with Ctrl-C or SIGTERM")
    }
    flushOutput()
    let signal = await signals.wait()
    logger.info("shutting down", metadata: ["signal": "\(signal == SIGINT ? "SIGINT" : "SIGTERM")"])
    await explorer?.stop()
    if let snapshot = try? await node.dhtSnapshot() { savePeersCache(snapshot, to: dir.peersCache, logger: logger) }
    await node.stop()
    loop.shutdown()
    if !json { print("node stopped") }
}
