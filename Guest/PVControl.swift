// The PV control page, guest side (protocol.md §2.2).
//
// One page of the guest's own memory shared with the host. Host-written fields
// change under the guest's feet, so every access is volatile (bridge.h) and a
// compiler barrier: the compiler must neither cache a host field nor move the
// guest's page stores across an access. Without a PV host the page still
// exists (zeroed at boot): the host fields then simply read 0.

struct ControlPage {
    static let magic: UInt32 = 0x434d_5650  // "PVMC"
    static let abiVersion: UInt32 = 1
    /// ABI v2: per-vCPU areas (protocol.md §2.10).
    static let areaABIVersion: UInt32 = 2

    // Guest-written header.
    static let magicOffset = 0x000
    static let abiVersionOffset = 0x004     // u16 abi_version, u16 reserved
    static let ringGPAOffset = 0x008
    static let ringEntriesOffset = 0x010
    static let alwaysDirtyCountOffset = 0x014
    static let vcpuAreaCountOffset = 0x018
    static let vcpuAreaGPAOffset = 0x020
    // Host-written.
    static let hostFlagsOffset = 0x040
    static let generationOffset = 0x044
    static let ringTailOffset = 0x048
    static let throttleRateOffset = 0x04c
    static let hostStatusOffset = 0x050
    static let selfcheckRequestOffset = 0x054
    // Guest-written state and counters.
    static let ringHeadOffset = 0x080
    static let inflightValidOffset = 0x084
    static let inflightPFNOffset = 0x088
    static let pagesWrittenOffset = 0x090
    static let rateOffset = 0x098
    static let selfcheckStateOffset = 0x0a0
    static let workloadOffset = 0x0a4
    static let selfcheckPagesOffset = 0x0a8
    static let selfcheckBadOffset = 0x0b0
    static let passesOffset = 0x0b8
    static let selfcheckDoneOffset = 0x0c0
    static let balloonCountOffset = 0x100
    static let balloonOffset = 0x108
    static let balloonCapacity = 32
    static let alwaysDirtyOffset = 0x300
    static let alwaysDirtyCapacity = 8
    static let consoleOffset = 0x400
    static let consoleCapacity = 1024

    static let flagLogging: UInt32 = 1 << 0
    static let flagSelfcheck: UInt32 = 1 << 1

    // selfcheck_state values.
    static let selfcheckNeverRun: UInt32 = 0
    static let selfcheckRunning: UInt32 = 1
    static let selfcheckPassed: UInt32 = 2
    static let selfcheckFailed: UInt32 = 3

    let base: UnsafeMutableRawPointer

    /// Sound: `gpa` is a page of identity-mapped RAM that Layout reserved for
    /// the control page (checked against the memory map at boot).
    init(gpa: UInt64) {
        base = UnsafeMutableRawPointer(bitPattern: UInt(gpa))!
    }

    var gpa: UInt64 { UInt64(UInt(bitPattern: base)) }
    var pfn: UInt64 { gpa >> 12 }

    @inline(__always) func load32(_ offset: Int) -> UInt32 { pvg_load32(base + offset) }
    @inline(__always) func load64(_ offset: Int) -> UInt64 { pvg_load64(base + offset) }
    @inline(__always) func store32(_ offset: Int, _ value: UInt32) { pvg_store32(base + offset, value) }
    @inline(__always) func store64(_ offset: Int, _ value: UInt64) { pvg_store64(base + offset, value) }

    // Host fields.
    @inline(__always) var hostFlags: UInt32 { load32(Self.hostFlagsOffset) }
    @inline(__always) var generation: UInt32 { load32(Self.generationOffset) }
    @inline(__always) var ringTail: UInt32 { load32(Self.ringTailOffset) }
    @inline(__always) var throttleRate: UInt32 { load32(Self.throttleRateOffset) }
    @inline(__always) var hostStatus: UInt32 { load32(Self.hostStatusOffset) }
    @inline(__always) var selfcheckRequest: UInt32 { load32(Self.selfcheckRequestOffset) }

