import ArgumentParser
import Foundation
import MeshCore
import MeshRuntime

/// Calls `method` on the node running with `dir`; a clear error when none runs.
func callNode(_ dir: DataDirectory, _ method: String, params: JSONValue? = nil, timeout: Duration = .seconds(30)) async throws -> JSONValue {
    guard FileManager.default.fileExists(atPath: dir.controlSocket) else { throw noNodeError(dir) }
    let loop = try EventLoop(name: "client")
    defer { loop.shutdown() }
    do {
        return try await ControlClient.call(method, params: params, socketPath: dir.controlSocket, on: loop, timeout: timeout)
    } catch .noNode {
        throw noNodeError(dir)
    } catch {
        throw CLIError("\(error)")
    }
}

func noNodeError(_ dir: DataDirectory) -> CLIError {
    CLIError("no node is running with data directory \(dir.path) (no control socket answers at \(dir.controlSocket)); start one with `gpumesh node`")
}

/// Prints a JSON value on one line, keys sorted.
func printJSONValue(_ value: JSONValue) throws { try printJSON(value) }

/// Decodes a control answer (or part of one) as `T`; a mismatch is a clear error, not a crash.
func decodeAnswer<T: Decodable>(_ type: T.Type, from value: JSONValue) throws -> T {
    do { return try JSONDecoder().decode(T.self, from: JSONEncoder().encode(value)) }
    catch { throw CLIError("the node's answer is malformed: \(error)") }
}

/// Options naming a DHT key: a name (hashed) or a raw key.
struct KeyOptions: ParsableArguments {
    @Argument(help: ArgumentHelp("The key's name (hashed to 256 bits), e.g. model/rtx-4090.", valueName: "name")) var name: String?
    @Option(help: ArgumentHelp("A raw 256-bit key, 64 hex digits, instead of a name.", valueName: "hex")) var keyHex: String?

    func validate() throws {
        switch (name, keyHex) {
        case (nil, nil): throw ValidationError("name a key, or give --key-hex")
        case (_?, _?): throw ValidationError("give a key name or --key-hex, not both")
        case (nil, let hex?): guard PeerID(hex: hex) != nil else { throw ValidationError("--key-hex must be 64 hex digits") }
        default: break
        }
    }

    var params: [String: JSONValue] {
        if let keyHex { return ["key_hex": .string(keyHex.lowercased())] }
        return ["key": .string(name ?? "")]
    }
}

extension GPUMesh {
    /// `gpumesh peers`: the routing table.
    struct Peers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the running node's DHT routing table: peers by bucket, join state, records held.")

