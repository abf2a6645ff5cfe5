import CKVM

/// A short scheduler time slice for the calling thread while it does the work a paused guest
/// waits for: the source's stop-and-copy from its final round's end and the commit, the
/// destination's side of the commit, and the source's rehearsal of them between rounds
/// (`MigrationSender.stopSample`).
///
/// Why (measured, docs/benchmarks.md "A short time slice for the pause"): with both ends of a
/// migration on a 2-core host, GO starts the guest at the destination, whose vCPU thread then
/// holds a core. The source's control thread, woken for DONE, was queued behind it on that
/// core and waited up to a scheduler tick (4 ms at this kernel's 250 Hz, `PREEMPT_NONE`)
/// while the other core idled: GO → DONE took 1.3–7.3 ms where the destination's own work
/// was 0.3–0.6 ms. Under EEVDF (Linux 6.12+) a thread that asks for a shorter slice gets an
/// earlier deadline when it wakes, so it preempts a thread that has run its longer slice
/// instead of waiting for the tick. It changes no share of CPU (weights stay), needs no
/// privilege, and nothing spins.
///
/// Ended explicitly (`end()`), on the thread that began it: sched_setattr applies to the
/// calling thread. `end()` restores the kernel's default slice; our threads never set another.
/// Where the kernel has no custom slices (before 6.12) or the thread is not SCHED_OTHER,
/// nothing changes.
public final class LatencySlice {
    /// 0.1 ms: the shortest slice the kernel accepts.
    public static let nanoseconds: UInt64 = 100_000

    /// Whether the slice was set (and `end()` still has to restore it).
    public private(set) var isActive: Bool

    /// Sets the calling thread's slice to `nanoseconds`.
    public init(nanoseconds: UInt64 = LatencySlice.nanoseconds) {
        isActive = ckvm_set_thread_slice(nanoseconds) == 0
    }

    /// Restores the default slice; does nothing the second time.
    public func end() {
        guard isActive else { return }
        isActive = false
        _ = ckvm_set_thread_slice(0)
    }

    /// The calling thread's slice in nanoseconds (nil where the kernel does not say).
    public static var current: UInt64? {
        let value = ckvm_thread_slice()
        return value >= 0 ? UInt64(value) : nil
    }
}
