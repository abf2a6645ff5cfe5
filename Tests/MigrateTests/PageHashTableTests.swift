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
