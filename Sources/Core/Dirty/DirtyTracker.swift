import CKVM

/// Which dirty-page sources a migration trusts (design.md "Dirty tracking").
public enum DirtySourceMode: String, CaseIterable, Sendable, Codable {
    /// KVM's dirty log only (write-protect based: always correct, costs a fault per page).
    case kvm
    /// The guest's PV ring only: fastest, for cooperative guests.
    case pv
    /// The union of both: the safe default for a PV guest.
    case hybrid
}

/// One harvest: what must be sent, and where it came from.
public struct DirtyRound: Sendable {
    /// The pages to treat as dirty in this round (per the mode), including VMM writes.
    public var pages: PageBitmap
    /// KVM's dirty log, when the mode uses it.
    public var kvm: PageBitmap?
    /// The guest's PV report (logged pages ∪ always-dirty ranges), when the mode uses it.
    public var pv: PageBitmap?
    /// Pages the VMM itself wrote.
    public var host: PageBitmap
    /// The PV ring was corrupt: `pages` is every page.
    public var pvUntrustworthy: Bool
    /// KVM's dirty ring lost entries (watchdog): `pages` is every page.
    public var kvmUntrustworthy = false
    /// Pages the guest has ballooned: never sent, so never in `pages` (protocol.md §2.5).
    public var ballooned = PageBitmap(pageCount: 0)
}

public enum DirtyTrackingError: Error, Equatable, CustomStringConvertible {
    case guestNotPVAware
    case ringNotTrustedAlone
    case kvm(KVMError)

    public var description: String {
        switch self {
        case .guestNotPVAware:
            return "dirty source 'pv' needs a guest that registered the PV interface; use 'kvm' or 'hybrid' for this guest"
        case .ringNotTrustedAlone:
            return "dirty source 'kvm' cannot rely on KVM's dirty ring alone on a PVM host (it loses pages there); use 'hybrid'"
        case let .kvm(e): return "dirty logging: \(e)"
        }
    }
}

/// Dirty-page tracking for one machine: KVM's bitmap (with manual protect where the host
/// has it) or, when the machine enabled it, KVM's dirty ring; the guest's PV ring; and the
/// pages the VMM wrote — combined by `mode`.
///
/// `start()` begins a fresh epoch; each `harvest` returns the pages written since the
/// previous one (or since start). Pages the VMM writes are always included.
public final class DirtyTracker: @unchecked Sendable {
    public let mode: DirtySourceMode
    private let machine: Machine
    private let manualProtect: Bool
    private var running = false

    public init(machine: Machine, mode: DirtySourceMode) throws(DirtyTrackingError) {
        if mode == .pv, !machine.pv.isRegistered { throw .guestNotPVAware }
        if mode == .kvm, machine.dirtyRing != nil, machine.isPVMHost { throw .ringNotTrustedAlone }
        self.machine = machine
        self.mode = mode
        manualProtect = machine.hypervisor.capability(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) & 1 != 0
    }

    private var usesKVM: Bool { mode != .pv }
    private var usesPV: Bool { mode != .kvm && machine.pv.isRegistered }

    public func start() throws(DirtyTrackingError) {
        guard !running else { return }
        // PV first, then KVM: a write in between is then reported by the guest (PV ⊇ KVM);
        // the other order would let KVM see a write the guest was not yet asked to log.
        // LOGGING goes on with the vCPUs parked: the guest's flag load, made after its page
        // stores, cannot then overtake a store that the first round's copy might miss.
        if usesPV { machine.withVCPUsPaused { _ = machine.pv.setLogging(true) } }
        do {
            if usesKVM {
                if manualProtect, machine.dirtyRing == nil { try machine.enableManualDirtyProtect() }
                try machine.setDirtyLogging(true)
            }
        } catch { throw .kvm(error) }
        _ = machine.memory.takeHostWrittenPages()
        running = true
    }

    public func stop() {
        guard running else { return }
        if usesKVM { try? machine.setDirtyLogging(false) }
        if mode != .kvm { machine.pv.setLogging(false) }
        running = false
    }

    /// The pages written since the last harvest. `vcpusPaused` lets the PV source include
    /// the guest's in-flight page (§2.4); the final round of a migration harvests paused.
    public func harvest(vcpusPaused: Bool) throws(DirtyTrackingError) -> DirtyRound {
        let memory = machine.memory
        var kvm: PageBitmap?
        var kvmUntrustworthy = false
        if usesKVM, let ring = machine.dirtyRing {
            let h = ring.harvest(memory: memory, vm: machine.vm)
            kvm = h.pages
            kvmUntrustworthy = h.broken
        } else if usesKVM {
            var bitmap = PageBitmap(pageCount: memory.pageCount)
            do {
                for (region, offset) in zip(memory.regions, memory.regionPageOffsets) {
                    let words = try machine.vm.dirtyLog(slot: region.slot, pageCount: region.pageCount)
                    if manualProtect, words.contains(where: { $0 != 0 }) {
                        try machine.vm.clearDirtyLog(slot: region.slot, pageCount: region.pageCount, bitmap: words)
                    }
                    bitmap.merge(words: words, atPage: offset)
                }
            } catch { throw .kvm(error) }
            kvm = bitmap
        }
        var pv: PageBitmap?
        var untrustworthy = false
        if usesPV, let h = machine.pv.harvest(vcpusPaused: vcpusPaused) {
            pv = h.logged.union(h.alwaysDirty)
            untrustworthy = h.untrustworthy
        }
        let host = memory.takeHostWrittenPages()
        var pages = host
        if let kvm { pages.formUnion(kvm) }
        if let pv { pages.formUnion(pv) }
        if (untrustworthy && mode == .pv) || kvmUntrustworthy { pages = .full(pageCount: memory.pageCount) }
        let ballooned = machine.pv.balloonedPages
        pages.subtract(ballooned)
        return DirtyRound(pages: pages, kvm: kvm, pv: pv, host: host, pvUntrustworthy: untrustworthy,
                          kvmUntrustworthy: kvmUntrustworthy, ballooned: ballooned)
    }
}
