/// The engine's view of a frame channel: its failures as `MigrationError` (`.transport` for
/// the stream, `.wire` for a frame that breaks protocol.md §3.2). The wire layer itself
/// (Wire/FrameChannel.swift) does not know the engine's error type.
extension FrameChannel {
    /// The next frame, validated (see `receive(allowed:state:transport:wire:)`).
    public func receive(allowed: Set<FrameType>? = nil, state: String = "") throws(MigrationError) -> Frame {
        try receive(allowed: allowed, state: state, transport: MigrationError.transport, wire: MigrationError.wire)
    }
}
