// What `bench --net` reports (its --json file) and the tables it prints. Pure.

import Foundation

/// The PV NIC on its own, no migration: round trips with ping and the fixed-rate UDP load,
/// and what it carries with a fixed number of requests in flight.
public struct NICFigures: Codable, Sendable, Equatable {
    public var ping: ClientSummary
    public var udp: ClientSummary
    /// Requests in flight during `saturated`.
    public var window: Int
    public var saturated: ClientSummary

    public init(ping: ClientSummary, udp: ClientSummary, window: Int, saturated: ClientSummary) {
        self.ping = ping; self.udp = udp; self.window = window; self.saturated = saturated
    }
}

/// A migration under client load, as the clients and the VMM saw it.
public struct MigrationFigures: Codable, Sendable, Equatable {
    /// The VMM's own figure: guest paused at the source → running at the destination.
    public var vmmDowntimeMs: Double
    /// What the VMM predicted when stop-and-copy started, and where its pause went, phase by
    /// phase in ms (the source's `PausePhases`, by name). Absent in files of older runs.
    public var vmmPredictedDowntimeMs: Double?
    public var vmmPausePhasesMs: [String: Double]?
    public var totalSeconds: Double
    public var rounds: Int
    public var udp: ClientSummary
    public var ping: ClientSummary
    public var verdict: KVVerdict
    /// Datagrams the client's kernel refused to send (none expected).
    public var udpSendFailures: Int
    public var udpStrayAnswers: Int

    public init(vmmDowntimeMs: Double, totalSeconds: Double, rounds: Int, udp: ClientSummary, ping: ClientSummary,
                verdict: KVVerdict, udpSendFailures: Int, udpStrayAnswers: Int) {
        self.vmmDowntimeMs = vmmDowntimeMs; self.totalSeconds = totalSeconds; self.rounds = rounds
        self.udp = udp; self.ping = ping; self.verdict = verdict
        self.udpSendFailures = udpSendFailures; self.udpStrayAnswers = udpStrayAnswers
    }
}

public struct NetBenchReport: Codable, Sendable, Equatable {
    public var date: String
    /// /proc/loadavg's 1, 5 and 15 minute figures at the start and at the end.
    public var loadAverageStart: [Double]
    public var loadAverageEnd: [Double] = []
    public var guestMemoryMiB: Int
    public var plan: KVLoadPlan
    /// The serving VM's `--net …,poll-us=`: the most its vCPU thread polls the TAP, adaptively
    /// (nil: a report from before adaptive polling, when absent meant none).
    public var pollMicroseconds: Int?
    public var nic: NICFigures?
    public var migration: MigrationFigures?
    /// Why the run stopped early, if it did.
    public var failure: String?

    public init(date: String, loadAverage: [Double], guestMemoryMiB: Int, plan: KVLoadPlan) {
        self.date = date; loadAverageStart = loadAverage; self.guestMemoryMiB = guestMemoryMiB; self.plan = plan
    }

    /// Passed: every part that ran kept every acknowledged SET, and nothing failed.
    public var passed: Bool { failure == nil && (migration?.verdict.passed ?? true) }

