import ArgumentParser
import Control
import Core
import Foundation
import GuestImage
import Net

/// `pvmigrate run`: boot a VM and stream its console until it halts or Ctrl-C; with `--name`
/// it also serves the VM's control socket (protocol.md §4), with `--detach` in the background.
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Boot a VM (the built-in guest by default) and stream its console.",
        discussion: """
            The console goes to standard output; pvmigrate's own messages go to standard error.
            The VM runs until the guest halts or exits, or until Ctrl-C.
            With --name the VM gets a control socket (<runtime>/vms/NAME.sock; the runtime
            directory is $PVMIGRATE_RUNTIME_DIR, else /run/pvmigrate, $XDG_RUNTIME_DIR/pvmigrate or
            /tmp/pvmigrate-<uid>): ps, status, stop, console, selfcheck, send and cancel reach it
            by name, and `run` also ends when the VM migrates away. Without --name the VM is
            anonymous: no control socket, foreground only.
            With --detach (needs --name) the VM runs in the background; its messages go to
            <runtime>/vms/NAME.log and its console to `pvmigrate console NAME`.
            Built-in guest workloads (--cmdline): workload=idle | workload=ticks count=N interval=MS |
            workload=dirty mib=N rate=PAGES_PER_S passes=N | workload=serve ip=192.0.2.2/24 (docs/protocol.md §1.7).
            With --net the VM gets a PV network device (docs/protocol.md §5) on a new TAP added to
            bridge BR (--net bridge=BR), or on an existing TAP (--net tap=NAME); add ,mac=52:54:00:..
            to choose its MAC, and ,poll-us=N for the most its vCPU thread busy-polls the TAP whenever
            the guest sleeps (lower round trips for a core's time; the time adapts to the traffic and is
            0 while the NIC is quiet; default 2500, 0 never polls; like QEMU's -netdev tap,poll-us). Needs /dev/net/tun and root (CAP_NET_ADMIN). A VM with a NIC migrates
            to a listener started with --net-bridge (docs/protocol.md §5.8).
            """)

    @Option(name: .long, help: "Name the VM (1–64 of A-Z a-z 0-9 . _ -): it gets a control socket.")
    var name: String?

    @Option(name: .long, help: "Virtual CPUs, 1–8, each on its own host thread.")
    var vcpus: Int = 1

    @Flag(name: .long, help: "Run the named VM in the background and return once it answers.")
    var detach = false

    /// Set by `--detach` on the background copy of this command.
    @Flag(name: .customLong("daemon-child"), help: .private)
    var daemonChild = false

    @Option(name: .long, help: "Guest memory, e.g. 256M or 1G (a multiple of 2 MiB).")
    var memory: MemorySize = MemorySize(argument: "256M")!

    @Option(name: .long, help: "A PVH ELF kernel to boot instead of the built-in guest.")
    var kernel: String?

    @Option(name: .long, help: "The kernel command line.")
    var cmdline: String = ""

    @Flag(name: .customLong("no-native"),
          help: "On PVM hosts, do not offer the guest native execution (to measure the emulated baseline).")
    var noNative = false

    @Flag(name: .long, help: "Give the VM KVM's in-kernel PIC, IOAPIC and LAPIC (kernels that need interrupts or start vCPUs by INIT/SIPI; docs/protocol.md §2.10).")
    var irqchip = false

    @Option(name: .long, help: "A PV network device: bridge=BR[,mac=MAC][,poll-us=N] or tap=NAME[,mac=MAC][,poll-us=N].")
    var net: String?
    /// `--net`, checked by `validate()`.
    private var netSpec: NetSpec? { net.flatMap { try? NetSpec(parsing: $0) } }

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
        if let net {
            do { _ = try NetSpec(parsing: net) } catch { throw ValidationError(error.description) }
        }
        if let duration, !(duration > 0) { throw ValidationError("--duration must be positive") }
        guard (1...60_000).contains(harvestMilliseconds) else { throw ValidationError("--harvest-ms must be 1–60000") }
        if let kernel, !FileManager.default.isReadableFile(atPath: kernel) {
            throw ValidationError("cannot read kernel \(kernel): no such file or not readable")
        }
        guard (1...Machine.maximumVCPUs).contains(vcpus) else {
            throw ValidationError("--vcpus must be 1–\(Machine.maximumVCPUs) (got \(vcpus))")
        }
        if name != nil, dirtyLog != .off {
            // Two harvesters would split the dirty set between them; a migration tracks its own.
            throw ValidationError("--dirty-log is for measuring an anonymous VM: leave out --name (a named VM's "
                + "migration tracks dirty pages itself)")
        }
        if let name {
            do { try RuntimeDirectory.validate(name: name) } catch { throw ValidationError("--name: \(error)") }
        } else if detach || daemonChild {
            throw ValidationError("--detach needs --name: a VM in the background is reached by its name")
        }
    }

    func run() throws {
        if detach, !daemonChild {
            try Detacher(name: name).start()
            return
        }
        // The background copy leaves the terminal's session, so a hang-up does not reach it.
        if daemonChild { _ = setsid() }
        let image: [UInt8]
        if let kernel {
            guard let data = FileManager.default.contents(atPath: kernel) else {
                throw Diagnostics.fail(ControlError(.invalidArgument, "cannot read kernel \(kernel): no such file or not readable"))
            }
            image = [UInt8](data)
        } else {
            image = GuestImage.elf
        }
        let ring = name.map { _ in ConsoleRing(echo: !daemonChild) }
        var configuration = Machine.Configuration(
            memorySize: memory.bytes, kernel: image, commandLine: cmdline,
            console: ring ?? StandardOutputConsole(), log: { Diagnostics.note($0) })
        configuration.allowNativeExecution = !noNative
        configuration.inKernelIRQChip = irqchip
        // The TAP first: a host that cannot give the VM its network says so before it boots.
        let tap: TapDevice?
        let net = netSpec
        do { tap = try net?.openTap() } catch { throw Diagnostics.fail(error) }
        if let net { configuration.netMAC = net.mac ?? MACAddress.random() }
        configuration.vcpuCount = vcpus
        let machine: Machine
        do { machine = try Machine(configuration: configuration) } catch { throw Diagnostics.fail(error) }
        var nic: NICBackend?
        if let tap, let device = machine.net {
            do { nic = try NICBackend(device: device, tap: tap, pollMicroseconds: net?.pollMicroseconds ?? NetSpec.defaultPollMicroseconds) } catch { throw Diagnostics.fail(error) }
            Diagnostics.note("PV NIC \(device.mac) on TAP \(tap.name)"
                + (net.flatMap { if case let .bridge(b) = $0.attachment { " (bridge \(b))" } else { nil } } ?? ""))
            nic?.start()
        }
        defer { nic?.stop() }

        // A named VM takes its name (its control socket) before it boots.
        let host: VMHost?
        if let name, let ring {
            do {
                host = try VMHost(name: name, machine: machine, console: ring, runtime: try RuntimeDirectory(),
                                  kernelSHA256: KernelDigest.sha256(image))
            } catch { throw Diagnostics.fail(error) }
        } else {
            host = nil
        }

        Diagnostics.note("booting \(kernel ?? GuestImage.name) with \(memory) of memory"
            + (vcpus > 1 ? " and \(vcpus) vCPUs" : "")
            + (host.map { " as VM \($0.name) (socket \($0.socketPath))" } ?? ""))
        let interrupted = Locked(false)
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            interrupted.withLock { $0 = true }
            host?.stop() ?? machine.stop()
        }
        machine.start()
        let reporter = ExecutionModeReporter(machine: machine)
        if let duration {
            Thread.detachNewThread {
                Thread.sleep(forTimeInterval: duration)
                machine.stop()
            }
        }
        let logger = dirtyLog.mode.map { DirtyLogPrinter(machine: machine, mode: $0, intervalMs: harvestMilliseconds) }
        let exit: VMExit
        if let host {
            switch host.waitUntilGone() {
            case .migrated:
                logger?.finish()
                interrupt.cancel()
                Diagnostics.note("VM \(host.name) migrated to \(host.migratedTo ?? "its destination"); it no longer runs here")
                if let nic {
                    // Frames that reached this TAP after the pause were never the guest's here (§5.8).
                    nic.stop()
                    let left = nic.framesHeldAtStop + nic.discardQueued()
                    Diagnostics.note("PV NIC: \(left) frame(s) arrived here for the VM during the hand-over and were "
                        + "discarded with this TAP")
                }
                return
            case let .exited(e): exit = e
            }
        } else {
            exit = machine.waitForExit()
        }
        logger?.finish()
        reporter.finish()
        interrupt.cancel()
        nic?.stop()
        if let device = machine.net {
            Diagnostics.note(Self.describe(device.snapshot) + (nic.map { "; rx read on the vCPU thread \($0.framesReadByVCPUThread)"
                + ($0.tapWriteErrors > 0 ? "; TAP write errors \($0.tapWriteErrors)" : "") } ?? ""))
            if NetTrace.enabled, let trace = NetTrace.summary() { Diagnostics.note(trace) }
        }
        Diagnostics.note("VM ended: \(exit)")
        switch exit {
        case .halted, .exitStatus(0): return
        case .stopped: if interrupted.value { throw ExitCode(130) } // else --duration or `pvmigrate stop`
        case let .exitStatus(status): throw ExitCode(Int32(truncatingIfNeeded: min(status, 125)))
        default: throw ExitCode.failure
        }
    }
}

