import Foundation
import Logging
@testable import Operations
import Testing

/// The log formats of docs/operations.md "Logs", through a real `Logger` with our handler.
@Suite(.serialized) struct LogOutputTests {
    /// Logs through `body` with `configuration` and returns the lines written.
    func lines(_ configuration: LogOutput.Configuration, _ body: (Logger) -> Void) -> [String] {
        let captured = LockedLines()
        let saved = LogOutput.shared.current
        LogOutput.shared.configure { $0 = configuration }
        LogOutput.shared.capture { captured.append($0) }
        defer {
            LogOutput.shared.capture(nil)
            LogOutput.shared.configure { $0 = saved }
        }
        var logger = Logger(label: "migrate.receiver") { LogOutput.Handler(label: $0, logLevel: configuration.level) }
        logger.logLevel = configuration.level
        body(logger)
        return captured.lines
    }

    @Test func textIsTheOldDiagnosticsLineWithTheMetadataAfterIt() {
        let out = lines(LogOutput.Configuration()) { log in
            log.info("VM a arrived")
            log.warning("careful", metadata: ["vm": "a", "peer": "127.0.0.1:1"])
            log.debug("not shown at info")
        }
        #expect(out == ["pvmigrate: VM a arrived\n", "pvmigrate: warning: careful {peer=127.0.0.1:1, vm=a}\n"])
    }

    @Test func timestampsPrefixTextLinesWhenAsked() {
        var c = LogOutput.Configuration()
        c.timestamps = true
        let line = lines(c) { $0.error("boom") }.first ?? ""
        // "2026-11-30T07:01:02.345Z pvmigrate: error: boom"
        #expect(line.range(of: #"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z pvmigrate: error: boom\n$"#,
                           options: .regularExpression) != nil, "\(line)")
    }

    @Test func jsonIsOneObjectPerLineWithTypedMetadataThatCannotReplaceTheReservedKeys() throws {
        var c = LogOutput.Configuration()
        c.format = .json
        c.level = .debug
        let out = lines(c) { log in
            log.debug("line one\nline two", metadata: ["pages": .stringConvertible(42), "seconds": .stringConvertible(1.5),
                                                       "ok": .stringConvertible(true), "message": "forged", "vm": "a"])
        }
        #expect(out.count == 1 && out[0].hasSuffix("\n") && out[0].dropLast().allSatisfy { $0 != "\n" }, "\(out)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(out[0].utf8)) as? [String: Any])
        #expect(object["level"] as? String == "debug")
        #expect(object["logger"] as? String == "migrate.receiver")
        #expect(object["message"] as? String == "line one\nline two")
        #expect(object["pages"] as? Int == 42 && object["seconds"] as? Double == 1.5 && object["ok"] as? Bool == true)
        #expect(object["vm"] as? String == "a")
        #expect(object["time"] == nil, "no timestamps unless asked")
    }

    @Test func theJournalIsRecognisedByJournalStream() {
        #expect(LogOutput.underJournal(["JOURNAL_STREAM": "8:12345"]))
        #expect(!LogOutput.underJournal([:]))
        #expect(!LogOutput.underJournal(["JOURNAL_STREAM": ""]))
    }
}

final class LockedLines: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: [String] = []
    func append(_ line: String) { lock.withLock { stored.append(line) } }
    var lines: [String] { lock.withLock { stored } }
}
