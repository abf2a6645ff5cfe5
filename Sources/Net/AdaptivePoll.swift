import Foundation

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
/// A steady flow's frames come at about the same point of each sleep (500 pings/s: ~1.9 ms in),
/// so polling all the window would spend a core to catch them. Once the last `history` frames
/// are known, the wait first sleeps until `wakeMargin` before the soonest of them (`sleepFirst`,
/// as cpuidle's governors predict an idle period from the recent ones) and polls only from
/// there to the end of the window; a frame that comes earlier ends that sleep as any would.
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

    /// How long before the predicted frame the wait stops sleeping and polls: longer than a
    /// timed wake-up's lateness here (the timer slack of 50 µs plus the nested host's wake-up).
    /// 250 µs; `PVMIGRATE_NET_WAKE_MARGIN_US` overrides it for benchmarks only (a margin at or
    /// above `poll-us` polls through each whole sleep: docs/benchmarks.md, "Like for like with ping").
    static let wakeMargin: UInt64 = UInt64(
        ProcessInfo.processInfo.environment["PVMIGRATE_NET_WAKE_MARGIN_US"].flatMap { Int($0) }.map { max(0, $0) } ?? 250) * 1_000
    /// How many recent frames predict the next.
    static let history = 4

    /// The most it polls, in nanoseconds.
    let limit: UInt64
    /// How long the next wait polls, in nanoseconds (0 … `limit`).
    private(set) var window: UInt64 = 0
    /// When the last `history` frames came, in nanoseconds after their waits began.
    private var arrivals: [UInt64] = []

    /// How long the next wait sleeps before it polls until `window`, in nanoseconds: 0 unless
    /// it polls and knows `history` frames; never past the window.
    var sleepFirst: UInt64 {
        guard window > 0, arrivals.count == Self.history, let soonest = arrivals.min(), soonest > Self.wakeMargin else { return 0 }
        return min(soonest - Self.wakeMargin, window)
    }

    init(limitNanoseconds: UInt64) { limit = limitNanoseconds }

    mutating func record(_ outcome: Outcome) {
        if case let .frame(after) = outcome {
            if arrivals.count == Self.history { arrivals.removeFirst() }
            arrivals.append(after)
        }
        switch outcome {
        case .interrupted: return
        case let .frame(after) where after <= window: return
        case let .frame(after) where after <= limit: window = min(limit, max(Self.growStart, window * 2))
        case .frame, .timedOut: window = window / 2 < Self.growStart ? 0 : window / 2
        }
    }
}
