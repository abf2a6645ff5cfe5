import Core
import Testing

@testable import Migrate

/// The snapshot file's header and index decoders (protocol.md §6.2–6.3, §6.6): golden bytes
/// written from the spec's table, and every refusal a hostile or truncated file must get.
@Suite struct SnapshotHeaderTests {
    static let machine = MachineDescription(memoryBytes: 4 << 20, vcpus: 1, inKernelIRQChip: false,
                                            kernelSHA256: [UInt8](repeating: 0xaa, count: 32), name: "vm")

    /// A compressed-layout header for a 4 MiB guest (1024 pages: a 128-byte index) whose
    /// memory section is 24 bytes and state 40 bytes.
    static func header() -> SnapshotHeader {
        var h = SnapshotHeader(layout: .compressed, machine: machine)
        h.place(memoryLength: 24, stateLength: 40)
        h.memoryDigest = 0x1122_3344_5566_7788
        h.pagesWithData = 3
        h.stateDigest = 0x0102_0304_0506_0708
        h.indexDigest = 0xa1a2_a3a4_a5a6_a7a8
        h.frames = 1
        h.rounds = 2
        h.savedAt = 0x6000_0000
        return h
    }

    static func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

    @Test func headerGoldenBytes() throws {
        let bytes = Self.header().encoded()
        #expect(bytes.count == 4096)
        var golden: [UInt8] = [0x50, 0x56, 0x53, 0x4e, 1, 0, 2, 0]        // "PVSN", version 1, layout 2
        golden += Self.le(4096, 8) + Self.le(24, 8)                        // memory_offset, memory_length
        golden += Self.le(4120, 8) + Self.le(40, 8)                        // state_offset, state_length
        golden += Self.le(4160, 8) + Self.le(128, 8)                       // index_offset, index_length
        golden += Self.le(0x1122_3344_5566_7788, 8) + Self.le(3, 8)        // memory_digest, pages_with_data
        golden += Self.le(0x0102_0304_0506_0708, 8) + Self.le(0xa1a2_a3a4_a5a6_a7a8, 8)
        golden += Self.le(1, 8) + Self.le(2, 4) + Self.le(52, 4) + Self.le(0x6000_0000, 8) // frames, rounds, machine_length, saved_at
        // MACHINE payload (§3.2): memory_bytes, vcpus, flags, sha256, name_length, name.
        golden += Self.le(4 << 20, 8) + Self.le(1, 4) + Self.le(0, 4) + [UInt8](repeating: 0xaa, count: 32) + [2, 0] + Array("vm".utf8)
        #expect(Array(bytes[0..<164]) == golden)
        #expect(Array(bytes[164..<172]) == Self.le(StateDigest.compute(golden), 8))
        #expect(bytes[172...].allSatisfy { $0 == 0 })
        #expect(try SnapshotHeader(decoding: bytes, fileSize: 4288, path: "f") == Self.header())
    }

    /// `bytes` with the field at `offset` set to `value` and the header digest made right again,
    /// so that the field's own check is what refuses it.
    static func with(_ offset: Int, _ value: UInt64, size: Int = 8) -> [UInt8] {
        var b = header().encoded()
        b.replaceSubrange(offset..<(offset + size), with: le(value, size))
        b.replaceSubrange(164..<172, with: le(StateDigest.compute(Array(b[0..<164])), 8))
        return b
    }

    static func refusal(_ bytes: [UInt8], fileSize: UInt64 = 4288) -> SnapshotError? {
        do { _ = try SnapshotHeader(decoding: bytes, fileSize: fileSize, path: "f"); return nil } catch { return error }
    }

    static func field(_ e: SnapshotError?) -> String? {
        if case let .malformed(field, _)? = e { return field }
        return nil
    }

