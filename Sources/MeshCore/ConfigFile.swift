/// A parsed configuration file: a documented subset of TOML.
///
/// Supported: `# comments`, `[table]` headers, `key = value` where value is a basic string
/// (`"..."` with `\"`, `\\`, `\n`, `\t` escapes), an integer, a decimal (`1.5`), `true`/`false`, or a one-line
/// array of those. Keys are `[A-Za-z0-9_-]+`. Anything else is an error naming the line.
public struct ConfigFile: Sendable, Equatable {
    /// A value in the file.
    public enum Value: Sendable, Equatable, CustomStringConvertible {
        /// A string.
        case string(String)
        /// An integer.
        case integer(Int)
        /// A decimal number such as `1.5`, kept as written (so `0.1` stays exact).
        case decimal(String)
        /// A boolean.
        case bool(Bool)
        /// A one-line array.
        case array([Value])

        /// The value written back as TOML.
        public var description: String {
            switch self {
            case .string(let s): return "\"" + s.replacingAll("\\", "\\\\").replacingAll("\"", "\\\"") + "\""
            case .integer(let i): return String(i)
            case .decimal(let d): return d
            case .bool(let b): return String(b)
            case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
            }
        }
    }

    /// An entry with the line it came from.
    public struct Entry: Sendable, Equatable {
        /// The value.
        public var value: Value
        /// 1-based line number.
        public var line: Int
    }

    /// A syntax or type error, with its line.
    public struct Error: Swift.Error, Equatable, CustomStringConvertible, Sendable {
        /// 1-based line number (0 when the problem is not tied to one line).
        public var line: Int
        /// What is wrong.
        public var message: String
        /// Makes an error.
        public init(line: Int, _ message: String) { self.line = line; self.message = message }
        /// `line N: message`.
        public var description: String { line > 0 ? "line \(line): \(message)" : message }
    }

    /// Entries keyed by `table.key` (keys before any header have no table prefix).
    public private(set) var entries: [String: Entry] = [:]

    /// Parses the text of a configuration file.
    public init(parsing text: String) throws(Error) {
        var table = ""
        var lineNumber = 0
        // Any line break counts: a file saved with CRLF line ends reads the same.
        for rawLine in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline) {
            lineNumber += 1
            var scanner = Scanner(Array(rawLine.utf8), line: lineNumber)
            scanner.skipSpaces()
            if scanner.atEndOrComment { continue }
            if scanner.peek == UInt8(ascii: "[") {
                scanner.advance()
                scanner.skipSpaces()
                let name = scanner.readKey()
                guard !name.isEmpty else { throw Error(line: lineNumber, "expected a table name after '['") }
                scanner.skipSpaces()
                guard scanner.peek == UInt8(ascii: "]") else { throw Error(line: lineNumber, "expected ']' after table name") }
                scanner.advance()
                try scanner.expectEnd()
                table = name
                continue
            }
            let key = scanner.readKey()
            guard !key.isEmpty else { throw Error(line: lineNumber, "expected 'key = value'") }
            scanner.skipSpaces()
            guard scanner.peek == UInt8(ascii: "=") else { throw Error(line: lineNumber, "expected '=' after '\(key)'") }
            scanner.advance()
            scanner.skipSpaces()
            let value = try scanner.readValue(allowArray: true)
            try scanner.expectEnd()
            let full = table.isEmpty ? key : "\(table).\(key)"
            if let previous = entries[full] {
                throw Error(line: lineNumber, "'\(full)' is already set on line \(previous.line)")
            }
            entries[full] = Entry(value: value, line: lineNumber)
        }
    }

    /// The entry for `table.key`, if present.
    public subscript(_ key: String) -> Entry? { entries[key] }

    /// A string value, or nil if absent; throws if it has another type.
    public func string(_ key: String) throws(Error) -> String? {
        guard let e = entries[key] else { return nil }
        guard case .string(let s) = e.value else { throw Error(line: e.line, "'\(key)' must be a string") }
        return s
    }

    /// An integer value, or nil if absent; throws if it has another type.
    public func integer(_ key: String) throws(Error) -> Int? {
        guard let e = entries[key] else { return nil }
        guard case .integer(let i) = e.value else { throw Error(line: e.line, "'\(key)' must be an integer") }
        return i
    }

    /// A price (points per GPU-hour: an integer or a decimal with up to three places), or nil if
    /// absent; throws if it is anything else.
    public func price(_ key: String) throws(Error) -> Price? {
        guard let e = entries[key] else { return nil }
        let text: String
        switch e.value {
        case .integer(let i): text = String(i)
        case .decimal(let d): text = d
        default: throw Error(line: e.line, "'\(key)' must be a number of points such as 1.5")
        }
        guard let price = Price(parsing: text) else {
            throw Error(line: e.line, "'\(key)' = \(text): a price is 0 to 4294967.295 points with at most three decimals")
        }
        return price
    }

    /// A number from `range` (an integer or a decimal), or nil if absent; throws otherwise.
    public func number(_ key: String, in range: ClosedRange<Double>) throws(Error) -> Double? {
        guard let e = entries[key] else { return nil }
        let value: Double?
        switch e.value {
        case .integer(let i): value = Double(i)
        case .decimal(let d): value = Double(d)
        default: value = nil
        }
        guard let value, range.contains(value) else { throw Error(line: e.line, "'\(key)' must be a number from \(range.lowerBound) to \(range.upperBound)") }
        return value
    }

    /// A boolean value, or nil if absent; throws if it has another type.
    public func bool(_ key: String) throws(Error) -> Bool? {
        guard let e = entries[key] else { return nil }
        guard case .bool(let b) = e.value else { throw Error(line: e.line, "'\(key)' must be true or false") }
        return b
    }

    /// An array of strings, or nil if absent; throws if it has another type.
    public func strings(_ key: String) throws(Error) -> [String]? {
        guard let e = entries[key] else { return nil }
        guard case .array(let items) = e.value else { throw Error(line: e.line, "'\(key)' must be an array of strings") }
        var out: [String] = []
        for item in items {
            guard case .string(let s) = item else { throw Error(line: e.line, "'\(key)' must be an array of strings") }
            out.append(s)
        }
        return out
    }

    /// Throws for the first key (by line) not in `known`: catches typos in hand-written files.
    public func rejectUnknownKeys(_ known: Set<String>) throws(Error) {
        for (key, entry) in entries.sorted(by: { $0.value.line < $1.value.line }) where !known.contains(key) {
            throw Error(line: entry.line, "unknown setting '\(key)'")
        }
    }
}

