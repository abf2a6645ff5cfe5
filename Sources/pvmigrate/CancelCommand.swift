import ArgumentParser
import Control
import Foundation

/// `pvmigrate cancel VM`.
struct Cancel: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Cancel a named VM's migration in progress; the VM keeps running here.")

    @OptionGroup var target: VMArgument

    func run() throws {
        let client = try target.connect()
        _ = try ControlCommand.request(client, .cancel)
        print("cancelling the migration of VM \(target.vm); it keeps running here")
    }
}
