import Foundation
import Testing
import Control
import Migrate

/// The control protocol's requests and responses as bytes (protocol.md §4): the golden JSON
/// each one encodes to, and what the host makes of the lines clients send.
@Suite struct ControlRequestTests {
    /// Compact JSON with sorted keys, to compare with the golden text.
    static func json(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }

    static func parse(_ line: String) -> ControlRequest.Parsed { ControlRequest.parse(Array(line.utf8)) }

    static let migrate = MigrateRequest(
        destination: Endpoint(host: "192.0.2.20", port: 7070), security: .tls(directory: "/etc/pvmigrate/tls"),
        peerName: "dst", options: {
            var o = MigrationOptions()
            o.streams = 2
            o.compressionLevel = 3
            o.bandwidthLimit = 104_857_600
            o.dirtySource = .pv
            return o
        }())

    /// Every request with its golden encoding (the request line without `id`).
    static let golden: [(ControlRequest, String)] = [
        (.status, #"{"cmd":"status"}"#),
        (.stop, #"{"cmd":"stop"}"#),
        (.console(follow: true), #"{"cmd":"console","follow":true}"#),
        (.console(follow: false), #"{"cmd":"console","follow":false}"#),
        (.selfcheck, #"{"cmd":"selfcheck"}"#),
        (.cancel, #"{"cmd":"cancel"}"#),
        (.recover(force: nil), #"{"cmd":"recover"}"#),
        (.recover(force: .resume), #"{"cmd":"recover","force":"resume"}"#),
        (.recover(force: .stop), #"{"cmd":"recover","force":"stop"}"#),
        (.migrate(migrate),
         #"{"adaptive_compression":true,"bandwidth":104857600,"cmd":"migrate","compression":3,"delta":true,"#
            + #""destination":"192.0.2.20:7070","dirty_source":"pv","downtime_ms":50,"max_time_s":300,"#
            + #""peer_name":"dst","streams":2,"tls_dir":"/etc/pvmigrate/tls"}"#),
        (.migrate(MigrateRequest(destination: Endpoint(host: "::1", port: 1), security: .insecure,
                                 options: { var o = MigrationOptions(); o.streams = 1; o.compressionLevel = nil; return o }())),
         #"{"adaptive_compression":true,"cmd":"migrate","compression":0,"delta":true,"destination":"[::1]:1","#
            + #""dirty_source":"pv-verified","downtime_ms":50,"insecure":true,"max_time_s":300,"streams":1}"#),
    ]

    @Test func requestsEncodeToTheGoldenJSON() throws {
        for (request, text) in Self.golden {
            #expect(try Self.json(request) == text, "\(request)")
        }
    }

    @Test func goldenLinesParseBackToTheirRequestAndID() throws {
        for (index, (request, text)) in Self.golden.enumerated() {
            let line = #"{"id": \#(index), "# + text.dropFirst()
            #expect(Self.parse(line) == .request(id: .int(Int64(index)), request), "\(line)")
        }
        #expect(Self.parse(#"{"cmd": "status", "id": "a"}"#) == .request(id: .string("a"), .status))
        #expect(Self.parse(#"{"cmd": "status"}"#) == .request(id: .null, .status))
    }

    /// The lines `pvmigrate send` wrote before the requests were typed still mean the same.
    @Test func argumentsTheEarlierClientsSentStillParse() throws {
        let line = #"{"id": 7, "cmd": "migrate", "destination": "127.0.0.1:7070", "downtime_ms": 50.0, "delta": false, "#
            + #""tls_dir": "/tmp/tls", "streams": 2, "compression": 0, "adaptive_compression": false, "bandwidth": 2097152.0}"#
        guard case let .request(id, .migrate(m)) = Self.parse(line) else {
            Issue.record("not a migrate request: \(Self.parse(line))")
            return
        }
        #expect(id == .int(7))
        #expect(m.destination == Endpoint(host: "127.0.0.1", port: 7070) && m.security == .tls(directory: "/tmp/tls"))
        #expect(m.options.downtimeTarget == 0.05 && m.options.delta == false && m.options.streams == 2)
        #expect(m.options.compressionLevel == nil && m.options.adaptiveCompression == false)
        #expect(m.options.bandwidthLimit == 2_097_152)
        // Absent keys keep the defaults; no TLS key means the VM process's TLS directory.
        guard case let .request(_, .migrate(d)) = Self.parse(#"{"cmd": "migrate", "destination": "h:1", "bandwidth": 0}"#) else {
            Issue.record("the minimal migrate request was refused")
            return
        }
        #expect(d.security == .tlsDefault && d.options == MigrationOptions() && d.peerName == nil)
    }

    @Test func malformedLinesAreRefusedWithTheirID() {
        #expect(Self.parse(" \t\r") == .blank)
        let refusals: [(String, JSONValue, String)] = [
            ("[1, 2]", .null, "malformed request"),
            ("{", .null, "malformed request"),
            (#"{"id": 3}"#, .int(3), #""cmd" must be a string"#),
            (#"{"id": 3, "cmd": 5}"#, .int(3), #""cmd" must be a string"#),
            (#"{"id": 4, "cmd": "reboot"}"#, .int(4), #"unknown command "reboot"; the commands are status, stop"#),
            (#"{"id": 5, "cmd": "status", "follow": true}"#, .int(5), #"status takes no argument "follow""#),
            (#"{"id": 6, "cmd": "console", "lines": 5}"#, .int(6), #"console takes no argument "lines" (it takes: follow)"#),
            (#"{"id": 7, "cmd": "console", "follow": "yes"}"#, .int(7), #"console: "follow" must be true or false"#),
            (#"{"id": 8, "cmd": "recover", "force": "maybe"}"#, .int(8), #"recover: "force" must be "resume" or "stop""#),
            (#"{"id": 9, "cmd": "migrate"}"#, .int(9), #"migrate: "destination" ("host:port") is required"#),
            (#"{"id": 10, "cmd": "migrate", "destination": "nowhere"}"#, .int(10), "migrate: destination \"nowhere\" is not HOST:PORT"),
            (#"{"id": 11, "cmd": "migrate", "destination": "h:1", "insecure": true, "tls_dir": "/t"}"#, .int(11),
             #""tls_dir" and "insecure" exclude each other"#),
            (#"{"id": 12, "cmd": "migrate", "destination": "h:1", "insecure": true, "peer_name": "dst"}"#, .int(12),
             #""peer_name" and "insecure" exclude each other"#),
            (#"{"id": 13, "cmd": "migrate", "destination": "h:1", "peer_name": "a b"}"#, .int(13), #""peer_name" must be a DNS name"#),
            (#"{"id": 14, "cmd": "migrate", "destination": "h:1", "streams": 2.5}"#, .int(14), #"migrate: "streams" must be a whole number"#),
            (#"{"id": 15, "cmd": "migrate", "destination": "h:1", "dirty_source": "disk"}"#, .int(15), #""dirty_source" must be "pv-verified", "kvm", "pv" or "hybrid""#),
            (#"{"id": 16, "cmd": "migrate", "destination": "h:1", "compression": 23}"#, .int(16),
             "migrate: the compression level must be a zstd level 1–22"),
            (#"{"id": 17, "cmd": "migrate", "destination": "h:1", "downtime_ms": "Infinity"}"#, .int(17),
             "migrate: the downtime target must be 1–600000 ms"),
            (#"{"id": 18, "cmd": "migrate", "destination": "h:1", "tls": "/t"}"#, .int(18), #"migrate takes no argument "tls""#),
        ]
        for (line, id, message) in refusals {
            guard case let .refused(refusedID, text) = Self.parse(line) else {
                Issue.record("\(line) was not refused: \(Self.parse(line))")
                continue
            }
            #expect(refusedID == id, "\(line)")
            #expect(text.contains(message), "\(line): \(text)")
        }
    }

    @Test func everyCommandListsItsArgumentsOnce() {
        #expect(ControlRequest.arguments(of: .migrate).sorted() == [
            "adaptive_compression", "bandwidth", "compression", "delta", "destination", "dirty_source", "downtime_ms",
            "insecure", "max_time_s", "peer_name", "streams", "tls_dir",
        ])
        #expect(ControlRequest.arguments(of: .console) == ["follow"])
        #expect(ControlRequest.arguments(of: .recover) == ["force"])
        for command in [ControlRequest.Command.status, .stop, .selfcheck, .cancel] {
            #expect(ControlRequest.arguments(of: command).isEmpty)
        }
    }

    @Test func responsesEncodeToTheGoldenJSONAndBack() throws {
        let golden: [(ControlResponse, String)] = [
            (.ok(id: .int(1), result: [:]), #"{"id":1,"ok":true,"result":{}}"#),
            (.ok(id: .string("a"), result: ["pages": 3, "bad": 0]), #"{"id":"a","ok":true,"result":{"bad":0,"pages":3}}"#),
            (.failed(id: .null, error: "no"), #"{"error":"no","id":null,"ok":false}"#),
            (.event(id: .int(2), .console(text: "hi\n")), #"{"data":{"text":"hi\n"},"event":"console","id":2}"#),
            (.event(id: .int(4), .other(name: "later", data: [1])), #"{"data":[1],"event":"later","id":4}"#),
        ]
        for (response, text) in golden {
            #expect(try Self.json(response) == text)
            #expect(ControlResponse(line: response.line) == response, "\(text)")
            #expect(!response.line.contains(0x0a), "a response spans lines: \(text)")
        }
        // A round event carries RoundStats (protocol.md §4).
        let round = #"{"data":{"bandwidth":0,"deltaPages":0,"dirtyPages":0,"dirtyRate":0,"expectedDowntime":0,"pages":0,"#
            + #""rawPages":0,"round":4,"seconds":0,"throttle":0,"wireBytes":0,"zeroPages":0},"event":"round","id":3}"#
        guard let parsed = ControlResponse(line: Array(round.utf8)), case let .event(.int(3), .round(stats)) = parsed else {
            Issue.record("\(round) is not a round event")
            return
        }
        #expect(stats.round == 4 && stats.pages == 0)
        #expect(try Self.json(parsed) == round)
        // A known event whose data this version cannot read is kept as it came.
        #expect(ControlResponse(line: Array(#"{"id":5,"event":"round","data":{"round":"x"}}"#.utf8))
            == .event(id: .int(5), .other(name: "round", data: ["round": "x"])))
        #expect(ControlResponse(line: Array(#"{"id": 1}"#.utf8)) == nil)
        #expect(ControlResponse(line: Array("[]".utf8)) == nil)
    }
}
