import MeshCore
import MeshCrypto
import Testing

/// A clock the test moves by hand (milliseconds since the epoch).
final class ManualClock: @unchecked Sendable {
    var now: UInt64
    init(_ now: UInt64 = 1_800_000_000_000) { self.now = now }
}

private func sealer(_ id: SigningKey, _ mesh: MeshKey, _ clock: ManualClock, _ settings: DatagramSealer.Settings = .init()) -> DatagramSealer {
    DatagramSealer(identity: id, meshKey: mesh, settings: settings, now: { clock.now }, random: { SecureRandom.bytes($0) })
}

private func open(_ s: DatagramSealer, _ d: [UInt8]) -> Result<DatagramSealer.Opened, DatagramSealer.Drop> {
    d.withUnsafeBytes { s.open($0) }
}

@Suite("Sealed datagrams")
struct SealedDatagramTests {
    let alice = SigningKey(), bob = SigningKey()

    @Test("a sealed datagram opens for its recipient, proving the sender, in both directions")
    func roundTrip() throws {
        let clock = ManualClock()
        let (a, b) = (sealer(alice, .publicMesh, clock), sealer(bob, .publicMesh, clock))
        let d = try #require(a.seal(Array("hello".utf8), to: bob.publicKey))
        #expect(d.count == DatagramSealer.overhead + 5)
        #expect(d[0] == 1 && Array(d[2..<34]) == alice.publicKey.bytes)
        let opened = try open(b, d).get()
        #expect(opened.sender == alice.publicKey && opened.body == Array("hello".utf8) && opened.cookie == nil)
        let back = try #require(b.seal([1, 2, 3], to: alice.publicKey, cookie: [UInt8](repeating: 7, count: 16)))
        let o2 = try open(a, back).get()
        #expect(o2.body == [1, 2, 3] && o2.cookie == [UInt8](repeating: 7, count: 16))
        #expect(a.cachedKeys == 1)
    }

    @Test("a different mesh key cannot produce or open one valid datagram")
    func privateMesh() throws {
        let clock = ManualClock()
        let mesh = MeshKey.generate()
        let insider = sealer(bob, mesh, clock)
        let outsider = sealer(alice, .publicMesh, clock)
        #expect(try open(insider, #require(outsider.seal([1], to: bob.publicKey))).failure == .authFailed)
        #expect(try open(outsider, #require(insider.seal([1], to: alice.publicKey))).failure == .authFailed)
        let member = sealer(alice, mesh, clock)
        #expect(try open(insider, #require(member.seal([1], to: bob.publicKey))).failure == nil)
        #expect(!mesh.isPublicMesh && MeshKey.publicMesh.isPublicMesh && mesh.fingerprint.count == 16)
    }

    @Test("every flipped bit is refused; replays, stale and future datagrams are dropped")
    func tamperingReplayAndSkew() throws {
        let clock = ManualClock()
        let (a, b) = (sealer(alice, .publicMesh, clock), sealer(bob, .publicMesh, clock))
        let d = try #require(a.seal(Array("payload".utf8), to: bob.publicKey))
        for bit in 0..<(d.count * 8) {
            var t = d
            t[bit / 8] ^= 1 << UInt8(bit % 8)
            #expect(open(b, t).failure != nil, "bit \(bit) flipped was accepted")
        }
        #expect(open(b, d).failure == nil)
        #expect(open(b, d).failure == .replay)
        let old = try #require(a.seal([1], to: bob.publicKey))
        clock.now += 30_001
        #expect(open(b, old).failure == .stale)
        let future = try #require(a.seal([2], to: bob.publicKey))
        clock.now -= 60_002
        #expect(open(b, future).failure == .stale)
        clock.now += 30_001
        // Replay memory forgets what left the window, and stays bounded.
        for _ in 0..<100 { _ = open(b, a.seal([3], to: bob.publicKey)!) }
        #expect(b.rememberedNonces >= 100)
        clock.now += 120_000
        _ = open(b, a.seal([4], to: bob.publicKey)!)
        #expect(b.rememberedNonces == 1)
    }

    @Test("malformed headers are dropped with their reason")
    func malformed() throws {
        let clock = ManualClock()
        let (a, b) = (sealer(alice, .publicMesh, clock), sealer(bob, .publicMesh, clock))
        let d = try #require(a.seal([9], to: bob.publicKey))
        #expect(open(b, Array(d.prefix(10))).failure == .tooShort)
        var v = d; v[0] = 0
        #expect(open(b, v).failure == .badVersion)
        var f = d; f[1] = 0x80
        #expect(open(b, f).failure == .badFlags)
        var c = d; c[1] = 0x01  // claims a cookie: too short for the longer header
        #expect(open(b, c).failure == .tooShort)
        var c2 = try #require(a.seal([UInt8](repeating: 5, count: 40), to: bob.publicKey)); c2[1] = 0x01
        #expect(open(b, c2).failure == .authFailed)
        #expect(try open(b, #require(b.seal([1], to: alice.publicKey))).failure == .fromSelf)
        var k = d; for i in 2..<34 { k[i] = 0xff }
        #expect([.badSenderKey, .authFailed].contains(open(b, k).failure))
    }

