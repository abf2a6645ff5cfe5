// The incremental memory digest of protocol.md §3.5: a table of every page's `mix` and the
// running sum over it, so that the digest at COMMIT costs O(pages changed), not O(memory).

import Core
import Synchronization

/// One `mix(page_index, page)` per page (0 for an all-zero page) and the running wrapping sum
/// of the table, kept up to date on every `record`.
///
/// - The source records each page as it is **encoded** (from the encoder's snapshot: exactly
///   the bytes sent); the table is then the digest of what the destination holds if every
///   page arrived intact.
/// - The destination records each page as it is **applied**.
///
/// Both sums equal `MemoryDigest.compute` over the memory the pages came from (§3.5), so a
/// peer that scans its memory instead interoperates. `digest(excluding:)` subtracts the
/// ballooned pages' entries (a table look-up each, no page is read).
///
/// Thread-safety: different pages may be recorded concurrently (the streams own disjoint
/// pages, index mod streams); one page must not be recorded by two threads at once.
public final class PageHashTable: @unchecked Sendable {
    private let hashes: UnsafeMutableBufferPointer<UInt64>
    private let sum = Atomic<UInt64>(0)
    private let withData = Atomic<Int>(0)
    /// One bit per page, set while its hash is non-zero (page `i`: bit `i % 64` of word
    /// `i / 64`), so that `digest(excluding:)` visits only excluded pages that hold data: a
    /// word test per 64 pages instead of a table look-up per ballooned page, which took
    /// 0.5 ms at each end of the pause for a 9 GiB guest with 1 GiB ballooned (issue 11,
    /// docs/benchmarks.md "The pause's size-dependent work"). Atomic words: pages of one word
    /// travel on different streams, recorded by different threads.
    private let dataWords: UnsafeMutablePointer<Atomic<UInt64>>
    private let wordCount: Int

    public init(pageCount: Int) {
        hashes = .allocate(capacity: pageCount)
        hashes.initialize(repeating: 0)
        wordCount = (pageCount + 63) / 64
        dataWords = .allocate(capacity: max(1, wordCount))
        // Sound: `dataWords` has room for `wordCount` words; each is initialized once here.
        for w in 0..<wordCount { (dataWords + w).initialize(to: Atomic(0)) }
    }

    deinit {
        hashes.deallocate()
        // Sound: exactly the `wordCount` words `init` initialized.
        dataWords.deinitialize(count: wordCount)
        dataWords.deallocate()
    }

    public var pageCount: Int { hashes.count }

    /// The hash §3.5 gives page `index` with these bytes: 0 for all zeros, else `mix`.
    @inline(__always)
    public static func hash(_ index: Int, _ page: UnsafeRawBufferPointer) -> UInt64 {
        PageKind.classify(page) == .zero ? 0 : MemoryDigest.mix(pageIndex: UInt64(index), page: page)
    }

    /// Records page `index`'s content as sent or applied (all zeros count as no data).
    public func record(_ index: Int, _ page: UnsafeRawBufferPointer) {
        set(index, hash: Self.hash(index, page))
    }

    /// Records that page `index` now holds all zeros (sent or applied as ZERO).
    public func recordZero(_ index: Int) { set(index, hash: 0) }

    /// The recorded hash of page `index` (0: no data, or never recorded).
    public func hash(at index: Int) -> UInt64 {
        guard index >= 0, index < hashes.count else { return 0 }
        return hashes[index]
    }

    private func set(_ index: Int, hash new: UInt64) {
        guard index >= 0, index < hashes.count else { return }
        // Sound: index was bounds-checked; only this page's owner (its stream) writes it.
        let old = hashes[index]
        guard old != new else { return }
        hashes[index] = new
        sum.wrappingAdd(new &- old, ordering: .relaxed)
        let delta = (new != 0 ? 1 : 0) - (old != 0 ? 1 : 0)
        guard delta != 0 else { return }
        withData.wrappingAdd(delta, ordering: .relaxed)
        // Sound: index / 64 < wordCount because index < hashes.count.
        let bit = UInt64(1) << UInt64(index & 63)
        if new != 0 { dataWords[index >> 6].bitwiseOr(bit, ordering: .relaxed) }
        else { dataWords[index >> 6].bitwiseAnd(~bit, ordering: .relaxed) }
    }

    /// Σ over pages with data, skipping `excluding`: the running sum minus the excluded
    /// pages' entries. The same value `MemoryDigest.compute` gives for the memory the pages
    /// were recorded from (pages never recorded are zero). Call it when no `record` is in
    /// flight (after the streams finished: their completion orders the writes before this).
    public func digest(excluding: PageBitmap?) -> (digest: UInt64, pagesWithData: UInt64) {
        var total = sum.load(ordering: .acquiring)
        var pages = withData.load(ordering: .acquiring)
        if let excluding {
            // Word by word: only the excluded pages that hold data are looked up (a ballooned
            // page is usually empty), so a mostly ballooned guest costs a word test per 64 pages.
            excluding.words.withUnsafeBufferPointer { excluded in
                for w in 0..<min(excluded.count, wordCount) where excluded[w] != 0 {
                    var word = excluded[w] & dataWords[w].load(ordering: .relaxed)
                    while word != 0 {
                        let i = w * 64 + word.trailingZeroBitCount
                        word &= word - 1
                        // Sound: i < hashes.count is checked before the read.
                        guard i < hashes.count, hashes[i] != 0 else { continue }
                        total &-= hashes[i]
                        pages -= 1
                    }
                }
            }
        }
        return (total, UInt64(max(0, pages)))
    }
}
