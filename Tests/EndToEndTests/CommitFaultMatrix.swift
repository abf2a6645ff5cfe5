import Foundation
import Testing
import TestSupport

/// The rest of the fault matrix of issue 9 (docs/commit-protocol-tests.md): the data stream's
/// frames, a delay past the timeout for every frame before the commit, faults on the ERROR
/// that answers a failure, and faults on the RESOLVE connection. Run by
/// `theRestOfTheMatrix`, with the same checks as `vmRunsInExactlyOnePlace`.
extension EndToEnd.CommitFaultTests {
    @Test(arguments: dataStreamMatrix + delayMatrix + errorCases + resolveCases)
    func theRestOfTheMatrix(_ c: Case) throws { try Self.check(c) }

    // Frame types, protocol.md §3.2.
    static let hello: UInt16 = 1, helloAck: UInt16 = 2, machine: UInt16 = 3, join: UInt16 = 4, round: UInt16 = 6
    static let errorFrame: UInt16 = 10, streamEnd: UInt16 = 11, resolveFrame: UInt16 = 15, outcome: UInt16 = 16

    /// With 2 streams, the data stream (the proxy's connection 1): JOIN (which gets no reply —
    /// its only answer is an ERROR to a bad one), its first PAGES, its STREAM_END × drop / cut
    /// before / cut after / a bit that must be caught. All but one fail before GO and the source
    /// resumes; a cut right after the data stream's STREAM_END harms nothing and the VM moves.
    static let dataStreamMatrix: [Case] = {
        let frames: [(name: String, type: UInt16, bit: Int)] = [
            ("JOIN", join, 8 * 16 + 1),   // stream_index 1 → 3: out of range, ERROR 1 on that connection
            ("PAGES", pages, 64),        // the batch's reserved u64 (or, compressed, zstd's checksum)
            ("STREAM_END", streamEnd, 0), // the frame count
        ]
        var cases: [Case] = []
        for f in frames {
            for (label, fault) in [("dropped", P.Fault.drop), ("cut before", .cutBefore), ("cut after", .cutAfter),
                                   ("bit \(f.bit) flipped", .flipBit(f.bit))] {
                // After its STREAM_END a data stream carries nothing (§3.2): a cut there is harmless.
                let harmless = f.type == streamEnd && label == "cut after"
                cases.append(Case(name: "data stream: S→D \(f.name) \(label)",
                                  rules: [P.Rule(.toDestination, frameType: f.type, connection: 1, fault)],
                                  place: harmless ? .destination : .source, unresolved: false, streams: 2, succeeds: harmless,
                                  moreFailures: true)) // the data connection may be reported apart from its migration
            }
        }
        return cases
    }()

    /// Every frame before GO held past the timeout of the side waiting for it: that side gives
    /// up, the source resumes, nothing arrives. (GO and DONE delayed: `cases`.)
    static let delayMatrix: [Case] = {
        let frames: [(name: String, type: UInt16, direction: P.Direction, occurrence: Int, connection: Int?, streams: Int)] = [
            ("HELLO", hello, .toDestination, 1, 0, 1),
            ("HELLO_ACK", helloAck, .toSource, 1, 0, 1),
            ("MACHINE", machine, .toDestination, 1, 0, 1),
            ("JOIN", join, .toDestination, 1, 1, 2),
            ("3rd PAGES on the control stream", pages, .toDestination, 3, 0, 1),
            ("1st PAGES on the data stream", pages, .toDestination, 1, 1, 2),
            ("ROUND", round, .toDestination, 1, 0, 1),
            ("STREAM_END on the control stream", streamEnd, .toDestination, 1, 0, 1),
            ("STREAM_END on the data stream", streamEnd, .toDestination, 1, 1, 2),
            ("STATE", state, .toDestination, 1, 0, 1),
            ("COMMIT", commit, .toDestination, 1, 0, 1),
            ("PREPARED", prepared, .toSource, 1, 0, 1),
        ]
        return frames.map { f in
            Case(name: "\(f.direction) \(f.name) delayed \(pastTimeout) s",
                 rules: [P.Rule(f.direction, frameType: f.type, occurrence: f.occurrence, connection: f.connection, .delay(pastTimeout))],
                 place: .source, unresolved: false, streams: f.streams,
                 moreFailures: f.streams == 2) // a data connection (a late JOIN, say) may be reported too
        }
    }()

    /// The ERROR that reports a failure, itself lost, cut, corrupted or late: the failure
    /// still ends the migration on both sides (the connection closes after an ERROR).
    static let errorCases: [Case] = {
        let damagedState = P.Rule(.toDestination, frameType: state, .flipBit(8 * 64)) // → the destination's ERROR 4
        let damagedAck = P.Rule(.toSource, frameType: helloAck, .flipBit(16))         // → the source's ERROR 1
        return [
            ("D→S ERROR (state digest) dropped", [damagedState, P.Rule(.toSource, frameType: errorFrame, .drop)]),
            ("D→S ERROR (state digest) cut before", [damagedState, P.Rule(.toSource, frameType: errorFrame, .cutBefore)]),
            ("D→S ERROR (state digest) bit 0 flipped", [damagedState, P.Rule(.toSource, frameType: errorFrame, .flipBit(0))]),
            ("D→S ERROR (state digest) delayed", [damagedState, P.Rule(.toSource, frameType: errorFrame, .delay(pastTimeout))]),
            ("S→D ERROR (bad HELLO_ACK) dropped", [damagedAck, P.Rule(.toDestination, frameType: errorFrame, .drop)]),
            ("S→D ERROR (bad HELLO_ACK) bit 0 flipped", [damagedAck, P.Rule(.toDestination, frameType: errorFrame, .flipBit(0))]),
        ].map { Case(name: $0.0, rules: $0.1, place: .source, unresolved: false) }
    }()

    /// Unresolved (DONE or GO lost), then a fault on the RESOLVE connection: the source stays
    /// paused until it has two agreeing answers (protocol.md §3.6.5), so no damaged or lost
    /// answer makes it resume a VM that runs at the destination, or stop one that does not.
    static let resolveCases: [Case] = {
        let lostDone = P.Rule(.toSource, frameType: done, .drop)   // the destination started
        let lostGo = P.Rule(.toDestination, frameType: go, .drop)  // the destination aborts
        let faults: [(String, P.Rule)] = [
            ("RESOLVE dropped", P.Rule(.toDestination, frameType: resolveFrame, .drop)),
            ("cut before RESOLVE", P.Rule(.toDestination, frameType: resolveFrame, .cutBefore)),
            ("RESOLVE's id bit 3 flipped", P.Rule(.toDestination, frameType: resolveFrame, .flipBit(3))),
            ("RESOLVE delayed", P.Rule(.toDestination, frameType: resolveFrame, .delay(pastTimeout))),
            ("OUTCOME dropped", P.Rule(.toSource, frameType: outcome, .drop)),
            ("cut before OUTCOME", P.Rule(.toSource, frameType: outcome, .cutBefore)),
            ("OUTCOME bit 0 flipped", P.Rule(.toSource, frameType: outcome, .flipBit(0))),
            ("OUTCOME bit 1 flipped", P.Rule(.toSource, frameType: outcome, .flipBit(1))),
        ]
        return faults.flatMap { f in [
            Case(name: "DONE lost, then \(f.0)", rules: [lostDone, f.1], place: .destination, unresolved: true),
            Case(name: "GO lost, then \(f.0)", rules: [lostGo, f.1], place: .source, unresolved: true, moreFailures: true),
        ] }
    }()
}
