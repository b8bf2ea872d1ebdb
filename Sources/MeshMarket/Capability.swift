import MeshCore
import MeshCrypto

/// A CUDA compute capability such as 8.9.
public struct ComputeCapability: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// The major version (8 for 8.9).
    public var major: Int
    /// The minor version (9 for 8.9).
    public var minor: Int

    /// A capability from its parts (each 0 to 254).
    public init(major: Int, minor: Int) {
        self.major = major
        self.minor = minor
    }

    /// Parses "8.9" or "9"; nil if malformed or out of range.
    public init?(parsing text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let major = Int(parts[0]), (0...254).contains(major) else { return nil }
        let minor = parts.count == 2 ? Int(parts[1]) : 0
        guard let minor, (0...254).contains(minor) else { return nil }
        self.init(major: major, minor: minor)
    }

    /// Orders by major, then minor.
    public static func < (a: ComputeCapability, b: ComputeCapability) -> Bool { (a.major, a.minor) < (b.major, b.minor) }

    /// "8.9".
    public var description: String { "\(major).\(minor)" }

    /// Encodes as "8.9".
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }

    /// Decodes "8.9".
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        guard let v = ComputeCapability(parsing: try c.decode(String.self)) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a compute capability such as 8.9")
        }
        self = v
    }
}

/// GPUs of one model on a provider.
public struct GPUGroup: Sendable, Hashable, Codable {
    /// `nvidia`, `amd`, ... (lowercase).
    public var vendor: String
    /// The normalised model (`rtx-4090`).
    public var slug: String
    /// Memory per GPU, MiB (the catalogue's nominal size where the model is known).
    public var vramMiB: Int
    /// How many.
    public var count: Int
    /// CUDA compute capability, NVIDIA only.
    public var computeCapability: ComputeCapability?

    /// A group of `count` GPUs.
    public init(vendor: String, slug: String, vramMiB: Int, count: Int, computeCapability: ComputeCapability? = nil) {
        self.vendor = vendor
        self.slug = slug
        self.vramMiB = vramMiB
        self.count = count
        self.computeCapability = computeCapability
    }

    enum CodingKeys: String, CodingKey {
        case vendor, slug = "model", vramMiB = "vram_mib", count, computeCapability = "compute_capability"
    }
}

/// What a provider offers: the body of its signed capability record.
public struct Capability: Sendable, Equatable {
    /// How to reach the provider (its key is the record's signer).
    public var contact: Contact
    /// Its GPUs, grouped by model.
    public var gpus: [GPUGroup]
    /// CPU model name.
    public var cpuModel: String
    /// Logical CPU cores.
    public var cpuCores: Int
    /// Memory, MiB.
    public var ramMiB: Int
    /// Free disk for jobs, MiB.
    public var diskFreeMiB: Int
    /// The executors that work on this host.
    public var executors: [Executor]
    /// Points per GPU-hour.
    public var price: Price
    /// Job slots free now.
    public var freeSlots: Int
    /// Job slots in all.
    public var totalSlots: Int
    /// A free-form region hint ("eu-west", "home-lab"), may be empty.
    public var region: String
    /// True for a tombstone: the provider has withdrawn its offer.
    public var withdrawn: Bool

    /// A capability; executors are kept sorted and unique.
    public init(contact: Contact, gpus: [GPUGroup], cpuModel: String, cpuCores: Int, ramMiB: Int, diskFreeMiB: Int,
                executors: [Executor], price: Price, freeSlots: Int, totalSlots: Int, region: String = "", withdrawn: Bool = false) {
        self.contact = contact
        self.gpus = gpus
        self.cpuModel = cpuModel
        self.cpuCores = cpuCores
        self.ramMiB = ramMiB
        self.diskFreeMiB = diskFreeMiB
        self.executors = Array(Set(executors)).sorted()
        self.price = price
        self.freeSlots = freeSlots
        self.totalSlots = totalSlots
        self.region = region
        self.withdrawn = withdrawn
    }

    /// Body format version.
    public static let bodyVersion: UInt8 = 1
    /// Most GPU groups in one record.
    public static let maxGPUGroups = 16
    /// Most GPUs in one group.
    public static let maxGPUsPerGroup = 64
    /// Longest slug, vendor and region (bytes).
    public static let maxSlugBytes = 48, maxVendorBytes = 16, maxRegionBytes = 32, maxCPUModelBytes = 96

    /// All GPUs.
    public var totalGPUs: Int { gpus.reduce(0) { $0 + $1.count } }

    /// The same offer as a tombstone.
    public var asWithdrawn: Capability {
        var c = self
        c.withdrawn = true
        return c
    }

