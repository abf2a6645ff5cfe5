import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd {
    /// protocol.md §3.5.2: a guest that drops some of its PV dirty reports on purpose
    /// (`droplog=`, §1.7) never resumes corrupted at the destination. The verification sweep
    /// finds the pages it did not report, they are re-sent, and KVM's log covers the rest.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct UnderReportTests {
        typealias M = MigrationTests

        @Test(arguments: [DirtySourceMode.pvVerified, .pv])
        func underReportingGuestNeverResumesCorrupted(mode: DirtySourceMode) throws {
            let arrivals = M.Arrivals()
            let listener = try M.listener(arrivals)
            defer { listener.close() }
            // Sequential passes: a page whose report was dropped is not written again for a
            // whole pass, so at any time about 16,384 / 50 pages are stale at the destination.
            let (machine, console) = try M.source(
                "workload=dirty mib=64 passes=0 pattern=seq content=mixed change=1024 rate=40000 progress=0 droplog=50")
            #expect(machine.waitForPasses(1), "the guest finished no pass: \(console.text.suffix(300))")
            // Correctness, not downtime, is checked here: a roomy target keeps a loaded 2-core
            // machine (a slow harvest inflates the predicted fixed cost) from failing to converge.
            let stats = try M.sender(machine) { $0.dirtySource = mode; $0.downtimeTarget = 0.25 }
                .migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            #expect(arrivals.wait(count: 1))
            let vm = try #require(arrivals.vms.first)
            defer { vm.machine.stop(); vm.machine.waitForExit() }
            #expect(machine.waitForExit() == .stopped)
            // The chaos took effect and the sweep caught it (else this test proves nothing).
            #expect(stats.verification.underReportedPages > 0 && stats.verification.warning != nil, "\(stats.verification)")
            #expect(vm.stats.digest == stats.digest)
            // The guest's own check: every stamped page arrived with its last write.
            #expect(M.progresses(vm.machine), "the guest does not run on the destination")
            let console2 = try #require(arrivals.condition.withLock { arrivals.consoles.values.first })
            let (pages, bad) = try M.selfcheck(vm.machine, console2)
            #expect(pages >= 8192 && bad == 0, "\(pages) pages checked, \(bad) bad")
        }

        /// An honest guest under the default mode: the sweep runs and finds nothing missed.
        @Test func honestGuestHasNothingMissed() throws {
            let arrivals = M.Arrivals()
            let listener = try M.listener(arrivals)
            defer { listener.close() }
            let (machine, console) = try M.source(
                "workload=dirty mib=32 passes=0 pattern=random content=mixed rate=20000 progress=0")
            #expect(machine.waitForPasses(1), "the guest finished no pass: \(console.text.suffix(300))")
            // A roomy target, as above: this checks the sweep, not the downtime.
            let stats = try M.sender(machine) { $0.downtimeTarget = 0.25 }
                .migrate(to: "127.0.0.1", port: listener.port, tls: M.pki.src)
            #expect(arrivals.wait(count: 1))
            let vm = try #require(arrivals.vms.first)
            defer { vm.machine.stop(); vm.machine.waitForExit() }
            #expect(stats.dirtySource == .pvVerified)
            #expect(stats.verification.sweeps == 1 && stats.verification.pagesHashed > 0
                    && stats.verification.underReportedPages == 0, "\(stats.verification)")
            #expect(vm.stats.digest == stats.digest)
        }
    }
}
