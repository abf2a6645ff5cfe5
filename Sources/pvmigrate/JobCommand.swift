import ArgumentParser
import Control
import Foundation
import Migrate

/// `pvmigrate job VM` / `pvmigrate job --listener PATH`: the migration job an orchestrator
/// polls (protocol.md §4.1, §4.2), like libvirt's `virsh domjobinfo`.
struct Job: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a VM's migration job (in progress or last ended), or a listener's arrivals.",
        discussion: """
            pvmigrate job VM: the VM's migration job — phase (setup, precopy, stop-and-copy, commit, \
            completed, failed, cancelled, unresolved, or none), round, bytes and pages sent, the \
            predicted downtime, elapsed time, and how it ended. pvmigrate job --listener PATH: the \
            migrations arriving at the listener started with `listen --control PATH`, and the last \
            ones that ended. --json prints the control protocol's object (docs/protocol.md §4.1, §4.2).
            """)

    @Argument(help: "The VM's name (pvmigrate ps lists them).")
    var vm: String?

    @Option(name: .long, help: ArgumentHelp("A listener's control socket (listen --control PATH).", valueName: "path"))
    var listener: String?

    @Flag(name: .long, help: "Print the job object(s) of the control protocol.")
    var json = false

    func validate() throws {
        guard (vm == nil) != (listener == nil) else { throw ValidationError("name a VM or pass --listener PATH (not both)") }
        if let vm { do { try RuntimeDirectory.validate(name: vm) } catch { throw ValidationError("\(error)") } }
    }

    func run() throws {
        if let listener {
            let jobs: [ArrivalJob]
            do { jobs = try ControlClient(listenerSocket: listener).jobs() } catch { throw Diagnostics.fail(error) }
            if json { return ControlCommand.printJSON(try JSONValue(encoding: ArrivalJobs(jobs: jobs))) }
            if jobs.isEmpty { print("no migrations have arrived"); return }
            for j in jobs {
                let what = j.result.map { "\($0.rawValue)\(j.error.map { ": \($0)" } ?? "")" } ?? "in progress"
                print("\(j.migrationID) \(j.name ?? "?") from \(j.peer): \(j.phase), \(Format.count(j.pages)) pages, "
                    + "\(Format.seconds(j.elapsedSeconds)); \(what)")
            }
            return
        }
        let job: MigrationJob
        do { job = try ControlCommand.connect(vm!).job() } catch { throw Diagnostics.fail(error) }
        if json { return ControlCommand.printJSON(try JSONValue(encoding: job)) }
        var lines = [("phase", job.phase.rawValue)]
        if let d = job.destination { lines.append(("destination", d)) }
        if let r = job.round { lines.append(("round", "\(r)")) }
        if let p = job.pages, let b = job.bytes { lines.append(("sent", "\(Format.count(p)) pages, \(b >> 20) MiB")) }
        if let e = job.elapsedSeconds { lines.append(("elapsed", Format.seconds(e))) }
        if let d = job.expectedDowntimeSeconds { lines.append(("expected downtime", Format.seconds(d))) }
        if let d = job.downtimeSeconds { lines.append(("downtime", Format.seconds(d))) }
        if let d = job.predictedDowntimeSeconds { lines.append(("predicted downtime", Format.seconds(d))) }
        if let e = job.error { lines.append(("error", e)) }
        for (k, v) in lines { print("\(k.padding(toLength: 18, withPad: " ", startingAt: 0))\(v)") }
    }
}
