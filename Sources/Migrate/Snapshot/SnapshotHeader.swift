// The snapshot file's header and index (protocol.md §6.1–6.3): encoding, and a decoder
// that validates every field of a hostile file before anything is built from it.

import Core

/// How a snapshot holds guest memory (protocol.md §6.4).
public enum SnapshotLayout: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    /// One 4 KiB slot per guest page, page-aligned, pages without data left as holes:
    /// restore maps the file copy-on-write.
    case mapped = 1
    /// The page batches of a migration stream (§3.2–3.3, zstd per batch): restore reads them.
    case compressed = 2

    public var description: String { self == .mapped ? "mapped" : "compressed" }

    public init?(name: String) {
        guard let l = Self.allCases.first(where: { $0.description == name }) else { return nil }
        self = l
    }
}

/// The fixed part of a snapshot (protocol.md §6.2): what the file holds and where, and the
/// digests that cover it.
public struct SnapshotHeader: Equatable, Sendable {
    public static let magic: UInt32 = 0x4e53_5650 // "PVSN"
    public static let version: UInt16 = 1
    /// The header occupies the file's first page; memory starts at the next.
    public static let size = 4096
    /// The longest state section a reader accepts (§1.8 blobs are far smaller).
    public static let maximumStateLength: UInt64 = 16 << 20
    static let fixedLength = 112

    public var layout: SnapshotLayout
    public var machine: MachineDescription
    public var memoryOffset: UInt64 = UInt64(SnapshotHeader.size)
    public var memoryLength: UInt64 = 0
    public var stateOffset: UInt64 = 0
    public var stateLength: UInt64 = 0
    public var indexOffset: UInt64 = 0
    public var indexLength: UInt64 = 0
    public var memoryDigest: UInt64 = 0
    public var pagesWithData: UInt64 = 0
    public var stateDigest: UInt64 = 0
    public var indexDigest: UInt64 = 0
    /// Compressed: the frames of the memory section, STREAM_END included; mapped: 0.
    public var frames: UInt64 = 0
    public var rounds: UInt32 = 0
    /// When the save finished, Unix seconds (informational).
    public var savedAt: UInt64 = 0

    public init(layout: SnapshotLayout, machine: MachineDescription) {
        self.layout = layout
        self.machine = machine
    }

    public var pageCount: Int { Int(machine.memoryBytes / 4096) }
    /// The index's length for this memory size: one bit per page, whole u64 words.
    public var expectedIndexLength: UInt64 { UInt64((pageCount + 63) / 64 * 8) }
    /// The file's exact size: the index is the last section.
    public var fileSize: UInt64 { indexOffset &+ indexLength }

    /// Places the sections one after another (§6.1) for a memory section of `memoryLength`
    /// bytes and a state of `stateLength` bytes.
    public mutating func place(memoryLength: UInt64, stateLength: UInt64) {
        self.memoryLength = memoryLength
        stateOffset = memoryOffset + memoryLength
        self.stateLength = stateLength
        indexOffset = stateOffset + stateLength
        indexLength = expectedIndexLength
    }

    /// The header page: fields, the MACHINE payload, the header digest, zero padding.
    public func encoded() -> [UInt8] {
        var w = ByteWriter(capacity: Self.size)
        w.u32(Self.magic); w.u16(Self.version); w.u16(layout.rawValue)
        for v in [memoryOffset, memoryLength, stateOffset, stateLength, indexOffset, indexLength,
                  memoryDigest, pagesWithData, stateDigest, indexDigest, frames] { w.u64(v) }
        let description = Array(Frame.machine(machine).encoded().dropFirst(FrameHeader.size))
        w.u32(rounds); w.u32(UInt32(description.count)); w.u64(savedAt)
        w.bytes.append(contentsOf: description)
        w.u64(StateDigest.compute(w.bytes))
        w.bytes.append(contentsOf: [UInt8](repeating: 0, count: Self.size - w.count))
        return w.bytes
    }

