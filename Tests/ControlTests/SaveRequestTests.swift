import Foundation
import Testing
import Control
import Migrate

/// The `save` request of the control protocol (protocol.md §4, §6): its golden JSON and the
/// arguments it refuses before anything happens.
@Suite struct SaveRequestTests {
    static let request = SaveRequest(path: "/var/tmp/vm.snap", layout: .compressed, live: true, stop: false,
                                     options: { var o = MigrationOptions(); o.streams = 1; o.downtimeTarget = 0.02; return o }())

    @Test func encodesToGoldenJSONAndParsesBack() throws {
        let text = try ControlRequestTests.json(ControlRequest.save(Self.request))
        #expect(text == #"{"adaptive_compression":true,"cmd":"save","compression":1,"delta":true,"#
            + #""dirty_source":"pv-verified","downtime_ms":20,"layout":"compressed","live":true,"max_time_s":300,"#
            + #""path":"/var/tmp/vm.snap","stop":false,"streams":1}"#)
        #expect(ControlRequestTests.parse(#"{"id": 1, "# + text.dropFirst()) == .request(id: .int(1), .save(Self.request)))
        // Absent keys: mapped, not live, keep running.
        guard case let .request(_, .save(minimal)) = ControlRequestTests.parse(#"{"cmd": "save", "path": "/x.snap"}"#) else {
            Issue.record("the minimal save request was refused")
            return
        }
        #expect(minimal.layout == .mapped && !minimal.live && !minimal.stop && minimal.options == MigrationOptions())
    }

    @Test func badArgumentsAreRefusedWithAReason() {
        let refusals: [(String, String)] = [
            (#"{"id": 1, "cmd": "save"}"#, #"save: "path" (the snapshot file) is required"#),
            (#"{"id": 1, "cmd": "save", "path": "/x", "layout": "zip"}"#, #"save: "layout" must be "mapped" or "compressed""#),
            (#"{"id": 1, "cmd": "save", "path": "/x", "live": "yes"}"#, #"save: "live" must be true or false"#),
            (#"{"id": 1, "cmd": "save", "path": "/x", "downtime_ms": 0}"#, "save: the downtime target must be 1–600000 ms"),
            (#"{"id": 1, "cmd": "save", "path": "/x", "destination": "h:1"}"#, #"save takes no argument "destination""#),
        ]
        for (line, message) in refusals {
            guard case let .refused(id, text) = ControlRequestTests.parse(line) else {
                Issue.record("accepted: \(line)")
                continue
            }
            #expect(id == .int(1))
            #expect(text.hasPrefix(message), "\(line) → \(text)")
        }
    }
}
