import MeshCore

/// Kademlia over GPUMesh peer IDs: pure state, no sockets, time passed in by the caller.
public enum Kademlia {
    /// Tunables (defaults from the design: k = 20, alpha = 3).
    public struct Settings: Sendable, Equatable {
        /// Bucket size and the number of closest nodes a lookup returns.
        public var k = 20
        /// Requests a lookup keeps in flight.
        public var alpha = 3
        /// Candidates kept per bucket to replace nodes that fail.
        public var replacementCacheSize = 10
        /// Most nodes per bucket from one IP prefix (nil: no limit, for loopback meshes).
        public var maxPerPrefixPerBucket: Int? = 2
        /// Prefix length for the diversity limit, IPv4 (a /24).
        public var ipv4PrefixBits = 24
        /// Prefix length for the diversity limit, IPv6 (a /48).
        public var ipv6PrefixBits = 48
        /// Largest record value a storing node accepts (a record then fits one datagram).
        public var maxValueBytes = 1000
        /// Furthest ahead a record may expire (ms): 24 hours.
        public var maxRecordLifetime: UInt64 = 24 * 3_600_000
        /// Most publishers' records one key holds on a storing node.
        public var maxRecordsPerKey = 64
        /// Most records one publisher holds on a storing node.
        public var maxRecordsPerPublisher = 32
        /// Most records a storing node holds in all.
        public var maxRecords = 16_384
        /// How many storing nodes a read asks (nearest first, skipping those that fail).
        public var readWidth = 3
        /// A read's lookup ends once this many of the closest nodes it knows have answered (a
        /// store's once all k have): a record lives on the k closest, so converging on the
        /// nearest few finds holders at about half the requests. 0 or k: full lookups for reads.
        public var readLookupWidth = 5
        /// Most pages a read takes from one storing node (enough for a full key at one record a page).
        public var maxPagesPerNode = 64
        /// Disjoint paths per lookup (S/Kademlia's d): 1 is plain Kademlia; d > 1 splits the
        /// starting nodes among d lookups that never ask the same node, and merges their results.
        public var disjointPaths = 1
        /// The mesh's ID puzzle difficulty: peers whose IDs score lower are ignored (0: off).
        public var idDifficulty = 0
        /// A full bucket's least recently seen node is pinged (to make room for a newcomer) only
        /// if it has not been heard from for this long (ms); busy nodes are not pinged over and over.
        public var livenessWindow: UInt64 = 60_000
        /// A bucket not heard from for this long is refreshed by a lookup in it (ms).
        public var bucketRefreshInterval: UInt64 = 15 * 60_000
        /// Makes the defaults.
        public init() {}
    }

    /// A node in the routing table.
    public struct Node: Sendable, Equatable {
        /// Its ID.
        public var id: PeerID { contact.peerID }
        /// How to reach it.
        public var contact: Contact
        /// When it was last heard from (caller's clock, milliseconds).
        public var lastSeen: UInt64

        /// Makes a node.
        public init(contact: Contact, lastSeen: UInt64) {
            self.contact = contact
            self.lastSeen = lastSeen
        }
    }

    /// What `RoutingTable.observe` did with a node.
    public enum Observation: Equatable, Sendable {
        /// It joined its bucket.
        case added
        /// It was already there; moved to most recently seen (contact updated).
        case refreshed
        /// Its bucket is full: it waits in the replacement cache. Ping `leastRecentlySeen`: if it
        /// fails, call `nodeFailed`, and the waiting node takes its place.
        case bucketFull(leastRecentlySeen: Node)
        /// Refused: too many nodes of its IP prefix in that bucket already.
        case rejectedDiversity
        /// It is this node itself.
        case isSelf
    }

