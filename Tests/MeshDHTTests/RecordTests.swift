import MeshCore
import MeshCrypto
@testable import MeshDHT
import Testing

/// A signing key from a fixed seed byte, so tests reproduce.
func testKey(_ n: UInt8) -> SigningKey {
    try! SigningKey(seed: SecretBytes(copying: [UInt8](repeating: n, count: 32)))  // 32 bytes are always a valid seed
}

private let now: UInt64 = 1_800_000_000_000
private let hour: UInt64 = 3_600_000

private func contact(_ key: SigningKey, port: UInt16, ip: IPAddress = .loopbackV4, tcp: UInt16? = nil) -> Contact {
    var addresses = [TransportAddress(.udp, SocketAddress(ip: ip, port: port))]
    if let tcp { addresses.append(TransportAddress(.tcp, SocketAddress(ip: ip, port: tcp))) }
    return try! Contact(publicKey: key.publicKey, addresses: addresses)  // valid by construction
}

@Suite("DHT records and the record store")
struct RecordTests {
    let key = PeerID(words: (1, 2, 3, 4))

    @Test("a record signs, round-trips byte for byte, and any changed byte breaks its signature")
    func signAndTamper() throws {
        let r = Kademlia.Record.sign(key: key, value: Array("hello".utf8), sequence: 7, expiresAt: now + hour, by: testKey(1))
        #expect(r.encoded.count == Kademlia.Record.overhead + 5)
        #expect(r.isSignatureValid)
        let parsed = try #require(Kademlia.Record(decoding: r.encoded))
        #expect(parsed == r && parsed.isSignatureValid)
        for i in stride(from: 0, to: r.encoded.count, by: 3) {
            var bytes = r.encoded
            bytes[i] ^= 0x40
            if let t = Kademlia.Record(decoding: bytes) { #expect(!t.isSignatureValid, "byte \(i) changed, signature still valid") }
        }
        // Truncated or extended: not a record.
        #expect(Kademlia.Record(decoding: Array(r.encoded.dropLast())) == nil)
        #expect(Kademlia.Record(decoding: r.encoded + [0]) == nil)
    }

    @Test("a storing node refuses forged, expired, far-future, oversized and replayed records")
    func refusals() {
        var store = Kademlia.RecordStore(settings: Kademlia.Settings())
        let alice = testKey(1), mallory = testKey(2)
        let good = Kademlia.Record.sign(key: key, value: [1], sequence: 10, expiresAt: now + hour, by: alice)
        #expect(store.store(good, now: now) == .stored)
        #expect(store.store(good, now: now) == .unchanged)

        // Forged: Mallory's signature on a record naming Alice as publisher.
        let forgedByMallory = Kademlia.Record.sign(key: key, value: [9], sequence: 11, expiresAt: now + hour, by: mallory)
        var bytes = forgedByMallory.encoded
        bytes.replaceSubrange(1..<33, with: alice.publicKey.bytes)
        let forged = Kademlia.Record(decoding: bytes)!
        #expect(store.store(forged, now: now) == .badSignature)

        #expect(store.store(.sign(key: key, value: [1], sequence: 12, expiresAt: now, by: alice), now: now) == .expired)
        #expect(store.store(.sign(key: key, value: [1], sequence: 12, expiresAt: now + 25 * hour, by: alice), now: now) == .expiryTooFar)
        #expect(store.store(.sign(key: key, value: [UInt8](repeating: 0, count: 1001), sequence: 12, expiresAt: now + hour, by: alice),
                            now: now) == .tooLarge)
        // Replayed: an older sequence, or the same sequence with other bytes.
        #expect(store.store(.sign(key: key, value: [2], sequence: 9, expiresAt: now + hour, by: alice), now: now) == .staleSequence)
        #expect(store.store(.sign(key: key, value: [2], sequence: 10, expiresAt: now + hour, by: alice), now: now) == .staleSequence)
        #expect(store.records(for: key, now: now) == [good])
        // A newer sequence replaces the record.
        let newer = Kademlia.Record.sign(key: key, value: [3], sequence: 11, expiresAt: now + hour, by: alice)
        #expect(store.store(newer, now: now) == .stored)
        #expect(store.records(for: key, now: now) == [newer])
        #expect(store.count == 1)
    }

    @Test("one publisher cannot fill a storing node; one key holds a bounded number of publishers")
    func caps() {
        var settings = Kademlia.Settings()
        settings.maxRecordsPerPublisher = 5
        settings.maxRecordsPerKey = 4
        settings.maxRecords = 12
        var store = Kademlia.RecordStore(settings: settings)
        let flooder = testKey(3)
        var statuses: [Kademlia.StoreStatus] = []
        for i in 0..<50 {
            statuses.append(store.store(.sign(key: PeerID(words: (UInt64(i), 0, 0, 0)), value: [1], sequence: 1,
                                              expiresAt: now + hour, by: flooder), now: now))
        }
        #expect(statuses.filter { $0 == .stored }.count == 5)
        #expect(statuses.dropFirst(5).allSatisfy { $0 == .publisherFull })
        // Others still get in; one key takes four publishers, then refuses.
        var perKey: [Kademlia.StoreStatus] = []
        for n in 10..<16 { perKey.append(store.store(.sign(key: key, value: [UInt8(n)], sequence: 1, expiresAt: now + hour, by: testKey(UInt8(n))), now: now)) }
        #expect(perKey == [.stored, .stored, .stored, .stored, .keyFull, .keyFull])
        // The whole store is bounded too.
        var last = Kademlia.StoreStatus.stored
        for n in 20..<40 { last = store.store(.sign(key: PeerID(words: (9, UInt64(n), 0, 0)), value: [1], sequence: 1, expiresAt: now + hour, by: testKey(UInt8(n))), now: now) }
        #expect(last == .storeFull)
        #expect(store.count == 12)
        // Expired records are purged and their slots freed.
        store.purge(now: now + hour)
        #expect(store.count == 0)
        #expect(store.store(.sign(key: key, value: [1], sequence: 2, expiresAt: now + 2 * hour, by: flooder), now: now + hour) == .stored)
    }
}

