/// When to compress (issue: "backed off when the link is faster than compression"):
/// compression pays while the bytes it saves take longer to cross the link than compressing
/// them takes. Each stream keeps running estimates of its link rate (bytes / send time),
/// zstd's speed and its ratio on this guest's pages; while compression is off, every 16th
/// batch is still compressed to keep the estimates current.
final class CompressionPolicy {
    private let adaptive: Bool
    private let linkCap: Double?      // this stream's share of --bandwidth
    private var linkRate = 0.0        // bytes/s, EWMA over sends
    private var compressRate = 0.0    // plain bytes/s through zstd, EWMA
    private var savedFraction = 0.0   // 1 − payload/plain when compressed, EWMA
    private var batches = 0
    private var on = true

    init(adaptive: Bool, linkCap: Double?) {
        self.adaptive = adaptive
        self.linkCap = linkCap
    }

    func shouldCompress() -> Bool {
        batches += 1
        guard adaptive, linkRate > 0, compressRate > 0 else { return true }
        return on || batches % 16 == 0
    }

    func record(compressed: Bool, plainBytes: Int, payloadBytes: Int, encodeSeconds: Double, sendSeconds: Double) {
        func ewma(_ old: Double, _ new: Double) -> Double { old == 0 ? new : old * 0.7 + new * 0.3 }
        if sendSeconds > 0 { linkRate = ewma(linkRate, Double(payloadBytes) / sendSeconds) }
        if let linkCap { linkRate = min(linkRate == 0 ? linkCap : linkRate, linkCap) } // the limiter's sleeps are link time too
        if compressed, encodeSeconds > 0, plainBytes > 0 {
            compressRate = ewma(compressRate, Double(plainBytes) / encodeSeconds)
            savedFraction = ewma(savedFraction, 1 - Double(payloadBytes) / Double(plainBytes))
        }
        guard linkRate > 0, compressRate > 0 else { return }
        // Per plain byte: compressing costs 1/compressRate seconds and saves savedFraction/linkRate.
        on = savedFraction / linkRate > 1 / compressRate
    }
}
