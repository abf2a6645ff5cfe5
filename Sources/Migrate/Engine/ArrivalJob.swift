import Foundation

/// One incoming migration as a listener reports it to an orchestrator (protocol.md §4.2,
/// the listener's `jobs`): where it stands while it runs, how it ended once it has. Values,
/// taken under the session's locks; the host encodes them.
public struct ArrivalJob: Sendable, Codable, Equatable {
    /// How a finished arrival ended; nil while it runs.
    public enum Result: String, Sendable, Codable {
        /// The guest runs here.
        case completed
        /// Refused by a limit of this host, by its shutdown, or dropped for lack of progress.
        case refused
        case failed
    }

    /// The HELLO's migration id, 32 hex digits.
    public var migrationID: String
    /// The source: its address and the name in its certificate.
    public var peer: String
    /// The VM's name at the source (known from MACHINE on), and its memory.
    public var name: String?
    public var memoryBytes: UInt64?
    /// The receiver's state (protocol.md §3.4, §3.6.3): "awaitMachine" … "started", "failed".
    public var phase: String
    /// Page entries applied to guest memory, and bytes of PAGES frames received.
    public var pages: Int
    public var bytes: UInt64
    /// Seconds since HELLO (until the end, for a finished one).
    public var elapsedSeconds: Double
    public var result: Result?
    public var error: String?

    public init(migrationID: String, peer: String, name: String? = nil, memoryBytes: UInt64? = nil, phase: String,
                pages: Int = 0, bytes: UInt64 = 0, elapsedSeconds: Double, result: Result? = nil, error: String? = nil) {
        self.migrationID = migrationID; self.peer = peer; self.name = name; self.memoryBytes = memoryBytes
        self.phase = phase; self.pages = pages; self.bytes = bytes; self.elapsedSeconds = elapsedSeconds
        self.result = result; self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case migrationID = "migration_id", peer, name, memoryBytes = "memory_bytes", phase, pages, bytes
        case elapsedSeconds = "elapsed_s", result, error
    }
}

/// The arrivals a listener remembers after they end: the last `capacity`, oldest first.
struct FinishedArrivals: Sendable {
    static let capacity = 32
    private(set) var jobs: [ArrivalJob] = []

    mutating func append(_ job: ArrivalJob) {
        jobs.append(job)
        if jobs.count > Self.capacity { jobs.removeFirst(jobs.count - Self.capacity) }
    }
}
