import Core
import Foundation
import Testing

@testable import Migrate

/// A source uses exactly the capabilities HELLO_ACK granted; a destination rejects a batch
/// that uses one it did not grant (protocol.md §3.2, §3.3).
@Suite("granted capabilities (protocol.md §3.2)")
struct CapabilityTests {
    static let combinations: [Capabilities] = [[], [.zstd], [.delta], [.zstd, .delta],
                                               [.pvState], [.zstd, .pvState], [.delta, .pvState], .all]

    @Test("the options a sender uses keep only the granted encodings", arguments: combinations)
    func restrictedOptions(granted: Capabilities) {
        let all = MigrationOptions().restricted(to: granted)
        #expect((all.compressionLevel != nil) == granted.contains(.zstd))
        #expect(all.delta == granted.contains(.delta))
        // Granting never turns on what the user switched off.
        var off = MigrationOptions()
        off.compressionLevel = nil
        off.delta = false
        let still = off.restricted(to: granted)
        #expect(still.compressionLevel == nil && !still.delta)
    }

    /// Pages that compress and change between rounds: what would tempt an encoder to use
    /// zstd and deltas if it had them.
    func encodeTwoRounds(_ options: MigrationOptions) -> (flags: Set<UInt16>, deltas: Int) {
        let encoder = PageBatchEncoder(maxPages: 64, compressionLevel: options.compressionLevel,
                                       deltaCache: options.delta ? DeltaCache(capacityBytes: 1 << 20) : nil)
        var flags = Set<UInt16>(), deltas = 0
        for round in 0..<2 {
            encoder.begin(round: UInt32(round))
            for i in 0..<64 {
                var page = [UInt8](repeating: UInt8(i), count: 4096)
                page[8] = UInt8(round)
                _ = page.withUnsafeBytes { encoder.add(pageIndex: UInt64(i), page: $0) }
            }
            let (f, _, stats) = encoder.finish()
            flags.insert(f)
            deltas += stats.delta
        }
        return (flags, deltas)
    }

    @Test("encoders built from the restricted options use no zstd or delta that was not granted",
          arguments: combinations)
    func encoderHonoursGrant(granted: Capabilities) {
        let (flags, deltas) = encodeTwoRounds(MigrationOptions().restricted(to: granted))
        #expect(flags == (granted.contains(.zstd) ? [FrameHeader.flagZstd] : [0]))
        #expect((deltas > 0) == granted.contains(.delta), "\(deltas) deltas with \(granted)")
    }

    @Test("a destination that did not grant DELTA rejects a DELTA entry, memory untouched")
    func decoderRejectsUngrantedDelta() throws {
        let tests = PageBatchTests()
        let (memory, batch) = try tests.victim()
        let before = tests.snapshot(memory)
        #expect(throws: CodecError.self) {
            _ = try PageBatchDecoder(allowDelta: false).apply(flags: 0, payload: batch.bytes, to: memory, expectedRound: nil)
        }
        #expect(tests.snapshot(memory) == before)
        // Without the DELTA entry the same batch is fine.
        var plain = batch
        plain.entries.removeLast()
        let stats = try PageBatchDecoder(allowZstd: false, allowDelta: false)
            .apply(flags: 0, payload: plain.bytes, to: memory, expectedRound: nil)
        #expect(stats.pages == 2)
    }

    @Test("a destination that did not grant ZSTD rejects a compressed batch, memory untouched")
    func decoderRejectsUngrantedZstd() throws {
        let encoder = PageBatchEncoder(maxPages: 4, compressionLevel: 1, deltaCache: nil)
        encoder.begin(round: 0)
        let page = [UInt8](repeating: 0x5a, count: 4096)
        _ = page.withUnsafeBytes { encoder.add(pageIndex: 7, page: $0) }
        let (flags, payload, _) = encoder.finish()
        #expect(flags == FrameHeader.flagZstd)
        let memory = try GuestMemory(size: 8 << 20)
        #expect(throws: CodecError.self) {
            _ = try PageBatchDecoder(allowZstd: false).apply(flags: flags, payload: payload, to: memory, expectedRound: nil)
        }
        #expect(pageBytes(memory, 7).allSatisfy { $0 == 0 })
        _ = try PageBatchDecoder().apply(flags: flags, payload: payload, to: memory, expectedRound: nil)
        #expect(pageBytes(memory, 7) == page)
    }
}
