/// A binary min-heap: O(log n) push and pop of the smallest element. The simulated network's
/// event queue and a node's request deadlines both run on it.
public struct MinHeap<Element: Comparable> {
    private var items: [Element] = []

    /// An empty heap.
    public init() {}

    /// The smallest element, if any.
    public var min: Element? { items.first }
    /// How many elements it holds.
    public var count: Int { items.count }
    /// True when it holds nothing.
    public var isEmpty: Bool { items.isEmpty }

    /// Adds `element`.
    public mutating func push(_ element: Element) {
        items.append(element)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard items[i] < items[parent] else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    /// Removes and returns the smallest element.
    public mutating func pop() -> Element? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var m = i
            if l < items.count && items[l] < items[m] { m = l }
            if r < items.count && items[r] < items[m] { m = r }
            if m == i { break }
            items.swapAt(i, m)
            i = m
        }
        return top
    }
}

extension MinHeap: Sendable where Element: Sendable {}
