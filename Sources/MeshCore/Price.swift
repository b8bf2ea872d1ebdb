// Values of the market that config files and records share.

/// A price in points per GPU-hour, held exactly in thousandths of a point.
public struct Price: Sendable, Hashable, Comparable, Codable, CustomStringConvertible {
    /// Thousandths of a point per GPU-hour.
    public var millipoints: UInt32

    /// A price of `millipoints` thousandths of a point per GPU-hour.
    public init(millipoints: UInt32) { self.millipoints = millipoints }

    /// Parses a decimal such as `1.5` or `0.125` (at most three decimals, at most 4,294,967.295).
    public init?(parsing text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), !parts[0].isEmpty, parts[0].allSatisfy(\.isASCII), let whole = UInt64(parts[0]) else { return nil }
        var fraction: UInt64 = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard (1...3).contains(digits.count), digits.allSatisfy({ $0.isASCII && $0.isNumber }), let f = UInt64(digits) else { return nil }
            fraction = f * [1, 100, 10, 1][digits.count]
        }
        let total = whole * 1000 + fraction
        guard total <= UInt64(UInt32.max) else { return nil }
        millipoints = UInt32(total)
    }

    /// Orders by amount.
    public static func < (a: Price, b: Price) -> Bool { a.millipoints < b.millipoints }

    /// The shortest decimal: "1.5", "2", "0.125".
    public var description: String {
        let whole = millipoints / 1000, fraction = millipoints % 1000
        guard fraction > 0 else { return "\(whole)" }
        var digits = String(fraction)
        digits = String(repeating: "0", count: 3 - digits.count) + digits
        while digits.hasSuffix("0") { digits.removeLast() }
        return "\(whole).\(digits)"
    }

    /// The price as a number of points (for JSON and display).
    public var points: Double { Double(millipoints) / 1000 }

    /// Encodes as a JSON number of points.
    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(points)
    }

    /// Decodes a JSON number of points.
    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        let v = try c.decode(Double.self)
        guard v >= 0, v * 1000 <= Double(UInt32.max) else {
            throw DecodingError.dataCorruptedError(in: c, debugDescription: "a price is 0 to 4294967.295 points")
        }
        millipoints = UInt32((v * 1000).rounded())
    }
}

/// How a provider runs jobs.
public enum Executor: String, Sendable, CaseIterable, Codable, Comparable {
    /// bubblewrap: a fresh work directory, read-only system, no network.
    case sandbox
    /// Docker with `--network none`.
    case docker
    /// Podman with `--network none`.
    case podman

    /// The executor's bit in the capability record's bitmask.
    public var bit: UInt8 {
        switch self {
        case .sandbox: 1
        case .docker: 2
        case .podman: 4
        }
    }

    /// Executors in declaration order.
    public static func < (a: Executor, b: Executor) -> Bool { a.bit < b.bit }
}

