import CKVM
import Core
import Testing

@Suite struct CPUIDTests {
    @Test func addsPvmigrateLeavesWithSignature() {
        var leaf1 = kvm_cpuid_entry2()
        leaf1.function = 1
        leaf1.ebx = 0xff00_1234
        let table = CPUIDTable.build(supported: [leaf1], vcpuID: 3, vcpuCount: 4, features: .pvmNative, tscKHz: 2_000_000)
        let sig = table.first { $0.function == 0x4000_0100 }
        let info = table.first { $0.function == 0x4000_0101 }
        let vcpus = table.first { $0.function == 0x4000_0102 }
        #expect(sig?.eax == 0x4000_0102)
        #expect(vcpus?.eax == 4 && vcpus?.ebx == 3) // the VM's vCPU count, this vCPU's index
        let bytes = [sig!.ebx, sig!.ecx, sig!.edx].flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        #expect(String(decoding: bytes, as: UTF8.self) == "PvMigrateVMM")
        #expect(info?.eax == 2 && info?.ebx == 1 && info?.ecx == 0x5650 && info?.edx == 2_000_000)
        #expect(table.first { $0.function == 1 }?.ebx == 0x0300_1234) // APIC ID in bits 31:24
    }

    @Test func noNativeFlagOffPVM() {
        let table = CPUIDTable.build(supported: [], vcpuID: 0, features: [], tscKHz: 0)
        #expect(table.first { $0.function == 0x4000_0101 }?.ebx == 0)
    }
}
