/// One bit per page of guest RAM, indexed by *RAM page index*: pages of region 0 first,
/// then region 1, … (`GuestMemory.pageIndex(of:)` maps a frame to it). Out-of-range
/// indices are ignored on insert and read as absent, so a bad frame can never trap.
public struct PageBitmap: Equatable, Sendable {
    public internal(set) var words: [UInt64]
    public let pageCount: Int

    public init(pageCount: Int) {
        self.pageCount = pageCount
        words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    }

    /// The bitmap of `words` (LSB first, page 0 = bit 0 of word 0), taken as they are — no
    /// per-word work — when there are exactly as many as `pageCount` needs; otherwise the
    /// words that fit. Bits past `pageCount` are cleared.
    public init(pageCount: Int, words bits: [UInt64]) {
        self.pageCount = pageCount
        let needed = (pageCount + 63) / 64
        if bits.count == needed {
            words = bits
        } else {
            words = Array(bits.prefix(needed)) + [UInt64](repeating: 0, count: max(0, needed - bits.count))
        }
        trimTail()
    }

    /// An empty bitmap of `pageCount` pages made from `spare`'s storage, which is left empty
    /// (0 pages): no allocation, and no first touch of fresh pages, when nothing else still
    /// holds `spare` — a harvest's buffer that its caller has let go of. Copy-on-write keeps
    /// it correct when something does: then this allocates, as a fresh bitmap would.
    public static func recycling(_ spare: inout PageBitmap, pageCount: Int) -> PageBitmap {
        var bitmap = spare
        spare = PageBitmap(pageCount: 0)
        guard bitmap.pageCount == pageCount else { return PageBitmap(pageCount: pageCount) }
        bitmap.removeAll()
        return bitmap
    }

    /// The spans of `words` that hold every non-zero word, as word ranges, ascending; two
    /// spans closer than `gap` zero words are one (walking a short run of zeros is cheaper
    /// than another call on the span, e.g. another KVM_CLEAR_DIRTY_LOG).
    public static func nonZeroSpans(of words: [UInt64], joiningGapsBelow gap: Int) -> [Range<Int>] {
        var spans: [Range<Int>] = []
        for i in words.indices where words[i] != 0 {
            if let last = spans.last, i - last.upperBound < gap {
                spans[spans.count - 1] = last.lowerBound..<(i + 1)
            } else {
                spans.append(i..<(i + 1))
            }
        }
        return spans
    }

    public static func full(pageCount: Int) -> PageBitmap {
        var b = PageBitmap(pageCount: pageCount)
        b.insertAll()
        return b
    }

    public func contains(_ index: Int) -> Bool {
        guard index >= 0, index < pageCount else { return false }
        return words[index >> 6] & (1 << UInt64(index & 63)) != 0
    }

    public mutating func insert(_ index: Int) {
        guard index >= 0, index < pageCount else { return }
        words[index >> 6] |= 1 << UInt64(index & 63)
    }

    public mutating func remove(_ index: Int) {
        guard index >= 0, index < pageCount else { return }
        words[index >> 6] &= ~(1 << UInt64(index & 63))
    }

    /// Sets `count` pages from `start` (clipped to the bitmap).
    public mutating func insert(range start: Int, count: Int) {
        for i in max(0, start)..<min(pageCount, start + max(0, count)) { insert(i) }
    }

    public mutating func remove(range start: Int, count: Int) {
        for i in max(0, start)..<min(pageCount, start + max(0, count)) { remove(i) }
    }

    public mutating func insertAll() {
        for i in words.indices { words[i] = ~0 }
        trimTail()
    }

    public mutating func removeAll() {
        for i in words.indices { words[i] = 0 }
    }

    /// ORs `bits` (LSB first, page 0 = bit 0 of word 0) into the bitmap starting at page `offset`.
    /// `offset` must be a multiple of 64 (memory regions are 2 MiB-aligned, so they are).
    public mutating func merge(words bits: [UInt64], atPage offset: Int) {
        precondition(offset % 64 == 0, "merge offset must be word-aligned")
        let base = offset / 64
        for (i, w) in bits.enumerated() where base + i < words.count { words[base + i] |= w }
        trimTail()
    }

    public mutating func formUnion(_ other: PageBitmap) {
        for i in 0..<min(words.count, other.words.count) { words[i] |= other.words[i] }
    }

    public mutating func subtract(_ other: PageBitmap) {
        for i in 0..<min(words.count, other.words.count) { words[i] &= ~other.words[i] }
    }

    public func union(_ other: PageBitmap) -> PageBitmap { var r = self; r.formUnion(other); return r }
    public func subtracting(_ other: PageBitmap) -> PageBitmap { var r = self; r.subtract(other); return r }

    /// True when every page set here is set in `other`.
    public func isSubset(of other: PageBitmap) -> Bool {
        for i in words.indices where words[i] & ~(i < other.words.count ? other.words[i] : 0) != 0 { return false }
        return true
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }
    public var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

    /// Indices of set pages, ascending.
    public var indices: [Int] {
        var out: [Int] = []
        out.reserveCapacity(count)
        forEachIndex { out.append($0) }
        return out
    }

    /// Calls `body` with each set page's index, ascending: one pass over the words, no array
    /// (a 9 GiB guest's bitmap is 36 Ki words, walked inside the pause for the final round).
    public func forEachIndex(_ body: (Int) -> Void) {
        words.withUnsafeBufferPointer { words in
            for wi in words.indices where words[wi] != 0 {
                var word = words[wi]
                while word != 0 {
                    body(wi * 64 + word.trailingZeroBitCount)
                    word &= word - 1
                }
            }
        }
    }

    private mutating func trimTail() {
        let extra = words.count * 64 - pageCount
        if extra > 0, !words.isEmpty { words[words.count - 1] &= ~UInt64(0) >> UInt64(extra) }
    }
}
