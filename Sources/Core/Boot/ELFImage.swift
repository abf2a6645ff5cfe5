/// Errors from reading a kernel image. Each says what is wrong with the file.
public enum BootError: Error, Equatable, CustomStringConvertible {
    case notELF
    case unsupportedELF(String)
    case truncated(String)
    case malformed(String)
    case noPVHNote
    case segmentOutsideMemory(index: Int, address: UInt64, size: UInt64)
    case commandLineTooLong(Int)
    case memory(GuestMemoryError)

    public var description: String {
        let prefix = "cannot boot this kernel: "
        switch self {
        case .notELF: return prefix + "it is not an ELF file"
        case let .unsupportedELF(why): return prefix + why
        case let .truncated(what): return prefix + "the file is truncated (\(what))"
        case let .malformed(why): return prefix + "malformed ELF: \(why)"
        case .noPVHNote:
            return prefix + "it has no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with PVH support (Linux: CONFIG_PVH=y)"
        case let .segmentOutsideMemory(i, a, n):
            return prefix + "segment \(i) (\(n) bytes at 0x\(String(a, radix: 16))) does not fit in guest RAM above 1 MiB; give the VM more memory or fix the link address"
        case let .commandLineTooLong(n): return "kernel command line is \(n) bytes; the limit is 4095"
        case let .memory(e): return prefix + e.description
        }
    }
}

/// A parsed ELF file: just what PVH boot needs. Every offset and size read from the file
/// is checked against the file's length before use; nothing is trusted.
public struct ELFImage: Sendable {
    public struct Segment: Sendable, Equatable {
        public var physicalAddress: UInt64
        public var fileOffset: UInt64
        public var fileSize: UInt64
        public var memorySize: UInt64
    }

    public let is64Bit: Bool
    public let loadSegments: [Segment]
    /// XEN_ELFNOTE_PHYS32_ENTRY, when present.
    public let pvhEntry: UInt32?

    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let xenElfnotePhys32Entry: UInt32 = 18

    public init(_ file: [UInt8]) throws(BootError) {
        let r = ByteReader(file)
        guard file.count >= 16, file[0] == 0x7f, file[1] == 0x45, file[2] == 0x4c, file[3] == 0x46 else { throw .notELF }
        guard file[5] == 1 else { throw .unsupportedELF("only little-endian ELF is supported") }
        switch file[4] {
        case 1: is64Bit = false
        case 2: is64Bit = true
        default: throw .unsupportedELF("unknown ELF class \(file[4])")
        }
        let machine = try r.u16(18)
        guard machine == 62 || machine == 3 else { throw .unsupportedELF("e_machine \(machine) is not x86 (3) or x86-64 (62)") }

        let phoff, phentsize, phnum: UInt64
        if is64Bit {
            phoff = try r.u64(32); phentsize = UInt64(try r.u16(54)); phnum = UInt64(try r.u16(56))
            guard phentsize >= 56 else { throw .malformed("program header entries of \(phentsize) bytes (need 56)") }
        } else {
            phoff = UInt64(try r.u32(28)); phentsize = UInt64(try r.u16(42)); phnum = UInt64(try r.u16(44))
            guard phentsize >= 32 else { throw .malformed("program header entries of \(phentsize) bytes (need 32)") }
        }
        guard phnum > 0 else { throw .malformed("no program headers") }
        guard phoff <= UInt64(file.count), phnum * phentsize <= UInt64(file.count) - phoff else {
            throw .truncated("program headers at \(phoff), \(phnum) × \(phentsize) bytes")
        }

        var loads: [Segment] = []
        var entry: UInt32?
        for i in 0..<phnum {
            let h = Int(phoff + i * phentsize)
            let type = try r.u32(h)
            let seg: Segment
            if is64Bit {
                seg = Segment(physicalAddress: try r.u64(h + 24), fileOffset: try r.u64(h + 8),
                              fileSize: try r.u64(h + 32), memorySize: try r.u64(h + 40))
            } else {
                seg = Segment(physicalAddress: UInt64(try r.u32(h + 12)), fileOffset: UInt64(try r.u32(h + 4)),
                              fileSize: UInt64(try r.u32(h + 16)), memorySize: UInt64(try r.u32(h + 20)))
            }
            guard seg.fileOffset <= UInt64(file.count), seg.fileSize <= UInt64(file.count) - seg.fileOffset else {
                throw .truncated("segment \(i): \(seg.fileSize) bytes at offset \(seg.fileOffset) run past the end of the file")
            }
            if type == Self.ptLoad {
                guard seg.memorySize >= seg.fileSize else {
                    throw .malformed("segment \(i): memory size \(seg.memorySize) < file size \(seg.fileSize)")
                }
                loads.append(seg)
            } else if type == Self.ptNote, entry == nil {
                entry = try Self.findPVHEntry(r, offset: Int(seg.fileOffset), size: Int(seg.fileSize))
            }
        }
        guard !loads.isEmpty else { throw .malformed("no PT_LOAD segment") }
        loadSegments = loads
        pvhEntry = entry
    }

    /// Walks the notes in one PT_NOTE segment looking for ("Xen", 18).
    static func findPVHEntry(_ r: ByteReader<[UInt8]>, offset: Int, size: Int) throws(BootError) -> UInt32? {
        var p = offset
        let end = offset + size
        func align4(_ n: Int) -> Int { (n + 3) & ~3 }
        while p + 12 <= end {
            let nameSize = Int(try r.u32(p)), descSize = Int(try r.u32(p + 4)), type = try r.u32(p + 8)
            guard nameSize <= size, descSize <= size else { throw .malformed("note sizes \(nameSize)/\(descSize) exceed the segment") }
            let nameAt = p + 12, descAt = nameAt + align4(nameSize)
            guard descAt + descSize <= end else { throw .malformed("note runs past its segment") }
            if type == xenElfnotePhys32Entry, nameSize == 4, try r.bytes(nameAt, 3) == Array("Xen".utf8) {
                guard descSize == 4 || descSize == 8 else { throw .malformed("PVH entry note of \(descSize) bytes") }
                return try r.u32(descAt)
            }
            p = descAt + align4(descSize)
        }
        return nil
    }
}

/// ELF fields at absolute offsets; a field past the end of the file is `BootError.truncated`.
extension ByteReader where Bytes == [UInt8] {
    func bytes(_ at: Int, _ n: Int) throws(BootError) -> [UInt8] {
        guard let b = bytes(at: at, count: n) else { throw .truncated("\(n) bytes at offset \(at)") }
        return b
    }
    func u16(_ at: Int) throws(BootError) -> UInt16 { try field(at) }
    func u32(_ at: Int) throws(BootError) -> UInt32 { try field(at) }
    func u64(_ at: Int) throws(BootError) -> UInt64 { try field(at) }

    private func field<T: FixedWidthInteger & UnsignedInteger>(_ at: Int) throws(BootError) -> T {
        guard let v = integer(at: at, as: T.self) else { throw .truncated("\(MemoryLayout<T>.size)-byte field at offset \(at)") }
        return v
    }
}
