import ArgumentParser
import Control
import Foundation

/// `pvmigrate recover VM`: settle a migration whose outcome is unknown (protocol.md §3.6.5).
struct Recover: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Settle a paused VM whose migration outcome is unknown (state \"unresolved\").",
        discussion: """
            Asks the destination what it decided (RESOLVE): if it started the VM, the VM is stopped \
            here; if it aborted or never heard of the migration, the VM resumes here. pvmigrate asks \
            by itself a few times with backoff; this asks now.

            --force-resume and --force-stop skip the question. They are DANGEROUS: forcing resume \
            while the destination runs the VM runs it twice (disk and network identity corrupted); \
            forcing stop while the destination aborted loses the VM. Use them only when you know \
            what the destination did (e.g. the destination host is gone for good).
            """)

    @OptionGroup var target: VMArgument

    @Flag(name: .customLong("force-resume"), help: "Resume here without asking the destination (dangerous).")
    var forceResume = false

    @Flag(name: .customLong("force-stop"), help: "Stop here without asking the destination (dangerous).")
    var forceStop = false

    mutating func validate() throws {
        if forceResume, forceStop { throw ValidationError("--force-resume and --force-stop exclude each other") }
    }

    func run() throws {
        let client = try target.connect()
        let force: RecoverForce? = forceResume ? .resume : forceStop ? .stop : nil
        let answer = try ControlCommand.request(client, .recover(force: force))
        let r: RecoverResult
        do { r = try answer.result(RecoverResult.self, of: .recover) } catch { throw Diagnostics.fail(error) }
        print("VM \(target.vm): outcome \(r.outcome)\(r.forced ? " (forced)" : ""); \(r.vm)")
    }
}
