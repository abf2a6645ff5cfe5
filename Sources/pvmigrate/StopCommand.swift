import ArgumentParser
import Control
import Foundation

/// `pvmigrate stop VM`.
struct Stop: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop a named VM (a migration in progress is cancelled first).",
        discussion: "Returns once the VM has ended and its control socket is gone.")

    @OptionGroup var target: VMArgument

    func run() throws {
        let client = try target.connect()
        _ = try ControlCommand.request(client, .stop)
        print("stopped VM \(target.vm)")
    }
}