    @Test("the replay memory fails closed when full, and the key cache is bounded")
    func bounds() throws {
        let clock = ManualClock()
        var settings = DatagramSealer.Settings()
        settings.replayCapacity = 10
        settings.keyCacheCapacity = 3
        let b = sealer(bob, .publicMesh, clock, settings)
        let a = sealer(alice, .publicMesh, clock)
        for _ in 0..<10 { #expect(open(b, a.seal([1], to: bob.publicKey)!).failure == nil) }
        #expect(open(b, a.seal([1], to: bob.publicKey)!).failure == .replayMemoryFull)
        for _ in 0..<5 {
            let stranger = sealer(SigningKey(), .publicMesh, clock)
            _ = b.seal([1], to: stranger.publicKey)
        }
        #expect(b.cachedKeys == 3)
    }

    @Test("10,000 random datagrams never trap and never open")
    func fuzz() {
        let clock = ManualClock()
        let b = sealer(bob, .publicMesh, clock)
        var opened = 0
        for i in 0..<10_000 {
            var d = (0..<Int.random(in: 0...300)).map { _ in UInt8.random(in: 0...255) }
            if i % 2 == 0 && d.count > 80 { d[0] = 1; d[1] = 0; d.replaceSubrange(2..<34, with: alice.publicKey.bytes) }
            if case .success = open(b, d) { opened += 1 }
        }
        #expect(opened == 0)
    }

    @Test("cookies prove an address for this minute and the last, and only that address")
    func cookies() throws {
        let clock = ManualClock()
        let jar = AddressCookies(secret: SecureRandom.secret(32), now: { clock.now })
        let addr = try SocketAddress(parsing: "127.0.0.1:4000")
        let cookie = jar.make(for: addr)
        #expect(cookie.count == 16)
        #expect(jar.verify(cookie, from: addr))
        #expect(!jar.verify(cookie, from: try SocketAddress(parsing: "127.0.0.1:4001")))
        #expect(!jar.verify(cookie, from: try SocketAddress(parsing: "127.0.0.2:4000")))
        clock.now += 60_000
        #expect(jar.verify(cookie, from: addr))
        clock.now += 60_000
        #expect(!jar.verify(cookie, from: addr))
        let other = AddressCookies(secret: SecureRandom.secret(32), now: { clock.now })
        #expect(!other.verify(jar.make(for: addr), from: addr))
    }

    @Test("body messages round-trip; an unproven request is exactly as large as its challenge")
    func messages() {
        let all: [DatagramMessage] = [.ping(nonce: 1), .pong(nonce: 2), .infoRequest(nonce: 3),
                                      .infoReply(nonce: 4, contact: "gpm1:ab@udp:127.0.0.1:1"),
                                      .cookieChallenge(nonce: 5, cookie: [UInt8](repeating: 9, count: 16))]
        for m in all { #expect(DatagramMessage(decoding: m.encoded()) == m) }
        #expect(DatagramMessage.infoRequest(nonce: 0).encoded().count == DatagramMessage.cookieChallenge(nonce: 0, cookie: [UInt8](repeating: 0, count: 16)).encoded().count)
        #expect(DatagramMessage.ping(nonce: 0).encoded().count == DatagramMessage.pong(nonce: 0).encoded().count)
        #expect(DatagramMessage(decoding: [1, 0, 0]) == nil)
        #expect(DatagramMessage(decoding: DatagramMessage.ping(nonce: 1).encoded() + [0]) == nil)
        #expect(DatagramMessage(decoding: [9] + [UInt8](repeating: 0, count: 8)) == nil)
        #expect(DatagramMessage(decoding: [4, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, 0xfe]) == nil)  // invalid UTF-8
        for _ in 0..<5_000 { _ = DatagramMessage(decoding: (0..<Int.random(in: 0...40)).map { _ in UInt8.random(in: 0...255) }) }
    }

    @Test("the LRU cache evicts the least recently used entry")
    func lru() {
        var c = LRUCache<Int, String>(capacity: 2)
        c.insert("a", for: 1)
        c.insert("b", for: 2)
        #expect(c.value(for: 1) == "a")  // 1 is now most recent
        let evicted = c.insert("c", for: 3)
        #expect(evicted?.key == 2)
        #expect(c.peek(2) == nil && c.peek(1) == "a" && c.peek(3) == "c" && c.count == 2)
        c.insert("a2", for: 1)
        #expect(c.insert("d", for: 4)?.key == 3)
    }
}

extension Result {
    var failure: Failure? { if case .failure(let f) = self { f } else { nil } }
}
