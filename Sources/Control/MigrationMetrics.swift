#if canImport(Glibc)
import Glibc
#endif
import CoreMetrics
import Logging
import Foundation
import Migrate
import Posix

/// What this host records about migrations through swift-metrics (whatever backend the
/// process bootstrapped; none: nothing is kept). docs/operations.md "Metrics" defines every
/// name, label and meaning; the names appear in code here only.
public enum MigrationMetrics {
    public enum Direction: String, Sendable { case incoming = "in", outgoing = "out" }

    /// How a migration ended, from the side that records it.
    public enum Result: String, Codable, Sendable {
        case success, failed, refused, cancelled, unresolved
    }

    static let migrations = "pvmigrate_migrations_total"
    static let memoryBytes = "pvmigrate_migration_memory_bytes_total"
    static let wireBytes = "pvmigrate_migration_wire_bytes_total"
    static let pages = "pvmigrate_migration_pages_total"
    static let active = "pvmigrate_migrations_active"
    static let hosted = "pvmigrate_vms_hosted"
    static let refusals = "pvmigrate_admission_refusals_total"
    static let handshakeFailures = "pvmigrate_tls_handshake_failures_total"
    public static let rounds = "pvmigrate_migration_rounds"
    public static let downtime = "pvmigrate_migration_downtime_seconds"
    public static let totalTime = "pvmigrate_migration_total_seconds"

    /// One line of help per name, emitted as the exposition's `# HELP` lines (swift-metrics
    /// carries none); the longer meanings are docs/operations.md "Metrics".
    public static let help: [String: String] = [
        migrations: "Migrations that ended, by direction and result.",
        memoryBytes: "Guest memory of the migrations that succeeded.",
        wireBytes: "Bytes the source sent on the wire (after compression and deltas), failed migrations included.",
        pages: "Pages moved by successful migrations, all rounds, by encoding.",
        active: "Migrations in progress now.",
        hosted: "VMs running on this host.",
        refusals: "Connections and migrations a limit of this listener turned away, by reason.",
        handshakeFailures: "Incoming connections whose TLS handshake failed, by reason.",
        rounds: "Pre-copy rounds per successful migration, the paused one included.",
        downtime: "How long the guest was paused, per successful migration.",
        totalTime: "The whole migration, per successful migration.",
    ]

    /// The histograms' upper bounds (a Prometheus backend needs them before the first value).
    public static let buckets: [String: [Double]] = [
        rounds: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
        downtime: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
        totalTime: [0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800],
    ]

    // MARK: Outgoing (the source's side)

    /// A finished outgoing migration as the metrics need it; also the line `OutgoingRecord`
    /// keeps in the runtime directory for `pvmigrate metrics`.
    public struct Outgoing: Codable, Sendable, Equatable {
        public var result: Result
        public var memoryBytes: UInt64 = 0
        public var wireBytes: UInt64 = 0
        public var zeroPages = 0, rawPages = 0, deltaPages = 0
        public var rounds = 0
        public var downtimeSeconds = 0.0
        public var totalSeconds = 0.0

        public init(result: Result) { self.result = result }

        public init(_ stats: MigrationStats) {
            result = .success
            memoryBytes = stats.memoryBytes
            wireBytes = stats.wireBytes
            (zeroPages, rawPages, deltaPages) = (stats.zeroPages, stats.rawPages, stats.deltaPages)
            rounds = stats.rounds.count
            downtimeSeconds = stats.downtimeSeconds
            totalSeconds = stats.totalSeconds
        }

        public init(_ error: MigrationError) {
            switch error {
            case .cancelled: result = .cancelled
            case .unresolved: result = .unresolved
            case .peer(let report) where report.code == .resources || report.code == .timeout: result = .refused
            default: result = .failed
            }
        }
    }

