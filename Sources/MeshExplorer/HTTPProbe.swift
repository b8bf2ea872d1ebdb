import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking HTTP/1.1 client for 127.0.0.1, for `gpumesh bench explorer` and the
/// explorer's tests: one request per connection (`Connection: close`), the answer read to end
/// of file, a chunked body decoded. Not for general use: no TLS, no redirects, no other hosts.
public enum HTTPProbe {
    /// An answer.
    public struct Answer: Sendable {
        /// The status code.
        public var status: Int
        /// Header fields, names in lower case.
        public var headers: [String: String]
        /// The body.
        public var body: [UInt8]
        /// The body as UTF-8 text.
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// Why a request failed.
    public struct Failure: Error, CustomStringConvertible, Sendable {
        /// What went wrong.
        public var description: String
    }

    /// Sends `method path` to 127.0.0.1:`port` with `Host: host` (default `127.0.0.1:port`) and
    /// waits for the whole answer (at most `timeoutSeconds` between reads).
    public static func request(port: Int, path: String, method: String = "GET", host: String? = nil, timeoutSeconds: Int = 30) throws(Failure) -> Answer {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw Failure(description: "connect to 127.0.0.1:\(port): errno \(errno)") }
        let request = Array("\(method) \(path) HTTP/1.1\r\nHost: \(host ?? "127.0.0.1:\(port)")\r\nConnection: close\r\n\r\n".utf8)
        guard send(fd, request, request.count, Int32(MSG_NOSIGNAL)) == request.count else { throw Failure(description: "send: errno \(errno)") }
        var raw: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { throw Failure(description: "recv: errno \(errno)") }
            if n == 0 { break }
            raw += buffer[0..<n]
        }
        return try parse(raw)
    }

    /// Parses a whole HTTP/1.1 answer.
    static func parse(_ raw: [UInt8]) throws(Failure) -> Answer {
        guard let split = raw.firstRange(of: Array("\r\n\r\n".utf8)) else { throw Failure(description: "no end of header in \(raw.count) bytes") }
        let head = String(decoding: raw[..<split.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        guard let statusLine = head.first, statusLine.hasPrefix("HTTP/1.1 "), let status = Int(statusLine.dropFirst(9).prefix(3)) else {
            throw Failure(description: "bad status line '\(head.first ?? "")'")
        }
        var headers: [String: String] = [:]
        for line in head.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        var body = Array(raw[split.upperBound...])
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            var out: [UInt8] = []
            var rest = body[...]
            while let lineEnd = rest.firstRange(of: Array("\r\n".utf8)),
                  let size = Int(String(decoding: rest[..<lineEnd.lowerBound], as: UTF8.self), radix: 16), size > 0 {
                let start = lineEnd.upperBound
                guard rest.endIndex - start >= size + 2 else { throw Failure(description: "a chunk is cut short") }
                out += rest[start..<start + size]
                rest = rest[(start + size + 2)...]
            }
            body = out
        }
        return Answer(status: status, headers: headers, body: body)
    }
}
