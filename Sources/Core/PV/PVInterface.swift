import CKVM
import Foundation

/// Why the host refused something a guest did (protocol.md §2.8).
public enum PVRejection: String, CaseIterable, Sendable {
    case unknownOperation, badArgument, notRegistered, reRegistration, badControlArea
    case badRingIndex, badRingEntry, badBalloonRange, badConsoleLength
    /// VCPU_START (§2.10) with a bad start block, for a vCPU the VM does not have, or for one
    /// already started.
    case badVCPUStart
}

/// One vCPU's dirty ring as REGISTER validated it (protocol.md §2.4, §2.10): `area` is the
/// control page for vCPU 0 and the vCPU's area page for the others.
struct VCPURing {
    let area: ControlPage
    let range: GuestRange
    let host: UnsafeMutableRawPointer
    let entries: UInt32
}

/// The host side of the PV ABI v1 and v2 (protocol.md §2): the PV port's hypercalls, the guest's
/// control page, its dirty ring, balloon and console.
///
/// Hypercalls run on the vCPU thread; the migration side (`DirtyTracker`, counters,
/// throttle, self-check requests) calls in from other threads. One lock guards the state.
/// Every guest value is validated before use; a rejection is counted and the guest goes on.
public final class PVInterface: BusDevice, @unchecked Sendable {
    public static let port: UInt16 = 0x5650

    enum Operation: UInt32 {
        case hello = 0x001, sleep = 0x002, register = 0x003, ringFull = 0x004
        case balloonInflate = 0x005, balloonDeflate = 0x006, console = 0x007, vcpuStart = 0x008
        case netAttach = 0x020, netKick = 0x021, netSleep = 0x022 // the PV NIC, protocol.md §5.1
    }
    /// "PVAP": the magic of a VCPU_START block (§2.10).
    static let startBlockMagic: UInt32 = 0x5041_5650
    /// The guest lives in the lower half (§1.6): entry points and stacks must be below this.
    static let lowerHalfLimit: UInt64 = 1 << 47
    static let maximumSleepMilliseconds: UInt32 = (1 << 20) - 1
    static let ringEntryLimits = 64...(1 << 20)
    static let alwaysDirtyLimit: UInt64 = 256 << 20

    /// What the host has seen of the guest's PV activity.
    public struct Counters: Sendable, Equatable {
        public var guestVersion: UInt32?
        public var registered = false
        public var hellos = 0, sleeps = 0, ringFullExits = 0, consoleWrites = 0
        public var drainedEntries = 0, inflatedPages = 0, deflatedPages = 0
        /// Ring entries drained per vCPU (index = vCPU; only vCPUs with a registered ring).
        public var drainedPerVCPU: [Int] = []
        public var rejected: [PVRejection: Int] = [:]
        public var totalRejected: Int { rejected.values.reduce(0, +) }
        public init() {}
    }

    /// The guest's own progress counters from its control page (informational, §2.6).
    public struct GuestCounters: Sendable, Equatable {
        public var pagesWritten: UInt64, rate: UInt64, passes: UInt64, workload: UInt32
        public var selfcheckState: UInt32, selfcheckPages: UInt64, selfcheckBad: UInt64, selfcheckDone: UInt32
        /// Each vCPU's own counters (its control page or area, §2.10); the totals above sum
        /// `pagesWritten` and `rate` over them.
        public var perVCPU: [VCPUGuestCounters] = []
    }

    /// One vCPU's progress counters, from its area (§2.10; vCPU 0: the control page).
    public struct VCPUGuestCounters: Sendable, Equatable {
        public var pagesWritten: UInt64, rate: UInt64, passes: UInt64
    }

