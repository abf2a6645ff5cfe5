import CKVM
@testable import Core
import Foundation
@testable import Net
import Posix
import Testing
import TestSupport

/// The vCPU thread waiting on the TAP during NET_SLEEP (protocol.md §5.5, `TapReceiver`): one
/// reader of the TAP at a time, nothing lost, repeated or reordered, and pause, stop and other
/// wake-ups still end the wait. The real `NICBackend` and its I/O thread run; one end of a
/// SOCK_SEQPACKET socket pair stands in for the TAP's kernel queue (one frame per read, like a
/// TAP), the simulated guest of `PVNetTests` posts the RX buffers, and a test thread plays the
/// vCPU thread (no /dev/kvm, no TAP device needed).
extension PVNetTests {
    /// A backend over a socket pair: the backend reads frames from one end, the test writes the other.
    func socketBackend(_ net: PVNet, pollMicroseconds: Int = 0) throws -> (NICBackend, FileDescriptor) {
        var fds: [Int32] = [0, 0]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        try #require(socketpair(AF_UNIX, type, 0, &fds) == 0, "socketpair: errno \(errno)")
        let tap = TapDevice(frameDescriptor: FileDescriptor(owning: fds[0]), name: "pvmt-rxw-test")
        return (try NICBackend(device: net, tap: tap, pollMicroseconds: pollMicroseconds), FileDescriptor(owning: fds[1]))
    }

    /// A 60-byte frame whose first four bytes carry `k`.
    func send(_ k: UInt32, to peer: FileDescriptor) throws {
        var frame = [UInt8](repeating: 0x5a, count: 60)
        withUnsafeBytes(of: k) { frame.replaceSubrange(0..<4, with: $0) }
        let deadline = Date(timeIntervalSinceNow: Wait.hangBound)
        while frame.withUnsafeBytes({ write(peer.rawValue, $0.baseAddress, 60) }) != 60 {
            try #require(errno == EAGAIN && Date() < deadline, "writing frame \(k): errno \(errno)")
            sched_yield() // the socket's queue is full: the backend has not read yet
        }
    }

    func eventfd() throws -> FileDescriptor {
        let fd = ckvm_eventfd()
        try #require(fd >= 0)
        return FileDescriptor(owning: fd)
    }

    /// A started backend and a thread that plays the NIC's vCPU thread in one long NET_SLEEP,
    /// once that thread holds the TAP; `returned` becomes what the wait returned when it ends.
    func backendWithAWaitingVCPU(_ net: PVNet) throws
        -> (backend: NICBackend, peer: FileDescriptor, interrupt: FileDescriptor, returned: Locked<Bool?>) {
        let (backend, peer) = try socketBackend(net)
        backend.start()
        let interrupt = try eventfd()
        let returned = Locked<Bool?>(nil)
        Thread { returned.withLock { $0 = net.waitForFrames(vcpu: 0, milliseconds: 120_000, interrupt: interrupt.rawValue) } }.start()
        try #require(Wait.until { backend.receiver.currentOwner == .vcpu }, "the vCPU thread never took the TAP")
        return (backend, peer, interrupt, returned)
    }

