import Core
import Testing
import TestSupport

/// The PVH loader on good and malformed ELF files: clear errors, never a crash.
@Suite struct PVHLoaderTests {
    let memory = try! GuestMemory(size: 8 << 20)

    @Test func loadsSegmentsAndWritesStartInfo() throws {
        var elf = TestELF(is64Bit: true)
        elf.loads = [.init(address: 0x20_0000, bytes: [1, 2, 3, 4], memorySize: 0x2000)]
        elf.pvhEntry = 0x20_0000
        try memory.write([UInt8](repeating: 0xee, count: 16), at: GuestPhysicalAddress(0x20_0004))
        let boot = try PVHLoader.load(image: elf.build(), commandLine: "workload=idle", into: memory)
        #expect(boot.entry == 0x20_0000)
        #expect(boot.startInfo == PVHLoader.startInfoAddress)
        #expect(try memory.read(at: GuestPhysicalAddress(0x20_0000), count: 8) == [1, 2, 3, 4, 0, 0, 0, 0])
        #expect(try memory.readInteger(UInt32.self, at: PVHLoader.startInfoAddress) == 0x336e_c578)
        #expect(try memory.readInteger(UInt64.self, at: GuestPhysicalAddress(0x1000 + 24)) == 0x2000)
        #expect(try memory.read(at: PVHLoader.commandLineAddress, count: 14) == Array("workload=idle\0".utf8))
        let entries = try memory.readInteger(UInt32.self, at: GuestPhysicalAddress(0x1000 + 48))
        #expect(entries == 3)
        // Highest RAM entry ends at the memory size.
        let last = PVHLoader.memoryMapAddress.raw + UInt64(entries - 1) * 24
        let start = try memory.readInteger(UInt64.self, at: GuestPhysicalAddress(last))
        let size = try memory.readInteger(UInt64.self, at: GuestPhysicalAddress(last + 8))
        #expect(start + size == 8 << 20)
    }

    @Test func memoryMapSplitsAbove3GiB() throws {
        let big = try GuestMemory(size: 4 << 30)
        let map = PVHLoader.memoryMap(for: big)
        #expect(map.last == .init(address: 4 << 30, size: 1 << 30, type: 1))
        #expect(map.filter { $0.type == 1 }.reduce(0) { $0 + $1.size } == (4 << 30) - 0x60000)
    }

    @Test(arguments: [
        ([UInt8](), BootError.notELF),
        (Array("not an elf at all, really".utf8), .notELF),
    ])
    func rejectsNonELF(bytes: [UInt8], expected: BootError) {
        #expect(throws: expected) { try PVHLoader.load(image: bytes, commandLine: "", into: memory) }
    }

    @Test func rejectsMissingPVHNote() {
        var elf = TestELF()
        elf.loads = [.init(address: 0x10_0000, bytes: [0xf4], memorySize: 1)]
        elf.pvhEntry = nil
        #expect(throws: BootError.noPVHNote) { try PVHLoader.load(image: elf.build(), commandLine: "", into: memory) }
    }

    @Test func rejectsSegmentOutsideMemory() {
        var elf = TestELF()
        elf.loads = [.init(address: 0x7f_f000, bytes: [0xf4], memorySize: 0x2000)] // runs past 8 MiB
        #expect(throws: BootError.segmentOutsideMemory(index: 0, address: 0x7f_f000, size: 0x2000)) {
            try PVHLoader.load(image: elf.build(), commandLine: "", into: memory)
        }
    }

    @Test func rejectsSegmentBelowOneMiB() {
        var elf = TestELF()
        elf.loads = [.init(address: 0x1000, bytes: [0xf4], memorySize: 1)] // would overwrite start info
        #expect(throws: BootError.segmentOutsideMemory(index: 0, address: 0x1000, size: 1)) {
            try PVHLoader.load(image: elf.build(), commandLine: "", into: memory)
        }
    }

    @Test func rejectsWrongMachine() {
        var elf = TestELF()
        elf.machine = 183 // aarch64
        elf.loads = [.init(address: 0x10_0000, bytes: [0], memorySize: 1)]
        #expect(throws: BootError.unsupportedELF("e_machine 183 is not x86 (3) or x86-64 (62)")) {
            try PVHLoader.load(image: elf.build(), commandLine: "", into: memory)
        }
    }

    @Test func rejectsTooLongCommandLine() {
        #expect(throws: BootError.commandLineTooLong(5000)) {
            try PVHLoader.load(image: TestELF.helloGuest(), commandLine: String(repeating: "x", count: 5000), into: memory)
        }
    }

    /// Every truncation of a valid image and every single-byte corruption of its headers is
    /// either loaded or rejected with a BootError: never a crash.
    @Test func truncatedAndCorruptedImagesNeverCrash() {
        let good = TestELF.helloGuest()
        for n in 0..<good.count {
            #expect(throws: BootError.self) { try PVHLoader.load(image: Array(good.prefix(n)), commandLine: "", into: memory) }
        }
        var generator = SystemRandomNumberGenerator()
        for i in 0..<min(good.count, 160) {
            for value: UInt8 in [0x00, 0xff, 0x7f, UInt8.random(in: 0...255, using: &generator)] {
                var bad = good
                bad[i] = value
                do { _ = try PVHLoader.load(image: bad, commandLine: "", into: memory) } catch {}
            }
        }
    }

    @Test func errorsSayWhatToDo() {
        #expect(BootError.noPVHNote.description.contains("CONFIG_PVH"))
        #expect(BootError.segmentOutsideMemory(index: 1, address: 0x100000, size: 10).description.contains("more memory"))
    }
}
