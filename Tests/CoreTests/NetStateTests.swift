import CKVM
@testable import Core
import Foundation
import Testing

/// The PV NIC's section of the machine state (protocol.md §1.8 `net`, §5.8): its exact bytes,
/// format 4, and the refusal of hostile values before any VM sees them.
@Suite("NIC state: golden bytes, format 4, hostile values")
struct NetStateTests {
    let base = StateSavingTests()
    let mac = MACAddress("52:54:00:12:34:56")!

    var state: PVNet.State {
        PVNet.State(mac: mac, netPage: 0x30_0000, txCons: 0x1_0002, rxProd: 0xffff_fffe, rxVCPU: 1, announce: 3,
                    txFrames: 10, txBytes: 1000, rxFrames: 20, rxBytes: 2000, rxDropped: 5)
    }

    var golden: [UInt8] {
        [0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0]
            + base.le(0x30_0000, 8) + base.le(0x1_0002, 4) + base.le(0xffff_fffe, 4) + base.le(1, 4) + base.le(3, 4)
            + base.le(10, 8) + base.le(1000, 8) + base.le(20, 8) + base.le(2000, 8) + base.le(5, 8)
    }

    @Test("net: mac, u16 0, u64 net_page, u32 tx_cons, rx_prod, rx_vcpu, announce, 5 × u64 counters")
    func goldenBytes() throws {
        #expect(golden.count == PVNet.State.size)
        #expect(state.encoded() == golden)
        #expect(try PVNet.State(encoded: golden) == state)
        // The conformance peer (Tests/conformance/run.py, nic-section) reads the same bytes.
        let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("conformance/golden/net-section.bin")
        #expect(try [UInt8](Data(contentsOf: file)) == golden)
    }

    @Test("net: hostile values are refused with what is wrong", arguments: [
        ("short", 71), ("long", 73), ("reserved", 6), ("multicast", 0), ("zero MAC", -1),
        ("misaligned page", 8), ("page above 4 GiB", 13), ("indices without a page", 16), ("vCPU 8", 24),
    ])
    func hostileValues(_ flaw: String, _ at: Int) {
        var b = golden
        switch flaw {
        case "short": b = Array(b.prefix(at))
        case "long": b += [0]
        case "reserved", "multicast": b[at] |= 1
        case "zero MAC": b.replaceSubrange(0..<6, with: [0, 0, 0, 0, 0, 0])
        case "misaligned page": b[at] = 8
        case "page above 4 GiB": b[at] = 1 // byte 5 of net_page: 2⁴⁰
        case "indices without a page": b.replaceSubrange(8..<16, with: base.le(0, 8))
        default: b.replaceSubrange(at..<(at + 4), with: base.le(8, 4))
        }
        #expect(throws: StateCodingError.self, "\(flaw) was accepted") { try PVNet.State(encoded: b) }
    }

    @Test("machine: format 4 only with a net section (tag 7); format 3 may not carry one; rx_vcpu within the vCPUs")
    func machineFormat4() throws {
        let clock = base.pattern(kvm_clock_data.self, 9)
        let v = base.vcpu
        let machine = MachineState(memorySize: 4 << 20, vcpus: [v], clock: clock, irqChips: nil, pv: nil, serial: nil,
                                   net: state)
        var onVCPU0 = state
        onVCPU0.rxVCPU = 0
        let ok = MachineState(memorySize: 4 << 20, vcpus: [v], clock: clock, irqChips: nil, pv: nil, serial: nil, net: onVCPU0)
        let body = base.section(1, base.le(4 << 20, 8)) + base.section(6, base.le(1, 4)) + base.section(2, clock)
        let format4 = Array("PVMS".utf8) + [4, 0, 5, 0] + body + base.section(7, onVCPU0.encoded()) + base.section(0x100, v.encoded())
        #expect(ok.encoded() == format4)
        #expect(try MachineState(encoded: format4) == ok)
        // A VM without a NIC is still written as format 3 (a format-3 reader takes it).
        var without = ok
        without.net = nil
        #expect(Array(without.encoded()[4..<6]) == [3, 0])
        let format3 = Array("PVMS".utf8) + [3, 0, 5, 0] + body + base.section(7, onVCPU0.encoded()) + base.section(0x100, v.encoded())
        #expect(throws: StateCodingError.unknownSection(7)) { try MachineState(encoded: format3) }
        // rx_vcpu 1 in a 1-vCPU machine.
        #expect(throws: StateCodingError.self) { try MachineState(encoded: machine.encoded()) }
    }
}
