@testable import Migrate
import Testing

/// The adaptive compression policy: compress while it saves link time.
@Suite struct CompressionPolicyTests {
    /// Feeds `n` batches of 1 MiB that compress 3× in `encode` seconds and take `send` seconds.
    func run(_ p: CompressionPolicy, _ n: Int, encode: Double, send: Double) -> [Bool] {
        (0..<n).map { _ in
            let c = p.shouldCompress()
            p.record(compressed: c, plainBytes: 1 << 20, payloadBytes: c ? (1 << 20) / 3 : 1 << 20,
                     encodeSeconds: c ? encode : 0.0001, sendSeconds: send * (c ? 1.0 / 3 : 1))
            return c
        }
    }

    @Test func fastLinkTurnsCompressionOffButKeepsProbing() {
        // zstd at 500 MB/s, link at 10 GB/s: saving 2/3 of the bytes is not worth it.
        let p = CompressionPolicy(adaptive: true, linkCap: nil)
        let decisions = run(p, 64, encode: 0.002, send: 0.0001)
        #expect(decisions.suffix(48).filter { $0 }.count == 3, "probes every 16th batch: \(decisions)")
    }

    @Test func slowLinkKeepsCompressing() {
        // zstd at 1 GB/s, link at 100 MB/s.
        let p = CompressionPolicy(adaptive: true, linkCap: nil)
        #expect(run(p, 32, encode: 0.001, send: 0.01).allSatisfy { $0 })
    }

    @Test func bandwidthCapCountsAsTheLink() {
        // The socket takes bytes fast, but the stream's share of the cap is 64 MB/s.
        let p = CompressionPolicy(adaptive: true, linkCap: 64e6)
        #expect(run(p, 32, encode: 0.001, send: 0.0001).allSatisfy { $0 })
    }

    @Test func nonAdaptiveAlwaysCompresses() {
        let p = CompressionPolicy(adaptive: false, linkCap: nil)
        #expect(run(p, 32, encode: 0.01, send: 0.00001).allSatisfy { $0 })
    }
}
