import Foundation
import MeshCore
import MeshCrypto
import Testing

@Suite("Config file")
struct ConfigTests {
    @Test("the [provider] table: decimal prices, executors, limits; bad values name their line")
    func providerConfig() throws {
        let c = try NodeConfig(parsing: "[provider]\nenabled = true\nprice = 1.25\nslots = 4\nregion = \"eu-west\"\nexecutors = [\"sandbox\", \"podman\"]\ngpus = \"2x rtx-4090\"\nrecord_lifetime_s = 120\nheartbeat_interval_s = 0\n")
        #expect(c.provider.enabled && c.provider.price == Price(millipoints: 1250) && c.provider.slots == 4)
        #expect(c.provider.executors == [.sandbox, .podman] && c.provider.gpus == "2x rtx-4090" && c.provider.recordLifetimeSeconds == 120)
        #expect(c.provider.heartbeatIntervalSeconds == 0 && NodeConfig().provider.heartbeatIntervalSeconds == 60)
        #expect(try NodeConfig(parsing: "[provider]\nprice = 2\n").provider.price == Price(millipoints: 2000))
        #expect(try NodeConfig(parsing: NodeConfig.template) == NodeConfig())
        for (text, message) in [("[provider]\nprice = 1.2345\n", "line 2"), ("[provider]\nprice = \"cheap\"\n", "number of points"),
                                ("[provider]\nexecutors = [\"qemu\"]\n", "unknown executor 'qemu'"), ("[provider]\nslots = 0\n", "slots must be 1 to 255"),
                                ("\n[provider]\nrecord_lifetime_s = 5\n", "line 3"),
                                ("[provider]\nheartbeat_interval_s = 2\n", "heartbeat_interval_s must be 0 (none) or 5 to 3600")] {
            #expect { try NodeConfig(parsing: text) } throws: { "\($0)".contains(message) }
        }
    }

    @Test("the template `init` writes parses to the defaults")
    func templateIsDefaults() throws {
        #expect(try NodeConfig(parsing: NodeConfig.template) == NodeConfig())
    }

    @Test("settings override defaults")
    func overrides() throws {
        let c = try NodeConfig(parsing: """
        # comment
        [node]
        listen_udp = "127.0.0.1:0"   # trailing comment
        listen_tcp = "[::1]:9000"
        advertise = ["udp:192.0.2.1:7400", "tcp:192.0.2.1:7401",]
        log_level = "debug"
        [explorer]
        listen = "[::1]:8080"
        public = true
        """)
        #expect(c.explorerListen == "[::1]:8080" && c.explorerPublic)
        #expect(try NodeConfig(parsing: "[explorer]\nlisten = \"localhost:9\"").explorerListen == "localhost:9")
        #expect(try NodeConfig(parsing: "[explorer]\nlisten = \"\"").explorerListen == nil)
        #expect(c.udpListen.description == "127.0.0.1:0")
        #expect(c.tcpListen.description == "[::1]:9000")
        #expect(c.advertise.map(\.description) == ["udp:192.0.2.1:7400", "tcp:192.0.2.1:7401"])
        #expect(c.logLevel == "debug")
    }

