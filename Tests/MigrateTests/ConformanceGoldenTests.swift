import Foundation
import Testing

@testable import Migrate

/// The Swift frame and batch encoders produce, byte for byte, the golden capture that the
/// Python conformance peer also reproduces (Tests/conformance/golden/stream-v2.bin;
/// `sender.py --golden` documents the stream): the control stream of a 1-stream migration of
/// a fixed 4 MiB machine with DELTA granted and ZSTD not (zstd output depends on the library
/// version, so the capture is uncompressed).
@Suite("conformance golden capture (protocol.md §3)")
struct ConformanceGoldenTests {
    static let golden = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../conformance/golden/stream-v2.bin").standardized

    /// Page i < 32 with i % 8 != 0 holds (31 i + 7 j) mod 256 in byte j; the rest are zero.
    static func page(_ i: Int) -> [UInt8] {
        (0..<4096).map { UInt8((31 * i + 7 * $0) & 0xff) }
    }

    @Test("the Swift encoders reproduce golden/stream-v2.bin")
    func swiftEncodersMatchGolden() throws {
        let expected = try [UInt8](Data(contentsOf: Self.golden))
        var out: [UInt8] = []
        var frames: UInt64 = 0
        func put(_ f: Frame) -> Int {
            let b = f.encoded()
            out += b
            frames += 1
            return b.count
        }
        _ = put(.hello(Hello(minVersion: 2, maxVersion: 2, streams: 1, capabilities: [.delta, .pvState], migrationID: Array(0..<16))))
        _ = put(.machine(MachineDescription(memoryBytes: 4 << 20, vcpus: 1, inKernelIRQChip: true,
                                            kernelSHA256: [UInt8](repeating: 0x11, count: 32), name: "golden")))
        let encoder = PageBatchEncoder(maxPages: 16, compressionLevel: nil, deltaCache: DeltaCache(capacityBytes: 1 << 20))
        func round(_ r: UInt32, _ pages: [(Int, [UInt8])]) {
            var bytes = 0
            encoder.begin(round: r)
            for (i, content) in pages {
                _ = content.withUnsafeBytes { encoder.add(pageIndex: UInt64(i), page: $0) }
                if encoder.isFull {
                    let (flags, payload, _) = encoder.finish()
                    bytes += put(.pages(flags: flags, payload: payload))
                    encoder.begin(round: r)
                }
            }
            if encoder.count > 0 {
                let (flags, payload, _) = encoder.finish()
                bytes += put(.pages(flags: flags, payload: payload))
            }
            _ = put(.round(RoundReport(round: r, pages: UInt64(pages.count), bytes: UInt64(bytes))))
        }
        let data = (0..<32).filter { $0 % 8 != 0 }
        // Round 0: wrong copies (first 8 bytes XOR 0xa5) and the zero pages; round 1: the
        // right content (deltas); round 2: three unchanged pages (the no-op delta).
        round(0, (0..<32).map { i in
            guard i % 8 != 0 else { return (i, [UInt8](repeating: 0, count: 4096)) }
            var p = Self.page(i)
            for k in 0..<8 { p[k] ^= 0xa5 }
            return (i, p)
        })
        round(1, data.map { ($0, Self.page($0)) })
        round(2, data.prefix(3).map { ($0, Self.page($0)) })
        _ = put(.streamEnd(frames: frames))
        let state = Array("PVMS".utf8) + [1, 0, 0, 0]
        _ = put(.state(state))
        var digest: UInt64 = 0
        for i in data { digest &+= Self.page(i).withUnsafeBytes { MemoryDigest.mix(pageIndex: UInt64(i), page: $0) } }
        _ = put(.commit(digest: digest, pagesWithData: UInt64(data.count), stateDigest: StateDigest.compute(state)))

        #expect(out.count == expected.count, "\(out.count) bytes encoded, the golden file has \(expected.count)")
        let first = zip(out, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
        #expect(first == nil, "first difference at byte \(first ?? -1)")
    }
}
