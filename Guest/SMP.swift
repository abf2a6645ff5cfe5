// Several vCPUs (protocol.md §1.7 `vcpus`, §2.10). vCPU 0 starts each other vCPU
// with VCPU_START, or by INIT/SIPI (APStartup.swift); every vCPU registers its
// own VIF page (§1.6) and runs its share of the workload with its own dirty ring
// and in-flight slot (its area, §2.10).
//
// The SMP page (guest-private, inside the always-dirty bookkeeping):
//
//   0x000          VCPU_START block { u32 magic "PVAP"; u32 vcpu; u64 rip; u64 rsp; u64 rdi }
//                  (also the block an AP started by INIT/SIPI reads)
//   0x040          u32 hold: vCPU 0 asks the others to park (while it self-checks)
//   0x048          u64 GPA of hvm_start_info
//   0x050          u32 vCPUs in use
//   0x060 + 8·k    u64 GPA of vCPU k's VIF page (Layout), read before the AP knows its layout
//   0x100 + 64·k   u32 state of vCPU k, one cache line each: 0 down, 1 running,
//                  2 parked, 3 finished (its workload ended, or it halted)
//
// Only vCPU 0 prints: the console line buffer is shared.

@_extern(c, "pvguest_ap_entry_address")
func pvguest_ap_entry_address() -> UInt64

@_extern(c, "pvguest_halt")
func pvguest_halt()  // never returns

/// GPA of the SMP page once vCPU 0 has started others; 0 with one vCPU.
var smpPageGPA: UInt = 0

struct SMP {
    static let maximumVCPUs: UInt64 = 8
    static let vcpuLeaf: UInt32 = 0x4000_0102
    static let opVCPUStart: UInt32 = 0x008
    static let startMagic: UInt32 = 0x5041_5650  // "PVAP"
    static let down: UInt32 = 0, running: UInt32 = 1, parked: UInt32 = 2, finished: UInt32 = 3
    /// How long vCPU 0 waits for a started vCPU to report (the host may be loaded).
    static let bringUpMilliseconds: UInt64 = 60_000

    static let holdOffset = 0x040, startInfoOffset = 0x048, countOffset = 0x050, vifOffset = 0x060
    static let stateOffset = 0x100

    let base: UnsafeMutableRawPointer?

    /// The running configuration (one vCPU until vCPU 0 started others).
    static var current: SMP { SMP(base: UnsafeMutableRawPointer(bitPattern: smpPageGPA)) }

    /// vCPUs the host offers (leaf 0x40000102 of a v2 host, read by discover()), 1 without it.
    static func available(_ pv: PVInterface) -> UInt64 {
        let n = UInt64(pv.vcpuCount)
        return n == 0 ? 1 : (n > maximumVCPUs ? maximumVCPUs : n)
    }

    private func load32(_ offset: Int) -> UInt32 { base.map { pvg_load32($0 + offset) } ?? 0 }
    private func store32(_ offset: Int, _ value: UInt32) { if let base { pvg_store32(base + offset, value) } }

    var count: UInt64 { base == nil ? 1 : UInt64(load32(Self.countOffset)) }
    func state(_ k: UInt64) -> UInt32 { load32(Self.stateOffset + 64 * Int(k)) }
    func setState(_ k: UInt64, _ s: UInt32) { store32(Self.stateOffset + 64 * Int(k), s) }

    /// vCPU 0: starts vCPUs 1..<layout.vcpus one after the other, waiting for each to report.
    static func bringUp(_ kernel: Kernel) {
        let n = kernel.layout.vcpus
        guard n > 1 else { return }
        let page = kernel.layout.smpPage
        // Sound: Layout reserved this page of identity-mapped RAM for the SMP page.
        let smp = SMP(base: UnsafeMutableRawPointer(bitPattern: UInt(page))!)
        pvg_store64(smp.base! + startInfoOffset, kernel.startInfo.gpa)
        smp.store32(countOffset, UInt32(n))
        smp.setState(0, running)
        smpPageGPA = UInt(page)
        // INIT/SIPI without VCPU_START (no pvmigrate leaf), or when asked (`apstart=sipi`).
        let sipi = kernel.pv.vcpuCount == 0 || kernel.options.apStartBySIPI
        let apic = sipi ? APStartup.prepare(startBlock: page, startInfo: kernel.startInfo) : nil
        var k: UInt64 = 1
        while k < n {
            let block = smp.base!
            pvg_store32(block, startMagic)
            pvg_store32(block + 4, UInt32(k))
            pvg_store64(block + 8, pvguest_ap_entry_address())
            pvg_store64(block + 16, kernel.layout.stackTop(k))
            pvg_store64(block + vifOffset + 8 * Int(k), kernel.layout.vifPage(k))
            pvg_store64(block + 24, page | k)
            if let apic {
                APStartup.start(k, apic)  // APIC ID k: KVM's and QEMU's numbering
            } else {
                kernel.pv.perform(opVCPUStart, UInt32(truncatingIfNeeded: page / Layout.pageSize))
            }
            let deadline = kernel.clock.now() &+ bringUpMilliseconds &* kernel.clock.ticksPerMillisecond
            while smp.state(k) == down {
                if kernel.clock.now() > deadline {
                    var line = ConsoleLine("pvguest: panic: vcpu ")
                    line.append(decimal: k)
                    line.append(sipi ? " did not come up (INIT/SIPI: no in-kernel LAPIC?)"
                                     : " did not come up (VCPU_START refused?)")
                    panic(line)
                }
                CPU.pause()
            }
            k &+= 1
        }
        var line = ConsoleLine("pvguest: vcpus ")
        line.append(decimal: n)
        line.append(sipi ? " up (INIT/SIPI)" : " up (VCPU_START)")
        line.emit()
    }

