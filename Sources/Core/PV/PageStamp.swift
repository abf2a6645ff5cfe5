/// The built-in guest's page stamp (protocol.md §2.9): `{ u64 pfn; u64 version; u64 checksum }`
/// at the start of every page its workload writes; the checksum is the XOR over words
/// 3..<512 of `rotl64(word[i], i % 64)`. The host checks stamps too, independently of the
/// guest's own self-check (tests, post-migration verification).
public enum PageStamp {
    public struct Stamp: Equatable, Sendable {
        public var pfn: UInt64
        public var version: UInt64
        public var checksum: UInt64
    }

    /// The stamp fields of a page (whatever they hold).
    public static func read(_ page: UnsafeRawBufferPointer) -> Stamp? {
        guard page.count == 4096 else { return nil }
        return Stamp(pfn: page.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian,
                     version: page.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian,
                     checksum: page.loadUnaligned(fromByteOffset: 16, as: UInt64.self).littleEndian)
    }

    public static func checksum(_ page: UnsafeRawBufferPointer) -> UInt64 {
        var c: UInt64 = 0
        for i in 3..<512 {
            let w = page.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self).littleEndian
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

    /// Checks one page that should belong to frame `pfn`.
    public static func verify(_ page: UnsafeRawBufferPointer, pfn: UInt64) -> Verdict {
        guard let s = read(page) else { return .badChecksum }
        if s.version == 0, s.pfn == 0, s.checksum == 0 { return .unstamped }
        guard s.pfn == pfn else { return .wrongFrame(s.pfn) }
        return checksum(page) == s.checksum ? .good(version: s.version) : .badChecksum
    }
}
