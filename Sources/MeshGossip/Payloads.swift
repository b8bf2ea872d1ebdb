import MeshCore
import MeshCrypto

extension Gossip {
    /// The payload of a `heartbeat` message: signed liveness. The envelope's sequence orders a
    /// peer's heartbeats; the payload says how often they come, so a receiver can tell how many
    /// it missed.
    ///
    /// Wire form (big-endian): `version (1) = 1 | flags (1) | interval_s (2) | uptime_s (4) |
    /// free_slots (2) | total_slots (2) | capability_sequence (8)`; flags bit 0: the sender
    /// provides (its capability record has that sequence); other bits zero.
    public struct Heartbeat: Sendable, Equatable, Codable {
        /// Seconds between this peer's heartbeats.
        public var intervalSeconds: UInt16
        /// Seconds since the peer's node started.
        public var uptimeSeconds: UInt32
        /// Free job slots (0 for a peer that does not provide).
        public var freeSlots: UInt16
        /// Job slots in all.
        public var totalSlots: UInt16
        /// The sequence of the peer's current capability record; nil if it does not provide.
        public var capabilitySequence: UInt64?

        /// Encoded size.
        public static let size = 20

        /// A heartbeat.
        public init(intervalSeconds: UInt16, uptimeSeconds: UInt32, freeSlots: UInt16 = 0, totalSlots: UInt16 = 0, capabilitySequence: UInt64? = nil) {
            self.intervalSeconds = intervalSeconds
            self.uptimeSeconds = uptimeSeconds
            self.freeSlots = freeSlots
            self.totalSlots = totalSlots
            self.capabilitySequence = capabilitySequence
        }

        /// The payload bytes.
        public func encode() -> [UInt8] {
            var w = WireWriter(capacity: Self.size)
            w.u8(1)
            w.u8(capabilitySequence == nil ? 0 : 1)
            w.u16(intervalSeconds)
            w.u32(uptimeSeconds)
            w.u16(freeSlots)
            w.u16(totalSlots)
            w.u64(capabilitySequence ?? 0)
            return w.bytes
        }

        /// Parses a payload; nil if malformed (wrong size or version, unknown flags, no interval,
        /// more free slots than slots).
        public init?(decoding bytes: [UInt8]) {
            var r = WireReader(bytes)
            guard bytes.count == Self.size, r.u8() == 1, let flags = r.u8(), flags & ~1 == 0,
                  let interval = r.u16(), interval > 0, let uptime = r.u32(), let free = r.u16(), let total = r.u16(),
                  free <= total, let sequence = r.u64() else { return nil }
            self.init(intervalSeconds: interval, uptimeSeconds: uptime, freeSlots: free, totalSlots: total,
                      capabilitySequence: flags & 1 == 1 ? sequence : nil)
        }

        enum CodingKeys: String, CodingKey {
            case intervalSeconds = "interval_s", uptimeSeconds = "uptime_s", freeSlots = "free_slots", totalSlots = "total_slots"
            case capabilitySequence = "capability_sequence"
        }
    }

    /// The payload of a `report` message: a signed statement by its origin about another peer.
    ///
    /// Wire form: `version (1) = 1 | kind (1) | subject key (32) | job id (16; zeros: none) |
    /// observed_at_ms (8) | note (1-byte length, UTF-8, at most 200 bytes)`.
    public struct Report: Sendable, Equatable {
        /// What the reporter saw.
        public enum Kind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
            /// A provider's outputs or receipt did not verify.
            case failedVerification = 1
            /// A peer agreed to a job and never showed up (or vanished mid-job).
            case noShow = 2
            /// A renter took a job's outputs and never countersigned the receipt.
            case unsigned = 3

            /// The kind's name.
            public var description: String {
                switch self {
                case .failedVerification: "failed_verification"
                case .noShow: "no_show"
                case .unsigned: "unsigned"
                }
            }
        }

        /// What the reporter saw.
        public var kind: Kind
        /// The peer reported on.
        public var subject: PublicKey
        /// The job it concerns, if any (16 bytes).
        public var jobID: [UInt8]?
        /// When it was seen (Unix milliseconds).
        public var observedAt: UInt64
        /// Free text for people (at most `maxNoteBytes`).
        public var note: String

        /// The longest note.
        public static let maxNoteBytes = 200

