import CKVM
import Core
import Foundation
import Posix

/// Moves frames between a TAP and a VM's PV NIC (protocol.md §5.4) on one I/O thread: it
/// waits in epoll for the TAP (frames for the guest) and for the guest's kick (an eventfd
/// the NET_KICK hypercall writes), then moves whatever is there in batches — up to
/// `batch` frames read from the TAP per delivery, up to `batch` TX descriptors per pass.
/// While the guest sleeps in NET_SLEEP, its vCPU thread reads the TAP instead (`TapReceiver`)
/// and writes the guest's answers itself (the sleep flush), so a request and its answer pass
/// through one host thread.
public final class NICBackend: @unchecked Sendable {
    public static let batch = 64
    private static let bufferSize = 2048

    public let device: PVNet
    public let tap: TapDevice
    private let kick: FileDescriptor
    private let stopped = Locked(false)
    private let writeErrors = Locked(0)
    private let heldAtStop = Locked(0)
    /// Frames the TAP refused (the guest's descriptor still completes as sent: like a wire, the
    /// NIC does not know what happens after the frame leaves).
    public var tapWriteErrors: Int { writeErrors.value }
    /// Frames the vCPU thread read from the TAP itself while its guest slept in NET_SLEEP.
    public var framesReadByVCPUThread: Int { receiver.counts.vcpu }
    private let finished = DispatchSemaphore(value: 0)
    /// The TAP's one reader at a time: this I/O thread, or the NIC's vCPU thread in NET_SLEEP.
    let receiver: TapReceiver
    private var thread: Thread?

    /// `pollMicroseconds`: the most the NIC's vCPU thread busy-polls the TAP when its guest
    /// sleeps (`NetSpec.pollMicroseconds`; how long it does adapts, `AdaptivePoll`); 0 (tests'
    /// default): it sleeps at once.
    public init(device: PVNet, tap: TapDevice, pollMicroseconds: Int = 0) throws(NetError) {
        let fd = ckvm_eventfd()
        guard fd >= 0 else { throw .system("create an eventfd", Errno(-fd)) }
        kick = FileDescriptor(owning: fd)
        self.device = device
        self.tap = tap
        device.onKick { [kick] in Self.signal(kick) }
        let receiver = try TapReceiver(device: device, tap: tap.descriptor.rawValue, kick: fd, pollMicroseconds: pollMicroseconds)
        self.receiver = receiver
        // While the guest sleeps in NET_SLEEP, the vCPU thread that waits for the NIC reads the
        // TAP itself (TapReceiver): no I/O thread hop for a received frame. (Weak: the device
        // holds this closure and the receiver holds the device.)
        device.onSleepWait { [weak receiver] timeout, interrupt in
            receiver?.vcpuWait(timeoutMilliseconds: timeout, interrupt: interrupt) == .served
        }
        // NET_SLEEP (protocol.md §5.5): the sleeping vCPU's thread writes the guest's frames to
        // the TAP itself — the guest is idle then, and the I/O thread need not be woken. The
        // device's lock keeps one owner of the TX ring at a time. A ring still not drained after
        // a few batches is left to the I/O thread. (Weak: the device holds this closure.)
        device.onSleepFlush { [weak device, tap, writeErrors, kick] in
            guard let device else { return }
            for _ in 0..<Self.sleepFlushBatches {
                if !Self.transmit(device, tap: tap, writeErrors: writeErrors) { return } // drained, kick armed
            }
            Self.signal(kick)
        }
    }

    /// At most this many TX batches on a NET_SLEEP's vCPU thread before the I/O thread takes over.
    static let sleepFlushBatches = 4

    public func start() {
        let t = Thread { [self] in run() }
        t.name = "nic-\(tap.name)"
        thread = t
        t.start()
    }

    /// Stops the I/O thread and waits for it; the TAP stays open until this object goes.
    public func stop() {
        receiver.retire() // no vCPU thread reads the TAP after this returns
        guard thread != nil, !stopped.withLock({ s in defer { s = true }; return s }) else { return }
        Self.signal(kick)
        finished.wait()
    }

    private static func signal(_ fd: FileDescriptor) { EventCounter.signal(fd.rawValue) }

    private func run() {
        defer { finished.signal() }
        var tags: [UInt32] = [0, 0], events: [UInt32] = [0, 0]
        // One batch each way per turn, so a flood in one direction (or a guest that keeps its TX
        // ring full) cannot starve the other; block only when both sides are idle. The first
        // turn looks at both rings without waiting: a restored guest may have queued frames
        // (and kicked) before it left its source. The TAP is in the wait set only while this
        // thread may read it (TapReceiver): not while the NIC is quiesced (frames wait in the
        // TAP's kernel queue, protocol.md §5.8), and not while a vCPU thread in NET_SLEEP has it.
        var busy = true
        while !stopped.value {
            let quiesced = device.isQuiesced
            receiver.prepareIOWait(quiesced: quiesced)
            let n = retryingEINTR { ckvm_epoll_wait(receiver.epoll.rawValue, &tags, &events, 2, busy && !quiesced ? 0 : -1) }
            for i in 0..<max(Int(n), 0) {
                if tags[i] == TapReceiver.kickTag {
                    EventCounter.reset(kick.rawValue)
                } else if events[i] & 2 != 0 {
                    receiver.markGone() // the TAP is gone (deleted under us): keep serving kicks, read nothing
                }
            }
            if stopped.value { break }
            if device.isQuiesced { busy = false; continue }
            let moreToReceive = receiver.ioReceive()
            let moreToSend = transmit()
            busy = moreToReceive || moreToSend
        }
        heldAtStop.withLock { $0 = receiver.heldCount }
    }

    /// Frames the I/O thread had read but the (quiesced) NIC had not taken when it stopped.
    public var framesHeldAtStop: Int { heldAtStop.value }

    /// Reads and discards what waits in the TAP's queue, returning how many frames: the
    /// source of a VM that migrated away says how many frames arrived for it during the
    /// hand-over and were not delivered (protocol.md §5.8). Call after `stop()`.
    public func discardQueued() -> Int { receiver.discardQueued() }

    /// Guest → TAP: one batch of what the guest queued; when the ring is drained, ask for a
    /// kick (protocol.md §5.5). True if more is (or slipped in) queued: go again, no kick comes.
    private func transmit() -> Bool { Self.transmit(device, tap: tap, writeErrors: writeErrors) }

    private static func transmit(_ device: PVNet, tap: TapDevice, writeErrors: Locked<Int>) -> Bool {
        let fd = tap.descriptor.rawValue
        var failed = 0
        let sent = device.transmit(limit: batch) { frame in
            if write(fd, frame.baseAddress, frame.count) != frame.count { failed += 1 }
        }
        if failed > 0 { writeErrors.withLock { $0 += failed } }
        return sent == batch || device.armKick()
    }
}
