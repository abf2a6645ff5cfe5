import Core
import Testing

/// `forEachIndex` (the final round's split into streams walks it inside the pause) visits
/// exactly the set pages, ascending, at word edges and at the bitmap's end too.
@Suite struct PageBitmapTests {
    @Test func forEachIndexVisitsEverySetPageInOrder() {
        var bitmap = PageBitmap(pageCount: 1000)
        let set = [0, 1, 63, 64, 65, 127, 128, 500, 998, 999]
        for i in set { bitmap.insert(i) }
        bitmap.insert(1000)  // out of range: ignored
        var visited: [Int] = []
        bitmap.forEachIndex { visited.append($0) }
        #expect(visited == set, "visited \(visited), expected \(set)")
        #expect(bitmap.indices == set)
        var none: [Int] = []
        PageBitmap(pageCount: 1000).forEachIndex { none.append($0) }
        #expect(none.isEmpty, "an empty bitmap visited \(none)")
        var all = 0
        PageBitmap.full(pageCount: 1000).forEachIndex { _ in all += 1 }
        #expect(all == 1000)
    }

    /// The spans `merge` returns (KVM_CLEAR_DIRTY_LOG gets only these) cover every non-zero
    /// word and no zero run as long as the gap, join shorter gaps, and are empty for no bits.
    @Test func mergeSpansCoverEverySetWordAndJoinShortGaps() {
        var words = [UInt64](repeating: 0, count: 100)
        for i in [3, 4, 6, 20, 99] { words[i] = 1 << UInt64(i % 64) }
        func spans(_ words: [UInt64], _ gap: Int) -> [Range<Int>] {
            var bitmap = PageBitmap(pageCount: words.count * 64)
            return bitmap.merge(words: words, atPage: 0, spansJoiningGapsBelow: gap)
        }
        #expect(spans(words, 1) == [3..<5, 6..<7, 20..<21, 99..<100])
        #expect(spans(words, 2) == [3..<7, 20..<21, 99..<100])
        #expect(spans(words, 14) == [3..<21, 99..<100])
        #expect(spans(words, 1000) == [3..<100])
        #expect(spans([UInt64](repeating: 0, count: 10), 4).isEmpty)
        #expect(spans([], 4).isEmpty)
    }

    /// `recycling` hands back an empty bitmap of the size asked for, leaves the spare empty,
    /// and never changes a bitmap that someone still holds (copy-on-write), whatever its size.
    @Test func recyclingGivesAnEmptyBitmapAndLeavesHeldCopiesAlone() {
        var spare = PageBitmap(pageCount: 200)
        spare.insert(5); spare.insert(199)
        let held = spare
        var reused = PageBitmap.recycling(&spare, pageCount: 200)
        #expect(reused.isEmpty && reused.pageCount == 200)
        #expect(spare.pageCount == 0)
        #expect(held.indices == [5, 199], "a held copy changed: \(held.indices)")
        reused.insert(7)
        #expect(held.indices == [5, 199])
        spare = reused
        let resized = PageBitmap.recycling(&spare, pageCount: 64)
        #expect(resized.pageCount == 64 && resized.isEmpty)
    }
}
