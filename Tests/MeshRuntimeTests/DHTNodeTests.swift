import Foundation
import InMemoryLogging
import Logging
import MeshCore
import MeshCrypto
import MeshDHT
@testable import MeshRuntime
import Testing


@Suite("DHT over real sockets", .timeLimit(.minutes(3)))
struct DHTNodeTests {
    @Test("64 nodes on two shared loops join through one peer, find each other, and read a record put on one of them")
    func sixtyFour() async throws {
        let loops = try [EventLoop(name: "dht-a"), EventLoop(name: "dht-b")]
        defer { loops.forEach { $0.shutdown() } }
        let first = try await MeshNode.start(on: loops[0], options: loopbackOptions())
        var nodes = [first]
        for i in 1..<64 { nodes.append(try await MeshNode.start(on: loops[i % 2], options: loopbackOptions(bootstrap: [first.contact]))) }
        let all = nodes
        let joined = try await eventually(30) {
            for n in all { if try await n.dhtSnapshot().joined == false { return false } }
            return true
        }
        #expect(joined, "not every node joined")
        // Every node finds another (its neighbour in the list) as the closest node to that node's ID.
        var found = 0
        for (i, n) in nodes.enumerated() {
            let target = nodes[(i + 1) % nodes.count]
            let r = try await n.lookup(target.peerID)
            if r.closest.first?.peerID == target.peerID { found += 1 }
            #expect(r.closest.count == 20)
        }
        #expect(found == 64, "\(found)/64 lookups found their target first")
        // A record put on one node is read from every other.
        let key = Kademlia.key(named: "model/rtx-4090")
        let put = try await nodes[5].publish(key: key, value: Array("provider five".utf8))
        #expect(put.stored == 20, "stored on \(put.stored)")
        var read = 0
        for (i, n) in nodes.enumerated() where i != 5 {
            let got = try await n.get(key: key)
            if got.records.count == 1, got.records[0].value == Array("provider five".utf8),
               got.records[0].publisher == nodes[5].identity.publicKey { read += 1 }
        }
        #expect(read == 63, "read by \(read)/63")
        // Requests are padded, so first contacts were answered at once, without address cookies.
        var cookieRetries = 0, malformed = 0
        for n in nodes {
            let s = try await n.status()
            cookieRetries += s.counters["dht_cookie_retries"] ?? 0
            malformed += s.counters["datagrams_dropped_malformed"] ?? 0
        }
        #expect(cookieRetries == 0)
        #expect(malformed == 0)
        for n in nodes { await n.stop() }
    }

