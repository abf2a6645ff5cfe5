import Foundation

extension MigrationSender {
    /// How long the source waits for the destination's reason after its connection broke.
    static let reasonTimeout = 2.0

    /// When a send or receive failed because the destination hung up, the destination has
    /// usually said why just before: an ERROR frame on the control stream (protocol.md §3.2).
    /// Reads what is left of the control stream (bounded by `reasonTimeout`) and returns
    /// `.peer(report)` when it finds one; otherwise `failure` unchanged.
    func destinationReason(for failure: MigrationError, control: FrameChannel?) -> MigrationError {
        guard case let .transport(cause) = failure, let control else { return failure }
        switch cause {
        case .peerClosed, .io, .tls: break
        default: return failure // a timeout (waiting longer would not help), a local close, …
        }
        control.stream.setTimeout(seconds: min(options.timeout, Self.reasonTimeout))
        // What the destination sends on the control stream (HELLO_ACK, PREPARED, …) is skipped
        // until its ERROR. Never called for `.unresolved`: that is not a transport failure.
        for _ in 0..<2 {
            guard let frame = try? control.receive() else { break }
            if case let .error(report) = frame { return .peer(report) }
        }
        return failure
    }
}
