/// Sizes as people write them: `24GiB`, `512MiB`, `80GB`, `1.5TiB`, plain bytes.
public enum ByteSize {
    /// The size in bytes; nil if malformed, negative, or beyond 2^64.
    public static func parse(_ text: String) -> UInt64? {
        let t = String(text.trimmingWhitespace())
        let units: [(String, Double)] = [("TiB", 1_099_511_627_776), ("GiB", 1_073_741_824), ("MiB", 1_048_576), ("KiB", 1024),
                                          ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1)]
        for (suffix, factor) in units where t.hasSuffix(suffix) {
            guard let n = Double(t.dropLast(suffix.count).trimmingWhitespace()), n >= 0, n.isFinite, n * factor < 1.8e19 else { return nil }
            return UInt64((n * factor).rounded())
        }
        guard let n = UInt64(t) else { return nil }
        return n
    }
}

/// Durations as people write them: `90s`, `10m`, `2h`, `1d`, `1h30m`, plain seconds.
public enum DurationText {
    /// The duration in whole seconds; nil if malformed, zero-length text, or beyond a year.
    public static func seconds(_ text: String) -> Int? {
        let t = String(text.trimmingWhitespace())
        if let n = Int(t) { return n >= 0 && n <= 366 * 86_400 ? n : nil }
        var total = 0, number = 0, digits = 0
        for ch in t {
            if let d = ch.wholeNumberValue, ch.isASCII {
                number = number * 10 + d
                digits += 1
                guard digits <= 9 else { return nil }
                continue
            }
            let unit: Int
            switch ch {
            case "s": unit = 1
            case "m": unit = 60
            case "h": unit = 3_600
            case "d": unit = 86_400
            default: return nil
            }
            guard digits > 0 else { return nil }
            total += number * unit
            number = 0
            digits = 0
        }
        guard digits == 0, !t.isEmpty, total <= 366 * 86_400 else { return nil }
        return total
    }
}
