import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// Boots the real built-in guest on the real /dev/kvm.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct BootTests {
        static func boot(_ cmdline: String, memory: UInt64 = 256 << 20, kernel: [UInt8] = GuestImage.elf)
            throws -> (Machine, WaitableConsole) {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: memory, kernel: kernel, commandLine: cmdline,
                                                           console: console))
            return (machine, console)
        }

        @Test func builtInGuestPrintsBannerWithMemorySize() throws {
            let (machine, console) = try Self.boot("workload=ticks count=2 interval=1", memory: 384 << 20)
            machine.start()
            #expect(machine.waitForExit() == .exitStatus(0))
            let lines = console.text.split(separator: "\n").map(String.init)
            #expect(lines.first == "pvguest: pvmigrate built-in guest, version 1")
            #expect(lines.contains("pvguest: memory 384 MiB"))
            #expect(lines.contains("tick 1"))
            #expect(lines.last == "pvguest: done")
            #expect(machine.pv.snapshot.guestVersion == 1)
        }

        @Test func guestAbove3GiBSeesAllItsMemory() throws {
            let (machine, console) = try Self.boot("workload=ticks count=1 interval=1", memory: 4 << 30)
            machine.start()
            #expect(machine.waitForExit() == .exitStatus(0))
            // RAM beyond 3 GiB sits at 4 GiB and up, so the highest RAM entry ends at 5 GiB.
            #expect(console.text.contains("pvguest: memory 5120 MiB"))
        }

        @Test func guestPanicEndsWithStatusOne() throws {
            let (machine, console) = try Self.boot("workload=dirty mib=1000", memory: 64 << 20)
            machine.start()
            #expect(machine.waitForExit() == .exitStatus(1))
            #expect(console.text.contains("pvguest: panic: dirty working set"))
        }

        @Test func malformedKernelFailsCleanly() throws {
            #expect(throws: MachineError.self) { _ = try Self.boot("", kernel: Array("garbage".utf8)) }
            do {
                _ = try Self.boot("", kernel: Array(GuestImage.elf.prefix(200)))
                Issue.record("a truncated kernel booted")
            } catch let MachineError.boot(e) {
                #expect(e.description.hasPrefix("cannot boot this kernel"))
            }
        }

        @Test func stopEndsARunningGuest() throws {
            let (machine, console) = try Self.boot("workload=idle")
            machine.start()
            #expect(console.wait(for: "workload idle"))
            // An idle PV guest sleeps through the PV port instead of spinning.
            Wait.until { machine.pv.snapshot.sleeps >= 2 }
            #expect(machine.pv.snapshot.sleeps >= 2)
            machine.stop()
            #expect(machine.waitForExit() == .stopped)
        }
    }
}