    @Test("errors name the line and the problem", arguments: [
        ("[node]\nlisten_udp = 127.0.0.1:1", 2, "strings need double quotes"),
        ("[node]\nlisten_udp = \"127.0.0.1\"", 2, "has no port"),
        ("[node]\n\nlisten_tcpp = \"127.0.0.1:1\"", 3, "unknown setting 'node.listen_tcpp'"),
        ("[node]\nlog_level = \"loud\"", 2, "log_level must be one of"),
        ("[node]\nlog_level = 3", 2, "must be a string"),
        ("[node]\nlog_level = \"info\"\nlog_level = \"debug\"", 3, "already set on line 2"),
        ("[node\nx = 1", 1, "expected ']'"),
        ("[node]\nadvertise = [\"udp:1.2.3.4:5\"", 2, "expected ',' or ']'"),
        ("[node]\nadvertise = [\"sctp:1.2.3.4:5\"]", 2, "must start with 'udp:' or 'tcp:'"),
        ("[node]\nlisten_udp = \"abc", 2, "unterminated string"),
        ("[node]\nlisten_udp = \"a\\qb\"", 2, "unsupported escape"),
        ("[node]\n= 5", 2, "expected 'key = value'"),
        ("[node]\nlog_level \"info\"", 2, "expected '=' after 'log_level'"),
        ("[node]\nlog_level = \"info\" extra", 2, "unexpected text after the value"),
        ("[explorer]\nlisten = \"example.com:80\"", 2, "is not HOST:PORT with an IP address"),
        ("[explorer]\npublic = \"yes\"", 2, "public"),
    ])
    func errors(text: String, line: Int, fragment: String) {
        do {
            _ = try NodeConfig(parsing: text)
            Issue.record("accepted: \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.description.contains(fragment), "\(error)")
            #expect(error.description.hasPrefix("line \(line): "))
        }
    }

    @Test("values of every supported type")
    func values() throws {
        let f = try ConfigFile(parsing: "a = 1_000\nb = true\nc = \"x\\\"y\\\\z\\n\"\nd = [1, \"two\", false]\ne = -5\n[t]\nk = []")
        #expect(try f.integer("a") == 1000)
        #expect(try f.bool("b") == true)
        #expect(try f.string("c") == "x\"y\\z\n")
        #expect(f["d"]?.value == .array([.integer(1), .string("two"), .bool(false)]))
        #expect(try f.integer("e") == -5)
        #expect(try f.strings("t.k") == [])
        #expect(try f.string("missing") == nil)
        #expect(throws: ConfigFile.Error.self) { try f.strings("d") }
        #expect(ConfigFile.Value.string("a\"b").description == "\"a\\\"b\"")
    }
}

@Suite("JSON-RPC")
struct WireTests {
    @Test("JSON-RPC responses carry exactly one of result and error")
    func jsonRPC() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let ok = String(decoding: try encoder.encode(JSONRPC.Response(id: .int(1), result: .null)), as: UTF8.self)
        #expect(ok == #"{"id":1,"jsonrpc":"2.0","result":null}"#)
        let err = String(decoding: try encoder.encode(JSONRPC.Response(id: .string("a"), error: .methodNotFound("x"))), as: UTF8.self)
        #expect(err == #"{"error":{"code":-32601,"message":"method not found: x"},"id":"a","jsonrpc":"2.0"}"#)
        let decoded = try JSONDecoder().decode(JSONValue.self, from: Data(#"{"a":[1,2.5,"s",true,null,{}]}"#.utf8))
        #expect(decoded == .object(["a": .array([.int(1), .double(2.5), .string("s"), .bool(true), .null, .object([:])])]))
    }
}

@Suite("Bootstrap peers and DHT settings")
struct BootstrapConfigTests {
    @Test("Bootstrap/config.example.toml is the template init writes, and parses to the defaults")
    func exampleConfig() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Bootstrap/config.example.toml"), encoding: .utf8)
        #expect(text == NodeConfig.template)
        #expect(try NodeConfig(parsing: text) == NodeConfig())
    }

    @Test("Bootstrap/peers.example parses, and a bad line is reported by number")
    func peersFile() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let text = try String(contentsOf: root.appendingPathComponent("Bootstrap/peers.example"), encoding: .utf8)
        let peers = try BootstrapPeers.parse(text)
        #expect(peers.count == 1)
        #expect(peers[0].address(for: .udp)?.port == 7400)
        #expect(throws: ConfigFile.Error.self) { try BootstrapPeers.parse("# ok\n\ngpm1:nothex@udp:1.2.3.4:5\n") }
        do { _ = try BootstrapPeers.parse("# ok\n\ngpm1:nothex@udp:1.2.3.4:5\n") } catch { #expect(error.line == 3) }
        // A file saved with CRLF line ends reads the same.
        let crlf = text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).joined(separator: "\r\n")
        #expect(try BootstrapPeers.parse(crlf) == peers)
    }