/// A byte cursor over one line.
private struct Scanner {
    let bytes: [UInt8]
    let line: Int
    var i = 0

    init(_ bytes: [UInt8], line: Int) { self.bytes = bytes; self.line = line }

    var peek: UInt8? { i < bytes.count ? bytes[i] : nil }
    mutating func advance() { i += 1 }
    mutating func skipSpaces() { while let c = peek, c == 32 || c == 9 || c == 13 { i += 1 } }
    var atEndOrComment: Bool { peek == nil || peek == UInt8(ascii: "#") }

    mutating func expectEnd() throws(ConfigFile.Error) {
        skipSpaces()
        guard atEndOrComment else { throw ConfigFile.Error(line: line, "unexpected text after the value") }
    }

    mutating func readKey() -> String {
        let start = i
        while let c = peek, (48...57).contains(c) || (65...90).contains(c) || (97...122).contains(c) || c == 95 || c == 45 { i += 1 }
        return String(decoding: bytes[start..<i], as: UTF8.self)
    }

    mutating func readValue(allowArray: Bool) throws(ConfigFile.Error) -> ConfigFile.Value {
        guard let c = peek else { throw ConfigFile.Error(line: line, "missing value") }
        switch c {
        case UInt8(ascii: "\""):
            advance()
            var out: [UInt8] = []
            while true {
                guard let ch = peek else { throw ConfigFile.Error(line: line, "unterminated string") }
                advance()
                if ch == UInt8(ascii: "\"") { break }
                if ch == UInt8(ascii: "\\") {
                    guard let esc = peek else { throw ConfigFile.Error(line: line, "unterminated string") }
                    advance()
                    switch esc {
                    case UInt8(ascii: "\""): out.append(esc)
                    case UInt8(ascii: "\\"): out.append(esc)
                    case UInt8(ascii: "n"): out.append(10)
                    case UInt8(ascii: "t"): out.append(9)
                    default: throw ConfigFile.Error(line: line, "unsupported escape '\\\(Character(Unicode.Scalar(esc)))'")
                    }
                } else {
                    out.append(ch)
                }
            }
            return .string(String(decoding: out, as: UTF8.self))
        case UInt8(ascii: "["):
            guard allowArray else { throw ConfigFile.Error(line: line, "nested arrays are not supported") }
            advance()
            var items: [ConfigFile.Value] = []
            skipSpaces()
            if peek == UInt8(ascii: "]") { advance(); return .array(items) }
            while true {
                skipSpaces()
                items.append(try readValue(allowArray: false))
                skipSpaces()
                if peek == UInt8(ascii: ",") { advance(); skipSpaces(); if peek == UInt8(ascii: "]") { advance(); break }; continue }
                if peek == UInt8(ascii: "]") { advance(); break }
                throw ConfigFile.Error(line: line, "expected ',' or ']' in array")
            }
            return .array(items)
        default:
            let start = i
            while let ch = peek, ch != 32, ch != 9, ch != UInt8(ascii: ","), ch != UInt8(ascii: "]"), ch != UInt8(ascii: "#") { i += 1 }
            let word = String(decoding: bytes[start..<i], as: UTF8.self)
            if word == "true" { return .bool(true) }
            if word == "false" { return .bool(false) }
            if let n = Int(word.replacingAll("_", "")), !word.hasPrefix("_") { return .integer(n) }
            let halves = word.split(separator: ".", omittingEmptySubsequences: false)
            if halves.count == 2, !halves[0].isEmpty, !halves[1].isEmpty, halves.allSatisfy({ $0.utf8.allSatisfy { $0 >= 48 && $0 <= 57 } }) {
                return .decimal(word)
            }
            throw ConfigFile.Error(line: line, "'\(word)' is not a value (strings need double quotes)")
        }
    }
}

extension String {
    /// Replaces every occurrence of `target` (Foundation-free).
    func replacingAll(_ target: String, _ replacement: String) -> String {
        guard !target.isEmpty else { return self }
        var out = ""
        var rest = Substring(self)
        while let r = rest.range(of: target) {
            out += rest[..<r.lowerBound]
            out += replacement
            rest = rest[r.upperBound...]
        }
        return out + rest
    }
}

extension Substring {
    /// The first range of `target` (Foundation-free).
    func range(of target: String) -> Range<Index>? {
        let t = Array(target.utf8)
        let u = self.utf8
        var i = u.startIndex
        while i != u.endIndex {
            var j = i
            var k = 0
            while k < t.count, j != u.endIndex, u[j] == t[k] { j = u.index(after: j); k += 1 }
            if k == t.count { return i..<j }
            i = u.index(after: i)
        }
        return nil
    }
}
