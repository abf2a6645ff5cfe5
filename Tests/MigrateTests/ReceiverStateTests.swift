import Testing
@testable import Migrate

/// `ReceiverState`, the destination's state machine (protocol.md §3.4, §3.6.3).
@Suite struct ReceiverStateTests {
    /// The order a migration that goes well passes through.
    static let happyPath: [ReceiverState] = [
        .awaitHello, .awaitMachine, .awaitJoins, .receiving, .awaitState, .awaitCommit, .prepared, .deciding, .started,
    ]

    @Test func aMigrationThatGoesWellVisitsEveryStateButFailedInOrder() {
        var state = ReceiverState.awaitHello
        var visited = [state]
        while let next = state.next {
            #expect(state.mayMove(to: next))
            state = next
            visited.append(state)
        }
        #expect(visited == Self.happyPath)
        #expect(Set(visited).union([.failed]) == Set(ReceiverState.allCases))
    }

    @Test func everyStateButTheFinalOnesMayFailAndNothingElse() {
        for from in ReceiverState.allCases {
            for to in ReceiverState.allCases {
                let allowed = to == from.next || (to == .failed && from != .started && from != .failed)
                #expect(from.mayMove(to: to) == allowed, "\(from) → \(to)")
            }
        }
        #expect(ReceiverState.started.isFinal && ReceiverState.failed.isFinal)
        #expect(ReceiverState.allCases.filter(\.isFinal) == [.started, .failed])
    }

    /// The commit machine's phases map onto the receiver's states, and each move the commit
    /// machine makes is a move the receiver allows.
    @Test func theCommitMachinesMovesAreReceiverMoves() {
        let id = [UInt8](repeating: 7, count: 16)
        var commit = DestinationCommit(migrationID: id)
        var state = ReceiverState(commit.phase)
        #expect(state == .awaitCommit)
        for event: DestinationCommit.Event in [.verified, .received(.go(migrationID: id)), .recorded(.started)] {
            _ = commit.handle(event)
            let next = ReceiverState(commit.phase)
            #expect(state.mayMove(to: next), "\(state) → \(next) on \(event)")
            state = next
        }
        #expect(state == .started)
        // A GO deadline in `prepared`: the commit machine aborts, the receiver fails.
        var late = DestinationCommit(migrationID: id)
        _ = late.handle(.verified)
        _ = late.handle(.failed)
        #expect(ReceiverState(late.phase) == .failed && ReceiverState.prepared.mayMove(to: .failed))
    }

    @Test func statesAreNamedAsProtocolMdNamesThem() {
        #expect(ReceiverState.allCases.map(\.description) == [
            "awaitHello", "awaitMachine", "awaitJoins", "receiving", "awaitState", "awaitCommit", "prepared", "deciding",
            "started", "failed",
        ])
    }
}