    let memory: GuestMemory
    /// The PV NIC (protocol.md §5), when the VM has one: NET_ATTACH and NET_KICK go to it.
    public let net: PVNet?
    /// The VM's vCPU count: a guest may register areas for vCPUs 1..<vcpuCount only (§2.10).
    public let vcpuCount: Int
    private let console: ConsoleSink
    private let log: @Sendable (String) -> Void
    let lock = NSLock()
    // Guarded by `lock`:
    private var counters = Counters()
    var control: ControlPage?
    /// Index = vCPU: the control page's ring, then one per registered vCPU area (§2.10).
    var rings: [VCPURing] = []
    var alwaysDirty = [GuestRange]()
    var pending: PageLog
    var ringCorrupt = false
    private(set) var balloon: PageBitmap

    public init(memory: GuestMemory, vcpuCount: Int = 1, console: ConsoleSink, net: PVNet? = nil,
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.memory = memory
        self.vcpuCount = vcpuCount
        self.net = net
        net?.vcpuCount = vcpuCount
        self.console = console
        self.log = log
        pending = PageLog(pageCount: memory.pageCount)
        balloon = PageBitmap(pageCount: memory.pageCount)
        net?.pvRanges = { [weak self] in self?.netProtectedRanges() ?? [] }
    }

    public var snapshot: Counters { lock.withLock { counters } }
    public var isRegistered: Bool { lock.withLock { control != nil } }
    /// Pages the guest has ballooned (never to be sent).
    public var balloonedPages: PageBitmap { lock.withLock { balloon } }

    func reject(_ why: PVRejection) { counters.rejected[why, default: 0] += 1 } // lock held
    func recordDrained(vcpu: Int) { // lock held
        counters.drainedEntries += 1
        if counters.drainedPerVCPU.count <= vcpu {
            counters.drainedPerVCPU += Array(repeating: 0, count: vcpu + 1 - counters.drainedPerVCPU.count)
        }
        counters.drainedPerVCPU[vcpu] += 1
    }
    /// Counts a refused VCPU_START the machine found (target not waiting to start).
    public func rejectVCPUStart() { lock.withLock { reject(.badVCPUStart) } }
    var snapshotLocked: Counters { counters }
    var balloonLocked: PageBitmap { balloon }
    func setBalloonLocked(words: [UInt64]) {
        balloon = PageBitmap(pageCount: memory.pageCount, words: words)
    }
    func setGuestVersionLocked(_ v: UInt32?) { counters.guestVersion = v }

    public func read(offset: UInt64, data: UnsafeMutableRawBufferPointer) {
        data.initializeMemory(as: UInt8.self, repeating: 0)
    }

    public func write(offset: UInt64, data: UnsafeRawBufferPointer) -> IOAction {
        lock.lock()
        defer { lock.unlock() }
        guard data.count == 4 else { reject(.badArgument); return .proceed }
        let value = data.loadUnaligned(as: UInt32.self).littleEndian
        let argument = value >> 12
        guard let op = Operation(rawValue: value & 0xfff) else { reject(.unknownOperation); return .proceed }
        switch op {
        case .hello:
            counters.hellos += 1
            if counters.guestVersion == nil { log("guest is PV-aware (PV ABI v\(argument))") }
            counters.guestVersion = argument
        case .sleep:
            guard argument >= 1, argument <= Self.maximumSleepMilliseconds else { reject(.badArgument); return .proceed }
            counters.sleeps += 1
            return .sleep(milliseconds: argument)
        case .vcpuStart:
            guard let start = startBlock(pfn: UInt64(argument)) else { reject(.badVCPUStart); return .proceed }
            return .startVCPU(start)
        case .register:
            guard control == nil else { reject(.reRegistration); return .proceed }
            registerControlPage(pfn: UInt64(argument))
            if let control { hostStore(control, .hostStatus, 1) }
        case .ringFull, .balloonInflate, .balloonDeflate, .console, .netAttach, .netKick, .netSleep:
            guard ![.netAttach, .netKick, .netSleep].contains(op) || net != nil else { reject(.unknownOperation); return .proceed }
            guard let control else { reject(.notRegistered); return .proceed }
            switch op {
            case .netAttach:
                if net?.attach(pfn: UInt64(argument), pvRanges: netProtectedRangesLocked(control)) == true {
                    return .netAttached
                }
            case .netKick:
                guard argument == 0 else { reject(.badArgument); break }
                net?.kick()
            case .netSleep:
                // SLEEP's argument rules (§2.1); the vCPU thread transmits before it sleeps (§5.5).
                guard argument >= 1, argument <= Self.maximumSleepMilliseconds else { reject(.badArgument); break }
                counters.sleeps += 1
                return net?.sleepRequested() == true ? .netSleep(milliseconds: argument) : .sleep(milliseconds: argument)
            case .ringFull:
                counters.ringFullExits += 1
                drainLocked()
            case .balloonInflate, .balloonDeflate:
                guard argument >= 1, argument <= UInt32(ControlPage.balloonCapacity) else { reject(.badArgument); break }
                applyBalloon(control, count: Int(argument), inflate: op == .balloonInflate)
            default: // console
                guard argument >= 1, argument <= UInt32(ControlPage.consoleCapacity) else { reject(.badConsoleLength); break }
                counters.consoleWrites += 1
                console.console(control.consoleBytes(Int(argument)))
            }
        }
        return .proceed
    }

