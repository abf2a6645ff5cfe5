import Core
import Foundation
import GuestImage
import Testing
import TestSupport

extension EndToEnd {
    /// The guest's fence-free logging path (HARVEST_BARRIER, protocol.md §2.3) with harvests
    /// taken while the vCPU runs, as a migration's pre-copy rounds take them.
    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct PVFastPathTests {
        /// Property: a page KVM saw written in round k is reported by the guest in round k − 1,
        /// k or k + 1 — never lost. (k + 1: the guest logs after its write, so a write
        /// straddling a harvest lands in the next round. k − 1: KVM is harvested just before
        /// the ring, so a write between the two whose page the guest had already logged in
        /// the old generation is covered by the ring's harvest of that round, which reads the
        /// page after its barrier.) The working set is small and rewritten many times per
        /// round, so nearly every write takes the fast path: a guest that missed a generation
        /// change would never report its later writes, and the next rounds would show them.
        @Test(arguments: [(5, "seq"), (6, "random")])
        func runningHarvestsLoseNoWrite(seed: Int, pattern: String) throws {
            try #require(HarvestBarrier.isAvailable, "membarrier(2) expedited is not available on this kernel")
            let console = WaitableConsole()
            let machine = try Machine(configuration: .init(
                memorySize: 256 << 20, kernel: GuestImage.elf,
                commandLine: "workload=dirty mib=2 passes=0 pattern=\(pattern) seed=\(seed) content=stamp progress=0",
                console: console))
            machine.start()
            defer { machine.stop(); machine.waitForExit() }
            #expect(machine.waitUntilRegistered(), "the guest did not register: \(console.text)")
            #expect(console.wait(for: "no fence"), "the guest did not take the fence-free path: \(console.text)")
            let tracker = try DirtyTracker(machine: machine, mode: .hybrid)
            try tracker.start()
            var rounds: [(kvm: PageBitmap, reported: PageBitmap)] = []
            for round in 0..<12 {
                let mark = machine.guestPagesWritten
                // 2 MiB is 512 pages: each round rewrites the working set several times over.
                #expect(machine.waitForPagesWritten(beyond: mark + 2_000 + 700 * UInt64(round % 3)),
                        "round \(round): the guest wrote nothing past \(mark)")
                let r = try tracker.harvest(vcpusPaused: false)
                let kvm = try #require(r.kvm), pv = try #require(machine.guestReport(r))
                #expect(!r.pvUntrustworthy, "round \(round): the harvest could not fence the vCPU")
                rounds.append((kvm, pv.union(r.host)))
            }
            var compared = 0
            for k in 1..<(rounds.count - 1) {
                let missed = rounds[k].kvm.subtracting(rounds[k - 1].reported).subtracting(rounds[k].reported)
                    .subtracting(rounds[k + 1].reported)
                let lost = missed.count
                #expect(lost == 0, """
                    round \(k): \(lost) pages KVM saw written were reported in none of rounds \(k - 1)...\(k + 1), \
                    e.g. \(Array(missed.indices.prefix(5)))
                    """)
                if rounds[k].kvm.count > 0 { compared += 1 }
            }
            #expect(compared >= 8, "the guest hardly dirtied anything (\(compared) non-empty rounds compared)")
            #expect(machine.pv.snapshot.totalRejected == 0)
        }
    }
}
