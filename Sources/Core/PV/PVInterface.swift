import CKVM
import Foundation

/// Why the host refused something a guest did (protocol.md §2.8).
public enum PVRejection: String, CaseIterable, Sendable {
    case unknownOperation, badArgument, notRegistered, reRegistration, badControlArea
    case badRingIndex, badRingEntry, badBalloonRange, badConsoleLength
}

/// The host side of the PV ABI v1 (protocol.md §2): the PV port's hypercalls, the guest's
/// control page, its dirty ring, balloon and console.
///
/// Hypercalls run on the vCPU thread; the migration side (`DirtyTracker`, counters,
/// throttle, self-check requests) calls in from other threads. One lock guards the state.
/// Every guest value is validated before use; a rejection is counted and the guest goes on.
public final class PVInterface: BusDevice, @unchecked Sendable {
    public static let port: UInt16 = 0x5650

    enum Operation: UInt32 {
        case hello = 0x001, sleep = 0x002, register = 0x003, ringFull = 0x004
        case balloonInflate = 0x005, balloonDeflate = 0x006, console = 0x007
        case netAttach = 0x020, netKick = 0x021 // the PV NIC, protocol.md §5.1
    }
    static let maximumSleepMilliseconds: UInt32 = (1 << 20) - 1
    static let ringEntryLimits = 64...(1 << 20)
    static let alwaysDirtyLimit: UInt64 = 256 << 20

    /// What the host has seen of the guest's PV activity.
    public struct Counters: Sendable, Equatable {
        public var guestVersion: UInt32?
        public var registered = false
        public var hellos = 0, sleeps = 0, ringFullExits = 0, consoleWrites = 0
        public var drainedEntries = 0, inflatedPages = 0, deflatedPages = 0
        public var rejected: [PVRejection: Int] = [:]
        public var totalRejected: Int { rejected.values.reduce(0, +) }
        public init() {}
    }

    /// The guest's own progress counters from its control page (informational, §2.6).
    public struct GuestCounters: Sendable, Equatable {
        public var pagesWritten: UInt64, rate: UInt64, passes: UInt64, workload: UInt32
        public var selfcheckState: UInt32, selfcheckPages: UInt64, selfcheckBad: UInt64, selfcheckDone: UInt32
    }

    let memory: GuestMemory
    /// The PV NIC (protocol.md §5), when the VM has one: NET_ATTACH and NET_KICK go to it.
    public let net: PVNet?
    private let console: ConsoleSink
    private let log: @Sendable (String) -> Void
    let lock = NSLock()
    // Guarded by `lock`:
    private var counters = Counters()
    var control: ControlPage?
    var ring: (gpa: GuestPhysicalAddress, host: UnsafeMutableRawPointer, entries: UInt32)?
    var alwaysDirty = [GuestRange]()
    var pending: PageBitmap
    var ringCorrupt = false
    private(set) var balloon: PageBitmap

    public init(memory: GuestMemory, console: ConsoleSink, net: PVNet? = nil,
                log: @escaping @Sendable (String) -> Void = { _ in }) {
        self.memory = memory
        self.net = net
        self.console = console
        self.log = log
        pending = PageBitmap(pageCount: memory.pageCount)
        balloon = PageBitmap(pageCount: memory.pageCount)
    }

    public var snapshot: Counters { lock.withLock { counters } }
    public var isRegistered: Bool { lock.withLock { control != nil } }
    /// Pages the guest has ballooned (never to be sent).
    public var balloonedPages: PageBitmap { lock.withLock { balloon } }

