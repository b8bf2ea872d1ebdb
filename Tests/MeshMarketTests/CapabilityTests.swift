import MeshCore
import MeshCrypto
@testable import MeshMarket
import Testing

/// A provider identity and a capability it could publish.
struct Provider {
    let key = SigningKey()
    var capability: Capability

    init(port: UInt16 = 7400, gpus: [GPUGroup] = [GPUGroup(vendor: "nvidia", slug: "rtx-4090", vramMiB: 24_576, count: 2,
                                                          computeCapability: ComputeCapability(major: 8, minor: 9))],
         price: String = "1.5", freeSlots: Int = 1, executors: [Executor] = [.sandbox]) {
        let contact = Contact.fromEndpoint(publicKey: key.publicKey, udp: SocketAddress(ip: .v4(127, 0, 0, 1), port: port), tcpPort: port)!
        capability = Capability(contact: contact, gpus: gpus, cpuModel: "AMD EPYC 7763 64-Core Processor", cpuCores: 16, ramMiB: 131_072,
                                diskFreeMiB: 500_000, executors: executors, price: Price(parsing: price)!, freeSlots: freeSlots,
                                totalSlots: max(1, freeSlots), region: "eu-west")
    }

    func record(sequence: UInt64 = 1, expiresAt: UInt64 = 10_000, withdrawn: Bool = false) throws -> CapabilityRecord {
        try CapabilityRecord.sign(withdrawn ? capability.asWithdrawn : capability, sequence: sequence, expiresAt: expiresAt, by: key)
    }
}

