import Core
import Testing

/// ABI v2 (protocol.md §2.10) against a simulated 3-vCPU guest: per-vCPU areas and rings,
/// and everything a guest can get wrong about them, refused and counted.
@Suite struct PerVCPUPVTests {
    let memory = try! GuestMemory(size: 16 << 20)
    let console = ConsoleBuffer()
    static let control: UInt64 = 0x20_0000, areas: UInt64 = 0x21_0000
    /// vCPU k's ring (64 entries = 512 bytes, each on its own page).
    static func ring(_ k: UInt64) -> UInt64 { 0x22_0000 + k * 0x1000 }
    static let entries: UInt32 = 64

    func put32(_ gpa: UInt64, _ v: UInt32) { try! memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
    func put64(_ gpa: UInt64, _ v: UInt64) { try! memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
    func get32(_ gpa: UInt64) -> UInt32 { try! memory.readInteger(UInt32.self, at: GuestPhysicalAddress(gpa)) }
    static func area(_ k: UInt64) -> UInt64 { k == 0 ? control : areas + (k - 1) * 0x1000 }

    @discardableResult
    func call(_ pv: PVInterface, _ op: UInt32, _ arg: UInt32 = 0) -> IOAction {
        withUnsafeBytes(of: (op | (arg << 12)).littleEndian) { pv.write(offset: 0, data: $0) }
    }

    /// A v2 control page with `areaCount` areas; every ring on its own page.
    func prepare(areaCount: UInt32 = 2) {
        put32(Self.control, 0x434d_5650)
        put32(Self.control + 4, 2)
        put32(Self.control + 0x14, 0)
        put32(Self.control + 0x18, areaCount)
        put64(Self.control + 0x20, Self.areas)
        for k in 0...UInt64(areaCount) {
            put64(Self.area(k) + 8, Self.ring(k))
            put32(Self.area(k) + 0x10, Self.entries)
        }
    }

    func register(vcpus: Int = 3) -> PVInterface {
        let p = PVInterface(memory: memory, vcpuCount: vcpus, console: console)
        call(p, 3, UInt32(Self.control >> 12))
        return p
    }

    /// Appends `pfn` to vCPU k's ring the way the guest does (§2.4).
    func append(_ k: UInt64, _ pfn: UInt64) {
        let head = get32(Self.area(k) + 0x80)
        put64(Self.ring(k) + UInt64(head % Self.entries) * 8, pfn)
        put32(Self.area(k) + 0x80, head &+ 1)
    }

    @Test func eachVCPUHasItsOwnRingInflightSlotAndHostFields() {
        prepare()
        let p = register()
        #expect(p.isRegistered && p.snapshot.totalRejected == 0)
        append(0, 0x300); append(1, 0x301); append(2, 0x302); append(2, 0x303)
        put64(Self.area(1) + 0x88, 0x304); put32(Self.area(1) + 0x84, 1) // vCPU 1 mid-write
        let running = p.harvest(vcpusPaused: false)!
        #expect(running.logged.contains(0x300) && running.logged.contains(0x301) && running.logged.contains(0x303))
        #expect(!running.logged.contains(0x304))
        #expect(p.snapshot.drainedPerVCPU == [1, 1, 2] && p.snapshot.drainedEntries == 4)
        #expect(p.harvest(vcpusPaused: true)!.logged.contains(0x304))
        // Host fields reach every vCPU: the generation, LOGGING, the throttle; tails advance per ring.
        p.setLogging(true)
        p.setThrottle(pagesPerSecond: 900) // in all: 300 per vCPU
        for k: UInt64 in 0...2 {
            #expect(get32(Self.area(k) + 0x44) == get32(Self.control + 0x44))
            #expect(get32(Self.area(k) + 0x40) & 1 == 1 && get32(Self.area(k) + 0x4c) == 300)
        }
        #expect(get32(Self.area(2) + 0x48) == 2 && get32(Self.area(1) + 0x48) == 1)
        // The areas and every ring are always dirty and protected from the balloon.
        let always = p.harvest(vcpusPaused: false)!.alwaysDirty
        #expect(always.contains(Int(Self.areas >> 12)) && always.contains(Int(Self.ring(2) >> 12)))
    }

    @Test func perVCPUGuestCountersAreSummed() {
        prepare()
        let p = register()
        put64(Self.area(0) + 0x90, 10); put64(Self.area(1) + 0x90, 20); put64(Self.area(2) + 0x90, 30)
        let c = p.guestCounters!
        #expect(c.pagesWritten == 60 && c.perVCPU.map(\.pagesWritten) == [10, 20, 30])
    }

    enum Bad: String, CaseIterable, Sendable {
        case areasForVCPUsTheVMLacks, areasOverlapControlPage, areasOutsideRAM, areasUnaligned
        case ringOverlapsAnotherRing, ringOverlapsAreas, ringOverlapsControlPage, ringEntriesNotPowerOfTwo, ringOutsideRAM

        func apply(_ t: PerVCPUPVTests) {
            switch self {
            case .areasForVCPUsTheVMLacks: t.prepare(areaCount: 3) // a 3-vCPU VM has areas for vCPUs 1 and 2 only
            case .areasOverlapControlPage: t.put64(PerVCPUPVTests.control + 0x20, PerVCPUPVTests.control)
            case .areasOutsideRAM: t.put64(PerVCPUPVTests.control + 0x20, 0x4000_0000)
            case .areasUnaligned: t.put64(PerVCPUPVTests.control + 0x20, PerVCPUPVTests.areas + 8)
            case .ringOverlapsAnotherRing: t.put64(PerVCPUPVTests.area(2) + 8, PerVCPUPVTests.ring(1))
            case .ringOverlapsAreas: t.put64(PerVCPUPVTests.area(1) + 8, PerVCPUPVTests.area(2))
            case .ringOverlapsControlPage: t.put64(PerVCPUPVTests.area(2) + 8, PerVCPUPVTests.control)
            case .ringEntriesNotPowerOfTwo: t.put32(PerVCPUPVTests.area(1) + 0x10, 100)
            case .ringOutsideRAM: t.put64(PerVCPUPVTests.area(2) + 8, 0xfff_f000)
            }
        }
    }

    @Test(arguments: Bad.allCases)
    func badAreasAreRefusedAndCounted(_ bad: Bad) {
        prepare()
        bad.apply(self)
        let p = register()
        #expect(!p.isRegistered, "\(bad.rawValue) was accepted")
        #expect(p.snapshot.rejected == [.badControlArea: 1])
        #expect(get32(Self.control + 0x50) == 0) // host_status stays 0
    }

    @Test func aCorruptAreaRingIndexIsCountedAndResynchronised() {
        prepare()
        let p = register()
        put32(Self.area(2) + 0x80, Self.entries + 5) // head more than a ring ahead of the tail
        append(1, 0x301)
        let h = p.harvest(vcpusPaused: false)!
        #expect(h.untrustworthy && h.logged.contains(0x301))
        #expect(p.snapshot.rejected == [.badRingIndex: 1])
        #expect(get32(Self.area(2) + 0x48) == Self.entries + 5)
        #expect(!p.harvest(vcpusPaused: false)!.untrustworthy)
    }

    /// A VCPU_START block (§2.10) at 0x30_0000.
    func startBlock(magic: UInt32 = 0x5041_5650, vcpu: UInt32, rip: UInt64 = 0x10_0000, rsp: UInt64 = 0x40_0000) {
        put32(0x30_0000, magic); put32(0x30_0004, vcpu); put64(0x30_0008, rip); put64(0x30_0010, rsp)
        put64(0x30_0018, 0x42)
    }

    @Test func vcpuStartBlocksAreValidated() {
        let p = PVInterface(memory: memory, vcpuCount: 3, console: console)
        startBlock(vcpu: 2)
        #expect(call(p, 8, 0x300) == .startVCPU(VCPUStartRequest(index: 2, rip: 0x10_0000, rsp: 0x40_0000, rdi: 0x42)))
        for (block, why) in [({ startBlock(vcpu: 0) }, "the boot vCPU"), ({ startBlock(vcpu: 3) }, "a vCPU the VM lacks"),
                             ({ startBlock(magic: 0, vcpu: 1) }, "bad magic"),
                             ({ startBlock(vcpu: 1, rip: 0xffff_8000_0000_0000) }, "an upper-half entry"),
                             ({ startBlock(vcpu: 1, rsp: 0) }, "no stack")] as [(() -> Void, String)] {
            block()
            #expect(call(p, 8, 0x300) == .proceed, "VCPU_START with \(why) was accepted")
        }
        #expect(call(p, 8, 0xfff_ff) == .proceed) // a block outside RAM
        #expect(p.snapshot.rejected == [.badVCPUStart: 6])
    }
}
