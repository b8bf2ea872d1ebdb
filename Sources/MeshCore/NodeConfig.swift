/// A node's settings, read from `config.toml` in the data directory and overridden by flags.
public struct NodeConfig: Sendable, Equatable {
    /// The file name of the config in the data directory.
    public static let fileName = "config.toml"
    /// The default port for both UDP and TCP.
    public static let defaultPort: UInt16 = 7400

    /// Where the UDP socket binds (DHT, gossip, probes).
    public var udpListen = SocketAddress(ip: .v4(0, 0, 0, 0), port: defaultPort)
    /// Where the TCP listener binds (channels).
    public var tcpListen = SocketAddress(ip: .v4(0, 0, 0, 0), port: defaultPort)
    /// Addresses other peers should use; empty means "derive from the bound addresses".
    public var advertise: [TransportAddress] = []
    /// Log level: trace, debug, info, notice, warning, error, critical.
    public var logLevel = "info"
    /// Path of the private mesh's key file; nil joins the public mesh.
    public var meshKeyFile: String?
    /// Peers to join the DHT through.
    public var bootstrap: [Contact] = []
    /// A bootstrap-peers file (format: `Bootstrap/peers.example`), relative to the data directory.
    public var peersFile: String?
    /// Most routing-table entries per bucket from one IP prefix; nil: 2, or off when the node
    /// advertises loopback; 0: off.
    public var ipDiversityLimit: Int?
    /// The mesh's ID puzzle difficulty (leading zero bits; 0: none). Every member must use the
    /// same value; `gpumesh init --id-difficulty N` makes an identity that meets it.
    public var idDifficulty = 0
    /// Disjoint paths per DHT lookup (S/Kademlia's d; 1: plain Kademlia).
    public var disjointPaths = 1
    /// What this node offers when it provides (`[provider]`).
    public var provider = ProviderConfig()
    /// Peers trusted from the start in reputation (`[reputation] friends`: 64-digit peer IDs).
    public var friends: [String] = []
    /// Where `gpumesh node` serves its explorer (`[explorer] listen`, `HOST:PORT`); nil: it does not.
    public var explorerListen: String?
    /// Let the explorer bind an address other than loopback (`[explorer] public`).
    public var explorerPublic = false

    /// The settings a node understands, as `table.key`.
    public static let knownKeys: Set<String> = ["node.listen_udp", "node.listen_tcp", "node.advertise", "node.log_level", "node.mesh_key_file",
                                                "dht.bootstrap", "dht.peers_file", "dht.ip_diversity_limit",
                                                "dht.id_difficulty", "dht.disjoint_paths",
                                                "provider.enabled", "provider.price", "provider.slots", "provider.region",
                                                "provider.executors", "provider.gpus", "provider.record_lifetime_s",
                                                "provider.heartbeat_interval_s", "provider.images", "provider.max_duration_s",
                                                "provider.max_input_mib", "provider.max_output_mib", "provider.max_memory_mib",
                                                "provider.allow_renters", "provider.min_renter_reputation", "reputation.friends",
                                                "explorer.listen", "explorer.public"]
    /// The log levels accepted by `log_level`.
    public static let logLevels = ["trace", "debug", "info", "notice", "warning", "error", "critical"]

    /// The defaults.
    public init() {}

