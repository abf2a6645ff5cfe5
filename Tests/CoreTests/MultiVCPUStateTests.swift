import CKVM
@testable import Core
import Testing

/// Several vCPUs in one saved machine (protocol.md §1.8, format 3): the bytes, and the
/// inconsistencies a reader must refuse.
extension StateSavingTests {
    /// vCPU `id` of a test machine, with its own registers and activity.
    func apState(_ id: UInt32, activity: UInt32) -> VCPUState {
        var v = vcpu
        v.id = id
        v.activity = activity
        v.regs = pattern(kvm_regs.self, UInt8(10 + id))
        return v
    }

    func machine(_ vcpus: [VCPUState]) -> MachineState {
        MachineState(memorySize: 4 << 20, vcpus: vcpus, clock: pattern(kvm_clock_data.self, 9), irqChips: nil, pv: nil,
                     serial: SerialPort.State())
    }

    /// A format-3 blob with `count` in tag 6 and the given vCPU sections.
    func blob(count: UInt32, _ vcpus: [(UInt16, VCPUState)]) -> [UInt8] {
        Array("PVMS".utf8) + le(3, 2) + le(UInt64(3 + vcpus.count), 2)
            + section(1, le(4 << 20, 8)) + section(6, le(UInt64(count), 4)) + section(2, pattern(kvm_clock_data.self, 9))
            + vcpus.flatMap { section(0x100 + $0.0, $0.1.encoded()) }
    }

    @Test("machine: three vCPUs (one awaiting start, one halted) in golden bytes")
    func threeVCPUs() throws {
        let vcpus = [apState(0, activity: 0), apState(1, activity: 1), apState(2, activity: 2)]
        let m = machine(vcpus)
        let golden = Array("PVMS".utf8) + [3, 0, 7, 0]
            + section(1, le(4 << 20, 8)) + section(6, le(3, 4)) + section(2, pattern(kvm_clock_data.self, 9))
            + section(5, [0, 0, 0, 0, 1, 0, 0, 0])
            + section(0x100, vcpus[0].encoded()) + section(0x101, vcpus[1].encoded()) + section(0x102, vcpus[2].encoded())
        #expect(m.encoded() == golden)
        let decoded = try MachineState(encoded: golden)
        #expect(decoded == m)
        #expect(decoded.vcpus.map(\.activity) == [0, 1, 2])
        #expect(vcpus[1].encoded().suffix(4) == [1, 0, 0, 0]) // the activity is the last section's payload
    }

    @Test("machine: a vCPU count that disagrees with the vCPU sections is refused")
    func countMismatch() {
        let two = [(UInt16(0), apState(0, activity: 0)), (UInt16(1), apState(1, activity: 0))]
        #expect(throws: Never.self) { try MachineState(encoded: blob(count: 2, two)) }
        #expect(throws: StateCodingError.badValue("a vCPU count of 3 with 2 vCPU sections")) {
            try MachineState(encoded: blob(count: 3, two))
        }
        #expect(throws: StateCodingError.badValue("a vCPU count of 1 with 2 vCPU sections")) {
            try MachineState(encoded: blob(count: 1, two))
        }
        // A gap: vCPU 2 without vCPU 1.
        #expect(throws: StateCodingError.self) {
            try MachineState(encoded: blob(count: 2, [(0, apState(0, activity: 0)), (2, apState(2, activity: 0))]))
        }
        // Section vcpu 1 holding vCPU 0's state.
        #expect(throws: StateCodingError.badValue("section vcpu 1 holding the state of vCPU 0")) {
            try MachineState(encoded: blob(count: 2, [(0, apState(0, activity: 0)), (1, apState(0, activity: 0))]))
        }
        // Format 2 may not carry a count.
        var format2 = blob(count: 2, two)
        format2[4] = 2
        #expect(throws: StateCodingError.unknownSection(6)) { try MachineState(encoded: format2) }
    }
}
