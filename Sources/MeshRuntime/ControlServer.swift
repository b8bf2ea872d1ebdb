import Foundation
import Logging
import MeshCore

/// Serves JSON-RPC 2.0 on a Unix-domain socket, one JSON object per line. Loop-confined.
///
/// Methods are registered by name; a handler answers through its `reply` callback, so it may
/// finish later on the loop (after a network round trip, say).
public final class ControlServer {
    /// Answers one call: the params, and a callback for the result or error.
    public typealias Handler = (_ params: JSONValue?, _ reply: @escaping (Result<JSONValue, JSONRPC.ErrorObject>) -> Void) -> Void

    /// The socket path.
    public let path: String
    /// Requests answered (including errors).
    public private(set) var requests = 0
    /// Requests answered with an error.
    public private(set) var errors = 0

    private let loop: EventLoop
    private var listener: StreamListener?
    private var handlers: [String: Handler] = [:]
    private let logger: Logger

    /// Listens on `path` (loop thread). The socket file is made owner-only (mode 0600).
    public init(on loop: EventLoop, path: String, logger: Logger) throws {
        loop.preconditionInLoop()
        self.loop = loop
        self.path = path
        self.logger = logger
        listener = try StreamListener.listen(on: loop, at: .unix(path)) { [weak self] connection in
            self?.serve(connection)
        }
        guard chmod(path, 0o600) == 0 else {
            let e = errno
            listener?.close()
            throw UVError(code: -e, call: "chmod(\(path))")
        }
    }

    /// Registers the handler for `method` (loop thread).
    public func register(_ method: String, _ handler: @escaping Handler) {
        loop.preconditionInLoop()
        handlers[method] = handler
    }

    /// Stops listening and removes the socket file (loop thread).
    public func close() {
        listener?.close()
        listener = nil
    }

    private func serve(_ connection: StreamConnection) {
        var lines = LineBuffer(maxLineBytes: JSONRPC.maxLineBytes)
        connection.startReading { [weak self] event in
            guard let self, case .data(let bytes) = event else { return }
            switch lines.append(bytes) {
            case .lines(let received):
                for line in received where !line.allSatisfy({ $0 == 32 || $0 == 13 }) {
                    self.handle(line, on: connection)
                }
            case .overflow:
                self.send(.init(id: .null, error: .invalidRequest("request longer than \(JSONRPC.maxLineBytes) bytes")), on: connection)
                connection.closeGracefully()
            }
        }
    }

    private func handle(_ line: [UInt8], on connection: StreamConnection) {
        let json: JSONValue
        do {
            json = try JSONDecoder().decode(JSONValue.self, from: Data(line))
        } catch {
            send(.init(id: .null, error: .parseError("not valid JSON")), on: connection)
            return
        }
        guard case .object(let fields) = json else {
            send(.init(id: .null, error: .invalidRequest("expected a JSON object")), on: connection)
            return
        }
        let id = fields["id"]
        if let id, !Self.isValidID(id) {
            send(.init(id: .null, error: .invalidRequest("id must be a string, a number or null")), on: connection)
            return
        }
        guard fields["jsonrpc"] == .string("2.0") else {
            send(.init(id: id ?? .null, error: .invalidRequest("jsonrpc must be \"2.0\"")), on: connection)
            return
        }
        guard case .string(let method)? = fields["method"] else {
            send(.init(id: id ?? .null, error: .invalidRequest("method must be a string")), on: connection)
            return
        }
        let params = fields["params"]
        if let params {
            switch params {
            case .object, .array: break
            default:
                send(.init(id: id ?? .null, error: .invalidRequest("params must be an object or an array")), on: connection)
                return
            }
        }
        logger.debug("control request", metadata: ["method": "\(method)"])
        guard let handler = handlers[method] else {
            if let id { send(.init(id: id, error: .methodNotFound(method)), on: connection) }
            return
        }
        var answered = false
        handler(params) { [weak self] result in
            guard let self, !answered else { return }
            answered = true
            guard let id else { return }  // a notification gets no response
            switch result {
            case .success(let value): self.send(.init(id: id, result: value), on: connection)
            case .failure(let error): self.send(.init(id: id, error: error), on: connection)
            }
        }
    }

    private static func isValidID(_ id: JSONValue) -> Bool {
        switch id {
        case .string, .int, .double, .null: return true
        default: return false
        }
    }

    private func send(_ response: JSONRPC.Response, on connection: StreamConnection) {
        requests += 1
        if response.error != nil { errors += 1 }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        guard var bytes = try? Array(encoder.encode(response)) else { return }
        bytes.append(10)
        connection.write(bytes)
    }
}

/// Calls a node's control socket: one connection per call, from any thread.
public enum ControlClient {
    /// Why a control call failed.
    public enum Failure: Error, CustomStringConvertible, Equatable {
        /// No node listens at the path (no socket file, or a stale one).
        case noNode(path: String)
        /// The connection broke or the node sent something that is not a JSON-RPC response.
        case transport(String)
        /// The node answered with an error.
        case remote(JSONRPC.ErrorObject)

        /// A message for people.
        public var description: String {
            switch self {
            case .noNode(let path): return "no node is running (no control socket answers at \(path)); start one with `gpumesh node`"
            case .transport(let detail): return "control socket: \(detail)"
            case .remote(let error): return "node answered: \(error)"
            }
        }
    }

    /// Sends one request to the node at `path` and returns its result.
    public static func call(_ method: String, params: JSONValue? = nil, socketPath path: String,
                            on loop: EventLoop, timeout: Duration = .seconds(10)) async throws(Failure) -> JSONValue {
        let connection: StreamConnection
        do {
            connection = try await StreamConnection.connect(on: loop, to: .unix(path), timeout: timeout)
        } catch let error as UVError where [UVError.noEntry, UVError.connectionRefused].contains(error.code) {
            throw .noNode(path: path)
        } catch {
            throw .transport("\(error)")
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var encoded = (try? Array(encoder.encode(JSONRPC.Request(id: .int(1), method: method, params: params)))) ?? []
        encoded.append(10)
        let request = encoded
        let (stream, continuation) = AsyncStream.makeStream(of: Result<[UInt8], Failure>.self)
        do {
            try await loop.submit {
                var lines = LineBuffer(maxLineBytes: JSONRPC.maxLineBytes * 16)
                connection.startReading { event in
                    switch event {
                    case .data(let bytes):
                        switch lines.append(bytes) {
                        case .lines(let got) where !got.isEmpty:
                            continuation.yield(.success(got[0]))
                            connection.close()
                        case .lines: break
                        case .overflow:
                            continuation.yield(.failure(.transport("response too long")))
                            connection.close()
                        }
                    case .end: continuation.yield(.failure(.transport("node closed the connection without answering")))
                    case .failed(let e): continuation.yield(.failure(.transport("\(e)")))
                    }
                }
                let timer = try? loop.schedule(after: timeout) {
                    continuation.yield(.failure(.transport("no answer within \(timeout)")))
                    connection.close()
                }
                connection.onClose { _ in
                    timer?.cancel()
                    continuation.finish()
                }
                connection.write(request)
            }
        } catch {
            throw .transport("\(error)")
        }
        var outcome: Result<[UInt8], Failure> = .failure(.transport("connection closed"))
        for await item in stream { outcome = item; break }
        let line = try outcome.get()
        guard let response = try? JSONDecoder().decode(JSONRPC.Response.self, from: Data(line)) else {
            throw .transport("answer is not a JSON-RPC response")
        }
        if let error = response.error { throw .remote(error) }
        return response.result ?? .null
    }
}
