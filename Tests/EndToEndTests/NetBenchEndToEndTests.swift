import Foundation
import NetBench
import Testing
import TestSupport

extension EndToEnd {
    /// `pvmigrate bench --net` end to end (issue 14): the harness builds its namespaces, boots a
    /// serving guest, measures it with real ping and its own UDP generator, migrates it under
    /// that load, checks every acknowledged SET at the destination, reports, and deletes
    /// everything. Lean: one run, a 64 MiB guest, half a second per measure and phase. Skips
    /// loudly without root, /dev/net/tun, /dev/kvm, ip or ping.
    @Suite(.serialized, .enabled(if: BenchNetwork.unavailable == nil, "bench --net: needs \(BenchNetwork.unavailable ?? "")"))
    struct NetBenchEndToEndTests {
        /// The bench namespaces (`<prefix><hex pid>h|c`) whose process has ended: what a finished
        /// run left behind. Those of a `bench --net` still running elsewhere on the host are not.
        static func leftovers() throws -> [String] {
            let list = try String(decoding: Data(contentsOf: URL(fileURLWithPath: "/proc/self/mounts")), as: UTF8.self)
            return list.split(separator: "\n").map(String.init).filter { line in
                guard let range = line.range(of: "/run/netns/") else { return false }
                return BenchNetwork.isStale(String(line[range.upperBound...].prefix { !$0.isWhitespace }))
            }
        }

        @Test func benchNetMeasuresTheNICAndAMigrationLosingNoAcknowledgedSet() throws {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("nb-e2e-\(getpid())").path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let json = dir + "/report.json"
            let out = try PVMigrateBinary.run(["bench", "--net", "--net-memory", "64M", "--net-seconds", "0.5",
                                               "--json", json], runtimeDirectory: dir + "/rt", timeout: Wait.hangBound)
            #expect(out.status == 0, "bench --net --nic-only: \(out.text)")
            let report = try JSONDecoder().decode(NetBenchReport.self, from: Data(contentsOf: URL(fileURLWithPath: json)))
            let nic = try #require(report.nic, "no NIC figures: \(out.text)")
            #expect(nic.ping.answered > 0, "ping got no answer: \(out.text)")
            #expect(nic.udp.answered > 0 && nic.saturated.answered > 0, "the UDP load got no answer: \(out.text)")
            #expect((nic.udp.latency(.before)?.p50Us ?? 0) > 0)
            #expect(out.stdout.contains("PV NIC alone"), "\(out.stdout)")
            let migration = try #require(report.migration, "no migration figures: \(out.text)")
            #expect(migration.vmmDowntimeMs > 0)
            #expect(migration.verdict.acknowledgedSets > 0 && migration.verdict.keysVerified > 0, "\(out.text)")
            #expect(migration.verdict.acknowledgedSetsLost == 0 && migration.verdict.passed, "\(out.text)")
            #expect((migration.udp.latency(.after)?.count ?? 0) > 0, "no UDP answer after the migration: \(out.text)")
            #expect((migration.ping.latency(.after)?.count ?? 0) > 0, "no ping answer after the migration: \(out.text)")
            let left = try Self.leftovers()
            #expect(left.isEmpty, "namespaces left behind: \(left)")
        }
    }
}
