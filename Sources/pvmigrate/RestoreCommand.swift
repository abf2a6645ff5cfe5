import ArgumentParser
import Control
import Core
import Foundation
import Migrate
import Net

/// `pvmigrate restore FILE --name NAME`: run a VM from a snapshot file (docs/protocol.md §6).
struct Restore: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Resume a VM from a snapshot file, under a name with its own control socket.",
        discussion: """
            The header, machine description, state and index are checked before anything runs: a
            truncated or damaged file is refused. A mapped snapshot's memory is mapped from the
            file copy-on-write (nothing is read up front; the file is never written), so the
            restore does not grow with the guest's size; its pages are checked against the digest
            only with --verify. A compressed snapshot is read and always checked. The VM then runs
            like one started with `pvmigrate run --name` (status, console, send, save, stop).
            A VM saved with a PV network device needs --net bridge=BR (a new TAP on bridge BR) or
            --net tap=NAME; it keeps its saved MAC, and the guest announces itself with a
            gratuitous ARP once it runs (docs/protocol.md §5.8). A snapshot without a NIC refuses --net.
            """)

    @Argument(help: "The snapshot file (pvmigrate save).")
    var file: String

    @Option(name: .long, help: "The VM's name on this host (1–64 of A-Z a-z 0-9 . _ -).")
    var name: String

    @Flag(name: .long, help: "Run the VM in the background and return once it answers.")
    var detach = false

    @Flag(name: .customLong("daemon-child"), help: .private)
    var daemonChild = false

    @Flag(name: .long, help: "Check every memory page against the digest before resuming (always done for compressed files).")
    var verify = false

    @Option(name: .long, help: "For a VM saved with a PV network device: bridge=BR (a new TAP on BR) or tap=NAME; the MAC is the saved one.")
    var net: String?

    mutating func validate() throws {
        do { try RuntimeDirectory.validate(name: name) } catch { throw ValidationError("--name: \(error)") }
        if let net {
            let spec: NetSpec
            do { spec = try NetSpec(parsing: net) } catch { throw ValidationError(error.description) }
            if spec.mac != nil { throw ValidationError("--net: no mac= with restore: the VM keeps the MAC it was saved with") }
        }
    }

    func run() throws {
        // Refuse a bad file here, before a background process is started for it.
        let started = Date()
        let snapshot: SnapshotFile
        do { snapshot = try SnapshotFile(path: file) } catch { throw Diagnostics.fail(error) }
        let spec = net.flatMap { try? NetSpec(parsing: $0) }
        switch (snapshot.header.machine.hasNIC, spec) {
        case (true, nil):
            throw Diagnostics.fail(ValidationError("the VM in \(file) has a PV network device: restore it with "
                + "--net bridge=BRIDGE (or --net tap=NAME)"))
        case (false, _?):
            throw Diagnostics.fail(ValidationError("the VM in \(file) has no PV network device: leave out --net"))
        default: break
        }
        if detach, !daemonChild {
            // A compressed snapshot is read (and checked) before the VM answers: allow for it.
            try Detacher(name: name, readySeconds: snapshot.header.layout == .compressed || verify ? 3600 : 60).start()
            return
        }
        if daemonChild { _ = setsid() }
        let ring = ConsoleRing(echo: !daemonChild)
        let configuration = Machine.Configuration(memorySize: snapshot.header.machine.memoryBytes, kernel: [],
                                                  console: ring, log: { Diagnostics.note($0) })
        let machine: Machine, report: SnapshotRestoreReport
        do { (machine, report) = try snapshot.restoreMachine(configuration, verify: verify) } catch { throw Diagnostics.fail(error) }
        // The NIC stays quiesced until start(): frames wait in the TAP meanwhile (§5.8).
        var network: NetworkAttachment?
        if let spec, let device = machine.net {
            do { network = try NetworkAttacher.attach(device, spec: spec) } catch { throw Diagnostics.fail(error) }
            Diagnostics.note("PV NIC \(device.mac) on \(network!.description)")
        }
        defer { network?.detach() }
        let host: VMHost
        do {
            host = try VMHost(name: name, machine: machine, console: ring, runtime: try RuntimeDirectory(),
                              kernelSHA256: snapshot.header.machine.kernelSHA256)
        } catch { throw Diagnostics.fail(error) }
        let interrupted = Locked(false)
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            interrupted.withLock { $0 = true }
            host.stop()
        }
        machine.start()
        let seconds = Date().timeIntervalSince(started)
        Diagnostics.note(String(format: "restored VM %@ from %@ (%@, %@) in %.1f ms (file checked, VM built, state loaded, started): VM built %.1f ms, memory %.1f ms%@, state %.1f ms, balloon %.1f ms",
                                name, file, snapshot.header.layout.description, Format.memory(snapshot.header.machine.memoryBytes),
                                seconds * 1000, report.buildSeconds * 1000, report.memorySeconds * 1000,
                                report.memoryVerified ? " (every page checked)" : " (mapped, not read)", report.stateSeconds * 1000, report.balloonSeconds * 1000))
        if !report.refusedMSRs.isEmpty {
            Diagnostics.note("the kernel refused MSRs \(report.refusedMSRs.map { "0x" + String($0, radix: 16) }) (skipped)")
        }
        let end = host.waitUntilGone()
        interrupt.cancel()
        switch end {
        case .migrated:
            Diagnostics.note("VM \(name) migrated to \(host.migratedTo ?? "its destination"); it no longer runs here")
        case let .exited(exit):
            Diagnostics.note("VM ended: \(exit)")
            switch exit {
            case .halted, .exitStatus(0): return
            case .stopped: if interrupted.value { throw ExitCode(130) }
            case let .exitStatus(status): throw ExitCode(Int32(truncatingIfNeeded: min(status, 125)))
            default: throw ExitCode.failure
            }
        }
    }
}
