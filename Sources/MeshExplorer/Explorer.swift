import Foundation
import Hummingbird
import Logging
import MeshCore
import MeshMarket
import MeshRuntime
import Metrics
import Prometheus
import ServiceLifecycle
import Synchronization

/// The metrics a node reports, kept in a Prometheus registry for the explorer's `/metrics`.
///
/// Make one before the node, pass `factory` as the node's `MeshNode.Options.metricsFactory`,
/// then give it to the `Explorer`: the node's swift-metrics counters land in `registry`.
public struct ExplorerMetrics: Sendable {
    /// Where the metrics are kept.
    public let registry: PrometheusCollectorRegistry
    /// The swift-metrics factory writing into `registry`.
    public let factory: PrometheusMetricsFactory

    /// A fresh, empty registry.
    public init() {
        registry = PrometheusCollectorRegistry()
        factory = PrometheusMetricsFactory(registry: registry)
    }
}

/// The explorer: a small web server over one node's own view of the mesh (its routing table,
/// what it heard on gossip, its ledger) with HTML pages, a JSON API under `/api/` and
/// Prometheus metrics at `/metrics`. Read-only: no route changes anything.
public final class Explorer: Sendable {
    /// Where and how to serve.
    public struct Settings: Sendable {
        /// The address to bind, `HOST:PORT` (port 0: any free port).
        public var listen: String
        /// Serve on an address other than loopback (off: such an address is refused, and
        /// requests whose Host is not a loopback name are refused, against DNS rebinding).
        public var allowPublic = false
        /// Seconds between refreshes of a page's live part.
        public var refreshSeconds = 5

        /// Settings for `listen`.
        public init(listen: String, allowPublic: Bool = false) {
            self.listen = listen
            self.allowPublic = allowPublic
        }
    }

    /// The node the explorer shows.
    public let node: MeshNode
    let settings: Settings
    let metrics: ExplorerMetrics
    let host: String
    let port: Int
    let logger: Logger
    /// The running server: its service group (stopped gracefully) and the task running it.
    private let running = Mutex<(group: ServiceGroup, task: Task<Void, any Error>)?>(nil)
    /// Reward points, kept up to date across requests.
    let rewards = RewardsCache()

    /// Checks the settings (address syntax, loopback unless public); nothing is bound yet.
    public init(node: MeshNode, metrics: ExplorerMetrics, settings: Settings, logger: Logger = Logger(label: "gpumesh.explorer")) throws(ExplorerProblem) {
        (host, port) = try Self.parseListen(settings.listen, allowPublic: settings.allowPublic)
        self.node = node
        self.metrics = metrics
        self.settings = settings
        self.logger = logger
    }

    /// `HOST:PORT` checked: a literal IP address (IPv6 in brackets) or `localhost`, a port
    /// 0-65535, and loopback unless `allowPublic`.
    public static func parseListen(_ text: String, allowPublic: Bool) throws(ExplorerProblem) -> (host: String, port: Int) {
        let host: String
        if text.hasPrefix("localhost:") {
            host = "127.0.0.1"
        } else {
            do { host = try SocketAddress(parsing: text).ip.description } catch {
                throw ExplorerProblem(400, "the explorer's address '\(text)' is not HOST:PORT with an IP address, e.g. 127.0.0.1:8080 or [::1]:8080 (\(error))")
            }
        }
        guard let portText = text.split(separator: ":").last, let port = Int(portText), (0...65535).contains(port) else {
            throw ExplorerProblem(400, "the explorer's address '\(text)' has no port 0-65535")
        }
        if !allowPublic && !isLoopback(host) {
            throw ExplorerProblem(400, "refusing to serve the explorer on \(text): it is not a loopback address, and the explorer shows this node's jobs, logs and ledger; pass --public to serve it there anyway")
        }
        return (host, port)
    }

    /// True for `localhost` and the addresses `IPAddress.isLoopback` names (127.0.0.0/8, ::1).
    static func isLoopback(_ host: String) -> Bool {
        host.lowercased() == "localhost" || IPAddress(host)?.isLoopback == true
    }

    /// Binds and serves in the background; returns the bound port (the one asked for, or the
    /// one the kernel chose for port 0). Throws when the address cannot be bound.
    public func start() async throws -> Int {
        let router = Routes(explorer: self).router()
        let (stream, continuation) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in continuation.yield(channel.localAddress?.port ?? 0); continuation.finish() },
            logger: logger)
        // A service group without signal handlers: the node's command owns SIGINT and SIGTERM,
        // and `stop` shuts the server down gracefully (open requests finish first).
        let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
        let task = Task {
            do { try await group.run() } catch { continuation.finish(); throw error }
        }
        for await bound in stream {
            running.withLock { $0 = (group, task) }
            return bound
        }
        // The server stopped before it ran: binding failed.
        do { try await task.value } catch { throw ExplorerProblem(503, "cannot serve the explorer on \(settings.listen): \(error)") }
        throw ExplorerProblem(503, "cannot serve the explorer on \(settings.listen)")
    }

    /// The explorer's address as a URL, with the port it was bound to.
    public func url(port: Int) -> String {
        host.contains(":") ? "http://[\(host)]:\(port)/" : "http://\(host):\(port)/"
    }

    /// Stops serving and waits for the server to close.
    public func stop() async {
        guard let (group, task) = running.withLock({ r in defer { r = nil }; return r }) else { return }
        await group.triggerGracefulShutdown()
        _ = try? await task.value
    }
}
