import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// The PV interface with the real built-in guest on the real KVM (protocol.md §2).
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct PVInterfaceEndToEndTests {
        static func boot(_ cmdline: String, memory: UInt64 = 256 << 20) throws -> (Machine, WaitableConsole) {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: memory, kernel: GuestImage.elf,
                                                           commandLine: cmdline, console: console))
            machine.start()
            return (machine, console)
        }


        /// Property: for every round, every page KVM saw written is in the guest's report (or
        /// was written by the VMM). Several seeds and access patterns; rounds are taken with
        /// the vCPU paused so both sources describe the same interval.
        @Test(arguments: [(1, "random"), (2, "hotspot"), (3, "seq"), (4, "random")])
        func pvReportCoversKVMEveryRound(seed: Int, pattern: String) throws {
            let (machine, console) = try Self.boot(
                "workload=dirty mib=48 passes=0 pattern=\(pattern) seed=\(seed) content=mixed change=512 progress=0")
            defer { machine.stop(); machine.waitForExit() }
            #expect(machine.waitUntilRegistered(), "the guest did not register: \(console.text)")
            let tracker = try DirtyTracker(machine: machine, mode: .hybrid)
            try tracker.start()
            var nonEmptyRounds = 0
            for round in 0..<8 {
                // Each round spans some guest writes (a varying number, so rounds end at different
                // points of the workload) — counted by the guest, not assumed from elapsed time.
                let mark = machine.guestPagesWritten
                #expect(machine.waitForPagesWritten(beyond: mark + 200 + 150 * UInt64(round % 3)),
                        "round \(round): the guest wrote nothing past \(mark)")
                machine.pause()
                let r = try tracker.harvest(vcpusPaused: true)
                machine.resume()
                let kvm = try #require(r.kvm), pv = try #require(machine.guestReport(r))
                let missed = kvm.subtracting(pv).subtracting(r.host)
                #expect(missed.isEmpty, "round \(round): \(missed.count) pages written but not reported, e.g. \(missed.indices.prefix(5))")
                #expect(!r.pvUntrustworthy)
                if kvm.count > 0 { nonEmptyRounds += 1 }
            }
            #expect(nonEmptyRounds >= 6, "the guest hardly dirtied anything")
            #expect(machine.pv.snapshot.totalRejected == 0)
        }

        /// A hostile guest: every invalid hypercall and ring/balloon value is rejected and
        /// counted by reason; the guest itself keeps running and the host is unharmed.
        @Test func chaosGuestIsRejectedAndCountedAndHostStaysHealthy() throws {
            let (machine, console) = try Self.boot("workload=chaos")
            #expect(machine.waitForExit() == .exitStatus(0), "\(console.text)")
            #expect(console.text.contains("pvguest: chaos done"))
            let r = machine.pv.snapshot.rejected
            let expected: [PVRejection: Int] = [
                .unknownOperation: 1, .badArgument: 4, .notRegistered: 2, .badControlArea: 2, .reRegistration: 1,
                .badBalloonRange: 5, .badConsoleLength: 2, .badRingEntry: 2, .badRingIndex: 1,
            ]
            #expect(r == expected)
            // The host still works: a fresh VM boots and runs normally.
            let (next, nextConsole) = try Self.boot("workload=ticks count=2 interval=1")
            #expect(next.waitForExit() == .exitStatus(0))
            #expect(nextConsole.text.contains("tick 1"))
        }

        /// Ballooned memory is released on the host (fewer resident pages) and reported as
        /// never to be sent.
        @Test func balloonReleasesHostMemory() throws {
            let (machine, console) = try Self.boot("workload=balloon mib=64", memory: 512 << 20)
            defer { machine.stop(); machine.waitForExit() }
            #expect(console.wait(for: "pvguest: balloon touched 64 MiB"), "\(console.text)")
            let touched = machine.memory.residentPages().count
            #expect(console.wait(for: "pvguest: balloon released 64 MiB"))
            let released = machine.memory.residentPages().count
            #expect(touched - released >= 16384 - 64, "resident pages \(touched) → \(released)")
            let ballooned = machine.pv.balloonedPages
            #expect(ballooned.count >= 16384)
            #expect(ballooned.subtracting(machine.memory.residentPages()) == ballooned,
                    "ballooned pages must not be resident on the host")
            // Ballooned pages are never to be sent: a harvest never reports them dirty. The guest
            // deflates the range again on its own (and the VMM then reports those pages, rightly,
            // as its own writes of zeros), so the vCPUs are paused and the set that is ballooned
            // while they are is what the harvest must leave out.
            machine.pause()
            let stillBallooned = machine.pv.balloonedPages
            let tracker = try DirtyTracker(machine: machine, mode: .hybrid)
            try tracker.start()
            let round = try tracker.harvest(vcpusPaused: true)
            #expect(round.pages.union(stillBallooned).count == round.pages.count + stillBallooned.count, "ballooned pages reported dirty")
            tracker.stop()
            machine.resume()
            #expect(console.wait(for: "pvguest: balloon zero check ok"))
            #expect(console.text.contains("pvguest: balloon ") && console.text.contains("MiB free"))
        }

        /// Guest-assisted slow-down: the host asks for a rate, the guest keeps to it, and speeds
        /// up again when the limit is lifted.
        @Test func guestHonoursTheHostThrottle() throws {
            let (machine, console) = try Self.boot("workload=dirty mib=32 passes=0 pattern=random progress=0")
            defer { machine.stop(); machine.waitForExit() }
            #expect(machine.waitUntilRegistered(), "\(console.text)")
            // The guest publishes its rate once per second of its own clock. Each phase waits for
            // the rate it should reach (a deadline only bounds a hang), and the last value seen is
            // what the assertion reports: a starved guest gets there later, a broken one never.
            var rate: UInt64 { machine.pv.guestCounters?.rate ?? 0 }
            var free: UInt64 = 0, throttled: UInt64 = 0, released: UInt64 = 0
            Wait.until { free = rate; return free > 30_000 }
            machine.pv.setThrottle(pagesPerSecond: 3000)
            Wait.until { throttled = rate; return throttled <= 3300 && throttled >= 1500 }
            machine.pv.setThrottle(pagesPerSecond: 0)
            Wait.until { released = rate; return released > 30_000 }
            #expect(throttled <= 3300 && throttled >= 1500, "throttled to 3000 pages/s, the guest wrote \(throttled)")
            #expect(free > 30_000 && released > 30_000, "unthrottled \(free) / \(released) pages/s")
        }

        /// The guest's self-check finds a page corrupted behind its back.
        @Test func selfcheckCatchesAnInjectedCorruption() throws {
            let (machine, console) = try Self.boot("workload=dirty mib=4 passes=3 rate=1000 pattern=seq progress=0")
            // Once the last pass has begun, slow the guest right down (the PV throttle) so that the
            // moment to corrupt lasts as long as the test needs, however busy the machine is.
            #expect(machine.waitForPasses(2), "\(console.text)")
            machine.pv.setThrottle(pagesPerSecond: 100)
            // Pause during the last pass and corrupt a page that pass has already rewritten.
            var corrupted = false
            Wait.until {
                machine.pause()
                if let target = Self.rewrittenPageBehindTheWriter(machine) {
                    target.storeBytes(of: target.load(fromByteOffset: 2000, as: UInt8.self) ^ 0x5a,
                                      toByteOffset: 2000, as: UInt8.self)
                    corrupted = true
                }
                machine.resume()
                return corrupted || machine.exit != nil
            }
            machine.pv.setThrottle(pagesPerSecond: 0)
            #expect(corrupted, "found no rewritten page behind the writer in the last pass")
            #expect(machine.waitForExit() == .exitStatus(0))
            #expect(console.text.contains("pvguest: selfcheck: 1024 pages, 1 bad"), "\(console.text)")
            #expect(machine.pv.guestCounters?.selfcheckBad == 1)
        }

        /// Without corruption the same run checks clean (the control for the test above).
        @Test func selfcheckIsCleanWithoutCorruption() throws {
            let (machine, console) = try Self.boot("workload=dirty mib=4 passes=2 pattern=random content=random progress=0")
            #expect(machine.waitForExit() == .exitStatus(0))
            #expect(console.text.contains(", 0 bad"), "\(console.text)")
            #expect(!console.text.contains(", 1 bad"))
        }

        /// A stamped page in the working set that the current pass has already written (seq
        /// pattern: below the in-flight page) and will not touch again, or nil.
        static func rewrittenPageBehindTheWriter(_ machine: Machine) -> UnsafeMutableRawBufferPointer? {
            let memory = machine.memory
            var firstStamped: Int?
            for index in 256..<memory.pageCount {
                guard let page = memory.page(atIndex: index) else { break }
                if case .good = PageStamp.verify(UnsafeRawBufferPointer(page), pfn: UInt64(index)) { firstStamped = index; break }
            }
            guard let first = firstStamped, let counters = machine.pv.guestCounters, counters.passes >= 2,
                  let inflight = Self.inflightPFN(machine), inflight > UInt64(first) + 8 else { return nil }
            return memory.page(atIndex: first)
        }

        static func inflightPFN(_ machine: Machine) -> UInt64? {
            // The control page is the guest's; find it through the saved PV state.
            guard let state = try? machine.saveState(), let control = state.pv?.controlPage, control != 0,
                  let pfn = try? machine.memory.readInteger(UInt64.self, at: GuestPhysicalAddress(control + 0x88)) else { return nil }
            return pfn
        }
    }
}
