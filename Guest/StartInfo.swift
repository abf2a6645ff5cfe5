// hvm_start_info and its memory map (protocol.md §1.3).

/// A validated view of the `hvm_start_info` the loader left in guest memory.
struct StartInfo {
    static let magic: UInt32 = 0x336e_c578
    static let memoryMapEntrySize = 24
    static let ramType: UInt32 = 1
    /// More entries than any loader writes (pvmigrate: 16): a bound, not a limit.
    static let maximumEntries: UInt32 = 128
    static let maximumCommandLine = 4095

    private let base: UnsafeRawPointer
    var gpa: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// Returns nil unless `gpa` points at a structure with the right magic.
    init?(gpa: UInt64) {
        // Sound: guest-physical memory below 16 GiB is identity-mapped; the
        // loader placed the structure at `gpa` (0 is rejected by bitPattern).
        guard gpa != 0, gpa < CPU.mappedLimit,
              let pointer = UnsafeRawPointer(bitPattern: UInt(gpa)),
              pointer.loadUnaligned(as: UInt32.self) == Self.magic
        else { return nil }
        base = pointer
    }

    private func field<T: FixedWidthInteger>(_ offset: Int, as type: T.Type) -> T {
        base.loadUnaligned(fromByteOffset: offset, as: T.self)
    }

    /// The NUL-terminated command line, or nil when there is none.
    var commandLine: UnsafePointer<UInt8>? {
        let gpa: UInt64 = field(24, as: UInt64.self)
        guard gpa != 0, gpa < CPU.mappedLimit else { return nil }
        return UnsafePointer(bitPattern: UInt(gpa))
    }

    /// Number of memory-map entries, clamped to a sane bound.
    private var entryCount: UInt32 {
        let count: UInt32 = field(48, as: UInt32.self)
        return count < Self.maximumEntries ? count : Self.maximumEntries
    }

    private var memoryMap: UnsafeRawPointer? {
        let gpa: UInt64 = field(40, as: UInt64.self)
        guard gpa != 0, gpa < CPU.mappedLimit else { return nil }
        return UnsafeRawPointer(bitPattern: UInt(gpa))
    }

    /// Calls `body(start, end)` for every RAM entry of the memory map.
    func forEachRAMRange(_ body: (UInt64, UInt64) -> Void) {
        guard let map = memoryMap else { return }
        var index: UInt32 = 0
        while index < entryCount {
            let entry = map + Int(index) * Self.memoryMapEntrySize
            let start = entry.loadUnaligned(as: UInt64.self)
            let size = entry.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            let type = entry.loadUnaligned(fromByteOffset: 16, as: UInt32.self)
            let (end, overflow) = start.addingReportingOverflow(size)
            if type == Self.ramType && !overflow && size != 0 {
                body(start, end)
            }
            index += 1
        }
    }

    /// End of the highest RAM range, in bytes.
    var ramEnd: UInt64 {
        var highest: UInt64 = 0
        forEachRAMRange { _, end in
            if end > highest { highest = end }
        }
        return highest
    }

    /// Memory size as the guest reports it: the end of RAM rounded to MiB.
    var memoryMiB: UInt64 {
        (ramEnd &+ (1 << 19)) >> 20
    }

    /// Whether `[start, end)` lies inside a single RAM range.
    func ramContains(start: UInt64, end: UInt64) -> Bool {
        var found = false
        forEachRAMRange { rangeStart, rangeEnd in
            if start >= rangeStart && end <= rangeEnd { found = true }
        }
        return found
    }
}
