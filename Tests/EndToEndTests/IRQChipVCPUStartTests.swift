import Core
import Foundation
import Testing
import TestSupport

extension EndToEnd {
    /// With an in-kernel irqchip KVM holds the APs until INIT/SIPI; VCPU_START still starts
    /// them (KVM_SET_MP_STATE, protocol.md §2.10), so the built-in guest runs on every vCPU —
    /// natively — with or without one, and a save → restore carries the started APs along.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct IRQChipVCPUStartTests {
        typealias M = MigrationTests
        typealias V = MultiVCPUTests

        static func configuration(_ cmdline: String, console: WaitableConsole) -> Machine.Configuration {
            var c = V.configuration(cmdline, vcpus: 2, console: console)
            c.inKernelIRQChip = true
            return c
        }

        /// Both ways to start an AP work with the irqchip: VCPU_START (the default) and the
        /// standard INIT/SIPI (`apstart=sipi`: x2APIC ICR, real-mode trampoline — emulated by PVM
        /// — then long mode and native).
        @Test(arguments: [("", "VCPU_START"), (" apstart=sipi", "INIT/SIPI")])
        func builtInGuestStartsItsAPsWithAnInKernelIRQChip(option: String, path: String) throws {
            let console = WaitableConsole()
            let source = try Machine(configuration: Self.configuration(V.dirty + option, console: console))
            #expect(source.vm.irqChipCreated)
            source.start()
            defer { source.stop(); source.waitForExit() }
            #expect(console.wait(for: "pvguest: vcpus 2 up (\(path))"), "the AP did not come up: \(console.text.suffix(400))")
            #expect(source.pv.snapshot.totalRejected == 0, "VCPU_START refused: \(source.pv.snapshot)")
            try V.expectNative(source, console)
            #expect(V.everyVCPUProgresses(source), "a vCPU writes nothing: \(source.pv.guestCounters?.perVCPU ?? [])")

            let second = WaitableConsole()
            let (target, _) = try V.restoredCopy(of: source, Self.configuration("", console: second))
            defer { target.stop(); target.waitForExit() }
            #expect(V.everyVCPUProgresses(target), "a vCPU is stuck after restore: \(second.text.suffix(300))")
            let (pages, bad) = try M.selfcheck(target, second)
            #expect(pages > 0 && bad == 0, "\(pages) pages checked, \(bad) bad")
        }

        /// INIT/SIPI needs a LAPIC: without the irqchip the guest's ICR write faults and it
        /// panics (it does not hang), as protocol.md §2.10 says.
        @Test func initSIPIWithoutAnIRQChipFailsLoudly() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: V.configuration(V.dirty + " apstart=sipi", vcpus: 2, console: console))
            machine.start()
            #expect(machine.waitForExit() == .exitStatus(1))
            #expect(console.text.contains("pvguest: panic: exception 13"), "\(console.text.suffix(300))")
        }

        /// `pvmigrate run --irqchip`: the built-in guest brings its second vCPU up, dirties on
        /// both, self-checks clean and exits 0.
        @Test func runWithIRQChipBootsEveryVCPU() throws {
            let runtime = NSTemporaryDirectory() + "pvm-irq-\(getpid())"
            defer { try? FileManager.default.removeItem(atPath: runtime) }
            let r = try PVMigrateBinary.run(["run", "--irqchip", "--vcpus", "2", "--memory", "64M", "--cmdline",
                                             "workload=dirty mib=4 passes=2 progress=0"],
                                            runtimeDirectory: runtime, timeout: 120)
            #expect(r.status == 0, "\(r.text)")
            #expect(r.stdout.contains("pvguest: vcpus 2 up") && r.stdout.contains(", 0 bad"), "\(r.text)")
        }
    }
}
