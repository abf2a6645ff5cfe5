// What a page write puts into its window (protocol.md §1.7 `content`).
//
// Each generator writes words `from..<end` of a page and returns the XOR of
// their new checksum contributions (Stamp.contribution) — and, with
// `readOld`, of the old ones too, so that a partial write can update the
// page's checksum without reading the rest of the page.
//
//   stamp   zeroes: with the stamp, the page is 24 bytes of stamp and zeroes
//   random  xorshift64* words: incompressible
//   mixed   16-word (128-byte) runs: ~35% pseudo-random, ~30% zeroes, ~35% one
//           word repeated (from a few typical values): about 2.5× with zstd

extension Content {
    /// Words per run of `mixed`.
    static let runWords = 16

    @inline(__always)
    private static func put(_ page: UnsafeMutablePointer<UInt64>, _ index: Int, _ value: UInt64,
                            _ readOld: Bool, _ delta: inout UInt64) {
        if readOld { delta ^= Stamp.contribution(page[index], index) }
        page[index] = value
        delta ^= Stamp.contribution(value, index)
    }

    @inline(__always)
    static func zeroes(_ page: UnsafeMutablePointer<UInt64>, _ from: Int, _ end: Int, readOld: Bool) -> UInt64 {
        var delta: UInt64 = 0
        var index = from
        if readOld {
            while index < end {
                delta ^= Stamp.contribution(page[index], index)
                page[index] = 0
                index += 1
            }
        } else {
            while index < end {
                page[index] = 0
                index += 1
            }
        }
        return delta
    }

    @inline(__always)
    static func random(_ page: UnsafeMutablePointer<UInt64>, _ from: Int, _ end: Int,
                       _ random: inout Random, readOld: Bool) -> UInt64 {
        var delta: UInt64 = 0
        var index = from
        while index < end {
            put(page, index, random.next(), readOld, &delta)
            index += 1
        }
        return delta
    }

    /// A few values that fill real memory: small integers, all ones, ASCII
    /// spaces, a kernel-looking pointer.
    @inline(__always)
    private static func repeatedWord(_ selector: UInt64) -> UInt64 {
        switch selector & 3 {
        case 0: 0x0000_0000_0000_0001
        case 1: 0xffff_ffff_ffff_ffff
        case 2: 0x2020_2020_2020_2020
        default: 0xffff_8880_0123_4000
        }
    }

    static func mixed(_ page: UnsafeMutablePointer<UInt64>, _ from: Int, _ end: Int,
                      _ random: inout Random, readOld: Bool) -> UInt64 {
        var delta: UInt64 = 0
        var index = from
        while index < end {
            // Runs are aligned to 16 words of the page; a window cuts the first and last.
            var runEnd = (index | (runWords - 1)) + 1
            if runEnd > end { runEnd = end }
            let pick = random.next()
            let kind = ((pick >> 32) &* 100) >> 32  // 0..<100
            if kind < 35 {
                while index < runEnd {
                    put(page, index, random.next(), readOld, &delta)
                    index += 1
                }
            } else {
                let value = kind < 65 ? 0 : repeatedWord(pick)
                while index < runEnd {
                    put(page, index, value, readOld, &delta)
                    index += 1
                }
            }
        }
        return delta
    }
}
