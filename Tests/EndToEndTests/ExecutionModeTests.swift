import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// On PVM hosts the built-in guest must run natively; a guest that did not ask must not be
    /// switched (it keeps booting, emulated). On hardware KVM everything is "hardware".
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct ExecutionModeTests {
        /// 32 MiB × 8 passes = 33.5 million 8-byte stores. Natively that is well under a second
        /// (~2 ns per store); emulated (~6 µs per store) it would take over three minutes, so a
        /// 20-second bound cannot be met by an emulated guest, however noisy the machine.
        @Test func builtInGuestRunsNatively() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 128 << 20, kernel: GuestImage.elf,
                                                           commandLine: "workload=dirty mib=32 passes=8", console: console))
            let started = ContinuousClock.now
            machine.start()
            #expect(machine.waitForExit() == .exitStatus(0))
            let elapsed = ContinuousClock.now - started
            #expect(console.text.contains("pvguest: pass 7 done: 8192 pages, 4194304 stores"))
            // A bound that separates native from emulated by two orders of magnitude, not an
        // assumption about this machine's speed: a starved native guest stays far below it.
        #expect(elapsed < .seconds(20), "33.5M stores took \(elapsed): the guest is not running natively")
            #expect(try machine.executionMode() == (machine.isPVMHost ? .native : .hardware))
            if machine.isPVMHost { #expect(console.text.contains("pv interface v1, execution native")) }
        }

        /// A PVH guest that never registers a VIF page (page tables or none, it did not ask)
        /// boots as before: emulated on PVM.
        @Test func foreignGuestIsNotSwitched() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 16 << 20, kernel: TestELF.helloGuest(),
                                                           console: console))
            machine.start()
            #expect(machine.waitForExit() == .halted)
            #expect(console.text == "OK\n")
            #expect(try machine.executionMode() == (machine.isPVMHost ? .emulated : .hardware))
            #expect(machine.pv.snapshot.guestVersion == nil)
        }
    }
}