    /// The human tables (markdown, as docs/benchmarks.md shows them).
    public var table: String {
        var lines = ["bench --net, \(date), \(guestMemoryMiB) MiB guest, UDP load \(Int(plan.rate)) requests/s, "
            + "load average \(Self.load(loadAverageStart)) → \(Self.load(loadAverageEnd))"
            + (pollMicroseconds.map { $0 > 0 ? ", the VM polls its TAP adaptively, up to \($0) µs (--net-poll-us)" : ", no TAP polling (--net-poll-us 0)" } ?? "")]
        if let nic {
            lines += ["", "PV NIC alone (client namespace ↔ guest, no migration):", "",
                      "| client | requests | answered | lost | answers/s | RTT p50 µs | p99 µs | max µs |",
                      "|---|---|---|---|---|---|---|---|"]
            for (name, s) in [("ping -i 0.002", nic.ping), ("UDP \(Int(plan.rate))/s", nic.udp),
                              ("UDP \(nic.window) in flight", nic.saturated)] {
                let l = s.latency(.before)
                lines.append(String(format: "| %@ | %d | %d | %d | %.0f | %.0f | %.0f | %.0f |", name, s.sent, s.answered, s.lost,
                                    s.answersPerSecond, l?.p50Us ?? 0, l?.p99Us ?? 0, l?.maxUs ?? 0))
            }
            if let k = nic.udp.latencyKernel(.before) {
                lines.append(String(format: "| UDP %d/s, to the kernel's receive stamp (as ping) | | | | | %.0f | %.0f | %.0f |",
                                    Int(plan.rate), k.p50Us, k.p99Us, k.maxUs))
            }
            lines.append("(each answered request is one frame into the guest and one out: frames/s = 2 × answers/s; "
                + "ping's and the kernel-stamp row end at the client kernel's receive stamp, the other UDP rows when the client's thread read the answer)")
        }
        if let m = migration {
            lines += ["", String(format: "Migration under load: VMM downtime %.1f ms%@, total %.2f s, %d rounds", m.vmmDowntimeMs,
                                 m.vmmPredictedDowntimeMs.map { String(format: " (predicted %.1f ms)", $0) } ?? "",
                                 m.totalSeconds, m.rounds)]
            if let phases = m.vmmPausePhasesMs, !phases.isEmpty {
                lines.append("VMM pause, ms: " + phases.filter { $0.value >= 0.05 }.sorted { $0.value > $1.value }
                    .map { String(format: "%@ %.1f", $0.key, $0.value) }.joined(separator: ", "))
            }
            lines += ["",
                      "| client | sent | lost | blackout over the migration ms | ÷ downtime | longest gap of the run ms | it starts at ms | p50/p99 µs before | during | after |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
            for (name, s) in [("UDP \(Int(plan.rate))/s", m.udp), ("ping -i 0.002", m.ping)] {
                let over = s.blackout.overMigrationMs ?? s.blackout.milliseconds
                let ratio = m.vmmDowntimeMs > 0 ? String(format: "%.1f×", over / m.vmmDowntimeMs) : "-"
                let phases = LoadPhase.allCases.map { p in
                    s.latency(p).map { String(format: "%.0f/%.0f", $0.p50Us, $0.p99Us) } ?? "-"
                }
                lines.append(String(format: "| %@ | %d | %d | %.1f | %@ | %.1f | %@ | %@ | %@ | %@ |", name, s.sent, s.lost,
                                    over, ratio, s.blackout.milliseconds,
                                    s.blackout.startsAfterMigrationMs.map { String(format: "%+.0f", $0) } ?? "-",
                                    phases[0], phases[1], phases[2]))
            }
            if m.udp.latencyKernel != nil {
                lines.append("UDP to the kernel's receive stamp (as ping), p50/p99 µs before | during | after: "
                    + LoadPhase.allCases.map { p in m.udp.latencyKernel(p).map { String(format: "%.0f/%.0f", $0.p50Us, $0.p99Us) } ?? "-" }
                        .joined(separator: " | "))
            }
            let v = m.verdict
            lines.append("")
            lines.append("SETs acknowledged \(v.acknowledgedSets), GETs checked during the load \(v.getsChecked), keys read at the end "
                + "\(v.keysVerified): \(v.passed ? "every acknowledged SET kept" : "FAILED — \(v.acknowledgedSetsLost) acknowledged SETs lost, \(v.violations) bad reads, \(v.keysUnanswered) keys unanswered")")
            for e in v.examples { lines.append("  " + e) }
            if m.udpSendFailures > 0 || m.udpStrayAnswers > 0 {
                lines.append("UDP: \(m.udpSendFailures) sends refused by the client's kernel, \(m.udpStrayAnswers) stray answers")
            }
        }
        if let failure { lines += ["", "FAILED: \(failure)"] }
        return lines.joined(separator: "\n")
    }

    static func load(_ l: [Double]) -> String { l.isEmpty ? "?" : l.map { String(format: "%.2f", $0) }.joined(separator: " ") }

    /// /proc/loadavg's three figures (empty if unreadable).
    public static func loadAverage() -> [Double] {
        guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return [] }
        return text.split(separator: " ").prefix(3).compactMap { Double($0) }
    }
}
