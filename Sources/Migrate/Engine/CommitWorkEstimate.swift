import Core
import Foundation

/// The destination's estimate of its own work in the commit, sent to the source in each
/// PONG_WORK (protocol.md §3.2, capability `COMMIT_WORK`) so that the source's downtime
/// prediction includes it (issue 11: the commit's two round trips carry this work, and on a
/// quiet host it was most of the misses: 1–5 ms against a PING round trip of ~0.2 ms).
///
/// Two parts, as the commit has them (`DestinationPhases`):
/// - `prepare`, COMMIT read → PREPARED sent: the STATE digest, decoding the state, the memory
///   digest's balloon exclusion and `Machine.restore`;
/// - `start`, GO read → DONE sent: the durable "started" record and `Machine.start`.
///
/// Each PING rehearses, before the pause and on the control thread, the parts that can be
/// rehearsed without changing anything (`rehearse`): the STATE digest over a blob of this
/// guest's state size (the balloon map is one bit per page), the memory digest's exclusion
/// pass over a map of this guest's size, reading the vCPU and VM state (the same ioctls as the
/// restore, in the other direction) and starting a thread (what `Machine.start` does per
/// vCPU). The record is the outcome table's recent durable writes (`OutcomeTable.recentWriteSeconds`;
/// none before the table's first decision, then it is under-predicted by one fsync).
///
/// The CPU work (`prepare`) is the median of the last `window` rehearsals: one preempted
/// rehearsal does not move it. The thread start is their minimum: it is scheduler latency,
/// rehearsed while the source's guest still holds a core, which the pause gives back (on a
/// busy host the median of pre-copy rehearsals was 8–10 ms where the commit's start took 0.1–4 ms,
/// docs/benchmarks.md "The destination's commit work in the prediction").
struct CommitWorkEstimate: Sendable, Equatable {
    static let window = 5

    private(set) var prepares: [Double] = []
    private(set) var threadStarts: [Double] = []
    /// The "started" record's durable write (seconds), as the outcome table last measured it.
    var record = 0.0
    /// Threads `Machine.start` starts: one per vCPU.
    var vcpus = 1

    /// Adds one rehearsal (seconds); negative, infinite or NaN parts are ignored.
    mutating func record(prepare: Double, threadStart: Double) {
        func add(_ value: Double, to list: inout [Double]) {
            guard value.isFinite, value >= 0 else { return }
            list.append(value)
            if list.count > Self.window { list.removeFirst(list.count - Self.window) }
        }
        add(prepare, to: &prepares)
        add(threadStart, to: &threadStarts)
    }

    /// COMMIT read → PREPARED sent: the lower median of the rehearsals (0 before any).
    var prepare: Double { prepares.isEmpty ? 0 : prepares.sorted()[(prepares.count - 1) / 2] }
    /// GO read → DONE sent: the record, then one thread start per vCPU (the fastest rehearsed).
    var start: Double { max(0, record) + (threadStarts.min() ?? 0) * Double(max(1, vcpus)) }

    /// The estimate in whole microseconds for the wire (rounded up, at most `UInt32.max`).
    var micros: (prepare: UInt32, start: UInt32) { (Self.micros(prepare), Self.micros(start)) }

    static func micros(_ seconds: Double) -> UInt32 {
        guard seconds.isFinite, seconds > 0 else { return 0 }
        return UInt32(min(Double(UInt32.max), (seconds * 1e6).rounded(.up)))
    }

    /// One rehearsal of the commit's work at the destination (see the type's notes): the
    /// seconds before PREPARED and one thread start. Changes nothing: the digests run over
    /// scratch data or with nothing excluded, the state is only read (and its encoding decoded
    /// again, as STATE is: the first decode in a process had cost the commit 0.1–0.2 ms more
    /// than the later ones, docs/benchmarks.md "The pause rehearsed in its own conditions"),
    /// the thread does nothing.
    static func rehearse(machine: Machine, hashes: PageHashTable) -> (prepare: Double, threadStart: Double) {
        let pageCount = machine.memory.pageCount
        let began = ContinuousClock.now
        // The STATE blob: a few KiB of vCPU and device state plus the balloon map.
        let blob = [UInt8](repeating: 0, count: 4096 + (pageCount + 63) / 64 * 8)
        _ = StateDigest.compute(blob)
        _ = hashes.digest(excluding: PageBitmap(pageCount: pageCount))
        let saved = try? machine.saveState()
        var seconds = (ContinuousClock.now - began).seconds
        if let encoded = saved?.encoded() { // encoding is the source's work: not timed
            let decoding = ContinuousClock.now
            _ = try? MachineState(encoded: encoded)
            seconds += (ContinuousClock.now - decoding).seconds
        }
        return (seconds, threadStartSeconds())
    }

    /// Starts a thread as `VCPUThread.start` does and waits until it runs.
    static func threadStartSeconds() -> Double {
        let began = ContinuousClock.now
        let ran = DispatchSemaphore(value: 0)
        let thread = Thread { ran.signal() }
        thread.stackSize = 1 << 20
        thread.start()
        ran.wait()
        return (ContinuousClock.now - began).seconds
    }
}
