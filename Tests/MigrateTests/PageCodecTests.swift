import Testing

@testable import Migrate
import TestSupport

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var generator = SeededGenerator(seed: seed)
    return (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
}

/// Page-like data that compresses well: repeated stamps with a counter.
func compressibleBytes(_ count: Int) -> [UInt8] {
    (0..<count).map { index in index % 64 < 8 ? UInt8(truncatingIfNeeded: index / 64) : 0x5A }
}

@Suite("zstd page compression")
struct ZstdTests {
    @Test("compressible data round-trips and shrinks")
    func roundTripCompressible() throws {
        let input = compressibleBytes(64 * 4096)
        let frame = try ZstdCompressor().compress(input)
        #expect(frame.count < input.count / 10)
        let output = try ZstdDecompressor().decompress(frame, maxOutputSize: input.count)
        #expect(output == input)
    }

    @Test("incompressible data round-trips", arguments: [1, 3 /* fast */, 19])
    func roundTripIncompressible(level: Int) throws {
        let input = randomBytes(16 * 4096, seed: 42)
        let frame = try ZstdCompressor(level: level).compress(input)
        #expect(frame.count <= ZstdCompressor.maximumCompressedSize(inputBytes: input.count))
        let output = try ZstdDecompressor().decompress(frame, maxOutputSize: input.count)
        #expect(output == input)
    }

    @Test("empty input round-trips")
    func roundTripEmpty() throws {
        let frame = try ZstdCompressor().compress([UInt8]())
        #expect(try ZstdDecompressor().decompress(frame, maxOutputSize: 0) == [])
    }

