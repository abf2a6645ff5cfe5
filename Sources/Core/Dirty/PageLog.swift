/// Pages collected one insert at a time and handed over whole — the PV ring's pending pages,
/// the VMM's own writes. Handing them over and emptying the log visit only the blocks the
/// bitmap's summary flags (`PageBitmap`), so they cost what was inserted, not the guest's size.
public struct PageLog: Sendable {
    private var bits: PageBitmap

    public init(pageCount: Int) { bits = PageBitmap(pageCount: pageCount) }

    public var pageCount: Int { bits.pageCount }
    public var isEmpty: Bool { bits.isEmpty }
    public func contains(_ index: Int) -> Bool { bits.contains(index) }

    /// Out-of-range indices are ignored, as `PageBitmap.insert` does.
    public mutating func insert(_ index: Int) { bits.insert(index) }

    /// Sets `count` pages from `start` (clipped to the log).
    public mutating func insert(range start: Int, count: Int) { bits.insert(range: start, count: count) }

    /// ORs the logged pages into `target` (of the same page count) and empties the log.
    public mutating func drain(into target: inout PageBitmap) {
        precondition(target.pageCount == bits.pageCount, "a page log drains into a bitmap of its own size")
        target.formUnion(bits)
        bits.removeAll()
    }

    /// The logged pages as a fresh bitmap; empties the log.
    public mutating func take() -> PageBitmap {
        var out = PageBitmap(pageCount: bits.pageCount)
        drain(into: &out)
        return out
    }

    public mutating func removeAll() { bits.removeAll() }
}
