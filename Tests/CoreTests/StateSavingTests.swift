import CKVM
@testable import Core
import Testing

/// Every state type of a `StateSaving` component: a round trip and the exact bytes of
/// protocol.md §1.8, all without /dev/kvm.
@Suite("StateSaving: saved-state types, round trip and golden bytes")
struct StateSavingTests {
    /// `{ u16 tag, u16 0, u32 length, payload }`.
    func section(_ tag: UInt16, _ payload: [UInt8]) -> [UInt8] {
        le(UInt64(tag), 2) + [0, 0] + le(UInt64(payload.count), 4) + payload
    }

    func le(_ value: UInt64, _ count: Int) -> [UInt8] { (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }

    /// A kernel struct's worth of recognisable bytes.
    func pattern<T>(_: T.Type, _ seed: UInt8) -> [UInt8] {
        (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ Int(seed)) }
    }

    var vcpu: VCPUState {
        VCPUState(id: 0, regs: pattern(kvm_regs.self, 1), sregs: pattern(kvm_sregs.self, 2), fpu: pattern(kvm_fpu.self, 3),
                  xsave: nil, xcrs: nil, msrs: [MSR(index: 0x10, value: 0x1122_3344_5566_7788)],
                  events: pattern(kvm_vcpu_events.self, 4), mpState: 1, debugRegs: pattern(kvm_debugregs.self, 5), lapic: nil)
    }

