import CKVM

/// One source of dirty pages (design.md "Dirty tracking"): it is switched on, reports the
/// pages written since its previous harvest, and is switched off. `DirtyTracker` combines
/// sources into a mode (protocol.md §3.5.1 says which mode uses which).
public protocol DirtySource: AnyObject, Sendable {
    var kind: DirtySourceKind { get }
    /// Begins a fresh epoch: the next harvest reports writes made from now on.
    func start() throws(DirtyTrackingError)
    func stop()
    /// The pages written since the previous harvest (or `start`). `vcpusPaused`: the vCPUs
    /// are parked, so a source may include writes in flight (the PV ring's §2.4 slot).
    func harvest(vcpusPaused: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest
    /// The same; `last`: no harvest follows before `stop` (a migration's paused final
    /// harvest), so a source need not re-arm its tracking for the writes after it.
    func harvest(vcpusPaused: Bool, last: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest
}

extension DirtySource {
    public func harvest(vcpusPaused: Bool, last: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest {
        try harvest(vcpusPaused: vcpusPaused)
    }
}

public enum DirtySourceKind: String, Sendable {
    /// KVM_GET_DIRTY_LOG (write-protect based): exact for guest writes.
    case kvmBitmap = "kvm-bitmap"
    /// KVM_CAP_DIRTY_LOG_RING: exact while it never overflows; watchdog-guarded.
    case kvmRing = "kvm-ring"
    /// The guest's PV ring (§2.3–2.4): as good as the guest is honest.
    case pvRing = "pv-ring"
    /// Pages the VMM itself wrote (KVM logs none of them): always part of every mode.
    case vmmWrites = "vmm-writes"

    /// Whether it reports writes made by the guest through KVM (what the KVM sources see).
    public var isKVM: Bool { self == .kvmBitmap || self == .kvmRing }
}

public struct DirtySourceHarvest: Sendable {
    public var pages: PageBitmap
    /// The source may have lost pages since its previous harvest.
    public var untrustworthy = false
    /// Of the harvest's time: re-arming the tracking for the next harvest (KVM_CLEAR_DIRTY_LOG),
    /// which a `last` harvest skips.
    public var rearmSeconds = 0.0
    /// Pages the source counts dirty without having seen them written (the PV guest's
    /// always-dirty ranges, §2.2), as page-index ranges, kept out of `pages`: the tracker adds
    /// them whole, or only in part when KVM's log vouches for them (`AlwaysDirtyFilter`).
    public var alwaysDirty: [Range<Int>] = []
    public init(pages: PageBitmap, untrustworthy: Bool = false) { self.pages = pages; self.untrustworthy = untrustworthy }
}

/// KVM's dirty bitmap, with manual protect (KVM_CLEAR_DIRTY_LOG for exactly the pages
/// harvested) where the host has it.
final class KVMBitmapSource: DirtySource, @unchecked Sendable {
    let kind = DirtySourceKind.kvmBitmap
    private let machine: Machine
    private let manualProtect: Bool
    /// KVM's bitmap per memory region, kept across harvests (filled in place by each), and
    /// the harvest's bitmap (`PageBitmap.recycling`): no fresh 288 KiB per harvest at 9 GiB.
    private var regionWords: [[UInt64]] = []
    private var spare = PageBitmap(pageCount: 0)
    /// Runs of zero words shorter than this (4 KiB of bitmap, 16 MiB of guest) are cleared
    /// with the words around them: the kernel walks them faster than a second ioctl.
    static let clearGapWords = 512

    init(machine: Machine) {
        self.machine = machine
        manualProtect = machine.hypervisor.capability(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) & 1 != 0
    }

    func start() throws(DirtyTrackingError) {
        do {
            if manualProtect { try machine.enableManualDirtyProtect() }
            try machine.setDirtyLogging(true)
        } catch { throw .kvm(error) }
    }

    func stop() { try? machine.setDirtyLogging(false) }

    func harvest(vcpusPaused: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest {
        try harvest(vcpusPaused: vcpusPaused, last: false)
    }

    /// With manual protect, KVM_GET_DIRTY_LOG only copies the slot's bitmap out and
    /// KVM_CLEAR_DIRTY_LOG re-protects the harvested pages. The clear is given only the spans
    /// of the bitmap that hold set bits (found by `PageBitmap.merge` in the pass that merges
    /// them): the kernel re-protects exactly the set bits' pages either way, so this is the
    /// same re-arming at a cost that follows the dirty set. A `last` harvest skips the clear:
    /// nothing is harvested after it, and logging is switched off (`stop`) — re-enabling it
    /// starts a fresh bitmap.
    func harvest(vcpusPaused: Bool, last: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest {
        let memory = machine.memory
        var bitmap = PageBitmap.recycling(&spare, pageCount: memory.pageCount)
        if regionWords.count != memory.regions.count { regionWords = Array(repeating: [], count: memory.regions.count) }
        var rearm = Duration.zero
        do {
            for (i, (region, offset)) in zip(memory.regions, memory.regionPageOffsets).enumerated() {
                try machine.vm.dirtyLog(slot: region.slot, pageCount: region.pageCount, into: &regionWords[i])
                // One pass over KVM's words merges them and finds the spans to re-arm.
                let rearming = manualProtect && !last
                let spans = bitmap.merge(words: regionWords[i], atPage: offset,
                                         spansJoiningGapsBelow: rearming ? Self.clearGapWords : nil)
                if rearming {
                    let started = ContinuousClock.now
                    for span in spans {
                        try machine.vm.clearDirtyLog(slot: region.slot, pageCount: region.pageCount,
                                                     bitmap: &regionWords[i], words: span)
                    }
                    rearm += ContinuousClock.now - started
                }
            }
        } catch { throw .kvm(error) }
        spare = bitmap
        var h = DirtySourceHarvest(pages: bitmap)
        h.rearmSeconds = Double(rearm.components.seconds) + Double(rearm.components.attoseconds) / 1e18
        return h
    }
}

/// KVM's dirty ring (the machine enabled it at creation): with the ring on, the bitmap is
/// unavailable for the VM. Its watchdog marks the ring broken when it fills with nothing
/// to harvest (platform-facts.md): the harvest is then untrustworthy.
final class KVMRingSource: DirtySource, @unchecked Sendable {
    let kind = DirtySourceKind.kvmRing
    private let machine: Machine
    private let ring: DirtyRingCollector

    init(machine: Machine, ring: DirtyRingCollector) {
        self.machine = machine
        self.ring = ring
    }

    func start() throws(DirtyTrackingError) {
        do { try machine.setDirtyLogging(true) } catch { throw .kvm(error) }
    }

    func stop() { try? machine.setDirtyLogging(false) }

    func harvest(vcpusPaused: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest {
        let h = ring.harvest(memory: machine.memory, vm: machine.vm)
        return DirtySourceHarvest(pages: h.pages, untrustworthy: h.broken)
    }
}

/// The guest's PV dirty ring (§2.3–2.4): logged pages in `pages`, the always-dirty ranges
/// apart (`alwaysDirty`). A guest that has not registered reports nothing (the tracker
/// refuses modes that rely on it alone).
final class PVRingSource: DirtySource, @unchecked Sendable {
    let kind = DirtySourceKind.pvRing
    private let machine: Machine

    init(machine: Machine) { self.machine = machine }

    func start() throws(DirtyTrackingError) {
        // LOGGING goes on with the vCPUs parked: the guest's flag load, made after its page
        // stores, cannot then overtake a store that the first round's copy might miss.
        if machine.pv.isRegistered { machine.withVCPUsPaused { _ = machine.pv.setLogging(true) } }
    }

    func stop() { machine.pv.setLogging(false) }

    /// The harvest's bitmap, reused across harvests (`PageBitmap.recycling`).
    private var spare = PageBitmap(pageCount: 0)

    func harvest(vcpusPaused: Bool) throws(DirtyTrackingError) -> DirtySourceHarvest {
        var pages = PageBitmap.recycling(&spare, pageCount: machine.memory.pageCount)
        let found = machine.pv.harvestApart(vcpusPaused: vcpusPaused, into: &pages)
        spare = pages
        var h = DirtySourceHarvest(pages: pages, untrustworthy: found?.corrupt ?? false)
        h.alwaysDirty = found?.alwaysDirty ?? []
        return h
    }
}

/// Pages the VMM wrote into guest memory (image loading, device writes, balloon deflation):
/// `GuestMemory.markHostWritten` collects them; KVM logs none of them.
final class VMMWritesSource: DirtySource, @unchecked Sendable {
    let kind = DirtySourceKind.vmmWrites
    private let memory: GuestMemory

    init(memory: GuestMemory) { self.memory = memory }

    /// The harvest's bitmap, reused across harvests (`PageBitmap.recycling`).
    private var spare = PageBitmap(pageCount: 0)

    func start() { _ = memory.takeHostWrittenPages() }
    func stop() {}
    func harvest(vcpusPaused: Bool) -> DirtySourceHarvest {
        var pages = PageBitmap.recycling(&spare, pageCount: memory.pageCount)
        memory.takeHostWrittenPages(into: &pages)
        spare = pages
        return DirtySourceHarvest(pages: pages)
    }
}
