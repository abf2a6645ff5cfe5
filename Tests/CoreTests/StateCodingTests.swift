import CKVM
import Testing

@testable import Core

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

    /// Found by the fuzzer (Fuzz/Corpus/state/pv-reserved-not-zero): the PV section's reserved
    /// word and the sections' reserved header fields were ignored, so two different blobs
    /// decoded to one state. §1.8: reserved fields are 0 and a reader rejects anything else.
    @Test func savedStateReservedFieldsMustBeZero() throws {
        let pv = PVInterface.State(guestVersion: 1, controlPage: 0x9000, balloonWords: [7])
        var bytes = pv.encoded()
        #expect(try PVInterface.State(encoded: bytes) == pv)
        bytes[5] = 1
        #expect(throws: StateCodingError.reservedNotZero("section pv")) { try PVInterface.State(encoded: bytes) }

        // A section header whose reserved u16 is not zero (the id section of a vCPU blob).
        let header = Array("PVCS".utf8) + [1, 0, 1, 0]
        #expect(throws: StateCodingError.missingSection("regs")) {
            try VCPUState(encoded: header + [1, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0])
        }
        #expect(throws: StateCodingError.reservedNotZero("section 1's header")) {
            try VCPUState(encoded: header + [1, 0, 0, 1, 4, 0, 0, 0, 0, 0, 0, 0])
        }
        // The machine blob that carries them: a valid one with a PV section, then one bit flipped.
        let vcpu = VCPUState(id: 0, regs: zeros(kvm_regs.self), sregs: zeros(kvm_sregs.self), fpu: zeros(kvm_fpu.self),
                             xsave: nil, xcrs: nil, msrs: [], events: zeros(kvm_vcpu_events.self), mpState: 0,
                             debugRegs: zeros(kvm_debugregs.self), lapic: nil)
        let machine = MachineState(memorySize: 4 << 20, vcpus: [vcpu], clock: zeros(kvm_clock_data.self),
                                   irqChips: nil, pv: pv)
        var blob = machine.encoded()
        #expect(try MachineState(encoded: blob) == machine)
        let pvPayload = blob.indices.dropLast(15).first { Array(blob[$0..<($0 + 16)]) == Array(pv.encoded().prefix(16)) }!
        blob[pvPayload + 4] = 0x80
        #expect(throws: StateCodingError.reservedNotZero("section pv")) { try MachineState(encoded: blob) }
    }

    private func zeros<T>(_: T.Type) -> [UInt8] { [UInt8](repeating: 0, count: MemoryLayout<T>.size) }
}
