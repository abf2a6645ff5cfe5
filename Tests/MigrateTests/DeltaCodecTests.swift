import Testing

@testable import Migrate
import TestSupport

@Suite("XOR-delta page encoding")
struct DeltaCodecTests {
    static let pageSize = 4096

    @Test("sparse random changes round-trip and shrink", arguments: 0..<20 as Range<UInt64>)
    func sparseRoundTrip(seed: UInt64) throws {
        var generator = SeededGenerator(seed: seed)
        let previous = randomBytes(Self.pageSize, seed: seed &+ 1000)
        var page = previous
        let changes = Int.random(in: 1...64, using: &generator)
        for _ in 0..<changes {
            let offset = Int.random(in: 0..<Self.pageSize, using: &generator)
            page[offset] = UInt8.random(in: 0...255, using: &generator)
        }
        let delta = try #require(DeltaCodec.encode(page: page, previous: previous))
        #expect(delta.count < Self.pageSize)
        #expect(try DeltaCodec.decode(delta, previous: previous) == page)
    }

    @Test("changed words and runs at the page edges round-trip")
    func edgesRoundTrip() throws {
        let previous = [UInt8](repeating: 0x11, count: Self.pageSize)
        var page = previous
        for offset in [0, 1, 2, 3, 8, 9, 100, 101, 102, 103, 104, 105, 106, 2000, 4094, 4095] {
            page[offset] ^= 0xFF
        }
        for offset in 3000..<3300 { page[offset] = UInt8(truncatingIfNeeded: offset) }
        let delta = try #require(DeltaCodec.encode(page: page, previous: previous))
        #expect(try DeltaCodec.decode(delta, previous: previous) == page)
    }

    @Test("an unchanged page encodes as the empty delta")
    func noChange() throws {
        let page = randomBytes(Self.pageSize, seed: 3)
        let delta = try #require(DeltaCodec.encode(page: page, previous: page))
        #expect(delta.isEmpty)
        #expect(try DeltaCodec.decode(delta, previous: page) == page)
    }

    @Test("a fully changed page does not encode")
    func allChanged() {
        let previous = [UInt8](repeating: 0x00, count: Self.pageSize)
        let page = [UInt8](repeating: 0xA5, count: Self.pageSize)
        #expect(DeltaCodec.encode(page: page, previous: previous) == nil)
        let random = randomBytes(Self.pageSize, seed: 9)
        #expect(DeltaCodec.encode(page: random, previous: randomBytes(Self.pageSize, seed: 10)) == nil)
    }

    @Test("a delta exactly as large as the page does not encode")
    func notSmallerIsNil() {
        // 8-byte page, one changed byte in the middle: 3 + 1 + 1 bytes = 5 < 8.
        var page = [UInt8](repeating: 0, count: 8)
        page[4] = 1
        #expect(DeltaCodec.encode(page: page, previous: [UInt8](repeating: 0, count: 8)) == [4, 1, 1])
        // 3-byte page, one changed byte: 0, 1, x = 3 bytes, not smaller.
        #expect(DeltaCodec.encode(page: [1, 0, 0], previous: [0, 0, 0]) == nil)
        #expect(DeltaCodec.encode(page: [], previous: []) == nil)
    }

    @Test("golden bytes: small delta")
    func goldenSmall() throws {
        let previous = [UInt8](repeating: 0, count: 16)
        var page = previous
        page[2] = 0xAA
        page[3] = 0xBB
        page[10] = 0x01
        let delta = DeltaCodec.encode(page: page, previous: previous)
        // skip 2, XOR 2 bytes AA BB; skip 6, XOR 1 byte 01; tail unchanged.
        #expect(delta == [0x02, 0x02, 0xAA, 0xBB, 0x06, 0x01, 0x01])
    }

    @Test("golden bytes: short zero runs stay inside a literal")
    func goldenShortZeroRun() throws {
        let previous = [UInt8](repeating: 0x0F, count: 32)
        var page = previous
        page[0] = 0xF0  // XOR FF
        page[3] = 0x0E  // XOR 01, after a 2-byte zero run (shorter than minimumZeroRun)
        let delta = DeltaCodec.encode(page: page, previous: previous)
        #expect(delta == [0x00, 0x04, 0xFF, 0x00, 0x00, 0x01])
    }

    @Test("golden bytes: multi-byte varint")
    func goldenVarint() throws {
        let previous = [UInt8](repeating: 0, count: Self.pageSize)
        var page = previous
        page[300] = 0xFF
        // 300 = 0b10_0101100 -> AC 02.
        #expect(DeltaCodec.encode(page: page, previous: previous) == [0xAC, 0x02, 0x01, 0xFF])
        #expect(try DeltaCodec.decode([0xAC, 0x02, 0x01, 0xFF], previous: previous) == page)
    }

    /// Expects `delta` to be rejected for a page of `size` bytes, with the
    /// page left untouched.
    func expectRejected(_ delta: [UInt8], size: Int = 16, at offset: Int? = nil,
                        sourceLocation: SourceLocation = #_sourceLocation) {
        let original = randomBytes(size, seed: 77)
        var page = original
        do {
            try delta.withUnsafeBytes { bytes in
                try page.withUnsafeMutableBytes { try DeltaCodec.apply(bytes, to: $0) }
            }
            Issue.record("malformed delta \(delta) was accepted", sourceLocation: sourceLocation)
        } catch let CodecError.deltaMalformed(errorOffset, _) {
            if let offset {
                #expect(errorOffset == offset, sourceLocation: sourceLocation)
            }
        } catch {
            Issue.record("expected deltaMalformed, got \(error)", sourceLocation: sourceLocation)
        }
        #expect(page == original, "a rejected delta must not touch the page", sourceLocation: sourceLocation)
    }

