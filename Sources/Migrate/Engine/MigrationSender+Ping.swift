extension MigrationSender {
    /// One PING → PONG on the control stream (protocol.md §3.2, capability PING): the commit's
    /// round trip as it is now, for `RoundTripEstimate`. Sent by the request thread between
    /// rounds, after the round's ROUND frame — the stream workers have finished writing then,
    /// so the control stream has one writer and one reader, as at the commit.
    func pingRoundTrip(_ control: FrameChannel, nonce: UInt64) throws(MigrationError) -> Double {
        let sent = ContinuousClock.now
        try sendControl(control, .ping(nonce: nonce))
        let frame = try control.receive()
        switch frame {
        case let .pong(echoed) where echoed == nonce: return (ContinuousClock.now - sent).seconds
        case let .error(report): throw .peer(report)
        case let .pong(echoed):
            throw .wire(.malformed(type: "PONG", reason: "nonce \(echoed), PING \(nonce) awaited"))
        default: throw .wire(.unexpected(frame: frame.name, state: "awaiting PONG"))
        }
    }
}
