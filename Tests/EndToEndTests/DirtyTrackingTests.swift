@testable import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// Dirty-page sources on the real KVM: the bitmap, the KVM dirty ring, and VMM writes.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct DirtyTrackingTests {
        static func boot(_ cmdline: String, ring: UInt32? = nil) throws -> (Machine, WaitableConsole) {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 256 << 20, kernel: GuestImage.elf, commandLine: cmdline,
                                                           kvmDirtyRingEntries: ring, console: console))
            return (machine, console)
        }

        /// A guest writing its 8 MiB working set page after page, KVM's bitmap tracking it,
        /// once its first pass is done.
        static func sequentialWriterAfterOnePass() throws -> (Machine, DirtyTracker) {
            let (machine, console) = try Self.boot("workload=dirty mib=8 passes=0 pattern=seq rate=20000 progress=0")
            let tracker = try DirtyTracker(machine: machine, mode: .kvm)
            try tracker.start()
            machine.start()
            #expect(console.wait(for: "pass 1 done"), "\(console.text)")
            return (machine, tracker)
        }

        /// KVM's bitmap sees a full sequential pass over the working set, and the VMM's own
        /// writes (invisible to KVM) are reported too.
        @Test func kvmBitmapSeesTheWorkingSetAndVMMWrites() throws {
            let (machine, tracker) = try Self.sequentialWriterAfterOnePass()
            defer { machine.stop(); machine.waitForExit() }
            machine.pause()
            _ = try tracker.harvest(vcpusPaused: true)
            // Re-armed exactly (KVM_CLEAR_DIRTY_LOG on the set spans only, with manual protect):
            // with no guest write since, the next harvest finds nothing left in KVM's log.
            let again = try #require(try tracker.harvest(vcpusPaused: true).kvm)
            #expect(again.isEmpty, "KVM's log still held \(again.count) pages after a harvest with the guest paused")
            let base = machine.pv.guestCounters?.pagesWritten ?? 0
            machine.resume()
            // Wait for two full sequential passes' worth of page writes (4096), by the guest's count.
            #expect(machine.waitForPagesWritten(beyond: base + 4095), "the guest wrote \(machine.guestPagesWritten - base) of 4096 pages")
            machine.pause()
            let round = try tracker.harvest(vcpusPaused: true)
            // 4096 consecutive sequential writes cover all 2048 pages of the working set.
            #expect(try #require(round.kvm).count >= 2048)
            let page = GuestPhysicalAddress(0x3000)
            try machine.memory.write([1, 2, 3], at: page)
            let next = try tracker.harvest(vcpusPaused: true)
            machine.resume()
            let index = try #require(machine.memory.pageIndex(of: page.frame))
            #expect(next.host.contains(index) && next.pages.contains(index))
            #expect(!(next.kvm?.contains(index) ?? true), "KVM does not see VMM writes; the tracker must")
        }

        /// The last harvest (a migration's paused final round) reports what the guest wrote but
        /// does not re-arm KVM's log with KVM_CLEAR_DIRTY_LOG; the others do, with manual protect.
        @Test func theLastHarvestReportsTheWritesWithoutReArming() throws {
            let (machine, tracker) = try Self.sequentialWriterAfterOnePass()
            defer { machine.stop(); machine.waitForExit() }
            machine.pause()
            let first = try tracker.harvest(vcpusPaused: true)
            let base = machine.pv.guestCounters?.pagesWritten ?? 0
            #expect(try #require(first.kvm).count > 0)
            #expect((first.kvmRearmSeconds > 0) == machine.manualProtectEnabled.value,
                    "re-armed for \(first.kvmRearmSeconds) s, manual protect \(machine.manualProtectEnabled.value)")
            machine.resume()
            #expect(machine.waitForPagesWritten(beyond: base + 4095), "the guest wrote \(machine.guestPagesWritten - base) of 4096 pages")
            machine.pause()
            let last = try tracker.harvest(vcpusPaused: true, last: true)
            tracker.stop()
            #expect(try #require(last.kvm).count >= 2048, "4096 sequential writes cover the 2048 pages of the working set")
            #expect(last.kvmRearmSeconds == 0)
            machine.resume()
        }

        /// KVM's dirty ring as the KVM source: with a natively running guest it reports what the
        /// guest writes, and every page it reports is one the guest's PV ring reported too.
        @Test func kvmDirtyRingAgreesWithThePVRing() throws {
            let (machine, console) = try Self.boot("workload=dirty mib=16 passes=0 pattern=random rate=50000 progress=0",
                                                   ring: 4096)
            machine.start()
            defer { machine.stop(); machine.waitForExit() }
            #expect(machine.waitUntilRegistered(), "\(console.text)")
            if machine.isPVMHost {
                #expect(throws: DirtyTrackingError.ringNotTrustedAlone) { _ = try DirtyTracker(machine: machine, mode: .kvm) }
            }
            let tracker = try DirtyTracker(machine: machine, mode: .hybrid)
            try tracker.start()
            var ringPages = 0
            for round in 0..<5 {
                // Each round spans at least 64 guest page writes, counted by the guest itself.
                let mark = machine.guestPagesWritten
                #expect(machine.waitForPagesWritten(beyond: mark + 63), "round \(round): the guest wrote nothing past \(mark)")
                machine.pause()
                let r = try tracker.harvest(vcpusPaused: true)
                machine.resume()
                let kvm = try #require(r.kvm)
                let pv = try #require(machine.guestReport(r))  // KVM's ring never vouches
                #expect(!r.kvmUntrustworthy && !r.alwaysDirtyVouched && r.alwaysDirtyPages > 0)
                #expect(kvm.subtracting(pv).subtracting(r.host).isEmpty)
                ringPages += kvm.count
            }
            #expect(ringPages > 100, "the KVM dirty ring reported almost nothing")
            #expect(machine.exit == nil, "\(String(describing: machine.exit))")
        }

        /// The bytes of every page in `ranges` (page indices), read with the guest paused.
        static func contents(_ memory: GuestMemory, _ ranges: [Range<Int>]) throws -> [Int: [UInt8]] {
            var out: [Int: [UInt8]] = [:]
            for page in ranges.joined() { out[page] = try memory.read(at: Self.address(memory, page: page), count: 4096) }
            return out
        }

        static func address(_ memory: GuestMemory, page: Int) -> GuestPhysicalAddress {
            var first = 0
            for region in memory.regions {
                if page < first + region.pageCount {
                    return GuestPhysicalAddress(region.range.start.raw + UInt64(page - first) * GuestPhysicalAddress.pageSize)
                }
                first += region.pageCount
            }
            return GuestPhysicalAddress(UInt64.max & ~4095)
        }

        /// A running guest writing 8 MiB at random, registered, tracked under `pv-verified`
        /// (the PV ring only, until `addKVM`).
        static func registeredWriterUnderPVVerified() throws -> (Machine, DirtyTracker) {
            let (machine, console) = try Self.boot("workload=dirty mib=8 passes=0 pattern=random rate=20000 progress=0")
            machine.start()
            #expect(machine.waitUntilRegistered(), "\(console.text)")
            let tracker = try DirtyTracker(machine: machine, mode: .pvVerified)
            try tracker.start()
            return (machine, tracker)
        }

        /// Once KVM's log has watched a whole interval (`pv-verified` after the sweep began),
        /// a round leaves out the always-dirty pages nothing wrote — but every page of those
        /// ranges the guest changed is still in it, and so are the VIF pages and the VMM's
        /// writes. The first harvest after KVM's log went on still carries all of them.
        @Test func alwaysDirtyPagesTheGuestChangesAreStillSentOnceKVMVouchesForThem() throws {
            let (machine, tracker) = try Self.registeredWriterUnderPVVerified()
            defer { machine.stop(); machine.waitForExit() }
            let precopy = try tracker.harvest(vcpusPaused: false)
            #expect(!precopy.alwaysDirtyVouched && precopy.kvm == nil)
            try tracker.addKVM()  // the verification sweep's start
            let ranges = machine.pv.alwaysDirtyPageRanges
            let total = ranges.reduce(0) { $0 + $1.count }
            #expect(total > 0)
            machine.pause()
            let first = try tracker.harvest(vcpusPaused: true)
            #expect(!first.alwaysDirtyVouched && first.alwaysDirtyPages == total)
            #expect(ranges.joined().allSatisfy { first.pages.contains($0) }, "writes before KVM's log went on are in no log")
            var before = try Self.contents(machine.memory, ranges)
            let vif = try machine.registeredVIFPages().compactMap { machine.memory.pageIndex(of: $0.frame) }
            #expect(vif.isEmpty != machine.isPVMHost, "VIF pages \(vif) on a PVM host: \(machine.isPVMHost)")
            machine.resume()
            for round in 0..<3 {
                let mark = machine.guestPagesWritten
                #expect(machine.waitForPagesWritten(beyond: mark + 63), "round \(round): the guest wrote nothing past \(mark)")
                machine.pause()
                let r = try tracker.harvest(vcpusPaused: true)
                let after = try Self.contents(machine.memory, ranges)
                machine.resume()
                #expect(r.alwaysDirtyVouched && r.alwaysDirtyPages == 0)
                let changed = ranges.joined().filter { before[$0] != after[$0] }
                // The guest's own stores there (its stack, dirty ring, de-duplication bitmap).
                #expect(!changed.isEmpty, "round \(round): the guest changed none of its always-dirty pages")
                let missing = changed.filter { !r.pages.contains($0) }
                #expect(missing.isEmpty, "round \(round): changed always-dirty pages not sent: \(missing)")
                #expect(vif.allSatisfy { r.pages.contains($0) }, "round \(round): a VIF page was left out")
                let sent = ranges.joined().filter { r.pages.contains($0) }.count
                #expect(sent < total, "round \(round): all \(total) always-dirty pages sent although KVM vouched")
                before = after
            }
            // A VMM write into an always-dirty page (KVM does not log it) is sent too. It
            // stores the byte that is there: the page may hold the guest's code.
            machine.pause()
            _ = try tracker.harvest(vcpusPaused: true)
            let page = try #require(ranges.joined().first { !vif.contains($0) })
            let at = Self.address(machine.memory, page: page)
            try machine.memory.write(try machine.memory.read(at: at, count: 1), at: at)
            let last = try tracker.harvest(vcpusPaused: true, last: true)
            // The paused state's VIF pages are those the rounds relied on; another one would
            // not be in any round: the migration must not commit then.
            let state = try machine.saveState()
            machine.resume()
            #expect(last.alwaysDirtyVouched && last.pages.contains(page) && last.host.contains(page))
            #expect(state.registeredVIFPages.compactMap { machine.memory.pageIndex(of: $0.frame) } == vif)
            try tracker.confirmVIFPages(state.registeredVIFPages)
            #expect(throws: DirtyTrackingError.vifPageMoved) {
                try tracker.confirmVIFPages(state.registeredVIFPages + [GuestPhysicalAddress(0x20_0000)])
            }
            tracker.stop()
        }

        /// Until a harvest has relied on KVM's log for the always-dirty ranges, the VIF pages the
        /// tracker read do not matter: any registration at the pause is accepted.
        @Test func vifPagesAreCheckedOnlyAfterAHarvestReliedOnThem() throws {
            let (machine, tracker) = try Self.registeredWriterUnderPVVerified()
            defer { machine.stop(); machine.waitForExit() }
            try tracker.addKVM()
            let first = try tracker.harvest(vcpusPaused: false)
            #expect(!first.alwaysDirtyVouched)
            try tracker.confirmVIFPages([GuestPhysicalAddress(0x20_0000)])
            #expect(try tracker.harvest(vcpusPaused: false).alwaysDirtyVouched)
            #expect(throws: DirtyTrackingError.vifPageMoved) { try tracker.confirmVIFPages([GuestPhysicalAddress(0x20_0000)]) }
            tracker.stop()
        }

        /// The watchdog: a ring that keeps "filling" with nothing to harvest (the PVM failure
        /// mode) is declared broken; the VM's vCPU is told to stop instead of spinning, and every
        /// later harvest reports all pages dirty rather than trusting the ring.
        @Test func dirtyRingWatchdogGivesUpAndDistrustsTheRing() throws {
            let (machine, _) = try Self.boot("workload=idle", ring: 256)
            let ring = try #require(machine.dirtyRing)
            for _ in 1..<DirtyRingCollector.watchdogLimit {
                #expect(ring.ringFull(memory: machine.memory, vm: machine.vm))
            }
            #expect(!ring.ringFull(memory: machine.memory, vm: machine.vm))
            let tracker = try DirtyTracker(machine: machine, mode: .hybrid)
            try tracker.start()
            let round = try tracker.harvest(vcpusPaused: true)
            #expect(round.kvmUntrustworthy && round.pages.count == machine.memory.pageCount)
        }

        @Test func missingKVMDeviceSaysWhatToDo() {
            do {
                _ = try Hypervisor(path: "/dev/no-such-kvm")
                Issue.record("opened a missing device")
            } catch {
                #expect(error.description.contains("load the kvm module"))
            }
        }

        @Test func pvModeNeedsAPVGuest() throws {
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(memorySize: 16 << 20, kernel: TestELF.helloGuest(), console: console))
            #expect(throws: DirtyTrackingError.guestNotPVAware) { _ = try DirtyTracker(machine: machine, mode: .pv) }
        }
    }
}
