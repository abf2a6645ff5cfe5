// Starting vCPUs the standard way (protocol.md §2.10, "INIT/SIPI"): for hosts
// without VCPU_START (QEMU, hardware KVM: no pvmigrate CPUID leaf) and, with
// `apstart=sipi`, under pvmigrate with an in-kernel irqchip. vCPU 0 copies the
// real-mode trampoline (entry.S) to `trampolineGPA`, publishes the start block
// (the VCPU_START block's layout, in the SMP page), and sends INIT then SIPI to
// APIC ID k through the x2APIC ICR MSR, or the xAPIC's registers when the CPU
// has no x2APIC. The AP runs the trampoline, then vCPU 0's own path to long mode
// (pvh_start), and enters the block's RIP with its RSP and RDI.

@_extern(c, "pvguest_rdmsr")
func pvguest_rdmsr(_ msr: UInt32) -> UInt64

@_extern(c, "pvguest_set_ap_start_block")
func pvguest_set_ap_start_block(_ gpa: UInt64)

@_extern(c, "pvguest_trampoline")
func pvguest_trampoline() -> UInt64

@_extern(c, "pvguest_trampoline_size")
func pvguest_trampoline_size() -> UInt64

enum APStartup {
    /// A page of free low RAM (protocol.md §1.2: 0x3000–0x9ffff): SIPI vector 0x08.
    static let trampolineGPA: UInt64 = 0x8000
    static let apicBaseMSR: UInt32 = 0x1b
    static let x2apicEnable: UInt64 = 1 << 10, apicEnable: UInt64 = 1 << 11
    static let x2apicICR: UInt32 = 0x830
    static let xapicICRLow = 0x300, xapicICRHigh = 0x310
    static let deliveryPending: UInt32 = 1 << 12
    /// INIT (level assert, edge) and Start-up (| the vector): the ICR's low word.
    static let initIPI: UInt32 = 0x4500, startupIPI: UInt32 = 0x4600

    enum Mode {
        case x2apic
        case xapic(UnsafeMutableRawPointer)
    }

    /// vCPU 0, before the first AP: the trampoline, the start block's GPA and the APIC's mode.
    static func prepare(startBlock: UInt64, startInfo: StartInfo) -> Mode {
        let size = pvguest_trampoline_size()
        guard startInfo.ramContains(start: trampolineGPA, end: trampolineGPA &+ Layout.pageSize), size <= Layout.pageSize,
              let to = UnsafeMutablePointer<UInt8>(bitPattern: UInt(trampolineGPA)),
              let from = UnsafePointer<UInt8>(bitPattern: UInt(pvguest_trampoline()))
        else { panic("no free low RAM at 0x8000 for the AP trampoline") }
        // Sound: both ranges are identity-mapped RAM of `size` bytes (the page checked above,
        // the trampoline inside the image).
        var index = 0
        while index < Int(size) {
            to[index] = from[index]
            index += 1
        }
        pvguest_set_ap_start_block(startBlock)
        let base = pvguest_rdmsr(apicBaseMSR)
        if CPU.cpuid(1).ecx & (1 << 21) != 0 {
            if base & x2apicEnable == 0 { CPU.writeMSR(apicBaseMSR, base | x2apicEnable | apicEnable) }
            return .x2apic
        }
        // Sound: the APIC's page lies below 4 GiB, inside entry.S's identity map.
        guard let registers = UnsafeMutableRawPointer(bitPattern: UInt(base & ~0xfff)) else {
            panic("the local APIC has no base address")
        }
        return .xapic(registers)
    }

    /// Sends INIT and two Start-ups to APIC ID `apicID` (the second is ignored by a CPU the
    /// first started, as the SDM's universal algorithm allows).
    static func start(_ apicID: UInt64, _ mode: Mode) {
        let vector = UInt32(truncatingIfNeeded: trampolineGPA / Layout.pageSize)
        send(apicID, initIPI, mode)
        send(apicID, startupIPI | vector, mode)
        send(apicID, startupIPI | vector, mode)
    }

    private static func send(_ apicID: UInt64, _ command: UInt32, _ mode: Mode) {
        switch mode {
        case .x2apic:
            CPU.writeMSR(x2apicICR, apicID << 32 | UInt64(command))
        case let .xapic(registers):
            pvg_store32(registers + xapicICRHigh, UInt32(truncatingIfNeeded: apicID << 24))
            pvg_store32(registers + xapicICRLow, command)
            while pvg_load32(registers + xapicICRLow) & deliveryPending != 0 { CPU.pause() }
        }
    }
}