    /// Counts an outgoing migration that ended (the wire counters also on failure: the bytes did go).
    public static func record(_ o: Outgoing) {
        let out = Direction.outgoing.rawValue
        Counter(label: migrations, dimensions: [("direction", out), ("result", o.result.rawValue)]).increment()
        Counter(label: wireBytes, dimensions: [("direction", out)]).increment(by: Int64(clamping: o.wireBytes))
        guard o.result == .success else { return }
        Counter(label: memoryBytes, dimensions: [("direction", out)]).increment(by: Int64(clamping: o.memoryBytes))
        for (encoding, n) in [("zero", o.zeroPages), ("raw", o.rawPages), ("delta", o.deltaPages)] {
            Counter(label: pages, dimensions: [("direction", out), ("encoding", encoding)]).increment(by: n)
        }
        Recorder(label: rounds, dimensions: [("direction", out)]).record(o.rounds)
        Recorder(label: downtime, dimensions: [("direction", out)]).record(o.downtimeSeconds)
        Recorder(label: totalTime, dimensions: [("direction", out)]).record(o.totalSeconds)
    }

    /// Outgoing migrations in progress in this process: +1 at the start, -1 at the end.
    public static func outgoingActive(_ delta: Int) {
        let meter = Meter(label: active, dimensions: [("direction", Direction.outgoing.rawValue)])
        if delta >= 0 { meter.increment(by: Double(delta)) } else { meter.decrement(by: Double(-delta)) }
    }

    // MARK: Incoming (the destination's side)

    public static func arrived(_ vm: ReceivedVM) {
        let incoming = Direction.incoming.rawValue
        Counter(label: migrations, dimensions: [("direction", incoming), ("result", Result.success.rawValue)]).increment()
        Counter(label: memoryBytes, dimensions: [("direction", incoming)]).increment(by: Int64(clamping: vm.machine.memory.size))
        Counter(label: pages, dimensions: [("direction", incoming), ("encoding", "any")]).increment(by: vm.stats.pagesApplied)
        Recorder(label: totalTime, dimensions: [("direction", incoming)]).record(vm.stats.seconds)
    }

    public static func failed(_ failure: ReceiveFailure) {
        switch failure.kind {
        case .rejected:
            guard let error = failure.transportError else { return }
            if case .refused = error {
                Counter(label: refusals, dimensions: [("reason", "max_pending")]).increment()
            } else if let reason = handshakeFailureReason(error) {
                Counter(label: handshakeFailures, dimensions: [("reason", reason)]).increment()
            }
        case .refused:
            let result = Result.refused.rawValue
            Counter(label: migrations, dimensions: [("direction", Direction.incoming.rawValue), ("result", result)]).increment()
            Counter(label: refusals, dimensions: [("reason", refusalReason(failure.description))]).increment()
        case .failed:
            let result = Result.failed.rawValue
            Counter(label: migrations, dimensions: [("direction", Direction.incoming.rawValue), ("result", result)]).increment()
        }
    }

    /// What `Arrivals` reports, counted.
    public static func record(_ event: Arrivals.Event) {
        switch event {
        case let .arrived(arrival): arrived(arrival.vm)
        case let .failed(failure): failed(failure)
        case .notHosted:
            let result = Result.failed.rawValue
            Counter(label: migrations, dimensions: [("direction", Direction.incoming.rawValue), ("result", result)]).increment()
        case .gone: break
        }
    }

    /// The gauges a listener knows at any time; set before each scrape.
    public static func listenerState(migrationsInProgress: Int, vmsHosted: Int) {
        Meter(label: active, dimensions: [("direction", Direction.incoming.rawValue)]).set(migrationsInProgress)
        Meter(label: hosted).set(vmsHosted)
    }

    /// The gauges `pvmigrate metrics` learns from the control sockets of this host's VMs.
    public static func hostState(vmsHosted: Int, outgoingMigrations: Int) {
        Meter(label: active, dimensions: [("direction", Direction.outgoing.rawValue)]).set(outgoingMigrations)
        Meter(label: hosted).set(vmsHosted)
    }

    /// A bounded label for a failed handshake (nil: not a handshake failure).
    static func handshakeFailureReason(_ error: TransportError) -> String? {
        switch error {
        case .handshakeFailed(_, let reason):
            let r = reason.lowercased()
            if r.contains("wrong version number") || r.contains("http request") || r.contains("packet length")
                || r.contains("record layer") { return "not_tls" }
            if r.contains("certificate") || r.contains("unknown ca") { return "bad_certificate" }
            if r.contains("alert") { return "peer_alert" }
            return "other"
        case .peerNameMismatch: return "name_not_allowed"
        case .identityRefused: return "identity_refused"
        case .timeout: return "timeout"
        case .peerClosed: return "peer_closed"
        default: return nil
        }
    }

