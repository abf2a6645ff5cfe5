import Testing

@testable import Core
import TestSupport

/// `PageBitmap`'s passes visit only the blocks its summary flags. These tests hold it to a plain
/// model (an array of booleans) over random operation sequences at many sizes — 0 and 1 pages,
/// sizes that are not a multiple of 64 or of 512 — and check the summary's invariant (a clear
/// bit means an all-zero block) after every operation.
@Suite struct PageBitmapSummaryTests {
    static let sizes = [0, 1, 2, 63, 64, 65, 511, 512, 513, 1000, 4095, 4096, 4097, 32_769, 70_001]

    @Test(arguments: sizes)
    func everyOperationKeepsTheSummarySoundAndAgreesWithAPlainModel(pageCount: Int) {
        var rng = SeededGenerator(seed: 0x5EED &+ UInt64(pageCount))
        var bitmap = PageBitmap(pageCount: pageCount)
        var model = [Bool](repeating: false, count: pageCount)
        var spare = PageBitmap(pageCount: pageCount)
        for step in 0..<300 {
            let op = Int.random(in: 0..<14, using: &rng)
            switch op {
            case 0, 1:
                let i = Int.random(in: -3..<(pageCount + 3), using: &rng)
                bitmap.insert(i)
                if i >= 0, i < pageCount { model[i] = true }
            case 2, 3:  // removes leave conservative flags behind
                let i = model.indices.filter { model[$0] }.randomElement(using: &rng) ?? 0
                bitmap.remove(i)
                if i < pageCount { model[i] = false }
            case 4, 5:
                let (start, count) = randomRange(pageCount, &rng)
                let insert = op == 4
                if insert { bitmap.insert(range: start, count: count) } else { bitmap.remove(range: start, count: count) }
                for i in max(0, start)..<max(max(0, start), min(pageCount, start + count)) { model[i] = insert }
            case 6:
                let offset = 64 * Int.random(in: 0...(pageCount / 64 + 1), using: &rng)
                let bits = randomWords(Int.random(in: 0...40, using: &rng), &rng)
                bitmap.merge(words: bits, atPage: offset)
                for (w, word) in bits.enumerated() {
                    for b in 0..<64 where word & (1 << UInt64(b)) != 0 {
                        let i = offset + w * 64 + b
                        if i < pageCount { model[i] = true }
                    }
                }
            case 7, 8:  // the other operand of another size, sometimes, and with conservative flags
                let otherCount = Bool.random(using: &rng) ? pageCount : Int.random(in: 0...(pageCount + 600), using: &rng)
                let (other, otherModel) = randomBitmap(otherCount, &rng)
                if op == 7 { bitmap.formUnion(other) } else { bitmap.subtract(other) }
                for i in 0..<min(pageCount, otherCount) where otherModel[i] { model[i] = op == 7 }
            case 9:
                spare = bitmap
                bitmap = PageBitmap.recycling(&spare, pageCount: pageCount)
                model = [Bool](repeating: false, count: pageCount)
            case 10 where step % 50 == 0:
                bitmap.insertAll()
                model = [Bool](repeating: true, count: pageCount)
            case 11 where step % 10 == 0:
                bitmap.removeAll()
                model = [Bool](repeating: false, count: pageCount)
            case 12:  // taken from words as the wire and snapshots give them: too few or too many
                let bits = randomWords(Int.random(in: 0...((pageCount + 63) / 64 + 3), using: &rng), &rng)
                bitmap = PageBitmap(pageCount: pageCount, words: bits)
                model = (0..<pageCount).map { $0 / 64 < bits.count && bits[$0 / 64] & (1 << UInt64($0 % 64)) != 0 }
            default:
                bitmap = bitmap.union(PageBitmap(pageCount: pageCount)).subtracting(PageBitmap(pageCount: pageCount))
            }
            expectAgrees(bitmap, model, "\(pageCount) pages, step \(step), operation \(op)")
        }
    }

    /// Two bitmaps with the same pages are equal whatever conservative flags either holds, and
    /// a page set in a block only one of them flags makes them differ.
    @Test func equalityComparesPagesNotFlags() {
        var a = PageBitmap(pageCount: 5000), b = PageBitmap(pageCount: 5000)
        a.insert(4000); a.remove(4000)  // a flags block 7 (pages 3584..<4096), empty
        a.insert(10); b.insert(10)
        #expect(a == b && b == a)
        b.insert(4001)
        #expect(a != b && b != a)
        a.insert(4001)
        #expect(a == b)
        #expect(PageBitmap(pageCount: 0) == PageBitmap(pageCount: 0))
        #expect(PageBitmap(pageCount: 64) != PageBitmap(pageCount: 65))
    }

    /// Subtracting visits the blocks both sides flag: right when either side's flags are
    /// conservative (blocks flagged but empty), and the blocks it empties lose their flags.
    @Test func subtractIsExactWhenEitherSideHoldsConservativeFlags() {
        var a = PageBitmap(pageCount: 2048), b = PageBitmap(pageCount: 2048)
        for i in [0, 600, 1100, 2047] { a.insert(i) }
        a.insert(1600); a.remove(1600)  // a: block 3 flagged, empty
        b.insert(1700); b.remove(1700)  // b: block 3 flagged, empty
        b.insert(601); b.remove(601)  // b: block 1 flagged, empty; a has 600 there
        b.insert(1100); b.insert(2047)
        let left = a.subtracting(b)
        #expect(left.indices == [0, 600] && left.summaryIsSound && left.count == 2)
        #expect(a.subtracting(a).isEmpty && a.subtracting(a).summaryIsSound)
        #expect(b.subtracting(a).indices == [] && b.subtracting(a).summaryIsSound)
    }