    /// The first problem that makes this capability unpublishable, or nil.
    public var problem: String? {
        if gpus.count > Self.maxGPUGroups { return "\(gpus.count) GPU groups; the limit is \(Self.maxGPUGroups)" }
        for g in gpus {
            if !Self.isName(g.slug, max: Self.maxSlugBytes) { return "GPU model '\(g.slug)' is not a slug (a-z, 0-9, '-', at most \(Self.maxSlugBytes))" }
            if !Self.isName(g.vendor, max: Self.maxVendorBytes) { return "GPU vendor '\(g.vendor)' is not a slug (a-z, 0-9, '-', at most \(Self.maxVendorBytes))" }
            if !(1...Self.maxGPUsPerGroup).contains(g.count) { return "GPU count \(g.count) for \(g.slug) is not 1 to \(Self.maxGPUsPerGroup)" }
            if g.vramMiB <= 0 || g.vramMiB > Int(UInt32.max) { return "VRAM \(g.vramMiB) MiB for \(g.slug) is out of range" }
        }
        if !(0...255).contains(totalSlots) || !(0...totalSlots).contains(freeSlots) { return "free slots \(freeSlots) of \(totalSlots) is impossible" }
        if !(0...65535).contains(cpuCores) { return "cpu cores \(cpuCores) is out of range" }
        if !(0...Int(UInt32.max)).contains(ramMiB) || !(0...Int(UInt32.max)).contains(diskFreeMiB) { return "memory or disk is out of range" }
        if region.utf8.count > Self.maxRegionBytes { return "region is longer than \(Self.maxRegionBytes) bytes" }
        if cpuModel.utf8.count > Self.maxCPUModelBytes { return "the CPU model name is longer than \(Self.maxCPUModelBytes) bytes" }
        if contact.address(for: .udp) == nil { return "the contact has no UDP address" }
        return nil
    }

    /// True for a lowercase slug: `a-z`, `0-9`, `-`, 1 to `max` bytes.
    public static func isName(_ s: String, max: Int) -> Bool {
        !s.isEmpty && s.utf8.count <= max && s.utf8.allSatisfy { ($0 >= 97 && $0 <= 122) || ($0 >= 48 && $0 <= 57) || $0 == 45 }
    }

    /// The binary body (see `Docs/PROTOCOL.md`, "Capability records").
    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 256)
        w.u8(Self.bodyVersion)
        w.u8(withdrawn ? 1 : 0)
        _ = contact.encodeCompact(into: &w)
        w.u32(price.millipoints)
        w.u8(UInt8(clamping: freeSlots))
        w.u8(UInt8(clamping: totalSlots))
        w.u8(executors.reduce(0) { $0 | $1.bit })
        w.string8(region)
        w.string8(cpuModel)
        w.u16(UInt16(clamping: cpuCores))
        w.u32(UInt32(clamping: ramMiB))
        w.u32(UInt32(clamping: diskFreeMiB))
        w.u8(UInt8(clamping: gpus.count))
        for g in gpus {
            w.string8(g.vendor)
            w.string8(g.slug)
            w.u32(UInt32(clamping: g.vramMiB))
            w.u8(UInt8(clamping: g.count))
            w.u8(UInt8(clamping: g.computeCapability?.major ?? 255))
            w.u8(UInt8(clamping: g.computeCapability?.minor ?? 255))
        }
        return w.bytes
    }

    /// Reads a body from untrusted bytes; nil if malformed or if it breaks a limit.
    public init?(decoding bytes: [UInt8]) {
        var r = WireReader(bytes)
        guard r.u8() == Self.bodyVersion, let flags = r.u8(), flags & ~1 == 0, let contact = Contact(compact: &r),
              let price = r.u32(), let free = r.u8(), let total = r.u8(), let bits = r.u8(),
              let region = r.string8(), let cpu = r.string8(), let cores = r.u16(), let ram = r.u32(), let disk = r.u32(),
              let groups = r.u8() else { return nil }
        var gpus: [GPUGroup] = []
        for _ in 0..<groups {
            guard let vendor = r.string8(), let slug = r.string8(), let vram = r.u32(), let count = r.u8(),
                  let major = r.u8(), let minor = r.u8() else { return nil }
            let cc: ComputeCapability? = major == 255 ? nil : ComputeCapability(major: Int(major), minor: Int(minor == 255 ? 0 : minor))
            gpus.append(GPUGroup(vendor: vendor, slug: slug, vramMiB: Int(vram), count: Int(count), computeCapability: cc))
        }
        guard r.isAtEnd else { return nil }
        let executors = Executor.allCases.filter { bits & $0.bit != 0 }
        self.init(contact: contact, gpus: gpus, cpuModel: cpu, cpuCores: Int(cores), ramMiB: Int(ram), diskFreeMiB: Int(disk),
                  executors: executors, price: Price(millipoints: price), freeSlots: Int(free), totalSlots: Int(total),
                  region: region, withdrawn: flags & 1 != 0)
        guard problem == nil else { return nil }
    }
}

