import ArgumentParser
import Control
import Foundation

/// `pvmigrate selfcheck VM`: the guest verifies every page it has written (protocol.md §2.7).
struct Selfcheck: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask a named VM's guest to verify every page it has written.",
        discussion: """
            The built-in guest checks each written page's stamp and checksum (docs/protocol.md §2.9),
            e.g. after a migration. Exits with status 1 when a page is bad.
            """)

    @OptionGroup var target: VMArgument

    @Flag(name: .long, help: "Print the result as JSON ({pages, bad}).")
    var json = false

    func run() throws {
        let client = try target.connect()
        let answer = try ControlCommand.request(client, .selfcheck)
        let result: SelfcheckResult
        do { result = try answer.result(SelfcheckResult.self, of: .selfcheck) } catch { throw Diagnostics.fail(error) }
        let pages = result.pages, bad = result.bad
        if json {
            ControlCommand.printJSON(try JSONValue(encoding: result))
        } else {
            print("selfcheck of VM \(target.vm): \(Format.count(Int(pages))) pages checked, \(Format.count(Int(bad))) bad")
        }
        if bad > 0 {
            Diagnostics.note("VM \(target.vm) has \(bad) bad pages: pages were lost or damaged")
            throw ExitCode.failure
        }
    }
}
