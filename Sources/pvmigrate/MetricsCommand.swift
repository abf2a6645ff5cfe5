import ArgumentParser
import Control
import Foundation
import Operations

/// `pvmigrate metrics`: this host's migration metrics once, without a daemon.
struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print this host's migration metrics once, in the Prometheus text format.",
        discussion: """
            Counts the outgoing migrations recorded in the runtime directory \
            (migrations-out.jsonl: one line per migration a VM of this host sent, written by the \
            process that ran it, `run` or `listen`), and asks the VMs' control sockets how many \
            run here and how many are migrating now. Incoming migrations are counted by the \
            `listen` daemon only: scrape its `--metrics` endpoint. The names, labels and the \
            differences between the two views are in docs/operations.md.
            """)

    func run() throws {
        let runtime = try ControlCommand.runtime()
        let export = MetricsExport.shared
        let recorded: (records: [MigrationMetrics.Outgoing], skipped: Int)
        do { recorded = try OutgoingRecord.read(runtime: runtime) } catch { throw Diagnostics.fail(error) }
        if recorded.skipped > 0 {
            Diagnostics.warn("skipped \(recorded.skipped) unreadable line(s) of \(OutgoingRecord.path(runtime))")
        }
        export.replay(recorded.records)
        var hosted = 0, migrating = 0
        for name in runtime.listNames() {
            guard let client = try? ControlClient(name: name, runtime: runtime) else { continue }
            client.timeout = 2
            guard let status = try? client.status() else { continue }
            hosted += 1
            if status.state == .migrating { migrating += 1 }
        }
        MigrationMetrics.hostState(vmsHosted: hosted, outgoingMigrations: migrating)
        FileHandle.standardOutput.write(Data(export.exposition()))
    }
}
