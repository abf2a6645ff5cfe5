import CKVM

/// Which dirty-page sources a migration trusts, and when (design.md "Dirty tracking",
/// protocol.md §3.5.1). Every mode also includes the VMM's own writes, and every migration
/// ends with the verification sweep (§3.5.2), which catches what a source missed before it.
public enum DirtySourceMode: String, CaseIterable, Sendable, Codable {
    /// KVM's dirty log only (write-protect based: always correct, costs a fault per page).
    case kvm
    /// The guest's PV ring only, to the end: fastest, for guests trusted to report every
    /// write (writes after the sweep has begun rest on the guest alone).
    case pv
    /// The union of KVM's log and the PV ring for the whole migration (slows a guest that
    /// dirties fast: every harvest re-protects its pages).
    case hybrid
    /// The default: the PV ring alone during pre-copy (the guest keeps its speed), then, from
    /// the start of the verification sweep to the end, KVM's log too — so the final set is
    /// exact even for a guest that under-reports.
    case pvVerified = "pv-verified"

    /// KVM logging from `start()` on.
    var kvmFromStart: Bool { self == .kvm || self == .hybrid }
    var usesPV: Bool { self != .kvm }
}

/// One harvest: what must be sent, and where it came from.
public struct DirtyRound: Sendable {
    /// The pages to treat as dirty in this round (per the mode), including VMM writes.
    public var pages: PageBitmap
    /// KVM's dirty log, when the mode uses it.
    public var kvm: PageBitmap?
    /// The pages the guest logged through its PV ring, when the mode uses it; its always-dirty
    /// ranges are not in it (`alwaysDirtyPages`, `alwaysDirtyVouched`).
    public var pv: PageBitmap?
    /// Pages of the guest's always-dirty ranges (§2.2) added to `pages` whole: all of them,
    /// or 0 when KVM's log vouched for them (`alwaysDirtyVouched`).
    public var alwaysDirtyPages = 0
    /// KVM's log watched the whole interval, so of the always-dirty ranges only what it or
    /// the VMM's writes report, plus the VIF pages, is in `pages` (§3.5.1, `AlwaysDirtyFilter`).
    public var alwaysDirtyVouched = false
    /// Pages the VMM itself wrote.
    public var host: PageBitmap
    /// The PV ring was corrupt: `pages` is every page.
    public var pvUntrustworthy: Bool
    /// KVM's dirty ring lost entries (watchdog): `pages` is every page.
    public var kvmUntrustworthy = false
    /// Pages the guest has ballooned: never sent, so never in `pages` (protocol.md §2.5).
    public var ballooned = PageBitmap(pageCount: 0)
    /// Wall-clock seconds each source's harvest took (KVM's ioctls, the PV ring's drain and
    /// barrier), for the downtime model (issue 11: what of the paused harvest grows with memory).
    public var sourceSeconds: [DirtySourceKind: Double] = [:]
    /// Of those: KVM's dirty log (KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG per slot, or its ring).
    public var kvmSeconds: Double { sourceSeconds.filter { $0.key.isKVM }.values.reduce(0, +) }
    /// Of `kvmSeconds`: re-arming KVM's log for the next harvest (KVM_CLEAR_DIRTY_LOG), which
    /// the last harvest skips.
    public var kvmRearmSeconds = 0.0
}

public enum DirtyTrackingError: Error, Equatable, CustomStringConvertible {
    case guestNotPVAware
    case ringNotTrustedAlone
    case kvm(KVMError)
    /// A vCPU's VIF page at the pause is not one the harvests that relied on KVM's log sent.
    case vifPageMoved

    public var description: String {
        switch self {
        case .guestNotPVAware:
            return "dirty source 'pv' needs a guest that registered the PV interface; use 'kvm' or 'hybrid' for this guest"
        case .ringNotTrustedAlone:
            return "dirty source 'kvm' cannot rely on KVM's dirty ring alone on a PVM host (it loses pages there); use 'hybrid'"
        case let .kvm(e): return "dirty logging: \(e)"
        case .vifPageMoved:
            return "the guest registered a new VIF page during the migration, after the rounds relied on the old one "
                + "(protocol.md §3.5.1); the VM stays here: retry the migration"
        }
    }
}

