import Core
import Dispatch

/// The verification sweep (protocol.md §3.5.2): while the guest still runs, before the
/// stop-and-copy, every page's current content is compared with the hash of what was sent
/// for it (`PageHashTable`). A page that differs and that no dirty source reported was
/// missed by dirty tracking (an under-report): it is re-sent, so it can never reach a resumed
/// guest stale. Pure logic over memory and tables: no KVM needed (unit-tested).
enum VerificationSweep {
    /// The pages whose content now differs from what was sent: among all pages except
    /// `skipping` (the pending dirty set, to be sent anyway, and the balloon), a resident page
    /// is hashed and compared with `sent`; a page that is not resident reads as zeros, so it
    /// differs when something with data was sent for it (it is not read: that would fault it
    /// in). Runs on `threads` threads (at least 1) over chunks of 4096 pages.
    /// `range` limits the sweep to those page indices; `resident` is `memory.residentPages()`
    /// (taken once per sweep by a caller that sweeps in slices).
    static func mismatches(memory: GuestMemory, sent: PageHashTable, skipping: PageBitmap, range: Range<Int>? = nil,
                           resident: PageBitmap? = nil, threads: Int = 1) -> (pages: PageBitmap, hashed: Int) {
        let pageCount = min(memory.pageCount, sent.pageCount, range?.upperBound ?? .max)
        let first = max(0, range?.lowerBound ?? 0)
        let resident = resident ?? memory.residentPages()
        let chunkPages = 4096
        let chunks = pageCount > first ? (pageCount - first + chunkPages - 1) / chunkPages : 0
        let workers = max(1, min(threads, chunks))
        let found = Locked<(pages: [Int], hashed: Int)>(([], 0))
        let work: @Sendable (Int) -> Void = { worker in
            var mine: [Int] = [], hashed = 0
            var chunk = worker
            while chunk < chunks {
                for index in (first + chunk * chunkPages)..<min(pageCount, first + (chunk + 1) * chunkPages)
                where !skipping.contains(index) {
                    let expected = sent.hash(at: index)
                    guard resident.contains(index), let page = memory.page(atIndex: index) else {
                        if expected != 0 { mine.append(index) }
                        continue
                    }
                    hashed += 1
                    if PageHashTable.hash(index, UnsafeRawBufferPointer(page)) != expected { mine.append(index) }
                }
                chunk += workers
            }
            found.withLock { $0.pages += mine; $0.hashed += hashed }
        }
        if workers == 1 { work(0) } else { DispatchQueue.concurrentPerform(iterations: workers, execute: work) }
        var bitmap = PageBitmap(pageCount: memory.pageCount)
        for index in found.value.pages { bitmap.insert(index) }
        return (bitmap, found.value.hashed)
    }

    /// What a sweep found, given the mismatches, the pending set it skipped and the harvest
    /// taken right after it (every source's report since the harvest before the sweep began;
    /// KVM's log, when on, since the sweep began).
    struct Finding: Equatable {
        /// Pages that differ from what was sent and that no source reported: dirty tracking
        /// missed them (the guest under-reported, or a source is broken).
        var missed: PageBitmap
        /// Every page to send next: pending ∪ harvest ∪ mismatches, less the balloon.
        var resend: PageBitmap
    }

    static func classify(mismatches: PageBitmap, pending: PageBitmap, harvested: PageBitmap,
                         ballooned: PageBitmap) -> Finding {
        let reported = pending.union(harvested)
        return Finding(missed: mismatches.subtracting(reported).subtracting(ballooned),
                       resend: reported.union(mismatches).subtracting(ballooned))
    }
}

/// What the verification sweep did, for the statistics (protocol.md §3.5.2).
public struct VerificationStats: Sendable, Codable, Equatable {
    /// Sweeps run (a second one only when `pv` found under-reports before KVM's log was on).
    public var sweeps = 0
    /// Wall-clock seconds the sweeps took (pre-copy time; the guest runs meanwhile).
    public var seconds = 0.0
    /// Pages hashed.
    public var pagesHashed = 0
    /// Pages whose content differed from what had been sent (most were simply dirty).
    public var mismatches = 0
    /// Pages dirty tracking missed (the guest under-reported, or a source is broken):
    /// re-sent, and KVM's log used for the rest of the migration. 0 for a correct guest.
    public var underReportedPages = 0

    public init() {}

    /// One line for the statistics.
    public var summary: String {
        guard sweeps > 0 else { return "no verification sweep" }
        return "verification sweep: \(pagesHashed) pages hashed in " + String(format: "%.0f ms", seconds * 1000)
            + ", \(mismatches) changed since sent, \(underReportedPages) missed by dirty tracking"
    }

    /// A warning for the user, when the sweep caught missed pages.
    public var warning: String? {
        guard underReportedPages > 0 else { return nil }
        return "dirty tracking missed \(underReportedPages) page(s) — the guest under-reported its writes. They were re-sent "
            + "and KVM's dirty log was used for the rest of the migration, so the destination is exact; if this "
            + "guest is migrated again, use `--dirty-source kvm`."
    }
}
