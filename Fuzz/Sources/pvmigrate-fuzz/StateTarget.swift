import CFuzzer
@testable import Core

/// Saved machine state (protocol.md §1.8) as it arrives in a STATE frame: the same input is
/// offered to the machine-state, vCPU-state, PV-state and serial-state decoders.
enum StateTarget: FuzzTarget {
    static let name = "state"
    static let invariant = """
        whatever decodes re-encodes to bytes that decode to an equal value and re-encode to the same \
        bytes; every kernel struct section has exactly its struct's size; a machine has 1–255 vCPUs \
        numbered without gaps; a PV or serial section re-encodes to exactly its bytes (no field is ignored)
        """

    static func run(_ input: [UInt8]) {
        if (try? MachineState(encoded: input)) != nil { checkContainer(input[...], nested: true) }
        if (try? VCPUState(encoded: input)) != nil { checkContainer(input[...], nested: false) }
        if let state = try? MachineState(encoded: input) {
            check((1...MachineState.maximumVCPUs).contains(state.vcpus.count), "\(state.vcpus.count) vCPUs")
            check(state.clock.count == MemoryLayout<kvm_clock_data>.size, "clock of \(state.clock.count) bytes")
            check(state.irqChips.map { $0.count == 3 && $0.allSatisfy { $0.count == MemoryLayout<kvm_irqchip>.size } } ?? true,
                  "irqchip sections of the wrong size")
            state.vcpus.forEach(checkSizes)
            let bytes = state.encoded()
            let again = try? MachineState(encoded: bytes)
            check(again == state, "machine state does not survive encode → decode")
            check(again?.encoded() == bytes, "machine state encoding is not stable")
        }
        if let vcpu = try? VCPUState(encoded: input) {
            checkSizes(vcpu)
            let bytes = vcpu.encoded()
            let again = try? VCPUState(encoded: bytes)
            check(again == vcpu, "vCPU state does not survive encode → decode")
            check(again?.encoded() == bytes, "vCPU state encoding is not stable")
        }
        if let pv = try? PVInterface.State(encoded: input) {
            check(pv.encoded() == input, "PV state \(pv) re-encodes to other bytes: a field was ignored")
        }
        if let serial = try? SerialPort.State(encoded: input) {
            check(serial.encoded() == input, "serial state \(serial) re-encodes to other bytes: a field was ignored")
        }
    }

    /// Every section header of an accepted container (and of the vCPU containers inside a
    /// machine's) has its reserved field zero.
    static func checkContainer(_ bytes: ArraySlice<UInt8>, nested: Bool) {
        var p = bytes.startIndex + 8
        while bytes.endIndex - p >= 8 {
            check(bytes[p + 2] == 0 && bytes[p + 3] == 0, "section at \(p) has a nonzero reserved field")
            let length = (0..<4).reduce(0) { $0 | Int(bytes[p + 4 + $1]) << (8 * $1) }
            if nested, bytes[p + 1] != 0 { checkContainer(bytes[(p + 8)..<(p + 8 + length)], nested: false) }
            p += 8 + length
        }
    }

    static func checkSizes(_ v: VCPUState) {
        check(v.regs.count == MemoryLayout<kvm_regs>.size && v.sregs.count == MemoryLayout<kvm_sregs>.size
              && v.fpu.count == MemoryLayout<kvm_fpu>.size && v.events.count == MemoryLayout<kvm_vcpu_events>.size
              && v.debugRegs.count == MemoryLayout<kvm_debugregs>.size
              && (v.xcrs?.count ?? MemoryLayout<kvm_xcrs>.size) == MemoryLayout<kvm_xcrs>.size
              && (v.lapic?.count ?? MemoryLayout<kvm_lapic_state>.size) == MemoryLayout<kvm_lapic_state>.size
              && (v.xsave.map { $0.count >= MemoryLayout<kvm_xsave>.size && $0.count <= 1 << 20 } ?? true),
              "vCPU \(v.id) has a section of the wrong size")
    }

    static func seeds() -> [[UInt8]] {
        func bytes(_ n: Int, _ seed: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 * seed) } }
        func vcpu(_ id: UInt32, full: Bool) -> VCPUState {
            VCPUState(id: id, regs: bytes(MemoryLayout<kvm_regs>.size, 3), sregs: bytes(MemoryLayout<kvm_sregs>.size, 5),
                      fpu: bytes(MemoryLayout<kvm_fpu>.size, 7), xsave: full ? bytes(MemoryLayout<kvm_xsave>.size, 11) : nil,
                      xcrs: full ? bytes(MemoryLayout<kvm_xcrs>.size, 13) : nil,
                      msrs: [MSR(index: 0x10, value: 123), MSR(index: 0x4b56_4d10, value: 0x5000 | 0x400)],
                      events: bytes(MemoryLayout<kvm_vcpu_events>.size, 17), mpState: 0,
                      debugRegs: bytes(MemoryLayout<kvm_debugregs>.size, 19),
                      lapic: full ? bytes(MemoryLayout<kvm_lapic_state>.size, 23) : nil)
        }
        let pv = PVInterface.State(guestVersion: 1, controlPage: 0x9000, balloonWords: [0, 0xff, 1 << 63])
        let small = MachineState(memorySize: 16 << 20, vcpus: [vcpu(0, full: false)],
                                 clock: bytes(MemoryLayout<kvm_clock_data>.size, 29), irqChips: nil, pv: nil)
        let full = MachineState(memorySize: 64 << 20, vcpus: [vcpu(0, full: true), vcpu(1, full: true)],
                                clock: bytes(MemoryLayout<kvm_clock_data>.size, 31),
                                irqChips: (0..<3).map { bytes(MemoryLayout<kvm_irqchip>.size, 37 + $0) }, pv: pv)
        return [small.encoded(), full.encoded(), vcpu(0, full: false).encoded(), pv.encoded()]
    }
}
