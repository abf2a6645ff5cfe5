import ArgumentParser
import Control
import Core
import Foundation
import Migrate

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

    mutating func validate() throws {
        do { try RuntimeDirectory.validate(name: name) } catch { throw ValidationError("--name: \(error)") }
    }

    func run() throws {
        // Refuse a bad file here, before a background process is started for it.
        let started = Date()
        let snapshot: SnapshotFile
        do { snapshot = try SnapshotFile(path: file) } catch { throw Diagnostics.fail(error) }
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
