import Core
import Foundation
import Migrate
import Testing
import TestSupport

extension EndToEnd.MigrationTests {
    /// Under the default mode KVM's log vouches for the guest's always-dirty ranges after the
    /// sweep's first harvest (protocol.md §3.5.1), so the final round carries only what changed
    /// there. The guest keeps writing those pages (its stack, data, dirty ring, de-duplication
    /// bitmap) through the sweep and the final round: each such write still reaches the
    /// destination — the digests agree, the guest runs on and its self-check is clean.
    @Test func alwaysDirtyWritesAfterTheSweepReachTheDestination() throws {
        let arrivals = Arrivals()
        let listener = try Self.listener(arrivals)
        defer { listener.close() }
        // A slow writer: the final set is then mostly what changed in the always-dirty ranges.
        let (machine, console) = try Self.source("workload=dirty mib=2 passes=0 pattern=seq rate=500 progress=0")
        #expect(machine.waitForPasses(1), "the guest finished no pass: \(console.text.suffix(300))")
        let alwaysDirty = machine.pv.alwaysDirtyPageRanges.reduce(0) { $0 + $1.count }
        let sender = Self.sender(machine)  // the default: pv-verified
        let stats = try sender.migrate(to: "127.0.0.1", port: listener.port, tls: Self.pki.src)
        #expect(arrivals.wait(count: 1))
        let vm = try #require(arrivals.vms.first)
        defer { vm.machine.stop(); vm.machine.waitForExit() }
        #expect(machine.waitForExit() == .stopped)
        #expect(stats.dirtySource == .pvVerified && stats.verification.sweeps >= 1)
        #expect(vm.stats.digest == stats.digest)
        #expect(stats.verification.underReportedPages == 0, "\(stats.verification)")
        // Unvouched, every always-dirty page would be in the final round; the guest writes
        // about 500 pages/s elsewhere, so a pause-to-pause interval would need ~0.2 s for
        // its own pages to make up the difference.
        #expect(stats.finalPages < alwaysDirty, "final round \(stats.finalPages) pages, \(alwaysDirty) always-dirty")
        #expect(Self.progresses(vm.machine), "the guest does not run on the destination")
        let console2 = try #require(arrivals.condition.withLock { arrivals.consoles.values.first })
        let (pages, bad) = try Self.selfcheck(vm.machine, console2)
        #expect(pages >= 256 && bad == 0, "\(pages) pages checked, \(bad) bad")
    }
}
