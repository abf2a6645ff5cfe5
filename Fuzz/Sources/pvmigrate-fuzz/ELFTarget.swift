import Core
import TestSupport

/// A kernel image (protocol.md §1.1) through `ELFImage` and `PVHLoader.load` into real (mmapped,
/// no KVM needed) guest memory of 16 MiB.
enum ELFTarget: FuzzTarget {
    static let name = "elf"
    static let invariant = """
        every PT_LOAD segment ELFImage returns lies inside the file with memory size ≥ file size; a \
        successful load put each segment (not overwritten by a later one) at its address at or above \
        1 MiB inside RAM, its file bytes followed by zeros, and wrote the start info with its magic
        """

    nonisolated(unsafe) static let memory: GuestMemory = {
        do { return try GuestMemory(size: 16 << 20) } catch { fatalError("\(error)") }
    }()

    static func run(_ input: [UInt8]) {
        guard let elf = try? ELFImage(input) else { return }
        for s in elf.loadSegments {
            check(s.fileOffset <= UInt64(input.count) && s.fileSize <= UInt64(input.count) - s.fileOffset,
                  "segment \(s) runs past the \(input.count)-byte file")
            check(s.memorySize >= s.fileSize, "segment \(s) has less memory than file bytes")
        }
        guard let boot = try? PVHLoader.load(image: input, commandLine: "console=ttyS0", into: memory) else { return }
        check(elf.pvhEntry == boot.entry, "booted at \(boot.entry), the note says \(String(describing: elf.pvhEntry))")
        for (i, s) in elf.loadSegments.enumerated() {
            check(s.physicalAddress >= PVHLoader.kernelFloor, "segment \(i) loaded below 1 MiB")
            let overwritten = elf.loadSegments[(i + 1)...].contains {
                $0.physicalAddress < s.physicalAddress &+ s.memorySize && s.physicalAddress < $0.physicalAddress &+ $0.memorySize
            }
            guard !overwritten, s.memorySize <= 1 << 24 else { continue }
            let loaded = try? memory.read(at: GuestPhysicalAddress(s.physicalAddress), count: s.memorySize)
            check(loaded != nil, "segment \(i) was loaded outside RAM")
            let file = input[Int(s.fileOffset)..<Int(s.fileOffset + s.fileSize)]
            check(loaded?.prefix(Int(s.fileSize)).elementsEqual(file) ?? false, "segment \(i) bytes differ from the file")
            check(loaded?.dropFirst(Int(s.fileSize)).allSatisfy { $0 == 0 } ?? false, "segment \(i) tail is not zero")
        }
        check((try? memory.readInteger(UInt32.self, at: PVHLoader.startInfoAddress)) == 0x336e_c578, "no start info magic")
    }

    static func seeds() -> [[UInt8]] {
        var elf64 = TestELF(is64Bit: true)
        elf64.loads = [TestELF.Load(address: 0x10_0000, bytes: [0xf4, 0x90, 0x90], memorySize: 0x3000),
                       TestELF.Load(address: 0x20_0000, bytes: Array(0..<200), memorySize: 200)]
        elf64.pvhEntry = 0x10_0000
        var noNote = TestELF()
        noNote.loads = [TestELF.Load(address: 0x10_0000, bytes: [1, 2, 3], memorySize: 3)]
        noNote.pvhEntry = nil
        return [TestELF.helloGuest(), elf64.build(), noNote.build()]
    }
}