/// A provider's signed capability record: a `SignedEnvelope` (domain `gpumesh/capability/v1`)
/// whose body is a `Capability`, stored as the value of DHT records under its index keys.
public struct CapabilityRecord: Sendable, Equatable {
    /// Signature domain.
    public static let domain = "gpumesh/capability/v1"
    /// The most bytes a record may take (the DHT's value limit).
    public static let maxBytes = 1000

    /// The signed bytes and their header.
    public let envelope: SignedEnvelope
    /// What the provider offers.
    public let capability: Capability

    /// The provider's key (the signer).
    public var provider: PublicKey { envelope.signer }
    /// Higher replaces lower.
    public var sequence: UInt64 { envelope.sequence }
    /// Unix milliseconds after which the record is void.
    public var expiresAt: UInt64 { envelope.expiresAt }
    /// The exact bytes.
    public var encoded: [UInt8] { envelope.encoded }

    /// Why a record is refused.
    public enum Refusal: String, Error, Sendable, CaseIterable, CustomStringConvertible {
        /// Not a well-formed envelope or body.
        case malformed
        /// Longer than `maxBytes`.
        case oversized
        /// The signature does not verify.
        case badSignature
        /// Signed by a key other than the contact's.
        case wrongKey = "wrong_key"
        /// Past its expiry.
        case expired
        /// Expires further ahead than allowed.
        case expiryTooFar = "expiry_too_far"
        /// Found under an index key it does not belong to.
        case misplaced

        /// Words for people.
        public var description: String {
            switch self {
            case .malformed: "malformed record"
            case .oversized: "record over \(CapabilityRecord.maxBytes) bytes"
            case .badSignature: "bad signature"
            case .wrongKey: "signed by a key other than the contact's"
            case .expired: "expired"
            case .expiryTooFar: "expiry too far ahead"
            case .misplaced: "stored under an index key it does not belong to"
            }
        }
    }

    /// A signing failure: the capability breaks a limit, or the signer is not the contact.
    public struct SigningError: Error, Equatable, CustomStringConvertible {
        /// What is wrong.
        public var message: String
        /// The message.
        public var description: String { message }
    }

    /// Signs `capability` with the provider's key.
    public static func sign(_ capability: Capability, sequence: UInt64, expiresAt: UInt64, by signer: SigningKey) throws(SigningError) -> CapabilityRecord {
        if let problem = capability.problem { throw SigningError(message: problem) }
        guard capability.contact.publicKey == signer.publicKey else {
            throw SigningError(message: "the contact's key is not the signer's")
        }
        let envelope = SignedEnvelope.sign(domain: domain, body: capability.encode(), sequence: sequence, expiresAt: expiresAt, by: signer)
        guard envelope.encoded.count <= maxBytes else {
            throw SigningError(message: "the record is \(envelope.encoded.count) bytes; the limit is \(maxBytes) (fewer GPU groups or a shorter CPU name)")
        }
        return CapabilityRecord(envelope: envelope, capability: capability)
    }

    private init(envelope: SignedEnvelope, capability: Capability) {
        self.envelope = envelope
        self.capability = capability
    }

    /// Verifies untrusted bytes: size, structure, expiry (not past `now`, at most `maxLifetime`
    /// ahead), the contact's key, and the signature last (the costly check).
    public static func verify(_ bytes: [UInt8], now: UInt64, maxLifetime: UInt64) -> Result<CapabilityRecord, Refusal> {
        guard bytes.count <= maxBytes else { return .failure(.oversized) }
        guard let envelope = SignedEnvelope(decoding: bytes), let capability = Capability(decoding: envelope.body) else {
            return .failure(.malformed)
        }
        if envelope.expiresAt <= now { return .failure(.expired) }
        if envelope.expiresAt - now > maxLifetime { return .failure(.expiryTooFar) }
        if capability.contact.publicKey != envelope.signer { return .failure(.wrongKey) }
        if !envelope.isSignatureValid(domain: domain) { return .failure(.badSignature) }
        return .success(CapabilityRecord(envelope: envelope, capability: capability))
    }
}
