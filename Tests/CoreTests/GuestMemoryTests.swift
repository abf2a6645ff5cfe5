import Core
import Testing

@Suite struct GuestMemoryTests {
    @Test func accessInsideRAMWorks() throws {
        let m = try GuestMemory(size: 8 << 20)
        try m.writeInteger(UInt64(0x1122_3344_5566_7788), at: GuestPhysicalAddress((8 << 20) - 8))
        #expect(try m.readInteger(UInt64.self, at: GuestPhysicalAddress((8 << 20) - 8)) == 0x1122_3344_5566_7788)
    }

    @Test(arguments: [
        (UInt64(8 << 20) - 7, UInt64(8)),   // straddles the end
        (UInt64(8 << 20), UInt64(1)),       // just past the end
        (UInt64.max - 3, UInt64(8)),        // would wrap around
        (UInt64(0), UInt64.max),            // absurd length
    ])
    func accessOutsideRAMIsRejected(address: UInt64, count: UInt64) throws {
        let m = try GuestMemory(size: 8 << 20)
        #expect(throws: GuestMemoryError.outOfBounds(address: address, length: count)) {
            _ = try m.bytes(at: GuestPhysicalAddress(address), count: count)
        }
    }

    @Test func holeBetween3And4GiBIsNotRAM() throws {
        let m = try GuestMemory(size: (3 << 30) + (2 << 20))
        #expect(m.regions.count == 2)
        #expect(m.regions[1].range.start.raw == 4 << 30)
        #expect(throws: GuestMemoryError.self) { _ = try m.bytes(at: GuestPhysicalAddress((3 << 30) - 4), count: 8) }
        #expect(throws: GuestMemoryError.self) { _ = try m.bytes(at: GuestPhysicalAddress(3 << 30), count: 1) }
        try m.writeInteger(UInt8(7), at: GuestPhysicalAddress((4 << 30) + (2 << 20) - 1))
    }

    @Test(arguments: [UInt64(0), UInt64(1 << 20), UInt64((4 << 20) + 4096)])
    func invalidSizesAreRejected(size: UInt64) {
        #expect(throws: GuestMemoryError.self) { _ = try GuestMemory(size: size) }
    }

    @Test func checkedAddressMath() {
        #expect(GuestPhysicalAddress(UInt64.max).adding(1) == nil)
        #expect(GuestPhysicalAddress(10).offset(from: GuestPhysicalAddress(11)) == nil)
        #expect(PageFrame(UInt64.max).address == nil)
        #expect(GuestPhysicalAddress(0x3000).frame == PageFrame(3))
        #expect(GuestRange(start: GuestPhysicalAddress(UInt64.max), size: 2) == nil)
    }

    @Test func copyContentsRequiresSameLayout() throws {
        let a = try GuestMemory(size: 8 << 20), b = try GuestMemory(size: 8 << 20), c = try GuestMemory(size: 16 << 20)
        try a.write([9, 8, 7], at: GuestPhysicalAddress(0x5000))
        try b.copyContents(from: a)
        #expect(try b.read(at: GuestPhysicalAddress(0x5000), count: 3) == [9, 8, 7])
        #expect(throws: GuestMemoryError.self) { try c.copyContents(from: a) }
    }
}
