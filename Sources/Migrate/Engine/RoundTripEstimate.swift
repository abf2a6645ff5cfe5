/// The control stream's round trip as the commit will see it (two of them in the pause:
/// COMMIT → PREPARED, GO → DONE; protocol.md §3.6.1), for `DowntimePredictor.roundTrip`.
///
/// One sample taken at connect (HELLO → HELLO_ACK) was the estimate before: on a loaded host
/// it caught the destination busy (another migration's TLS handshake, a build's burst) and
/// stayed inflated for the whole migration — 20–30 ms, so an idle guest's two round trips
/// alone overran a 50 ms target and it never converged. Now every pre-copy round adds a
/// PING → PONG sample (protocol.md §3.2, capability PING) and the estimate is the **median**
/// of the most recent `window` samples: one slow sample, at connect or later, moves it by
/// at most one rank, and the estimate follows the host as it is near the pause.
struct RoundTripEstimate: Sendable, Equatable {
    /// Samples the median looks back on.
    static let window = 5

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

    /// The median of the recent samples (0 before any).
    var seconds: Double { DowntimePredictor.median(samples) }
}
