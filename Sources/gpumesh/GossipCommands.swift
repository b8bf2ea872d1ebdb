import ArgumentParser
import Foundation
import MeshCore
import MeshGossip
import MeshRuntime

extension GPUMesh {
    /// `gpumesh gossip`: the running node's gossip layer.
    struct GossipCommand: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "gossip", abstract: "Inspect the running node's gossip layer.", subcommands: [Stats.self, Peers.self], defaultSubcommand: Stats.self)

        /// `gpumesh gossip stats`.
        struct Stats: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Show the gossip sample and counters: messages published, delivered, duplicates, repairs, drops by reason.")

            @OptionGroup var common: CommonOptions
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let result = try await callNode(common.directory, "gossip.stats")
                if json { try printJSONValue(result); return }
                let snapshot = try decodeAnswer(GossipSnapshot.self, from: result)
                let s = snapshot.stats
                print("sample       \(snapshot.sample.count) peers\(snapshot.sample.isEmpty ? "" : ": " + snapshot.sample.map { String($0.prefix(12)) }.joined(separator: " "))")
                print("inbound      \(snapshot.inbound) peers (\(s.prunesSent) pruned, pruned by \(s.prunesReceived))")
                print("messages     \(s.published) published, \(s.delivered) delivered, \(s.duplicates) duplicate copies")
                print("sent         \(s.pushesSent) pushes, \(s.ihaveSent) IHAVE, \(s.iwantSent) IWANT, \(s.repairsSent) repairs")
                let drops = s.dropped.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue) \($0.value)" }
                print("dropped      \(drops.isEmpty ? "none" : drops.joined(separator: ", "))")
                print("graylisted   \(s.graylisted) peers")
                print("heard        heartbeats from \(snapshot.heartbeatPeers) peers (\(snapshot.heartbeatPeersAlive) alive), \(snapshot.providersHeard) providers announcing")
                print("channels     \(snapshot.channelPushesSent) messages sent, \(snapshot.channelPushesReceived) received (too large for a datagram)")
            }
        }

        /// `gpumesh gossip peers`.
        struct Peers: AsyncParsableCommand {
            static let configuration = CommandConfiguration(
                abstract: "Show the peers whose heartbeats the running node has heard: when, how many, availability.")

            @OptionGroup var common: CommonOptions
            @Flag(help: "Print the result as JSON.") var json = false

            func run() async throws {
                bootstrapLogging(common.logLevel, default: "warning")
                let result = try await callNode(common.directory, "gossip.liveness")
                if json { try printJSONValue(result); return }
                let peers = try decodeAnswer([PeerLiveness].self, from: result["peers"] ?? .array([]))
                guard !peers.isEmpty else { print("no heartbeats heard yet (providers send one every heartbeat_interval_s)"); return }
                print("peer          heartbeats  availability  last heard  slots   state")
                let now = UInt64(Date().timeIntervalSince1970 * 1000)
                for p in peers {
                    let ago = now > p.entry.lastHeard ? "\((now - p.entry.lastHeard) / 1000) s ago" : "now"
                    let slots = "\(p.entry.latest.freeSlots)/\(p.entry.latest.totalSlots)"
                    print("\(p.peerID.prefix(12))  \(column(String(p.entry.count), 10))  \(column(String(format: "%.1f%%", p.availability * 100), 12))  \(column(ago, 10))  \(column(slots, 5))   \(p.silent ? "silent" : "alive")")
                }
            }
        }
    }

    /// `gpumesh debug publish`.
    struct Publish: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Publish TEXT on a gossip topic from the running node (for tests and research).")

        @OptionGroup var common: CommonOptions
        @Argument(help: ArgumentHelp("The topic: receipt, report, capability, heartbeat or debug.", valueName: "topic")) var topic: String
        @Argument(help: ArgumentHelp("The message text.", valueName: "text")) var text: String
        @Flag(help: "Print the result as JSON.") var json = false

        func validate() throws {
            guard Gossip.Topic(name: topic) != nil else {
                throw ValidationError("'\(topic)' is not a topic (one of \(Gossip.Topic.allCases.map(\.description).joined(separator: ", ")))")
            }
        }

        func run() async throws {
            bootstrapLogging(common.logLevel, default: "warning")
            let result = try await callNode(common.directory, "gossip.publish", params: .object(["topic": .string(topic), "text": .string(text)]))
            if json { try printJSONValue(result); return }
            print("published \(result["id"]?.stringValue?.prefix(16) ?? "?") on \(topic) to \(result["sample"]?.intValue ?? 0) sample peers")
        }
    }
}
