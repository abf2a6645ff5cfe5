import Core
import Testing

@testable import Migrate

/// The verification sweep's logic (protocol.md §3.5.2) over plain memory: no KVM.
@Suite struct VerificationSweepTests {
    /// Memory with data in pages 0..<count, each recorded in a table as sent.
    static func sentMemory(pages count: Int) throws -> (GuestMemory, PageHashTable) {
        let memory = try GuestMemory(size: 4 << 20)
        let table = PageHashTable(pageCount: memory.pageCount)
        for index in 0..<count {
            let page = try #require(memory.page(atIndex: index))
            page.storeBytes(of: UInt64(index + 1) * 0x9e37_79b9, toByteOffset: 8, as: UInt64.self)
            table.record(index, UnsafeRawBufferPointer(page))
        }
        return (memory, table)
    }

    @Test func unchangedMemoryHasNoMismatch() throws {
        let (memory, table) = try Self.sentMemory(pages: 64)
        let (found, hashed) = VerificationSweep.mismatches(memory: memory, sent: table,
                                                           skipping: PageBitmap(pageCount: memory.pageCount), threads: 2)
        #expect(found.isEmpty && hashed >= 64)
    }

    @Test func aChangedPageNoSourceReportedIsMissedAndResent() throws {
        let (memory, table) = try Self.sentMemory(pages: 64)
        let empty = PageBitmap(pageCount: memory.pageCount)
        for index in [5, 6, 7] { memory.page(atIndex: index)![100] ^= 0xff }
        var pending = empty; pending.insert(6)       // reported before the sweep: skipped
        var harvested = empty; harvested.insert(7)   // reported during it: not missed
        let (found, _) = VerificationSweep.mismatches(memory: memory, sent: table, skipping: pending)
        #expect(found.indices == [5, 7])
        let finding = VerificationSweep.classify(mismatches: found, pending: pending, harvested: harvested, ballooned: empty)
        #expect(finding.missed.indices == [5])
        #expect(finding.resend.indices == [5, 6, 7])
    }

    @Test func aZeroedOrDiscardedPageSentWithDataIsAMismatch() throws {
        let (memory, table) = try Self.sentMemory(pages: 64)
        memory.page(atIndex: 3)!.initializeMemory(as: UInt8.self, repeating: 0)
        // Discarded (madvise): not resident, reads as zeros; the sweep must not read it.
        #expect(memory.discard(GuestRange(start: GuestPhysicalAddress(UInt64(32) << 12), size: 4096)!))
        let (found, _) = VerificationSweep.mismatches(memory: memory, sent: table, skipping: PageBitmap(pageCount: memory.pageCount))
        #expect(found.indices == [3, 32])
    }

    @Test func balloonedPagesAreNeitherMissedNorResent() throws {
        let (memory, table) = try Self.sentMemory(pages: 8)
        memory.page(atIndex: 2)![0] ^= 1
        var ballooned = PageBitmap(pageCount: memory.pageCount); ballooned.insert(2)
        let (found, _) = VerificationSweep.mismatches(memory: memory, sent: table, skipping: PageBitmap(pageCount: memory.pageCount))
        let finding = VerificationSweep.classify(mismatches: found, pending: PageBitmap(pageCount: memory.pageCount),
                                                 harvested: PageBitmap(pageCount: memory.pageCount), ballooned: ballooned)
        #expect(found.indices == [2] && finding.missed.isEmpty && finding.resend.isEmpty)
    }

    @Test func warningOnlyWhenPagesWereMissed() {
        var stats = VerificationStats()
        #expect(stats.warning == nil)
        stats.underReportedPages = 3
        #expect(stats.warning?.contains("kvm") == true)
    }
}
