/// JSON-RPC 2.0 messages, as used on the node's control socket (one JSON object per line).
public enum JSONRPC {
    /// The longest request line a server reads before refusing it.
    public static let maxLineBytes = 1 << 20

    /// A request or notification (a notification has no `id` and gets no response).
    public struct Request: Codable, Sendable, Equatable {
        /// Always `"2.0"`.
        public var jsonrpc: String
        /// The caller's ID for matching the response; nil for a notification.
        public var id: JSONValue?
        /// The method name, such as `node.status`.
        public var method: String
        /// Parameters (an object or array), if any.
        public var params: JSONValue?

        /// Makes a request.
        public init(id: JSONValue?, method: String, params: JSONValue? = nil) {
            jsonrpc = "2.0"
            self.id = id
            self.method = method
            self.params = params
        }
    }

    /// A JSON-RPC error object.
    public struct ErrorObject: Codable, Sendable, Equatable, Error, CustomStringConvertible {
        /// The error code (JSON-RPC's reserved codes, or -32000...-32099 for node errors).
        public var code: Int
        /// A message for people.
        public var message: String
        /// Extra detail, if any.
        public var data: JSONValue?

        /// Makes an error object.
        public init(code: Int, message: String, data: JSONValue? = nil) {
            self.code = code
            self.message = message
            self.data = data
        }

        /// The text was not JSON.
        public static func parseError(_ detail: String) -> ErrorObject { .init(code: -32700, message: "parse error: \(detail)") }
        /// The JSON was not a valid request.
        public static func invalidRequest(_ detail: String) -> ErrorObject { .init(code: -32600, message: "invalid request: \(detail)") }
        /// No such method.
        public static func methodNotFound(_ method: String) -> ErrorObject { .init(code: -32601, message: "method not found: \(method)") }
        /// Bad parameters.
        public static func invalidParams(_ detail: String) -> ErrorObject { .init(code: -32602, message: "invalid params: \(detail)") }
        /// The node failed to carry out the call.
        public static func serverError(_ detail: String) -> ErrorObject { .init(code: -32000, message: detail) }

        /// `message (code)`.
        public var description: String { "\(message) (\(code))" }
    }

    /// A response: exactly one of `result` and `error` is present.
    public struct Response: Codable, Sendable, Equatable {
        /// Always `"2.0"`.
        public var jsonrpc: String
        /// The request's ID (null if it could not be read).
        public var id: JSONValue
        /// The result on success.
        public var result: JSONValue?
        /// The error on failure.
        public var error: ErrorObject?

        /// A success response.
        public init(id: JSONValue, result: JSONValue) {
            jsonrpc = "2.0"; self.id = id; self.result = result; error = nil
        }

        /// An error response.
        public init(id: JSONValue, error: ErrorObject) {
            jsonrpc = "2.0"; self.id = id; result = nil; self.error = error
        }

        /// Encodes `id` and `result` or `error`, with `result` present even when it is null.
        public func encode(to encoder: Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(jsonrpc, forKey: .jsonrpc)
            try c.encode(id, forKey: .id)
            if let error { try c.encode(error, forKey: .error) } else { try c.encode(result ?? .null, forKey: .result) }
        }
    }
}