    @Test("the [dht] table: bootstrap contacts, peers file, diversity limit; bad values name their line")
    func dhtTable() throws {
        let c = "gpm1:" + String(repeating: "ab", count: 32) + "@udp:127.0.0.1:7400"
        let config = try NodeConfig(parsing: "[dht]\nbootstrap = [\"\(c)\"]\npeers_file = \"p.txt\"\nip_diversity_limit = 0\n")
        #expect(config.bootstrap.map(\.description) == [c])
        #expect(config.peersFile == "p.txt" && config.ipDiversityLimit == 0)
        #expect(throws: ConfigFile.Error.self) { try NodeConfig(parsing: "[dht]\n\nbootstrap = [\"gpm1:x\"]\n") }
        #expect(throws: ConfigFile.Error.self) { try NodeConfig(parsing: "[dht]\nip_diversity_limit = 99\n") }
        // The template init writes parses to the defaults, with LF or CRLF line ends.
        #expect(try NodeConfig(parsing: NodeConfig.template) == NodeConfig())
        #expect(try NodeConfig(parsing: NodeConfig.template.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline)
            .joined(separator: "\r\n")) == NodeConfig())
        do { _ = try NodeConfig(parsing: "[dht]\r\n\r\nid_difficulty = 99\r\n") } catch { #expect(error.line == 3) }
    }
}

@Suite("MinHeap")
struct MinHeapTests {
    @Test("pops in ascending order whatever the push order, interleaved with pushes")
    func order() {
        var rng = SplitMix64(seed: 4)
        var heap = MinHeap<UInt64>()
        var mirror: [UInt64] = []
        for round in 0..<2000 {
            if round % 3 == 2, let top = heap.pop() {
                #expect(top == mirror.min())
                mirror.remove(at: mirror.firstIndex(of: top)!)
            } else {
                let v = rng.next() % 500  // duplicates included
                heap.push(v)
                mirror.append(v)
            }
        }
        #expect(heap.count == mirror.count)
        var drained: [UInt64] = []
        while let v = heap.pop() { drained.append(v) }
        #expect(drained == mirror.sorted() && heap.isEmpty && heap.min == nil)
    }
}

@Suite("Units")
struct UnitTests {
    @Test("sizes: binary and decimal units; absurd ones are refused, not trapped on")
    func sizes() {
        #expect(ByteSize.parse("24GiB") == 25_769_803_776)
        #expect(ByteSize.parse("512 MiB") == 536_870_912)
        #expect(ByteSize.parse("80GB") == 80_000_000_000)
        #expect(ByteSize.parse("1.5TiB") == 1_649_267_441_664)
        #expect(ByteSize.parse("4096") == 4096)
        #expect(ByteSize.parse("-1GiB") == nil && ByteSize.parse("GiB") == nil && ByteSize.parse("12 parsecs") == nil)
        #expect(ByteSize.parse("1e30TiB") == nil && ByteSize.parse("infTiB") == nil && ByteSize.parse("nanGB") == nil)
    }

    @Test("durations: units, combinations, plain seconds; malformed or over a year refused")
    func durations() {
        #expect(DurationText.seconds("90s") == 90 && DurationText.seconds("10m") == 600 && DurationText.seconds("2h") == 7_200)
        #expect(DurationText.seconds("1h30m") == 5_400 && DurationText.seconds("1d") == 86_400 && DurationText.seconds(" 45 ") == 45)
        for bad in ["", "m", "10x", "1.5h", "-5", "10m5", "9999999999s", "400d"] { #expect(DurationText.seconds(bad) == nil, "\(bad)") }
    }
}