        @OptionGroup var common: CommonOptions
        @Flag(help: "Print the table as JSON.") var json = false
        @Flag(name: .shortAndLong, help: "List every peer, not just the summary per bucket.") var all = false

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            let result = try await callNode(common.directory, "dht.peers")
            if json { try printJSONValue(result); return }
            let snapshot = try decodeAnswer(DHTSnapshot.self, from: result)
            let state = snapshot.joined ? "joined" : "not joined yet (\(snapshot.joinAttempts) attempt\(snapshot.joinAttempts == 1 ? "" : "s"), retrying)"
            print("dht       \(state); \(snapshot.bootstrapPeers) bootstrap peer\(snapshot.bootstrapPeers == 1 ? "" : "s")")
            print("peers     \(snapshot.peers.count)")
            print("records   \(snapshot.recordsStored) stored, \(snapshot.recordsPublished) published")
            let byBucket = Dictionary(grouping: snapshot.peers, by: \.bucket)
            if !byBucket.isEmpty { print("bucket  peers  freshest") }
            for bucket in byBucket.keys.sorted() {
                let peers = byBucket[bucket]!
                let freshest = peers.map(\.lastSeenMillisecondsAgo).min() ?? 0
                print("\(String(bucket).padding(toLength: 6, withPad: " ", startingAt: 0))  \(String(peers.count).padding(toLength: 5, withPad: " ", startingAt: 0))  \(formatAge(freshest))")
                if all {
                    for p in peers { print("          \(p.peerID.prefix(12))  \(formatAge(p.lastSeenMillisecondsAgo).padding(toLength: 8, withPad: " ", startingAt: 0))  \(p.contact)") }
                }
            }
        }
    }

    /// `gpumesh dht ...`: records and lookups, for debugging.
    struct DHT: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "dht",
            abstract: "Put, get and look up DHT records through the running node (for debugging).",
            subcommands: [Put.self, Get.self, Lookup.self])

        struct Put: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Sign a value with this node's key and store it on the nodes closest to the key.",
                discussion: "The node republishes it before it expires until the node stops.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var key: KeyOptions
            @Argument(help: ArgumentHelp("The value (text; at most 1,000 bytes).", valueName: "value")) var value: String
            @Option(help: ArgumentHelp("Lifetime in seconds (at most 86400).", valueName: "s")) var ttl = 3600
            @Flag(help: "Print the result as JSON.") var json = false

            func validate() throws {
                guard (1...86_400).contains(ttl) else { throw ValidationError("--ttl must be 1 to 86400 seconds") }
                guard value.utf8.count <= 1000 else { throw ValidationError("the value is \(value.utf8.count) bytes; the limit is 1000") }
            }

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                var params = key.params
                params["value"] = .string(value)
                params["ttl_s"] = .int(ttl)
                let r = try await callNode(common.directory, "dht.put", params: .object(params))
                if json { try printJSONValue(r); return }
                let stored = r["stored"]?.intValue ?? 0
                print("key      \(r["key"]?.stringValue ?? "?")")
                print("stored   on \(stored) node\(stored == 1 ? "" : "s") (refused \(r["refused"]?.intValue ?? 0), no answer \(r["failed"]?.intValue ?? 0))")
                print("lookup   \(r["hops"]?.intValue ?? 0) hops, \(r["requests"]?.intValue ?? 0) requests")
                if stored == 0 { print("note     no other node holds it yet: is this node joined? (`gpumesh peers`)") }
            }
        }

        struct Get: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Read the records under a key from the nodes closest to it; every signature is checked.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var key: KeyOptions
            @Option(help: ArgumentHelp("Most records (one per publisher) to return.", valueName: "n")) var limit = 64
            @Flag(help: "Print the result as JSON.") var json = false

            func validate() throws {
                guard (1...1024).contains(limit) else { throw ValidationError("--limit must be 1 to 1024") }
            }

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                var params = key.params
                params["limit"] = .int(limit)
                let r = try await callNode(common.directory, "dht.get", params: .object(params))
                if json { try printJSONValue(r); return }
                guard case .array(let records) = r["records"] ?? .array([]) else { throw CLIError("malformed answer") }
                print("key      \(r["key"]?.stringValue ?? "?")")
                print("read     from \(r["responders"]?.intValue ?? 0) nodes, \(r["hops"]?.intValue ?? 0) hops, \(r["requests"]?.intValue ?? 0) requests")
                if records.isEmpty { print("records  none") }
                for rec in records {
                    let value = rec["value"]?.stringValue.map { "\"\($0)\"" } ?? "hex \(rec["value_hex"]?.stringValue ?? "")"
                    let expires = Double(rec["expires_at_ms"]?.intValue ?? 0) / 1000
                    let left = max(0, expires - Date().timeIntervalSince1970)
                    print("  \((rec["publisher_id"]?.stringValue ?? "").prefix(12))  seq \(rec["sequence"]?.intValue ?? 0)  expires in \(Int(left)) s  \(value)")
                }
            }
        }

        struct Lookup: AsyncParsableCommand {
            static let configuration = CommandConfiguration(abstract: "Find the nodes closest to a key.")
            @OptionGroup var common: CommonOptions
            @OptionGroup var key: KeyOptions
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let r = try await callNode(common.directory, "dht.lookup", params: .object(key.params))
                if json { try printJSONValue(r); return }
                guard case .array(let closest) = r["closest"] ?? .array([]) else { throw CLIError("malformed answer") }
                print("target   \(r["target"]?.stringValue ?? "?")")
                print("lookup   \(r["hops"]?.intValue ?? 0) hops, \(r["requests"]?.intValue ?? 0) requests, \(String(format: "%.2f", r["latency_ms"]?.doubleValue ?? 0)) ms")
                for c in closest { print("  \(c["contact"]?.stringValue ?? "")") }
            }
        }
    }
}

/// "350 ms", "12 s", "4 min".
func formatAge(_ ms: UInt64) -> String {
    if ms < 1000 { return "\(ms) ms" }
    if ms < 120_000 { return "\(ms / 1000) s" }
    return "\(ms / 60_000) min"
}
