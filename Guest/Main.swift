// pvguest: pvmigrate's built-in guest kernel (protocol.md §1).
// entry.S switches to long mode and calls kmain with the hvm_start_info GPA.

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
    let clock = Clock(pv: pv)
    switch options.workload {
    case .idle:
        Console.log("workload idle")
        Workloads.idle(pv: pv)
    case .ticks:
        Console.log("workload ticks")
        Workloads.ticks(count: options.count, interval: options.interval, clock: clock)
    case .dirty:
        Console.log("workload dirty")
        Workloads.dirty(mib: options.mib, rate: options.rate, passes: options.passes,
                        clock: clock, startInfo: startInfo)
    }
    Console.log("done")
    Exit.now(Exit.success)
}