    /// Runs `body` while every other running vCPU is parked between two page writes.
    func withOthersParked<T>(_ body: () -> T) -> T {
        let n = count
        guard n > 1 else { return body() }
        store32(Self.holdOffset, 1)
        CPU.memoryFence()  // the hold before the states we read (pairs with parkIfAsked)
        var k: UInt64 = 1
        while k < n {
            while state(k) == Self.running { CPU.pause() }
            k &+= 1
        }
        let result = body()
        store32(Self.holdOffset, 0)
        return result
    }

    /// vCPU `k` (≥ 1), between two page writes: parks while vCPU 0 holds the others.
    @inline(__always)
    func parkIfAsked(_ k: UInt64) {
        if load32(Self.holdOffset) != 0 { park(k) }
    }

    @inline(never)
    private func park(_ k: UInt64) {
        while true {
            setState(k, Self.parked)
            while load32(Self.holdOffset) != 0 { CPU.pause() }
            setState(k, Self.running)
            CPU.memoryFence()  // our state before the hold we read (pairs with withOthersParked)
            if load32(Self.holdOffset) == 0 { return }
        }
    }

    /// vCPU 0: waits until every other vCPU has finished its workload (or halted).
    func waitForOthersFinished() {
        var k: UInt64 = 1
        while k < count {
            while state(k) != Self.finished { CPU.pause() }
            k &+= 1
        }
    }
}

/// An application processor's life: entered from entry.S's `pvguest_ap_entry` with
/// `argument` = SMP page GPA | vCPU index.
@_cdecl("pvguest_ap_main")
func apMain(_ argument: UInt64) {
    let k = argument & 0xfff
    let pv = PVInterface.discover()
    let smp = SMP(base: UnsafeMutableRawPointer(bitPattern: UInt(argument & ~0xfff)))
    guard let base = smp.base else { Exit.now(Exit.panic) }
    // First: the rest runs natively.
    if pv.nativeAvailable { VIF.register(gpa: pvg_load64(base + SMP.vifOffset + 8 * Int(k))) }
    guard let startInfo = StartInfo(gpa: pvg_load64(base + SMP.startInfoOffset)) else {
        Exit.now(Exit.panic)
    }
    let options = BootOptions(commandLine: startInfo.commandLine, quiet: true)
    if options.haltVCPU == k {  // for tests: a vCPU that stops for good
        smp.setState(k, SMP.finished)
        pvguest_halt()
    }
    smp.setState(k, SMP.running)
    let layout = Layout(startInfo: startInfo, options: options, vcpus: smp.count)
    let control = layout.area(k)
    if options.exitVCPU == k {  // for tests: an AP that ends the VM while vCPU 0 works
        let first = layout.area(0)
        while first.pagesWritten == 0 { CPU.pause() }
        Exit.now(Exit.panic)
    }
    var kernel = Kernel(startInfo: startInfo, options: options, pv: pv, clock: Clock(pv: pv),
                        layout: layout, control: control, vcpu: k)
    kernel.registered = ControlPage(gpa: layout.controlPage).hostStatus == 1
    if options.workload == .dirty { DirtyWorkload.run(kernel) }
    smp.setState(k, SMP.finished)
    while true {  // idle: stay parkable, exit only when vCPU 0 ends the VM
        if pv.present { pv.sleep(milliseconds: 100) } else { CPU.pause() }
    }
}