/// Dirty-page tracking for one machine: `DirtySource`s combined by `mode`. `start()`
/// begins a fresh epoch; each `harvest` returns the union of what the sources report since
/// the previous one (or since start); the VMM's writes are always included.
public final class DirtyTracker: @unchecked Sendable {
    public let mode: DirtySourceMode
    private let machine: Machine
    private var sources: [any DirtySource]
    private var running = false
    /// The last two harvests' `pages`, reused in turn (`PageBitmap.recycling`): a caller
    /// that keeps the previous round's set while the next harvest runs (pre-copy sends it)
    /// has let go of the one before, so a harvest allocates no full-size bitmap.
    private var spares = [PageBitmap(pageCount: 0), PageBitmap(pageCount: 0)]
    /// Whether KVM's log vouches for the always-dirty ranges in the next harvest.
    private var alwaysDirtyFilter = AlwaysDirtyFilter()
    /// The vCPUs' VIF pages, read when KVM's bitmap went on (with the guest running: a kick per
    /// vCPU, once — not in the pause); nil when they could not be read (then nothing is
    /// vouched for). `confirmVIFPages` checks them against the paused state.
    private var vifPages: [GuestPhysicalAddress]? = []
    /// Some harvest relied on `vifPages`.
    private var reliedOnVIFPages = false

    public init(machine: Machine, mode: DirtySourceMode) throws(DirtyTrackingError) {
        if mode == .pv, !machine.pv.isRegistered { throw .guestNotPVAware }
        let kvmAlone = mode == .kvm || (mode == .pvVerified && !machine.pv.isRegistered)
        if kvmAlone, machine.dirtyRing != nil, machine.isPVMHost { throw .ringNotTrustedAlone }
        self.machine = machine
        self.mode = mode
        // PV first, then KVM: a write in between is then reported by the guest (PV ⊇ KVM);
        // the other order would let KVM see a write the guest was not yet asked to log.
        var sources: [any DirtySource] = []
        if mode.usesPV, machine.pv.isRegistered || mode != .pvVerified { sources.append(PVRingSource(machine: machine)) }
        // pv-verified for a guest without the PV interface: nothing would report its writes
        // before the sweep, so KVM's log runs from the start (as `kvm`).
        if mode.kvmFromStart || !machine.pv.isRegistered { sources.append(Self.kvmSource(machine)) }
        sources.append(VMMWritesSource(memory: machine.memory))
        self.sources = sources
    }

    private static func kvmSource(_ machine: Machine) -> any DirtySource {
        if let ring = machine.dirtyRing { return KVMRingSource(machine: machine, ring: ring) }
        return KVMBitmapSource(machine: machine)
    }

    /// The kinds of source in use now.
    public var kinds: [DirtySourceKind] { sources.map(\.kind) }
    /// Whether KVM's log is among them.
    public var usesKVM: Bool { sources.contains { $0.kind.isKVM } }

    public func start() throws(DirtyTrackingError) {
        guard !running else { return }
        for source in sources { try source.start() }
        running = true
        if sources.contains(where: { $0.kind == .kvmBitmap }) { kvmBitmapStarted() }
    }

    public func stop() {
        guard running else { return }
        for source in sources { source.stop() }
        running = false
        alwaysDirtyFilter.kvmStopped()
    }

    /// KVM's bitmap is on from now: the interval of the next harvest is not all covered by it.
    private func kvmBitmapStarted() {
        alwaysDirtyFilter.kvmStarted()
        vifPages = try? machine.registeredVIFPages()
    }

