import ArgumentParser
import Foundation
import Logging
import MeshCore
import MeshCrypto
import MeshRuntime

/// The `gpumesh` command.
@main
struct GPUMesh: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gpumesh",
        abstract: "A peer-to-peer mesh of GPU providers with no central coordinator.",
        discussion: """
        Data directory: --data-dir, else $GPUMESH_HOME, else ~/.gpumesh.
        Start with `gpumesh init`, then `gpumesh node`; `gpumesh status` asks the running node.
        `gpumesh demo` runs a small local mesh in one process.
        """,
        version: GPUMeshVersion.current,
        subcommands: [Init.self, Id.self, Node.self, ExplorerCommand.self, Status.self, Peers.self, Find.self, Offer.self, Run.self, Jobs.self, Job.self, ReputationCommand.self, RewardsCommand.self, LedgerCommand.self, DHT.self, GossipCommand.self, MeshKeyCommand.self, Demo.self, Testnet.self, Simulate.self, Debug.self, Bench.self]
    )
}

/// Options every command that touches the data directory shares.
struct CommonOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Data directory (keys, config, control socket).", valueName: "dir"))
    var dataDir: String?

    @Option(name: .long, help: ArgumentHelp("Log level: trace, debug, info, notice, warning, error, critical.", valueName: "level"))
    var logLevel: String?

    func validate() throws {
        if let level = logLevel, !NodeConfig.logLevels.contains(level) {
            throw ValidationError("--log-level must be one of \(NodeConfig.logLevels.joined(separator: ", "))")
        }
    }

    /// The resolved data directory.
    var directory: DataDirectory {
        if let dataDir { return DataDirectory(path: dataDir) }
        if let env = ProcessInfo.processInfo.environment["GPUMESH_HOME"], !env.isEmpty { return DataDirectory(path: env) }
        return DataDirectory(path: FileManager.default.homeDirectoryForCurrentUser.path + "/.gpumesh")
    }
}

/// The files of a data directory.
struct DataDirectory {
    let path: String
    var keyFile: String { path + "/identity.key" }
    var configFile: String { path + "/" + NodeConfig.fileName }
    var controlSocket: String { path + "/node.sock" }
    /// Peers the node knew when it last stopped, to rejoin through (peers-file format).
    var peersCache: String { path + "/peers.cache" }

    /// Reads config.toml if present, else the defaults.
    func loadConfig() throws -> NodeConfig {
        guard FileManager.default.fileExists(atPath: configFile) else { return NodeConfig() }
        let text: String
        do { text = try String(contentsOfFile: configFile, encoding: .utf8) }
        catch { throw CLIError("cannot read \(configFile): \(error.localizedDescription)") }
        do { return try NodeConfig(parsing: text) }
        catch { throw CLIError("\(configFile): \(error)") }
    }

    /// Reads the mesh key: `flag` if given, else the config's `mesh_key_file` (relative to the
    /// data directory), else the public mesh's key.
    func loadMeshKey(flag: String?, config: NodeConfig) throws -> MeshKey {
        guard var path = flag ?? config.meshKeyFile else { return .publicMesh }
        if flag == nil && !path.hasPrefix("/") { path = self.path + "/" + path }
        do { return try MeshKey.read(from: path) }
        catch .notFound { throw CLIError("no mesh key file at \(path) (make one with `gpumesh mesh-key new --out FILE`)") }
        catch { throw CLIError("\(error)") }
    }

    /// Reads the identity key, with a hint when there is none.
    func loadIdentity() throws -> SigningKey {
        do { return try KeyFile.read(from: keyFile) }
        catch .notFound { throw CLIError("no identity in \(path) (run `gpumesh init --data-dir \(path)` first)") }
        catch { throw CLIError("\(error)") }
    }
}

/// A failure to report to the user: printed as `Error: ...`, exit status 1.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Sets up swift-log once for the process, to standard error.
func bootstrapLogging(_ level: String?, default fallback: String = "info") {
    let parsed = Logger.Level(rawValue: level ?? fallback) ?? .info
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = parsed
        return handler
    }
}

/// Prints a value as one line of JSON with sorted keys.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}

/// Flushes standard output (lines must reach a pipe before a long wait).
func flushOutput() { fflush(nil) }