    @Test func theVCPUAndIOThreadShareTheTapWithoutLosingRepeatingOrReordering() throws {
        let (_, net) = attached()
        post(entries)
        let (backend, peer) = try socketBackend(net)
        backend.start()
        defer { backend.stop() }
        let total: UInt32 = 1_500
        let consumed = Locked<UInt32>(0)
        let received = Locked<[UInt32]?>(nil) // what the vCPU thread saw, once it has seen them all
        let interrupt = try eventfd()
        // The vCPU thread: the guest takes what arrived (and posts the buffer again), then
        // sleeps in NET_SLEEP, where this thread waits on the TAP itself.
        let guest = Thread { [self] in
            var seen: [UInt32] = []
            var cons: UInt32 = 0
            let deadline = Date(timeIntervalSinceNow: Wait.hangBound)
            while seen.count < Int(total), Date() < deadline {
                while cons != u32(netGPA + 0x54) { // rx_prod
                    let slot = rxGPA + UInt64(cons % entries) * 16
                    seen.append(status(rxGPA, cons).length == 60 ? u32(u64(slot)) : .max)
                    cons &+= 1
                    post(1)
                }
                consumed.withLock { $0 = cons }
                _ = net.waitForFrames(vcpu: 0, milliseconds: 20, interrupt: interrupt.rawValue)
            }
            received.withLock { $0 = seen }
        }
        guest.start()
        // The client: never more in flight than half the ring, so no frame may be dropped.
        for k in 0..<total {
            let deadline = Date(timeIntervalSinceNow: Wait.hangBound)
            while k &- consumed.value >= entries / 2 {
                try #require(Date() < deadline, "the guest stopped receiving at \(consumed.value) of \(total)")
                sched_yield()
            }
            try send(k, to: peer)
        }
        try #require(Wait.until { received.value != nil }, "the vCPU thread did not finish; it had \(consumed.value) of \(total)")
        #expect(received.value == Array(0..<total), "frames lost, repeated or reordered")
        #expect(net.snapshot.rxFrames == Int(total) && net.snapshot.rxDropped == 0 && net.snapshot.totalRejected == 0)
        let counts = backend.receiver.counts
        #expect(counts.vcpu > 0, "the vCPU thread never read the TAP while it waited (I/O thread: \(counts.ioThread))")
        #expect(counts.vcpu + counts.ioThread == Int(total))
    }

    @Test func anInterruptEndsTheWaitAndTheIOThreadReadsAgain() throws {
        let (_, net) = attached()
        post(4)
        let (backend, peer, interrupt, returned) = try backendWithAWaitingVCPU(net)
        defer { backend.stop() }
        EventCounter.signal(interrupt.rawValue) // what a pause, stop, request or wake does
        try #require(Wait.until { returned.value != nil }, "the wait did not end on its interrupt")
        #expect(returned.value == true && backend.receiver.currentOwner == .ioThread)
        try send(7, to: peer)
        try #require(Wait.until { net.snapshot.rxFrames == 1 }, "the I/O thread did not read the TAP after the wait")
        #expect(backend.receiver.counts == (ioThread: 1, vcpu: 0) && u32(buffers) == 7)
        // Another vCPU's NET_SLEEP does not wait on the TAP.
        #expect(!net.waitForFrames(vcpu: 1, milliseconds: 1, interrupt: interrupt.rawValue))
    }

    @Test func aWaitConsumesTheInterruptThatEndedItSoTheNextWaitSleeps() throws {
        let (_, net) = attached()
        post(4)
        // The peer stays open: closing it would end the wait (POLLHUP) before the interrupt does.
        let (backend, peer, interrupt, returned) = try backendWithAWaitingVCPU(net)
        defer { backend.stop(); withExtendedLifetime(peer) {} }
        EventCounter.signal(interrupt.rawValue)
        try #require(Wait.until { returned.value != nil }, "the wait did not end on its interrupt")
        // The vCPU thread no longer resets it after each wait (one read(2) fewer before KVM_RUN).
        var fd = pollfd(fd: interrupt.rawValue, events: Int16(POLLIN), revents: 0)
        #expect(poll(&fd, 1, 0) == 0, "the interrupt that ended the wait is still set (revents \(fd.revents))")
    }

