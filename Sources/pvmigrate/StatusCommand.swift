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
        let s = try ControlCommand.request(client, .status)
        if json {
            ControlCommand.printJSON(s)
            return
        }
        var lines: [(String, String)] = [
            ("name", s["name"]?.string ?? target.vm),
            ("state", s["state"]?.string ?? "?"),
            ("memory", s["memory_bytes"]?.uint64.map(Format.memory) ?? "?"),
            ("execution", s["execution"]?.string ?? "?"),
            ("uptime", s["uptime_s"]?.double.map(Format.duration) ?? "?"),
        ]
        if let pid = s["pid"]?.int64 { lines.append(("pid", "\(pid)")) }
        if let from = s["arrived_from"]?.string { lines.append(("arrived from", from)) }
        if let pv = s["pv"] {
            if pv["registered"]?.bool == true {
                lines.append(("guest", "PV interface registered; \(Format.count(Int(pv["pages_written"]?.int64 ?? 0))) pages written, "
                    + "\(Format.count(Int(pv["rate"]?.int64 ?? 0))) pages/s, \(pv["passes"]?.int64 ?? 0) passes"))
                let state = pv["selfcheck_state"]?.string ?? "?"
                lines.append(("self-check", state == "never" ? "not run yet" : "\(state), \(pv["selfcheck_bad"]?.int64 ?? 0) bad pages"))
            } else {
                lines.append(("guest", "PV interface not registered"))
            }
            if let rejected = pv["rejected"]?.int64, rejected > 0 {
                lines.append(("rejected", "\(rejected) invalid PV requests from the guest"))
            }
        }
        if let u = s["unresolved"] {
            lines.append(("unresolved", "migration \(u["migration_id"]?.string ?? "?") to \(u["destination"]?.string ?? "?"): "
                + "the VM is PAUSED until the destination's decision is known; \(u["attempts"]?.int64 ?? 0) failed attempts to ask"
                + (u["last_error"]?.string.map { " (last: \($0))" } ?? "") + "; `pvmigrate recover \(target.vm)` asks again"))
        }
        if let m = s["migration"] {
            var text = "to \(m["destination"]?.string ?? "?"), round \(m["round"]?.int64 ?? 0)"
            if let left = m["remaining_pages"]?.int64 { text += ", \(Format.count(Int(left))) pages left" }
            if let bw = m["bandwidth"]?.double { text += ", \(Format.rate(bw))" }
            if let t = m["elapsed_s"]?.double { text += ", \(Format.seconds(t)) so far" }
            lines.append(("migration", text))
        }
        let width = lines.map(\.0.count).max() ?? 0
        for (key, value) in lines {
            print("\((key + ":").padding(toLength: width + 1, withPad: " ", startingAt: 0))  \(value)")
        }
    }
}