    // Guest fields.
    @inline(__always) var ringHead: UInt32 {
        get { load32(Self.ringHeadOffset) }
        nonmutating set { store32(Self.ringHeadOffset, newValue) }
    }
    @inline(__always) var selfcheckDone: UInt32 {
        get { load32(Self.selfcheckDoneOffset) }
        nonmutating set { store32(Self.selfcheckDoneOffset, newValue) }
    }
    @inline(__always) var pagesWritten: UInt64 {
        get { load64(Self.pagesWrittenOffset) }
        nonmutating set { store64(Self.pagesWrittenOffset, newValue) }
    }
    @inline(__always) func setInflight(pfn: UInt64) {
        store64(Self.inflightPFNOffset, pfn)
        store32(Self.inflightValidOffset, 1)
    }
    @inline(__always) func clearInflight() { store32(Self.inflightValidOffset, 0) }

    func setRate(_ pagesPerSecond: UInt64) { store64(Self.rateOffset, pagesPerSecond) }
    func setPasses(_ passes: UInt64) { store64(Self.passesOffset, passes) }
    var passes: UInt64 { load64(Self.passesOffset) }
    func setWorkload(_ code: UInt32) { store32(Self.workloadOffset, code) }

    func setSelfcheckResult(state: UInt32, pages: UInt64, bad: UInt64) {
        store64(Self.selfcheckPagesOffset, pages)
        store64(Self.selfcheckBadOffset, bad)
        store32(Self.selfcheckStateOffset, state)
    }
    func setSelfcheckState(_ state: UInt32) { store32(Self.selfcheckStateOffset, state) }

    /// Writes balloon descriptor `index` (§2.5).
    func setBalloon(_ index: Int, gpa: UInt64, pages: UInt64) {
        store64(Self.balloonOffset + 16 * index, gpa)
        store64(Self.balloonOffset + 16 * index + 8, pages)
    }
    func setBalloonCount(_ count: UInt32) { store32(Self.balloonCountOffset, count) }

    /// Zeroes the page, then writes the guest header for REGISTER (§2.2):
    /// the ring and one always-dirty range.
    func initialize(ringGPA: UInt64, ringEntries: UInt32, alwaysDirtyGPA: UInt64, alwaysDirtyPages: UInt64) {
        var offset = 0
        while offset < 4096 {
            store64(offset, 0)
            offset += 8
        }
        store32(Self.magicOffset, Self.magic)
        store32(Self.abiVersionOffset, Self.abiVersion)  // abi_version 1, reserved 0
        store64(Self.ringGPAOffset, ringGPA)
        store32(Self.ringEntriesOffset, ringEntries)
        store32(Self.alwaysDirtyCountOffset, 1)
        store64(Self.alwaysDirtyOffset, alwaysDirtyGPA)
        store64(Self.alwaysDirtyOffset + 8, alwaysDirtyPages)
    }

    /// ABI v2 (§2.10): `count` areas from `gpa`, for vCPUs 1...count.
    func setVCPUAreas(count: UInt32, gpa: UInt64) {
        store32(Self.abiVersionOffset, Self.areaABIVersion)
        store32(Self.vcpuAreaCountOffset, count)
        store64(Self.vcpuAreaGPAOffset, gpa)
    }

    /// Zeroes a vCPU area and names its ring (§2.10): the area has the control page's
    /// ring and counter fields at the same offsets, nothing else.
    func initializeArea(ringGPA: UInt64, ringEntries: UInt32) {
        var offset = 0
        while offset < 4096 {
            store64(offset, 0)
            offset += 8
        }
        store64(Self.ringGPAOffset, ringGPA)
        store32(Self.ringEntriesOffset, ringEntries)
    }

    /// Sets `magic` (chaos uses a wrong one to provoke badControlArea).
    func setMagic(_ value: UInt32) { store32(Self.magicOffset, value) }

    /// The console buffer at 0x400.
    var consoleBuffer: UnsafeMutablePointer<UInt8> {
        (base + Self.consoleOffset).assumingMemoryBound(to: UInt8.self)
    }
}
