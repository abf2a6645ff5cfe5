import Foundation
import Core
@testable import Migrate
import Testing

/// The commit protocol's decisions (protocol.md §3.6) without sockets or KVM: the two state
/// machines, the STATE digest, the OUTCOME decoder and the destination's outcome table.
struct CommitProtocolTests {
    static let id: [UInt8] = (0..<16).map { UInt8($0) }
    static let other: [UInt8] = (0..<16).map { UInt8(0xf0 | $0) }

    // MARK: Source

    /// A source driven to `awaitDone` (GO about to be written).
    static func sourceAwaitingDone() -> SourceCommit {
        var s = SourceCommit(migrationID: id)
        #expect(s.handle(.commitSent) == .none)
        #expect(s.handle(.received(.prepared(migrationID: id))) == .recordHandOver)
        #expect(s.handle(.handOverRecorded) == .sendGo)
        #expect(s.phase == .awaitDone && !s.mayResume)
        return s
    }

    @Test("source: PREPARED → record → GO → DONE stops the VM here")
    func sourceHappyPath() {
        var s = Self.sourceAwaitingDone()
        #expect(s.handle(.received(.done(migrationID: Self.id))) == .stopHere)
        #expect(s.phase == .handedOver)
        #expect(s.handle(.failed) == .none, "a late failure changes nothing once handed over")
    }

    @Test("source: any failure or refusal before GO resumes the VM here",
          arguments: [SourceCommit.Event.failed, .received(.error(ErrorReport(code: .digestMismatch, reason: "x"))),
                      .received(.prepared(migrationID: other)), .received(.done(migrationID: id)),
                      .received(.commitAck(status: 0))])
    func sourceBeforeGoResumes(_ event: SourceCommit.Event) {
        var s = SourceCommit(migrationID: Self.id)
        _ = s.handle(.commitSent)
        #expect(s.mayResume)
        #expect(s.handle(event) == .resumeHere)
        #expect(s.phase == .resumed)
    }

    @Test("source: a failure while recording the hand-over resumes (GO was never sent)")
    func sourceRecordFailure() {
        var s = SourceCommit(migrationID: Self.id)
        _ = s.handle(.commitSent)
        _ = s.handle(.received(.prepared(migrationID: Self.id)))
        #expect(s.mayResume)
        #expect(s.handle(.failed) == .resumeHere)
    }

    @Test("source: after GO, anything but our DONE leaves the outcome unresolved (never resume on its own)",
          arguments: [SourceCommit.Event.failed, .received(.error(ErrorReport(code: .timeout, reason: "x"))),
                      .received(.done(migrationID: other)), .received(.prepared(migrationID: id))])
    func sourceAfterGoUnresolved(_ event: SourceCommit.Event) {
        var s = Self.sourceAwaitingDone()
        #expect(s.handle(event) == .resolve)
        #expect(s.phase == .unresolved && !s.mayResume)
        #expect(s.handle(.failed) == .resolve, "still unresolved: ask again")
    }

    @Test("source: resolution — started stops here; aborted and unknown resume here",
          arguments: [(CommitOutcome.started, SourceCommit.Action.stopHere), (.aborted, .resumeHere), (.unknown, .resumeHere)])
    func sourceResolution(_ outcome: CommitOutcome, _ expected: SourceCommit.Action) {
        var s = Self.sourceAwaitingDone()
        _ = s.handle(.failed)
        #expect(s.handle(.resolved(outcome)) == expected)
        #expect(s.handle(.resolved(outcome == .started ? .aborted : .started)) == .none, "the first answer is final")
    }

    // MARK: Destination

    @Test("destination: verified → PREPARED; GO → record started → start and DONE")
    func destinationHappyPath() {
        var d = DestinationCommit(migrationID: Self.id)
        #expect(d.handle(.verified) == .sendPrepared)
        #expect(d.handle(.received(.go(migrationID: Self.id))) == .recordStarted)
        #expect(d.handle(.recorded(.started)) == .startAndSendDone)
        #expect(d.phase == .started)
    }

    @Test("destination: without a GO for this migration it never starts",
          arguments: [DestinationCommit.Event.failed, .received(.go(migrationID: other)),
                      .received(.error(ErrorReport(code: .cancelled, reason: ""))), .received(.commitAck(status: 0))])
    func destinationNoGo(_ event: DestinationCommit.Event) {
        var d = DestinationCommit(migrationID: Self.id)
        _ = d.handle(.verified)
        #expect(d.handle(event) == .recordAbortedAndDiscard)
        #expect(d.phase == .aborted)
        #expect(d.handle(.received(.go(migrationID: Self.id))) == .none, "a GO after the abort is ignored")
    }

    @Test("destination: GO after a RESOLVE decided aborted does not start")
    func destinationResolvedFirst() {
        var d = DestinationCommit(migrationID: Self.id)
        _ = d.handle(.verified)
        _ = d.handle(.received(.go(migrationID: Self.id)))
        #expect(d.handle(.recorded(.aborted)) == .discard)
        #expect(d.phase == .aborted)
    }

    @Test("destination: a failure before verification discards without a record")
    func destinationBadCommit() {
        var d = DestinationCommit(migrationID: Self.id)
        #expect(d.handle(.failed) == .discard)
    }

    // MARK: STATE digest

