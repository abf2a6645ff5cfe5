// Dirty logging, guest side (protocol.md §2.3) and the dirty ring (§2.4).
//
// Every write the guest makes outside its always-dirty range goes
//
//     log.begin(pfn)       // 1. inflight_pfn = p, inflight_valid = 1
//     ...write the page... // 2.
//     log.end(pfn)         //    if host_flags has LOGGING:
//                          // 3.   mfence (skipped on a HARVEST_BARRIER host)
//                          // 4.   generation changed? forget the de-dup set
//                          // 5.   not in the set? append p, add it
//                          // 6. inflight_valid = 0
//
// The LOGGING check is one load of host_flags per write, made AFTER the write:
// a write that races with the host turning LOGGING on is then logged whenever
// the host can have missed it — in particular every write that KVM's
// write-protection caught after the host set the flag (the fault is an exit,
// which orders the later flag load), so PV ⊇ KVM holds from the start. The
// in-flight slot is kept even while logging is off (two stores to a cache-hot
// line): at a paused harvest it covers the write that was in progress.
//
// The fast path (§2.3, "Without the fence"): when the host advertises
// HARVEST_BARRIER (§1.5), a write to a page already logged in the current
// generation costs two loads and a bit test, inline, with no fence — the host
// makes every vCPU execute a full barrier after each generation bump instead.
// A page not yet logged is appended without a fence too: x86 keeps the page's
// stores before the ring entry's, so a host that sees the entry sees the page.

struct DirtyLog {
    /// RING_FULL retries before the guest gives up on a host that never drains.
    static let maximumRingFullExits = 10_000

    let control: ControlPage
    let pv: PVInterface
    private let ring: UnsafeMutablePointer<UInt64>
    private let ringEntries: UInt32
    private let bitmap: UnsafeMutablePointer<UInt64>
    private let dedupPages: UInt64
    /// `droplog=N` (protocol.md §1.7): every Nth new report is dropped after the page
    /// entered the de-dup set — a guest that under-reports, for the tests of §3.5.2.
    private let dropEvery: UInt64
    private var reports: UInt64 = 0
    /// The host fences every vCPU after each generation bump (HARVEST_BARRIER,
    /// protocol.md §1.5): steps 3 and, for a page already logged, 4–5 need no fence.
    private let hostFences: Bool

    private var lastGeneration: UInt32 = 0
    /// False until the first logged write, and again whenever a write sees
    /// LOGGING off: the set is then forgotten before it is used again.
    private var dedupValid = false
    /// Bitmap words set since the last time the set was forgotten.
    private var touchedLow = Int.max
    private var touchedHigh = 0

    /// Entries appended and RING_FULL exits (statistics).
    private(set) var appended: UInt64 = 0
    private(set) var ringFullExits: UInt64 = 0

    /// `control`: vCPU `vcpu`'s control page or area (§2.10); the ring and the bitmap are its own.
    init(layout: Layout, control: ControlPage, pv: PVInterface, vcpu: UInt64 = 0, dropEvery: UInt64 = 0) {
        self.dropEvery = dropEvery
        self.control = control
        self.pv = pv
        // Sound: Layout placed the ring and the bitmap in identity-mapped RAM.
        ring = UnsafeMutablePointer(bitPattern: UInt(layout.ring(vcpu)))!
        ringEntries = Layout.ringEntries
        bitmap = UnsafeMutablePointer(bitPattern: UInt(layout.dedupBitmap(vcpu)))!
        dedupPages = layout.dedupPages
        hostFences = pv.features & PVInterface.featureHarvestBarrier != 0
    }

    /// Step 1, before writing page `pfn`.
    @inline(__always)
    func begin(_ pfn: UInt64) {
        control.setInflight(pfn: pfn)
    }

    /// The LOGGING check and steps 3–6, after the write to `pfn`.
    @inline(__always)
    mutating func end(_ pfn: UInt64) {
        if control.hostFlags & ControlPage.flagLogging != 0 {
            if !(hostFences && alreadyLogged(pfn)) { record(pfn) }
        } else {
            dedupValid = false
        }
        control.clearInflight()
    }

    /// The fast path on a HARVEST_BARRIER host: `pfn` is in the de-duplication set
    /// of the generation the guest reads now, so nothing is appended. Sound without a
    /// fence because the host, after storing a new generation, makes this vCPU run a
    /// full barrier before it reads any page: a write whose `generation` load still
    /// returned the old value is visible by then (protocol.md §2.3).
    @inline(__always)
    private func alreadyLogged(_ pfn: UInt64) -> Bool {
        guard dedupValid, pfn < dedupPages, control.generation == lastGeneration else { return false }
        return bitmap[Int(pfn >> 6)] & (1 &<< (pfn & 63)) != 0
    }

    /// Steps 3–5 (the slow path: a new page or a new generation, or every write on a
    /// host without HARVEST_BARRIER).
    @inline(never)
    private mutating func record(_ pfn: UInt64) {
        if !hostFences { CPU.memoryFence() }
        let generation = control.generation
        if !dedupValid || generation != lastGeneration {
            forget()
            lastGeneration = generation
            dedupValid = true
        }
        if pfn < dedupPages {
            let word = Int(pfn >> 6)
            let bit: UInt64 = 1 &<< (pfn & 63)
            if bitmap[word] & bit != 0 { return }
            bitmap[word] |= bit
            if word < touchedLow { touchedLow = word }
            if word >= touchedHigh { touchedHigh = word + 1 }
        }
        if dropEvery != 0 {
            reports &+= 1
            if reports % dropEvery == 0 { return }
        }
        append(pfn)
    }

    /// Empties the de-duplication set (only the words that were used).
    private mutating func forget() {
        var word = touchedLow
        while word < touchedHigh {
            bitmap[word] = 0
            word += 1
        }
        touchedLow = Int.max
        touchedHigh = 0
    }

    /// Appends one entry (§2.4): RING_FULL while the ring is full, then the
    /// entry, then the new head (x86 keeps the two stores in order; the
    /// volatile stores keep the compiler from swapping them). Also used by
    /// chaos to append invalid entries.
    mutating func append(_ entry: UInt64) {
        let head = control.ringHead
        var exits = 0
        // `>=`, not `==`: a corrupt head (more than a ring ahead) also waits
        // for the host, which resynchronises the tail.
        while head &- control.ringTail >= ringEntries {
            pv.ringFull()
            ringFullExits &+= 1
            exits += 1
            if exits >= Self.maximumRingFullExits {
                panic("dirty ring stays full: the host does not drain it")
            }
        }
        pvg_store64(ring + Int(head & (ringEntries &- 1)), entry)
        control.ringHead = head &+ 1
        appended &+= 1
    }
}
