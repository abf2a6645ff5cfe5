/// The `status` result (protocol.md §4): what `VMHost` answers and `status`, `ps` and
/// `demo` read, one type with the wire's keys. A client ignores keys it does not know.
public struct VMStatus: Codable, Sendable, Equatable {
    public enum State: String, Codable, Sendable {
        /// "paused" also covers a VM that has not started yet.
        case running, paused, migrating, unresolved, exited
    }

    public enum Execution: String, Codable, Sendable { case native, emulated, hardware }

    /// The guest's PV counters (protocol.md §2.6, §2.7).
    public struct PV: Codable, Sendable, Equatable {
        public var registered: Bool
        public var pagesWritten: UInt64
        public var rate: UInt64
        public var passes: UInt64
        /// "never", "running", "passed", "failed" ("unknown" for a value the guest made up).
        public var selfcheckState: String
        public var selfcheckBad: UInt64
        /// Invalid PV requests from the guest, refused.
        public var rejected: Int

        public init(registered: Bool, pagesWritten: UInt64, rate: UInt64, passes: UInt64, selfcheckState: String,
                    selfcheckBad: UInt64, rejected: Int) {
            self.registered = registered; self.pagesWritten = pagesWritten; self.rate = rate; self.passes = passes
            self.selfcheckState = selfcheckState; self.selfcheckBad = selfcheckBad; self.rejected = rejected
        }

        enum CodingKeys: String, CodingKey {
            case registered, pagesWritten = "pages_written", rate, passes
            case selfcheckState = "selfcheck_state", selfcheckBad = "selfcheck_bad", rejected
        }
    }

    /// One vCPU (issue 13): its run state, how it executes, and its PV counters (its ring's
    /// drained entries, its area's counters; protocol.md §2.10).
    public struct VCPU: Codable, Sendable, Equatable {
        public var index: Int
        /// "running", "paused", "awaiting_start", "halted", "exited".
        public var state: String
        public var execution: Execution
        public var pagesWritten: UInt64
        public var rate: UInt64
        public var passes: UInt64
        public var drainedEntries: Int

        public init(index: Int, state: String, execution: Execution, pagesWritten: UInt64, rate: UInt64, passes: UInt64,
                    drainedEntries: Int) {
            self.index = index; self.state = state; self.execution = execution; self.pagesWritten = pagesWritten
            self.rate = rate; self.passes = passes; self.drainedEntries = drainedEntries
        }

        enum CodingKeys: String, CodingKey {
            case index, state, execution, pagesWritten = "pages_written", rate, passes, drainedEntries = "drained_entries"
        }
    }

    /// A migration in progress.
    public struct Migration: Codable, Sendable, Equatable {
        public var destination: String
        public var elapsedSeconds: Double
        /// The round being sent (1 + the last finished one).
        public var round: Int
        public var remainingPages: Int?
        public var bandwidth: Double?
        public var dirtyRate: Double?
        public var expectedDowntimeSeconds: Double?

        public init(destination: String, elapsedSeconds: Double, round: Int, remainingPages: Int? = nil,
                    bandwidth: Double? = nil, dirtyRate: Double? = nil, expectedDowntimeSeconds: Double? = nil) {
            self.destination = destination; self.elapsedSeconds = elapsedSeconds; self.round = round
            self.remainingPages = remainingPages; self.bandwidth = bandwidth; self.dirtyRate = dirtyRate
            self.expectedDowntimeSeconds = expectedDowntimeSeconds
        }

        enum CodingKeys: String, CodingKey {
            case destination, elapsedSeconds = "elapsed_s", round, remainingPages = "remaining_pages", bandwidth
            case dirtyRate = "dirty_rate", expectedDowntimeSeconds = "expected_downtime_s"
        }
    }

    /// A migration whose outcome is unknown (protocol.md §3.6.5): the VM is paused here.
    public struct Unresolved: Codable, Sendable, Equatable {
        public var destination: String
        /// 32 hex digits.
        public var migrationID: String
        public var sinceSeconds: Double
        public var attempts: Int
        public var lastError: String?

        public init(destination: String, migrationID: String, sinceSeconds: Double, attempts: Int, lastError: String? = nil) {
            self.destination = destination; self.migrationID = migrationID; self.sinceSeconds = sinceSeconds
            self.attempts = attempts; self.lastError = lastError
        }

        enum CodingKeys: String, CodingKey {
            case destination, migrationID = "migration_id", sinceSeconds = "since_s", attempts, lastError = "last_error"
        }
    }

    public var name: String
    public var state: State
    public var memoryBytes: UInt64
    public var execution: Execution
    public var uptimeSeconds: Double
    /// The process serving the VM.
    public var pid: Int
    public var pv: PV
    /// One entry per vCPU (nil only from an older peer).
    public var vcpus: [VCPU]?
    /// The peer the VM arrived from, for a VM a listener received.
    public var arrivedFrom: String?
    public var migration: Migration?
    public var unresolved: Unresolved?
    /// The PV NIC, for a VM that has one (VMStatus+NIC.swift).
    public var nic: NIC?

    public init(name: String, state: State, memoryBytes: UInt64, execution: Execution, uptimeSeconds: Double, pid: Int,
                pv: PV, vcpus: [VCPU]? = nil, arrivedFrom: String? = nil, migration: Migration? = nil,
                unresolved: Unresolved? = nil, nic: NIC? = nil) {
        self.vcpus = vcpus
        self.nic = nic
        self.name = name; self.state = state; self.memoryBytes = memoryBytes; self.execution = execution
        self.uptimeSeconds = uptimeSeconds; self.pid = pid; self.pv = pv; self.arrivedFrom = arrivedFrom
        self.migration = migration; self.unresolved = unresolved
    }

    enum CodingKeys: String, CodingKey {
        case name, state, memoryBytes = "memory_bytes", execution, uptimeSeconds = "uptime_s", pid, pv, vcpus
        case arrivedFrom = "arrived_from", migration, unresolved, nic
    }
}

extension ControlClient {
    /// `status`, decoded.
    public func status() throws -> VMStatus {
        try request(.status).result(VMStatus.self, of: .status)
    }
}