    @Test("serial: u8 ier, lcr, mcr, scr, dll, dlm, u16 0")
    func serialState() throws {
        let state = SerialPort.State(interruptEnable: 0x01, lineControl: 0x83, modemControl: 0x0b, scratch: 0x5a,
                                     divisorLow: 0x03, divisorHigh: 0x02)
        #expect(state.encoded() == [0x01, 0x83, 0x0b, 0x5a, 0x03, 0x02, 0, 0])
        #expect(try SerialPort.State(encoded: state.encoded()) == state)
        #expect(throws: StateCodingError.badSectionSize(name: "serial", expected: 8, got: 7)) {
            try SerialPort.State(encoded: Array(state.encoded().prefix(7)))
        }
        #expect(throws: StateCodingError.reservedNotZero("section serial")) {
            try SerialPort.State(encoded: [1, 2, 3, 4, 5, 6, 0, 1])
        }
    }

    @Test("the serial port saves what a guest wrote and a fresh port restores it")
    func serialPortSavesAndRestoresItsRegisters() {
        func out(_ port: SerialPort, _ offset: UInt64, _ value: UInt8) {
            _ = withUnsafeBytes(of: value) { port.write(offset: offset, data: $0) }
        }
        func inb(_ port: SerialPort, _ offset: UInt64) -> UInt8 {
            var value: UInt8 = 0
            withUnsafeMutableBytes(of: &value) { port.read(offset: offset, data: $0) }
            return value
        }
        let source = SerialPort(sink: ConsoleBuffer())
        #expect(source.saveState() == SerialPort.State(), "power-on state")
        out(source, 3, 0x80); out(source, 0, 0x0c); out(source, 1, 0x00); out(source, 3, 0x03)
        out(source, 1, 0x01); out(source, 4, 0x03); out(source, 7, 0xa5)
        let saved = source.saveState()
        let target = SerialPort(sink: ConsoleBuffer())
        target.restoreState(saved)
        #expect(target.saveState() == saved)
        #expect([inb(target, 7), inb(target, 3), inb(target, 1), inb(target, 4)] == [0xa5, 0x03, 0x01, 0x03])
        out(target, 3, 0x83)
        #expect([inb(target, 0), inb(target, 1)] == [0x0c, 0x00], "divisor latch")
    }

    @Test("pv: u32 guest_version, u32 0, u64 control_page, balloon words")
    func pvState() throws {
        let state = PVInterface.State(guestVersion: 1, controlPage: 0x9000, balloonWords: [0x8000_0000_0000_0001])
        #expect(state.encoded() == le(1, 4) + le(0, 4) + le(0x9000, 8) + le(0x8000_0000_0000_0001, 8))
        #expect(try PVInterface.State(encoded: state.encoded()) == state)
        #expect(throws: StateCodingError.badSectionSize(name: "pv", expected: 16, got: 12)) {
            try PVInterface.State(encoded: Array(state.encoded().prefix(12)))
        }
    }

    @Test("clock and irqchip: the kernel structs' bytes, sizes checked")
    func platformState() throws {
        let clock = try VirtualMachine.ClockState(encoded: pattern(kvm_clock_data.self, 9))
        #expect(clock.encoded() == pattern(kvm_clock_data.self, 9))
        #expect(throws: StateCodingError.self) { try VirtualMachine.ClockState(encoded: [1, 2, 3]) }
        let chips = pattern(kvm_irqchip.self, 1) + pattern(kvm_irqchip.self, 2) + pattern(kvm_irqchip.self, 3)
        let irq = try VirtualMachine.IRQChipState(encoded: chips)
        #expect(irq.chips.count == 3 && irq.chips[2] == pattern(kvm_irqchip.self, 3))
        #expect(irq.encoded() == chips)
        #expect(throws: StateCodingError.self) { try VirtualMachine.IRQChipState(encoded: Array(chips.dropLast())) }
    }

    /// Format 1's sections of `vcpu` (format 2 adds the activity, tag 12).
    var vcpuSectionsFormat1: [UInt8] {
        section(1, le(0, 4)) + section(2, pattern(kvm_regs.self, 1)) + section(3, pattern(kvm_sregs.self, 2))
            + section(4, pattern(kvm_fpu.self, 3)) + section(7, le(0x10, 4) + le(0, 4) + le(0x1122_3344_5566_7788, 8))
            + section(8, pattern(kvm_vcpu_events.self, 4)) + section(9, le(1, 4)) + section(10, pattern(kvm_debugregs.self, 5))
    }

    @Test("vCPU: the PVCS container, section by section (format 2: the activity, tag 12)")
    func vcpuState() throws {
        var v = vcpu
        v.activity = 2
        let golden = Array("PVCS".utf8) + [2, 0, 9, 0] + vcpuSectionsFormat1 + section(12, le(2, 4))
        #expect(v.encoded() == golden)
        #expect(try VCPUState(encoded: golden) == v)
        // Format 1 still decodes (an active vCPU) and may not carry an activity.
        #expect(try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 8, 0] + vcpuSectionsFormat1) == vcpu)
        #expect(throws: StateCodingError.self) {
            try VCPUState(encoded: Array("PVCS".utf8) + [1, 0, 9, 0] + vcpuSectionsFormat1 + section(12, le(0, 4)))
        }
        // Activities beyond "halted" and a missing activity in format 2 are refused.
        #expect(throws: StateCodingError.badValue("vCPU activity 3")) {
            try VCPUState(encoded: Array("PVCS".utf8) + [2, 0, 9, 0] + vcpuSectionsFormat1 + section(12, le(3, 4)))
        }
        #expect(throws: StateCodingError.missingSection("activity")) {
            try VCPUState(encoded: Array("PVCS".utf8) + [2, 0, 8, 0] + vcpuSectionsFormat1)
        }
    }

    @Test("machine: format 3 carries the vCPU count (tag 6) and the serial section (tag 5); format 2 still decodes")
    func machineStateFormat3() throws {
        let serial = SerialPort.State(interruptEnable: 0, lineControl: 3, modemControl: 0, scratch: 0x42)
        let machine = MachineState(memorySize: 4 << 20, vcpus: [vcpu], clock: pattern(kvm_clock_data.self, 9),
                                   irqChips: nil, pv: nil, serial: serial)
        let golden = Array("PVMS".utf8) + [3, 0, 5, 0]
            + section(1, le(4 << 20, 8)) + section(6, le(1, 4)) + section(2, pattern(kvm_clock_data.self, 9))
            + section(5, [0, 3, 0, 0x42, 1, 0, 0, 0]) + section(0x100, vcpu.encoded())
        #expect(machine.encoded() == golden)
        #expect(try MachineState(encoded: golden) == machine)
        let format2 = Array("PVMS".utf8) + [2, 0, 4, 0]
            + section(1, le(4 << 20, 8)) + section(2, pattern(kvm_clock_data.self, 9))
            + section(5, [0, 3, 0, 0x42, 1, 0, 0, 0]) + section(0x100, vcpu.encoded())
        #expect(try MachineState(encoded: format2) == machine)
    }

    @Test("machine: a format-1 blob still decodes (no serial section), and may not carry one")
    func machineStateFormat1() throws {
        let body = section(1, le(4 << 20, 8)) + section(2, pattern(kvm_clock_data.self, 9)) + section(0x100, vcpu.encoded())
        let decoded = try MachineState(encoded: Array("PVMS".utf8) + [1, 0, 3, 0] + body)
        #expect(decoded.serial == nil && decoded.vcpus == [vcpu] && decoded.memorySize == 4 << 20)
        let withSerial = Array("PVMS".utf8) + [1, 0, 4, 0] + body + section(5, [0, 3, 0, 0, 1, 0, 0, 0])
        #expect(throws: StateCodingError.unknownSection(5)) { try MachineState(encoded: withSerial) }
        #expect(throws: StateCodingError.unsupportedVersion(5)) { try MachineState(encoded: Array("PVMS".utf8) + [5, 0, 0, 0]) }
    }
}
