import CKVM

/// Loads a PVH kernel into guest memory and prepares the boot vCPU (protocol.md §1).
public struct PVHLoader {
    public static let startInfoAddress = GuestPhysicalAddress(0x1000)
    public static let memoryMapAddress = GuestPhysicalAddress(0x1100)
    public static let commandLineAddress = GuestPhysicalAddress(0x2000)
    public static let commandLineLimit = 4095
    public static let kernelFloor: UInt64 = 0x10_0000
    static let startInfoMagic: UInt32 = 0x336e_c578

    /// Where the boot vCPU starts.
    public struct BootInfo: Sendable, Equatable {
        public var entry: UInt32
        public var startInfo: GuestPhysicalAddress
    }

    /// A memory map entry as the guest sees it (protocol.md §1.3).
    public struct MemoryMapEntry: Equatable, Sendable {
        public var address: UInt64
        public var size: UInt64
        public var type: UInt32 // 1 RAM, 2 reserved
        public init(address: UInt64, size: UInt64, type: UInt32) {
            self.address = address; self.size = size; self.type = type
        }
    }

    public static func memoryMap(for memory: GuestMemory) -> [MemoryMapEntry] {
        var map = [MemoryMapEntry(address: 0, size: 0xa0000, type: 1),
                   MemoryMapEntry(address: 0xa0000, size: 0x60000, type: 2)]
        for region in memory.regions {
            let start = max(region.range.start.raw, kernelFloor)
            map.append(MemoryMapEntry(address: start, size: region.range.end.raw - start, type: 1))
        }
        return map
    }

    /// Parses `image`, copies its segments, writes start info, memory map and command line.
    public static func load(image: [UInt8], commandLine: String, into memory: GuestMemory) throws(BootError) -> BootInfo {
        let elf = try ELFImage(image)
        guard let entry = elf.pvhEntry else { throw .noPVHNote }
        let cmdline = Array(commandLine.utf8)
        guard cmdline.count <= commandLineLimit else { throw .commandLineTooLong(cmdline.count) }
        guard !cmdline.contains(0) else { throw .unsupportedELF("the command line contains a NUL byte") }

        for (i, seg) in elf.loadSegments.enumerated() {
            let start = GuestPhysicalAddress(seg.physicalAddress)
            guard seg.physicalAddress >= kernelFloor, memory.locate(start, count: seg.memorySize) != nil else {
                throw .segmentOutsideMemory(index: i, address: seg.physicalAddress, size: seg.memorySize)
            }
            do {
                let target = try memory.bytes(at: start, count: seg.memorySize)
                let from = Int(seg.fileOffset), n = Int(seg.fileSize)
                // Sound: ELFImage checked [from, from + n) lies inside `image`.
                image.withUnsafeBytes { target.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[from..<(from + n)])) }
                target[n...].initializeMemory(as: UInt8.self, repeating: 0)
                memory.markHostWritten(start, count: seg.memorySize)
            } catch { throw .memory(error) }
        }

        do {
            let map = memoryMap(for: memory)
            var info = ByteWriter(zeros: 56)                      // hvm_start_info (§1.3)
            info.set(UInt32(startInfoMagic), at: 0)
            info.set(UInt32(1), at: 4)                            // version
            info.set(cmdline.isEmpty ? 0 : commandLineAddress.raw, at: 24)
            info.set(memoryMapAddress.raw, at: 40)
            info.set(UInt32(map.count), at: 48)
            try memory.write(info.bytes, at: startInfoAddress)
            var mapBytes = ByteWriter(capacity: 24 * map.count)  // hvm_memmap_table_entry
            for e in map {
                mapBytes.u64(e.address); mapBytes.u64(e.size); mapBytes.u32(e.type); mapBytes.u32(0)
            }
            try memory.write(mapBytes.bytes, at: memoryMapAddress)
            try memory.write(cmdline + [0], at: commandLineAddress)
        } catch { throw .memory(error) }
        return BootInfo(entry: entry, startInfo: startInfoAddress)
    }

    /// Puts `vcpu` in 32-bit flat protected mode at the PVH entry (protocol.md §1.1).
    public static func prepareBootCPU(_ vcpu: VCPU, boot: BootInfo) throws(KVMError) {
        var sregs = try vcpu.specialRegisters()
        func flat(_ selector: UInt16, type: UInt8) -> kvm_segment {
            kvm_segment(base: 0, limit: 0xffff_ffff, selector: selector, type: type, present: 1,
                        dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0, padding: 0)
        }
        sregs.cs = flat(0x10, type: 0xb)
        let data = flat(0x18, type: 0x3)
        sregs.ds = data; sregs.es = data; sregs.fs = data; sregs.gs = data; sregs.ss = data
        sregs.cr0 = 0x11 // PE | ET
        sregs.cr4 = 0
        sregs.efer = 0
        try vcpu.setSpecialRegisters(sregs)
        var regs = kvm_regs()
        regs.rflags = 0x2
        regs.rip = UInt64(boot.entry)
        regs.rbx = boot.startInfo.raw
        try vcpu.setRegisters(regs)
    }
}
