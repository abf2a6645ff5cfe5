import Core
import Foundation

/// Decodes and applies one receiving stream's PAGES payloads on a thread of its own, while the
/// stream's reader (TLS decryption, framing) reads the next ones (issue 11, item 3).
///
/// Ordering (protocol.md §3.3–3.4): the source sends page `i` only on stream `i mod streams`,
/// so every version of a page, and every DELTA against it, arrives on one stream, in order.
/// One worker per stream applies that stream's payloads strictly first-in first-out, so a
/// page's later version is never overwritten by an earlier one and a DELTA always meets the
/// version it was computed against — the same order as applying each frame as it is read.
/// Streams stay independent (their pages are disjoint), as before.
///
/// Back-pressure: at most `depth` payloads wait (each at most one batch, so a few MiB per
/// stream); the reader blocks when the worker falls behind, which in turn stalls the
/// socket and the source, exactly as an inline apply did.
///
/// Failures: a payload that fails to decode stops the worker (memory keeps the batches applied
/// before it; the migration fails anyway) and `onFailure` runs once with the error, on the
/// worker's thread: the session tells the source at once (ERROR on the control stream) and
/// closes the streams, so a reader blocked in a read — the source may be waiting for that
/// answer — returns. The reader then reports the worker's error, the first cause, rather than
/// its own follow-on transport error (`abandon`).
/// Threaded or inline: with `threaded` false (the session's choice when this host has no more
/// cores than the migration has streams — the stream readers already keep every core busy,
/// and measured on 2 cores a hand-off per batch only added receiver CPU, docs/benchmarks.md),
/// `submit` applies the payload on the caller's thread, exactly as the reader did before.
final class PageApplyWorker: @unchecked Sendable {
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var slots: [(flags: UInt16, payload: [UInt8])]  // a ring of `depth` slots
    private var head = 0   // the oldest queued slot
    private var queued = 0
    private var closed = false
    private var running = true
    private var failure: MigrationError?
    private var pages = 0

    private let depth: Int
    private let decoder: PageBatchDecoder
    private let memory: GuestMemory
    private let pageApplied: (Int, UnsafeRawBufferPointer) -> Void
    private let batchApplied: (Int) -> Void
    private let onFailure: (MigrationError) -> Void
    private let threaded: Bool

    /// Whether a session with `streams` streams (each with its reader thread) gains from a
    /// worker thread per stream: only when this host has cores the readers leave idle.
    static func pays(streams: Int, cores: Int = ProcessInfo.processInfo.activeProcessorCount) -> Bool {
        cores > streams
    }

    /// Starts the worker thread (unless not `threaded`). `pageApplied` runs for every page written (the digest's
    /// hash table), `batchApplied` with each batch's page count; both on the worker thread.
    /// The thread's CPU time is added to `cpu`.
    init(decoder: PageBatchDecoder, memory: GuestMemory, threaded: Bool = true, depth: Int = 4, cpu: CPUMeter,
         pageApplied: @escaping (Int, UnsafeRawBufferPointer) -> Void,
         batchApplied: @escaping (Int) -> Void, onFailure: @escaping (MigrationError) -> Void = { _ in }) {
        precondition(depth >= 1, "a worker queue holds at least one payload")
        self.depth = depth
        slots = Array(repeating: (0, []), count: depth)
        self.decoder = decoder
        self.memory = memory
        self.pageApplied = pageApplied
        self.batchApplied = batchApplied
        self.onFailure = onFailure
        self.threaded = threaded
        running = threaded
        if threaded { Thread.detachNewThread { [self] in cpu.measure { work() } } }
    }

    /// Queues one payload, waiting while `depth` are queued. Throws the worker's failure,
    /// if it has failed (the payload is then dropped).
    func submit(flags: UInt16, payload: [UInt8]) throws(MigrationError) {
        guard threaded else {
            if let failure { throw failure }
            if let failed = apply(flags: flags, payload: payload) {
                failure = failed
                throw failed
            }
            return
        }
        condition.lock()
        defer { condition.unlock() }
        while failure == nil, queued == depth { condition.wait() }
        if let failure { throw failure }
        precondition(!closed, "submit after finish")
        slots[(head + queued) % depth] = (flags, payload)
        queued += 1
        condition.broadcast()
    }

    /// Waits until every queued payload is applied and the thread has ended; returns the pages
    /// this stream applied, or throws the worker's failure.
    func finish() throws(MigrationError) -> Int {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        condition.broadcast()
        while running { condition.wait() }
        if let failure { throw failure }
        return pages
    }

    /// Stops the worker after `error` ended the reader; waits for its thread and returns the
    /// error to report: the worker's own failure if it failed first, else `error`.
    func abandon(_ error: MigrationError) -> MigrationError {
        condition.lock()
        defer { condition.unlock() }
        closed = true
        dropQueued()
        condition.broadcast()
        while running { condition.wait() }
        return failure ?? error
    }

    /// Decodes and applies one payload; the error, if it fails.
    private func apply(flags: UInt16, payload: [UInt8]) -> MigrationError? {
        do {
            let stats = try decoder.apply(flags: flags, payload: payload, to: memory, expectedRound: nil,
                                          pageApplied: pageApplied)
            let n = stats.zero + stats.raw + stats.delta
            batchApplied(n)
            condition.withLock { pages += n }
            return nil
        } catch {
            return .codec(error)
        }
    }

    private func work() {
        while let (flags, payload) = next() {
            if let failed = apply(flags: flags, payload: payload) {
                condition.withLock {
                    failure = failed
                    dropQueued()
                    condition.broadcast()
                }
                onFailure(failed)
                break
            }
        }
        condition.withLock {
            running = false
            condition.broadcast()
        }
    }

    /// The next payload, or nil once the queue is closed and empty (or the worker failed).
    private func next() -> (UInt16, [UInt8])? {
        condition.lock()
        defer { condition.unlock() }
        while failure == nil, queued == 0, !closed { condition.wait() }
        guard failure == nil, queued > 0 else { return nil }
        let item = slots[head]
        slots[head].payload = []  // the slot no longer holds the buffer
        head = (head + 1) % depth
        queued -= 1
        condition.broadcast()  // a slot is free
        return (item.flags, item.payload)
    }

    /// Forgets every queued payload. Lock held.
    private func dropQueued() {
        for i in slots.indices { slots[i].payload = [] }
        head = 0
        queued = 0
    }
}
