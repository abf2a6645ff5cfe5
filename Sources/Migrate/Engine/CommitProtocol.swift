/// The two halves of the commit protocol (protocol.md §3.6) as pure state machines: the
/// engine feeds them events and does what they answer, so the decisions — when the source may
/// resume, when the destination may start — are tested without sockets or KVM.

/// The source's half (protocol.md §3.6.3):
///
/// ```
///  transferring --commitSent--> awaitPrepared --PREPARED(id)--> handingOver   [record the hand-over]
///  handingOver --handOverRecorded--> awaitDone                                 [then write GO]
///  awaitDone --DONE(id)--> handedOver                                          [stop the VM here]
///  transferring | awaitPrepared | handingOver --failure, ERROR, other frame--> resumed
///  awaitDone --failure, timeout, ERROR, other frame--> unresolved               [VM stays paused]
///  unresolved --OUTCOME started--> handedOver;  --OUTCOME aborted | unknown--> resumed
/// ```
///
/// The state moves to `awaitDone` *before* the first byte of GO is written: from then on the
/// destination may have GO, so the source may never resume on its own.
public struct SourceCommit: Sendable, Equatable {
    public enum Phase: Sendable, Equatable { case transferring, awaitPrepared, handingOver, awaitDone, handedOver, resumed, unresolved }
    public enum Event: Sendable, Equatable {
        case commitSent
        case received(Frame)
        case handOverRecorded
        case failed
        case resolved(CommitOutcome)
    }
    public enum Action: Sendable, Equatable { case none, recordHandOver, sendGo, stopHere, resumeHere, resolve }

    public let migrationID: [UInt8]
    public private(set) var phase = Phase.transferring

    public init(migrationID: [UInt8]) { self.migrationID = migrationID }

    /// Whether the source may still resume the VM by itself on a failure.
    public var mayResume: Bool { [.transferring, .awaitPrepared, .handingOver].contains(phase) }

    public mutating func handle(_ event: Event) -> Action {
        switch (phase, event) {
        case (.transferring, .commitSent):
            phase = .awaitPrepared
            return .none
        case (.awaitPrepared, .received(.prepared(migrationID))):
            phase = .handingOver
            return .recordHandOver
        case (.handingOver, .handOverRecorded):
            phase = .awaitDone
            return .sendGo
        case (.awaitDone, .received(.done(migrationID))):
            phase = .handedOver
            return .stopHere
        case (.unresolved, .resolved(.started)):
            phase = .handedOver
            return .stopHere
        case (.unresolved, .resolved):
            phase = .resumed
            return .resumeHere
        case (.handedOver, _), (.resumed, _):
            return .none // final
        case (.unresolved, _):
            return .resolve
        case (.awaitDone, _):
            phase = .unresolved
            return .resolve
        default:
            // Before GO: any failure, refusal or unexpected frame means the destination will
            // never run the guest (it needs GO), so it resumes here.
            phase = .resumed
            return .resumeHere
        }
    }
}

/// The destination's half after the last page (protocol.md §3.6.3):
///
/// ```
///  awaitCommit --STATE + COMMIT, both digests match, restore ok--> prepared    [send PREPARED]
///  prepared --GO(id)--> deciding                                               [record "started", fsync]
///  deciding --recorded started--> started                                      [start guest, send DONE]
///  deciding --the table already says aborted (a RESOLVE came first)--> aborted
///  awaitCommit --digest mismatch, bad state, failure--> aborted                [discard the VM]
///  prepared --deadline, failure, ERROR, other frame--> aborted                 [record "aborted", discard]
/// ```
public struct DestinationCommit: Sendable, Equatable {
    public enum Phase: Sendable, Equatable { case awaitCommit, prepared, deciding, started, aborted }
    public enum Event: Sendable, Equatable {
        case verified
        case received(Frame)
        case recorded(CommitOutcome)
        case failed
    }
    public enum Action: Sendable, Equatable { case none, sendPrepared, recordStarted, startAndSendDone, recordAbortedAndDiscard, discard }

    public let migrationID: [UInt8]
    public private(set) var phase = Phase.awaitCommit

    public init(migrationID: [UInt8]) { self.migrationID = migrationID }

    public mutating func handle(_ event: Event) -> Action {
        switch (phase, event) {
        case (.awaitCommit, .verified):
            phase = .prepared
            return .sendPrepared
        case (.awaitCommit, _):
            phase = .aborted
            return .discard
        case (.prepared, .received(.go(migrationID))):
            phase = .deciding
            return .recordStarted
        case (.prepared, _):
            phase = .aborted
            return .recordAbortedAndDiscard
        case (.deciding, .recorded(.started)):
            phase = .started
            return .startAndSendDone
        case (.deciding, _):
            phase = .aborted
            return .discard
        case (.started, _), (.aborted, _):
            return .none
        }
    }
}
