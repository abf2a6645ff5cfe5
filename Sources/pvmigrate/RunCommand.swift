import ArgumentParser
import Core
import Foundation
import GuestImage

/// `pvmigrate run`: boot a VM and stream its console until it halts or Ctrl-C.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a VM (the built-in guest by default) and stream its console.",
        discussion: """
            The console goes to standard output; pvmigrate's own messages go to standard error.
            The VM runs until the guest halts or exits, or until Ctrl-C.
            Built-in guest workloads (--cmdline): workload=idle | workload=ticks count=N interval=MS |
            workload=dirty mib=N rate=PAGES_PER_S passes=N (docs/protocol.md §1.7).
            """)

    @Option(name: .long, help: "Guest memory, e.g. 256M or 1G (a multiple of 2 MiB).")
    var memory: MemorySize = MemorySize(argument: "256M")!

    @Option(name: .long, help: "A PVH ELF kernel to boot instead of the built-in guest.")
    var kernel: String?

    @Option(name: .long, help: "The kernel command line.")
    var cmdline: String = ""

    @Flag(name: .customLong("no-native"),
          help: "On PVM hosts, do not offer the guest native execution (to measure the emulated baseline).")
    var noNative = false

    @Option(name: .long, help: "Stop the VM after this many seconds (default: run until it ends).")
    var duration: Double?

    @Option(name: .customLong("dirty-log"),
            help: "Track dirty pages while the guest runs, as a migration would: off, kvm, pv or hybrid.")
    var dirtyLog: DirtyLogChoice = .off

    @Option(name: .customLong("harvest-ms"), help: "With --dirty-log: harvest the dirty set every this many ms.")
    var harvestMilliseconds: Int = 100

    mutating func validate() throws {
        guard memory.bytes >= 4 << 20, memory.bytes % (2 << 20) == 0 else {
            throw ValidationError("--memory must be at least 4M and a multiple of 2M (got \(memory))")
        }
        if let duration, !(duration > 0) { throw ValidationError("--duration must be positive") }
        guard (1...60_000).contains(harvestMilliseconds) else { throw ValidationError("--harvest-ms must be 1–60000") }
    }

    func run() throws {
        let image: [UInt8]
        if let kernel {
            guard let data = FileManager.default.contents(atPath: kernel) else {
                throw ValidationError("cannot read kernel \(kernel): no such file or not readable")
            }
            image = [UInt8](data)
        } else {
            image = GuestImage.elf
        }
        var configuration = Machine.Configuration(
            memorySize: memory.bytes, kernel: image, commandLine: cmdline,
            console: StandardOutputConsole(), log: { Diagnostics.note($0) })
        configuration.allowNativeExecution = !noNative
        let machine: Machine
        do { machine = try Machine(configuration: configuration) } catch { throw Diagnostics.fail(error) }

        Diagnostics.note("booting \(kernel ?? GuestImage.name) with \(memory) of memory")
        let interrupt = SignalWatcher(SIGINT, SIGTERM) { machine.stop() }
        machine.start()
        let reporter = ExecutionModeReporter(machine: machine)
        if let duration {
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: duration)
                machine.stop()
            }
        }
        let logger = dirtyLog.mode.map { DirtyLogDriver(machine: machine, mode: $0, intervalMs: harvestMilliseconds) }
        let exit = machine.waitForExit()
        logger?.finish()
        reporter.finish()
        interrupt.cancel()
        Diagnostics.note("VM ended: \(exit)")
        switch exit {
        case .halted, .exitStatus(0): return
        case .stopped: if duration == nil { throw ExitCode(130) }
        case let .exitStatus(status): throw ExitCode(Int32(truncatingIfNeeded: min(status, 125)))
        default: throw ExitCode.failure
        }
    }
}

/// Says which execution mode the guest got, once it is known: a PVM-aware guest registers
/// its VIF page early in boot, so look for up to two seconds; a VM that ends sooner is
/// reported at its exit (`finish`).
final class ExecutionModeReporter: Sendable {
    private let machine: Machine
    private let reported = Locked(false)

    init(machine: Machine) {
        self.machine = machine
        Thread.detachNewThread { [self] in
            var mode = try? machine.executionMode()
            for _ in 0..<20 where mode == .emulated && machine.exit == nil {
                Thread.sleep(forTimeInterval: 0.1)
                mode = try? machine.executionMode()
            }
            if machine.exit == nil, let mode { report(mode) }
        }
    }

    func finish() {
        if let mode = try? machine.executionMode() { report(mode) }
    }

    private func report(_ mode: ExecutionMode) {
        guard reported.withLock({ done in defer { done = true }; return !done }) else { return }
        switch mode {
        case .hardware: Diagnostics.note("execution: hardware virtualization")
        case .native: Diagnostics.note("execution: native (PVM host; the guest registered its VIF page)")
        case .emulated: Diagnostics.note("execution: emulated (PVM host, guest not PVM-aware: ~3,000x slower than native)")
        }
    }
}
