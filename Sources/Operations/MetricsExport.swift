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
        return buffer
    }

    /// What `pvmigrate metrics` prints: the outgoing migrations recorded in the runtime
    /// directory (`OutgoingRecord`), counted in this process's registry.
    public func replay(_ records: [MigrationMetrics.Outgoing]) {
        records.forEach(MigrationMetrics.record)
    }
}
