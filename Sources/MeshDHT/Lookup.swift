import MeshCore

extension Kademlia {
    /// One iterative lookup for the k nodes closest to a target, as a pure state machine.
    ///
    /// The caller sends a FIND_NODE to each node `next()` returns, and reports each answer with
    /// `responded(_:closer:)` or each timeout with `failed(_:)`. At most `alpha` requests are in
    /// flight. The lookup ends when the k closest nodes it knows have all answered, or when
    /// nothing is left to ask; `result` then holds the closest nodes that answered.
    public struct Lookup: Sendable {
        /// What is being looked up.
        public let target: PeerID
        /// The tunables.
        public let settings: Settings
        /// How many of the closest known nodes must answer before the lookup ends (k by default).
        public let width: Int
        private var candidates: [Candidate] = []  // sorted by distance to the target, nearest first
        private var known: Set<PeerID> = []
        private var inFlight = 0
        /// Requests sent so far.
        public private(set) var requestsSent = 0
        /// The longest chain of answers that led to a node (1 for the starting nodes).
        public private(set) var hops = 0

        private enum State: Sendable, Equatable { case waiting, asked, answered, failed }
        private struct Candidate: Sendable {
            var node: Node
            var distance: PeerID
            var state: State
            var depth: Int
        }

        /// Starts a lookup from the nodes the routing table knows (typically its k closest);
        /// `width` (1 to k, default k) is how many of the closest must answer before it ends.
        public init(target: PeerID, seeds: [Node], settings: Settings = Settings(), width: Int? = nil) {
            self.target = target
            self.settings = settings
            self.width = min(max(1, width ?? settings.k), settings.k)
            add(seeds, depth: 1)
        }

        private mutating func add(_ nodes: [Node], depth: Int) {
            for node in nodes where known.insert(node.id).inserted {
                let d = node.id.distance(to: target)
                // Binary search for the insertion point.
                var lo = 0, hi = candidates.count
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if candidates[mid].distance < d { lo = mid + 1 } else { hi = mid }
                }
                let i = lo
                candidates.insert(Candidate(node: node, distance: d, state: .waiting, depth: depth), at: i)
            }
        }

        /// The nodes to ask now (marks them asked); empty while `alpha` requests are in flight or
        /// when the lookup is finished.
        public mutating func next() -> [Node] {
            guard !isFinished else { return [] }
            var out: [Node] = []
            // Only the `width` closest not-failed candidates are worth asking.
            var considered = 0
            for i in candidates.indices where candidates[i].state != .failed {
                considered += 1
                if considered > width || inFlight >= settings.alpha { break }
                if candidates[i].state == .waiting {
                    candidates[i].state = .asked
                    inFlight += 1
                    requestsSent += 1
                    out.append(candidates[i].node)
                }
            }
            return out
        }

        /// Records `id`'s answer, with the nodes it reported closer to the target.
        public mutating func responded(_ id: PeerID, closer: [Node]) {
            guard let i = candidates.firstIndex(where: { $0.node.id == id && $0.state == .asked }) else { return }
            candidates[i].state = .answered
            inFlight -= 1
            let depth = candidates[i].depth
            hops = max(hops, depth)
            add(closer.filter { $0.id != id }, depth: depth + 1)
        }

        /// Records that `id` did not answer in time.
        public mutating func failed(_ id: PeerID) {
            guard let i = candidates.firstIndex(where: { $0.node.id == id && $0.state == .asked }) else { return }
            candidates[i].state = .failed
            inFlight -= 1
        }

        /// True when the `width` closest known (not failed) nodes have all answered, or nothing is left to ask.
        public var isFinished: Bool {
            var considered = 0
            var pending = false
            for c in candidates where c.state != .failed {
                considered += 1
                if considered > width { break }
                if c.state != .answered { pending = true; break }
            }
            return !pending || (inFlight == 0 && !candidates.contains { $0.state == .waiting })
        }

        /// The closest nodes that answered, nearest first (at most `width`).
        public var result: [Node] {
            Array(candidates.filter { $0.state == .answered }.prefix(width).map(\.node))
        }
    }
}