        /// A report; nil if the job ID is not 16 bytes or the note is too long.
        public init?(kind: Kind, subject: PublicKey, jobID: [UInt8]?, observedAt: UInt64, note: String = "") {
            guard jobID.map({ $0.count == 16 && $0 != [UInt8](repeating: 0, count: 16) }) ?? true, note.utf8.count <= Self.maxNoteBytes else { return nil }
            self.kind = kind
            self.subject = subject
            self.jobID = jobID
            self.observedAt = observedAt
            self.note = note
        }

        /// The payload bytes.
        public func encode() -> [UInt8] {
            var w = WireWriter(capacity: 60 + note.utf8.count)
            w.u8(1)
            w.u8(kind.rawValue)
            w.raw(subject.bytes)
            w.raw(jobID ?? [UInt8](repeating: 0, count: 16))
            w.u64(observedAt)
            w.string8(note)
            return w.bytes
        }

        /// Parses a payload; nil if malformed.
        public init?(decoding bytes: [UInt8]) {
            var r = WireReader(bytes)
            guard r.u8() == 1, let k = r.u8(), let kind = Kind(rawValue: k), let key = r.raw(32), let subject = try? PublicKey(bytes: key),
                  let job = r.raw(16), let at = r.u64(), let note = r.string8(), r.isAtEnd else { return nil }
            self.init(kind: kind, subject: subject, jobID: job == [UInt8](repeating: 0, count: 16) ? nil : job, observedAt: at, note: note)
        }
    }

    /// What this peer has heard of others' heartbeats, as pure state: first and last heard,
    /// how many, the newest. Replayed or reordered heartbeats (sequence not above the last) are
    /// refused, so a peer's count cannot be inflated by repeating old ones. Bounded: beyond
    /// `capacity` peers, the one heard from longest ago is forgotten.
    public struct Liveness: Sendable {
        /// One peer's heartbeats.
        public struct Entry: Sendable, Equatable, Codable {
            /// When the first was received (Unix ms, this peer's clock).
            public var firstHeard: UInt64
            /// When the last was received.
            public var lastHeard: UInt64
            /// Heartbeats received.
            public var count: Int
            /// The newest heartbeat's sequence.
            public var sequence: UInt64
            /// The newest heartbeat.
            public var latest: Heartbeat

            /// The share of expected heartbeats that arrived since the first (0-1): with the
            /// sender's interval, `count` over the heartbeats due from the first one to `now`.
            public func availability(now: UInt64) -> Double {
                let interval = UInt64(latest.intervalSeconds) * 1000
                guard interval > 0, now >= firstHeard else { return 1 }
                let due = (now - firstHeard) / interval + 1
                return min(1, Double(count) / Double(due))
            }

            /// True if a heartbeat was due and none came for two intervals.
            public func isSilent(now: UInt64) -> Bool {
                now > lastHeard + 2 * UInt64(latest.intervalSeconds) * 1000
            }

            enum CodingKeys: String, CodingKey {
                case firstHeard = "first_heard_ms", lastHeard = "last_heard_ms", count, sequence, latest
            }
        }

        /// Why a heartbeat was not recorded.
        public enum Refusal: Error, Equatable {
            /// Not a heartbeat payload.
            case malformed
            /// Its sequence is not above the last one recorded for that peer.
            case stale
        }

        /// Peers tracked at most.
        public let capacity: Int
        /// The peers, by key.
        public private(set) var entries: [PublicKey: Entry] = [:]

        /// An empty table.
        public init(capacity: Int = 10_000) {
            self.capacity = capacity
        }

        /// Records a delivered heartbeat message received at `now`.
        public mutating func record(_ message: Message, now: UInt64) -> Result<Entry, Refusal> {
            guard message.topic == .heartbeat, let beat = Heartbeat(decoding: message.payload) else { return .failure(.malformed) }
            let key = message.origin
            if var e = entries[key] {
                guard message.envelope.sequence > e.sequence else { return .failure(.stale) }
                e.lastHeard = max(e.lastHeard, now)
                e.count += 1
                e.sequence = message.envelope.sequence
                e.latest = beat
                entries[key] = e
                return .success(e)
            }
            if entries.count >= capacity, let oldest = entries.min(by: { $0.value.lastHeard < $1.value.lastHeard })?.key {
                entries[oldest] = nil
            }
            let e = Entry(firstHeard: now, lastHeard: now, count: 1, sequence: message.envelope.sequence, latest: beat)
            entries[key] = e
            return .success(e)
        }
    }
}
