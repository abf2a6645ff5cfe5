@testable import Core
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// A Machine that is gone takes its guest memory with it: nothing it built (vCPU threads,
    /// their exit and VCPU_START closures, the PV NIC's wake-up) keeps a cycle alive. A listener
    /// hosts one VM after another and `bench` runs case after case in one process; a leaked
    /// 8 GiB guest ended a `bench --cases resident-4g resident-8g` run in the OOM killer.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct MachineLifetimeTests {
        @Test func aMachineBuiltWithSeveralVCPUsAndANICReleasesItsMemory() throws {
            weak var memory: GuestMemory?
            do {
                var c = Machine.Configuration(memorySize: 16 << 20, kernel: [], console: ConsoleBuffer())
                c.vcpuCount = 2
                c.netMAC = MACAddress("52:54:00:00:00:02")
                let machine = try Machine(restoring: c)
                memory = machine.memory
            }
            #expect(memory == nil, "the guest memory outlived its Machine (a reference cycle)")
        }

        @Test func aMachineThatRanAndStoppedReleasesItsMemory() throws {
            weak var memory: GuestMemory?
            do {
                let (machine, _) = try MultiVCPUTests.boot(MultiVCPUTests.dirty, vcpus: 2)
                memory = machine.memory
                machine.stop()
                _ = machine.waitForExit()
            }
            // The vCPU threads let go of their last references as they end, just after the exit
            // is published: wait for that, bounded.
            #expect(Wait.until { memory == nil }, "the guest memory outlived its stopped Machine (a reference cycle)")
        }
    }
}
