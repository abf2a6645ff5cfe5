/// Where the stop-and-copy pause went, phase by phase, as the source measured it
/// (issue 11: predicted vs actual downtime). The phases follow each other without gaps, so
/// their sum is the downtime `MigrationStats.downtimeSeconds` reports:
///
///     pause → vCPUs stopped → harvest → final round sent → BALLOON update sent
///           → streams finished → state saved
///           → STATE sent → COMMIT sent, PREPARED back → hand-over recorded → GO sent, DONE back
///
/// `commitToPrepared` includes the destination's state digest, state decode, memory digest
/// and `Machine.restore`; `goToDone` includes the destination's durable "started" record
/// (protocol.md §3.6.4, an fsync) and its start of the guest. The destination times its own
/// share (`DestinationPhases`).
public struct PausePhases: Sendable, Codable, Equatable, PhaseSet {
    /// Stopping the vCPUs (`Machine.pause`: each vCPU thread kicked out of KVM_RUN and parked).
    public var stopVCPUs = 0.0
    public var harvest = 0.0
    public var finalRound = 0.0
    /// The pause's BALLOON update (capability BALLOON_MAP, protocol.md §3.2.1): comparing the
    /// map with what was sent, and sending what changed.
    public var balloonUpdate = 0.0
    public var finish = 0.0
    public var stateSave = 0.0
    public var stateSend = 0.0
    public var commitToPrepared = 0.0
    public var handOver = 0.0
    public var goToDone = 0.0
    /// Of `harvest`: KVM's dirty log (KVM_GET_DIRTY_LOG over every slot — the paused harvest
    /// is the last and skips KVM_CLEAR_DIRTY_LOG — or the KVM ring). Not a phase of its own:
    /// it is inside `harvest`.
    public var harvestKVM = 0.0

    public init() {}

    public var total: Double {
        stopVCPUs + harvest + finalRound + balloonUpdate + finish + stateSave + stateSend + commitToPrepared + handOver + goToDone
    }

    // Files written before `stopVCPUs` and `harvestKVM` existed (bench --json) still decode.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func value(_ key: CodingKeys) throws -> Double { try c.decodeIfPresent(Double.self, forKey: key) ?? 0 }
        stopVCPUs = try value(.stopVCPUs); harvest = try value(.harvest); finalRound = try value(.finalRound)
        balloonUpdate = try value(.balloonUpdate)
        finish = try value(.finish); stateSave = try value(.stateSave); stateSend = try value(.stateSend)
        commitToPrepared = try value(.commitToPrepared); handOver = try value(.handOver); goToDone = try value(.goToDone)
        harvestKVM = try value(.harvestKVM)
    }
}

/// The destination's share of the pause (issue 11, item 2), timed by the receiver from the
/// end of its control stream's pages to DONE sent. Contiguous like `PausePhases`; the
/// `await…` phases are the destination waiting for the source, the others its own work.
public struct DestinationPhases: Sendable, Codable, Equatable, PhaseSet {
    /// The control stream's STREAM_END → every data stream drained and its pages applied.
    public var streamsTail = 0.0
    /// → STATE and COMMIT read (the source saving and sending its state).
    public var awaitCommit = 0.0
    /// The STATE digest and decoding the machine state.
    public var stateCheck = 0.0
    /// The memory digest (§3.5: the running sum, minus the ballooned pages' entries).
    public var memoryDigest = 0.0
    /// `Machine.restore`: vCPU, device and PV state into the new VM.
    public var restore = 0.0
    /// PREPARED sent.
    public var prepared = 0.0
    /// → GO read (the source recording the hand-over, and the round trip).
    public var awaitGo = 0.0
    /// The durable "started" record (§3.6.4): an fsync under `listen`, in memory in `bench`.
    public var record = 0.0
    /// `Machine.start`: the vCPU threads released.
    public var start = 0.0
    /// DONE sent.
    public var done = 0.0

    public init() {}

    /// The destination's own work between COMMIT read and DONE sent (its waits excluded).
    public var work: Double { stateCheck + memoryDigest + restore + prepared + record + start + done }
}

/// A set of contiguous phases `PhaseClock` charges laps to.
public protocol PhaseSet { init() }

/// Laps of one clock, each charged to a phase of `Phases`.
struct PhaseClock<Phases: PhaseSet> {
    private(set) var phases = Phases()
    private var last = ContinuousClock.now

    init(startingAt start: ContinuousClock.Instant = .now) { last = start }

    mutating func lap(_ phase: WritableKeyPath<Phases, Double>) {
        let now = ContinuousClock.now
        phases[keyPath: phase] += (now - last).seconds
        last = now
    }
}
