@testable import Core
import Foundation
import Testing

/// NET_SLEEP (protocol.md §5.5, net page version 3): the guest that is about to sleep with a kick
/// due issues one hypercall; the host transmits the TX ring on the vCPU's thread and then sleeps.
/// Same simulated guest as `PVNetTests` (no /dev/kvm, no TAP).
extension PVNetTests {
    static let netSleep: UInt32 = 0x022

    @Test func netSleepTransmitsWhatTheGuestQueuedThenSleeps() {
        let (pv, net) = attached()
        put32(netGPA + 4, 3) // a version-3 guest (the host serves NET_SLEEP for any version)
        let frame = (0..<60).map { UInt8($0 &* 3) }
        try! memory.write(frame, at: GuestPhysicalAddress(buffers))
        // Hostile descriptors on the new path are validated as on the kick path (§5.6).
        queueTx([(buffers, 60), (buffers, 13), (16 << 20, 60), (netGPA, 60), (buffers, 60)])
        let sent = Locked<[[UInt8]]>([])
        let kicks = Locked(0)
        net.onKick { kicks.withLock { $0 += 1 } }
        net.onSleepFlush { [net] in
            net.transmit(limit: 64) { f in sent.withLock { $0.append(Array(f)) } }
            _ = net.armKick()
        }
        #expect(call(pv, Self.netSleep, 5) == .netSleep(milliseconds: 5))
        net.flushBeforeSleep() // what the vCPU thread does on IOAction.netSleep
        #expect(sent.value == [frame, frame])
        #expect(net.snapshot.rejected == [.badTxLength: 1, .badTxAddress: 2])
        #expect((0..<5).map { status(txGPA, $0).status } == [1, 2, 3, 3, 1])
        #expect(u32(netGPA + 0x50) == 5 && u32(netGPA + 0x58) == 5) // tx_cons, and tx_event re-armed
        #expect(net.snapshot.sleepFlushes == 1 && net.snapshot.kicks == 0 && kicks.value == 0)
        #expect(pv.snapshot.sleeps == 1)
    }

    @Test func netSleepWithoutASleepFlushHandlerKicksTheBackend() {
        let (pv, net) = attached()
        let kicks = Locked(0)
        net.onKick { kicks.withLock { $0 += 1 } }
        #expect(call(pv, Self.netSleep, 1) == .netSleep(milliseconds: 1))
        net.flushBeforeSleep()
        #expect(kicks.value == 1)
    }

    @Test func netSleepArgumentsAndOrder() {
        // Not registered: refused like every NIC operation.
        let bare = PVInterface(memory: memory, console: ConsoleBuffer(), net: PVNet(memory: memory, mac: mac))
        #expect(call(bare, Self.netSleep, 5) == .proceed)
        #expect(bare.snapshot.rejected == [.notRegistered: 1])
        // Before NET_ATTACH: counted, and served as a plain SLEEP (nothing to transmit).
        let pv = registeredPV()
        #expect(call(pv, Self.netSleep, 5) == .sleep(milliseconds: 5))
        #expect(pv.net!.snapshot.rejected == [.notAttached: 1] && pv.net!.snapshot.sleepFlushes == 0)
        // SLEEP's argument rules: 0 is refused (the largest 20-bit value is allowed).
        prepareNetPage()
        call(pv, 0x020, UInt32(netGPA >> 12))
        #expect(call(pv, Self.netSleep, 0) == .proceed)
        #expect(pv.snapshot.rejected == [.badArgument: 1])
        #expect(call(pv, Self.netSleep, 0xf_ffff) == .netSleep(milliseconds: 0xf_ffff))
        // Without a NIC the operation does not exist.
        let plain = registeredPV(net: false)
        #expect(call(plain, Self.netSleep, 5) == .proceed)
        #expect(plain.snapshot.rejected == [.unknownOperation: 1])
    }

    @Test func aVersion3NetPageIsAccepted() {
        let pv = registeredPV()
        prepareNetPage()
        put32(netGPA + 4, 3)
        call(pv, 0x020, UInt32(netGPA >> 12))
        #expect(pv.net!.isAttached && pv.net!.snapshot.totalRejected == 0)
    }

    /// The vCPU thread (NET_SLEEP) and the I/O thread (kick, poll) drain the same TX ring at
    /// the same time while the guest keeps queueing: every frame leaves exactly once, in order.
    @Test func vcpuAndIOThreadTransmitConcurrentlyWithoutLosingOrRepeating() throws {
        let (_, net) = attached()
        let total = 1_500
        let sent = Locked<[UInt32]>([])
        let done = Locked(false)
        @Sendable func drain() {
            while !done.value {
                let n = net.transmit(limit: 4) { f in sent.withLock { $0.append(f.loadUnaligned(as: UInt32.self)) } }
                if n == 0 { sched_yield() } // share the cores with the guest thread
            }
        }
        let drainers = (0..<2).map { _ in Thread { drain() } }
        drainers.forEach { $0.start() }
        // The guest: frame k carries k; it waits for a free slot as the built-in guest does.
        let deadline = Date(timeIntervalSinceNow: 60)
        for k in 0..<UInt32(total) {
            while k &- u32(netGPA + 0x50) >= entries {
                try #require(Date() < deadline, "the host stopped consuming at tx_cons \(u32(netGPA + 0x50)), frame \(k)")
            }
            let buffer = buffers + UInt64(k % entries) * 2048
            put32(buffer, k)
            descriptor(txGPA, k, gpa: buffer, length: 60)
            put32(netGPA + 0x80, k + 1)
        }
        while u32(netGPA + 0x50) != UInt32(total) {
            try #require(Date() < deadline, "the host stopped at tx_cons \(u32(netGPA + 0x50)) of \(total)")
        }
        done.withLock { $0 = true }
        #expect(sent.value == (0..<UInt32(total)).map { $0 }, "frames lost, repeated or reordered")
        #expect(net.snapshot.txFrames == total && net.snapshot.totalRejected == 0)
    }
}
