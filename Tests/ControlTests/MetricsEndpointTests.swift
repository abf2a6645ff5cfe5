@testable import Control
import Foundation
import Migrate
@testable import Operations
import Prometheus
import Testing

/// The /metrics responder over real loopback sockets, and the bounded metric labels.
@Suite struct MetricsEndpointTests {
    /// Sends `request` and reads the answer until the server closes.
    func exchange(_ port: UInt16, _ request: String) throws -> String {
        let stream = try StreamConnector.connect(host: "127.0.0.1", port: port, mode: .insecure)
        defer { stream.close() }
        stream.setTimeout(seconds: 30)
        try Array(request.utf8).withUnsafeBytes { try stream.writeAll($0) }
        var answer: [UInt8] = [], byte: UInt8 = 0
        while (try? withUnsafeMutableBytes(of: &byte) { try stream.readExactly($0) }) != nil { answer.append(byte) }
        return String(decoding: answer, as: UTF8.self)
    }

    @Test func getMetricsAnswersTheBodyAndEverythingElseIsRefused() throws {
        let endpoint = try MetricsEndpoint(host: "127.0.0.1", port: 0) { Array("# TYPE x counter\nx 1\n".utf8) }
        defer { endpoint.close() }
        let ok = try exchange(endpoint.port, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n") && ok.contains("Content-Length: 21\r\n") && ok.hasSuffix("\r\n\r\n# TYPE x counter\nx 1\n"), "\(ok)")
        #expect(ok.contains("text/plain; version=0.0.4"), "\(ok)")
        #expect(try exchange(endpoint.port, "GET /metrics?name=x HTTP/1.0\r\n\r\n").hasPrefix("HTTP/1.1 200 "))
        #expect(try exchange(endpoint.port, "GET / HTTP/1.1\r\n\r\n").hasPrefix("HTTP/1.1 404 "))
        let post = try exchange(endpoint.port, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        #expect(post.hasPrefix("HTTP/1.1 405 ") && post.contains("Allow: GET\r\n"), "\(post)")
        #expect(try exchange(endpoint.port, "hello\r\n\r\n").hasPrefix("HTTP/1.1 400 "))
        let huge = "GET /metrics HTTP/1.1\r\nX: " + String(repeating: "a", count: MetricsEndpoint.maximumRequestBytes) + "\r\n\r\n"
        #expect(try exchange(endpoint.port, huge).hasPrefix("HTTP/1.1 431 "))
    }

    @Test func handshakeFailuresAndRefusalsGetBoundedReasons() {
        typealias M = MigrationMetrics
        #expect(M.handshakeFailureReason(.handshakeFailed(peer: "p", reason: "wrong version number")) == "not_tls")
        #expect(M.handshakeFailureReason(.handshakeFailed(peer: "p", reason: "certificate verify failed")) == "bad_certificate")
        #expect(M.handshakeFailureReason(.handshakeFailed(peer: "p", reason: "something new")) == "other")
        #expect(M.handshakeFailureReason(.peerNameMismatch(peer: "p", expected: ["a"], presented: "b", peerIsSource: true))
            == "name_not_allowed")
        #expect(M.handshakeFailureReason(.timeout) == "timeout")
        #expect(M.handshakeFailureReason(.refused(peer: "p", reason: "r")) == nil, "a limit, counted as a refusal")
        #expect(M.refusalReason("migration from p refused: 2 migrations are already arriving at this host (its limit, `listen --max-incoming 2`)") == "max_incoming")
        #expect(M.refusalReason("migration from p refused: the VM has 128 MiB, more than this host accepts in total (`listen --max-memory` 64 MiB)") == "max_memory")
        #expect(M.refusalReason("migration from p dropped: no progress") == "no_progress")
    }

    @Test func everyMetricHasAHelpLineBeforeItsTypeLine() {
        typealias M = MigrationMetrics
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)  // the production path: no help
        factory.valueHistogramBuckets = M.buckets
        factory.makeCounter(label: M.migrations, dimensions: [("direction", "out"), ("result", "success")]).increment(by: 1)
        factory.makeMeter(label: M.hosted, dimensions: []).set(2.0)
        factory.makeRecorder(label: M.downtime, dimensions: [("direction", "out")], aggregate: true).record(0.004)
        var raw: [UInt8] = []
        registry.emit(into: &raw)
        let text = String(decoding: MetricsExport.withHelp(raw, M.help), as: UTF8.self)
        let lines = text.split(separator: "\n").map(String.init)
        for name in [M.migrations, M.hosted, M.downtime] {
            let type = lines.firstIndex { $0.hasPrefix("# TYPE \(name) ") }
            #expect(type != nil && type! > 0 && lines[type! - 1] == "# HELP \(name) \(M.help[name]!)", "\(text)")
        }
        #expect(text.filter { $0 == "\n" }.count == String(decoding: raw, as: UTF8.self).filter { $0 == "\n" }.count + 3,
                "one line added per metric, nothing else changed: \(text)")
        #expect(M.help.count == 11 && M.help.values.allSatisfy { !$0.isEmpty && !$0.contains("\n") })
        let odd = String(decoding: MetricsExport.withHelp(Array("# TYPE x counter\nx 1\n".utf8), ["x": "a\\b\nc"]), as: UTF8.self)
        #expect(odd == "# HELP x a\\\\b\\nc\n# TYPE x counter\nx 1\n", "\(odd)")
        #expect(MetricsExport.withHelp([], M.help).isEmpty)
    }
}
