/// Known GPU models: a normalised slug per model, its vendor, memory and peak throughput, so that
/// "NVIDIA GeForce RTX 4090" and "RTX 4090" both become `rtx-4090`, and the ledger can weigh a
/// GPU-second by what the GPU can do.
public struct GPUModel: Sendable, Equatable, Codable {
    /// The normalised name, e.g. `rtx-4090`, `a100-80gb`.
    public var slug: String
    /// `nvidia`, `amd`, or another vendor's lowercase name.
    public var vendor: String
    /// Memory per GPU in GiB, as sold.
    public var vramGiB: Double
    /// Peak FP32 throughput, TFLOPS.
    public var fp32TFLOPS: Double
    /// Peak dense FP16 tensor throughput, TFLOPS.
    public var fp16TFLOPS: Double
    /// CUDA compute capability ("8.9"), NVIDIA only.
    public var computeCapability: String?

    enum CodingKeys: String, CodingKey {
        case slug, vendor, vramGiB = "vram_gib", fp32TFLOPS = "fp32_tflops", fp16TFLOPS = "fp16_tflops", computeCapability = "compute_capability"
    }
}

/// The catalogue of known models (`GPUCatalogueData.table`) and the name normaliser.
public enum GPUCatalogue {
    /// Every known model, in the data file's order.
    public static let models: [GPUModel] = parse(GPUCatalogueData.table)

    private static let bySlug: [String: GPUModel] = Dictionary(models.map { ($0.slug, $0) }, uniquingKeysWith: { a, _ in a })

    /// The model with `slug`, if known.
    public static func model(_ slug: String) -> GPUModel? { bySlug[slug] }

    /// Parses the data table: one model a line, `slug vendor vram_gib fp32 fp16 cc`, `#` comments.
    static func parse(_ text: String) -> [GPUModel] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard let first = fields.first, !first.hasPrefix("#"), fields.count == 6,
                  let vram = Double(fields[2]), let fp32 = Double(fields[3]), let fp16 = Double(fields[4]) else { return nil }
            return GPUModel(slug: String(fields[0]), vendor: String(fields[1]), vramGiB: vram, fp32TFLOPS: fp32, fp16TFLOPS: fp16,
                            computeCapability: fields[5] == "-" ? nil : String(fields[5]))
        }
    }

    /// Words that name a vendor, a product line or a form factor rather than the model.
    static let noise: Set<String> = ["nvidia", "geforce", "tesla", "quadro", "amd", "radeon", "instinct", "tm", "graphics",
                                     "sxm", "sxm2", "sxm4", "sxm5", "pcie", "hbm2", "hbm2e", "hbm3", "hbm3e", "nvl", "oam"]

    /// The slug for a model name as a driver reports it. `memoryMiB`, when known, picks the
    /// memory variant (`a100` with 81,920 MiB is `a100-80gb`). Unknown models get a slug made
    /// the same way, which still works everywhere (it just has no catalogue figures).
    public static func slug(for name: String, memoryMiB: Int? = nil) -> String {
        var tokens: [String] = []
        var current = ""
        for ch in name.lowercased() {
            if ch.isLetter || ch.isNumber { current.append(ch) } else if !current.isEmpty { tokens.append(current); current = "" }
        }
        if !current.isEmpty { tokens.append(current) }
        tokens = tokens.filter { !noise.contains($0) }
        // "80gb" and "80" "gb" both mean memory; keep it as one "80gb" token.
        var merged: [String] = []
        for t in tokens {
            if t == "gb", let last = merged.last, Int(last) != nil { merged[merged.count - 1] = last + "gb" } else { merged.append(t) }
        }
        let base = merged.filter { !$0.hasSuffix("gb") || Int($0.dropLast(2)) == nil }.joined(separator: "-")
        let sized = merged.first { $0.hasSuffix("gb") && Int($0.dropLast(2)) != nil }.map { base + "-" + $0 }
        if let sized, bySlug[sized] != nil { return sized }
        if bySlug[base] != nil { return base }
        if let memoryMiB {
            // The memory variant whose size is within 10% of what the driver reports.
            let gib = Double(memoryMiB) / 1024
            if let variant = models.first(where: { $0.slug.hasPrefix(base + "-") && $0.slug.hasSuffix("gb") && abs($0.vramGiB - gib) <= $0.vramGiB * 0.1 }) {
                return variant.slug
            }
        }
        return sized ?? (base.isEmpty ? "unknown" : base)
    }
}
