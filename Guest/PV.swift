// pvmigrate PV discovery and port operations (protocol.md §1.5), and the PVM
// VIF registration that lets the guest run natively (§1.6).

/// What the pvmigrate CPUID leaves advertise; `present` is false under other
/// VMMs (QEMU, Firecracker, ...).
struct PVInterface {
    static let signatureLeaf: UInt32 = 0x4000_0100
    static let infoLeaf: UInt32 = 0x4000_0101
    // "PvMigrateVMM" in ebx, ecx, edx.
    static let signature: (UInt32, UInt32, UInt32) = (0x694d_7650, 0x7461_7267, 0x4d4d_5665)
    static let defaultPort: UInt16 = 0x5650
    static let abiVersion: UInt32 = 1
    static let featurePVMNative: UInt32 = 1 << 0
    static let featureHarvestBarrier: UInt32 = 1 << 1

    static let opHello: UInt32 = 0x001
    static let opSleep: UInt32 = 0x002
    static let opRegister: UInt32 = 0x003
    static let opRingFull: UInt32 = 0x004
    static let opBalloonInflate: UInt32 = 0x005
    static let opBalloonDeflate: UInt32 = 0x006
    static let opConsole: UInt32 = 0x007
    static let maximumArgument: UInt32 = 0xf_ffff

    let present: Bool
    /// vCPUs the VM has (leaf 0x40000102 eax; 0 without the leaf). Read here, before the VIF
    /// page is registered: a native vCPU's `cpuid` is not trapped on PVM (it answers the
    /// host's own leaves).
    var vcpuCount: UInt32 = 0
    let version: UInt32
    let features: UInt32
    let port: UInt16
    /// TSC frequency in kHz as the host reports it, 0 if unknown.
    let tscKHz: UInt64

    static func discover() -> PVInterface {
        let id = CPU.cpuid(signatureLeaf)
        guard id.ebx == signature.0, id.ecx == signature.1, id.edx == signature.2,
              id.eax >= infoLeaf
        else {
            return PVInterface(present: false, version: 0, features: 0, port: 0, tscKHz: 0)
        }
        let info = CPU.cpuid(infoLeaf)
        let port = info.ecx != 0 && info.ecx <= 0xffff ? UInt16(info.ecx) : defaultPort
        let vcpus = id.eax >= SMP.vcpuLeaf && info.eax >= 2 ? CPU.cpuid(SMP.vcpuLeaf).eax : 0
        return PVInterface(present: true, vcpuCount: vcpus, version: info.eax, features: info.ebx,
                           port: port, tscKHz: UInt64(info.edx))
    }

    var nativeAvailable: Bool { present && features & Self.featurePVMNative != 0 }

    /// One PV port operation (§2.1): a 32-bit `out`, op in bits 0–11, argument
    /// in bits 12–31. Public so that chaos can send invalid ones.
    func perform(_ op: UInt32, _ argument: UInt32) {
        CPU.outl(port, (op & 0xfff) | (argument << 12))
    }

    /// HELLO: tells the host which ABI version the guest speaks.
    func hello() { perform(Self.opHello, Self.abiVersion) }

    /// SLEEP: the vCPU waits on the host for `milliseconds` (1–1,048,575).
    func sleep(milliseconds: UInt32) {
        let clamped = milliseconds == 0 ? 1 : min(milliseconds, Self.maximumArgument)
        perform(Self.opSleep, clamped)
    }

    /// REGISTER: offers the control page at `pfn`; the host sets host_status.
    func register(controlPagePFN pfn: UInt64) {
        perform(Self.opRegister, UInt32(truncatingIfNeeded: pfn) & Self.maximumArgument)
    }

    /// RING_FULL: the host drains the dirty ring before returning.
    func ringFull() { perform(Self.opRingFull, 0) }

    /// BALLOON_INFLATE / BALLOON_DEFLATE of the first `count` descriptors.
    func balloonInflate(count: UInt32) { perform(Self.opBalloonInflate, count) }
    func balloonDeflate(count: UInt32) { perform(Self.opBalloonDeflate, count) }

    /// CONSOLE: prints the first `count` bytes of the control page's console buffer.
    func console(count: UInt32) { perform(Self.opConsole, count) }
}

/// The PVM "VIF" page (protocol.md §1.6): a zeroed, page-aligned page in the
/// image's .bss (entry.S `vif_page`), used for nothing else.
enum VIF {
    static let msr: UInt32 = 0x4b56_4d10
    /// OR-ed into the page's GPA when registering. The host ABI is not
    /// published: the VMM side registers with `gpa | 0x400` via KVM_SET_MSRS
    /// and reads back 0x400/0x800 extra; a guest `wrmsr` of the plain GPA is
    /// the first guess. Change only this constant if the host wants flags.
    static let registrationFlags: UInt64 = 0

    /// Registers this vCPU's own page (each vCPU needs one: vCPU 0's is in the image, the
    /// others' in Layout's bookkeeping); from here on the host may run this vCPU natively.
    static func register(gpa: UInt64 = pvguest_vif_page()) {
        CPU.writeMSR(msr, gpa | registrationFlags)
    }
}
