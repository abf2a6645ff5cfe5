import ArgumentParser
import Control
import Foundation

/// `pvmigrate status VM`: one named VM in detail.
struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a named VM's state, execution mode, guest counters and any migration in progress.")

    @OptionGroup var target: VMArgument

    @Flag(name: .long, help: "Print the status object of the control protocol (docs/protocol.md §4).")
    var json = false

    func run() throws {
        let client = try target.connect()
        let s: VMStatus
        do { s = try client.status() } catch { throw Diagnostics.fail(error) }
        if json {
            ControlCommand.printJSON(try JSONValue(encoding: s))
            return
        }
        var lines: [(String, String)] = [
            ("name", s.name),
            ("state", s.state.rawValue),
            ("memory", Format.memory(s.memoryBytes)),
            ("execution", s.execution.rawValue),
            ("uptime", Format.duration(s.uptimeSeconds)),
            ("pid", "\(s.pid)"),
        ]
        if let from = s.arrivedFrom { lines.append(("arrived from", from)) }
        if s.pv.registered {
            lines.append(("guest", "PV interface registered; \(Format.count(Int(s.pv.pagesWritten))) pages written, "
                + "\(Format.count(Int(s.pv.rate))) pages/s, \(s.pv.passes) passes"))
            let state = s.pv.selfcheckState
            lines.append(("self-check", state == "never" ? "not run yet" : "\(state), \(s.pv.selfcheckBad) bad pages"))
        } else {
            lines.append(("guest", "PV interface not registered"))
        }
        if s.pv.rejected > 0 {
            lines.append(("rejected", "\(s.pv.rejected) invalid PV requests from the guest"))
        }
        if let n = s.nic {
            let rejected = n.rejected.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
            lines.append(("network", "PV NIC \(n.mac)\(n.attached ? "" : " (not attached by the guest)"): "
                + "tx \(Format.count(n.txFrames)) frames, rx \(Format.count(n.rxFrames)) frames, rx dropped \(n.rxDropped); "
                + "rejected: \(rejected.isEmpty ? "none" : rejected.joined(separator: ", "))"))
        }
        if let u = s.unresolved {
            lines.append(("unresolved", "migration \(u.migrationID) to \(u.destination): "
                + "the VM is PAUSED until the destination's decision is known; \(u.attempts) failed attempts to ask"
                + (u.lastError.map { " (last: \($0))" } ?? "") + "; `pvmigrate recover \(target.vm)` asks again"))
        }
        if let m = s.migration {
            var text = "to \(m.destination), round \(m.round)"
            if let left = m.remainingPages { text += ", \(Format.count(left)) pages left" }
            if let bw = m.bandwidth { text += ", \(Format.rate(bw))" }
            text += ", \(Format.seconds(m.elapsedSeconds)) so far"
            lines.append(("migration", text))
        }
        let width = lines.map(\.0.count).max() ?? 0
        for (key, value) in lines {
            print("\((key + ":").padding(toLength: width + 1, withPad: " ", startingAt: 0))  \(value)")
        }
    }
}
