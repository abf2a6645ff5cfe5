import CKVM
import Core
import Foundation
import Posix

/// TAP → guest for one NIC (protocol.md §5.4, §5.5): the one place frames are read from the TAP
/// and delivered into the RX ring, by whichever thread owns the TAP at that moment.
///
/// - The NIC's I/O thread owns it by default. It waits in an epoll set that holds its kick
///   eventfd and, only while it may read, the TAP.
/// - The vCPU thread that waits for the NIC (the one that attached it) takes it over for the
///   length of a NET_SLEEP (`vcpuWait`): it removes the TAP from the I/O thread's set (no wake-up
///   of that thread), waits in poll(2) on the TAP and its own interrupt eventfd, reads and
///   delivers on its own thread, and hands the TAP back, so a received frame reaches the guest
///   with one thread woken instead of two.
///
/// One lock covers ownership and every read-and-deliver, so exactly one thread reads at a time,
/// each batch is delivered before the next is read (order kept), and a frame the NIC refuses
/// (quiesced: the VM pausing, §5.8) is held here and delivered first by whichever thread reads
/// next — nothing is lost or delivered twice. Validation is `PVNet.deliver`'s on both paths.
final class TapReceiver: @unchecked Sendable {
    enum Owner: Equatable { case ioThread, vcpu }
    /// How a `vcpuWait` ended.
    enum WaitResult: Equatable {
        /// It waited (frames delivered, interrupted, or timed out): look at why and go on.
        case served
        /// It could not wait here (the NIC is quiesced, the TAP is gone, or it is already
        /// taken): the caller sleeps as without it.
        case unavailable
    }
    static let tapTag: UInt32 = 0, kickTag: UInt32 = 1
    static let bufferSize = 2048

    private let device: PVNet
    private let tap: Int32
    /// The I/O thread's wait set: its kick eventfd always, the TAP while it may read it.
    let epoll: FileDescriptor
    /// A lock, and (its condition) `retire` waiting for a vCPU thread to hand the TAP back.
    private let lock = NSCondition()
    // Guarded by `lock`:
    private var owner = Owner.ioThread
    private var watching = false
    private var ioQuiesced = false
    private var tapGone = false
    /// The backend stopped: no vCPU thread takes the TAP any more.
    private var retired = false
    /// While a vCPU thread waits on the TAP: its interrupt eventfd (`retire` writes it).
    private var waiterInterrupt: Int32 = -1
    /// Frames read but refused by a quiesced NIC; they point into `buffers`, so nothing more is
    /// read until they are delivered.
    private var held: [UnsafeRawBufferPointer] = []
    private let buffers: UnsafeMutableRawPointer
    /// Frames read by each owner (tests and tracing).
    private(set) var readByIOThread = 0, readByVCPU = 0

    /// The most the vCPU thread busy-polls the TAP (and its interrupt) at the start of a
    /// NET_SLEEP before it sleeps in poll(2): `--net …,poll-us=N` (`NetSpec`), 0 never. Like
    /// QEMU's `-netdev tap,poll-us=`: it trades a core's time for the wake-up of a sleeping
    /// thread, which on a nested host with idle cores costs ~30 µs (docs/benchmarks.md). How
    /// long it actually polls adapts to the traffic (`AdaptivePoll`); guarded by `lock`.
    let pollNanoseconds: UInt64
    private var polling: AdaptivePoll

    init(device: PVNet, tap: Int32, kick: Int32, pollMicroseconds: Int = 0) throws(NetError) {
        pollNanoseconds = UInt64(max(0, pollMicroseconds)) * 1_000
        polling = AdaptivePoll(limitNanoseconds: pollNanoseconds)
        let fd = ckvm_epoll_create()
        guard fd >= 0 else { throw .system("create an epoll set", Errno(-fd)) }
        epoll = FileDescriptor(owning: fd)
        let rc = ckvm_epoll_watch(fd, kick, 1, Self.kickTag)
        guard rc == 0 else { throw .system("watch the NIC's kick eventfd", Errno(-rc)) }
        self.device = device
        self.tap = tap
        buffers = UnsafeMutableRawPointer.allocate(byteCount: NICBackend.batch * Self.bufferSize, alignment: 64)
        lock.withLock { syncWatchLocked() }
    }

