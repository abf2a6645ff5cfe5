// The destination's last step of a successful commit (protocol.md §3.6.3): after DONE it lets
// the source close the migration's connections first, and only then does its own clean-up.

/// Why the destination stopped waiting for the source to close the control connection.
enum SourceClose: Equatable, Sendable {
    /// The source closed it (or it broke): the expected end.
    case closed
    /// The source sent more after DONE, which §3.6.3 does not allow; nothing of it is read.
    case spoke
    /// The bound passed with the connection still open.
    case timedOut
}

extension SourceClose {
    /// How long the destination waits for the source to close after DONE. Only a bound on a
    /// source that never closes: the guest runs already, so all it delays is this side's
    /// clean-up and the arrival report.
    static let bound = 2.0

    /// Waits until the peer closes `stream`, at most `bound` seconds (blocked in poll(2), so
    /// this thread holds no core meanwhile).
    ///
    /// Why (measured, 2026-12-01): with both ends on one 2-core host, the destination's
    /// clean-up after DONE — TLS shutdowns, the stats, the arrival report, freeing the session
    /// and ending its thread, ~0.3 ms of CPU — ran on the core on which the source's control
    /// thread had just been woken to read DONE, while the guest started here held the other
    /// core; the scheduler let the clean-up finish first, and the source read DONE that much
    /// later, inside its downtime. The source closes right after reading DONE, so waiting for
    /// that close costs the destination nothing but the delay of work nobody waits for.
    static func await(_ stream: any ByteStream, bound: Double = bound) -> SourceClose {
        stream.setTimeout(seconds: bound)
        do {
            _ = try stream.read(count: 1)
            return .spoke
        } catch .timeout {
            return .timedOut
        } catch {
            return .closed
        }
    }
}
