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
        @Flag(help: "Print the result as JSON.") var json = false

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
            let key = SigningKey()
            do { try KeyFile.write(key, to: dir.keyFile) } catch { throw CLIError("\(error)") }
            var wroteConfig = false
            if !FileManager.default.fileExists(atPath: dir.configFile) {
                guard FileManager.default.createFile(atPath: dir.configFile, contents: Data(NodeConfig.template.utf8),
                                                     attributes: [.posixPermissions: 0o600]) else {
                    throw CLIError("cannot write \(dir.configFile)")
                }
                wroteConfig = true
            }
            let id = PeerID(publicKey: key.publicKey)
            if json {
                try printJSON(["data_dir": dir.path, "key_file": dir.keyFile, "config_file": dir.configFile,
                               "peer_id": id.hex, "public_key": Hex.encode(key.publicKey.bytes)])
            } else {
                print("initialised \(dir.path)")
                print("  peer ID     \(id.hex)")
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