@Suite("DHT wire format")
struct DHTWireTests {
    @Test("every message kind round-trips with the sender's TCP port")
    func roundTrip() throws {
        let a = testKey(1), b = testKey(2)
        let record = Kademlia.Record.sign(key: PeerID(words: (5, 6, 7, 8)), value: Array("x".utf8), sequence: 3, expiresAt: now, by: a)
        let contacts = [contact(a, port: 7000, tcp: 7001), contact(b, port: 7002, ip: .loopbackV6)]
        let bodies: [Kademlia.Message.Body] = [
            .ping, .pong, .findNode(target: PeerID(words: (1, 2, 3, 4))), .nodes(contacts), .nodes([]),
            .store(record), .stored(.keyFull), .findValue(key: PeerID(words: (9, 9, 9, 9)), offset: 17),
            .values(total: 40, offset: 3, records: [record, record]), .values(total: 0, offset: 0, records: []),
        ]
        for body in bodies {
            let m = Kademlia.Message(requestID: 0xDEAD_BEEF_0102_0304, body: body)
            let bytes = Kademlia.Wire.encode(m, tcpPort: 7401)
            #expect(bytes.count <= Kademlia.Wire.maxBody)
            #expect(Kademlia.Wire.isDHT(bytes[0]))
            let decoded = try #require(Kademlia.Wire.decode(bytes), "\(body)")
            #expect(decoded.message == m)
            #expect(decoded.tcpPort == 7401)
        }
    }

    @Test("FIND_NODE and FIND_VALUE may be padded with zeros to a third of the largest answer; nothing else may")
    func padding() throws {
        for body in [Kademlia.Message.Body.findNode(target: PeerID(words: (1, 2, 3, 4))), .findValue(key: PeerID(words: (5, 6, 7, 8)), offset: 9)] {
            let m = Kademlia.Message(requestID: 7, body: body)
            let padded = Kademlia.Wire.encode(m, tcpPort: 1, padded: true)
            #expect(padded.count == Kademlia.Wire.paddedRequestBytes)
            #expect((padded.count + DatagramSealer.overhead) * Kademlia.Wire.amplificationFactor >= DatagramSealer.overhead + Kademlia.Wire.maxBody)
            #expect(try #require(Kademlia.Wire.decode(padded)).message == m)
            var dirty = padded
            dirty[dirty.count - 1] = 1
            #expect(Kademlia.Wire.decode(dirty) == nil, "padding must be zeros")
            #expect(Kademlia.Wire.decode(padded + [UInt8](repeating: 0, count: Kademlia.Wire.maxBody)) == nil, "bounded")
        }
        // Other kinds take no padding.
        let ping = Kademlia.Wire.encode(Kademlia.Message(requestID: 1, body: .ping), tcpPort: 0, padded: true)
        #expect(ping.count == Kademlia.Wire.headerBytes)
        #expect(Kademlia.Wire.decode(ping + [0]) == nil)
    }

