import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// vCPU state capture, encoding, and save → restore into a second VM.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct SaveRestoreTests {
        static let ticks = 40
        static let cmdline = "workload=ticks count=\(ticks) interval=15"

        static func expectedOutput(nativeLine: String, balloonLine: String) -> String {
            var s = "pvguest: pvmigrate built-in guest, version 1\npvguest: memory 128 MiB\n\(nativeLine)\n"
                + "pvguest: pv registered, ring 16384 entries\(HarvestBarrier.isAvailable ? ", no fence" : "")\n\(balloonLine)\npvguest: workload ticks\n"
            for i in 0..<ticks { s += "tick \(i)\n" }
            return s + "pvguest: done\n"
        }

        /// The real state of a running guest survives encode → decode unchanged.
        @Test func capturedStateRoundTripsThroughBytes() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 128 << 20, kernel: GuestImage.elf,
                                                           commandLine: Self.cmdline, console: console))
            machine.start()
            #expect(console.wait(for: "tick 2"))
            machine.pause()
            let state = try machine.saveState()
            machine.stop()
            let bytes = state.encoded()
            let decoded = try MachineState(encoded: bytes)
            #expect(decoded == state)
            #expect(decoded.encoded() == bytes)
            let vcpu = try #require(decoded.vcpus.first)
            #expect(try VCPUState(encoded: vcpu.encoded()) == vcpu)
            // A 64-bit guest: long mode active, RIP inside the image at 1 MiB and up.
            #expect(vcpu.specialRegisters.efer & 0x400 != 0)
            #expect(vcpu.registers.rip >= 0x10_0000)
            #expect(!vcpu.msrs.isEmpty)
            if machine.isPVMHost { #expect(vcpu.msrs.contains { $0.index == PVM.vifMSR && $0.value != 0 }) }
        }

        /// The guest continues where it stopped: the console of the first VM followed by the
        /// console of the second is exactly the uninterrupted output — no tick lost or repeated.
        /// With and without an in-kernel irqchip (whose PIC/IOAPIC/LAPIC state then travels too).
        @Test(arguments: [false, true])
        func saveRestoreIntoSecondVMContinuesTheGuest(irqChip: Bool) throws {
            let first = WaitableConsole()
            let config = Machine.Configuration(memorySize: 128 << 20, kernel: GuestImage.elf, commandLine: Self.cmdline,
                                               inKernelIRQChip: irqChip, console: first)
            let source = try Machine(configuration: config)
            source.start()
            #expect(first.wait(for: "tick 10"))
            source.pause()
            let state = try MachineState(encoded: try source.saveState().encoded())
            #expect(state.vcpus[0].hasLAPIC == irqChip)

            let second = WaitableConsole()
            var targetConfig = config
            targetConfig.console = second
            let target = try Machine(restoring: targetConfig)
            try target.memory.copyContents(from: source.memory)
            let refused = try target.restore(state)
            source.stop()
            #expect(source.waitForExit() == .stopped)
            #expect(refused.isEmpty, "MSRs refused on restore: \(refused.map { String($0, radix: 16) })")

            target.start()
            #expect(target.waitForExit() == .exitStatus(0))
            let nativeLine = source.isPVMHost ? "pvguest: pv interface v1, execution native"
                                              : "pvguest: pv interface v1, execution emulated"
            // The balloon size depends on the guest's layout; the line itself must be there.
            let balloonLine = try #require(first.text.split(separator: "\n").first { $0.hasPrefix("pvguest: balloon ") })
            #expect(first.text + second.text == Self.expectedOutput(nativeLine: nativeLine, balloonLine: String(balloonLine)))
            // The PV interface moved with the guest: its console hypercalls are accepted there.
            #expect(target.pv.isRegistered && target.pv.snapshot.consoleWrites > 0)
            #expect(target.pv.snapshot.totalRejected == 0)
            #expect(second.text.hasPrefix("tick") || !second.text.hasPrefix("pvguest"), "the second VM rebooted")
            #expect(!second.text.isEmpty && second.text.count < first.text.count + second.text.count)
            #expect(try target.executionMode() == (target.isPVMHost ? .native : .hardware))
        }

        @Test func restoreRejectsMismatchedMachine() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 128 << 20, kernel: GuestImage.elf,
                                                           commandLine: "workload=idle", console: console))
            let state = try machine.saveState() // not started: quiescent
            let other = try Machine(restoring: .init(memorySize: 64 << 20, kernel: [], console: console))
            #expect(throws: MachineError.self) { try other.restore(state) }
            machine.start()
            #expect(console.wait(for: "workload idle"))
            #expect(throws: MachineError.self) { _ = try machine.saveState() } // running: refused
            machine.stop()
        }
    }
}
