import Foundation

// The source's half of the commit protocol (protocol.md §3.6.3) and the resolution of a
// migration whose outcome it does not know (§3.6.5). The decisions are `SourceCommit`'s.

extension MigrationSender {
    /// COMMIT → PREPARED → (record the hand-over) → GO → DONE on the control stream. Returns
    /// when DONE arrived (the guest runs at the destination). Throws `.unresolved` when GO may
    /// have been delivered but DONE did not arrive; any other error means the destination
    /// will never run the guest and the caller resumes it here.
    /// `clock` charges the round trips to their `PausePhases`.
    func commit(_ channel: FrameChannel, _ target: UnresolvedMigration, _ commitFrame: Frame,
                clock: inout PhaseClock<PausePhases>) throws(MigrationError) {
        commitState.withLock { $0 = SourceCommit(migrationID: target.migrationID) }
        func step(_ event: SourceCommit.Event) -> SourceCommit.Action {
            commitState.withLock { $0!.handle(event) }
        }
        try sendControl(channel, commitFrame)
        _ = step(.commitSent)
        var frame: Frame
        do { frame = try channel.receive() } catch {
            _ = step(.failed)
            throw error
        }
        clock.lap(\.commitToPrepared)
        guard step(.received(frame)) == .recordHandOver else { throw Self.refusal(frame, awaiting: "PREPARED") }
        do { try onHandOver?(target) } catch {
            _ = step(.failed)
            throw .outcomeTable("cannot record the hand-over, so GO was not sent: \(error)")
        }
        clock.lap(\.handOver)
        // From here the destination may receive GO: no resuming here on our own.
        guard step(.handOverRecorded) == .sendGo else { throw .invalidOptions("commit state machine out of step") }
        func unresolved(_ why: String) -> MigrationError {
            _ = step(.failed)
            return .unresolved(UnresolvedMigration(host: target.host, port: target.port, tls: target.tls,
                                                   migrationID: target.migrationID, reason: why))
        }
        do {
            try channel.send(.go(migrationID: target.migrationID))
            frame = try channel.receive()
        } catch {
            throw unresolved("after GO: \(error)")
        }
        clock.lap(\.goToDone)
        guard step(.received(frame)) == .stopHere else {
            throw unresolved("after GO the destination sent \(Self.refusal(frame, awaiting: "DONE"))")
        }
    }

    static func refusal(_ frame: Frame, awaiting: String) -> MigrationError {
        if case let .error(report) = frame { return .peer(report) }
        return .wire(.unexpected(frame: frame.name, state: "awaiting \(awaiting)"))
    }

    /// Asks the destination for its decision, twice (protocol.md §3.6.5): OUTCOME carries no
    /// id and no check of its own, so in plaintext one flipped bit could turn "started" into
    /// "unknown" (or a flipped RESOLVE id ask about another migration) and the VM would run
    /// twice. Two answers on two connections must agree on started / not started (unknown and
    /// aborted agree: the first answer fences the id); otherwise this throws and the VM stays
    /// paused for the next attempt.
    public func askOutcome(_ u: UnresolvedMigration) throws(MigrationError) -> CommitOutcome {
        let first = try askOutcomeOnce(u)
        let second = try askOutcomeOnce(u)
        guard (first == .started) == (second == .started) else {
            throw .outcomeTable("the destination's two answers for migration \(u.migrationIDHex) disagree (\(first), then "
                + "\(second)): a frame was damaged on the way; the VM stays paused until two answers agree")
        }
        return second
    }

    private func askOutcomeOnce(_ u: UnresolvedMigration) throws(MigrationError) -> CommitOutcome {
        let channel = try open(host: u.host, port: u.port, tls: u.tls)
        defer { channel.stream.close() }
        try sendControl(channel, .resolve(migrationID: u.migrationID))
        let frame = try channel.receive()
        guard case let .outcome(outcome) = frame else { throw Self.refusal(frame, awaiting: "OUTCOME") }
        return outcome
    }

    /// Settles an unresolved migration with the destination's answer (or an operator's
    /// `force`): started → the VM is stopped here; aborted or unknown → resumed here.
    /// Returns the outcome it acted on; throws (and leaves the VM paused) when the destination
    /// cannot be asked.
    @discardableResult
    public func resolve(_ u: UnresolvedMigration, force: CommitOutcome? = nil) throws(MigrationError) -> CommitOutcome {
        let outcome: CommitOutcome
        if let force { outcome = force } else { outcome = try askOutcome(u) }
        let action = commitState.withLock { state -> SourceCommit.Action in
            guard state?.phase == .unresolved, state?.migrationID == u.migrationID else { return .none }
            return state!.handle(.resolved(outcome))
        }
        switch action {
        case .stopHere: machine.stop()
        case .resumeHere: machine.resume()
        default: break
        }
        return outcome
    }
}
