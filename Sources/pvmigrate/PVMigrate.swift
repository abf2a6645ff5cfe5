import ArgumentParser
import Foundation

/// pvmigrate: a KVM-based paravirtual VMM built around live migration.
@main
struct PVMigrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pvmigrate",
        abstract: "A KVM-based paravirtual VMM built around live migration.",
        discussion: """
            Boots the built-in paravirtual guest (pvguest) or any PVH kernel on KVM, as named VMs
            with a control socket each, and live-migrates them between hosts over mutual TLS.
            See README.md.
            """,
        version: "0.1.0",
        // By usage: start a VM, move it, look at it, manage it, then the tools.
        subcommands: [Run.self, Send.self, Listen.self, Ps.self, Status.self, Console.self, Stop.self, Selfcheck.self,
                      Cancel.self, Recover.self, Save.self, Restore.self, Snapshot.self, Certs.self, Demo.self, Guest.self, Bench.self])

    /// Starts from an empty signal mask, whatever the parent left blocked: a parent that
    /// spawns from a dispatch or test thread (Foundation's `Process` does) passes on a mask
    /// with nearly every signal blocked, including the vCPU kick signal — and then every
    /// pause (status, stop-and-copy) waits for the guest's next exit instead of a kick.
    static func main() {
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)
        main(nil)
    }
}
