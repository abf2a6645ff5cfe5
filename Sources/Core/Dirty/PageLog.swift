/// Pages collected one insert at a time and handed over whole — the PV ring's pending pages,
/// the VMM's own writes — as a `PageBitmap` plus the list of its words that are non-zero, so
/// that handing them over and emptying the log costs what was inserted, not the guest's size.
public struct PageLog: Sendable {
    private var bits: PageBitmap
    /// The words of `bits` that are non-zero, each once (in insertion order).
    private var touched: [Int] = []

    public init(pageCount: Int) { bits = PageBitmap(pageCount: pageCount) }

    public var pageCount: Int { bits.pageCount }
    public var isEmpty: Bool { touched.isEmpty }
    public func contains(_ index: Int) -> Bool { bits.contains(index) }

    /// Out-of-range indices are ignored, as `PageBitmap.insert` does.
    public mutating func insert(_ index: Int) {
        guard index >= 0, index < bits.pageCount else { return }
        if bits.words[index >> 6] == 0 { touched.append(index >> 6) }
        bits.insert(index)
    }

    /// Sets `count` pages from `start` (clipped to the log).
    public mutating func insert(range start: Int, count: Int) {
        for i in max(0, start)..<min(bits.pageCount, start + max(0, count)) { insert(i) }
    }

    /// ORs the logged pages into `target` (of the same page count) and empties the log.
    public mutating func drain(into target: inout PageBitmap) {
        precondition(target.pageCount == bits.pageCount, "a page log drains into a bitmap of its own size")
        for w in touched {
            target.words[w] |= bits.words[w]
            bits.words[w] = 0
        }
        touched.removeAll(keepingCapacity: true)
    }

    /// The logged pages as a fresh bitmap; empties the log.
    public mutating func take() -> PageBitmap {
        var out = PageBitmap(pageCount: bits.pageCount)
        drain(into: &out)
        return out
    }

    public mutating func removeAll() {
        for w in touched { bits.words[w] = 0 }
        touched.removeAll(keepingCapacity: true)
    }
}