    /// The routing table: 256 buckets by shared-prefix length with the local ID, each holding up
    /// to k nodes ordered least to most recently seen, plus a replacement cache.
    public struct RoutingTable: Sendable {
        /// This node's ID.
        public let localID: PeerID
        /// The tunables.
        public let settings: Settings
        private var buckets: [[Node]] = Array(repeating: [], count: 256)
        private var replacements: [[Node]] = Array(repeating: [], count: 256)
        /// Which buckets hold nodes: bit b of word b / 64 for bucket b (so walks skip empty ones).
        private var occupied: [UInt64] = [0, 0, 0, 0]

        private mutating func noteOccupancy(_ b: Int) {
            if buckets[b].isEmpty { occupied[b / 64] &= ~(1 << UInt64(b % 64)) } else { occupied[b / 64] |= 1 << UInt64(b % 64) }
        }

        /// An empty table for `localID`.
        public init(localID: PeerID, settings: Settings = Settings()) {
            self.localID = localID
            self.settings = settings
        }

        /// The bucket for `id`: 255 minus the number of leading bits shared with the local ID
        /// (bucket 255 holds the farthest half of the ID space); nil for the local ID.
        public func bucketIndex(for id: PeerID) -> Int? {
            let shared = localID.distance(to: id).leadingZeroBitCount
            return shared == 256 ? nil : 255 - shared
        }

        /// How many nodes the table holds.
        public var count: Int { buckets.reduce(0) { $0 + $1.count } }

        /// The nodes of bucket `index`, least recently seen first.
        public func nodes(inBucket index: Int) -> [Node] { buckets[index] }

        /// The replacement candidates of bucket `index`, least recently seen first.
        public func replacementCandidates(inBucket index: Int) -> [Node] { replacements[index] }

        /// Every node, bucket by bucket.
        public var allNodes: [Node] { buckets.flatMap { $0 } }

        /// The node with `id`, if present.
        public func node(_ id: PeerID) -> Node? {
            guard let b = bucketIndex(for: id) else { return nil }
            return buckets[b].first { $0.id == id }
        }

        private func prefix(of node: Node) -> [UInt8]? {
            guard let address = node.contact.address(for: .udp) ?? node.contact.addresses.first?.address else { return nil }
            let bytes = address.ip.bytes
            let bits: Int
            if case .v4 = address.ip { bits = settings.ipv4PrefixBits } else { bits = settings.ipv6PrefixBits }
            var out = Array(bytes.prefix((bits + 7) / 8))
            if bits % 8 != 0, !out.isEmpty { out[out.count - 1] &= UInt8(0xff << (8 - bits % 8)) }
            return out
        }

        /// Records that `node` was heard from at `now` (a request or a response).
        public mutating func observe(_ node: Node) -> Observation {
            guard let b = bucketIndex(for: node.id) else { return .isSelf }
            if let i = buckets[b].firstIndex(where: { $0.id == node.id }) {
                buckets[b].remove(at: i)
                buckets[b].append(node)
                return .refreshed
            }
            if prefixIsFull(for: node, inBucket: b) { return .rejectedDiversity }
            if buckets[b].count < settings.k {
                buckets[b].append(node)
                noteOccupancy(b)
                replacements[b].removeAll { $0.id == node.id }
                return .added
            }
            replacements[b].removeAll { $0.id == node.id }
            replacements[b].append(node)
            if replacements[b].count > settings.replacementCacheSize { replacements[b].removeFirst() }
            return .bucketFull(leastRecentlySeen: buckets[b][0])
        }

        /// True if `node` is not in the table and its bucket would take it now (room, and within
        /// the IP-prefix limit).
        public func hasRoom(for node: Node) -> Bool {
            guard let b = bucketIndex(for: node.id), !buckets[b].contains(where: { $0.id == node.id }),
                  buckets[b].count < settings.k else { return false }
            return !prefixIsFull(for: node, inBucket: b)
        }

        /// True if bucket `b` already holds as many nodes of `node`'s IP prefix as allowed.
        private func prefixIsFull(for node: Node, inBucket b: Int) -> Bool {
            guard let limit = settings.maxPerPrefixPerBucket, let p = prefix(of: node) else { return false }
            return buckets[b].filter { prefix(of: $0) == p }.count >= limit
        }

