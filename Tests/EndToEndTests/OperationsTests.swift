import Control
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// Issue 16's logs and metrics through the real binary (docs/operations.md): the JSON log
    /// lines of a real `listen` + `send` migration parse and carry the documented keys; the
    /// `listen --metrics` exposition and `pvmigrate metrics` parse with Prometheus's own Python
    /// client parser (prometheus_client, installed by scripts/setup.sh) and their counters move.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct OperationsTests {
        typealias Hosts = ListenSendTests.Hosts

        @Test func jsonLogsAndPrometheusMetricsOfARealMigration() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--log-format", "json", "--metrics", "127.0.0.1:0"])
            let metricsPort = try #require(Self.lines(listener.stdout).first { $0["event"] as? String == "metrics" }
                .flatMap { ($0["address"] as? String)?.split(separator: ":").last.flatMap { UInt16($0) } },
                "listen logged no metrics address: \(listener.text)")
            let url = "http://127.0.0.1:\(metricsPort)"
            try hosts.startVM("vm")

            // Before: the families the listener always knows; no migration counted yet.
            let before = try Self.scrape(url + "/metrics")
            #expect(before.value("pvmigrate_vms_hosted") == 0, "\(before.text)")
            #expect(before.value("pvmigrate_migrations_total", ["direction": "in", "result": "success"]) == nil, "\(before.text)")

            // A plaintext peer at the TLS listener: a failed handshake, counted by reason.
            let plain = try StreamConnector.connect(host: "127.0.0.1", port: port, mode: .insecure)
            try Array("GET / HTTP/1.0\r\n\r\n".utf8).withUnsafeBytes { try plain.writeAll($0) }
            var seen = before
            #expect(try Wait.until { seen = try Self.scrape(url + "/metrics"); return seen.value(Self.handshakeFailures) != nil },
                    "no handshake failure counted: \(seen.text)")
            plain.close()
            #expect(seen.value(Self.handshakeFailures) == 1, "\(seen.text)")

            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src", ["--log-format", "json"])
            #expect(sent.status == 0, "send failed: \(sent.text)")
            #expect(listener.wait(for: #""event":"arrived""#), "no arrival logged: \(listener.text)")

            // Every line the listener wrote is one JSON object with the documented keys.
            let records = Self.lines(listener.stdout)
            #expect(records.count == listener.stdout.split(separator: "\n").count, "lines that are not JSON: \(listener.stdout)")
            for r in records {
                #expect(["level", "logger", "message", "time"].allSatisfy { r[$0] is String }, "missing keys: \(r)")
            }
            let arrived = try #require(records.first { $0["event"] as? String == "arrived" })
            #expect(arrived["logger"] as? String == "migrate.receiver" && arrived["vm"] as? String == "vm", "\(arrived)")
            #expect((arrived["peer"] as? String)?.hasPrefix("127.0.0.1:") == true, "\(arrived)")
            #expect((arrived["migration_id"] as? String)?.count == 32, "\(arrived)")
            #expect(arrived["memory_bytes"] as? Int == 128 << 20, "a number, not a string: \(arrived)")

            // After: the counters moved, the gauges say what runs here.
            let after = try Self.scrape(url + "/metrics")
            #expect(after.value("pvmigrate_migrations_total", ["direction": "in", "result": "success"]) == 1, "\(after.text)")
            #expect(after.value("pvmigrate_migration_memory_bytes_total", ["direction": "in"]) == Double(128 << 20), "\(after.text)")
            #expect((after.value("pvmigrate_migration_pages_total", ["direction": "in", "encoding": "any"]) ?? 0) > 0)
            #expect(after.value("pvmigrate_migration_total_seconds_count", ["direction": "in"]) == 1, "\(after.text)")
            #expect(after.value("pvmigrate_vms_hosted") == 1, "\(after.text)")
            #expect(after.value("pvmigrate_migrations_active", ["direction": "in"]) == 0, "\(after.text)")
            #expect(try Self.scrape(url + "/other").status == 404)

            // The source host, without a daemon: what the VM's process recorded.
            let dump = try hosts.run("src", ["metrics"])
            #expect(dump.status == 0, "\(dump.text)")
            let source = try Self.parse(Data(dump.stdout.utf8))
            #expect(source.value("pvmigrate_migrations_total", ["direction": "out", "result": "success"]) == 1, "\(dump.stdout)")
            #expect((source.value("pvmigrate_migration_wire_bytes_total", ["direction": "out"]) ?? 0) > 0, "\(dump.stdout)")
            #expect(source.value("pvmigrate_migration_downtime_seconds_count", ["direction": "out"]) == 1, "\(dump.stdout)")
            #expect(source.value("pvmigrate_vms_hosted") == 0, "the VM left the source: \(dump.stdout)")
            #expect(listener.terminate() == 0, "\(listener.text)")
        }

        static let handshakeFailures = ("pvmigrate_tls_handshake_failures_total", ["reason": "not_tls"])

        /// The listener's standard output, one JSON object per line (lines that are not JSON left out).
        static func lines(_ text: String) -> [[String: Any]] {
            text.split(separator: "\n").compactMap {
                try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
            }
        }

        /// Samples of one exposition, as prometheus_client's text parser read them.
        struct Exposition {
            var status = 200
            var samples: [(name: String, labels: [String: String], value: Double)] = []
            var text = ""

            func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
                samples.first { $0.name == name && $0.labels == labels }?.value
            }

            func value(_ series: (String, [String: String])) -> Double? { value(series.0, series.1) }
        }

        /// GET `url` and parse the body with prometheus_client (both in Python: urllib and
        /// `text_string_to_metric_families`); the HTTP status of a non-200 answer is kept.
        static func scrape(_ url: String) throws -> Exposition {
            try python(Self.parser, arguments: [url], input: Data())
        }

        static func parse(_ exposition: Data) throws -> Exposition { try python(Self.parser, arguments: ["-"], input: exposition) }

        static let parser = """
            import json, sys, urllib.request, urllib.error
            from prometheus_client.parser import text_string_to_metric_families
            src = sys.argv[1]
            try:
                text = sys.stdin.read() if src == "-" else urllib.request.urlopen(src, timeout=30).read().decode()
            except urllib.error.HTTPError as e:
                print(json.dumps({"status": e.code, "samples": [], "text": ""})); sys.exit(0)
            samples = [[s.name, s.labels, s.value] for f in text_string_to_metric_families(text) for s in f.samples]
            print(json.dumps({"status": 200, "samples": samples, "text": text}))
            """

        static func python(_ script: String, arguments: [String], input: Data) throws -> Exposition {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            p.arguments = ["python3", "-c", script] + arguments
            let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
            (p.standardInput, p.standardOutput, p.standardError) = (stdin, stdout, stderr)
            try p.run()
            stdin.fileHandleForWriting.write(input)
            try stdin.fileHandleForWriting.close()
            let out = stdout.fileHandleForReading.readDataToEndOfFile()
            let err = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            #expect(!err.contains("No module named 'prometheus_client'"),
                    "the metrics test needs Prometheus's Python client: run scripts/setup.sh (python3 -m pip install prometheus_client)")
            guard p.terminationStatus == 0,
                  let object = try JSONSerialization.jsonObject(with: out) as? [String: Any] else {
                throw CocoaError(.fileReadCorruptFile, userInfo: [NSLocalizedDescriptionKey:
                    "prometheus_client could not read the exposition (status \(p.terminationStatus)): \(err)"])
            }
            var e = Exposition(status: object["status"] as? Int ?? 0, text: object["text"] as? String ?? "")
            for case let s as [Any] in object["samples"] as? [Any] ?? [] where s.count == 3 {
                e.samples.append((s[0] as? String ?? "", s[1] as? [String: String] ?? [:], (s[2] as? NSNumber)?.doubleValue ?? .nan))
            }
            return e
        }
    }
}
