import Core
import Testing

/// Saved-state blobs are untrusted input (they arrive from the network during migration).
@Suite struct StateCodingTests {
    @Test func rejectsGarbage() {
        #expect(throws: StateCodingError.badMagic) { try VCPUState(encoded: Array("nope nope".utf8)) }
        #expect(throws: StateCodingError.truncated) { try VCPUState(encoded: Array("PVCS".utf8)) }
        #expect(throws: StateCodingError.unsupportedVersion(9)) { try VCPUState(encoded: Array("PVCS".utf8) + [9, 0, 0, 0]) }
        #expect(throws: StateCodingError.missingSection("id")) { try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 0, 0]) }
        // One section with a length running past the end.
        #expect(throws: StateCodingError.truncated) {
            try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 1, 0] + [1, 0, 0, 0, 0xff, 0xff, 0, 0])
        }
        #expect(throws: StateCodingError.unknownSection(99)) {
            try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 1, 0] + [99, 0, 0, 0, 0, 0, 0, 0])
        }
        #expect(throws: StateCodingError.badSectionSize(name: "id", expected: 4, got: 2)) {
            try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 1, 0] + [1, 0, 0, 0, 2, 0, 0, 0, 0, 0])
        }
        #expect(throws: StateCodingError.trailingBytes(3)) {
            try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 0, 0, 1, 2, 3])
        }
        #expect(throws: StateCodingError.self) { try MachineState(encoded: Array("PVMS".utf8) + [1, 0, 0, 0]) }
    }
}