    deinit { buffers.deallocate() }

    var heldCount: Int { lock.withLock { held.count } }
    var currentOwner: Owner { lock.withLock { owner } }
    /// How long the next NET_SLEEP wait busy-polls, in nanoseconds (tests).
    var pollWindow: UInt64 { lock.withLock { polling.window } }
    var counts: (ioThread: Int, vcpu: Int) { lock.withLock { (readByIOThread, readByVCPU) } }

    // MARK: The I/O thread

    /// Before the I/O thread waits: it watches the TAP only while it owns it, the NIC runs, the
    /// TAP exists and nothing is held.
    func prepareIOWait(quiesced: Bool) {
        lock.withLock {
            ioQuiesced = quiesced
            syncWatchLocked()
        }
    }

    /// The TAP reported an error or hang-up (deleted under us): read it no more.
    func markGone() {
        lock.withLock {
            tapGone = true
            syncWatchLocked()
        }
    }

    /// The I/O thread's turn: one batch if it owns the TAP; true if the TAP may hold more.
    func ioReceive() -> Bool {
        lock.withLock {
            guard owner == .ioThread else { return false }
            let (read, more) = receiveLocked()
            readByIOThread += read
            return more
        }
    }

    // MARK: The vCPU thread (NET_SLEEP)

    /// Waits up to `timeoutMilliseconds` for frames on the TAP or for `interrupt` (the vCPU
    /// thread's eventfd: pause, stop, requests, wakes) to become readable, delivering what
    /// arrives; the TAP goes back to the I/O thread before it returns. An interrupt it saw is
    /// reset here (`.unavailable`: it did not wait, and reset nothing).
    func vcpuWait(timeoutMilliseconds: Int32, interrupt: Int32) -> WaitResult {
        let (done, sleepFirst, window) = lock.withLock { () -> (WaitResult?, UInt64, UInt64) in
            guard owner == .ioThread, !retired, !tapGone, !device.isQuiesced else { return (.unavailable, 0, 0) }
            if !held.isEmpty { // deliver those first (the guest may be woken by them): no wait
                guard device.deliver(held) else { return (.unavailable, 0, 0) }
                held = []
                syncWatchLocked()
                return (.served, 0, 0)
            }
            owner = .vcpu
            waiterInterrupt = interrupt
            syncWatchLocked()
            return (nil, polling.sleepFirst, polling.window)
        }
        if let done { return done }
        var outcome = AdaptivePoll.Outcome.interrupted
        defer {
            lock.withLock {
                polling.record(outcome)
                owner = .ioThread
                waiterInterrupt = -1
                syncWatchLocked()
                lock.broadcast()
            }
        }
        var fds = [pollfd(fd: tap, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: interrupt, events: Int16(POLLIN), revents: 0)]
        let began = DispatchTime.now().uptimeNanoseconds
        // Sleep until shortly before the frame the last ones predict, poll to the window's end, then sleep.
        // Sound: `fds` is an array of exactly the two `pollfd` ppoll is told of, alive for the call.
        var ready = sleepFirst > 0 ? ckvm_poll_ns(&fds, 2, Int64(sleepFirst)) : 0
        if ready == 0 {
            let spent = DispatchTime.now().uptimeNanoseconds - began
            ready = Self.spin(&fds, nanoseconds: window > spent ? window - spent : 0)
        }
        if ready == 0 { ready = poll(&fds, 2, timeoutMilliseconds) }
        if ready == 0 { outcome = .timedOut }
        guard ready > 0 else { return .served } // timeout, or a signal (a kick)
        // The wait consumes the interrupt that ended it, and resets nothing otherwise: no read(2)
        // between a frame and KVM_RUN. A signal that comes after poll returned stays set and
        // ends the next wait at once, which consumes it then (a spurious wake, never a lost one).
        if fds[1].revents & Int16(POLLIN) != 0 { EventCounter.reset(interrupt) }
        if fds[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 {
            lock.withLock { tapGone = true }
            return .unavailable
        }
        if fds[0].revents & Int16(POLLIN) != 0 {
            outcome = .frame(afterNanoseconds: DispatchTime.now().uptimeNanoseconds - began)
            if NetTrace.enabled { NetTrace.mark(.tapReadable) }
            lock.withLock {
                let (read, _) = receiveLocked() // more than a batch: the I/O thread reads the rest
                readByVCPU += read
            }
            if NetTrace.enabled { NetTrace.mark(.delivered) }
        }
        return .served
    }

    /// poll(2) without sleeping, again and again for up to `nanoseconds`: what poll returned
    /// first that was not 0 (ready, or -1 for a signal), or 0 when the time ran out.
    ///
    /// Between polls it yields the core (sched_yield(2)): another thread runnable on it — on a
    /// 2-core host, often the very client waiting for this guest's answers — runs at once
    /// instead of waiting out the spinner's time slice, and with nothing else runnable the call
    /// returns at once and the spin goes on (docs/benchmarks.md, "Yielding while it polls").
    static func spin(_ fds: inout [pollfd], nanoseconds: UInt64) -> Int32 {
        guard nanoseconds > 0 else { return 0 }
        let end = DispatchTime.now().uptimeNanoseconds + nanoseconds
        repeat {
            let n = poll(&fds, nfds_t(fds.count), 0)
            if n != 0 { return n }
            if yieldWhileSpinning { sched_yield() }
        } while DispatchTime.now().uptimeNanoseconds < end
        return 0
    }

    /// Whether `spin` yields between polls: on unless PVMIGRATE_NET_SPIN_YIELD=0 (kept for the
    /// A/B measurement in docs/benchmarks.md).
    static let yieldWhileSpinning = ProcessInfo.processInfo.environment["PVMIGRATE_NET_SPIN_YIELD"] != "0"

    /// The backend stops: from when this returns no vCPU thread reads the TAP — one waiting on
    /// it is interrupted and has handed it back — and none takes it again.
    func retire() {
        lock.withLock {
            retired = true
            if owner == .vcpu { EventCounter.signal(waiterInterrupt) }
            while owner == .vcpu { lock.wait() }
        }
    }

    // MARK: Shared

    /// Reads and discards what waits in the TAP (the source after a migration, §5.8).
    func discardQueued() -> Int {
        lock.withLock {
            var count = 0
            while read(tap, buffers, Self.bufferSize) > 0 { count += 1 }
            return count
        }
    }

    /// Held frames first, then one batch of up to `NICBackend.batch` frames from the TAP into
    /// the NIC. Returns how many frames it read and whether the TAP may hold more. Lock held.
    private func receiveLocked() -> (read: Int, more: Bool) {
        if !held.isEmpty {
            guard device.deliver(held) else { return (0, false) }
            held = []
        }
        guard !tapGone else { return (0, false) }
        var frames: [UnsafeRawBufferPointer] = []
        while frames.count < NICBackend.batch {
            // Sound: each slot is `bufferSize` bytes inside `buffers`, and only the lock holder uses them.
            let slot = buffers + frames.count * Self.bufferSize
            let n = read(tap, slot, Self.bufferSize)
            if n <= 0 { break } // EAGAIN: empty (other errors: try again at the next wait)
            frames.append(UnsafeRawBufferPointer(start: slot, count: n))
        }
        if !frames.isEmpty, !device.deliver(frames) { held = frames }
        syncWatchLocked()
        return (frames.count, frames.count == NICBackend.batch)
    }

    /// Puts the TAP into the I/O thread's epoll set, or takes it out, to match who may read it.
    /// Removed rather than masked: epoll reports a hang-up even with no events asked for.
    private func syncWatchLocked() {
        let want = owner == .ioThread && !ioQuiesced && !tapGone && held.isEmpty
        guard want != watching, ckvm_epoll_watch(epoll.rawValue, tap, want ? 1 : 0, Self.tapTag) == 0 else { return }
        watching = want
    }
}
