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
}
