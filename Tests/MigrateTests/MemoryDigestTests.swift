import Core
import Testing

@testable import Migrate

/// §3.5 written out a second time, as plainly as possible (bytes assembled
/// into little-endian words by hand), to check the fast implementation.
func referenceMix(_ i: UInt64, _ page: [UInt8]) -> UInt64 {
    let p: UInt64 = 0x100000001b3
    func word(_ k: Int) -> UInt64 {
        (0..<8).reduce(UInt64(0)) { $0 | UInt64(page[k * 8 + $1]) << (8 * UInt64($1)) }
    }
    func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }
    var a = i ^ 0x9e3779b97f4a7c15, b = i ^ 0xc2b2ae3d27d4eb4f
    var c = i ^ 0x165667b19e3779f9, d = i ^ 0x27d4eb2f165667c5
    for k in stride(from: 0, to: 512, by: 4) {
        a = (a ^ word(k)) &* p
        b = (b ^ word(k + 1)) &* p
        c = (c ^ word(k + 2)) &* p
        d = (d ^ word(k + 3)) &* p
    }
    var h = a ^ rotl(b, 16) ^ rotl(c, 32) ^ rotl(d, 48)
    h ^= h >> 29
    h = h &* p
    h ^= h >> 32
    return h
}

func mix(_ i: UInt64, _ page: [UInt8]) -> UInt64 {
    page.withUnsafeBytes { MemoryDigest.mix(pageIndex: i, page: $0) }
}

/// Writes `bytes` into RAM page `index` of `memory`.
func setPage(_ memory: GuestMemory, _ index: Int, _ bytes: [UInt8]) {
    let page = memory.page(atIndex: index)!
    page.copyBytes(from: bytes)
}

func pageBytes(_ memory: GuestMemory, _ index: Int) -> [UInt8] {
    Array(memory.page(atIndex: index)!)
}

