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
    private let finished = DispatchSemaphore(value: 0)
    private var thread: Thread?

    public init(device: PVNet, tap: TapDevice) throws(NetError) {
        let fd = ckvm_eventfd()
        guard fd >= 0 else { throw .system("create an eventfd", Errno(-fd)) }
        kick = FileDescriptor(owning: fd)
        self.device = device
        self.tap = tap
        device.onKick { [kick] in Self.signal(kick) }
    }

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
        while !stopped.value {
            _ = retryingEINTR { poll(&fds, 2, -1) }
            if fds[1].revents != 0 {
                var value: UInt64 = 0
                _ = withUnsafeMutableBytes(of: &value) { read(kick.rawValue, $0.baseAddress, 8) }
            }
            if stopped.value { break }
            receive(buffers)
            transmit()
        }
    }

    /// TAP → guest: read until the TAP is empty, `batch` frames per delivery.
    private func receive(_ buffers: UnsafeMutableRawPointer) {
        while true {
            var frames: [UnsafeRawBufferPointer] = []
            while frames.count < Self.batch {
                // Sound: each slot is `bufferSize` bytes inside `buffers`.
                let slot = buffers + frames.count * Self.bufferSize
                let n = read(tap.descriptor.rawValue, slot, Self.bufferSize)
                if n <= 0 { break } // EAGAIN: empty (other errors: try again at the next poll)
                frames.append(UnsafeRawBufferPointer(start: slot, count: n))
            }
            if !frames.isEmpty { device.deliver(frames) }
            if frames.count < Self.batch { return }
        }
    }

    /// Guest → TAP: send what the guest queued, then ask for a kick; if frames slipped in
    /// before the request was visible, go again (protocol.md §5.5).
    private func transmit() {
        let fd = tap.descriptor.rawValue
        repeat {
            while device.transmit(limit: Self.batch, { frame in _ = write(fd, frame.baseAddress, frame.count) }) == Self.batch {}
        } while device.armKick()
    }
}
