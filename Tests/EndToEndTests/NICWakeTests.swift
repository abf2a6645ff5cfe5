@testable import Core
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// Received frames wake only the vCPU that attached the NIC (protocol.md §5.5): a real
    /// 2-vCPU machine (not started), its NIC attached as if by vCPU 1, one frame delivered.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct NICWakeTests {
        @Test func anRXWakeReachesOnlyTheVCPUThatAttachedTheNIC() throws {
            var c = Machine.Configuration(memorySize: 16 << 20, kernel: [], console: ConsoleBuffer())
            c.vcpuCount = 2
            c.netMAC = MACAddress("52:54:00:00:00:01")
            let machine = try Machine(restoring: c)
            let nic = try #require(machine.net)
            let net: UInt64 = 0x30_0000, tx: UInt64 = 0x30_1000, rx: UInt64 = 0x30_2000, buffer: UInt64 = 0x40_0000
            func put32(_ gpa: UInt64, _ v: UInt32) throws { try machine.memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
            func put64(_ gpa: UInt64, _ v: UInt64) throws { try machine.memory.writeInteger(v, at: GuestPhysicalAddress(gpa)) }
            try put32(net, 0x544e_5650); try put32(net + 4, 2); try put64(net + 8, tx); try put64(net + 0x10, rx)
            try put32(net + 0x18, 8); try put32(net + 0x1c, 8)
            #expect(nic.attach(pfn: net >> 12, pvRanges: []))
            machine.vcpus[1].onNetAttached?(1) // what vCPU 1's thread does on IOAction.netAttached
            #expect(nic.rxVCPU == 1)
            try put64(rx, buffer); try put32(rx + 8, 2048)
            try put32(net + 0x84, 1) // rx_avail: one buffer
            try put32(net + 0x88, 0) // rx_event: wake me at the first frame
            nic.setQuiesced(false)
            let frame = [UInt8](repeating: 0xff, count: 60)
            #expect(frame.withUnsafeBytes { nic.deliver([$0]) })
            #expect(nic.snapshot.wakes == 1 && nic.snapshot.rxFrames == 1)
            #expect(machine.vcpus[1].hasPendingWake, "the RX vCPU was not woken")
            #expect(!machine.vcpus[0].hasPendingWake, "another vCPU's sleep was cut short")
        }
    }
}