@Suite("memory digest (protocol.md §3.5)")
struct MemoryDigestTests {
    static let goldenPage: [UInt8] = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }

    @Test("golden values (computed from §3.5 by an independent implementation)")
    func golden() {
        #expect(mix(12345, Self.goldenPage) == 0x55ab_7b73_947c_cf6a)
        #expect(mix(0, [UInt8](repeating: 0, count: 4096)) == 0xeb63_dfd0_95bb_13c8)
        var one = [UInt8](repeating: 0, count: 4096)
        one[0] = 1
        #expect(mix(1, one) == 0x7f0f_f392_b78e_1bc6)
    }

    @Test("mix matches the plain reference implementation", arguments: 0..<8 as Range<UInt64>)
    func matchesReference(seed: UInt64) {
        let page = randomBytes(4096, seed: seed)
        let index = seed &* 0x1234_5678_9abc
        #expect(mix(index, page) == referenceMix(index, page))
    }

    @Test("the page index and every word lane matter")
    func sensitivity() {
        let base = mix(7, Self.goldenPage)
        #expect(mix(8, Self.goldenPage) != base)
        for offset in [0, 8, 16, 24, 4095] {
            var page = Self.goldenPage
            page[offset] ^= 1
            #expect(mix(7, page) != base, "flipping byte \(offset) must change mix")
        }
    }

    /// A memory with `pages` (index -> content), everything else zero.
    func memory(_ pages: [Int: [UInt8]]) throws -> GuestMemory {
        let memory = try GuestMemory(size: 8 << 20)
        for (index, bytes) in pages { setPage(memory, index, bytes) }
        return memory
    }

    func digest(_ memory: GuestMemory, excluding: PageBitmap? = nil, threads: Int = 1,
                candidates: PageBitmap? = nil) -> (digest: UInt64, pagesWithData: UInt64) {
        MemoryDigest.compute(memory: memory, candidates: candidates ?? memory.residentPages(),
                             excluding: excluding, threads: threads)
    }

    @Test("digest is the wrapping sum of mix over pages with data")
    func sumOfPages() throws {
        let a = randomBytes(4096, seed: 1), b = randomBytes(4096, seed: 2)
        let m = try memory([3: a, 2000: b])
        let result = digest(m)
        #expect(result.pagesWithData == 2)
        #expect(result.digest == referenceMix(3, a) &+ referenceMix(2000, b))
    }

    @Test("an empty memory digests to 0 with no pages")
    func emptyMemory() throws {
        let m = try GuestMemory(size: 8 << 20)
        let all = PageBitmap.full(pageCount: m.pageCount)
        let result = MemoryDigest.compute(memory: m, candidates: all, excluding: nil, threads: 2)
        #expect(result.digest == 0 && result.pagesWithData == 0)
    }

    @Test("zero pages do not count, even when resident")
    func zeroPagesDoNotCount() throws {
        let a = randomBytes(4096, seed: 5)
        let m = try memory([10: a])
        setPage(m, 11, [UInt8](repeating: 0, count: 4096))  // resident, all zero
        let all = PageBitmap.full(pageCount: m.pageCount)
        let result = digest(m, candidates: all)
        #expect(result.pagesWithData == 1)
        #expect(result.digest == referenceMix(10, a))
    }

    @Test("excluded (ballooned) pages and pages outside the candidates do not count")
    func excludedPages() throws {
        let a = randomBytes(4096, seed: 5), b = randomBytes(4096, seed: 6)
        let m = try memory([10: a, 20: b])
        var balloon = PageBitmap(pageCount: m.pageCount)
        balloon.insert(20)
        let result = digest(m, excluding: balloon)
        #expect(result.pagesWithData == 1)
        #expect(result.digest == referenceMix(10, a))

        var candidates = PageBitmap(pageCount: m.pageCount)
        candidates.insert(20)
        #expect(digest(m, candidates: candidates).digest == referenceMix(20, b))
    }

    @Test("the digest does not depend on the order pages were written or where they live")
    func orderIndependent() throws {
        let pages = (0..<50).map { (index: $0 * 37 % 2048, bytes: randomBytes(4096, seed: UInt64($0))) }
        let forward = try GuestMemory(size: 8 << 20)
        for page in pages { setPage(forward, page.index, page.bytes) }
        let backward = try GuestMemory(size: 8 << 20)
        for page in pages.reversed() { setPage(backward, page.index, page.bytes) }
        let all = PageBitmap.full(pageCount: forward.pageCount)
        let d1 = digest(forward)
        let d2 = digest(backward, candidates: all)
        #expect(d1.digest == d2.digest && d1.pagesWithData == 50)
        #expect(d1.digest == pages.reduce(UInt64(0)) { $0 &+ referenceMix(UInt64($1.index), $1.bytes) })
    }

    @Test("a single flipped byte, a moved page or a lost page changes the digest")
    func detectsDamage() throws {
        let pages = (0..<20).map { (index: $0 * 101, bytes: randomBytes(4096, seed: 100 + UInt64($0))) }
        let m = try GuestMemory(size: 8 << 20)
        for page in pages { setPage(m, page.index, page.bytes) }
        let good = digest(m).digest

        m.page(atIndex: 505)![1234] ^= 0x10
        #expect(digest(m).digest != good)
        m.page(atIndex: 505)![1234] ^= 0x10
        #expect(digest(m).digest == good)

        setPage(m, 506, pageBytes(m, 505))  // a stale copy at the wrong index
        setPage(m, 505, [UInt8](repeating: 0, count: 4096))
        #expect(digest(m).digest != good)
    }

    @Test("multi-threaded equals single-threaded", arguments: [2, 3, 4, 16])
    func threads(count: Int) throws {
        let m = try GuestMemory(size: 8 << 20)
        for index in stride(from: 0, to: 2048, by: 3) { setPage(m, index, randomBytes(4096, seed: UInt64(index))) }
        var balloon = PageBitmap(pageCount: m.pageCount)
        balloon.insert(range: 300, count: 200)
        let single = digest(m, excluding: balloon, threads: 1)
        let multi = digest(m, excluding: balloon, threads: count)
        #expect(single.pagesWithData > 500)
        #expect(single == multi)
    }

    @Test("throughput (printed, not asserted)")
    func throughput() throws {
        let m = try GuestMemory(size: 64 << 20)
        for index in 0..<m.pageCount {
            let page = m.page(atIndex: index)!
            for w in 0..<512 { page.storeBytes(of: UInt64(index &* 512 &+ w) | 1, toByteOffset: w * 8, as: UInt64.self) }
        }
        let resident = m.residentPages()
        for threads in [1, 2] {
            let clock = ContinuousClock()
            var result = (digest: UInt64(0), pagesWithData: UInt64(0))
            let repeats = 4
            let elapsed = clock.measure {
                for _ in 0..<repeats {
                    result = MemoryDigest.compute(memory: m, candidates: resident, excluding: nil, threads: threads)
                }
            }
            let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
            let mb = Double(repeats * Int(m.size)) / 1e6
            print("MemoryDigest: \(threads) thread(s): \(Int(mb / seconds)) MB/s (\(result.pagesWithData) pages)")
            #expect(result.pagesWithData == UInt64(m.pageCount))
        }
    }
}
