import Foundation
import Core
import Migrate
import Testing

/// The destination's incremental digest equals a full scan of the same memory.
@Suite struct PageHashTableTests {
    @Test func incrementalDigestEqualsFullScan() throws {
        let memory = try GuestMemory(size: 8 << 20)
        let table = PageHashTable(pageCount: memory.pageCount)
        var generator = SystemRandomNumberGenerator()
        for index in stride(from: 3, to: memory.pageCount, by: 7) {
            let page = try #require(memory.page(atIndex: index))
            for w in 0..<8 { page.storeBytes(of: UInt64.random(in: 1...UInt64.max, using: &generator), toByteOffset: w * 512, as: UInt64.self) }
            table.record(index, UnsafeRawBufferPointer(page))
        }
        // One page rewritten with zeros after it was recorded with data: re-recorded as zero.
        let zeroed = try #require(memory.page(atIndex: 10))
        zeroed.initializeMemory(as: UInt8.self, repeating: 0)
        table.record(10, UnsafeRawBufferPointer(zeroed))
        var excluded = PageBitmap(pageCount: memory.pageCount)
        excluded.insert(17)
        let full = MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount), excluding: excluded)
        let incremental = table.digest(excluding: excluded)
        #expect(incremental.digest == full.digest && incremental.pagesWithData == full.pagesWithData)
        // And it notices a page changed behind its back.
        let page = try #require(memory.page(atIndex: 24))
        page[100] ^= 1
        #expect(MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount), excluding: excluded).digest
                != incremental.digest)
    }
}

/// The running sum follows every re-record: a page re-sent with new data, re-sent as zeros,
/// or recorded twice with the same bytes.
@Suite struct IncrementalDigestTests {
    @Test func runningSumEqualsTheFullDigestAfterResendsAndZeroing() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let table = PageHashTable(pageCount: memory.pageCount)
        func full() -> (digest: UInt64, pagesWithData: UInt64) {
            MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount), excluding: nil)
        }
        for index in 0..<100 {
            let page = try #require(memory.page(atIndex: index))
            page.storeBytes(of: UInt64(index) &+ 0xabcdef, toByteOffset: 16, as: UInt64.self)
            table.record(index, UnsafeRawBufferPointer(page))
        }
        #expect(table.digest(excluding: nil) == full())
        // Re-sent with new content.
        let changed = try #require(memory.page(atIndex: 40))
        changed[7] ^= 0x55
        table.record(40, UnsafeRawBufferPointer(changed))
        table.record(40, UnsafeRawBufferPointer(changed))  // the same bytes twice: no change
        #expect(table.digest(excluding: nil) == full())
        // Became zero (sent as ZERO).
        try #require(memory.page(atIndex: 41)).initializeMemory(as: UInt8.self, repeating: 0)
        table.recordZero(41)
        #expect(table.digest(excluding: nil) == full() && full().pagesWithData == 99)
        // Ballooned pages are subtracted at the end, not scanned.
        var ballooned = PageBitmap(pageCount: memory.pageCount)
        ballooned.insert(range: 10, count: 5)
        let expected = MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount), excluding: ballooned)
        #expect(table.digest(excluding: ballooned) == expected && expected.pagesWithData == 94)
    }

    /// The exclusion visits only excluded pages that hold data (`PageHashTable`'s data bits):
    /// it must still subtract every such page — one that went to zero and back, ones at word
    /// edges, ones recorded by two threads into the same 64-page word — and none without data.
    @Test func exclusionFollowsPagesThatGainAndLoseData() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let table = PageHashTable(pageCount: memory.pageCount)
        func stamp(_ index: Int, _ value: UInt64) throws {
            let page = try #require(memory.page(atIndex: index))
            page.storeBytes(of: value, toByteOffset: 8 * (index % 512), as: UInt64.self)
            table.record(index, UnsafeRawBufferPointer(page))
        }
        // Two threads fill interleaved pages of the same words (streams own index mod 2).
        DispatchQueue.concurrentPerform(iterations: 2) { stream in
            for index in stride(from: stream, to: 512, by: 2) {
                let page = memory.page(atIndex: index)!
                page.storeBytes(of: UInt64(index) | 1 << 40, toByteOffset: 0, as: UInt64.self)
                table.record(index, UnsafeRawBufferPointer(page))
            }
        }
        for index in [63, 64, 127, memory.pageCount - 1] { try stamp(index, 0xfeed) }
        // Data, then zero (the data bit clears), then data again (it must be set again).
        try stamp(700, 1)
        try #require(memory.page(atIndex: 700)).initializeMemory(as: UInt8.self, repeating: 0)
        table.recordZero(700)
        try stamp(700, 2)
        // A page that had data and is zero now: excluding it subtracts nothing.
        try stamp(701, 3)
        try #require(memory.page(atIndex: 701)).initializeMemory(as: UInt8.self, repeating: 0)
        table.record(701, UnsafeRawBufferPointer(try #require(memory.page(atIndex: 701))))
        var excluded = PageBitmap(pageCount: memory.pageCount)
        excluded.insert(range: 1, count: 300)      // interleaved pages of both threads, and empty ones
        for index in [63, 64, 127, memory.pageCount - 1, 700, 701, 900] { excluded.insert(index) }
        let full = MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount), excluding: excluded)
        #expect(table.digest(excluding: excluded) == full,
                "digest excluding 307 pages: table \(table.digest(excluding: excluded)), full scan \(full)")
        #expect(full.pagesWithData == 512 - 300, "pages with data left: \(full.pagesWithData)")
        #expect(table.digest(excluding: .full(pageCount: memory.pageCount)) == (0, 0))
    }

    /// What the sender records as it encodes is what the destination records as it applies.
    @Test func encoderRecordsWhatItSends() throws {
        let memory = try GuestMemory(size: 4 << 20)
        let sent = PageHashTable(pageCount: memory.pageCount)
        let encoder = PageBatchEncoder(maxPages: 16, compressionLevel: nil, deltaCache: DeltaCache(capacityBytes: 1 << 20))
        encoder.sentHashes = sent
        for round in 0..<2 {
            encoder.begin(round: UInt32(round))
            for index in 0..<8 {
                let page = try #require(memory.page(atIndex: index))
                if index != 3 { page[index * 10] &+= 1 }  // page 3 stays zero
                encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(page))
            }
            _ = encoder.finish()
        }
        #expect(sent.digest(excluding: nil) == MemoryDigest.compute(memory: memory, candidates: .full(pageCount: memory.pageCount),
                                                                    excluding: nil))
        #expect(sent.hash(at: 3) == 0 && sent.hash(at: 2) != 0)
    }
}
