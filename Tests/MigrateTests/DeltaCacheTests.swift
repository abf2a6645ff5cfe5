import Core
import Testing

@testable import Migrate
import TestSupport

func cached(_ cache: DeltaCache, _ index: UInt64) -> [UInt8]? {
    cache.lookup(index).map { Array($0) }
}

func store(_ cache: DeltaCache, _ index: UInt64, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { cache.store(index, $0) }
}

@Suite("delta cache")
struct DeltaCacheTests {
    @Test("stores, returns and overwrites page copies")
    func storeAndLookup() {
        let cache = DeltaCache(capacityBytes: 16 * 4096)
        let a = randomBytes(4096, seed: 1), b = randomBytes(4096, seed: 2)
        #expect(cached(cache, 5) == nil)
        store(cache, 5, a)
        #expect(cached(cache, 5) == a)
        store(cache, 5, b)
        #expect(cached(cache, 5) == b)
        #expect(cache.count == 1)
        cache.invalidate(5)
        #expect(cached(cache, 5) == nil)
        #expect(cache.count == 0)
    }

    @Test("lookups, hits and the hit rate are counted")
    func hitRate() {
        let cache = DeltaCache(capacityBytes: 16 * 4096)
        #expect(cache.hitRate == 0)
        store(cache, 1, randomBytes(4096, seed: 1))
        _ = cache.lookup(1)
        _ = cache.lookup(1)
        _ = cache.lookup(2)
        _ = cache.lookup(3)
        #expect(cache.lookups == 4)
        #expect(cache.hits == 2)
        #expect(cache.hitRate == 0.5)
        #expect(cache.contains(1) && !cache.contains(2))
        #expect(cache.lookups == 4, "contains does not count as a lookup")
    }

    @Test("holds at most capacity / 4096 pages and counts evictions")
    func eviction() {
        let cache = DeltaCache(capacityBytes: 4 * 4096 + 100)
        #expect(cache.capacityPages == 4)
        for index in 0..<4 as Range<UInt64> { store(cache, index, randomBytes(4096, seed: index)) }
        #expect(cache.evictions == 0 && cache.count == 4)
        store(cache, 4, randomBytes(4096, seed: 4))
        #expect(cache.evictions == 1 && cache.count == 4)
        for index in 5..<100 as Range<UInt64> { store(cache, index, randomBytes(4096, seed: index)) }
        #expect(cache.evictions == 96 && cache.count == 4)
        // Whatever survived holds its own content.
        for index in 0..<100 as Range<UInt64> {
            if let copy = cached(cache, index) { #expect(copy == randomBytes(4096, seed: index)) }
        }
    }

    @Test("a page used since the last sweep survives eviction (CLOCK)")
    func recentlyUsedSurvives() {
        let cache = DeltaCache(capacityBytes: 4 * 4096)
        for index in 0..<4 as Range<UInt64> { store(cache, index, randomBytes(4096, seed: index)) }
        store(cache, 4, randomBytes(4096, seed: 4))  // a full sweep clears all bits, evicts 0
        #expect(!cache.contains(0))
        _ = cache.lookup(1)  // 1 is referenced again
        store(cache, 5, randomBytes(4096, seed: 5))
        #expect(cache.contains(1), "the page just looked up must not be the victim")
        #expect(!cache.contains(2))
    }

    @Test("invalidated slots are reused before anything is evicted")
    func invalidateFreesSlot() {
        let cache = DeltaCache(capacityBytes: 2 * 4096)
        store(cache, 1, randomBytes(4096, seed: 1))
        store(cache, 2, randomBytes(4096, seed: 2))
        cache.invalidate(1)
        store(cache, 3, randomBytes(4096, seed: 3))
        #expect(cache.evictions == 0)
        #expect(cache.contains(2) && cache.contains(3))
    }

    @Test("a cache smaller than a page stores nothing")
    func tinyCache() {
        let cache = DeltaCache(capacityBytes: 100)
        store(cache, 1, randomBytes(4096, seed: 1))
        #expect(cached(cache, 1) == nil)
    }

    @Test("after batches, every cached page is exactly what the destination holds")
    func cacheMatchesDestination() throws {
        let source = try GuestMemory(size: 8 << 20)
        let destination = try GuestMemory(size: 8 << 20)
        // 120 pages: the 100-page working set plus 30 cold pages a round do not fit.
        let cache = DeltaCache(capacityBytes: 120 * 4096)
        let encoder = PageBatchEncoder(maxPages: 32, compressionLevel: 1, deltaCache: cache)
        let decoder = PageBatchDecoder()
        var generator = SeededGenerator(seed: 42)
        var deltas = 0
        for round in 0..<6 as Range<UInt32> {
            let cold = (0..<30).map { _ in Int.random(in: 200..<2048, using: &generator) }
            let working = Array(0..<100) + cold
            for index in working {
                let page = source.page(atIndex: index)!
                switch Int.random(in: 0..<10, using: &generator) {
                case 0: page.initializeMemory(as: UInt8.self, repeating: 0)  // becomes zero
                case 1: page.copyBytes(from: randomBytes(4096, seed: generator.next()))  // rewritten
                default:
                    for _ in 0..<Int.random(in: 0...8, using: &generator) {  // a few bytes (or none)
                        page[Int.random(in: 0..<4096, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
                    }
                }
            }
            encoder.begin(round: round)
            for (position, index) in working.enumerated() {
                encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(source.page(atIndex: index)!))
                if encoder.isFull || position == working.count - 1 {
                    let (flags, payload, stats) = encoder.finish()
                    deltas += stats.delta
                    _ = try decoder.apply(flags: flags, payload: payload, to: destination, expectedRound: round)
                    encoder.begin(round: round)
                }
            }
            for index in working {
                #expect(pageBytes(destination, index) == pageBytes(source, index))
                if let copy = cached(cache, UInt64(index)) {
                    #expect(copy == pageBytes(destination, index), "cache differs from the destination: page \(index)")
                    #expect(copy.contains { $0 != 0 }, "a page sent as ZERO must have been dropped")
                }
            }
        }
        #expect(cache.evictions > 0)
        #expect(deltas > 100, "pages that stay cached go as deltas")
    }
}