    @Test("a node whose bootstrap peers are unreachable keeps retrying with backoff, says so, and joins once one appears")
    func unreachableBootstrap() async throws {
        try await withLoop { loop in
            let logging = InMemoryLogHandler()
            let logger = Logger(label: "test") { _ in logging }
            // A contact for a peer that does not exist yet: its port is closed.
            let later = SigningKey()
            let sock = try await loop.submit { try UDPSocket.bind(on: loop, to: loopback) }
            let port = try await loop.submit { sock.localAddress.port }
            try await loop.submit { sock.close() }
            let absent = try Contact(publicKey: later.publicKey, addresses: [TransportAddress(.udp, SocketAddress(ip: .loopbackV4, port: port))])
            let node = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [absent], logger: logger))
            let retried = try await eventually(20) { try await node.dhtSnapshot().joinAttempts >= 2 }
            #expect(retried)
            let snapshot = try await node.dhtSnapshot()
            #expect(!snapshot.joined)
            #expect(logging.entries.contains { $0.message.description.contains("no bootstrap peer answered") && $0.level == .warning })
            // The peer comes up on that port; the next attempt joins.
            var o = loopbackOptions()
            o.identity = later
            o.config.udpListen = SocketAddress(ip: .loopbackV4, port: port)
            let peer = try await MeshNode.start(on: loop, options: o)
            let joined = try await eventually(20) { try await node.dhtSnapshot().joined }
            #expect(joined)
            await node.stop()
            await peer.stop()
        }
    }

    @Test("hostile DHT datagrams are dropped and counted; unproven senders get answers and a check, but no table entry; forged records are refused")
    func hostileDHT() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: loopbackOptions())
            let attackerKey = SigningKey()
            let replies = Box<[[UInt8]]>([])
            let target = node.udpAddress
            let peer = node.identity.publicKey
            /// The attacker's socket and sealer, used on the loop only.
            final class Attacker: @unchecked Sendable {
                let sealer: DatagramSealer
                var socket: UDPSocket?
                init(_ key: SigningKey) {
                    sealer = DatagramSealer(identity: key, meshKey: .publicMesh, now: { MeshNode.wallClockMilliseconds() }, random: SecureRandom.bytes)
                }
            }
            let attacker = Attacker(attackerKey)
            try await loop.submit {
                let socket = try UDPSocket.bind(on: loop, to: loopback)
                try socket.startReceiving { bytes, _ in
                    if case .success(let opened) = attacker.sealer.open(bytes) { replies.mutate { $0.append(opened.body) } }
                }
                attacker.socket = socket
            }
            func send(_ body: [UInt8]) async throws {
                _ = try await loop.submit { attacker.socket!.send(attacker.sealer.seal(body, to: peer)!, to: target) }
            }
            // 500 authentic but malformed DHT bodies.
            var rng = SplitMix64(seed: 3)
            for _ in 0..<500 {
                var body = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                body.insert(UInt8(16 + rng.next() % 8), at: 0)
                if Kademlia.Wire.decode(body) == nil { try await send(body) } else { try await send([16]) }
            }
            // Well-formed answers nobody asked for.
            try await send(Kademlia.Wire.encode(Kademlia.Message(requestID: 42, body: .nodes([])), tcpPort: 0))
            try await send(Kademlia.Wire.encode(Kademlia.Message(requestID: 43, body: .pong), tcpPort: 0))
            // Requests from an address that has proven nothing: a FIND_NODE gets a cookie
            // challenge, a PING a pong, a forged STORE its refusal; none enters the table.
            try await send(Kademlia.Wire.encode(Kademlia.Message(requestID: 1, body: .findNode(target: PeerID(words: (1, 2, 3, 4)))), tcpPort: 0))
            try await send(Kademlia.Wire.encode(Kademlia.Message(requestID: 2, body: .ping), tcpPort: 0))
            let honest = Kademlia.Record.sign(key: PeerID(words: (9, 9, 9, 9)), value: [1], sequence: 1,
                                              expiresAt: MeshNode.wallClockMilliseconds() + 60_000, by: attackerKey)
            var forged = honest.encoded
            forged[83] ^= 1  // the value byte: the signature no longer covers it
            try await send(Kademlia.Wire.encode(Kademlia.Message(requestID: 3, body: .store(Kademlia.Record(decoding: forged)!)), tcpPort: 0))
            // Answers: the cookie challenge, the pong, the STORE refusal, and the node's own PING
            // checking the unproven sender's address before it may enter the table.
            let answered = try await eventually(10) { replies.value.count >= 4 }
            #expect(answered)
            let kinds = replies.value.map { $0.first ?? 0 }
            #expect(kinds.contains(DatagramMessage.Kind.cookieChallenge.rawValue))
            let messages = replies.value.compactMap { Kademlia.Wire.decode($0)?.message }
            #expect(messages.contains(Kademlia.Message(requestID: 2, body: .pong)))
            #expect(messages.contains { $0.body == .ping }, "the node checks an unproven requester with a PING")
            #expect(messages.contains(Kademlia.Message(requestID: 3, body: .stored(.badSignature))))
            let c = try await node.status().counters
            #expect(c["datagrams_dropped_malformed"] == 500)
            #expect(c["datagrams_dropped_unsolicited"] == 2)
            #expect(c["cookie_challenges_sent"] == 1)
            let snapshot = try await node.dhtSnapshot()
            #expect(snapshot.peers.isEmpty && snapshot.recordsStored == 0)
            // A real peer still joins and finds the node.
            let friend = try await MeshNode.start(on: loop, options: loopbackOptions(bootstrap: [node.contact]))
            #expect(try await eventually(10) { try await friend.dhtSnapshot().joined })
            #expect(try await friend.lookup(node.peerID).closest.first?.peerID == node.peerID)
            try await loop.submit { attacker.socket?.close() }
            await friend.stop()
            await node.stop()
        }
    }

    @Test("DHT calls on a stopped node fail at once with .stopped instead of waiting forever")
    func stoppedNode() async throws {
        try await withLoop { loop in
            let node = try await MeshNode.start(on: loop, options: loopbackOptions())
            await node.stop()
            let key = Kademlia.key(named: "x")
            await #expect(throws: NodeError.stopped) { _ = try await node.lookup(key) }
            await #expect(throws: NodeError.stopped) { _ = try await node.publish(key: key, value: [1]) }
            await #expect(throws: NodeError.stopped) { _ = try await node.get(key: key) }
        }
    }
}
