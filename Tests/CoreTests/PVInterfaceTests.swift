import Core
import Testing

/// The host side of the PV ABI (protocol.md §2) against a simulated guest: the test writes
/// the guest's control page into guest memory and issues its hypercalls.
@Suite struct PVInterfaceTests {
    let memory = try! GuestMemory(size: 16 << 20)
    let console = ConsoleBuffer()
    let controlGPA: UInt64 = 0x20_0000
    let ringGPA: UInt64 = 0x20_1000
    let ringEntries: UInt32 = 64

    func pv() -> PVInterface { PVInterface(memory: memory, console: console) }

    @discardableResult
    func call(_ pv: PVInterface, _ op: UInt32, _ arg: UInt32 = 0) -> IOAction {
        let v = (op | (arg << 12)).littleEndian
        return withUnsafeBytes(of: v) { pv.write(offset: 0, data: $0) }
    }

    func u32(_ off: UInt64) -> UInt32 { try! memory.readInteger(UInt32.self, at: GuestPhysicalAddress(controlGPA + off)) }
    func put32(_ off: UInt64, _ v: UInt32) { try! memory.writeInteger(v, at: GuestPhysicalAddress(controlGPA + off)) }
    func put64(_ off: UInt64, _ v: UInt64) { try! memory.writeInteger(v, at: GuestPhysicalAddress(controlGPA + off)) }

    /// A well-formed control page with one always-dirty range (the control page + ring).
    func prepareControlPage(magic: UInt32 = 0x434d_5650) {
        put32(0, magic)
        put32(4, 1)
        put64(8, ringGPA)
        put32(0x10, ringEntries)
        put32(0x14, 1)
        put64(0x300, controlGPA)
        put64(0x308, 2)
    }

    func registered() -> PVInterface {
        prepareControlPage()
        let p = pv()
        call(p, 3, UInt32(controlGPA >> 12))
        return p
    }

    func append(_ pfn: UInt64) {
        let head = u32(0x80)
        try! memory.writeInteger(pfn, at: GuestPhysicalAddress(ringGPA + UInt64(head % ringEntries) * 8))
        put32(0x80, head &+ 1)
    }

    @Test func helloAndSleep() {
        let p = pv()
        #expect(call(p, 1, 1) == .proceed)
        #expect(call(p, 2, 100) == .sleep(milliseconds: 100))
        #expect(p.snapshot.guestVersion == 1 && p.snapshot.sleeps == 1 && p.snapshot.totalRejected == 0)
    }

    @Test func registerAcceptsAGoodControlPage() {
        let p = registered()
        #expect(p.isRegistered)
        #expect(u32(0x50) == 1) // host_status
        #expect(p.snapshot.totalRejected == 0)
    }

    enum Corruption: String, CaseIterable, Sendable {
        case badMagic, badVersion, ringEntriesNotPowerOfTwo, ringTooSmall, ringUnaligned, ringOutsideRAM
        case ringOverlapsControlPage, tooManyAlwaysDirtyRanges, alwaysDirtyOutsideRAM, alwaysDirtyZeroPages

        func apply(_ t: PVInterfaceTests) {
            switch self {
            case .badMagic: t.put32(0, 0xdead)
            case .badVersion: t.put32(4, 3)
            case .ringEntriesNotPowerOfTwo: t.put32(0x10, 100)
            case .ringTooSmall: t.put32(0x10, 32)
            case .ringUnaligned: t.put64(8, t.ringGPA + 8)
            case .ringOutsideRAM: t.put64(8, 0xfff_f000)
            case .ringOverlapsControlPage: t.put64(8, t.controlGPA)
            case .tooManyAlwaysDirtyRanges: t.put32(0x14, 9)
            case .alwaysDirtyOutsideRAM: t.put64(0x300, 0x4000_0000)
            case .alwaysDirtyZeroPages: t.put64(0x308, 0)
            }
        }
    }

    @Test(arguments: Corruption.allCases)
    func registerRejectsABadControlPage(_ corruption: Corruption) {
        prepareControlPage()
        corruption.apply(self)
        let p = pv()
        call(p, 3, UInt32(controlGPA >> 12))
        #expect(!p.isRegistered, "accepted a control page with \(corruption)")
        #expect(p.snapshot.rejected[.badControlArea] == 1)
        #expect(u32(0x50) == 0)
    }

    /// Hostile guest: every kind of invalid hypercall is refused and counted by reason.
    @Test func hostileHypercallsAreRejectedAndCounted() {
        let p = pv()
        _ = [UInt8](arrayLiteral: 1).withUnsafeBytes { p.write(offset: 0, data: $0) } // 8-bit
        call(p, 0xabc)                 // unknown
        call(p, 2, 0)                  // sleep 0
        call(p, 4)                     // ring full before register
        call(p, 5, 1)                  // inflate before register
        call(p, 3, 0xf_ffff)           // control page outside RAM
        prepareControlPage()
        call(p, 3, UInt32(controlGPA >> 12))
        call(p, 3, UInt32(controlGPA >> 12)) // again
        call(p, 5, 0); call(p, 5, 33)  // descriptor counts
        call(p, 7, 0); call(p, 7, 2000) // console lengths
        let r = p.snapshot.rejected
        #expect(r[.badArgument] == 4)
        #expect(r[.unknownOperation] == 1)
        #expect(r[.notRegistered] == 2)
        #expect(r[.badControlArea] == 1)
        #expect(r[.reRegistration] == 1)
        #expect(r[.badConsoleLength] == 2)
        #expect(p.isRegistered)
    }

