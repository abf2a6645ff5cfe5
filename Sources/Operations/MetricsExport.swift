import Control
import CoreMetrics
import Foundation
import Prometheus

/// The process's metrics backend: swift-prometheus's registry behind swift-metrics, and its
/// text exposition (docs/operations.md "Metrics"). swift-metrics may be bootstrapped once per
/// process: `shared` does it the first time it is used.
public final class MetricsExport: Sendable {
    public static let shared = MetricsExport()

    public let registry = PrometheusCollectorRegistry()

    private init() {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.valueHistogramBuckets = MigrationMetrics.buckets
        MetricsSystem.bootstrap(factory)
    }

    /// The Prometheus text exposition format (version 0.0.4) of everything recorded so far.
    public func exposition() -> [UInt8] {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return Self.withHelp(buffer, MigrationMetrics.help)
    }

    /// `text` with a `# HELP name …` line before each `# TYPE name …` line whose name has a
    /// help text (the format wants HELP first). Help texts are plain one-liners: a backslash or
    /// line feed in one is escaped as the format requires.
    static func withHelp(_ text: [UInt8], _ help: [String: String]) -> [UInt8] {
        var out = ""
        for line in String(decoding: text, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            let fields = line.split(separator: " ")
            if fields.count >= 3, fields[0] == "#", fields[1] == "TYPE", let h = help[String(fields[2])] {
                let escaped = h.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n")
                out += "# HELP \(fields[2]) \(escaped)\n"
            }
            out += line + "\n"
        }
        out.removeLast()  // split gave one more piece than there were line feeds
        return Array(out.utf8)
    }

    /// What `pvmigrate metrics` prints: the outgoing migrations recorded in the runtime
    /// directory (`OutgoingRecord`), counted in this process's registry.
    public func replay(_ records: [MigrationMetrics.Outgoing]) {
        records.forEach(MigrationMetrics.record)
    }
}