    @Test("malformed deltas are rejected without touching the page")
    func rejectsMalformed() {
        expectRejected([0x80], at: 0)  // varint cut off
        expectRejected([0x02], at: 1)  // literal length missing
        expectRejected([0x00, 0x00], at: 0)  // empty literal
        expectRejected([0x00, 0x05, 1, 2, 3], at: 2)  // literal past the end of the delta
        expectRejected([0x80, 0x00, 0x01, 0xFF], at: 0)  // non-minimal varint
        expectRejected([0x01, 0x01, 0xFF, 0x00, 0x01], at: 5)  // trailing token without its literal
        // A good first token followed by garbage: the page must stay untouched.
        expectRejected([0x00, 0x01, 0xFF, 0x00, 0x03, 0xFF], at: 5)
    }

    @Test("deltas running past the page are rejected")
    func rejectsOverflow() {
        expectRejected([0x11, 0x01, 0xFF], size: 16, at: 0)  // skip 17 of 16
        expectRejected([0x10, 0x01, 0xFF], size: 16, at: 1)  // skip 16, then a literal
        expectRejected([0x0F, 0x02, 0xFF, 0xFF], size: 16, at: 1)  // literal past the page
        expectRejected([0x08, 0x04, 1, 2, 3, 4, 0x04, 0x01, 5], size: 16, at: 7)  // second token past
        // Huge and overlong varints must not overflow.
        expectRejected([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, 0x01, 0x00], at: 0)
        expectRejected([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], at: 0)
        expectRejected([0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F], size: Self.pageSize, at: 1)
    }

    @Test("a literal ending exactly at the page end is accepted")
    func literalToPageEnd() throws {
        let previous = [UInt8](repeating: 0, count: 16)
        let page = try DeltaCodec.decode([0x0E, 0x02, 0x01, 0x02], previous: previous)
        #expect(page[14] == 1 && page[15] == 2)
        #expect(page[..<14].allSatisfy { $0 == 0 })
    }

    /// The encoder as first written (byte at a time, growing an array): the
    /// word-at-a-time encoder must produce exactly its bytes.
    static func referenceEncode(_ page: [UInt8], _ previous: [UInt8]) -> [UInt8]? {
        let count = page.count
        guard count > 0 else { return nil }
        func xor(_ i: Int) -> UInt8 { page[i] ^ previous[i] }
        func varint(_ value: Int, _ out: inout [UInt8]) {
            var rest = UInt(value)
            while rest >= 0x80 { out.append(UInt8(truncatingIfNeeded: rest) | 0x80); rest >>= 7 }
            out.append(UInt8(rest))
        }
        var out: [UInt8] = []
        var cursor = 0
        while cursor < count {
            var start = cursor
            while start < count && xor(start) == 0 { start += 1 }
            if start == count { break }
            var end = start
            while end < count {
                if xor(end) != 0 { end += 1; continue }
                var zeroEnd = end
                while zeroEnd < count && zeroEnd - end < DeltaCodec.minimumZeroRun && xor(zeroEnd) == 0 { zeroEnd += 1 }
                if zeroEnd - end >= DeltaCodec.minimumZeroRun || zeroEnd == count { break }
                end = zeroEnd
            }
            varint(start - cursor, &out)
            varint(end - start, &out)
            for i in start..<end { out.append(xor(i)) }
            if out.count >= count { return nil }
            cursor = end
        }
        return out
    }

    @Test("encoding into a buffer matches the reference encoder and stays inside the buffer",
          arguments: [0, 1, 2, 4, 16, 64, 256, 1024, 1500, 1800, 2000, 2500, 4096])
    func encodeIntoBuffer(changes: Int) throws {
        for seed in 0..<20 as Range<UInt64> {
            var generator = SeededGenerator(seed: seed &+ UInt64(changes) << 8)
            let previous = randomBytes(Self.pageSize, seed: seed)
            var page = previous
            for _ in 0..<changes {
                let offset = Int.random(in: 0..<Self.pageSize, using: &generator)
                let width = Int.random(in: 1...3, using: &generator)
                for i in offset..<min(Self.pageSize, offset + width) { page[i] = UInt8.random(in: 0...255, using: &generator) }
            }
            let expected = Self.referenceEncode(page, previous)
            var output = [UInt8](repeating: 0xCC, count: Self.pageSize - 1 + 64)
            let length = page.withUnsafeBytes { p in
                previous.withUnsafeBytes { q in
                    output.withUnsafeMutableBytes {
                        DeltaCodec.encode(page: p, previous: q,
                                          into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<(Self.pageSize - 1)]))
                    }
                }
            }
            #expect(output[(Self.pageSize - 1)...].allSatisfy { $0 == 0xCC }, "wrote past the buffer")
            #expect(length.map { Array(output[0..<$0]) } == expected)
            #expect(DeltaCodec.encode(page: page, previous: previous) == expected)
            if let delta = expected { #expect(try DeltaCodec.decode(delta, previous: previous) == page) }
        }
    }

    @Test("small pages with random change masks encode exactly as the reference (size boundaries)")
    func smallPagesMatchReference() {
        var generator = SeededGenerator(seed: 2024)
        for _ in 0..<5000 {
            let size = Int.random(in: 1...40, using: &generator)
            let density = Int.random(in: 1...100, using: &generator)
            let previous = (0..<size).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let page = previous.map { byte in
                Int.random(in: 0..<100, using: &generator) < density ? byte ^ UInt8.random(in: 1...255, using: &generator) : byte
            }
            #expect(DeltaCodec.encode(page: page, previous: previous) == Self.referenceEncode(page, previous),
                    "page \(page) previous \(previous)")
        }
    }
}
