import Core
@testable import Migrate

/// A snapshot file (protocol.md §6) as `restore` and `snapshot inspect` read it before any
/// memory: header, machine description, placement, state and index (§6.6). The input is
/// the whole file.
enum SnapshotTarget: FuzzTarget {
    static let name = "snapshot"
    static let invariant = """
        an accepted file is exactly as long as its header says, its header page re-encodes to exactly \
        its first 4096 bytes (no field ignored), its sections follow one another inside the file, \
        the index marks exactly pages_with_data pages, the state agrees with the machine (memory \
        size, vCPU count) and every section matches its digest; nothing is read outside the input
        """

    static func run(_ input: [UInt8]) {
        let size = UInt64(input.count)
        let decoded = try? SnapshotHeader.decodeSections(size: size, path: "fuzz") { (offset, count) throws(SnapshotError) in
            check(offset <= size && UInt64(count) <= size - offset, "read of \(count) bytes at \(offset) past the input's \(size)")
            return Array(input[Int(offset)..<(Int(offset) + count)])
        }
        guard let (header, stateBytes, state, index) = decoded else { return }
        check(header.fileSize == size, "accepted a file of \(size) bytes whose header accounts for \(header.fileSize)")
        check(header.encoded() == Array(input[0..<SnapshotHeader.size]), "the header page does not re-encode to its bytes")
        check(header.stateOffset == header.memoryOffset + header.memoryLength
              && header.indexOffset == header.stateOffset + header.stateLength, "sections out of place")
        check(UInt64(index.count) == header.pagesWithData, "index marks \(index.count) pages, header \(header.pagesWithData)")
        check(StateDigest.compute(stateBytes) == header.stateDigest, "state digest not checked")
        check(state.memorySize == header.machine.memoryBytes && state.vcpus.count == Int(header.machine.vcpus),
              "state disagrees with the machine")
    }

    /// Valid files of both layouts around the state target's machine-state seeds (a 16 MiB and
    /// a 64 MiB machine), with a small compressed memory section (one STREAM_END frame) and,
    /// for the mapped layout, the 16 MiB guest's memory section of holes.
    static func seeds() -> [[UInt8]] {
        StateTarget.seeds().prefix(2).flatMap { (blob) -> [[UInt8]] in
            guard let state = try? MachineState(encoded: blob) else { return [] }
            var index = PageBitmap(pageCount: Int(state.memorySize / 4096))
            return SnapshotLayout.allCases.compactMap { layout -> [UInt8]? in
                if layout == .mapped, state.memorySize > 16 << 20 { return nil }
                var h = SnapshotHeader(layout: layout, machine: MachineDescription(
                    memoryBytes: state.memorySize, vcpus: UInt32(state.vcpus.count),
                    inKernelIRQChip: state.vcpus[0].hasLAPIC, kernelSHA256: [UInt8](repeating: 1, count: 32), name: "seed"))
                let memory = layout == .mapped ? [UInt8](repeating: 0, count: Int(state.memorySize))
                    : Frame.streamEnd(frames: 0).encoded()
                index.removeAll()
                if layout == .mapped { index.insert(3) }
                var memoryBytes = memory
                if layout == .mapped { memoryBytes[3 * 4096] = 1 }
                let indexBytes = SnapshotHeader.encodeIndex(index)
                h.place(memoryLength: UInt64(memory.count), stateLength: UInt64(blob.count))
                h.frames = layout == .compressed ? 1 : 0
                h.pagesWithData = UInt64(index.count)
                h.stateDigest = StateDigest.compute(blob)
                h.indexDigest = StateDigest.compute(indexBytes)
                return h.encoded() + memoryBytes + blob + indexBytes
            }
        }
    }
}
