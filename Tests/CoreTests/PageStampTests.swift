import Core
import Testing

/// The host's reading of the built-in guest's stamps (protocol.md §2.9), for whole pages and
/// for the slots of a shared working set, against a page built here by the formula.
@Suite struct PageStampTests {
    /// A page whose slot `k` (of `writers`) is stamped for frame `pfn` with `version`.
    static func stamp(_ page: inout [UInt64], pfn: UInt64, version: UInt64, slot k: Int, writers: Int) {
        let words = writers == 1 ? 512 : (512 / writers) / 8 * 8
        let base = k * words
        var sum: UInt64 = 0
        for i in 3..<words {
            let w = UInt64(truncatingIfNeeded: (pfn &* 0x9e37_79b9_7f4a_7c15) ^ UInt64(i) ^ (version << 40))
            page[base + i] = w
            let r = UInt64(i % 64)
            sum ^= r == 0 ? w : (w << r) | (w >> (64 - r))
        }
        page[base] = pfn
        page[base + 1] = version
        page[base + 2] = sum
    }

    static func verdict(_ page: [UInt64], pfn: UInt64, slot: Int = 0, writers: Int = 1) -> PageStamp.Verdict {
        page.withUnsafeBytes { PageStamp.verify($0, pfn: pfn, slot: slot, writers: writers) }
    }

    @Test func slotSizesAreWholeCacheLines() {
        #expect([1, 2, 3, 4, 8].map { PageStamp.slotWords(writers: $0) } == [512, 256, 168, 128, 64])
    }

    @Test func aWholePageAndEverySlotOfASharedPageVerify() {
        var whole = [UInt64](repeating: 0, count: 512)
        #expect(Self.verdict(whole, pfn: 7) == .unstamped)
        Self.stamp(&whole, pfn: 7, version: 3, slot: 0, writers: 1)
        #expect(Self.verdict(whole, pfn: 7) == .good(version: 3))
        #expect(Self.verdict(whole, pfn: 8) == .wrongFrame(7))

        for writers in [2, 3, 4, 8] {
            var shared = [UInt64](repeating: 0, count: 512)
            for k in 0..<writers { Self.stamp(&shared, pfn: 9, version: UInt64(k + 1), slot: k, writers: writers) }
            for k in 0..<writers {
                #expect(Self.verdict(shared, pfn: 9, slot: k, writers: writers) == .good(version: UInt64(k + 1)))
            }
            // One word of the last slot changes: only that slot is bad.
            shared[(writers - 1) * PageStamp.slotWords(writers: writers) + 5] ^= 1
            #expect(Self.verdict(shared, pfn: 9, slot: writers - 1, writers: writers) == .badChecksum)
            #expect(Self.verdict(shared, pfn: 9, slot: 0, writers: writers) == .good(version: 1))
            // Read as a single-writer page, a shared page does not verify (§2.9).
            #expect(Self.verdict(shared, pfn: 9) == .badChecksum)
            // A slot beyond the writers is no slot.
            #expect(Self.verdict(shared, pfn: 9, slot: writers, writers: writers) == .badChecksum)
        }
    }
}
