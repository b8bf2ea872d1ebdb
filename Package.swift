// swift-tools-version: 6.1
// GPUMesh: a peer-to-peer mesh of GPU providers with no central coordinator.
// Targets follow ../shared/DESIGN.md; dependencies only point down:
// gpumesh -> MeshExplorer -> MeshRuntime -> MeshLedger -> MeshDHT/MeshMarket/MeshGossip/MeshJobs -> MeshCore/MeshCrypto -> CLibUV/CSodium.
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

let package = Package(
    name: "GPUMesh",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "gpumesh", targets: ["gpumesh"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        // The explorer's web stack; no default traits (skips swift-configuration and full Foundation).
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1", traits: []),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.0.0"),
    ],
    targets: [
        // C libraries, each behind one door.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),

        // libsodium behind typed Swift: keys, signatures, hashing, randomness.
        .target(name: "MeshCrypto", dependencies: ["CSodium"], swiftSettings: strict),
        // Pure values: peer IDs, addresses, contact strings, config, JSON.
        .target(name: "MeshCore", dependencies: ["MeshCrypto"], swiftSettings: strict),
        // Kademlia as pure state: routing table and iterative lookups (no sockets, injected time).
        .target(name: "MeshDHT", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strict),
        // Hardware detection (GPUs, CPU, memory, disk) and the GPU catalogue; job executors later.
        .target(name: "MeshJobs", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strict),
        // Capability records, index keys and shards, the query planner, the search and ranking (pure).
        .target(name: "MeshMarket", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strict),
        // Gossip as pure state: sample, push + IHAVE/IWANT repair, validation, rate limits, peer standing.
        .target(name: "MeshGossip", dependencies: ["MeshCore", "MeshCrypto"], swiftSettings: strict),
        // SQLite (GRDB): receipts and reports held, direct experience, reputation, reward points.
        .target(name: "MeshLedger", dependencies: ["MeshCore", "MeshCrypto", "MeshMarket", "MeshGossip", "MeshJobs",
                                                   .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: strict),
        // Deterministic simulation for tests and `gpumesh simulate`: virtual clock, seeded loss and partitions.
        .target(name: "MeshTestKit", dependencies: ["MeshDHT", "MeshGossip", "MeshCore", "MeshCrypto"], swiftSettings: strict),
        // libuv: loop thread, timers, UDP, TCP, pipes, signals; the node and its control socket.
        .target(
            name: "MeshRuntime",
            dependencies: [
                "CLibUV", "MeshCore", "MeshCrypto", "MeshDHT", "MeshGossip", "MeshMarket", "MeshJobs", "MeshLedger",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict),
        // The explorer: web pages, JSON API and Prometheus metrics over one node's own view.
        // The only target that links the web stack (Hummingbird, SwiftNIO).
        .target(
            name: "MeshExplorer",
            dependencies: [
                "MeshRuntime", "MeshCore", "MeshCrypto", "MeshMarket", "MeshGossip", "MeshLedger", "MeshJobs",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
            ],
            swiftSettings: strict),
        // The command-line interface.
        .executableTarget(
            name: "gpumesh",
            dependencies: [
                "MeshRuntime", "MeshCore", "MeshCrypto", "MeshDHT", "MeshGossip", "MeshMarket", "MeshJobs", "MeshTestKit", "MeshLedger", "MeshExplorer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict),

        .testTarget(name: "MeshCryptoTests", dependencies: ["MeshCrypto"], swiftSettings: strict),
        .testTarget(name: "MeshCoreTests", dependencies: ["MeshCore"], swiftSettings: strict),
        .testTarget(name: "MeshJobsTests", dependencies: ["MeshJobs"], resources: [.copy("Fixtures")], swiftSettings: strict),
        .testTarget(name: "MeshGossipTests", dependencies: ["MeshGossip", "MeshCore", "MeshCrypto"], swiftSettings: strict),
        .testTarget(name: "MeshMarketTests", dependencies: ["MeshMarket", "MeshCore", "MeshCrypto", "MeshJobs"], swiftSettings: strict),
        .testTarget(name: "MeshLedgerTests", dependencies: ["MeshLedger", "MeshMarket", "MeshGossip", "MeshCore", "MeshCrypto"], swiftSettings: strict),
        .testTarget(name: "MeshDHTTests", dependencies: ["MeshDHT", "MeshCore", "MeshCrypto", "MeshTestKit"], swiftSettings: strict),
        .testTarget(
            name: "MeshRuntimeTests",
            dependencies: ["MeshRuntime", "MeshCore", "MeshCrypto", "MeshDHT", "MeshGossip", "MeshMarket", "MeshJobs", "MeshLedger",
                           .product(name: "InMemoryLogging", package: "swift-log")],
            swiftSettings: strict),
        .testTarget(
            name: "MeshExplorerTests",
            dependencies: ["MeshExplorer", "MeshRuntime", "MeshCore", "MeshCrypto", "MeshMarket", "MeshLedger", "MeshJobs"],
            swiftSettings: strict),
        .testTarget(name: "GPUMeshCLITests", dependencies: ["MeshCore", "MeshCrypto", "MeshRuntime"], swiftSettings: strict),
    ]
)
