import Core
import Testing

/// The one byte reader/writer of pvmigrate's decoders and encoders (Sources/Core/Codec).
@Suite("ByteReader / ByteWriter")
struct ByteCodecTests {
    @Test("reads are little-endian and return nil, without moving, past the end")
    func readerStopsAtTheEnd() {
        var r = ByteReader([UInt8]([0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07]))
        #expect(r.u16() == 0x0201)
        #expect(r.u32() == 0x0605_0403)
        #expect(r.u16() == nil, "a 2-byte read with 1 byte left")
        #expect(r.offset == 6 && r.remaining == 1)
        #expect(r.u8() == 0x07 && r.isAtEnd)
        #expect(r.u8() == nil && r.bytes(1) == nil && !r.skip(1))
        #expect(r.bytes(0) == [])
    }

    @Test("reads at an offset check the whole field, also for hostile offsets")
    func readerAtOffset() {
        let r = ByteReader([UInt8](0..<16))
        #expect(r.integer(at: 8, as: UInt64.self) == 0x0f0e_0d0c_0b0a_0908)
        #expect(r.integer(at: 9, as: UInt64.self) == nil)
        #expect(r.integer(at: -1, as: UInt8.self) == nil)
        #expect(r.integer(at: Int.max, as: UInt32.self) == nil)
        #expect(r.bytes(at: 14, count: 2) == [14, 15])
        #expect(r.bytes(at: 14, count: 3) == nil && r.bytes(at: 0, count: -1) == nil)
    }

    @Test("a slice and a raw buffer read like an array")
    func readerOverOtherStorage() {
        let bytes: [UInt8] = [9, 9, 0x34, 0x12]
        var slice = ByteReader(bytes[2...])
        #expect(slice.u16() == 0x1234 && slice.isAtEnd)
        bytes.withUnsafeBytes { raw in
            var r = ByteReader(raw)
            #expect(r.skip(2) && r.u16() == 0x1234)
        }
    }

    @Test("the writer appends little-endian and patches in place")
    func writer() {
        var w = ByteWriter()
        w.u8(1); w.u16(0x0302); w.u32(0x0706_0504); w.u64(0x0f0e_0d0c_0b0a_0908); w.raw([0x10])
        #expect(w.bytes == [UInt8](1...16))
        w.set(UInt16(0xbbaa), at: 1)
        #expect(Array(w.bytes.prefix(4)) == [1, 0xaa, 0xbb, 4])
        var fixed = ByteWriter(zeros: 8)
        fixed.set(UInt32(0x1122_3344), at: 4)
        #expect(fixed.bytes == [0, 0, 0, 0, 0x44, 0x33, 0x22, 0x11])
    }
}