    @Test("contexts are reusable across many batches")
    func contextsAreReusable() throws {
        let compressor = try ZstdCompressor(level: 1)
        let decompressor = try ZstdDecompressor()
        for seed in 0..<8 as Range<UInt64> {
            let input = randomBytes(4096, seed: seed) + compressibleBytes(8192)
            let frame = try compressor.compress(input)
            #expect(try decompressor.decompress(frame, maxOutputSize: input.count) == input)
        }
        // A failed decode must not poison the context.
        #expect(throws: CodecError.self) {
            try decompressor.decompress([0x28, 0xB5, 0x2F, 0xFD], maxOutputSize: 10)
        }
        let input = compressibleBytes(4096)
        #expect(try decompressor.decompress(compressor.compress(input), maxOutputSize: 4096) == input)
    }

    @Test("decompressing into a caller's buffer writes exactly the declared bytes")
    func decompressIntoBuffer() throws {
        let input = compressibleBytes(4096)
        let frame = try ZstdCompressor().compress(input)
        var output = [UInt8](repeating: 0xEE, count: 8192)
        let written = try frame.withUnsafeBytes { source in
            try output.withUnsafeMutableBytes { try ZstdDecompressor().decompress(source, into: $0) }
        }
        #expect(written == 4096)
        #expect(Array(output[..<4096]) == input)
        #expect(output[4096...].allSatisfy { $0 == 0xEE })
    }

    @Test("an unsupported compression level is rejected")
    func invalidLevel() {
        #expect(throws: CodecError.compressionLevelInvalid(level: 1000, supported: ZstdCompressor.supportedLevels)) {
            try ZstdCompressor(level: 1000)
        }
    }

    @Test("corrupted frames are rejected")
    func rejectsCorruption() throws {
        let input = compressibleBytes(32 * 1024) + randomBytes(32 * 1024, seed: 7)
        let frame = try ZstdCompressor().compress(input)
        let decompressor = try ZstdDecompressor()
        // Flip one byte at a time at several places past the header.
        for position in stride(from: 8, to: frame.count, by: max(1, frame.count / 37)) {
            var corrupted = frame
            corrupted[position] ^= 0x41
            #expect(throws: CodecError.self, "byte \(position) flipped") {
                try decompressor.decompress(corrupted, maxOutputSize: input.count)
            }
        }
        // The checksum alone catches a flipped bit in the last byte of data.
        var badChecksum = frame
        badChecksum[frame.count - 1] ^= 0x01
        #expect(throws: CodecError.self) {
            try decompressor.decompress(badChecksum, maxOutputSize: input.count)
        }
    }

    @Test("input that is not a zstd frame is rejected")
    func rejectsNonFrames() throws {
        let decompressor = try ZstdDecompressor()
        #expect(throws: CodecError.decompressNotAFrame(inputBytes: 4096)) {
            try decompressor.decompress(randomBytes(4096, seed: 1), maxOutputSize: 1 << 20)
        }
        // A skippable frame (magic 0x184D2A50) declares no content: rejected too.
        let skippable: [UInt8] = [0x50, 0x2A, 0x4D, 0x18, 4, 0, 0, 0, 1, 2, 3, 4]
        #expect(throws: CodecError.decompressNotAFrame(inputBytes: skippable.count)) {
            try decompressor.decompress(skippable, maxOutputSize: 1 << 20)
        }
    }

    @Test("truncated frames are rejected at every length")
    func rejectsTruncation() throws {
        let input = compressibleBytes(16 * 1024)
        let frame = try ZstdCompressor().compress(input)
        let decompressor = try ZstdDecompressor()
        for length in 0..<frame.count {
            let truncated = Array(frame[..<length])
            do {
                _ = try decompressor.decompress(truncated, maxOutputSize: input.count)
                Issue.record("a frame cut to \(length) of \(frame.count) bytes was accepted")
            } catch let error as CodecError {
                guard case .decompressTruncated = error else {
                    Issue.record("cut to \(length) bytes: expected decompressTruncated, got \(error)")
                    continue
                }
            }
        }
    }

    @Test("trailing bytes after the frame are rejected")
    func rejectsTrailingBytes() throws {
        let frame = try ZstdCompressor().compress(compressibleBytes(4096))
        #expect(throws: CodecError.decompressTrailingBytes(frameBytes: frame.count, inputBytes: frame.count + 1)) {
            try ZstdDecompressor().decompress(frame + [0], maxOutputSize: 4096)
        }
        #expect(throws: CodecError.self) {
            try ZstdDecompressor().decompress(frame + frame, maxOutputSize: 8192)
        }
    }

    @Test("a frame declaring more than the bound is rejected before decoding")
    func rejectsOversizedDeclaration() throws {
        let input = compressibleBytes(64 * 1024)
        var frame = try ZstdCompressor().compress(input)
        #expect(throws: CodecError.decompressSizeExceedsBound(declared: 65536, bound: 65535)) {
            try ZstdDecompressor().decompress(frame, maxOutputSize: 65535)
        }
        var small = [UInt8](repeating: 0, count: 4096)
        #expect(throws: CodecError.decompressSizeExceedsBound(declared: 65536, bound: 4096)) {
            try frame.withUnsafeBytes { source in
                try small.withUnsafeMutableBytes { try ZstdDecompressor().decompress(source, into: $0) }
            }
        }
        #expect(small.allSatisfy { $0 == 0 }, "nothing may be written when the bound is exceeded")

        // A hostile header: keep the frame, claim 2^40 bytes of content.
        // Frame header descriptor 0xC4 = 8-byte content size + checksum.
        let hostile: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xC4, 0x58]
            + [0, 0, 0, 0, 0, 1, 0, 0]  // 2^40, little endian
            + [0x01, 0x00, 0x00]  // last block, raw, 0 bytes
            + [0, 0, 0, 0]  // checksum
        #expect(throws: CodecError.decompressSizeExceedsBound(declared: 1 << 40, bound: 1 << 20)) {
            try ZstdDecompressor().decompress(hostile, maxOutputSize: 1 << 20)
        }
        frame[4] = 0  // leave the header valid but without content size or checksum
        #expect(throws: CodecError.self) {
            try ZstdDecompressor().decompress(frame, maxOutputSize: 1 << 20)
        }
    }

    @Test("frames without a declared size or without a checksum are rejected")
    func rejectsMissingFields() throws {
        // Hand-built frames holding one empty raw block (0x01 0x00 0x00).
        // FHD 0x00: no content size, no checksum, window descriptor 0x58.
        let noSize: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0x00, 0x58, 0x01, 0x00, 0x00]
        #expect(throws: CodecError.decompressMissingContentSize) {
            try ZstdDecompressor().decompress(noSize, maxOutputSize: 4096)
        }
        // FHD 0x20: single segment, 1-byte content size (0), no checksum.
        let noChecksum: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0x20, 0x00, 0x01, 0x00, 0x00]
        #expect(throws: CodecError.decompressMissingChecksum) {
            try ZstdDecompressor().decompress(noChecksum, maxOutputSize: 4096)
        }
    }

    @Test("a frame whose data disagrees with its declared size is rejected")
    func rejectsSizeDisagreement() throws {
        // Single segment, 1-byte content size 5, but one raw block of 3 bytes.
        let frame: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0x24, 0x05]
            + [0x19, 0x00, 0x00, 0x61, 0x62, 0x63]  // last, raw, 3 bytes "abc"
            + [0, 0, 0, 0]
        #expect(throws: CodecError.self) {
            try ZstdDecompressor().decompress(frame, maxOutputSize: 4096)
        }
    }

    @Test("error messages say what failed and what to do")
    func errorMessages() {
        let message = CodecError.decompressSizeExceedsBound(declared: 1 << 40, bound: 4096).description
        #expect(message.contains("1099511627776"))
        #expect(message.contains("4096"))
    }
}

@Suite("zero-page classification")
struct PageKindTests {
    @Test("an all-zero page is .zero")
    func zeroPage() {
        #expect(PageKind.classify([UInt8](repeating: 0, count: 4096)) == .zero)
        #expect(PageKind.classify([UInt8]()) == .zero)
        #expect(PageKind.classify([UInt8](repeating: 0, count: 13)) == .zero)
    }

    @Test("one non-zero byte anywhere makes a page .data", arguments: [0, 1, 7, 8, 2047, 4088, 4095])
    func oneByteSet(at offset: Int) {
        var page = [UInt8](repeating: 0, count: 4096)
        page[offset] = 0x80
        #expect(PageKind.classify(page) == .data)
    }

    @Test("odd-sized buffers check their tail bytes", arguments: 1...17)
    func tailBytes(count: Int) {
        var page = [UInt8](repeating: 0, count: count)
        #expect(PageKind.classify(page) == .zero)
        page[count - 1] = 1
        #expect(PageKind.classify(page) == .data)
    }

    @Test("unaligned views are classified correctly")
    func unalignedView() {
        var buffer = [UInt8](repeating: 0, count: 4096 + 3)
        buffer[4096 + 2] = 9
        buffer.withUnsafeBytes { bytes in
            #expect(PageKind.classify(UnsafeRawBufferPointer(rebasing: bytes[3...])) == .data)
            #expect(PageKind.classify(UnsafeRawBufferPointer(rebasing: bytes[1..<4097])) == .zero)
        }
    }
}