    func reject(_ why: PVRejection) { counters.rejected[why, default: 0] += 1 } // lock held
    func recordDrained() { counters.drainedEntries += 1 } // lock held
    var snapshotLocked: Counters { counters }
    var balloonLocked: PageBitmap { balloon }
    func setBalloonLocked(words: [UInt64]) {
        balloon = PageBitmap(pageCount: memory.pageCount)
        balloon.merge(words: words, atPage: 0)
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
        case .register:
            guard control == nil else { reject(.reRegistration); return .proceed }
            registerControlPage(pfn: UInt64(argument))
            if let control { hostStore(control, .hostStatus, 1) }
        case .ringFull, .balloonInflate, .balloonDeflate, .console, .netAttach, .netKick:
            guard op != .netAttach && op != .netKick || net != nil else { reject(.unknownOperation); return .proceed }
            guard let control else { reject(.notRegistered); return .proceed }
            switch op {
            case .netAttach:
                let pvRanges = [GuestRange(start: control.gpa, size: GuestPhysicalAddress.pageSize)!]
                    + (ring.map { [GuestRange(start: $0.gpa, size: UInt64($0.entries) * 8)!] } ?? [])
                net?.attach(pfn: UInt64(argument), pvRanges: pvRanges)
            case .netKick:
                guard argument == 0 else { reject(.badArgument); break }
                net?.kick()
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

    // MARK: Registration (§2.2)

    private func registerControlPage(pfn: UInt64) {
        guard let gpa = PageFrame(pfn).address else { reject(.badControlArea); return }
        adoptControlPageLocked(gpa: gpa.raw)
    }

    /// Validates the control page at `gpa` and adopts it (REGISTER, or a restore). Lock held.
    func adoptControlPageLocked(gpa raw: UInt64) {
        let gpa = GuestPhysicalAddress(raw)
        guard gpa.isPageAligned,
              let page = try? memory.bytes(at: gpa, count: GuestPhysicalAddress.pageSize),
              let host = page.baseAddress else { reject(.badControlArea); return }
        let c = ControlPage(gpa: gpa, host: host)
        let entries = c.u32(.ringEntries)
        let ringGPA = GuestPhysicalAddress(c.u64(.ringGPA))
        let alwaysCount = Int(c.u32(.alwaysDirtyCount))
        guard c.u32(.magic) == ControlPage.magic, c.u16(.abiVersion) == ControlPage.abiVersion,
              Self.ringEntryLimits.contains(Int(entries)), entries.nonzeroBitCount == 1,
              ringGPA.isPageAligned,
              let ringRange = GuestRange(start: ringGPA, size: UInt64(entries) * 8),
              let ringBytes = try? memory.bytes(at: ringGPA, count: ringRange.size), let ringHost = ringBytes.baseAddress,
              !ringRange.overlaps(GuestRange(start: gpa, size: GuestPhysicalAddress.pageSize)!),
              alwaysCount <= ControlPage.alwaysDirtyCapacity else {
            reject(.badControlArea); return
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
        ring = (ringGPA, ringHost, entries)
        alwaysDirty = ranges
        counters.registered = true
        log("guest registered its PV control page at \(gpa) (dirty ring of \(entries) entries)")
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

    // MARK: Balloon (§2.5)

    private func applyBalloon(_ c: ControlPage, count: Int, inflate: Bool) {
        let controlRange = GuestRange(start: c.gpa, size: GuestPhysicalAddress.pageSize)!
        let protected = [controlRange] + (ring.map { [GuestRange(start: $0.gpa, size: UInt64($0.entries) * 8)!] } ?? []) + alwaysDirty
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

    /// Asks the guest to write at most `pagesPerSecond` pages per second (0 = no limit).
    public func setThrottle(pagesPerSecond: UInt32) {
        lock.withLock { if let control { hostStore(control, .throttleRate, pagesPerSecond) } }
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
            return GuestCounters(pagesWritten: c.u64(.pagesWritten), rate: c.u64(.rate), passes: c.u64(.passes),
                                 workload: c.u32(.workload), selfcheckState: c.u32(.selfcheckState),
                                 selfcheckPages: c.u64(.selfcheckPages), selfcheckBad: c.u64(.selfcheckBad),
                                 selfcheckDone: c.u32(.selfcheckDone))
        }
    }
}
