// The source's copy of pages it sent, for XOR-delta encoding (protocol.md §3.3).

/// A bounded cache of the last-sent content of pages, for XBZRLE-like deltas:
/// a page sent before and changed a little since is sent as an XOR delta
/// against the copy the destination already has.
///
/// The cache must hold exactly what the destination holds for each page it
/// has an entry for, i.e. the bytes last *sent*, never the live page (which
/// the guest may have changed since). `PageBatchEncoder` keeps that rule: it
/// stores the snapshot it encoded, and drops the entry when it sends a page
/// as ZERO. Anyone else who sends a page without going through the cache must
/// `invalidate` it.
///
/// Storage is one slab of `capacityBytes / 4096` page slots, allocated up
/// front (untouched slots cost no host memory), an index from page to slot,
/// and CLOCK eviction (a second-chance approximation of LRU: a slot used since
/// the hand last passed it survives one more sweep).
///
/// Not thread-safe: each sending stream owns its cache (a page always travels
/// on the same stream, §3.4, so per-stream caches never disagree).
public final class DeltaCache {
    /// Bytes per cached page.
    public static let pageSize = 4096
    /// The default capacity: 64 MiB, 16,384 pages.
    public static let defaultCapacityBytes = 64 << 20

    /// The number of pages the cache can hold.
    public let capacityPages: Int

    /// `capacityPages` slots of `pageSize` bytes; owned, freed in deinit.
    private let slab: UnsafeMutableRawPointer
    /// The page each slot holds, or `UInt64.max` for a free slot.
    private var slotPage: [UInt64]
    /// CLOCK reference bits, one per slot.
    private var referenced: [Bool]
    /// Page index to slot.
    private var slotOf: [UInt64: Int32]
    /// Slots never used yet are handed out first: `0..<nextFresh` have been used.
    private var nextFresh = 0
    /// Slots freed by `invalidate`, reused before evicting.
    private var freeSlots: [Int32] = []
    /// The CLOCK hand: the next slot considered for eviction.
    private var hand = 0

    public private(set) var lookups = 0
    public private(set) var hits = 0
    public private(set) var evictions = 0

    /// Hits per lookup, 0 before the first lookup.
    public var hitRate: Double { lookups == 0 ? 0 : Double(hits) / Double(lookups) }
    /// Pages currently cached.
    public var count: Int { slotOf.count }

    /// A cache holding up to `capacityBytes / 4096` pages (none if less than one page).
    public init(capacityBytes: Int = DeltaCache.defaultCapacityBytes) {
        precondition(capacityBytes >= 0, "cache capacity must not be negative")
        capacityPages = capacityBytes / Self.pageSize
        slab = UnsafeMutableRawPointer.allocate(byteCount: max(1, capacityPages) * Self.pageSize, alignment: 64)
        slotPage = [UInt64](repeating: .max, count: capacityPages)
        referenced = [Bool](repeating: false, count: capacityPages)
        slotOf = [:]
        slotOf.reserveCapacity(capacityPages)
    }

    deinit {
        slab.deallocate()
    }

    /// The bytes of `slot`. Sound: `slot` is in `0..<capacityPages`, so the
    /// range lies inside the slab.
    @inline(__always)
    private func bytes(ofSlot slot: Int) -> UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: slab + slot * Self.pageSize, count: Self.pageSize)
    }

    /// The cached copy of `pageIndex` (4096 bytes), or nil. Counts a lookup
    /// (and a hit). The buffer stays valid until the next `store` or
    /// `invalidate` of any page.
    public func lookup(_ pageIndex: UInt64) -> UnsafeRawBufferPointer? {
        lookups += 1
        guard let slot = slotOf[pageIndex] else { return nil }
        hits += 1
        referenced[Int(slot)] = true
        return UnsafeRawBufferPointer(bytes(ofSlot: Int(slot)))
    }

    /// Whether `pageIndex` is cached (counts no lookup).
    public func contains(_ pageIndex: UInt64) -> Bool { slotOf[pageIndex] != nil }

    /// Records `page` (4096 bytes) as the content last sent for `pageIndex`,
    /// evicting another page if the cache is full. `page` may be the buffer
    /// `lookup` returned for the same page.
    public func store(_ pageIndex: UInt64, _ page: UnsafeRawBufferPointer) {
        precondition(page.count == Self.pageSize, "the delta cache holds \(Self.pageSize)-byte pages, got \(page.count)")
        guard capacityPages > 0, let source = page.baseAddress else { return }
        let slot: Int
        if let existing = slotOf[pageIndex] {
            slot = Int(existing)
        } else {
            slot = takeSlot()
            slotOf[pageIndex] = Int32(slot)
            slotPage[slot] = pageIndex
        }
        referenced[slot] = true
        let target = slab + slot * Self.pageSize
        // Sound: both ranges hold pageSize bytes; they are identical or disjoint
        // (a caller's buffer is never part of the slab except as this very slot).
        if UnsafeRawPointer(target) != source {
            target.copyMemory(from: source, byteCount: Self.pageSize)
        }
    }

    /// Forgets `pageIndex` (after it was sent some other way, e.g. as ZERO).
    public func invalidate(_ pageIndex: UInt64) {
        guard let slot = slotOf.removeValue(forKey: pageIndex) else { return }
        slotPage[Int(slot)] = .max
        referenced[Int(slot)] = false
        freeSlots.append(slot)
    }

    /// Forgets every page (the counters are kept).
    public func removeAll() {
        slotOf.removeAll(keepingCapacity: true)
        for slot in 0..<capacityPages {
            slotPage[slot] = .max
            referenced[slot] = false
        }
        freeSlots.removeAll(keepingCapacity: true)
        nextFresh = 0
        hand = 0
    }

    /// A slot for a new entry: a never-used one, a freed one, or a CLOCK victim.
    private func takeSlot() -> Int {
        if nextFresh < capacityPages {
            nextFresh += 1
            return nextFresh - 1
        }
        if let slot = freeSlots.popLast() { return Int(slot) }
        // Every slot is in use (else a fresh or freed slot existed): sweep
        // until a slot without its reference bit; at most two turns.
        while referenced[hand] {
            referenced[hand] = false
            hand = (hand + 1) % capacityPages
        }
        let victim = hand
        hand = (hand + 1) % capacityPages
        slotOf.removeValue(forKey: slotPage[victim])
        evictions += 1
        return victim
    }
}
