import Foundation
import NetBench
import Testing

/// The client-side figures (blackout, lost, latency per phase) from timestamps alone.
@Suite struct ClientStatisticsTests {
    static let ms: UInt64 = 1_000_000

    @Test func percentilesAreNearestRank() {
        let s = LatencySummary(nanoseconds: (1...100).map { UInt64($0) * 1000 }.shuffled())
        #expect(s.count == 100 && s.p50Us == 50 && s.p99Us == 99 && s.maxUs == 100)
        let one = LatencySummary(nanoseconds: [7000])
        #expect(one.p50Us == 7 && one.p99Us == 7)
        #expect(LatencySummary(nanoseconds: []).p99Us == 0)
    }

    @Test func phasesFollowTheMigrationWindow() {
        let w = PhaseWindow(migrationStartNs: 100, migrationEndNs: 200)
        #expect([99, 100, 199, 200].map { w.phase(of: $0) } == [.before, .during, .during, .after])
        #expect(PhaseWindow().phase(of: 1_000) == .before)
        #expect(PhaseWindow(migrationStartNs: 10).phase(of: 1_000) == .during)
    }

    @Test func blackoutIsTheLongestGapBetweenAnswersAndPlacedAgainstTheMigration() {
        let w = PhaseWindow(migrationStartNs: 1000 * Self.ms)
        let answers = [0, 1, 2, 3, 1010, 1011].map { UInt64($0) * Self.ms }
        let b = Blackout(replies: answers.shuffled(), loadEndNs: 1011 * Self.ms, window: w)
        #expect(b.milliseconds == 1007)
        #expect(b.startsAfterMigrationMs == -997)
        // No answer after the last one until the load ended: that silence counts.
        let trailing = Blackout(replies: [0, 1].map { $0 * Self.ms }, loadEndNs: 50 * Self.ms, window: PhaseWindow())
        #expect(trailing.milliseconds == 49 && trailing.startsAfterMigrationMs == nil)
    }

    /// A stall long before the migration (the first bench --net run of 2026-11-30 14:00: 25 ms,
    /// 2.2 s before it) is the run's longest gap, but not the blackout the migration caused.
    @Test func theMigrationsBlackoutIsTheLongestGapOverlappingItsWindow() {
        let w = PhaseWindow(migrationStartNs: 100 * Self.ms, migrationEndNs: 140 * Self.ms)
        // Gaps: 10→35 (25 ms, before), 112→120 and 120→128 (8 ms, in the migration), 5 ms after.
        let answers = [0, 10, 35, 45, 55, 65, 75, 85, 95, 100, 105, 112, 120, 128, 133, 140, 145, 150, 155]
            .map { UInt64($0) * Self.ms }
        let b = Blackout(replies: answers.shuffled(), loadEndNs: 155 * Self.ms, window: w)
        #expect(b.milliseconds == 25 && b.startsAfterMigrationMs == -90)
        #expect(b.overMigrationMs == 8, "\(String(describing: b.overMigrationMs))")
        // A gap that straddles the start counts as the migration's, as one that outlasts its end does.
        let straddle = Blackout(replies: [0, 95, 112, 200].map { $0 * Self.ms }, loadEndNs: 200 * Self.ms, window: w)
        #expect(straddle.overMigrationMs == 88 && straddle.milliseconds == 95)
        // The load ended silent while the migration ran: that silence counts too.
        let silent = Blackout(replies: [0, 99].map { $0 * Self.ms }, loadEndNs: 130 * Self.ms, window: w)
        #expect(silent.overMigrationMs == 31)
        #expect(Blackout(replies: answers, loadEndNs: 155 * Self.ms, window: PhaseWindow()).overMigrationMs == nil)
    }

    @Test func summaryCountsLostAndSplitsLatencyByPhase() {
        let w = PhaseWindow(migrationStartNs: 10 * Self.ms, migrationEndNs: 20 * Self.ms)
        var requests: [(sent: UInt64, answered: UInt64?)] = []
        for t in 0..<30 {
            let sent = UInt64(t) * Self.ms
            // Lost during the migration's last 4 ms; slower answers (2 ms) while it runs.
            let answered: UInt64? = (16..<20).contains(t) ? nil : sent + ((10..<20).contains(t) ? 2 : 1) * Self.ms / 10
            requests.append((sent, answered))
        }
        let s = ClientSummary(requests: requests, window: w)
        #expect(s.sent == 30 && s.answered == 26 && s.lost == 4)
        #expect(s.latency(.before)?.count == 10 && s.latency(.before)?.p50Us == 100)
        #expect(s.latency(.during)?.count == 6 && s.latency(.during)?.p99Us == 200)
        #expect(s.latency(.after)?.count == 10)
        #expect(abs(s.blackout.milliseconds - 4.9) < 1e-9, "15.2 ms → 20.1 ms")
        #expect(abs(s.blackout.startsAfterMigrationMs! - 5.2) < 1e-9)
    }
}

/// The report shows the VMM's prediction and pause phases next to the clients' figures, and
/// reads the files of runs that had neither.
@Suite struct NetBenchReportTests {
    func figures() -> MigrationFigures {
        let window = PhaseWindow(migrationStartNs: 10_000_000, migrationEndNs: 20_000_000)
        let summary = ClientSummary(requests: [(1_000_000, 1_100_000), (30_000_000, 30_100_000)], window: window)
        return MigrationFigures(vmmDowntimeMs: 9.5, totalSeconds: 0.05, rounds: 3, udp: summary, ping: summary,
                                verdict: KVVerdict(), udpSendFailures: 0, udpStrayAnswers: 0)
    }

    @Test func theTableShowsThePredictionAndWhereThePauseWent() {
        var m = figures()
        m.vmmPredictedDowntimeMs = 4.5
        m.vmmPausePhasesMs = ["goToDone": 6.0, "finalRound": 2.5, "handOver": 0.01]
        let table = Self.tableOf(m)
        #expect(table.contains("VMM downtime 9.5 ms (predicted 4.5 ms)"), "\(table)")
        #expect(table.contains("VMM pause, ms: goToDone 6.0, finalRound 2.5\n"), "largest first, tiny phases left out: \(table)")
    }

    @Test func aReportWithoutThePauseFiguresStillReads() throws {
        var old = try #require(try JSONSerialization.jsonObject(with: JSONEncoder().encode(figures())) as? [String: Any])
        old["vmmPredictedDowntimeMs"] = nil
        old["vmmPausePhasesMs"] = nil
        let decoded = try JSONDecoder().decode(MigrationFigures.self, from: JSONSerialization.data(withJSONObject: old))
        #expect(decoded.vmmPredictedDowntimeMs == nil && decoded.vmmPausePhasesMs == nil && decoded.vmmDowntimeMs == 9.5)
        #expect(!NetBenchReportTests.tableOf(decoded).contains("VMM pause"))
    }

    static func tableOf(_ m: MigrationFigures) -> String {
        var report = NetBenchReport(date: "d", loadAverage: [1, 1, 1], guestMemoryMiB: 256,
                                    plan: KVLoadPlan(rate: 2000, sockets: 2, keys: 1, valueBytes: 16))
        report.migration = m
        return report.table
    }
}