    /// The ranges the NIC's page, rings and buffers may not overlap (§5.2): the control page,
    /// the other vCPUs' area pages and every vCPU's dirty ring (vCPU 0's area is the control
    /// page, already listed; the NIC checks these ranges against each other too, so none may
    /// appear twice). Lock held.
    func netProtectedRangesLocked(_ control: ControlPage) -> [GuestRange] {
        [GuestRange(start: control.gpa, size: GuestPhysicalAddress.pageSize)!]
            + rings.filter { $0.area.gpa != control.gpa }.map { GuestRange(start: $0.area.gpa, size: GuestPhysicalAddress.pageSize)! }
            + rings.map(\.range)
    }

    /// The same, for a NIC being restored (nothing while no control page is registered).
    func netProtectedRanges() -> [GuestRange] {
        lock.withLock { control.map { netProtectedRangesLocked($0) } ?? [] }
    }

    // MARK: Registration (§2.2)

    private func registerControlPage(pfn: UInt64) {
        guard let gpa = PageFrame(pfn).address else { reject(.badControlArea); return }
        adoptControlPageLocked(gpa: gpa.raw)
    }

    /// Validates the control page at `gpa` — and with ABI v2 its vCPU areas — and adopts it
    /// (REGISTER, or a restore). Lock held.
    func adoptControlPageLocked(gpa raw: UInt64) {
        let gpa = GuestPhysicalAddress(raw)
        guard gpa.isPageAligned, let c = page(at: gpa) else { reject(.badControlArea); return }
        let version = c.u16(.abiVersion)
        let alwaysCount = Int(c.u32(.alwaysDirtyCount))
        guard c.u32(.magic) == ControlPage.magic, ControlPage.abiVersions.contains(version),
              alwaysCount <= ControlPage.alwaysDirtyCapacity,
              let (areas, areaRange) = vcpuAreas(c, version: version) else {
            reject(.badControlArea); return
        }
        // Every ring must be disjoint from the control page, the areas and each other.
        var claimed = [GuestRange(start: gpa, size: GuestPhysicalAddress.pageSize)!] + (areaRange.map { [$0] } ?? [])
        var found: [VCPURing] = []
        for area in [c] + areas {
            guard let r = ring(of: area), !claimed.contains(where: { $0.overlaps(r.range) }) else {
                reject(.badControlArea); return
            }
            claimed.append(r.range)
            found.append(r)
        }
        var ranges: [GuestRange] = []
        var total: UInt64 = 0
        for i in 0..<alwaysCount {
            let d = c.descriptor(base: ControlPage.alwaysDirtyDescriptors, i)
            guard let range = pageRange(gpa: d.gpa, pages: d.pages) else { reject(.badControlArea); return }
            total += range.size
            ranges.append(range)
        }
        guard total <= Self.alwaysDirtyLimit else { reject(.badControlArea); return }
        control = c
        rings = found
        alwaysDirty = ranges + (areaRange.map { [$0] } ?? [])
        counters.registered = true
        log("guest registered its PV control page at \(gpa) (ABI v\(version), \(found.count) dirty ring(s) of \(found[0].entries) entries)")
    }