    /// Decodes and validates the header page of a file of `fileSize` bytes (§6.2's rules).
    public init(decoding page: [UInt8], fileSize: UInt64, path: String) throws(SnapshotError) {
        guard page.count >= Self.size, fileSize >= UInt64(Self.size) else {
            throw .truncated(path: path, what: "the header (\(fileSize) bytes; a snapshot starts with a 4096-byte header)")
        }
        var r = ByteReader(page)
        func u64() -> UInt64 { r.u64()! } // Sound: the fixed part (112 bytes) lies inside the 4096 checked above.
        guard r.u32() == Self.magic else {
            throw .malformed(field: "magic", reason: "not \"PVSN\": this is not a pvmigrate snapshot, or its save did not finish")
        }
        let version = r.u16()!
        guard version == Self.version else {
            throw .malformed(field: "version", reason: "\(version); this pvmigrate reads version \(Self.version)")
        }
        let rawLayout = r.u16()!
        guard let layout = SnapshotLayout(rawValue: rawLayout) else {
            throw .malformed(field: "layout", reason: "\(rawLayout) (1 mapped, 2 compressed)")
        }
        let memoryOffset = u64(), memoryLength = u64(), stateOffset = u64(), stateLength = u64()
        let indexOffset = u64(), indexLength = u64(), memoryDigest = u64(), pagesWithData = u64()
        let stateDigest = u64(), indexDigest = u64(), frames = u64()
        let rounds = r.u32()!, machineLength = Int(r.u32()!), savedAt = u64()
        guard (50...305).contains(machineLength) else {
            throw .malformed(field: "machine_length", reason: "\(machineLength) (50–305)")
        }
        let description = Array(page[Self.fixedLength..<(Self.fixedLength + machineLength)])
        let digestAt = Self.fixedLength + machineLength
        var digestReader = ByteReader(page)
        _ = digestReader.seek(to: digestAt)
        let stored = digestReader.u64()!
        let computed = StateDigest.compute(Array(page[0..<digestAt]))
        guard stored == computed else { throw .digestMismatch(section: "header", expected: stored, actual: computed) }
        guard page[(digestAt + 8)..<Self.size].allSatisfy({ $0 == 0 }) else {
            throw .malformed(field: "header padding", reason: "not zero")
        }
        let machine: MachineDescription
        do {
            guard case let .machine(m) = try Frame.decode(FrameHeader(type: .machine, flags: 0, length: machineLength),
                                                          payload: description) else {
                throw SnapshotError.malformed(field: "machine", reason: "not a MACHINE description")
            }
            machine = m
        } catch let e as SnapshotError { throw e } catch {
            throw .malformed(field: "machine", reason: "\(error)")
        }
        guard machine.memoryBytes >= 4 << 20, machine.memoryBytes % (2 << 20) == 0, machine.memoryBytes <= 1 << 40 else {
            throw .malformed(field: "machine.memory_bytes", reason: "\(machine.memoryBytes) (a multiple of 2 MiB, 4 MiB–1 TiB)")
        }
        guard (1...UInt32(Machine.maximumVCPUs)).contains(machine.vcpus), !machine.name.isEmpty else {
            throw .malformed(field: "machine", reason: "\(machine.vcpus) vCPUs, name \"\(machine.name)\"")
        }
        self.init(layout: layout, machine: machine)
        (self.memoryOffset, self.memoryLength, self.stateOffset, self.stateLength) = (memoryOffset, memoryLength, stateOffset, stateLength)
        (self.indexOffset, self.indexLength, self.memoryDigest, self.pagesWithData) = (indexOffset, indexLength, memoryDigest, pagesWithData)
        (self.stateDigest, self.indexDigest, self.frames, self.rounds, self.savedAt) = (stateDigest, indexDigest, frames, rounds, savedAt)
        try checkPlacement(fileSize: fileSize, path: path)
    }

    /// The sections follow one another exactly, each within its limits, and the file ends
    /// with the index (§6.1): a shorter file is truncated, a longer one malformed.
    private func checkPlacement(fileSize: UInt64, path: String) throws(SnapshotError) {
        guard memoryOffset == UInt64(Self.size) else { throw .malformed(field: "memory_offset", reason: "\(memoryOffset), not 4096") }
        switch layout {
        case .mapped:
            guard memoryLength == machine.memoryBytes else {
                throw .malformed(field: "memory_length", reason: "\(memoryLength); the mapped layout has one slot per page (\(machine.memoryBytes))")
            }
            guard frames == 0 else { throw .malformed(field: "frames", reason: "\(frames); 0 in the mapped layout") }
        case .compressed:
            guard memoryLength >= 24, memoryLength <= UInt64(1) << 50 else {
                throw .malformed(field: "memory_length", reason: "\(memoryLength)")
            }
            guard frames >= 1, frames <= memoryLength / 16 else { throw .malformed(field: "frames", reason: "\(frames)") }
        }
        guard stateOffset == memoryOffset + memoryLength else {
            throw .malformed(field: "state_offset", reason: "\(stateOffset); the state follows memory at \(memoryOffset + memoryLength)")
        }
        guard stateLength >= 8, stateLength <= Self.maximumStateLength else {
            throw .malformed(field: "state_length", reason: "\(stateLength) (8 bytes–16 MiB)")
        }
        guard indexOffset == stateOffset + stateLength else {
            throw .malformed(field: "index_offset", reason: "\(indexOffset); the index follows the state at \(stateOffset + stateLength)")
        }
        guard indexLength == expectedIndexLength else {
            throw .malformed(field: "index_length", reason: "\(indexLength); \(expectedIndexLength) for \(pageCount) pages")
        }
        guard pagesWithData <= UInt64(pageCount) else {
            throw .malformed(field: "pages_with_data", reason: "\(pagesWithData) of \(pageCount) pages")
        }
        if fileSize < self.fileSize {
            throw .truncated(path: path, what: fileSize < stateOffset ? "guest memory" : fileSize < indexOffset ? "the state" : "the index")
        }
        guard fileSize == self.fileSize else {
            throw .malformed(field: "file size", reason: "\(fileSize) bytes, the header accounts for \(self.fileSize)")
        }
    }

