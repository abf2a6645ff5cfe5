import CKVM

/// The PV control page's layout (protocol.md §2.2) and untorn access to its fields.
/// A `ControlPage` only exists for a page `PVInterface` validated to lie in guest RAM.
struct ControlPage {
    static let magic: UInt32 = 0x434d_5650 // "PVMC"
    /// The ABI versions a control page may announce: 1 (one vCPU's ring) and 2 (per-vCPU
    /// areas, protocol.md §2.10).
    static let abiVersions: ClosedRange<UInt16> = 1...2
    static let areaAbiVersion: UInt16 = 2

    enum Field: Int {
        // guest-written
        case magic = 0x000, abiVersion = 0x004, ringGPA = 0x008, ringEntries = 0x010, alwaysDirtyCount = 0x014
        case vcpuAreaCount = 0x018, vcpuAreaGPA = 0x020 // ABI v2 (§2.10)
        // host-written
        case hostFlags = 0x040, generation = 0x044, ringTail = 0x048, throttleRate = 0x04c, hostStatus = 0x050
        case selfcheckRequest = 0x054
        // guest-written
        case ringHead = 0x080, inflightValid = 0x084, inflightPFN = 0x088, pagesWritten = 0x090, rate = 0x098
        case selfcheckState = 0x0a0, workload = 0x0a4, selfcheckPages = 0x0a8, selfcheckBad = 0x0b0
        case passes = 0x0b8, selfcheckDone = 0x0c0, balloonCount = 0x100
    }
    static let balloonDescriptors = 0x108, balloonCapacity = 32
    static let alwaysDirtyDescriptors = 0x300, alwaysDirtyCapacity = 8
    static let console = 0x400, consoleCapacity = 1024

    struct HostFlags: OptionSet {
        let rawValue: UInt32
        static let logging = HostFlags(rawValue: 1 << 0)
        static let selfcheck = HostFlags(rawValue: 1 << 1)
    }

    let gpa: GuestPhysicalAddress
    /// Sound while the VM's memory lives: validated to be a whole RAM page.
    let host: UnsafeMutableRawPointer

    func u32(_ f: Field) -> UInt32 { ckvm_load_acquire_u32(host + f.rawValue) }
    func u64(_ f: Field) -> UInt64 { ckvm_load_acquire_u64(host + f.rawValue) }
    func u16(_ f: Field) -> UInt16 { UInt16(truncatingIfNeeded: u32(f)) }
    func set(_ f: Field, _ v: UInt32) { ckvm_store_release_u32(host + f.rawValue, v) }

    /// Descriptor `i` of a `{u64 gpa; u64 pages}` table at `base`.
    func descriptor(base: Int, _ i: Int) -> (gpa: UInt64, pages: UInt64) {
        (ckvm_load_acquire_u64(host + base + 16 * i), ckvm_load_acquire_u64(host + base + 16 * i + 8))
    }

    func consoleBytes(_ count: Int) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: host + Self.console, count: count))
    }
}