    /// A whole RAM page at `gpa`, or nil.
    private func page(at gpa: GuestPhysicalAddress) -> ControlPage? {
        guard let bytes = try? memory.bytes(at: gpa, count: GuestPhysicalAddress.pageSize),
              let host = bytes.baseAddress else { return nil }
        return ControlPage(gpa: gpa, host: host)
    }

    /// ABI v2's vCPU areas (§2.10): `vcpu_area_count` pages from `vcpu_area_gpa`, one per vCPU
    /// 1, 2, …; never more than the VM has vCPUs. ([], nil) for v1 or no areas; nil if invalid.
    private func vcpuAreas(_ c: ControlPage, version: UInt16) -> ([ControlPage], GuestRange?)? {
        guard version >= ControlPage.areaAbiVersion else { return ([], nil) }
        let count = Int(c.u32(.vcpuAreaCount))
        guard count > 0 else { return ([], nil) }
        guard count < vcpuCount, let range = pageRange(gpa: c.u64(.vcpuAreaGPA), pages: UInt64(count)),
              !range.overlaps(GuestRange(start: c.gpa, size: GuestPhysicalAddress.pageSize)!) else { return nil }
        var areas: [ControlPage] = []
        for k in 0..<count {
            guard let area = page(at: GuestPhysicalAddress(range.start.raw + UInt64(k) * GuestPhysicalAddress.pageSize)) // inside `range`
            else { return nil }
            areas.append(area)
        }
        return (areas, range)
    }

    /// The ring an area (or the control page) names, validated (§2.2): page-aligned, a power
    /// of two entries in range, inside one RAM region.
    private func ring(of area: ControlPage) -> VCPURing? {
        let entries = area.u32(.ringEntries)
        let ringGPA = GuestPhysicalAddress(area.u64(.ringGPA))
        guard Self.ringEntryLimits.contains(Int(entries)), entries.nonzeroBitCount == 1, ringGPA.isPageAligned,
              let range = GuestRange(start: ringGPA, size: UInt64(entries) * 8),
              let bytes = try? memory.bytes(at: ringGPA, count: range.size), let host = bytes.baseAddress else { return nil }
        return VCPURing(area: area, range: range, host: host, entries: entries)
    }

    /// A VCPU_START block (§2.10) at `pfn`, validated, or nil.
    private func startBlock(pfn: UInt64) -> VCPUStartRequest? {
        guard let gpa = PageFrame(pfn).address, let block = page(at: gpa),
              ckvm_load_acquire_u32(block.host) == Self.startBlockMagic else { return nil }
        let index = Int(ckvm_load_acquire_u32(block.host + 4))
        let rip = ckvm_load_acquire_u64(block.host + 8), rsp = ckvm_load_acquire_u64(block.host + 16)
        let rdi = ckvm_load_acquire_u64(block.host + 24)
        guard index >= 1, index < vcpuCount, rip < Self.lowerHalfLimit, rsp < Self.lowerHalfLimit, rsp != 0 else {
            return nil
        }
        return VCPUStartRequest(index: index, rip: rip, rsp: rsp, rdi: rdi)
    }