    @Test("the STATE digest catches every single flipped bit and a change of length")
    func stateDigestBitFlips() {
        var blob = [UInt8](repeating: 0, count: 301)
        for i in blob.indices { blob[i] = UInt8(truncatingIfNeeded: i &* 37 &+ 11) }
        let good = StateDigest.compute(blob)
        for bit in 0..<(blob.count * 8) {
            var bad = blob
            bad[bit / 8] ^= 1 << (bit % 8)
            #expect(StateDigest.compute(bad) != good, "bit \(bit) flipped went unnoticed")
        }
        #expect(StateDigest.compute(blob + [0]) != good)
        #expect(StateDigest.compute(Array(blob.dropLast())) != good)
        #expect(StateDigest.compute([]) != StateDigest.compute([0]))
    }

    @Test("OUTCOME with an undefined value is malformed")
    func outcomeUndefined() {
        let header = FrameHeader(type: .outcome, length: 8)
        #expect(throws: WireError.self) { _ = try Frame.decode(header, payload: [3, 0, 0, 0, 0, 0, 0, 0]) }
        #expect(throws: WireError.self) { _ = try Frame.decode(header, payload: [1, 0, 0, 0, 1, 0, 0, 0]) }
    }

    // MARK: Outcome table

    static func tablePath() -> String {
        NSTemporaryDirectory() + "pvmigrate-outcomes-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
    }

    @Test("the first decision wins, and survives a reload from disk")
    func tablePersists() throws {
        let path = Self.tablePath()
        defer { unlink(path) }
        let t = try OutcomeTable(path: path)
        #expect(t.lookup(Self.id) == .unknown)
        #expect(try t.decide(Self.id, .started) == .started)
        #expect(try t.decide(Self.id, .aborted) == .started, "a later abort cannot override started")
        #expect(try t.decide(Self.other, .aborted) == .aborted)
        #expect(try t.decide(Self.other, .started) == .aborted, "a GO after an abort cannot start")
        let reloaded = try OutcomeTable(path: path)
        #expect(reloaded.lookup(Self.id) == .started)
        #expect(reloaded.lookup(Self.other) == .aborted)
    }

    @Test("RESOLVE: unknown id → unknown (and fenced); active session → aborted; decided → the decision")
    func tableResolve() throws {
        let path = Self.tablePath()
        defer { unlink(path) }
        let t = try OutcomeTable(path: path)
        #expect(t.resolve(Self.id, active: false) == .unknown)
        #expect(try t.decide(Self.id, .started) == .aborted, "after answering unknown the id is fenced")
        #expect(t.resolve(Self.other, active: true) == .aborted)
        let third: [UInt8] = Array(repeating: 9, count: 16)
        try t.decide(third, .started)
        #expect(t.resolve(third, active: true) == .started)
        #expect(try OutcomeTable(path: path).lookup(Self.id) == .aborted)
    }

    @Test("a torn or foreign line in the table file is skipped")
    func tableTornLine() throws {
        let path = Self.tablePath()
        defer { unlink(path) }
        let text = "started \(OutcomeTable.hex(Self.id))\ngarbage\nstarted 0011\naborted \(OutcomeTable.hex(Self.other))\nstar"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        let t = try OutcomeTable(path: path)
        #expect(t.lookup(Self.id) == .started)
        #expect(t.lookup(Self.other) == .aborted)
    }

    @Test("the table is bounded: decisions older than the retention are forgotten, at load and while running")
    func tablePrunes() throws {
        let path = Self.tablePath()
        defer { unlink(path) }
        let now = Locked(1_000_000.0)
        let day = 86_400.0
        let old: [UInt8] = Array(repeating: 7, count: 16), legacy: [UInt8] = Array(repeating: 8, count: 16)
        // Two decisions 40 days old, one 10 days old, one in the 2.0 format (no time), a torn line.
        let text = OutcomeTable.line(old, .started, now.value - 40 * day) + OutcomeTable.line(Self.other, .aborted, now.value - 40 * day)
            + OutcomeTable.line(Self.id, .started, now.value - 10 * day) + "started \(OutcomeTable.hex(legacy))\nstarted 00"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
        let t = try OutcomeTable(path: path, retention: 30 * day, clock: { now.value })
        #expect(t.lookup(old) == .unknown && t.lookup(Self.other) == .unknown, "40-day-old decisions are kept")
        #expect(t.lookup(Self.id) == .started && t.lookup(legacy) == .started)
        let rewritten = try String(contentsOfFile: path, encoding: .utf8)
        #expect(rewritten == OutcomeTable.line(Self.id, .started, now.value - 10 * day) + OutcomeTable.line(legacy, .started, now.value),
                "the file was not rewritten to what is remembered: \(rewritten)")
        // While running: 25 days on, the next `pruneInterval` decisions forget the 10-day-old one.
        now.withLock { $0 += 25 * day }
        for i in 0..<OutcomeTable.pruneInterval {
            var id = [UInt8](repeating: 0xee, count: 16)
            id[0] = UInt8(i & 0xff); id[1] = UInt8(i >> 8)
            try t.decide(id, .aborted)
        }
        #expect(t.lookup(Self.id) == .unknown, "a 35-day-old decision survived a prune")
        #expect(t.lookup(legacy) == .started, "a 25-day-old decision was forgotten")
        #expect(t.count == OutcomeTable.pruneInterval + 1)
        let reloaded = try OutcomeTable(path: path, retention: 30 * day, clock: { now.value })
        #expect(reloaded.count == OutcomeTable.pruneInterval + 1 && reloaded.lookup(Self.id) == .unknown)
        #expect(!FileManager.default.fileExists(atPath: path + ".new"))
    }
}
