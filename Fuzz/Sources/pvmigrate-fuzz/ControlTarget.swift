import Foundation
@testable import Control
import Migrate

/// One control-protocol request line (protocol.md §4) through the parse and validation a
/// `VMHost` applies before acting: `ControlRequest.parse` (which decodes and checks the
/// arguments, `migrate`'s with `MigrationOptions.validate()`). No VM and no socket: the
/// checks are pure.
enum ControlTarget: FuzzTarget {
    static let name = "control"
    static let invariant = """
        an accepted request re-encodes to a line that is accepted as the same command; \
        accepted migrate arguments are inside their documented ranges (destination port 1–65535, \
        streams 1–64, compression 1–22 or off, finite positive times, TLS xor insecure); every \
        answer, accepted or refused, is one line of JSON that parses back to an object echoing the id
        """

    static func run(_ input: [UInt8]) {
        let id: JSONValue
        switch ControlRequest.parse(input) {
        case .blank:
            check(input.allSatisfy { $0 == 0x20 || $0 == 0x09 || $0 == 0x0d }, "a non-blank line was ignored")
            return
        case let .refused(refusedID, message):
            id = refusedID
            checkAnswer(.failed(id: id, error: message), id: id)
        case let .request(requestID, request):
            id = requestID
            // Its encoding (what a client sends) is accepted as the same command. (Not always
            // equal: milliseconds → seconds → milliseconds may move a number by an ulp.)
            let again = (try? JSONValue(encoding: request)).map { ControlRequest.parse(Array($0.jsonText.utf8)) }
            if case let .request(_, back)? = again {
                check(back.command == request.command, "\(request) came back as \(back)")
            } else {
                check(false, "\(request) does not survive its own encoding: \(String(describing: again))")
            }
            if case let .migrate(m) = request { migrate(m) }
            checkAnswer(.ok(id: id, result: [:]), id: id)
        }
    }

    static func migrate(_ parsed: MigrateRequest) {
        let o = parsed.options
        check(parsed.destination.port > 0 && !parsed.destination.host.isEmpty, "destination \(parsed.destination)")
        check((1...64).contains(o.streams), "\(o.streams) streams")
        check(o.compressionLevel.map { (1...22).contains($0) } ?? true, "compression \(String(describing: o.compressionLevel))")
        check(o.downtimeTarget.isFinite && o.downtimeTarget > 0, "downtime \(o.downtimeTarget)")
        check(o.maxTime.isFinite && o.maxTime > 0, "max time \(o.maxTime)")
        check(o.bandwidthLimit.map { $0.isFinite && $0 > 0 } ?? true, "bandwidth \(String(describing: o.bandwidthLimit))")
        check(parsed.peerName == nil || parsed.security != .insecure, "a peer name on a plaintext migration")
    }

    /// What `VMHost.Reply` sends must be one JSON line that a client parses back.
    static func checkAnswer(_ answer: ControlResponse, id: JSONValue) {
        let text = String(decoding: answer.line, as: UTF8.self)
        check(!text.utf8.contains(0x0a), "the answer spans lines: \(text)")
        let back = try? JSONValue(parsing: Data(text.utf8))
        check(back?.object != nil, "the answer \(text) does not parse back to an object")
        check(back.map { sameID($0["id"] ?? .null, id) } ?? false,
              "the answer's id \(String(describing: back?["id"])) is not the request's \(id)")
    }

    /// The same id, numbers compared as the doubles JSON makes of them: a request id such as
    /// 8446744067440737.551614 parses to the double 8.446744067440738e16, which the answer
    /// writes as 84467440674407380 — the same number, in another spelling (protocol.md §4).
    static func sameID(_ a: JSONValue, _ b: JSONValue) -> Bool {
        func number(_ v: JSONValue) -> Double? {
            switch v {
            case let .int(i): Double(i)
            case let .uint(u): Double(u)
            case let .double(d): d
            default: nil
            }
        }
        if let x = number(a), let y = number(b) { return x == y }
        return a == b
    }

    static func seeds() -> [[UInt8]] {
        [
            #"{"id": 1, "cmd": "status"}"#,
            #"{"id": "a", "cmd": "console", "follow": true}"#,
            #"{"id": 3, "cmd": "migrate", "destination": "127.0.0.1:7070", "insecure": true, "streams": 2, "compression": 3, "downtime_ms": 50, "bandwidth": 1e9, "delta": false, "dirty_source": "pv", "max_time_s": 60}"#,
            #"{"id": 18446744073709551615, "cmd": "migrate", "destination": "[::1]:1", "tls_dir": "/tmp/tls"}"#,
            #"{"id": null, "cmd": "stop", "x": [1, 2.5, {"y": "\u00e9"}]}"#,
            #"[1, 2]"#,
        ].map { Array($0.utf8) }
    }
}