    /// Reads a config file's text; unknown keys and bad values are errors that name the line.
    public init(parsing text: String) throws(ConfigFile.Error) {
        let file = try ConfigFile(parsing: text)
        try file.rejectUnknownKeys(Self.knownKeys)
        if let s = try file.string("node.listen_udp") { udpListen = try Self.address(s, key: "node.listen_udp", in: file) }
        if let s = try file.string("node.listen_tcp") { tcpListen = try Self.address(s, key: "node.listen_tcp", in: file) }
        if let list = try file.strings("node.advertise") {
            let line = file["node.advertise"]!.line
            advertise = []
            for item in list {
                guard let colon = item.firstIndex(of: ":"), let t = Transport(rawValue: String(item[..<colon])) else {
                    throw ConfigFile.Error(line: line, "advertise entry '\(item)' must start with 'udp:' or 'tcp:'")
                }
                do { advertise.append(TransportAddress(t, try SocketAddress(parsing: item[item.index(after: colon)...]))) }
                catch { throw ConfigFile.Error(line: line, "advertise entry '\(item)': \(error)") }
            }
        }
        if let path = try file.string("node.mesh_key_file") {
            guard !path.isEmpty else { throw ConfigFile.Error(line: file["node.mesh_key_file"]!.line, "mesh_key_file is empty") }
            meshKeyFile = path
        }
        if let list = try file.strings("dht.bootstrap") {
            let line = file["dht.bootstrap"]!.line
            bootstrap = []
            for item in list {
                do { bootstrap.append(try Contact(parsing: item)) }
                catch { throw ConfigFile.Error(line: line, "bootstrap entry '\(item.prefix(24))...': \(error)") }
            }
        }
        if let path = try file.string("dht.peers_file") {
            guard !path.isEmpty else { throw ConfigFile.Error(line: file["dht.peers_file"]!.line, "peers_file is empty") }
            peersFile = path
        }
        if let n = try file.integer("dht.ip_diversity_limit") {
            guard (0...20).contains(n) else { throw ConfigFile.Error(line: file["dht.ip_diversity_limit"]!.line, "ip_diversity_limit must be 0 (off) to 20") }
            ipDiversityLimit = n
        }
        if let n = try file.integer("dht.id_difficulty") {
            guard (0...24).contains(n) else { throw ConfigFile.Error(line: file["dht.id_difficulty"]!.line, "id_difficulty must be 0 to 24") }
            idDifficulty = n
        }
        if let n = try file.integer("dht.disjoint_paths") {
            guard (1...8).contains(n) else { throw ConfigFile.Error(line: file["dht.disjoint_paths"]!.line, "disjoint_paths must be 1 to 8") }
            disjointPaths = n
        }
        try provider.read(file)
        if let list = try file.strings("reputation.friends") {
            for id in list where id.utf8.count != 64 || !id.allSatisfy(\.isHexDigit) {
                throw ConfigFile.Error(line: file["reputation.friends"]!.line, "friends: '\(id)' is not a 64-digit peer ID")
            }
            friends = list.map { $0.lowercased() }
        }
        if let listen = try file.string("explorer.listen"), !listen.isEmpty {
            guard listen.hasPrefix("localhost:") || (try? SocketAddress(parsing: listen)) != nil else {
                throw ConfigFile.Error(line: file["explorer.listen"]!.line, "listen: '\(listen)' is not HOST:PORT with an IP address, e.g. 127.0.0.1:8080")
            }
            explorerListen = listen
        }
        if let p = try file.bool("explorer.public") { explorerPublic = p }
        if let level = try file.string("node.log_level") {
            guard Self.logLevels.contains(level) else {
                throw ConfigFile.Error(line: file["node.log_level"]!.line, "log_level must be one of \(Self.logLevels.joined(separator: ", "))")
            }
            logLevel = level
        }
    }

    private static func address(_ text: String, key: String, in file: ConfigFile) throws(ConfigFile.Error) -> SocketAddress {
        do { return try SocketAddress(parsing: text) }
        catch { throw ConfigFile.Error(line: file[key]!.line, "\(key): \(error)") }
    }

