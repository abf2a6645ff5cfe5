/// One bit per page of guest RAM, indexed by *RAM page index*: pages of region 0 first,
/// then region 1, … (`GuestMemory.pageIndex(of:)` maps a frame to it). Out-of-range
/// indices are ignored on insert and read as absent, so a bad frame can never trap.
///
/// Passes follow the set, not the guest's size: a summary holds one bit per *block* of 8
/// words (512 pages, one 64-byte cache line), and every pass — emptying, union, subtract,
/// count, isEmpty, isSubset, iteration, == — visits only the blocks flagged there. At 9 GiB
/// the bitmap is 36,864 words and the summary 72, so a harvest's ~200 dirty pages cost the
/// 72 words and a few cache lines instead of 288 KiB per pass (docs/benchmarks.md "A bitmap
/// whose passes follow the set"). Invariant: a block whose summary bit is clear is all zero,
/// and no summary bit past the last block is set. A set bit may be conservative (`remove`
/// leaves it; `subtract` and `removeAll` tighten it). `words` is read-only from outside so
/// that nothing can set a bit behind the summary's back.
public struct PageBitmap: Sendable {
    public private(set) var words: [UInt64]
    /// Bit `b % 64` of word `b / 64`: block `b` (words `8b ..< 8b + 8`) may hold a set bit.
    private var summary: [UInt64]
    public let pageCount: Int

    /// Words per summary bit.
    static let blockWords = 8

    public init(pageCount: Int) {
        self.pageCount = pageCount
        words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
        summary = [UInt64](repeating: 0, count: Self.summaryCount(wordCount: words.count))
    }

    /// The bitmap of `words` (LSB first, page 0 = bit 0 of word 0): the words that fit,
    /// padded with zeros. Bits past `pageCount` are cleared. One pass builds the summary.
    public init(pageCount: Int, words bits: [UInt64]) {
        self.init(pageCount: pageCount)
        merge(words: bits, atPage: 0)
    }

    /// An empty bitmap of `pageCount` pages made from `spare`'s storage, which is left empty
    /// (0 pages): no allocation, and no first touch of fresh pages, when nothing else still
    /// holds `spare` — a harvest's buffer that its caller has let go of. Copy-on-write keeps
    /// it correct when something does: then this allocates, as a fresh bitmap would.
    /// Emptying it visits only the blocks its summary flags.
    public static func recycling(_ spare: inout PageBitmap, pageCount: Int) -> PageBitmap {
        var bitmap = spare
        spare = PageBitmap(pageCount: 0)
        guard bitmap.pageCount == pageCount else { return PageBitmap(pageCount: pageCount) }
        bitmap.removeAll()
        return bitmap
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
        flag(word: index >> 6)
    }

    public mutating func remove(_ index: Int) {
        guard index >= 0, index < pageCount else { return }
        words[index >> 6] &= ~(1 << UInt64(index & 63))
    }

    /// Sets `count` pages from `start` (clipped to the bitmap), a word at a time.
    public mutating func insert(range start: Int, count: Int) {
        var p = clip(start: start, count: count)
        while p.lowerBound < p.upperBound {
            let (w, mask) = Self.nextWordMask(&p)
            words[w] |= mask
            flag(word: w)
        }
    }

    public mutating func remove(range start: Int, count: Int) {
        var p = clip(start: start, count: count)
        while p.lowerBound < p.upperBound {
            let (w, mask) = Self.nextWordMask(&p)
            words[w] &= ~mask
        }
    }

    public mutating func insertAll() {
        for i in words.indices { words[i] = ~0 }
        trimTail()
        let blocks = Self.blockCount(wordCount: words.count)
        for s in summary.indices { summary[s] = s < blocks / 64 ? ~0 : (1 << UInt64(blocks % 64)) - 1 }
    }

    // The mutating passes below walk the flags with plain loops, not closures: a closure that
    // captures `self` inout makes every access to `words` a dynamic exclusivity check.

    public mutating func removeAll() {
        for s in summary.indices where summary[s] != 0 {
            var flags = summary[s]
            while flags != 0 {
                for w in blockWords(Self.nextBlock(&flags, s)) { words[w] = 0 }
            }
            summary[s] = 0
        }
    }

    /// ORs `bits` (LSB first, page 0 = bit 0 of word 0) into the bitmap starting at page `offset`.
    /// `offset` must be a multiple of 64 (memory regions are 2 MiB-aligned, so they are).
    public mutating func merge(words bits: [UInt64], atPage offset: Int) {
        _ = merge(words: bits, atPage: offset, spansJoiningGapsBelow: nil)
    }

