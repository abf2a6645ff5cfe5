import Core

/// When to compress (issue: "backed off when the link is faster than compression"):
/// compression pays while the bytes it saves take longer to cross the link than compressing
/// them takes. Each stream keeps running estimates of its link rate (bytes / send time),
/// zstd's speed and its ratio on this guest's pages; while compression is off, every 16th
/// batch is still compressed to keep the estimates current.
///
/// Thread-safe: a pipelined stream asks on its encode stage and records on its send stage
/// (`SendPipeline`); one lock orders the two.
final class CompressionPolicy: Sendable {
    private struct Estimates {
        var linkRate = 0.0        // bytes/s, EWMA over sends
        var compressRate = 0.0    // plain bytes/s through zstd, EWMA
        var savedFraction = 0.0   // 1 − payload/plain when compressed, EWMA
        var batches = 0
        var on = true
    }
    private let adaptive: Bool
    private let linkCap: Double?      // this stream's share of --bandwidth
    private let estimates = Locked(Estimates())

    init(adaptive: Bool, linkCap: Double?) {
        self.adaptive = adaptive
        self.linkCap = linkCap
    }

    func shouldCompress() -> Bool {
        estimates.withLock { e in
            e.batches += 1
            guard adaptive, e.linkRate > 0, e.compressRate > 0 else { return true }
            return e.on || e.batches % 16 == 0
        }
    }

    func record(compressed: Bool, plainBytes: Int, payloadBytes: Int, encodeSeconds: Double, sendSeconds: Double) {
        estimates.withLock { e in
            Self.update(&e, linkCap: linkCap, compressed: compressed, plainBytes: plainBytes, payloadBytes: payloadBytes,
                        encodeSeconds: encodeSeconds, sendSeconds: sendSeconds)
        }
    }

    private static func update(_ e: inout Estimates, linkCap: Double?, compressed: Bool, plainBytes: Int, payloadBytes: Int,
                               encodeSeconds: Double, sendSeconds: Double) {
        func ewma(_ old: Double, _ new: Double) -> Double { old == 0 ? new : old * 0.7 + new * 0.3 }
        if sendSeconds > 0 { e.linkRate = ewma(e.linkRate, Double(payloadBytes) / sendSeconds) }
        if let linkCap { e.linkRate = min(e.linkRate == 0 ? linkCap : e.linkRate, linkCap) } // the limiter's sleeps are link time too
        if compressed, encodeSeconds > 0, plainBytes > 0 {
            e.compressRate = ewma(e.compressRate, Double(plainBytes) / encodeSeconds)
            e.savedFraction = ewma(e.savedFraction, 1 - Double(payloadBytes) / Double(plainBytes))
        }
        guard e.linkRate > 0, e.compressRate > 0 else { return }
        // Per plain byte: compressing costs 1/compressRate seconds and saves savedFraction/linkRate.
        e.on = e.savedFraction / e.linkRate > 1 / e.compressRate
    }
}