    @Test func aPollingWaitDeliversAFrameAndStillEndsOnItsInterrupt() throws {
        let (_, net) = attached()
        post(4)
        var fds: [Int32] = [0, 0]
        let type = Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        try #require(socketpair(AF_UNIX, type, 0, &fds) == 0, "socketpair: errno \(errno)")
        let tap = TapDevice(frameDescriptor: FileDescriptor(owning: fds[0]), name: "pvmt-rxw-poll")
        let peer = FileDescriptor(owning: fds[1])
        let backend = try NICBackend(device: net, tap: tap, pollMicroseconds: NetSpec.maximumPollMicroseconds)
        backend.start()
        defer { backend.stop() }
        #expect(backend.receiver.pollNanoseconds == 100_000_000)
        let interrupt = try eventfd()
        // A frame sent once the vCPU thread waits (sent before, the I/O thread could read it first).
        let delivered = Locked<Bool?>(nil)
        Thread { delivered.withLock { $0 = net.waitForFrames(vcpu: 0, milliseconds: 120_000, interrupt: interrupt.rawValue) } }.start()
        try #require(Wait.until { backend.receiver.currentOwner == .vcpu }, "the vCPU thread never took the TAP")
        try send(3, to: peer)
        try #require(Wait.until { delivered.value != nil }, "the polling wait did not end on the frame")
        #expect(delivered.value == true && net.snapshot.rxFrames == 1)
        #expect(u32(buffers) == 3 && backend.receiver.counts.vcpu == 1)
        #expect(backend.receiver.pollWindow > 0, "a frame that came while it slept did not open a poll window")
        // While it spins (the window adapts, 0.1 s at most, then it sleeps), an interrupt still ends the wait.
        let returned = Locked<Bool?>(nil)
        Thread { returned.withLock { $0 = net.waitForFrames(vcpu: 0, milliseconds: 120_000, interrupt: interrupt.rawValue) } }.start()
        try #require(Wait.until { backend.receiver.currentOwner == .vcpu }, "the vCPU thread never took the TAP")
        EventCounter.signal(interrupt.rawValue)
        try #require(Wait.until { returned.value != nil }, "the polling wait did not end on its interrupt")
        #expect(returned.value == true && backend.receiver.currentOwner == .ioThread)
        // Spinning alone: 0 when the time runs out, the ready count when something is readable.
        var idle = [pollfd(fd: peer.rawValue, events: Int16(POLLPRI), revents: 0)]
        #expect(TapReceiver.spin(&idle, nanoseconds: 1_000_000) == 0)
        #expect(TapReceiver.spin(&idle, nanoseconds: 0) == 0)
    }

    @Test func stoppingTheBackendTakesTheTapBackFromAWaitingVCPU() throws {
        let (_, net) = attached()
        let (backend, peer, interrupt, returned) = try backendWithAWaitingVCPU(net)
        defer { withExtendedLifetime(peer) {} } // its close would be a hang-up: the TAP gone
        backend.stop() // returns only once the vCPU thread has handed the TAP back
        #expect(backend.receiver.currentOwner == .ioThread)
        try #require(Wait.until { returned.value != nil }, "the wait did not end when the backend stopped")
        #expect(!net.waitForFrames(vcpu: 0, milliseconds: 1, interrupt: interrupt.rawValue), "a stopped backend still lent the TAP")
    }

    @Test func aFrameReadWhileTheNICQuiescesIsHeldAndDeliveredOnce() throws {
        let (_, net) = attached()
        post(4)
        let (backend, peer, interrupt, returned) = try backendWithAWaitingVCPU(net)
        defer { backend.stop() }
        net.setQuiesced(true) // the VM pauses (Machine.pause quiesces after the vCPUs park; here, during the wait)
        try send(1, to: peer)
        try #require(Wait.until { returned.value != nil }, "the wait did not end on the frame")
        #expect(backend.receiver.heldCount == 1 && net.snapshot.rxFrames == 0, "a quiesced NIC took a frame")
        #expect(!net.waitForFrames(vcpu: 0, milliseconds: 1, interrupt: interrupt.rawValue), "it waited on a quiesced NIC")
        net.setQuiesced(false)
        try #require(Wait.until { net.snapshot.rxFrames == 1 }, "the held frame was not delivered after the resume")
        try send(2, to: peer)
        try #require(Wait.until { net.snapshot.rxFrames == 2 }, "the next frame did not arrive")
        #expect(u32(buffers) == 1 && u32(buffers + 2048) == 2 && backend.receiver.heldCount == 0)
    }
}