    @Test func ringEntriesAreValidatedAndHarvestedOncePerGeneration() {
        let p = registered()
        #expect(p.setLogging(true))
        #expect(u32(0x40) & 1 == 1)
        let gen0 = u32(0x44)
        append(0x300)          // valid
        append(0x301)          // valid
        append(0x10_0000)      // beyond 16 MiB of RAM
        append(0x302 | 1 << 60) // reserved bits
        let h = p.harvest(vcpusPaused: false)!
        #expect(h.logged.indices == [0x300, 0x301])
        #expect(!h.untrustworthy)
        #expect(p.snapshot.rejected[.badRingEntry] == 2)
        #expect(u32(0x48) == u32(0x80)) // tail caught up with head
        #expect(u32(0x44) == gen0 &+ 1)
        // The always-dirty range and the ring pages count every round.
        #expect(h.alwaysDirty.contains(0x200) && h.alwaysDirty.contains(0x201))
        #expect(p.harvest(vcpusPaused: false)!.logged.isEmpty)
    }

    @Test func ringFullDrainsWithoutANewGeneration() {
        let p = registered()
        p.setLogging(true)
        let gen = u32(0x44)
        for i in 0..<UInt64(ringEntries) { append(0x400 + i) }
        call(p, 4)
        #expect(u32(0x48) == u32(0x80))
        #expect(u32(0x44) == gen)
        #expect(p.harvest(vcpusPaused: false)!.logged.count == Int(ringEntries))
    }

    @Test func corruptRingIndexMakesTheRoundUntrustworthyAndResyncs() {
        let p = registered()
        p.setLogging(true)
        put32(0x80, u32(0x48) &+ ringEntries &+ 5)
        call(p, 4)
        #expect(p.snapshot.rejected[.badRingIndex] == 1)
        #expect(u32(0x48) == u32(0x80))
        #expect(p.harvest(vcpusPaused: false)!.untrustworthy)
        #expect(!p.harvest(vcpusPaused: false)!.untrustworthy)
    }

    @Test func inflightPageCountsOnlyWhenPaused() {
        let p = registered()
        p.setLogging(true)
        put32(0x84, 1)
        put64(0x88, 0x555)
        #expect(!p.harvest(vcpusPaused: false)!.logged.contains(0x555))
        #expect(p.harvest(vcpusPaused: true)!.logged.contains(0x555))
    }

    @Test func balloonInflateDiscardsAndDeflateReturns() {
        let p = registered()
        let range: UInt64 = 0x40_0000
        try! memory.write([UInt8](repeating: 0xab, count: 8192), at: GuestPhysicalAddress(range))
        put64(0x108, range); put64(0x110, 2)
        call(p, 5, 1)
        #expect(p.balloonedPages.indices == [0x400, 0x401])
        // Host memory is released (checked before any read, which would map the zero page).
        #expect(!memory.residentPages().contains(0x400) && !memory.residentPages().contains(0x401))
        #expect(try! memory.read(at: GuestPhysicalAddress(range), count: 8) == [0, 0, 0, 0, 0, 0, 0, 0])
        call(p, 6, 1)
        #expect(p.balloonedPages.isEmpty)
        #expect(p.snapshot.inflatedPages == 2 && p.snapshot.deflatedPages == 2)
    }

    @Test func badBalloonRangesAreRejectedOneByOne() {
        let p = registered()
        let bad: [(UInt64, UInt64)] = [(0x40_0010, 1), (0x40_0000, 0), (0x200_0000, 4),
                                       (0xffff_ffff_ffff_f000, 16), (controlGPA, 1)]
        for (i, d) in bad.enumerated() { put64(0x108 + UInt64(i) * 16, d.0); put64(0x110 + UInt64(i) * 16, d.1) }
        put64(0x108 + 5 * 16, 0x50_0000); put64(0x110 + 5 * 16, 1) // one good range
        call(p, 5, 6)
        #expect(p.snapshot.rejected[.badBalloonRange] == 5)
        #expect(p.balloonedPages.indices == [0x500])
    }

    @Test func consoleHypercallPrintsTheBuffer() {
        let p = registered()
        try! memory.write(Array("hello\n".utf8), at: GuestPhysicalAddress(controlGPA + 0x400))
        call(p, 7, 6)
        #expect(console.text == "hello\n")
    }

    @Test func throttleAndSelfcheckRequestsLandInTheControlPage() {
        let p = registered()
        p.setThrottle(pagesPerSecond: 1234)
        #expect(u32(0x4c) == 1234)
        #expect(p.requestSelfcheck() == 1)
        #expect(u32(0x54) == 1 && u32(0x40) & 2 == 2)
        #expect(pv().requestSelfcheck() == nil)
    }
}
