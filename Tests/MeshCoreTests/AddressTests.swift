import MeshCore
import MeshCrypto
import Testing

@Suite("Peer IDs and addresses")
struct AddressTests {
    @Test("a peer ID is BLAKE2b-256 of the public key, with XOR distance and ordering")
    func peerID() throws {
        let key = SigningKey()
        let id = PeerID(publicKey: key.publicKey)
        #expect(id.bytes == Blake2b.hash(key.publicKey.bytes, outputLength: 32))
        #expect(PeerID(hex: id.hex) == id)
        #expect(PeerID(hex: id.hex.uppercased()) == id)
        #expect(PeerID(hex: "00") == nil)
        #expect(PeerID(hex: String(repeating: "g", count: 64)) == nil)
        let other = PeerID(publicKey: SigningKey().publicKey)
        #expect(id.distance(to: id).leadingZeroBitCount == 256)
        #expect(id.distance(to: other) == other.distance(to: id))
        #expect(PeerID(words: (0, 0, 1, 0)).leadingZeroBitCount == 191)
        #expect(PeerID(words: (0x8000_0000_0000_0000, 0, 0, 0)).leadingZeroBitCount == 0)
        #expect(PeerID(words: (0, 1, 0, 0)) < PeerID(words: (0, 2, 0, 0)))
        #expect(PeerID(words: (0, 2, 0, 0)) < PeerID(words: (1, 0, 0, 0)))
        #expect(id.short.count == 12)
        #expect(Set([id, other, id]).count == 2)
    }

    @Test("socket addresses parse and print canonically", arguments: [
        ("127.0.0.1:7400", "127.0.0.1:7400"),
        ("0.0.0.0:0", "0.0.0.0:0"),
        ("[::1]:7400", "[::1]:7400"),
        ("[2001:DB8:0:0:0:0:0:1]:65535", "[2001:db8::1]:65535"),
    ])
    func socketAddresses(input: String, canonical: String) throws {
        let a = try SocketAddress(parsing: input)
        #expect(a.description == canonical)
        #expect(try SocketAddress(parsing: a.description) == a)
    }

    @Test("malformed socket addresses name their problem", arguments: [
        ("127.0.0.1", SocketAddress.ParseError.missingPort("127.0.0.1")),
        ("::1:80", .ipv6NeedsBrackets("::1:80")),
        ("[::1]", .missingPort("[::1]")),
        ("[::1:80", .badHost("[::1:80")),
        ("localhost:80", .badHost("localhost")),
        ("256.0.0.1:80", .badHost("256.0.0.1")),
        ("1.2.3.4:65536", .badPort("65536")),
        ("1.2.3.4:-1", .badPort("-1")),
        ("1.2.3.4:", .badPort("")),
        ("1.2.3.4:+80", .badPort("+80")),
        ("[1.2.3.4]:80", .badHost("1.2.3.4")),
    ])
    func badSocketAddresses(input: String, error: SocketAddress.ParseError) {
        #expect(throws: error) { try SocketAddress(parsing: input) }
    }

    @Test("wildcard binds advertise loopback; loopback and unspecified are recognised")
    func advertisable() throws {
        #expect(try SocketAddress(parsing: "0.0.0.0:9").advertisable.description == "127.0.0.1:9")
        #expect(try SocketAddress(parsing: "[::]:9").advertisable.description == "[::1]:9")
        #expect(try SocketAddress(parsing: "10.1.2.3:9").advertisable.description == "10.1.2.3:9")
        #expect(IPAddress.loopbackV6.isLoopback && IPAddress("127.8.9.10")!.isLoopback && !IPAddress("10.0.0.1")!.isLoopback)
    }
}

@Suite("Contact strings")
struct ContactTests {
    let key = SigningKey().publicKey
    var keyHex: String { Hex.encode(key.bytes) }

