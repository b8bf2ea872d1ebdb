/// Splits a byte stream into newline-terminated lines, refusing lines over a size limit.
struct LineBuffer {
    let maxLineBytes: Int
    private var pending: [UInt8] = []

    init(maxLineBytes: Int) { self.maxLineBytes = maxLineBytes }

    enum Outcome {
        /// Complete lines (without their newline); the rest is kept for the next call.
        case lines([[UInt8]])
        /// A line grew past the limit; the stream should be abandoned.
        case overflow
    }

    mutating func append(_ bytes: UnsafeRawBufferPointer) -> Outcome {
        var lines: [[UInt8]] = []
        var start = 0
        for (i, b) in bytes.enumerated() where b == 10 {
            if pending.isEmpty {
                lines.append(Array(bytes[start..<i]))
            } else {
                pending.append(contentsOf: bytes[start..<i])
                lines.append(pending)
                pending.removeAll(keepingCapacity: true)
            }
            start = i + 1
        }
        pending.append(contentsOf: bytes[start...])
        if pending.count > maxLineBytes || lines.contains(where: { $0.count > maxLineBytes }) { return .overflow }
        return .lines(lines)
    }
}
