import Foundation
import Testing
import Control
import Migrate

/// The `status` result's wire form (protocol.md §4).
@Suite struct VMStatusTests {
    static let sample = VMStatus(
        name: "web", state: .migrating, memoryBytes: 64 << 20, execution: .native, uptimeSeconds: 12.5, pid: 4242,
        pv: .init(registered: true, pagesWritten: 1000, rate: 20, passes: 3, selfcheckState: "passed", selfcheckBad: 0, rejected: 1),
        arrivedFrom: "127.0.0.1:4000 (CN=src)",
        migration: .init(destination: "192.0.2.20:7070", elapsedSeconds: 1.5, round: 2, remainingPages: 10, bandwidth: 1e6,
                         dirtyRate: 5, expectedDowntimeSeconds: 0.01),
        unresolved: nil)

    @Test func encodesToTheGoldenJSON() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        #expect(String(decoding: try encoder.encode(Self.sample), as: UTF8.self) == #"{"arrived_from":"127.0.0.1:4000 (CN=src)","#
            + #""execution":"native","memory_bytes":67108864,"migration":{"bandwidth":1000000,"destination":"192.0.2.20:7070","#
            + #""dirty_rate":5,"elapsed_s":1.5,"expected_downtime_s":0.01,"remaining_pages":10,"round":2},"name":"web","#
            + #""pid":4242,"pv":{"pages_written":1000,"passes":3,"rate":20,"registered":true,"rejected":1,"#
            + #""selfcheck_bad":0,"selfcheck_state":"passed"},"state":"migrating","uptime_s":12.5}"#)
    }

    @Test func decodesWhatTheHostSendsIgnoringUnknownKeys() throws {
        let text = #"{"name": "a", "state": "unresolved", "memory_bytes": 1048576, "execution": "emulated", "uptime_s": 3, "#
            + #""pid": 1, "pv": {"registered": false, "pages_written": 0, "rate": 0, "passes": 0, "selfcheck_state": "never", "#
            + #""selfcheck_bad": 0, "rejected": 0}, "later_key": [1], "unresolved": {"destination": "h:1", "#
            + #""migration_id": "00112233445566778899aabbccddeeff", "since_s": 2.5, "attempts": 4}}"#
        let s = try JSONValue(parsing: Data(text.utf8)).decode(VMStatus.self)
        #expect(s.state == .unresolved && s.execution == .emulated && s.uptimeSeconds == 3 && s.arrivedFrom == nil)
        #expect(s.unresolved == .init(destination: "h:1", migrationID: "00112233445566778899aabbccddeeff", sinceSeconds: 2.5,
                                      attempts: 4, lastError: nil))
        #expect(try JSONValue(encoding: Self.sample).decode(VMStatus.self) == Self.sample)
    }

    @Test func selfcheckAndRecoverResultsEncodeToTheGoldenJSON() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func text(_ value: some Encodable) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        let checked = try JSONValue.object(["pages": 16361, "bad": 0]).result(SelfcheckResult.self, of: .selfcheck)
        #expect(checked.pages == 16361 && checked.bad == 0)
        #expect(try text(checked) == #"{"bad":0,"pages":16361}"#)
        #expect(try text(RecoverResult(outcome: .started, forced: true))
            == #"{"forced":true,"outcome":"started","vm":"stopped here (it runs at the destination)"}"#)
        #expect(try text(RecoverResult(outcome: .aborted, forced: false)) == #"{"forced":false,"outcome":"aborted","vm":"resumed here"}"#)
        #expect(throws: ControlError.self) { try JSONValue.object(["pages": "many"]).result(SelfcheckResult.self, of: .selfcheck) }
    }
}