    @Test("a contact with IPv4 and IPv6 endpoints round-trips")
    func roundTrip() throws {
        let text = "gpm1:\(keyHex)@udp:127.0.0.1:7400,tcp:127.0.0.1:7401,udp:[::1]:7400"
        let c = try Contact(parsing: "  \(text)\n")
        #expect(c.description == text)
        #expect(c.publicKey == key)
        #expect(c.peerID == PeerID(publicKey: key))
        #expect(c.addresses.count == 3)
        #expect(c.address(for: .tcp)?.port == 7401)
        #expect(c.address(for: .udp)?.description == "127.0.0.1:7400")
        #expect(try Contact(parsing: c.description) == c)
        // Upper-case hex is accepted and printed back in lower case.
        #expect(try Contact(parsing: "gpm1:\(keyHex.uppercased())@udp:127.0.0.1:1").description.contains(keyHex))
    }

    @Test("every malformed contact gets its precise error")
    func malformed() {
        let k = keyHex
        let cases: [(String, Contact.ParseError)] = [
            ("", .empty),
            ("   ", .empty),
            (String(repeating: "x", count: 1025), .tooLong(1025)),
            ("gpm2:\(k)@udp:127.0.0.1:1", .missingScheme),
            ("\(k)@udp:127.0.0.1:1", .missingScheme),
            ("gpm1:\(k)", .missingSeparator),
            ("gpm1:\(k.dropLast(2))@udp:127.0.0.1:1", .badKeyLength(62)),
            ("gpm1:\(k)00@udp:127.0.0.1:1", .badKeyLength(66)),
            ("gpm1:\(k.dropLast())z@udp:127.0.0.1:1", .badKeyCharacter(offset: 63)),
            ("gpm1:@udp:127.0.0.1:1", .badKeyLength(0)),
            ("gpm1:\(k)@", .noAddresses),
            ("gpm1:\(k)@quic:127.0.0.1:1", .unknownTransport("quic:127.0.0.1:1")),
            ("gpm1:\(k)@127.0.0.1:1", .unknownTransport("127.0.0.1:1")),
            ("gpm1:\(k)@udp:127.0.0.1:1,", .unknownTransport("")),
            ("gpm1:\(k)@udp:127.0.0.1", .badAddress("udp:127.0.0.1", .missingPort("127.0.0.1"))),
            ("gpm1:\(k)@udp:host:1", .badAddress("udp:host:1", .badHost("host"))),
            ("gpm1:\(k)@tcp:::1:1", .badAddress("tcp:::1:1", .ipv6NeedsBrackets("::1:1"))),
            ("gpm1:\(k)@udp:127.0.0.1:99999", .badAddress("udp:127.0.0.1:99999", .badPort("99999"))),
            ("gpm1:\(k)@udp:127.0.0.1:1,udp:127.0.0.1:1", .duplicateAddress("udp:127.0.0.1:1")),
            ("gpm1:\(k)@udp:127.0.0.1:0", .portZero("udp:127.0.0.1:0")),
            ("gpm1:\(k)@udp:0.0.0.0:5", .unspecifiedAddress("udp:0.0.0.0:5")),
            ("gpm1:\(k)@" + (1...9).map { "udp:127.0.0.1:\($0)" }.joined(separator: ","), .tooManyAddresses(9)),
        ]
        for (input, expected) in cases {
            #expect(throws: expected, "input: \(input.prefix(80))") { try Contact(parsing: input) }
        }
        for (_, e) in cases { #expect(!e.description.isEmpty) }
    }

    @Test("random text never crashes the parser")
    func fuzz() {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("gpm1:@udtcp[]0123456789abcdef.,: ".utf8)
        for _ in 0..<5_000 {
            let n = Int.random(in: 0...140, using: &rng)
            let bytes = (0..<n).map { _ in Bool.random(using: &rng) ? alphabet.randomElement(using: &rng)! : UInt8.random(in: 0...255, using: &rng) }
            _ = try? Contact(parsing: String(decoding: bytes, as: UTF8.self))
        }
    }
}