@Suite("Capability records")
struct CapabilityRecordTests {
    @Test("prices are exact decimals: parsing, printing, order; malformed ones are refused")
    func prices() {
        #expect(Price(parsing: "1.5")?.millipoints == 1500)
        #expect(Price(parsing: "0.125")?.millipoints == 125)
        #expect(Price(parsing: "2")?.description == "2")
        #expect(Price(parsing: "2.50")?.description == "2.5")
        #expect(Price(parsing: "0.05")?.description == "0.05")
        for bad in ["", "-1", "1.2345", "abc", "1.", ".5", "1e3", "4294968", "١"] { #expect(Price(parsing: bad) == nil, "\(bad)") }
        #expect(Price(parsing: "0.9")! < Price(parsing: "1")!)
        #expect(ComputeCapability(parsing: "8.9") == ComputeCapability(major: 8, minor: 9))
        #expect(ComputeCapability(parsing: "9") == ComputeCapability(major: 9, minor: 0))
        #expect(ComputeCapability(parsing: "8.x") == nil)
        #expect(ComputeCapability(major: 8, minor: 9) < ComputeCapability(major: 9, minor: 0))
    }

    @Test("a capability survives its binary body byte for byte; trailing or unknown bits are malformed")
    func bodyRoundTrip() throws {
        var p = Provider(gpus: [GPUGroup(vendor: "nvidia", slug: "a100-80gb", vramMiB: 81_920, count: 4, computeCapability: ComputeCapability(major: 8, minor: 0)),
                                GPUGroup(vendor: "amd", slug: "mi300x", vramMiB: 196_608, count: 1)],
                         executors: [.podman, .sandbox, .sandbox])
        p.capability.region = "home-lab"
        let body = p.capability.encode()
        let back = try #require(Capability(decoding: body))
        #expect(back == p.capability)
        #expect(back.executors == [.sandbox, .podman])
        #expect(back.totalGPUs == 5)
        #expect(Capability(decoding: body + [0]) == nil)
        var flags = body
        flags[1] = 2
        #expect(Capability(decoding: flags) == nil)
        for cut in [0, 1, 10, body.count - 1] { #expect(Capability(decoding: Array(body.prefix(cut))) == nil) }
    }

    @Test("a signed record verifies; every refusal has its reason")
    func refusals() throws {
        let p = Provider()
        let record = try p.record(sequence: 5, expiresAt: 10_000)
        let ok = try CapabilityRecord.verify(record.encoded, now: 1_000, maxLifetime: 86_400_000).get()
        #expect(ok.capability == p.capability)
        #expect(ok.sequence == 5)
        #expect(ok.provider == p.key.publicKey)

        func refusal(_ bytes: [UInt8], now: UInt64 = 1_000, maxLifetime: UInt64 = 86_400_000) -> CapabilityRecord.Refusal? {
            if case .failure(let why) = CapabilityRecord.verify(bytes, now: now, maxLifetime: maxLifetime) { return why }
            return nil
        }
        // Bad signature: any bit of the signature or of the signed bytes.
        var sig = record.encoded
        sig[sig.count - 1] ^= 1
        #expect(refusal(sig) == .badSignature)
        var price = record.encoded
        let at = 1 + 32 + 8 + 8 + 2 + 2 + 41  // envelope header, body version and flags, compact contact
        price[at + 3] ^= 1                     // the low byte of the price
        #expect(refusal(price) == .badSignature)
        // Expired, and too far ahead.
        #expect(refusal(record.encoded, now: 10_000) == .expired)
        #expect(refusal(record.encoded, now: 1_000, maxLifetime: 5_000) == .expiryTooFar)
        // Wrong key: a valid signature by someone who is not the contact.
        let mallory = SigningKey()
        let forged = SignedEnvelope.sign(domain: CapabilityRecord.domain, body: p.capability.encode(), sequence: 6, expiresAt: 10_000, by: mallory)
        #expect(refusal(forged.encoded) == .wrongKey)
        #expect(throws: CapabilityRecord.SigningError.self) { try CapabilityRecord.sign(p.capability, sequence: 1, expiresAt: 2, by: mallory) }
        // A signature made for another kind of statement does not carry over.
        let otherDomain = SignedEnvelope.sign(domain: "gpumesh/receipt/v1", body: p.capability.encode(), sequence: 6, expiresAt: 10_000, by: p.key)
        #expect(refusal(otherDomain.encoded) == .badSignature)
        // Malformed and oversized.
        #expect(refusal(Array(record.encoded.dropLast())) == .malformed)
        #expect(refusal([UInt8](repeating: 1, count: 1001)) == .oversized)
        #expect(refusal(record.encoded + [UInt8](repeating: 0, count: 1000 - record.encoded.count)) == .malformed)
    }

    @Test("a capability too large for one DHT value, or breaking a limit, cannot be signed")
    func signingLimits() {
        let groups = (0..<16).map { GPUGroup(vendor: "nvidia-corporation", slug: "model-\($0)-" + String(repeating: "x", count: 38), vramMiB: 1024, count: 1) }
        let big = Provider(gpus: groups)
        #expect(throws: CapabilityRecord.SigningError.self) { try big.record() }
        #expect(big.capability.problem?.contains("vendor") == true)
        var huge = Provider(gpus: groups.map { var g = $0; g.vendor = "v"; return g })
        #expect(huge.capability.problem == nil)
        #expect {
            try huge.record()
        } throws: { ($0 as? CapabilityRecord.SigningError)?.message.contains("limit is 1000") == true }
        huge.capability.freeSlots = 3
        #expect(huge.capability.problem?.contains("free slots") == true)
        let none = Provider(gpus: [GPUGroup(vendor: "nvidia", slug: "RTX 4090", vramMiB: 1, count: 1)])
        #expect(none.capability.problem?.contains("not a slug") == true)
    }
}

@Suite("Capability index")
struct CapabilityIndexTests {
    @Test("a record is indexed under any, its vendors, models, VRAM tiers and CC majors")
    func keys() {
        let p = Provider(gpus: [GPUGroup(vendor: "nvidia", slug: "rtx-4090", vramMiB: 24_576, count: 2, computeCapability: ComputeCapability(major: 8, minor: 9)),
                                GPUGroup(vendor: "nvidia", slug: "h100-80gb", vramMiB: 81_559, count: 1, computeCapability: ComputeCapability(major: 9, minor: 0)),
                                GPUGroup(vendor: "amd", slug: "mi300x", vramMiB: 196_608, count: 1)])
        #expect(CapabilityIndex.keys(for: p.capability).map(\.description) ==
                ["any", "cc/8", "cc/9", "model/h100-80gb", "model/mi300x", "model/rtx-4090", "vendor/amd", "vendor/nvidia",
                 "vram/192", "vram/24", "vram/64"])
        #expect(CapabilityIndex.tier(vramMiB: 24_564) == 16)  // a driver's 23.99 GiB is below the 24 GiB tier
        #expect(CapabilityIndex.tier(vramMiB: 4096) == 0)
        #expect(CapabilityIndex.tiers(atLeast: 24 * 1024) == [24, 32, 40, 48, 64, 80, 96, 128, 192])
        let names = CapabilityIndex.names(for: p.capability, provider: p.key.publicKey)
        let shard = CapabilityIndex.shard(of: p.key.publicKey)
        #expect(names.count == 11)
        #expect(names.allSatisfy { $0.hasSuffix("#\(shard)") && $0.hasPrefix("gpumesh/capability/v1/") })
    }