    @Test("a full NODES reply of IPv6 contacts fits one datagram; extra contacts are cut, not overflowed")
    func sizeBudget() throws {
        let many = (0..<40).map { contact(testKey(UInt8($0 + 1)), port: UInt16(9000 + $0), ip: .loopbackV6, tcp: 1) }
        let bytes = Kademlia.Wire.encode(Kademlia.Message(requestID: 1, body: .nodes(many)), tcpPort: 0)
        #expect(bytes.count <= Kademlia.Wire.maxBody)
        let decoded = try #require(Kademlia.Wire.decode(bytes))
        guard case .nodes(let got) = decoded.message.body else { Issue.record("not nodes"); return }
        #expect(got.count >= 20 && got == Array(many.prefix(got.count)))
    }

    @Test("hostile bytes never trap: truncations, flipped bytes and random bodies decode to nil or a valid message")
    func fuzz() {
        let a = testKey(1)
        let record = Kademlia.Record.sign(key: PeerID(words: (5, 6, 7, 8)), value: [1, 2, 3], sequence: 3, expiresAt: now, by: a)
        let samples: [Kademlia.Message.Body] = [.nodes([contact(a, port: 7000, tcp: 7001)]), .store(record),
                                                 .values(total: 2, offset: 0, records: [record]), .findValue(key: record.key, offset: 0)]
        var rng = SplitMix64(seed: 11)
        var decodedSomething = 0
        for body in samples {
            let bytes = Kademlia.Wire.encode(Kademlia.Message(requestID: 5, body: body), tcpPort: 1)
            for cut in 0..<bytes.count { #expect(Kademlia.Wire.decode(Array(bytes.prefix(cut))) == nil) }
            for _ in 0..<2000 {
                var m = bytes
                for _ in 0..<(1 + Int(rng.next() % 4)) { m[Int(rng.next() % UInt64(m.count))] = UInt8(truncatingIfNeeded: rng.next()) }
                if let d = Kademlia.Wire.decode(m) {
                    decodedSomething += 1
                    // Whatever decodes re-encodes to a valid message (bounded fields survive).
                    #expect(Kademlia.Wire.decode(Kademlia.Wire.encode(d.message, tcpPort: d.tcpPort)) != nil)
                }
            }
        }
        for _ in 0..<5000 {
            let n = Int(rng.next() % 300)
            var m = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if !m.isEmpty { m[0] = UInt8(16 + rng.next() % 8) }
            _ = Kademlia.Wire.decode(m)
        }
        #expect(decodedSomething > 0)  // mutations of non-structural bytes still decode
    }
}

@Suite("S/Kademlia ID puzzle")
struct IDPuzzleTests {
    /// The first test key from `start` whose ID meets (or, with `failing`, misses) `difficulty`.
    func key(_ difficulty: Int, failing: Bool = false, from start: inout UInt8) -> SigningKey {
        while true {
            let k = testKey(start)
            start &+= 1
            if PeerID(publicKey: k.publicKey).meetsPuzzle(difficulty) != failing { return k }
        }
    }

    @Test("a mesh with a difficulty ignores members whose IDs miss it: no answer, no table entry, filtered from replies")
    func enforced() throws {
        var settings = Kademlia.Settings()
        settings.idDifficulty = 3
        settings.maxPerPrefixPerBucket = nil
        var n: UInt8 = 1
        let me = key(3, from: &n), good = key(3, from: &n), bad = key(3, failing: true, from: &n)
        #expect(PeerID(publicKey: good.publicKey).puzzleBits >= 3 && PeerID(publicKey: bad.publicKey).puzzleBits < 3)
        let c = { (k: SigningKey, port: UInt16) in try! Contact(publicKey: k.publicKey, addresses: [TransportAddress(.udp, SocketAddress(ip: .loopbackV4, port: port))]) }
        var node = Kademlia.Instance(local: c(me, 1), settings: settings, seed: 1)
        #expect(node.onMessage(Kademlia.Message(requestID: 1, body: .ping), from: c(bad, 2), now: 10).isEmpty)
        #expect(node.table.count == 0)
        let answered = node.onMessage(Kademlia.Message(requestID: 2, body: .ping), from: c(good, 3), now: 10)
        #expect(answered == [.send(Kademlia.Message(requestID: 2, body: .pong), to: c(good, 3))])
        #expect(node.table.count == 1)
        // A lookup's answer naming a failing ID does not bring it in.
        let (_, out) = node.startLookup(PeerID(words: (7, 7, 7, 7)), now: 20)
        guard case .send(let request, _)? = out.first else { Issue.record("no request"); return }
        _ = node.onMessage(Kademlia.Message(requestID: request.requestID, body: .nodes([c(bad, 2)])), from: c(good, 3), now: 21)
        #expect(node.table.allNodes.map(\.id) == [PeerID(publicKey: good.publicKey)])
        #expect(node.pendingRequests == 0)
        // Difficulty 0 admits every ID.
        #expect(PeerID(publicKey: bad.publicKey).meetsPuzzle(0))
    }
}
