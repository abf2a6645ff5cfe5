@testable import Core
import Testing

/// `AlwaysDirtyFilter` (protocol.md §3.5.1): KVM's log vouches for the guest's always-dirty
/// ranges only for an interval it watched whole; then only their changed pages (already in
/// the round through KVM's log and the VMM's writes) and the VIF pages are sent.
@Suite struct AlwaysDirtyFilterTests {
    /// A guest of 1024 pages whose always-dirty ranges are pages 10..<20 and 500..<502.
    static let ranges = [10..<20, 500..<502]

    @Test func nothingIsVouchedForWithoutKVMsLog() {
        var filter = AlwaysDirtyFilter()
        for _ in 0..<3 {
            #expect(!filter.vouches)
            filter.harvestBegins()
            filter.harvested(kvmUntrustworthy: false)
        }
        filter.kvmStarted()
        filter.kvmStopped()
        filter.harvested(kvmUntrustworthy: false)
        #expect(!filter.vouches, "KVM's log was switched off again")
    }

    @Test func theFirstHarvestAfterKVMStartsSendsEveryAlwaysDirtyPage() {
        var filter = AlwaysDirtyFilter()
        filter.kvmStarted()
        // Writes before KVM's log went on are in no log: this interval is not vouched for.
        #expect(!filter.vouches)
        filter.harvestBegins()
        filter.harvested(kvmUntrustworthy: false)
        // From the second harvest on the interval began with KVM's log on.
        #expect(filter.vouches)
        filter.harvestBegins()
        filter.harvested(kvmUntrustworthy: false)
        #expect(filter.vouches)
        // Switched on again (a new epoch): again one harvest that sends everything.
        filter.kvmStarted()
        #expect(!filter.vouches)
    }

    @Test func anUntrustworthyOrFailedHarvestIsNotFollowedByAVouchedOne() {
        var filter = AlwaysDirtyFilter()
        filter.kvmStarted()
        filter.harvestBegins(); filter.harvested(kvmUntrustworthy: false)
        #expect(filter.vouches)
        filter.harvestBegins(); filter.harvested(kvmUntrustworthy: true)
        #expect(!filter.vouches, "KVM's source may have lost pages: the next interval is not covered")
        filter.harvestBegins(); filter.harvested(kvmUntrustworthy: false)
        #expect(filter.vouches)
        // A harvest that began and threw (no `harvested`): what it read of KVM's log is lost.
        filter.harvestBegins()
        #expect(!filter.vouches)
    }

    @Test func unvouchedRoundsCarryTheWholeRanges() {
        var pages = PageBitmap(pageCount: 1024)
        pages.insert(700)
        let added = AlwaysDirtyFilter.add(Self.ranges, vif: [15], vouched: false, into: &pages)
        #expect(added == 12)
        #expect(pages.indices == Array(10..<20) + [500, 501, 700])
    }

    @Test func vouchedRoundsKeepWhatKVMAndTheVMMReportedAndAlwaysTheVIFPages() {
        // `pages` as the tracker has it before the ranges: KVM's log (a guest store into page
        // 12, and 700 outside the ranges) and a VMM write into page 501 (the control page).
        var pages = PageBitmap(pageCount: 1024)
        for page in [12, 501, 700] { pages.insert(page) }
        let added = AlwaysDirtyFilter.add(Self.ranges, vif: [17], vouched: true, into: &pages)
        #expect(added == 0)
        #expect(pages.indices == [12, 17, 501, 700], "sent \(pages.indices)")
        // No write at all: the VIF page still goes (the PVM host writes it unseen).
        var quiet = PageBitmap(pageCount: 1024)
        AlwaysDirtyFilter.add(Self.ranges, vif: [17, 5000], vouched: true, into: &quiet)
        #expect(quiet.indices == [17])
    }
}
