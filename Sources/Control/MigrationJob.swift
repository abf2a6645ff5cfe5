import Foundation
import Migrate

/// The `job` result (protocol.md §4.1): a VM's migration job in the style of libvirt's
/// `virsh domjobinfo` — the one in progress, else the last one that ended on this host, else
/// `phase` "none". One type with the wire's keys; a client ignores keys it does not know.
public struct MigrationJob: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// No migration has run here.
        case none
        /// Connecting, negotiating, opening the streams (no round finished yet).
        case setup
        /// Pre-copy rounds while the guest runs.
        case precopy
        /// The guest is paused: the final round, STATE, COMMIT.
        case stopAndCopy = "stop-and-copy"
        /// The commit protocol (protocol.md §3.6): PREPARED, hand-over, GO, DONE.
        case commit
        /// Ended: the VM runs at the destination.
        case completed
        /// Ended: the VM runs here.
        case failed, cancelled
        /// The outcome is unknown: the VM is paused here (protocol.md §3.6.5).
        case unresolved
    }

    public var phase: Phase
    public var destination: String?
    /// Seconds since the migration began (its whole length once it ended).
    public var elapsedSeconds: Double?
    /// The round being sent (1 + the last finished one); the number of rounds once ended.
    public var round: Int?
    /// Bytes of PAGES frames and page entries sent so far, over all rounds.
    public var bytes: UInt64?
    public var pages: Int?
    /// Dirty pages left after the last round, and the pause they would cost now (predicted).
    public var remainingPages: Int?
    public var expectedDowntimeSeconds: Double?
    public var bandwidth: Double?
    /// Once completed: the measured downtime, and the one predicted when stop-and-copy started.
    public var downtimeSeconds: Double?
    public var predictedDowntimeSeconds: Double?
    /// Once ended without success: why.
    public var error: String?

    public init(phase: Phase, destination: String? = nil, elapsedSeconds: Double? = nil, round: Int? = nil,
                bytes: UInt64? = nil, pages: Int? = nil, remainingPages: Int? = nil,
                expectedDowntimeSeconds: Double? = nil, bandwidth: Double? = nil, downtimeSeconds: Double? = nil,
                error: String? = nil) {
        self.phase = phase; self.destination = destination; self.elapsedSeconds = elapsedSeconds; self.round = round
        self.bytes = bytes; self.pages = pages; self.remainingPages = remainingPages
        self.expectedDowntimeSeconds = expectedDowntimeSeconds; self.bandwidth = bandwidth
        self.downtimeSeconds = downtimeSeconds; self.error = error
    }

    /// Whether the job has ended (or none ran).
    public var isFinished: Bool { ![.setup, .precopy, .stopAndCopy, .commit].contains(phase) }

    enum CodingKeys: String, CodingKey {
        case phase, destination, elapsedSeconds = "elapsed_s", round, bytes, pages, remainingPages = "remaining_pages"
        case expectedDowntimeSeconds = "expected_downtime_s", bandwidth, downtimeSeconds = "downtime_s", error
        case predictedDowntimeSeconds = "predicted_downtime_s"
    }
}

/// The `jobs` result (protocol.md §4.2): a listener's arrivals.
public struct ArrivalJobs: Codable, Sendable, Equatable {
    public var jobs: [ArrivalJob]
    public init(jobs: [ArrivalJob]) { self.jobs = jobs }
}

extension ControlClient {
    /// `job`, decoded.
    public func job() throws -> MigrationJob {
        try request(.job).result(MigrationJob.self, of: .job)
    }

    /// `jobs` (a listener's control socket), decoded.
    public func jobs() throws -> [ArrivalJob] {
        try request(.jobs).result(ArrivalJobs.self, of: .jobs).jobs
    }
}