    /// Every check of §6.6 that comes before memory, over a file of `size` bytes read with
    /// `read(offset, count)`: header, machine description, placement and size, state, index.
    /// Nothing past a section the header has not yet been validated to place is read.
    public static func decodeSections(size: UInt64, path: String,
                                      read: (UInt64, Int) throws(SnapshotError) -> [UInt8])
        throws(SnapshotError) -> (header: SnapshotHeader, stateBytes: [UInt8], state: MachineState, index: PageBitmap) {
        let header = try SnapshotHeader(decoding: try read(0, Int(min(size, UInt64(Self.size)))), fileSize: size, path: path)
        let stateBytes = try read(header.stateOffset, Int(header.stateLength))
        let state = try header.decodeState(stateBytes)
        let index = try header.decodeIndex(try read(header.indexOffset, Int(header.indexLength)))
        if let pv = state.pv, pv.balloonWords.count != (header.pageCount + 63) / 64 {
            throw .malformed(field: "state", reason: "a balloon map of \(pv.balloonWords.count) words for \(header.pageCount) pages")
        }
        return (header, stateBytes, state, index)
    }

    /// The index (§6.3) as a bitmap: one bit per page with data in the saved memory.
    public func decodeIndex(_ bytes: [UInt8]) throws(SnapshotError) -> PageBitmap {
        guard UInt64(bytes.count) == indexLength else { throw .malformed(field: "index", reason: "\(bytes.count) bytes") }
        let digest = StateDigest.compute(bytes)
        guard digest == indexDigest else { throw .digestMismatch(section: "index", expected: indexDigest, actual: digest) }
        var r = ByteReader(bytes)
        var words: [UInt64] = []
        words.reserveCapacity(bytes.count / 8)
        while let w = r.u64() { words.append(w) }
        // No bits past the last page can exist: memory is a multiple of 2 MiB (512 pages).
        var bitmap = PageBitmap(pageCount: pageCount)
        bitmap.merge(words: words, atPage: 0)
        guard UInt64(bitmap.count) == pagesWithData else {
            throw .malformed(field: "index", reason: "\(bitmap.count) pages marked, the header says \(pagesWithData) pages with data")
        }
        return bitmap
    }

    /// The index bytes of `bitmap` (§6.3).
    public static func encodeIndex(_ bitmap: PageBitmap) -> [UInt8] {
        var w = ByteWriter(capacity: bitmap.words.count * 8)
        bitmap.words.forEach { w.u64($0) }
        return w.bytes
    }

    /// Decodes and checks the state section (§1.8) against its digest and the machine.
    public func decodeState(_ bytes: [UInt8]) throws(SnapshotError) -> MachineState {
        let digest = StateDigest.compute(bytes)
        guard digest == stateDigest else { throw .digestMismatch(section: "state", expected: stateDigest, actual: digest) }
        let state: MachineState
        do { state = try MachineState(encoded: bytes) } catch { throw .state(error.description) }
        guard state.memorySize == machine.memoryBytes else {
            throw .malformed(field: "state", reason: "its memory section says \(state.memorySize) bytes, the machine \(machine.memoryBytes)")
        }
        guard state.vcpus.count == Int(machine.vcpus) else {
            throw .malformed(field: "state", reason: "\(state.vcpus.count) vCPU sections for \(machine.vcpus) vCPUs")
        }
        guard state.vcpus.allSatisfy({ $0.hasLAPIC == machine.inKernelIRQChip }) else {
            throw .malformed(field: "state", reason: "LAPIC sections do not match the machine's irqchip flag")
        }
        guard (state.net != nil) == machine.hasNIC else {
            throw .malformed(field: "state", reason: "the net section does not match the machine's NIC flag")
        }
        return state
    }
}