    /// The same, and — with a `gap` — in the same pass the spans of `bits` (word ranges,
    /// ascending) that hold every non-zero word of `bits`; two spans closer than `gap` zero
    /// words are one (walking a short run of zeros is cheaper than another call on the span,
    /// e.g. another KVM_CLEAR_DIRTY_LOG). The one full pass a harvest of KVM's per-slot bitmap
    /// cannot avoid: it tests 8 words at once and writes only the non-zero ones.
    public mutating func merge(words bits: [UInt64], atPage offset: Int,
                               spansJoiningGapsBelow gap: Int?) -> [Range<Int>] {
        precondition(offset >= 0 && offset % 64 == 0, "merge offset must be word-aligned")
        let base = offset / 64
        let fitting = max(0, min(bits.count, words.count - base))  // words of `bits` inside the bitmap
        let scanned = gap == nil ? fitting : bits.count  // spans describe all of `bits`
        var spans: [Range<Int>] = []
        // Sound: every index below is checked against its buffer's count (`i < scanned ≤ src.count`,
        // `k < fitting` ⇒ `base + k < dst.count`, `t >> 9 < sum.count` as `t < dst.count`); the
        // three buffers are distinct arrays (`words`, `summary`, the caller's `bits`).
        bits.withUnsafeBufferPointer { src in
            words.withUnsafeMutableBufferPointer { dst in
                summary.withUnsafeMutableBufferPointer { sum in
                    var i = 0
                    while i < scanned {
                        let end = min(i + Self.blockWords, scanned)
                        var any: UInt64 = 0
                        for k in i..<end { any |= src[k] }
                        if any != 0 {
                            for k in i..<end where src[k] != 0 {
                                if k < fitting {
                                    let t = base + k
                                    dst[t] |= src[k]
                                    sum[t >> 9] |= 1 << UInt64((t >> 3) & 63)
                                }
                                guard let gap else { continue }
                                if let last = spans.last, k - last.upperBound < gap {
                                    spans[spans.count - 1] = last.lowerBound..<(k + 1)
                                } else {
                                    spans.append(k..<(k + 1))
                                }
                            }
                        }
                        i = end
                    }
                }
            }
        }
        trimTail()
        return spans
    }

    public mutating func formUnion(_ other: PageBitmap) {
        let n = min(words.count, other.words.count)
        for s in 0..<min(summary.count, other.summary.count) where other.summary[s] != 0 {
            var flags = other.summary[s], found: UInt64 = 0
            while flags != 0 {
                let b = Self.nextBlock(&flags, s), first = b * Self.blockWords
                var any: UInt64 = 0
                for w in first..<max(first, min(n, first + Self.blockWords)) {
                    words[w] |= other.words[w]
                    any |= other.words[w]
                }
                if any != 0 { found |= 1 << UInt64(b & 63) }
            }
            summary[s] |= found
        }
        if other.pageCount > pageCount { trimTail() }  // the pages past ours are not ours
    }

    /// Visits the blocks flagged in both; a block it empties loses its flag.
    public mutating func subtract(_ other: PageBitmap) {
        let n = min(words.count, other.words.count)
        for s in 0..<min(summary.count, other.summary.count) where summary[s] & other.summary[s] != 0 {
            var flags = summary[s] & other.summary[s], emptied: UInt64 = 0
            while flags != 0 {
                let b = Self.nextBlock(&flags, s)
                var left: UInt64 = 0
                for w in blockWords(b) {
                    if w < n { words[w] &= ~other.words[w] }
                    left |= words[w]
                }
                if left == 0 { emptied |= 1 << UInt64(b & 63) }
            }
            summary[s] &= ~emptied
        }
    }

    public func union(_ other: PageBitmap) -> PageBitmap { var r = self; r.formUnion(other); return r }
    public func subtracting(_ other: PageBitmap) -> PageBitmap { var r = self; r.subtract(other); return r }

    /// True when every page set here is set in `other`.
    public func isSubset(of other: PageBitmap) -> Bool {
        var subset = true
        forEachFlaggedBlock { b in
            for w in blockWords(b) where words[w] & ~(w < other.words.count ? other.words[w] : 0) != 0 {
                subset = false
            }
        }
        return subset
    }

    public var count: Int {
        var n = 0
        forEachFlaggedBlock { b in for w in blockWords(b) { n += words[w].nonzeroBitCount } }
        return n
    }