    /// A bounded label for a refused migration, from the listener's own refusal texts
    /// (`Admission`, the progress watchdog): which limit said no.
    static func refusalReason(_ description: String) -> String {
        if description.contains("--max-incoming") { return "max_incoming" }
        if description.contains("--max-memory") { return "max_memory" }
        if description.contains("dropped") { return "no_progress" }
        return "other"
    }
}

/// The outgoing migrations of this host, one JSON line each (`MigrationMetrics.Outgoing`) in
/// `<runtime>/migrations-out.jsonl`, written by the process that ran the migration, so that
/// `pvmigrate metrics` can count them without a daemon (docs/operations.md "Metrics").
public enum OutgoingRecord {
    public static func path(_ runtime: RuntimeDirectory) -> String { runtime.path + "/migrations-out.jsonl" }

    /// Appends one line with a single write(2) on an O_APPEND descriptor, so the lines of
    /// processes that finish at once never interleave. Failing to record is not failing the
    /// migration: the error is returned for the caller to log.
    public static func append(_ o: MigrationMetrics.Outgoing, runtime: RuntimeDirectory) -> (any Error)? {
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = .sortedKeys
            var line = try encoder.encode(o)
            line.append(UInt8(ascii: "\n"))
            let file = try FileDescriptor.open(path(runtime), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, mode: 0o600)
            defer { file.close() }
            try file.writeAll([UInt8](line))
            return nil
        } catch { return error }
    }

    /// Every record, oldest first; a line that does not decode (a torn or foreign line) is
    /// skipped and counted.
    public static func read(runtime: RuntimeDirectory) throws -> (records: [MigrationMetrics.Outgoing], skipped: Int) {
        guard FileManager.default.fileExists(atPath: path(runtime)) else { return ([], 0) }
        let data = try Data(contentsOf: URL(fileURLWithPath: path(runtime)))
        var records: [MigrationMetrics.Outgoing] = [], skipped = 0
        for line in data.split(separator: UInt8(ascii: "\n")) {
            if let o = try? JSONDecoder().decode(MigrationMetrics.Outgoing.self, from: Data(line)) { records.append(o) } else { skipped += 1 }
        }
        return (records, skipped)
    }
}

/// One outgoing migration's log records (logger `migrate.sender`), metrics and line in
/// `OutgoingRecord`, from start to end (`VMHost.migrate`).
struct SenderTelemetry {
    private let log: Logger
    private let runtime: RuntimeDirectory

    init(vm: String, destination: String, runtime: RuntimeDirectory) {
        var log = Logger(label: "migrate.sender")
        log[metadataKey: "vm"] = "\(vm)"
        log[metadataKey: "peer"] = "\(destination)"
        self.log = log
        self.runtime = runtime
        MigrationMetrics.outgoingActive(1)
        log.info("migrating to \(destination)", metadata: ["event": "started"])
    }

    func finished(_ stats: MigrationStats) {
        log.info("migrated in \(String(format: "%.2f s (downtime %.3f s)", stats.totalSeconds, stats.downtimeSeconds))",
                 metadata: ["event": "migrated", "seconds": .stringConvertible(stats.totalSeconds),
                            "downtime_seconds": .stringConvertible(stats.downtimeSeconds),
                            "wire_bytes": .stringConvertible(stats.wireBytes), "rounds": .stringConvertible(stats.rounds.count)])
        if let warning = stats.verification.warning { log.warning("\(warning)", metadata: ["event": "verification"]) }
        end(MigrationMetrics.Outgoing(stats))
    }

    func failed(_ error: MigrationError) {
        let outcome = MigrationMetrics.Outgoing(error)
        log.error("migration failed: \(error)", metadata: ["event": "failed", "result": "\(outcome.result.rawValue)"])
        end(outcome)
    }

    private func end(_ outcome: MigrationMetrics.Outgoing) {
        MigrationMetrics.outgoingActive(-1)
        MigrationMetrics.record(outcome)
        if let error = OutgoingRecord.append(outcome, runtime: runtime) {
            log.warning("could not record the migration in \(OutgoingRecord.path(runtime)): \(error)")
        }
    }
}