    /// The paused machine's VIF registrations (`MachineState.registeredVIFPages`, saved in the
    /// pause anyway — no extra MSR read): when a harvest relied on the VIF pages read at KVM's
    /// start and a vCPU now has another, that page's PVM-host writes may be in no round, so
    /// the migration must not commit (§3.5.1). The built-in guest registers its VIF pages at boot.
    public func confirmVIFPages(_ registered: [GuestPhysicalAddress]) throws(DirtyTrackingError) {
        guard reliedOnVIFPages else { return }
        let known = Set((vifPages ?? []).map(\.raw))
        if registered.contains(where: { !known.contains($0.raw) }) { throw .vifPageMoved }
    }

    /// Adds KVM's log from now on (the verification sweep's start, §3.5.2); the next harvest
    /// reports, from it, every guest write made after this returns. Does nothing when KVM is
    /// already in use.
    public func addKVM() throws(DirtyTrackingError) {
        guard !usesKVM else { return }
        let kvm = Self.kvmSource(machine)
        if running { try kvm.start() }
        sources.insert(kvm, at: sources.count - 1)
        if running, kvm.kind == .kvmBitmap { kvmBitmapStarted() }
    }

    /// The pages written since the last harvest. `vcpusPaused` lets the PV source include
    /// the guest's in-flight page (§2.4); the final round of a migration harvests paused.
    /// `last`: no harvest follows before `stop` (the final round), so KVM's log is not re-armed.
    public func harvest(vcpusPaused: Bool, last: Bool = false) throws(DirtyTrackingError) -> DirtyRound {
        let memory = machine.memory
        var round = DirtyRound(pages: .recycling(&spares[0], pageCount: memory.pageCount),
                               host: PageBitmap(pageCount: 0), pvUntrustworthy: false)
        // Decided before the sources run: KVM's log covers the interval since the previous harvest.
        let vouched = alwaysDirtyFilter.vouches && vifPages != nil
        alwaysDirtyFilter.harvestBegins()
        var alwaysDirty: [Range<Int>] = []
        for source in sources {
            let started = ContinuousClock.now
            let h = try source.harvest(vcpusPaused: vcpusPaused, last: last)
            let spent = ContinuousClock.now - started
            round.sourceSeconds[source.kind] = Double(spent.components.seconds) + Double(spent.components.attoseconds) / 1e18
            round.pages.formUnion(h.pages)
            alwaysDirty += h.alwaysDirty
            switch source.kind {
            case .kvmBitmap, .kvmRing:
                round.kvm = h.pages; round.kvmUntrustworthy = h.untrustworthy; round.kvmRearmSeconds += h.rearmSeconds
            case .pvRing: round.pv = h.pages; round.pvUntrustworthy = h.untrustworthy
            case .vmmWrites: round.host = h.pages
            }
        }
        // `pages` holds KVM's log and the VMM's writes now: vouched, that is all of the
        // always-dirty ranges that changed, the VIF pages aside.
        let vif = (vifPages ?? []).compactMap { memory.pageIndex(of: $0.frame) }
        round.alwaysDirtyPages = AlwaysDirtyFilter.add(alwaysDirty, vif: vif, vouched: vouched, into: &round.pages)
        round.alwaysDirtyVouched = vouched
        reliedOnVIFPages = reliedOnVIFPages || vouched
        alwaysDirtyFilter.harvested(kvmUntrustworthy: round.kvmUntrustworthy)
        // A source that may have lost pages: every page, unless KVM's log covers the guest's
        // writes (a corrupt PV ring under `hybrid` or after the sweep began).
        if round.kvmUntrustworthy || (round.pvUntrustworthy && !usesKVM) {
            round.pages = .full(pageCount: memory.pageCount)
        }
        round.ballooned = machine.pv.balloonedPages
        round.pages.subtract(round.ballooned)
        // Kept for the harvest after next; a `last` harvest keeps none, so the caller's sets
        // are its own again (adding to them in the pause must not copy).
        spares = last ? [PageBitmap(pageCount: 0), PageBitmap(pageCount: 0)] : [spares[1], round.pages]
        return round
    }
}
