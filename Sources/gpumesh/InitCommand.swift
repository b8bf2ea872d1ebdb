import ArgumentParser
import Foundation
import MeshCore
import MeshCrypto

extension GPUMesh {
    /// `gpumesh init`: data directory, identity key and a commented config file.
    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create the data directory, a new identity key and a commented config file.",
            discussion: "Never overwrites an existing key: an identity, once made, is this peer's name on the mesh.")

        @OptionGroup var common: CommonOptions
        @Option(help: ArgumentHelp("Make an identity that meets this ID puzzle difficulty (leading zero bits, 0 to 24; about 2^N key generations).", valueName: "bits"))
        var idDifficulty = 0
        @Flag(help: "Print the result as JSON.") var json = false

        func validate() throws {
            guard (0...24).contains(idDifficulty) else { throw ValidationError("--id-difficulty must be 0 to 24") }
        }

        func run() async throws {
            let dir = common.directory
            var isDir: ObjCBool = false
            if FileManager.default.fileExists(atPath: dir.path, isDirectory: &isDir) {
                guard isDir.boolValue else { throw CLIError("\(dir.path) exists and is not a directory") }
            } else {
                do {
                    try FileManager.default.createDirectory(atPath: dir.path, withIntermediateDirectories: true,
                                                            attributes: [.posixPermissions: 0o700])
                } catch {
                    throw CLIError("cannot create \(dir.path): \(error.localizedDescription)")
                }
            }
            if FileManager.default.fileExists(atPath: dir.keyFile) {
                throw CLIError("\(dir.path) is already initialised: \(dir.keyFile) exists and is never overwritten (use another --data-dir for another identity)")
            }
            var key = SigningKey()
            var attempts = 1
            while !PeerID(publicKey: key.publicKey).meetsPuzzle(idDifficulty) {
                key = SigningKey()
                attempts += 1
            }
            do { try KeyFile.write(key, to: dir.keyFile) } catch { throw CLIError("\(error)") }
            var wroteConfig = false
            if !FileManager.default.fileExists(atPath: dir.configFile) {
                let template = NodeConfig.template.replacingOccurrences(of: "id_difficulty = 0", with: "id_difficulty = \(idDifficulty)")
                guard FileManager.default.createFile(atPath: dir.configFile, contents: Data(template.utf8),
                                                     attributes: [.posixPermissions: 0o600]) else {
                    throw CLIError("cannot write \(dir.configFile)")
                }
                wroteConfig = true
            }
            let id = PeerID(publicKey: key.publicKey)
            if json {
                try printJSON(["data_dir": dir.path, "key_file": dir.keyFile, "config_file": dir.configFile,
                               "peer_id": id.hex, "public_key": Hex.encode(key.publicKey.bytes),
                               "id_difficulty": String(idDifficulty), "key_generations": String(attempts)])
            } else {
                print("initialised \(dir.path)")
                print("  peer ID     \(id.hex)")
                if idDifficulty > 0 { print("  ID puzzle   \(id.puzzleBits) bits (difficulty \(idDifficulty), \(attempts) key generations)") }
                print("  key         \(dir.keyFile) (mode 0600; back it up, keep it secret)")
                print("  config      \(dir.configFile)\(wroteConfig ? "" : " (kept the existing one)")")
                print("next: gpumesh node --data-dir \(dir.path)")
            }
        }
    }

    /// `gpumesh id`: this peer's ID and contact string.
    struct Id: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print this peer's ID and contact string.",
            discussion: "The contact comes from the running node when there is one, else from the config.")

        @OptionGroup var common: CommonOptions
        @Flag(help: "Print the result as JSON.") var json = false

        func run() async throws {
            let dir = common.directory
            let key = try dir.loadIdentity()
            let id = PeerID(publicKey: key.publicKey)
            var contact: String? = try await runningNodeStatus(dir)?.contact
            var note: String? = nil
            if contact == nil {
                let config = try dir.loadConfig()
                var addresses = config.advertise
                if addresses.isEmpty {
                    addresses = [TransportAddress(.udp, config.udpListen.advertisable), TransportAddress(.tcp, config.tcpListen.advertisable)]
                }
                if let c = try? Contact(publicKey: key.publicKey, addresses: addresses) {
                    contact = c.description
                } else {
                    note = "no contact yet: the config asks for port 0; start the node and run `gpumesh status`"
                }
            }
            if json {
                var out: [String: String] = ["peer_id": id.hex, "public_key": Hex.encode(key.publicKey.bytes)]
                out["contact"] = contact
                try printJSON(out)
            } else {
                print("peer ID  \(id.hex)")
                print("key      \(Hex.encode(key.publicKey.bytes))")
                if let contact { print("contact  \(contact)") }
                if let note { print(note) }
            }
        }
    }
}
