/// Where one incoming migration stands at the destination (protocol.md §3.4 and §3.6.3):
/// `MigrationReceiver` moves through these states in order and nowhere else, and every move
/// goes through `mayMove(to:)`.
///
/// ```
///  awaitHello ──HELLO, a version both speak──▶ awaitMachine               [send HELLO_ACK]
///  awaitMachine ──MACHINE, memory admitted, VM built──▶ awaitJoins
///  awaitJoins ──JOIN on every data stream──▶ receiving
///  receiving ──PAGES, ROUND (control stream)──▶ receiving                  [apply, hash]
///  receiving ──STREAM_END checked on every stream──▶ awaitState
///  awaitState ──STATE──▶ awaitCommit
///  awaitCommit ──COMMIT, both digests match, state restored──▶ prepared   [send PREPARED]
///                      (the progress watchdog, §3.1.1, is disarmed when COMMIT arrives)
///  prepared ──GO(id)──▶ deciding                                          [record "started", fsync]
///  deciding ──the table says started──▶ started                           [start the guest, send DONE]
///
///  any state but started ──ERROR, bad frame, timeout, a limit (§3.1.1), lost connection──▶ failed
///      [prepared: record "aborted"; deciding: a RESOLVE recorded "aborted" first]  [discard the VM]
/// ```
///
/// `started` and `failed` are final. From `prepared` on, the moves are the ones
/// `DestinationCommit` (the pure commit machine) answers; `init(_:)` maps its phases here.
public enum ReceiverState: Sendable, Equatable, CaseIterable, CustomStringConvertible {
    case awaitHello, awaitMachine, awaitJoins, receiving, awaitState, awaitCommit, prepared, deciding, started, failed

    /// The state a migration that goes well moves to next; nil for the final states.
    public var next: ReceiverState? {
        switch self {
        case .awaitHello: .awaitMachine
        case .awaitMachine: .awaitJoins
        case .awaitJoins: .receiving
        case .receiving: .awaitState
        case .awaitState: .awaitCommit
        case .awaitCommit: .prepared
        case .prepared: .deciding
        case .deciding: .started
        case .started, .failed: nil
        }
    }

    public var isFinal: Bool { next == nil }

    /// Whether the machine may move from this state to `other`: to its `next`, or to
    /// `failed` from any state that is not final.
    public func mayMove(to other: ReceiverState) -> Bool {
        other == next || (other == .failed && !isFinal)
    }

    /// The receiver's state for a phase of the commit machine.
    public init(_ phase: DestinationCommit.Phase) {
        switch phase {
        case .awaitCommit: self = .awaitCommit
        case .prepared: self = .prepared
        case .deciding: self = .deciding
        case .started: self = .started
        case .aborted: self = .failed
        }
    }

    /// The names protocol.md §3.4 and §3.6.3 use.
    public var description: String {
        switch self {
        case .awaitHello: "awaitHello"
        case .awaitMachine: "awaitMachine"
        case .awaitJoins: "awaitJoins"
        case .receiving: "receiving"
        case .awaitState: "awaitState"
        case .awaitCommit: "awaitCommit"
        case .prepared: "prepared"
        case .deciding: "deciding"
        case .started: "started"
        case .failed: "failed"
        }
    }
}
