import ArgumentParser
import Control
import Foundation

/// `pvmigrate console VM [--follow]`.
struct Console: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a named VM's recent console output (the last 256 KiB).",
        discussion: "With --follow, keep printing new output until the VM ends or migrates away (or Ctrl-C).")

    @OptionGroup var target: VMArgument

    @Flag(name: [.short, .long], help: "Keep following new output.")
    var follow = false

    func run() throws {
        let client = try target.connect()
        _ = try ControlCommand.request(client, .console(follow: follow)) { event in
            guard case let .console(text) = event else { return }
            FileHandle.standardOutput.write(Data(text.utf8))
        }
    }
}
