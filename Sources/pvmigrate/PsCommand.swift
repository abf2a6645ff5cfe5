import ArgumentParser
import Control
import Foundation

/// `pvmigrate ps`: the named VMs on this host.
struct Ps: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the named VMs running on this host.",
        discussion: """
            Asks every control socket in the runtime directory ($PVMIGRATE_RUNTIME_DIR, else
            /run/pvmigrate, $XDG_RUNTIME_DIR/pvmigrate or /tmp/pvmigrate-<uid>) for its status;
            sockets nobody answers (left by a VM that died) are skipped.
            PAGES/S is the guest's own write rate (built-in guest, PV interface).
            """)

    @Flag(name: .long, help: "Print each VM's full status as a JSON array.")
    var json = false

    func run() throws {
        let runtime = try ControlCommand.runtime()
        var statuses: [VMStatus] = []
        for name in runtime.listNames() {
            guard let client = try? ControlClient(name: name, runtime: runtime) else { continue }
            client.timeout = 2
            guard let status = try? client.status() else { continue }
            statuses.append(status)
        }
        if json {
            ControlCommand.printJSON(try JSONValue(encoding: statuses))
            return
        }
        var rows = [["NAME", "STATE", "VCPUS", "MEMORY", "EXECUTION", "UPTIME", "PAGES/S"]]
        for s in statuses {
            rows.append([
                s.name, s.state.rawValue, s.vcpus.map { String($0.count) } ?? "-", Format.memory(s.memoryBytes), s.execution.rawValue, Format.duration(s.uptimeSeconds),
                s.pv.registered ? Format.count(Int(s.pv.rate)) : "-",
            ])
        }
        print(Format.table(rows))
    }
}
