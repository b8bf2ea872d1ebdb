import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshJobs
import MeshMarket
import MeshRuntime
@testable import MeshExplorer

/// An HTTP answer with the accessors the tests read.
typealias HTTPAnswer = HTTPProbe.Answer

extension HTTPProbe.Answer {
    var contentType: String { headers["content-type"] ?? "" }
    /// The body as a JSON object (nil when it is not one).
    var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] }
    /// The body as a JSON array (nil when it is not one).
    var jsonArray: [Any]? { (try? JSONSerialization.jsonObject(with: Data(body))) as? [Any] }
}

struct HTTPFailure: Error, CustomStringConvertible { var description: String }

/// One request over real TCP to the explorer on 127.0.0.1:`port`, off the cooperative pool's threads.
func get(_ port: Int, _ path: String, method: String = "GET", host: String? = nil) async throws -> HTTPAnswer {
    try await withCheckedThrowingContinuation { c in
        Thread.detachNewThread { c.resume(with: Result { try HTTPProbe.request(port: port, path: path, method: method, host: host) }) }
    }
}

/// Polls `condition` every 100 ms until it holds or `seconds` pass; its last answer.
func eventually(_ seconds: Double, _ condition: () async throws -> Bool) async throws -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(100))
    }
    return try await condition()
}

/// True where bubblewrap sandboxes can run jobs here.
let sandboxWorks: Bool = {
    guard case .success(let tools) = Sandbox.Tools.find(), case .success = Sandbox.probe(tools: tools) else { return false }
    return true
}()

/// Options for a node on 127.0.0.1 with free ports, a fresh identity and 1-second heartbeats,
/// in `mesh` (the public mesh by default).
func loopbackOptions(bootstrap: [Contact] = [], mesh: MeshKey = .publicMesh) -> MeshNode.Options {
    var config = NodeConfig()
    config.udpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.tcpListen = SocketAddress(ip: .loopbackV4, port: 0)
    config.provider.heartbeatIntervalSeconds = 1
    var o = MeshNode.Options(identity: SigningKey(), config: config, meshKey: mesh, logger: Logger(label: "explorer-test"))
    o.bootstrap = bootstrap
    return o
}

/// A one-GPU sandboxed job running `script` with `sh -c` on `provider`, its outputs under a fresh
/// directory in /tmp.
func shellJob(_ name: String, _ script: String, on provider: Contact) throws -> JobRequest {
    let spec = try JobSpec(toml: """
    name = "\(name)"
    command = ["sh", "-c", "\(script)"]
    max_price = 2
    [resources]
    gpus = 1
    time_limit = "60s"
    """)
    let dir = "/tmp/gm-explorer-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    return JobRequest(spec: spec, inputPaths: [], outputRoot: dir, provider: provider)
}

/// A providing node offering simulated GPUs (`profile`) on a host named `cpuModel`.
func startProvider(on loop: EventLoop, bootstrap: [Contact], gpus profile: String, price: String, slots: Int, cpuModel: String,
                   mesh: MeshKey = .publicMesh) async throws -> MeshNode {
    let node = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: bootstrap, mesh: mesh))
    var terms = ProviderConfig()
    terms.price = Price(parsing: price)!
    terms.slots = slots
    let host = HostFacts(cpuModel: cpuModel, cpuCores: 8, ramMiB: 32_768, diskFreeMiB: 100_000)
    _ = try await node.provide(OfferBuilder.capability(contact: node.contact, gpus: try SimulatedGPUs.parse(profile), host: host, terms: terms,
                                                       available: [.sandbox]))
    return node
}

/// The small mesh every explorer test reads: the explorer's node E (a renter), provider P
/// (2x rtx-4090 at 1.5), provider Q (1x a100-80gb at 3, with a CPU name full of markup), and,
/// where the sandbox works, one job E ran on P (a receipt, a job with a log). Started once for
/// the whole test process.
final class Fixture: Sendable {
    let loop: EventLoop
    let explorerNode: MeshNode
    let p: MeshNode
    let q: MeshNode
    let explorer: Explorer
    let port: Int
    /// The job E ran on P (nil without a sandbox).
    let jobID: String?
    /// Markup in Q's CPU name: the pages must show it as text.
    static let hostileCPU = "<script>alert(1)</script> & \"co\""

    private init(loop: EventLoop, explorerNode: MeshNode, p: MeshNode, q: MeshNode, explorer: Explorer, port: Int, jobID: String?) {
        self.loop = loop; self.explorerNode = explorerNode; self.p = p; self.q = q; self.explorer = explorer; self.port = port; self.jobID = jobID
    }

    private static let shared = Task { () throws -> Fixture in try await make() }

    /// The fixture, started on first use.
    static func get() async throws -> Fixture { try await shared.value }

    private static func make() async throws -> Fixture {
        let loop = try EventLoop(name: "explorer-test")
        let p = try await startProvider(on: loop, bootstrap: [], gpus: "2x rtx-4090", price: "1.5", slots: 2, cpuModel: "Test CPU")
        let q = try await startProvider(on: loop, bootstrap: [p.contact], gpus: "1x a100-80gb", price: "3", slots: 1, cpuModel: hostileCPU)
        let metrics = ExplorerMetrics()
        var options = loopbackOptions(bootstrap: [p.contact])
        options.metricsFactory = metrics.factory
        let e = try await MeshNode.start(on: loop, options: options)
        let explorer = try Explorer(node: e, metrics: metrics, settings: .init(listen: "127.0.0.1:0"))
        let port = try await explorer.start()
        // Both offers heard on gossip, and a heartbeat from each provider.
        _ = try await eventually(20) {
            let offers = try await e.announcedOffers().count, beats = try await e.peerLiveness().count
            return offers == 2 && beats == 2
        }
        var jobID: String?
        if sandboxWorks {
            let info = try await e.runJob(try shellJob("explorer-test", "echo hello from the job; echo second line >&2; sleep 0.5", on: p.contact))
            jobID = info.id
            // The provider's copy of the receipt and the scores that follow from it.
            _ = await e.recomputeReputation()
        }
        return Fixture(loop: loop, explorerNode: e, p: p, q: q, explorer: explorer, port: port, jobID: jobID)
    }
}
