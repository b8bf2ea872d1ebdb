import MeshCore

extension Kademlia {
    /// The DHT's wire format: the body of a sealed datagram whose first byte is 16...23.
    ///
    /// Every message: `type (1) | request_id (8) | tcp_port (2) | fields`. The TCP port is the
    /// sender's channel port on the address the datagram came from (0: none), so a contact can
    /// be built from what the network proved (the source address) plus two bytes, without
    /// trusting addresses a sender claims for itself. Fields per type are in Docs/PROTOCOL.md.
    public enum Wire {
        /// Message type bytes.
        public enum Kind: UInt8, Sendable, CaseIterable {
            /// `ping`.
            case ping = 16
            /// `pong`.
            case pong = 17
            /// `findNode`.
            case findNode = 18
            /// `nodes`.
            case nodes = 19
            /// `store`.
            case store = 20
            /// `stored`.
            case stored = 21
            /// `findValue`.
            case findValue = 22
            /// `values`.
            case values = 23
        }

        /// The largest DHT body this node sends: with the sealed header and tag (74 bytes) a
        /// datagram stays under the 1,280-byte IPv6 minimum MTU.
        public static let maxBody = 1200
        /// Type, request ID and TCP port.
        public static let headerBytes = 11
        /// Room for records in a `values` page.
        public static let maxRecordBytes = maxBody - headerBytes - 5
        /// Most contacts a `nodes` message may carry.
        public static let maxContacts = 32

        /// True if a sealed datagram body with this first byte is a DHT message.
        public static func isDHT(_ type: UInt8) -> Bool { Kind(rawValue: type) != nil }

        /// True for requests that would be answered with more bytes than they carry (so an
        /// unproven address gets a cookie challenge instead, unless the request was padded).
        public static func amplifies(_ body: Message.Body) -> Bool {
            switch body {
            case .findNode, .findValue: true
            default: false
            }
        }

        /// The size a padded FIND_NODE or FIND_VALUE body is brought to with zero bytes. Sealed,
        /// that is 434 bytes: a third of the largest answer (a VALUES page, 1,274 bytes sealed), so
        /// an unproven address can be answered at once within a 3× amplification bound (as QUIC
        /// allows before address validation) instead of after a cookie round trip.
        public static let paddedRequestBytes = 360
        /// The largest amplification allowed towards an unproven address.
        public static let amplificationFactor = 3

        /// Encodes `message`, naming `tcpPort` as the sender's channel port. With `padded`,
        /// FIND_NODE and FIND_VALUE are brought to `paddedRequestBytes` with zeros.
        public static func encode(_ message: Message, tcpPort: UInt16, padded: Bool = false) -> [UInt8] {
            var w = WireWriter(capacity: 128)
            func header(_ kind: Kind) {
                w.u8(kind.rawValue)
                w.u64(message.requestID)
                w.u16(tcpPort)
            }
            switch message.body {
            case .ping: header(.ping)
            case .pong: header(.pong)
            case .findNode(let target):
                header(.findNode)
                w.raw(target.bytes)
                if padded { w.raw(repeatElement(0, count: paddedRequestBytes - w.count)) }
            case .nodes(let contacts):
                header(.nodes)
                let countAt = w.count
                w.u8(0)
                var n: UInt8 = 0
                for c in contacts.prefix(maxContacts) where w.count + c.compactSize <= maxBody {
                    if c.encodeCompact(into: &w) { n += 1 }
                }
                var bytes = w.bytes
                bytes[countAt] = n
                return bytes
            case .store(let record):
                header(.store)
                w.raw(record.encoded)
            case .stored(let status):
                header(.stored)
                w.u8(status.rawValue)
            case .findValue(let key, let offset):
                header(.findValue)
                w.raw(key.bytes)
                w.u16(offset)
                if padded { w.raw(repeatElement(0, count: paddedRequestBytes - w.count)) }
            case .values(let total, let offset, let records):
                header(.values)
                w.u16(total)
                w.u16(offset)
                w.u8(UInt8(clamping: records.count))
                for r in records.prefix(255) { w.raw(r.encoded) }
            }
            return w.bytes
        }

        /// Decodes an untrusted body; nil unless it is exactly one well-formed DHT message.
        public static func decode(_ bytes: [UInt8]) -> (message: Message, tcpPort: UInt16)? {
            var r = WireReader(bytes)
            guard let type = r.u8(), let kind = Kind(rawValue: type), let id = r.u64(), let tcpPort = r.u16() else { return nil }
            let body: Message.Body
            switch kind {
            case .ping: body = .ping
            case .pong: body = .pong
            case .findNode:
                guard let target = r.peerID() else { return nil }
                body = .findNode(target: target)
            case .nodes:
                guard let n = r.u8(), n <= maxContacts else { return nil }
                var contacts: [Contact] = []
                for _ in 0..<n {
                    guard let c = Contact(compact: &r) else { return nil }
                    contacts.append(c)
                }
                body = .nodes(contacts)
            case .store:
                guard let record = Record(reading: &r, all: bytes) else { return nil }
                body = .store(record)
            case .stored:
                guard let raw = r.u8(), let status = StoreStatus(rawValue: raw) else { return nil }
                body = .stored(status)
            case .findValue:
                guard let key = r.peerID(), let offset = r.u16() else { return nil }
                body = .findValue(key: key, offset: offset)
            case .values:
                guard let total = r.u16(), let offset = r.u16(), let n = r.u8() else { return nil }
                var records: [Record] = []
                for _ in 0..<n {
                    guard let rec = Record(reading: &r, all: bytes) else { return nil }
                    records.append(rec)
                }
                body = .values(total: total, offset: offset, records: records)
            }
            if Self.amplifies(body) {
                // Requests may carry zero padding (and nothing else) after their fields.
                guard bytes.count <= maxBody, r.raw(r.remaining)?.allSatisfy({ $0 == 0 }) == true else { return nil }
            }
            guard r.isAtEnd else { return nil }
            return (Message(requestID: id, body: body), tcpPort)
        }
    }
}
