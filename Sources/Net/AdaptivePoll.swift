/// How long the NIC's vCPU thread busy-polls the TAP at the start of a NET_SLEEP wait before it
/// sleeps in poll(2) (`TapReceiver.vcpuWait`): a window that adapts to the traffic, in the
/// manner of KVM's halt-polling (`kvm_vcpu_halt`, `halt_poll_ns`) and QEMU's adaptive AioContext
/// polling. Polling saves the wake-up of a sleeping thread (~30 µs on this nested host,
/// docs/benchmarks.md) but spends the core's time; the window is worth it only while frames
/// keep arriving soon after the guest goes to sleep.
///
/// - A frame that arrived within the window: the poll paid off, the window stays.
/// - A frame that arrived after the window but within `limit`: a longer window would have caught
///   it, so the window doubles (from `growStart`), up to `limit`.
/// - A frame later than `limit`, or none before the wait timed out: polling was wasted; the
///   window halves, and below `growStart` it is 0 (a quiet NIC costs nothing after a few sleeps).
/// - A wait ended by its interrupt (pause, stop, a request) says nothing about the traffic: no change.
///
/// `limit` is the user's `poll-us` (`NetSpec.pollMicroseconds`); 0 never polls.
struct AdaptivePoll: Equatable {
    /// The first window after a miss from 0, as KVM's `halt_poll_ns_grow_start` (10 µs).
    static let growStart: UInt64 = 10_000

    enum Outcome: Equatable {
        /// The TAP became readable this many nanoseconds after the wait began.
        case frame(afterNanoseconds: UInt64)
        /// The wait's deadline passed with nothing read.
        case timedOut
        /// Its interrupt eventfd (or a signal) ended the wait.
        case interrupted
    }

    /// The most it polls, in nanoseconds.
    let limit: UInt64
    /// How long the next wait polls, in nanoseconds (0 … `limit`).
    private(set) var window: UInt64 = 0

    init(limitNanoseconds: UInt64) { limit = limitNanoseconds }

    mutating func record(_ outcome: Outcome) {
        switch outcome {
        case .interrupted: return
        case let .frame(after) where after <= window: return
        case let .frame(after) where after <= limit: window = min(limit, max(Self.growStart, window * 2))
        case .frame, .timedOut: window = window / 2 < Self.growStart ? 0 : window / 2
        }
    }
}
