import ArgumentParser
import Config
import Control
import Foundation
import Operations

/// A config file value the command's parser refused: its message, shown after the key's line.
struct ConfigValueError: Error, CustomStringConvertible {
    let description: String
    init(_ message: String) { description = message }
}

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
                      Cancel.self, Recover.self, Job.self, Save.self, Restore.self, Snapshot.self, Metrics.self, Certs.self,
                      Demo.self, Guest.self, Bench.self])

    /// Starts from an empty signal mask, whatever the parent left blocked: a parent that
    /// spawns from a dispatch or test thread (Foundation's `Process` does) passes on a mask
    /// with nearly every signal blocked, including the vCPU kick signal — and then every
    /// pause (status, stop-and-copy) waits for the guest's next exit instead of a kick.
    static func main() {
        var none = sigset_t()
        sigemptyset(&none)
        sigprocmask(SIG_SETMASK, &none, nil)
        LogOutput.bootstrap()
        // `listen --config FILE`: the file's keys become flags before the command line's own.
        do {
            main(try ListenConfig.expand(Array(CommandLine.arguments.dropFirst())) { entry in
                do { _ = try Listen.parse(entry.arguments) } catch { throw ConfigValueError(Listen.message(for: error)) }
            })
        } catch {
            FileHandle.standardError.write(Data("pvmigrate: error: \(error)\n".utf8))
            Foundation.exit(ExitCode.validationFailure.rawValue)
        }
    }
}