    @Test("providers spread over every shard, evenly enough")
    func shards() {
        var counts = [Int](repeating: 0, count: CapabilityIndex.defaultShards)
        for _ in 0..<3200 { counts[CapabilityIndex.shard(of: SigningKey().publicKey)] += 1 }
        #expect(counts.allSatisfy { $0 > 40 && $0 < 170 }, "\(counts)")
        let key = SigningKey().publicKey
        #expect(CapabilityIndex.shard(of: key) == CapabilityIndex.shard(of: key))
        #expect(CapabilityIndex.shard(of: key, shards: 1) == 0)
    }

    @Test("a record belongs only under its own keys in its own shard; a tombstone under any key of its shard")
    func placement() throws {
        let p = Provider()
        let s = CapabilityIndex.shard(of: p.key.publicKey)
        let record = try p.record()
        #expect(CapabilityIndex.belongs(record, under: IndexKey(.model, "rtx-4090"), shard: s))
        #expect(!CapabilityIndex.belongs(record, under: IndexKey(.model, "a100-80gb"), shard: s))
        #expect(!CapabilityIndex.belongs(record, under: IndexKey(.model, "rtx-4090"), shard: (s + 1) % 32))
        let tombstone = try p.record(sequence: 2, withdrawn: true)
        #expect(CapabilityIndex.belongs(tombstone, under: IndexKey(.model, "a100-80gb"), shard: s))
        #expect(!CapabilityIndex.belongs(tombstone, under: IndexKey(.any), shard: (s + 1) % 32))
    }
}

@Suite("Capability announcements")
struct AnnouncementTests {
    @Test("an announcement verifies only as its provider's own record; the view keeps the newest, forgets withdrawn and expired ones")
    func announcements() throws {
        let p = Provider()
        let record = try p.record(sequence: 5, expiresAt: 10_000)
        let payload = CapabilityAnnouncement.encode(record)
        #expect(try CapabilityAnnouncement.verify(payload, origin: p.key.publicKey, now: 1_000, maxLifetime: 100_000).get() == record)
        #expect(CapabilityAnnouncement.verify(payload, origin: SigningKey().publicKey, now: 1_000, maxLifetime: 100_000) == .failure(.wrongKey))
        #expect(CapabilityAnnouncement.verify([2] + record.encoded, origin: p.key.publicKey, now: 1_000, maxLifetime: 100_000) == .failure(.malformed))
        var forged = payload; forged[forged.count - 1] ^= 1
        #expect(CapabilityAnnouncement.verify(forged, origin: p.key.publicKey, now: 1_000, maxLifetime: 100_000) == .failure(.badSignature))
        #expect(CapabilityAnnouncement.verify(payload, origin: p.key.publicKey, now: 10_000, maxLifetime: 100_000) == .failure(.expired))

        var view = CapacityView(capacity: 2)
        #expect(view.apply(record, now: 1_000) == .added)
        #expect(view.apply(record, now: 1_000) == .stale)
        var cheaper = p
        cheaper.capability.price = Price(parsing: "0.5")!
        let update = try cheaper.record(sequence: 6, expiresAt: 12_000)
        #expect(view.apply(update, now: 1_000) == .updated)
        #expect(view.offers(now: 1_000).map(\.capability.price) == [Price(parsing: "0.5")!])
        #expect(view.apply(try p.record(sequence: 7, expiresAt: 12_000, withdrawn: true), now: 1_000) == .withdrawn)
        #expect(view.offers(now: 1_000).isEmpty)
        // A live record older than the withdrawal, arriving late, does not bring it back.
        #expect(view.apply(update, now: 1_000) == .stale)
        #expect(view.apply(try p.record(sequence: 8, expiresAt: 12_000), now: 1_000) == .added)
        // Expired records vanish; the bound evicts the record expiring soonest.
        let q = Provider(port: 7401), r = Provider(port: 7402)
        #expect(view.apply(try q.record(sequence: 1, expiresAt: 5_000), now: 1_000) == .added)
        #expect(view.offers(now: 6_000).map(\.provider) == [p.key.publicKey])
        #expect(view.apply(try r.record(sequence: 1, expiresAt: 20_000), now: 2_000) == .added)
        #expect(view.count == 2 && Set(view.offers(now: 2_000).map(\.provider)) == [p.key.publicKey, r.key.publicKey])
    }
}
