/// The built-in guest's page stamp (protocol.md §2.9): `{ u64 pfn; u64 version; u64 checksum }`
/// at the start of every page its workload writes; the checksum is the XOR over words
/// 3..<512 of `rotl64(word[i], i % 64)`. The host checks stamps too, independently of the
/// guest's own self-check (tests, post-migration verification).
///
/// A shared working set (`share=1`, §2.9) stamps each writer's *slot* of a page the same way,
/// as if the slot were a page of `slotWords(writers:)` words: pass `slot` and `writers`.
public enum PageStamp {
    public struct Stamp: Equatable, Sendable {
        public var pfn: UInt64
        public var version: UInt64
        public var checksum: UInt64
    }

    /// Words of each writer's slot when `writers` vCPUs share a page (512 for one writer).
    public static func slotWords(writers: Int) -> Int {
        writers <= 1 ? 512 : (512 / writers) & ~7
    }

    /// The stamp fields of a page's slot (whatever they hold).
    public static func read(_ page: UnsafeRawBufferPointer, slot: Int = 0, writers: Int = 1) -> Stamp? {
        guard page.count == 4096, slot >= 0, slot < max(writers, 1) else { return nil }
        let base = slot * slotWords(writers: writers) * 8
        return Stamp(pfn: page.loadUnaligned(fromByteOffset: base, as: UInt64.self).littleEndian,
                     version: page.loadUnaligned(fromByteOffset: base + 8, as: UInt64.self).littleEndian,
                     checksum: page.loadUnaligned(fromByteOffset: base + 16, as: UInt64.self).littleEndian)
    }

    public static func checksum(_ page: UnsafeRawBufferPointer, slot: Int = 0, writers: Int = 1) -> UInt64 {
        let words = slotWords(writers: writers)
        let base = slot * words * 8
        var c: UInt64 = 0
        for i in 3..<words {
            let w = page.loadUnaligned(fromByteOffset: base + i * 8, as: UInt64.self).littleEndian
            let r = UInt64(i % 64)
            c ^= r == 0 ? w : (w << r) | (w >> (64 - r))
        }
        return c
    }

    public enum Verdict: Equatable, Sendable {
        /// Never written by the workload (version 0 / all zero stamp).
        case unstamped
        case good(version: UInt64)
        case wrongFrame(UInt64)
        case badChecksum
    }

    /// Checks one page (or one writer's slot of it) that should belong to frame `pfn`.
    public static func verify(_ page: UnsafeRawBufferPointer, pfn: UInt64, slot: Int = 0, writers: Int = 1) -> Verdict {
        guard let s = read(page, slot: slot, writers: writers) else { return .badChecksum }
        if s.version == 0, s.pfn == 0, s.checksum == 0 { return .unstamped }
        guard s.pfn == pfn else { return .wrongFrame(s.pfn) }
        return checksum(page, slot: slot, writers: writers) == s.checksum ? .good(version: s.version) : .badChecksum
    }
}