extension Run {
    /// One line of NIC counters, rejections by reason (protocol.md §5.6).
    static func describe(_ c: PVNet.Counters) -> String {
        let rejected = NetRejection.allCases.compactMap { r in c.rejected[r].map { "\(r.rawValue) \($0)" } }
        return "PV NIC: tx \(c.txFrames) frames, rx \(c.rxFrames) frames, rx dropped \(c.rxDropped), "
            + "kicks \(c.kicks), sleep flushes \(c.sleepFlushes), wakes \(c.wakes); rejected: " + (rejected.isEmpty ? "none" : rejected.joined(separator: ", "))
    }
}

/// `run --detach`, `restore --detach`: starts this command again in the background (the same arguments minus
/// --detach, plus --daemon-child; its own session; output to <runtime>/vms/NAME.log), waits
/// until the VM answers on its socket, and reports — or shows why the child failed.
struct Detacher {
    /// The VM's name (`run --name`, `restore --name`).
    let name: String?
    /// How long the background process may take to answer on its socket (it is checked to
    /// be alive meanwhile: this only bounds a hang). `restore` of a compressed snapshot reads
    /// all of memory first.
    var readySeconds = 10.0

    func start() throws {
        guard let name else { return }
        let runtime = try ControlCommand.runtime()
        if (try? ControlClient(name: name, runtime: runtime)) != nil {
            throw Diagnostics.fail(ControlError(.nameTaken, "a VM named \(name) is already running on this host; "
                + "choose another name, or stop that one with `pvmigrate stop \(name)`"))
        }
        let logPath = runtime.logPath(for: name)
        guard FileManager.default.createFile(atPath: logPath, contents: nil, attributes: [.posixPermissions: 0o600]),
              let log = FileHandle(forWritingAtPath: logPath) else {
            throw Diagnostics.fail(ControlError(.runtimeDirectory, "cannot write \(logPath); check the runtime directory "
                + "or set PVMIGRATE_RUNTIME_DIR"))
        }
        let child = Process()
        child.executableURL = URL(fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0])
        child.arguments = CommandLine.arguments.dropFirst().filter { $0 != "--detach" } + ["--daemon-child"]
        var environment = ProcessInfo.processInfo.environment
        environment["PVMIGRATE_RUNTIME_DIR"] = runtime.path // the same directory, however it was found
        child.environment = environment
        child.standardInput = FileHandle.nullDevice
        child.standardOutput = log
        child.standardError = log
        do { try child.run() } catch {
            throw Diagnostics.fail(ControlError(.connection, "cannot start the background VM process: \(error.localizedDescription)"))
        }
        try? log.close()
        let pid = child.processIdentifier
        let deadline = Date(timeIntervalSinceNow: readySeconds)
        while Date() < deadline {
            if !child.isRunning {
                if child.terminationStatus == 0 {
                    print("started VM \(name); it has already ended (its log: \(logPath))")
                    return
                }
                throw failure("VM \(name) did not start (its process ended with status \(child.terminationStatus))",
                              logPath: logPath)
            }
            if let client = try? ControlClient(name: name, runtime: runtime) {
                client.timeout = 2
                if let status = try? client.status(), status.pid == Int(pid) {
                    print("started VM \(name) (socket \(runtime.socketPath(for: name)))")
                    return
                }
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
        kill(pid, SIGTERM)
        throw failure("VM \(name) did not answer on \(runtime.socketPath(for: name)) within \(Int(readySeconds)) s; its process was stopped",
                      logPath: logPath)
    }

    /// Says what went wrong, with the end of the child's log.
    private func failure(_ what: String, logPath: String) -> any Error {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        let tail = text.split(separator: "\n").suffix(10)
        var message = "pvmigrate: error: \(what); the end of its log (\(logPath)):\n"
        message += tail.map { "    \($0)\n" }.joined()
        FileHandle.standardError.write(Data(message.utf8))
        return ExitCode.failure
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
