import CKVM
import Core
import Foundation
import Posix

/// Moves frames between a TAP and a VM's PV NIC (protocol.md §5.4) on one I/O thread: it
/// waits in poll(2) for the TAP (frames for the guest) and for the guest's kick (an eventfd
/// the NET_KICK hypercall writes), then moves whatever is there in batches — up to
/// `batch` frames read from the TAP per delivery, up to `batch` TX descriptors per pass.
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
    private let finished = DispatchSemaphore(value: 0)
    private var thread: Thread?

    public init(device: PVNet, tap: TapDevice) throws(NetError) {
        let fd = ckvm_eventfd()
        guard fd >= 0 else { throw .system("create an eventfd", Errno(-fd)) }
        kick = FileDescriptor(owning: fd)
        self.device = device
        self.tap = tap
        device.onKick { [kick] in Self.signal(kick) }
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
        guard thread != nil, !stopped.withLock({ s in defer { s = true }; return s }) else { return }
        Self.signal(kick)
        finished.wait()
    }

    private static func signal(_ fd: FileDescriptor) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { write(fd.rawValue, $0.baseAddress, 8) }
    }

    private func run() {
        defer { finished.signal() }
        let buffers = UnsafeMutableRawPointer.allocate(byteCount: Self.batch * Self.bufferSize, alignment: 64)
        defer { buffers.deallocate() }
        var fds = [pollfd(fd: tap.descriptor.rawValue, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: kick.rawValue, events: Int16(POLLIN), revents: 0)]
        // One batch each way per turn, so a flood in one direction (or a guest that keeps its TX
        // ring full) cannot starve the other; block in poll only when both sides are idle. The
        // first turn looks at both rings without waiting: a restored guest may have queued
        // frames (and kicked) before it left its source.
        var busy = true
        // Frames read from the TAP that the NIC did not take (it was quiesced: the VM paused,
        // protocol.md §5.8): delivered first once it runs again; no more is read meanwhile.
        var held: [UnsafeRawBufferPointer] = []
        var tapGone = false
        while !stopped.value {
            let quiesced = device.isQuiesced
            // A quiesced NIC leaves frames in the TAP's kernel queue: do not poll it then.
            fds[0].fd = tapGone || quiesced || !held.isEmpty ? -1 : tap.descriptor.rawValue
            _ = retryingEINTR { poll(&fds, 2, busy && !quiesced ? 0 : -1) }
            if fds[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
                tapGone = true // the TAP is gone (deleted under us): keep serving kicks, read nothing
            }
            if fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = withUnsafeMutableBytes(of: &value) { read(kick.rawValue, $0.baseAddress, 8) }
            }
            if stopped.value { break }
            if device.isQuiesced { busy = false; continue }
            if !held.isEmpty, device.deliver(held) { held = [] }
            let moreToReceive = held.isEmpty && !tapGone && receive(buffers, held: &held)
            let moreToSend = transmit()
            busy = moreToReceive || moreToSend
        }
        heldAtStop.withLock { $0 = held.count }
    }

    /// Frames the I/O thread had read but the (quiesced) NIC had not taken when it stopped.
    public var framesHeldAtStop: Int { heldAtStop.value }

    /// Reads and discards what waits in the TAP's queue, returning how many frames: the
    /// source of a VM that migrated away says how many frames arrived for it during the
    /// hand-over and were not delivered (protocol.md §5.8). Call after `stop()`.
    public func discardQueued() -> Int {
        var buffer = [UInt8](repeating: 0, count: Self.bufferSize)
        var count = 0
        while buffer.withUnsafeMutableBytes({ read(tap.descriptor.rawValue, $0.baseAddress, Self.bufferSize) }) > 0 {
            count += 1
        }
        return count
    }

    /// TAP → guest: one batch of up to `batch` frames; true if the TAP may hold more. Frames
    /// the NIC refused (it was quiesced meanwhile) go to `held`.
    private func receive(_ buffers: UnsafeMutableRawPointer, held: inout [UnsafeRawBufferPointer]) -> Bool {
        var frames: [UnsafeRawBufferPointer] = []
        while frames.count < Self.batch {
            // Sound: each slot is `bufferSize` bytes inside `buffers`.
            let slot = buffers + frames.count * Self.bufferSize
            let n = read(tap.descriptor.rawValue, slot, Self.bufferSize)
            if n <= 0 { break } // EAGAIN: empty (other errors: try again at the next poll)
            frames.append(UnsafeRawBufferPointer(start: slot, count: n))
        }
        if !frames.isEmpty, !device.deliver(frames) { held = frames }
        return frames.count == Self.batch
    }

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