        /// Removes a node that failed to answer; the most recently seen replacement, if any, takes
        /// its place. Returns the replacement.
        @discardableResult
        public mutating func nodeFailed(_ id: PeerID) -> Node? {
            guard let b = bucketIndex(for: id), let i = buckets[b].firstIndex(where: { $0.id == id }) else { return nil }
            buckets[b].remove(at: i)
            defer { noteOccupancy(b) }
            guard let replacement = replacements[b].popLast() else { return nil }
            buckets[b].append(replacement)
            return replacement
        }

        /// Up to `count` nodes closest to `target` by XOR distance, nearest first.
        ///
        /// Walks buckets instead of sorting the table. Let D = target XOR local ID, with its
        /// highest set bit at p (the bucket `target` falls in). A node of bucket j has its
        /// distance to the local ID's highest bit at j, so its distance to the target is:
        /// below 2^p for j = p; in [2^j, 2^(j+1)) for j > p; in [2^p, 2^(p+1)) for j < p, where
        /// bit j of the distance is the complement of bit j of D, and higher bits equal D's. So
        /// the buckets in distance order are: p; then those j < p with D's bit j set, highest
        /// first; then those j < p with it clear, lowest first; then p+1, p+2, ... Each bucket
        /// is sorted on its own (at most k nodes), and the walk stops once `count` are collected.
        public func closest(to target: PeerID, count: Int) -> [Node] {
            guard count > 0 else { return [] }
            var out: [Node] = []
            out.reserveCapacity(count)
            func take(_ b: Int) {
                let bucket = buckets[b]
                guard !bucket.isEmpty, out.count < count else { return }
                if bucket.count == 1 { out.append(bucket[0]); return }
                var ranked = bucket.indices.map { Ranked(distance: bucket[$0].id.distance(to: target), index: $0) }
                ranked.sort { $0.distance < $1.distance }
                for r in ranked.prefix(count - out.count) { out.append(bucket[r.index]) }
            }
            // Occupied buckets as masks, word w covering buckets 64w..64w+63.
            func ascending(_ mask: (Int) -> UInt64) {
                for w in 0..<4 {
                    var m = occupied[w] & mask(w)
                    while m != 0 && out.count < count {
                        take(w * 64 + m.trailingZeroBitCount)
                        m &= m - 1
                    }
                }
            }
            guard let p = bucketIndex(for: target) else {
                // The target is the local ID: nearer buckets first, each one a distance band.
                ascending { _ in .max }
                return out
            }
            let d = localID.distance(to: target)
            let dw = [d.words.3, d.words.2, d.words.1, d.words.0]  // dw[w] holds bits 64w..64w+63
            func below(_ w: Int) -> UInt64 {  // buckets below p in word w
                if p >= (w + 1) * 64 { return .max }
                if p <= w * 64 { return 0 }
                return (1 << UInt64(p - w * 64)) - 1
            }
            func above(_ w: Int) -> UInt64 {  // buckets above p in word w
                if p < w * 64 { return .max }
                if p - w * 64 >= 63 { return 0 }
                return ~((1 << UInt64(p - w * 64 + 1)) - 1)
            }
            take(p)
            for w in stride(from: 3, through: 0, by: -1) {
                var m = occupied[w] & dw[w] & below(w)
                while m != 0 && out.count < count {
                    let top = 63 - m.leadingZeroBitCount
                    take(w * 64 + top)
                    m &= ~(1 << UInt64(top))
                }
            }
            ascending { w in ~dw[w] & below(w) }
            ascending(above)
            return out
        }

        private struct Ranked { var distance: PeerID; var index: Int }

        /// Indices of non-empty buckets not refreshed since `before` (their newest node is older).
        public func staleBuckets(before: UInt64) -> [Int] {
            buckets.indices.filter { !buckets[$0].isEmpty && buckets[$0].last!.lastSeen < before }
        }
    }
}