    @Test func truncatedFilesNameWhatIsMissing() {
        let bytes = Self.header().encoded()
        #expect(Self.refusal(Array(bytes[0..<100]), fileSize: 100) == .truncated(path: "f", what:
            "the header (100 bytes; a snapshot starts with a 4096-byte header)"))
        #expect(Self.refusal(bytes, fileSize: 4100) == .truncated(path: "f", what: "guest memory"))
        #expect(Self.refusal(bytes, fileSize: 4130) == .truncated(path: "f", what: "the state"))
        #expect(Self.refusal(bytes, fileSize: 4287) == .truncated(path: "f", what: "the index"))
        #expect(Self.field(Self.refusal(bytes, fileSize: 4289)) == "file size")
    }

    @Test func everyBadFieldIsRefused() {
        #expect(Self.field(Self.refusal(Self.with(0, 0, size: 4))) == "magic")
        #expect(Self.field(Self.refusal(Self.with(4, 2, size: 2))) == "version")
        #expect(Self.field(Self.refusal(Self.with(6, 3, size: 2))) == "layout")
        #expect(Self.field(Self.refusal(Self.with(8, 8192))) == "memory_offset")
        #expect(Self.field(Self.refusal(Self.with(6, 1, size: 2))) == "memory_length") // mapped needs memory_bytes
        #expect(Self.field(Self.refusal(Self.with(24, 4121))) == "state_offset")
        #expect(Self.field(Self.refusal(Self.with(32, 17 << 20))) == "state_length")
        #expect(Self.field(Self.refusal(Self.with(40, 4161))) == "index_offset")
        #expect(Self.field(Self.refusal(Self.with(48, 136))) == "index_length")
        #expect(Self.field(Self.refusal(Self.with(64, 1025))) == "pages_with_data")
        #expect(Self.field(Self.refusal(Self.with(88, 0))) == "frames")
        #expect(Self.field(Self.refusal(Self.with(100, 49, size: 4))) == "machine_length")
        #expect(Self.field(Self.refusal(Self.with(112, 3 << 20))) == "machine.memory_bytes")
        #expect(Self.field(Self.refusal(Self.with(120, 0, size: 4))) == "machine")         // 0 vCPUs
        #expect(Self.field(Self.refusal(Self.with(124, 4, size: 4))) == "machine")         // unknown MACHINE flag
        var padded = Self.header().encoded()
        padded[4000] = 1
        #expect(Self.field(Self.refusal(padded)) == "header padding")
    }

    @Test func aFlippedHeaderByteFailsItsDigest() {
        var bytes = Self.header().encoded()
        bytes[60] ^= 0x10 // inside memory_digest: every field is covered
        guard case .digestMismatch(section: "header", _, _)? = Self.refusal(bytes) else {
            Issue.record("a flipped header byte was not refused by the header digest: \(String(describing: Self.refusal(bytes)))")
            return
        }
    }

    @Test func indexIsCheckedAgainstDigestAndCount() throws {
        var h = Self.header()
        var bitmap = PageBitmap(pageCount: 1024)
        [0, 5, 1023].forEach { bitmap.insert($0) }
        var index = SnapshotHeader.encodeIndex(bitmap)
        h.indexDigest = StateDigest.compute(index)
        #expect(try h.decodeIndex(index) == bitmap)
        h.pagesWithData = 2
        #expect(Self.field(Self.catching { () throws(SnapshotError) in try h.decodeIndex(index) }) == "index")
        h.pagesWithData = 3
        index[1] ^= 1
        #expect(Self.catching { () throws(SnapshotError) in try h.decodeIndex(index) } == .digestMismatch(section: "index", expected: h.indexDigest,
                                                                              actual: StateDigest.compute(index)))
    }

    static func catching(_ body: () throws(SnapshotError) -> Void) -> SnapshotError? {
        do { try body(); return nil } catch { return error }
    }

    @Test func stateIsCheckedBeforeItIsDecoded() {
        var h = Self.header()
        let garbage = [UInt8](repeating: 7, count: 40)
        h.stateDigest = StateDigest.compute(garbage) ^ 1
        #expect(Self.catching { () throws(SnapshotError) in _ = try h.decodeState(garbage) }
                == .digestMismatch(section: "state", expected: h.stateDigest, actual: StateDigest.compute(garbage)))
        h.stateDigest = StateDigest.compute(garbage)
        guard case .state? = Self.catching({ () throws(SnapshotError) in _ = try h.decodeState(garbage) }) else {
            Issue.record("a state that is not a §1.8 blob was not refused as such")
            return
        }
    }

    /// The whole pre-memory path over an in-memory file: a good header whose state section is
    /// not a machine state is refused, and nothing is read outside the file.
    @Test func decodeSectionsReadsOnlyInsideTheFile() {
        var h = Self.header()
        let state = [UInt8](repeating: 1, count: 40)
        let index = SnapshotHeader.encodeIndex(PageBitmap(pageCount: 1024))
        h.stateDigest = StateDigest.compute(state)
        h.indexDigest = StateDigest.compute(index)
        h.pagesWithData = 0
        let file = h.encoded() + [UInt8](repeating: 0, count: 24) + state + index
        var reads: [(UInt64, Int)] = []
        let result = Self.catching { () throws(SnapshotError) in
            _ = try SnapshotHeader.decodeSections(size: UInt64(file.count), path: "f") { (offset, count) throws(SnapshotError) in
                reads.append((offset, count))
                return Array(file[Int(offset)..<(Int(offset) + count)])
            }
        }
        guard case .state? = result else { Issue.record("expected a state refusal, got \(String(describing: result))"); return }
        #expect(reads.allSatisfy { $0.0 + UInt64($0.1) <= UInt64(file.count) })
    }
}