    /// The commented config that `gpumesh init` writes: every setting with its default.
    public static let template = """
    # GPUMesh node configuration.
    # Format: a subset of TOML (tables, "strings", integers, true/false, one-line arrays).
    # Command-line flags override these settings. Unknown settings are an error, to catch typos.

    [node]
    # UDP address for the DHT, gossip and probes. Port 0 picks a free port at start-up.
    listen_udp = "0.0.0.0:\(defaultPort)"

    # TCP address for encrypted channels (job negotiation, transfers).
    listen_tcp = "0.0.0.0:\(defaultPort)"

    # Addresses other peers should use to reach this node, as "udp:HOST:PORT" / "tcp:HOST:PORT".
    # Empty: use the bound addresses (a wildcard bind is advertised as loopback, reachable only
    # from this machine; set this on a real host).
    advertise = []

    # trace, debug, info, notice, warning, error or critical.
    log_level = "info"

    # Join a private mesh: the path of its key file (make one with `gpumesh mesh-key new`).
    # Without it the node joins the public mesh. --mesh-key overrides this.
    # mesh_key_file = "mesh.key"

    [dht]
    # Peers to join through, as contact strings (`gpumesh id` prints a node's). --bootstrap adds more.
    bootstrap = []

    # A file of bootstrap peers, one contact per line (see Bootstrap/peers.example); relative
    # paths are relative to the data directory. --peers-file overrides this.
    # peers_file = "peers.txt"

    # Most routing-table entries per bucket from one IP prefix (/24 for IPv4, /48 for IPv6),
    # against one operator filling a table. 0 turns it off. Unset: 2, or off on loopback.
    # ip_diversity_limit = 2

    # The mesh's ID puzzle (S/Kademlia): peer IDs must hash to this many leading zero bits, so
    # minting IDs in bulk costs work. Every member of a mesh uses the same value; the public mesh
    # uses 0. `gpumesh init --id-difficulty N` makes an identity that meets it.
    id_difficulty = 0

    # Lookups over this many disjoint paths (S/Kademlia): no node is asked by two paths, and reads
    # try each path's closest nodes, so a few lying peers cannot hide a key. 1: plain Kademlia.
    disjoint_paths = 1

    [provider]
    # Publish this host's GPUs to the mesh (same as `gpumesh node --provide`).
    enabled = false

    # Points per GPU-hour asked for a job.
    price = 1.0

    # Jobs run at once.
    slots = 1

    # A free-form hint renters see, e.g. "eu-west" or "home-lab" (at most 32 bytes).
    region = ""

    # Executors to offer; empty: every executor found working on this host.
    executors = []

    # GPUs to declare when detection fails, in the --simulate-gpus form: "2x rtx-4090" or
    # "1x my-gpu:20GiB". Declared GPUs replace detected ones.
    # gpus = "1x rtx-4090"

    # How long the capability record lives in the DHT; it is republished well before then, and a
    # provider that dies disappears from searches within this time.
    record_lifetime_s = 600

    # Seconds between signed heartbeats on the gossip topic `heartbeat` while providing (peers
    # compute a provider's availability from them); 0: none.
    heartbeat_interval_s = 60

    # Job policy: a request outside it is declined with its reason before anything runs.
    # Container images allowed for docker/podman jobs (exact names, or a prefix ending in '*');
    # empty: container jobs are declined.
    images = []

    # Longest time limit accepted, seconds.
    max_duration_s = 3600

    # Most input bytes and output bytes per job, MiB.
    max_input_mib = 4096
    max_output_mib = 4096

    # Most memory per job, MiB; 0: this host's RAM.
    max_memory_mib = 0

    # Renters allowed to run jobs here (64-digit peer IDs), for private meshes; empty: anyone
    # who holds the mesh key.
    allow_renters = []

    # Renters whose reputation (this node's view, 0 to 1; 0.5 for a peer with no history) is
    # below this are declined; 0: no floor.
    min_renter_reputation = 0

    [reputation]
    # Peers whose word counts from the start (64-digit peer IDs), besides this node: their
    # receipts and reports weigh most in the scores this node computes.
    friends = []

    [explorer]
    # Serve the explorer (pages, JSON under /api/, Prometheus /metrics) at HOST:PORT whenever
    # `gpumesh node` runs, as --explorer does; "" serves none.
    listen = ""
    # Allow an address other than loopback (127.0.0.0/8, ::1). The explorer has no login: it
    # shows this node's jobs, logs and ledger to whoever reaches it.
    public = false

    """
}

/// The bootstrap-peers file: one contact string per line; blank lines and lines starting with
/// `#` are ignored; anything after a contact's whitespace is a comment.
public enum BootstrapPeers {
    /// Parses the file's text; a malformed line is an error naming it.
    public static func parse(_ text: String) throws(ConfigFile.Error) -> [Contact] {
        var out: [Contact] = []
        // Any line break counts (in Swift "\r\n" is one Character, so splitting on "\n" would miss it).
        for (i, raw) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let line = raw.drop { $0 == " " || $0 == "\t" }
            guard !line.isEmpty, !line.hasPrefix("#") else { continue }
            let token = line.prefix { $0 != " " && $0 != "\t" && $0 != "\r" }
            do { out.append(try Contact(parsing: token)) }
            catch { throw ConfigFile.Error(line: i + 1, "\(error)") }
        }
        return out
    }
}

