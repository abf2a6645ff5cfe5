/// The control stream's round trip as the commit will see it (two of them in the pause:
/// COMMIT → PREPARED, GO → DONE; protocol.md §3.6.1), for `DowntimePredictor.roundTrip`.
///
/// One sample taken at connect (HELLO → HELLO_ACK) was the estimate before: on a loaded host
/// it caught the destination busy (another migration's TLS handshake, a build's burst) and
/// stayed inflated for the whole migration — 20–30 ms, so an idle guest's two round trips
/// alone overran a 50 ms target and it never converged. Now every small pre-copy round adds a
/// PING → PONG sample (protocol.md §3.2, capability PING), taken while the vCPUs are parked as
/// in the commit (`MigrationSender.stopSample`), and the estimate is the **median**
/// (the lower one for an even count) of the most recent `window` samples: one sample that
/// queued behind a round's pages or a preempted thread does not move it, and it follows the
/// host as it is near the pause. The minimum was tried too: it under-predicts the commit
/// (a pause that overruns its target is the failure this estimate exists to prevent), and it
/// was only needed while the tests' `FaultProxy` lacked TCP_NODELAY — every relayed PONG then
/// waited for a delayed ACK (~40 ms), which no pvmigrate socket does (they all set it).
struct RoundTripEstimate: Sendable, Equatable {
    /// Samples the median looks back on.
    static let window = 5
    /// A PING is sent only after a round of at most this many bytes on the wire: the destination
    /// answers once it has read the round's frames on the control stream, so after a big round
    /// (round 0) the PONG would measure the destination draining it — seconds for a debug build
    /// under load, past a short read timeout — not the round trip the commit will see.
    static let quietRoundBytes: UInt64 = 1 << 20

    private(set) var samples: [Double] = []

    init(_ initial: Double? = nil) {
        if let initial { record(initial) }
    }

    /// Adds a measured round trip (seconds); negative, infinite or NaN samples are ignored.
    mutating func record(_ seconds: Double) {
        guard seconds.isFinite, seconds >= 0 else { return }
        samples.append(seconds)
        if samples.count > Self.window { samples.removeFirst(samples.count - Self.window) }
    }

    /// The median of the recent samples, the lower one of the middle two for an even count
    /// (0 before any).
    var seconds: Double {
        guard !samples.isEmpty else { return 0 }
        return samples.sorted()[(samples.count - 1) / 2]
    }
}
