// Downtime as a client sees it (issue 14): the longest silence between answers (the
// blackout), answers lost, and round-trip percentiles before, during and after a migration
// (the brownout). Pure functions of timestamps (CLOCK_MONOTONIC nanoseconds), so the tests
// check them without a VM.

/// Where a request falls relative to the migration, by the time it was sent.
public enum LoadPhase: String, Codable, Sendable, CaseIterable {
    /// Before the migration was asked for (or the whole run, without a migration).
    case before
    /// From the migration request until the destination runs the VM (send returned).
    case during
    case after
}

/// The migration's window on the monotonic clock; nil bounds: no migration (all `before`).
public struct PhaseWindow: Codable, Sendable, Equatable {
    public var migrationStartNs: UInt64?
    public var migrationEndNs: UInt64?

    public init(migrationStartNs: UInt64? = nil, migrationEndNs: UInt64? = nil) {
        self.migrationStartNs = migrationStartNs; self.migrationEndNs = migrationEndNs
    }

    public func phase(of ns: UInt64) -> LoadPhase {
        guard let start = migrationStartNs, ns >= start else { return .before }
        guard let end = migrationEndNs, ns >= end else { return .during }
        return .after
    }
}

/// Round-trip times of one phase, in microseconds (nearest-rank percentiles).
public struct LatencySummary: Codable, Sendable, Equatable {
    public var count: Int
    public var p50Us: Double
    public var p99Us: Double
    public var maxUs: Double

    public init(nanoseconds: [UInt64]) {
        let sorted = nanoseconds.sorted()
        count = sorted.count
        p50Us = Self.rank(sorted, 0.50)
        p99Us = Self.rank(sorted, 0.99)
        maxUs = sorted.last.map { Double($0) / 1000 } ?? 0
    }

    /// The nearest-rank percentile: the smallest value with at least `p` of the values at or below it.
    static func rank(_ sorted: [UInt64], _ p: Double) -> Double {
        guard !sorted.isEmpty else { return 0 }
        let index = max(0, Int((p * Double(sorted.count)).rounded(.up)) - 1)
        return Double(sorted[min(index, sorted.count - 1)]) / 1000
    }
}

/// The longest time without an answer.
public struct Blackout: Codable, Sendable, Equatable {
    /// Milliseconds from the answer before the gap to the answer after it (or to the end of the load).
    public var milliseconds: Double
    /// When the gap began, in ms after the migration started (negative: before it); nil without a migration.
    public var startsAfterMigrationMs: Double?
    /// The longest gap that overlaps the migration (from the request to `send` returning): the
    /// blackout the migration caused, which the longest gap of the whole run is not when the
    /// host stalled the guest at some other moment; nil without a migration window.
    public var overMigrationMs: Double?

    /// The longest gap between consecutive answers (`replies`, any order), counting the time
    /// from the last answer to `loadEndNs` (the last request sent) when no answer came after it.
    public init(replies: [UInt64], loadEndNs: UInt64, window: PhaseWindow) {
        let sorted = replies.sorted()
        var gaps = zip(sorted, sorted.dropFirst()).map { (start: $0, end: $1) }
        if let last = sorted.last, loadEndNs > last { gaps.append((last, loadEndNs)) }
        let longest = { (gaps: [(start: UInt64, end: UInt64)]) in gaps.max { $0.end - $0.start < $1.end - $1.start } }
        let best = longest(gaps) ?? (sorted.first ?? loadEndNs, sorted.first ?? loadEndNs)
        milliseconds = Double(best.end - best.start) / 1e6
        startsAfterMigrationMs = window.migrationStartNs.map { (Double(best.start) - Double($0)) / 1e6 }
        if let from = window.migrationStartNs {
            let to = window.migrationEndNs ?? UInt64.max
            overMigrationMs = longest(gaps.filter { $0.end > from && $0.start < to }).map { Double($0.end - $0.start) / 1e6 } ?? 0
        }
    }
}

/// One client's view of a run (the UDP generator's or ping's).
public struct ClientSummary: Codable, Sendable, Equatable {
    public var sent: Int
    public var answered: Int
    /// Requests never answered (for the UDP load: not within its reuse time, KVLoadPlan).
    public var lost: Int
    public var blackout: Blackout
    /// Round trips by the phase the request was sent in (phases with no request are left out):
    /// to the time the client's receiving thread read the answer (for ping: the kernel's
    /// receive stamp, which is what ping reports).
    public var latency: [String: LatencySummary]
    /// The UDP client's round trips to the kernel's receive stamp instead (SO_TIMESTAMPNS): like
    /// for like with ping, without the receiving thread's wake-up. Nil for ping, and in files
    /// from before it was recorded.
    public var latencyKernel: [String: LatencySummary]?
    /// Answers per second over the run (from the first request to the last).
    public var answersPerSecond: Double

    /// `requests`: (sent, answered) per request in send order; `nil` answered = lost.
    public init(requests: [(sent: UInt64, answered: UInt64?)], window: PhaseWindow) {
        sent = requests.count
        let answers = requests.compactMap(\.answered)
        answered = answers.count
        lost = sent - answered
        let loadEnd = requests.map(\.sent).max() ?? 0
        blackout = Blackout(replies: answers, loadEndNs: loadEnd, window: window)
        latency = Self.byPhase(requests, window: window)
        let first = requests.map(\.sent).min() ?? 0
        answersPerSecond = loadEnd > first ? Double(answered) / (Double(loadEnd - first) / 1e9) : 0
    }

    public func latency(_ phase: LoadPhase) -> LatencySummary? { latency[phase.rawValue] }
    public func latencyKernel(_ phase: LoadPhase) -> LatencySummary? { latencyKernel?[phase.rawValue] }

    /// Round-trip summaries by the phase each answered request was sent in.
    static func byPhase(_ requests: [(sent: UInt64, answered: UInt64?)], window: PhaseWindow) -> [String: LatencySummary] {
        var byPhase: [LoadPhase: [UInt64]] = [:]
        for r in requests {
            guard let a = r.answered else { continue }
            byPhase[window.phase(of: r.sent), default: []].append(a >= r.sent ? a - r.sent : 0)
        }
        return Dictionary(uniqueKeysWithValues: byPhase.map { ($0.key.rawValue, LatencySummary(nanoseconds: $0.value)) })
    }
}

extension KVLedger {
    /// The UDP load's summary.
    public func summary(window: PhaseWindow) -> ClientSummary {
        var summary = ClientSummary(requests: records.map { ($0.sentNs, $0.replyNs) }, window: window)
        let stamped = records.filter { $0.replyKernelNs != nil }
        if !stamped.isEmpty {
            summary.latencyKernel = ClientSummary.byPhase(stamped.map { ($0.sentNs, $0.replyKernelNs) }, window: window)
        }
        return summary
    }
}
