/// A bounded least-recently-used cache: O(1) lookup, insert and eviction.
public struct LRUCache<Key: Hashable, Value> {
    struct Node {
        var key: Key
        var value: Value
        var prev: Int
        var next: Int
    }

    /// The most entries kept; inserting beyond it evicts the least recently used.
    public let capacity: Int
    private var index: [Key: Int] = [:]
    private var nodes: [Node] = []
    private var head = -1  // most recent
    private var tail = -1  // least recent

    /// Makes an empty cache holding at most `capacity` entries.
    public init(capacity: Int) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// The number of entries.
    public var count: Int { index.count }

    /// The value for `key`, marking it most recently used.
    public mutating func value(for key: Key) -> Value? {
        guard let i = index[key] else { return nil }
        moveToFront(i)
        return nodes[i].value
    }

    /// The value for `key` without touching its recency.
    public func peek(_ key: Key) -> Value? { index[key].map { nodes[$0].value } }

    /// Inserts or replaces `value` for `key`; returns the evicted entry, if any.
    @discardableResult
    public mutating func insert(_ value: Value, for key: Key) -> (key: Key, value: Value)? {
        if let i = index[key] {
            nodes[i].value = value
            moveToFront(i)
            return nil
        }
        if nodes.count < capacity {
            nodes.append(Node(key: key, value: value, prev: -1, next: head))
            let i = nodes.count - 1
            link(i)
            index[key] = i
            return nil
        }
        // Reuse the least recently used slot.
        let i = tail
        let evicted = (nodes[i].key, nodes[i].value)
        unlink(i)
        index[evicted.0] = nil
        nodes[i] = Node(key: key, value: value, prev: -1, next: -1)
        link(i)
        index[key] = i
        return evicted
    }

    private mutating func unlink(_ i: Int) {
        let (p, n) = (nodes[i].prev, nodes[i].next)
        if p >= 0 { nodes[p].next = n } else { head = n }
        if n >= 0 { nodes[n].prev = p } else { tail = p }
    }

    private mutating func link(_ i: Int) {
        nodes[i].prev = -1
        nodes[i].next = head
        if head >= 0 { nodes[head].prev = i }
        head = i
        if tail < 0 { tail = i }
    }

    private mutating func moveToFront(_ i: Int) {
        guard head != i else { return }
        unlink(i)
        link(i)
    }
}

/// A cache of sendable keys and values is itself a plain value, safe to send.
extension LRUCache: Sendable where Key: Sendable, Value: Sendable {}
extension LRUCache.Node: Sendable where Key: Sendable, Value: Sendable {}