/// The `[provider]` table: what a node offers when it provides.
public struct ProviderConfig: Sendable, Equatable {
    /// Provide at start (as `--provide`).
    public var enabled = false
    /// Points per GPU-hour.
    public var price = Price(millipoints: 1000)
    /// Concurrent job slots.
    public var slots = 1
    /// Region hint.
    public var region = ""
    /// Executors offered; empty: every one that works on the host.
    public var executors: [Executor] = []
    /// Declared GPUs (the `--simulate-gpus` form), replacing detection.
    public var gpus: String?
    /// Capability record lifetime, seconds.
    public var recordLifetimeSeconds = 600
    /// Seconds between heartbeats while providing; 0: none.
    public var heartbeatIntervalSeconds = 60
    /// Container images allowed (exact, or a prefix ending in `*`); empty: no container jobs.
    public var images: [String] = []
    /// Longest job time limit accepted, seconds.
    public var maxDurationSeconds = 3_600
    /// Most input bytes per job, MiB.
    public var maxInputMiB = 4_096
    /// Most output bytes per job, MiB.
    public var maxOutputMiB = 4_096
    /// Most memory per job, MiB; 0: the host's RAM.
    public var maxMemoryMiB = 0
    /// Renters allowed (peer IDs, 64 hex digits, lower case); empty: anyone in the mesh.
    public var allowRenters: [String] = []
    /// Renters below this reputation (0 to 1) are declined; 0: no floor.
    public var minRenterReputation = 0.0

    /// The defaults.
    public init() {}

    mutating func read(_ file: ConfigFile) throws(ConfigFile.Error) {
        if let b = try file.bool("provider.enabled") { enabled = b }
        if let p = try file.price("provider.price") { price = p }
        if let n = try file.integer("provider.slots") {
            guard (1...255).contains(n) else { throw ConfigFile.Error(line: file["provider.slots"]!.line, "slots must be 1 to 255") }
            slots = n
        }
        if let r = try file.string("provider.region") {
            guard r.utf8.count <= 32 else { throw ConfigFile.Error(line: file["provider.region"]!.line, "region is at most 32 bytes") }
            region = r
        }
        if let list = try file.strings("provider.executors") {
            executors = []
            for name in list {
                guard let e = Executor(rawValue: name) else {
                    throw ConfigFile.Error(line: file["provider.executors"]!.line,
                                           "unknown executor '\(name)' (one of \(Executor.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                executors.append(e)
            }
        }
        if let g = try file.string("provider.gpus") { gpus = g }
        if let n = try file.integer("provider.record_lifetime_s") {
            guard (10...86_400).contains(n) else {
                throw ConfigFile.Error(line: file["provider.record_lifetime_s"]!.line, "record_lifetime_s must be 10 to 86400")
            }
            recordLifetimeSeconds = n
        }
        if let n = try file.integer("provider.heartbeat_interval_s") {
            guard n == 0 || (5...3_600).contains(n) else {
                throw ConfigFile.Error(line: file["provider.heartbeat_interval_s"]!.line, "heartbeat_interval_s must be 0 (none) or 5 to 3600")
            }
            heartbeatIntervalSeconds = n
        }
        if let list = try file.strings("provider.images") {
            for image in list where image.isEmpty || image.utf8.count > 255 || image.contains(where: \.isWhitespace) {
                throw ConfigFile.Error(line: file["provider.images"]!.line, "image '\(image)' must be 1 to 255 bytes with no spaces")
            }
            images = list
        }
        func bounded(_ key: String, _ range: ClosedRange<Int>) throws(ConfigFile.Error) -> Int? {
            guard let n = try file.integer("provider." + key) else { return nil }
            guard range.contains(n) else {
                throw ConfigFile.Error(line: file["provider." + key]!.line, "\(key) must be \(range.lowerBound) to \(range.upperBound)")
            }
            return n
        }
        if let n = try bounded("max_duration_s", 1...(7 * 86_400)) { maxDurationSeconds = n }
        if let n = try bounded("max_input_mib", 0...(1 << 20)) { maxInputMiB = n }
        if let n = try bounded("max_output_mib", 0...(1 << 20)) { maxOutputMiB = n }
        if let n = try bounded("max_memory_mib", 0...(1 << 24)) { maxMemoryMiB = n }
        if let list = try file.strings("provider.allow_renters") {
            for id in list where id.utf8.count != 64 || !id.allSatisfy(\.isHexDigit) {
                throw ConfigFile.Error(line: file["provider.allow_renters"]!.line, "allow_renters: '\(id)' is not a 64-digit peer ID")
            }
            allowRenters = list.map { $0.lowercased() }
        }
        if let r = try file.number("provider.min_renter_reputation", in: 0...1) { minRenterReputation = r }
    }
}
