import Core
import Testing

@testable import Migrate

/// The STATE digest and the PV section are computed with bulk operations (the balloon map is
/// one bit per page, ~288 KiB at 9 GiB, handled while the guest is paused): the values on the
/// wire must stay those protocol.md §3.6.2 and §1.8 define.
@Suite("state digest and PV section, bulk")
struct StateDigestTests {
    /// §3.6.2 as written: 8-byte little-endian words, the last one zero-padded, byte by byte.
    private func reference(_ bytes: [UInt8]) -> UInt64 {
        let prime: UInt64 = 0x100000001b3
        var h = UInt64(bytes.count) ^ 0x9e3779b97f4a7c15
        var index = 0
        while index < bytes.count {
            var word: UInt64 = 0
            for k in 0..<min(8, bytes.count - index) { word |= UInt64(bytes[index + k]) << (8 * k) }
            h = (h ^ word) &* prime
            h ^= h >> 29
            index += 8
        }
        h ^= h >> 32
        h = h &* prime
        h ^= h >> 29
        return h
    }

    @Test("the word-at-a-time digest equals the definition at every length and alignment of the tail")
    func digestMatchesDefinition() {
        var generator = SystemRandomNumberGenerator()
        for length in Array(0...33) + [4_096, 36_864 * 8 + 5] {
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            #expect(StateDigest.compute(bytes) == reference(bytes), "length \(length)")
        }
    }

    @Test("the PV section's balloon map is written and read in bulk, byte for byte as word by word")
    func pvSectionBulk() throws {
        let words: [UInt64] = (0..<36_864).map { UInt64($0) &* 0x9e37_79b9_7f4a_7c15 }
        let state = PVInterface.State(guestVersion: 2, controlPage: 0x1000, balloonWords: words)
        var w = ByteWriter()
        w.u32(2); w.u32(0); w.u64(0x1000)
        words.forEach { w.u64($0) }
        #expect(state.encoded() == w.bytes)
        let decoded = try PVInterface.State(encoded: w.bytes)
        #expect(decoded == state)
        #expect(try PVInterface.State(encoded: Array(w.bytes.prefix(16))).balloonWords.isEmpty)
        #expect(throws: StateCodingError.self) { try PVInterface.State(encoded: Array(w.bytes.dropLast())) }
    }

    @Test("a bitmap taken from words keeps exactly the pages it covers")
    func bitmapFromWords() {
        let b = PageBitmap(pageCount: 100, words: [~0, ~0])
        #expect(b.count == 100 && b.contains(99) && !b.contains(100))
        #expect(PageBitmap(pageCount: 130, words: [1]).count == 1)
        #expect(PageBitmap(pageCount: 64, words: [1, 1, 1]).count == 1)
    }
}
