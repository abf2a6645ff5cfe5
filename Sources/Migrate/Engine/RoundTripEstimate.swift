/// The control stream's round trip as the commit will see it (two of them in the pause:
/// COMMIT → PREPARED, GO → DONE; protocol.md §3.6.1), for `DowntimePredictor.roundTrip`.
///
/// One sample taken at connect (HELLO → HELLO_ACK) was the estimate before: on a loaded host
/// it caught the destination busy (another migration's TLS handshake, a build's burst) and
/// stayed inflated for the whole migration — 20–30 ms, so an idle guest's two round trips
/// alone overran a 50 ms target and it never converged. Now every pre-copy round adds a
/// PING → PONG sample (protocol.md §3.2, capability PING) and the estimate is the **minimum**
/// of the most recent `window` samples. A sample only ever errs upwards — the PONG queues
/// behind the round's pages at the destination, a thread is preempted — so the smallest recent
/// one is the round trip without those delays, and it follows the host as it is near the
/// pause. (The median was tried first: through the tests' `FaultProxy` at load 7–9 every PONG
/// also timed the proxy relaying the round, ~40 ms, and ~100 dirty pages never fitted 50 ms.)
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

    /// The smallest of the recent samples (0 before any).
    var seconds: Double { samples.min() ?? 0 }
}