    public var isEmpty: Bool {
        var any: UInt64 = 0
        forEachFlaggedBlock { b in for w in blockWords(b) { any |= words[w] } }
        return any == 0
    }

    /// Indices of set pages, ascending.
    public var indices: [Int] {
        var out: [Int] = []
        out.reserveCapacity(count)
        forEachIndex { out.append($0) }
        return out
    }

    /// Calls `body` with each set page's index, ascending: the summary's words and the
    /// flagged blocks only, no array (walked inside the pause for the final round).
    public func forEachIndex(_ body: (Int) -> Void) {
        forEachFlaggedBlock { b in
            for wi in blockWords(b) where words[wi] != 0 {
                var word = words[wi]
                while word != 0 {
                    body(wi * 64 + word.trailingZeroBitCount)
                    word &= word - 1
                }
            }
        }
    }

    /// True when the summary flags every block that holds a set bit and nothing past the
    /// last block: the invariant every pass relies on (checked by the tests).
    var summaryIsSound: Bool {
        let blocks = Self.blockCount(wordCount: words.count)
        for b in 0..<(summary.count * 64) where summary[b >> 6] & (1 << UInt64(b & 63)) == 0 {
            if b >= blocks { continue }
            if blockWords(b).contains(where: { words[$0] != 0 }) { return false }
        }
        for b in blocks..<(summary.count * 64) where summary[b >> 6] & (1 << UInt64(b & 63)) != 0 { return false }
        return summary.count == Self.summaryCount(wordCount: words.count)
    }

    // MARK: - Blocks

    private static func blockCount(wordCount: Int) -> Int { (wordCount + blockWords - 1) / blockWords }
    private static func summaryCount(wordCount: Int) -> Int { (blockCount(wordCount: wordCount) + 63) / 64 }

    /// The words of block `b` (the last block may be short).
    private func blockWords(_ b: Int) -> Range<Int> {
        b * Self.blockWords..<min(words.count, (b + 1) * Self.blockWords)
    }

    private mutating func flag(word w: Int) { summary[w >> 9] |= 1 << UInt64((w >> 3) & 63) }

    /// The lowest block flagged in `flags` (summary word `s`), which it clears from `flags`.
    @inline(__always)
    private static func nextBlock(_ flags: inout UInt64, _ s: Int) -> Int {
        let b = s * 64 + flags.trailingZeroBitCount
        flags &= flags - 1
        return b
    }

    /// Calls `body` with each block flagged in `flags`, summary word `s`, ascending.
    @inline(__always)
    private static func forEachBlock(flags: UInt64, summaryWord s: Int, _ body: (Int) -> Void) {
        var bits = flags
        while bits != 0 { body(nextBlock(&bits, s)) }
    }

    @inline(__always)
    private func forEachFlaggedBlock(_ body: (Int) -> Void) {
        for s in summary.indices where summary[s] != 0 { Self.forEachBlock(flags: summary[s], summaryWord: s, body) }
    }

    /// The pages `start ..< start + count` clipped to the bitmap (no overflow).
    private func clip(start: Int, count: Int) -> Range<Int> {
        let lo = max(0, start)
        let hi = count <= 0 ? lo : (start > pageCount - count ? pageCount : start + count)
        return lo..<max(lo, hi)
    }

    /// The word holding `pages`' first page and the mask of `pages` in it; drops those pages.
    @inline(__always)
    private static func nextWordMask(_ pages: inout Range<Int>) -> (word: Int, mask: UInt64) {
        let p = pages.lowerBound, bit = p & 63, n = min(64 - bit, pages.upperBound - p)
        pages = (p + n)..<pages.upperBound
        return (p >> 6, (n == 64 ? ~0 : (1 << UInt64(n)) - 1) << UInt64(bit))
    }

    private mutating func trimTail() {
        let extra = words.count * 64 - pageCount
        if extra > 0, !words.isEmpty { words[words.count - 1] &= ~UInt64(0) >> UInt64(extra) }
    }
}

extension PageBitmap: Equatable {
    /// Same pages, same size; compares only the blocks either summary flags (the rest are zero
    /// in both), whatever conservative bits either holds.
    public static func == (a: PageBitmap, b: PageBitmap) -> Bool {
        guard a.pageCount == b.pageCount else { return false }
        for s in a.summary.indices where a.summary[s] | b.summary[s] != 0 {
            var same = true
            forEachBlock(flags: a.summary[s] | b.summary[s], summaryWord: s) { block in
                for w in a.blockWords(block) where a.words[w] != b.words[w] { same = false }
            }
            if !same { return false }
        }
        return true
    }
}
