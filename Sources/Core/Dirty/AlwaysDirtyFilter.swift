/// When the guest's always-dirty ranges (protocol.md §2.2) need not all be sent again
/// (§3.5.1, "KVM's log vouches for the always-dirty ranges").
///
/// The PV guest claims those ranges dirty in every round because it does not log its writes
/// there; without another source they are re-sent every round, the paused final one too, and
/// their size grows with the guest's memory (the de-duplication bitmap). KVM's dirty bitmap is
/// exact for the guest's own stores and for what KVM writes through its guest-memory helpers
/// (mark_page_dirty, shadow-MMU A/D-bit updates included); the VMM's own writes are a source
/// of their own. So once KVM's log has watched the WHOLE interval since the previous harvest,
/// an always-dirty page in neither KVM's log nor the VMM's writes has not changed — except the
/// VIF pages (§1.6), which the PVM host writes without our knowing that those writes reach the
/// log: they are sent in every such round.
///
/// Only KVM's bitmap vouches: KVM's dirty ring has been seen to lose pages on PVM hosts (the
/// tracker refuses it alone there), and its watchdog only says so after the fact.
struct AlwaysDirtyFilter: Sendable {
    /// Harvests KVM's bitmap has answered since it was switched on; nil while it is off.
    private var kvmHarvests: Int?

    /// KVM's bitmap was switched on now (`start` with it, `addKVM`): the next harvest's
    /// interval began before it, so that harvest sends every always-dirty page.
    mutating func kvmStarted() { kvmHarvests = 0 }
    mutating func kvmStopped() { kvmHarvests = nil }

    /// Whether KVM's log covers the whole interval since the previous harvest, decided before
    /// that harvest runs: it is on, and a harvest of it has ended an earlier interval.
    var vouches: Bool { (kvmHarvests ?? 0) > 0 }

    /// A harvest begins: until it has ended well (`harvested`), the next one sends everything
    /// (a harvest that threw may have read KVM's log and lost it).
    mutating func harvestBegins() { if kvmHarvests != nil { kvmHarvests = 0 } }

    /// The harvest ended; `kvmUntrustworthy`: KVM's source says it may have lost pages, so
    /// the interval after it is not vouched for either.
    mutating func harvested(kvmUntrustworthy: Bool) {
        guard let n = kvmHarvests else { return }
        kvmHarvests = kvmUntrustworthy ? 0 : n + 1
    }

    /// Adds the always-dirty `ranges` to `pages`: whole, or — `vouched` — only the VIF pages
    /// (`vif`, page indices), the rest's changed pages being in `pages` already (it holds
    /// KVM's log and the VMM's writes). Returns how many pages of the ranges were added whole
    /// (0 when vouched). Costs O(ranges + VIF pages), no pass over the bitmap.
    @discardableResult
    static func add(_ ranges: [Range<Int>], vif: [Int], vouched: Bool, into pages: inout PageBitmap) -> Int {
        if vouched {
            for page in vif { pages.insert(page) }
            return 0
        }
        var added = 0
        for r in ranges where !r.isEmpty {
            pages.insert(range: r.lowerBound, count: r.count)
            added += r.count
        }
        return added
    }
}
