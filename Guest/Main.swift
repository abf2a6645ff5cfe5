// pvguest: pvmigrate's built-in guest kernel (protocol.md §1).
// entry.S switches to long mode and calls kmain with the hvm_start_info GPA.

/// What every workload needs: boot data, options, the PV interface and the
/// guest's bookkeeping.
struct Kernel {
    let startInfo: StartInfo
    let options: BootOptions
    let pv: PVInterface
    let clock: Clock
    let layout: Layout
    /// This vCPU's page for its ring and counters: the control page on vCPU 0, its area on
    /// the others (§2.10).
    let control: ControlPage
    /// Which vCPU runs this kernel (SMP.swift).
    var vcpu: UInt64 = 0
    /// REGISTER was accepted: the ring, the balloon and the PV console work.
    var registered = false

    func makeDirtyLog() -> DirtyLog {
        DirtyLog(layout: layout, control: control, pv: pv, vcpu: vcpu, dropEvery: options.dropLog)
    }
    /// The whole working set (what a self-check reads).
    var workingSet: WorkingSet { WorkingSet(layout: layout) }
    /// This vCPU's part of the working set (what it writes): its slice, or with `share=1`
    /// its slot of every page (§2.9).
    var share: WorkingSet {
        layout.writersPerPage > 1 ? workingSet.slot(vcpu) : workingSet.slice(vcpu, of: layout.vcpus)
    }

    /// REGISTER (§2.1); true if the host accepted the control page.
    mutating func register() -> Bool {
        pv.register(controlPagePFN: layout.controlPagePFN)
        registered = control.hostStatus == 1
        if registered { ConsoleRoute.usePV(control: control, port: pv.port) }
        return registered
    }
}

@_cdecl("pvguest_kmain")
func kmain(startInfo gpa: UInt64) {
    Console.log("pvmigrate built-in guest, version 1")
    guard let startInfo = StartInfo(gpa: gpa) else {
        var line = ConsoleLine("pvguest: panic: no hvm_start_info (bad magic) at ")
        line.append(hex: gpa)
        panic(line)
    }

    var memory = ConsoleLine("pvguest: memory ")
    memory.append(decimal: startInfo.memoryMiB)
    memory.append(" MiB")
    memory.emit()

    let pv = PVInterface.discover()
    if pv.present {
        pv.hello()
        if pv.nativeAvailable {
            VIF.register()
            Console.log("pv interface v1, execution native")
        } else {
            Console.log("pv interface v1, execution emulated")
        }
    } else {
        Console.log("pv interface not found")
    }

    let options = BootOptions(commandLine: startInfo.commandLine)
    // vCPUs: all the host offers (§2.10), or `vcpus=` — which a host without the pvmigrate
    // leaf (QEMU) cannot check: there the guest trusts it (INIT/SIPI). Chaos runs on one.
    var vcpus = SMP.available(pv)
    if options.vcpus != 0 && (options.vcpus < vcpus || pv.vcpuCount == 0) { vcpus = options.vcpus }
    if options.workload == .chaos { vcpus = 1 }
    let layout = Layout(startInfo: startInfo, options: options, vcpus: vcpus,
                        withNet: options.workload == .serve || options.workload == .chaos)
    layout.clearBookkeeping()
    let control = layout.makeControlPage()
    control.setWorkload(options.workload.code)
    var kernel = Kernel(startInfo: startInfo, options: options, pv: pv, clock: Clock(pv: pv),
                        layout: layout, control: control)

    // chaos registers by itself, in the middle of its invalid hypercalls.
    if pv.present && options.workload != .chaos {
        if kernel.register() {
            var line = ConsoleLine("pvguest: pv registered, ring ")
            line.append(decimal: UInt64(Layout.ringEntries))
            line.append(" entries")
            // HARVEST_BARRIER (protocol.md §2.3): logging without a fence per write.
            if pv.features & PVInterface.featureHarvestBarrier != 0 { line.append(", no fence") }
            line.emit()
            Balloon.inflateAtBoot(kernel)
        } else {
            Console.log("pv registration refused")
        }
    }

    if options.fill > 0 { Fill.run(kernel) }
    SMP.bringUp(kernel)

    switch options.workload {
    case .idle:
        Console.log("workload idle")
        Workloads.idle(kernel)
    case .ticks:
        Console.log("workload ticks")
        Workloads.ticks(kernel)
    case .dirty:
        Console.log("workload dirty")
        DirtyWorkload.run(kernel)
    case .chaos:
        Console.log("workload chaos")
        Chaos.run(&kernel)
    case .balloon:
        Console.log("workload balloon")
        Balloon.workload(kernel)
    case .serve:
        Console.log("workload serve")
        Serve.run(kernel)
    }
    Console.log("done")
    Exit.now(Exit.success)
}
