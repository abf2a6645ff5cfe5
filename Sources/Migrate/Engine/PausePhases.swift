/// Where the stop-and-copy pause went, phase by phase, as the source measured it
/// (issue 11: predicted vs actual downtime). The phases follow each other without gaps, so
/// their sum is the downtime `MigrationStats.downtimeSeconds` reports:
///
///     pause → harvest → final round sent → streams finished → state saved → STATE sent
///           → COMMIT sent, PREPARED back → hand-over recorded → GO sent, DONE back
///
/// `commitToPrepared` includes the destination's state digest, state decode, memory digest
/// and `Machine.restore`; `goToDone` includes the destination's durable "started" record
/// (protocol.md §3.6.4, an fsync) and its start of the guest.
public struct PausePhases: Sendable, Codable, Equatable {
    public var harvest = 0.0
    public var finalRound = 0.0
    public var finish = 0.0
    public var stateSave = 0.0
    public var stateSend = 0.0
    public var commitToPrepared = 0.0
    public var handOver = 0.0
    public var goToDone = 0.0

    public init() {}

    public var total: Double {
        harvest + finalRound + finish + stateSave + stateSend + commitToPrepared + handOver + goToDone
    }
}

/// Laps of one clock, each charged to a phase of `PausePhases`.
struct PhaseClock {
    private(set) var phases = PausePhases()
    private var last = ContinuousClock.now

    init(startingAt start: ContinuousClock.Instant) { last = start }

    mutating func lap(_ phase: WritableKeyPath<PausePhases, Double>) {
        let now = ContinuousClock.now
        phases[keyPath: phase] += (now - last).seconds
        last = now
    }
}