    /// A recycled bitmap is empty even when its spare held pages in many blocks (and flagged
    /// blocks it had emptied), and no page of the spare comes back later.
    @Test func recyclingEmptiesEveryBlockTheSpareFlagged() {
        var spare = PageBitmap(pageCount: 40_000)
        for i in stride(from: 3, to: 40_000, by: 997) { spare.insert(i) }
        spare.insert(20_000); spare.remove(20_000)
        var reused = PageBitmap.recycling(&spare, pageCount: 40_000)
        #expect(reused.isEmpty && reused.count == 0 && reused.summaryIsSound)
        reused.insert(39_999)
        #expect(reused.indices == [39_999] && reused.summaryIsSound)
        var full = PageBitmap.full(pageCount: 40_000)
        let empty = PageBitmap.recycling(&full, pageCount: 40_000)
        #expect(empty == PageBitmap(pageCount: 40_000) && empty.words.allSatisfy { $0 == 0 })
    }

    /// The spans `merge` returns (KVM_CLEAR_DIRTY_LOG re-arms only these) are those of the
    /// previous separate pass over KVM's words, for random words and gaps, whatever the offset
    /// and even where `bits` reaches past the bitmap; the merge ORs exactly those words in.
    @Test func mergeSpansAreThoseOfTheSeparatePass() {
        var rng = SeededGenerator(seed: 11)
        for trial in 0..<300 {
            let count = [0, 1, 7, 8, 9, 100, 513, 4096][trial % 8]
            let words = randomWords(count, &rng, density: [0.0, 0.01, 0.2, 1.0][trial % 4])
            let gap = [1, 2, 7, 8, 9, 64, 512, 5000][(trial / 8) % 8]
            let pageCount = Int.random(in: 0...(count * 64 + 200), using: &rng)
            let offset = 64 * Int.random(in: 0...2, using: &rng)
            var bitmap = PageBitmap(pageCount: pageCount)
            bitmap.insert(pageCount - 1)
            var model = (0..<pageCount).map { $0 == pageCount - 1 }
            let spans = bitmap.merge(words: words, atPage: offset, spansJoiningGapsBelow: gap)
            #expect(spans == separatePassSpans(of: words, joiningGapsBelow: gap), "trial \(trial)")
            for (w, word) in words.enumerated() {
                for b in 0..<64 where word & (1 << UInt64(b)) != 0 && offset + w * 64 + b < pageCount {
                    model[offset + w * 64 + b] = true
                }
            }
            expectAgrees(bitmap, model, "trial \(trial)")
        }
    }

    // MARK: - Helpers

    private func expectAgrees(_ bitmap: PageBitmap, _ model: [Bool], _ context: String,
                              sourceLocation: SourceLocation = #_sourceLocation) {
        let expected = model.indices.filter { model[$0] }
        #expect(bitmap.summaryIsSound, "summary unsound: \(context)", sourceLocation: sourceLocation)
        #expect(bitmap.indices == expected, "pages differ: \(context)", sourceLocation: sourceLocation)
        #expect(bitmap.count == expected.count && bitmap.isEmpty == expected.isEmpty,
                "count/isEmpty: \(context)", sourceLocation: sourceLocation)
        var words = [UInt64](repeating: 0, count: (model.count + 63) / 64)
        for i in expected { words[i / 64] |= 1 << UInt64(i % 64) }
        #expect(bitmap.words == words, "words (or bits past the end): \(context)", sourceLocation: sourceLocation)
        let plain = PageBitmap(pageCount: model.count, words: words)
        #expect(bitmap == plain && bitmap.isSubset(of: plain) && plain.isSubset(of: bitmap),
                "== / isSubset: \(context)", sourceLocation: sourceLocation)
        if let last = expected.last {
            var less = plain
            less.remove(last)
            #expect(!bitmap.isSubset(of: less) && bitmap != less, "a missing page: \(context)", sourceLocation: sourceLocation)
        }
    }

    /// A bitmap of random pages and ranges, some removed again (leaving conservative flags).
    private func randomBitmap(_ pageCount: Int, _ rng: inout SeededGenerator) -> (PageBitmap, [Bool]) {
        var bitmap = PageBitmap(pageCount: pageCount)
        var model = [Bool](repeating: false, count: pageCount)
        guard pageCount > 0 else { return (bitmap, model) }
        for _ in 0..<Int.random(in: 0...12, using: &rng) {
            let (start, count) = randomRange(pageCount, &rng)
            let insert = Int.random(in: 0..<3, using: &rng) != 0
            if insert { bitmap.insert(range: start, count: count) } else { bitmap.remove(range: start, count: count) }
            for i in max(0, start)..<max(max(0, start), min(pageCount, start + count)) { model[i] = insert }
            let i = Int.random(in: 0..<pageCount, using: &rng)
            bitmap.insert(i); model[i] = true
        }
        return (bitmap, model)
    }

    private func randomRange(_ pageCount: Int, _ rng: inout SeededGenerator) -> (Int, Int) {
        (Int.random(in: -70...(pageCount + 70), using: &rng), Int.random(in: -5...700, using: &rng))
    }

    private func randomWords(_ count: Int, _ rng: inout SeededGenerator, density: Double = 0.1) -> [UInt64] {
        (0..<count).map { _ in
            Double.random(in: 0..<1, using: &rng) < density ? UInt64.random(in: 1...UInt64.max, using: &rng) : 0
        }
    }

    /// The spans as `PageBitmap.nonZeroSpans(of:joiningGapsBelow:)` computed them before
    /// `merge` found them in its own pass (9217d0b): the reference.
    private func separatePassSpans(of words: [UInt64], joiningGapsBelow gap: Int) -> [Range<Int>] {
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
}
