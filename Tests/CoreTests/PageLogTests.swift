import Core
import Testing

/// `PageLog` (the PV ring's pending pages, the VMM's writes): draining hands over exactly what
/// was inserted, ORed into the target, and leaves the log empty for the next epoch.
@Suite struct PageLogTests {
    @Test func drainHandsOverExactlyTheInsertedPagesAndEmptiesTheLog() {
        var log = PageLog(pageCount: 300)
        #expect(log.isEmpty)
        for i in [0, 1, 63, 64, 299, 1, -1, 300] { log.insert(i) }  // a repeat, and two out of range
        log.insert(range: 126, count: 4)
        #expect(log.contains(299) && !log.contains(300) && !log.isEmpty)
        var target = PageBitmap(pageCount: 300)
        target.insert(200)
        log.drain(into: &target)
        #expect(target.indices == [0, 1, 63, 64, 126, 127, 128, 129, 200, 299], "drained \(target.indices)")
        #expect(log.isEmpty && !log.contains(0) && !log.contains(299))
        // The next epoch starts empty: nothing of the last one comes back.
        log.insert(5)
        var next = PageBitmap(pageCount: 300)
        log.drain(into: &next)
        #expect(next.indices == [5])
        log.insert(70)
        log.removeAll()
        #expect(log.isEmpty && log.take().isEmpty)
        log.insert(9)
        #expect(log.take().indices == [9] && log.isEmpty)
    }
}