    /// A page-aligned range of ≥ 1 page inside one RAM region, or nil.
    func pageRange(gpa: UInt64, pages: UInt64) -> GuestRange? {
        let (size, overflow) = pages.multipliedReportingOverflow(by: GuestPhysicalAddress.pageSize)
        guard !overflow, pages > 0, gpa % GuestPhysicalAddress.pageSize == 0,
              let range = GuestRange(start: GuestPhysicalAddress(gpa), size: size),
              memory.locate(range.start, count: size) != nil else { return nil }
        return range
    }

    /// A host store into the control page; recorded as a VMM write (KVM does not log it).
    func hostStore(_ c: ControlPage, _ field: ControlPage.Field, _ value: UInt32) {
        c.set(field, value)
        memory.markHostWritten(c.gpa, count: GuestPhysicalAddress.pageSize)
    }

    /// The same host field in the control page and every vCPU area (§2.10). Lock held.
    func hostStoreAll(_ field: ControlPage.Field, _ value: UInt32) {
        for r in rings { hostStore(r.area, field, value) }
    }

    // MARK: Balloon (§2.5)

    private func applyBalloon(_ c: ControlPage, count: Int, inflate: Bool) {
        let controlRange = GuestRange(start: c.gpa, size: GuestPhysicalAddress.pageSize)!
        let protected = [controlRange] + rings.map(\.range) + alwaysDirty
        for i in 0..<count {
            let d = c.descriptor(base: ControlPage.balloonDescriptors, i)
            guard let range = pageRange(gpa: d.gpa, pages: d.pages), !protected.contains(where: { $0.overlaps(range) }),
                  let first = memory.pageIndex(of: range.start.frame) else {
                reject(.badBalloonRange); continue
            }
            if inflate {
                memory.discard(range)
                balloon.insert(range: first, count: Int(d.pages))
                counters.inflatedPages += Int(d.pages)
            } else {
                balloon.remove(range: first, count: Int(d.pages))
                // The destination may hold stale data for these pages (sent before the
                // inflate); here they read as zeros. Dirty them so the zeros are sent.
                memory.markHostWritten(range.start, count: range.size)
                counters.deflatedPages += Int(d.pages)
            }
        }
    }

    // MARK: Host requests (§2.7) and guest counters (§2.6)

    /// Asks the guest to write at most `pagesPerSecond` pages per second in all (0 = no limit):
    /// each vCPU with a ring gets an equal share in its own `throttle_rate` (§2.7, §2.10).
    public func setThrottle(pagesPerSecond: UInt32) {
        lock.withLock {
            let share = pagesPerSecond == 0 ? 0 : max(1, pagesPerSecond / UInt32(max(1, rings.count)))
            hostStoreAll(.throttleRate, share)
        }
    }

    /// Asks the guest for a self-check; returns the request number to wait for, or nil
    /// when the guest is not registered.
    public func requestSelfcheck() -> UInt32? {
        lock.withLock {
            guard let control else { return nil }
            let n = control.u32(.selfcheckRequest) &+ 1
            hostStore(control, .hostFlags, control.u32(.hostFlags) | ControlPage.HostFlags.selfcheck.rawValue)
            hostStore(control, .selfcheckRequest, n)
            return n
        }
    }

    public var guestCounters: GuestCounters? {
        lock.withLock {
            guard let c = control else { return nil }
            let each = rings.map {
                VCPUGuestCounters(pagesWritten: $0.area.u64(.pagesWritten), rate: $0.area.u64(.rate),
                                  passes: $0.area.u64(.passes))
            }
            return GuestCounters(pagesWritten: each.reduce(0) { $0 &+ $1.pagesWritten },
                                 rate: each.reduce(0) { $0 &+ $1.rate }, passes: c.u64(.passes),
                                 workload: c.u32(.workload), selfcheckState: c.u32(.selfcheckState),
                                 selfcheckPages: c.u64(.selfcheckPages), selfcheckBad: c.u64(.selfcheckBad),
                                 selfcheckDone: c.u32(.selfcheckDone), perVCPU: each)
        }
    }
}
