import Core
import Foundation

/// One sending stream's two stages (issue 11, item 3): the stream's worker encodes batch N+1
/// into one buffer while a send thread of the pipeline's own encrypts and writes batch N from
/// another. The buffers are a fixed pool, made once and reused, so nothing is allocated per
/// batch and no payload is copied between the stages: the send stage writes the very memory
/// the encoder filled.
///
/// Ordering (protocol.md §3.3–3.4): buffers are sent strictly in the order they were submitted,
/// by one thread, so a stream's frames leave in the order they were encoded — every DELTA after
/// the version it was computed against, as when one thread did both.
///
/// Reuse: a buffer returns to the pool only after the send stage is done with it; `acquire`
/// waits for one, so the encoder never writes a buffer that is queued or being sent. With two
/// buffers this is double buffering: the encoder runs at most one batch ahead.
///
/// Failures: a send that throws stops the send stage — what is still queued is dropped — and
/// every later `acquire`, `submit` and `drain` throws that error, so the encoder stops at its
/// next batch. An encode-stage failure is handed over with `abandon`, which drops the queue,
/// waits for the send in flight (a write blocked on a dead peer ends with the stream's timeout
/// or when the stream is closed) and returns the first cause. A failure is final: the stream is
/// broken, and its migration fails.
///
/// The last batch of a round is sent on the encoder's thread once the others are sent
/// (`finish(last:)`): a round of one batch crosses no thread.
///
/// Threaded or inline: with `threaded` false there is no send thread and one buffer; `submit`
/// sends on the caller's thread — encode, then send, in turn, from the same buffer (still no
/// copy, one write per frame). The sender's choice is `pays(streams:)`.
final class SendPipeline<Buffer: AnyObject>: @unchecked Sendable {
    typealias Send = (Buffer) throws(MigrationError) -> Void

    private let condition = NSCondition()
    // Guarded by `condition`:
    private var free: [Buffer]
    private var queue: [Buffer] = []   // submitted, not yet taken by the send stage; oldest first
    private var inFlight = false       // the send stage holds a buffer
    private var failure: MigrationError?
    private var stopped = false
    private var threadRunning: Bool

    private let all: [Buffer]
    private let send: Send
    let threaded: Bool

    /// Whether a migration with `streams` sending streams gains from a send thread per stream.
    /// The rule of the receiver's `PageApplyWorker.pays` (only with cores the streams' workers
    /// leave idle); measured on 2 cores in docs/benchmarks.md ("Source: encode and send
    /// pipelined"). `PVMIGRATE_SEND_PIPELINE=threaded|inline` overrides it, for measuring.
    static func pays(streams: Int, cores: Int = ProcessInfo.processInfo.activeProcessorCount,
                     override: String? = ProcessInfo.processInfo.environment["PVMIGRATE_SEND_PIPELINE"]) -> Bool {
        switch override {
        case "threaded": true
        case "inline": false
        default: PageApplyWorker.pays(streams: streams, cores: cores)
        }
    }

    /// - Parameters:
    ///   - buffers: the pool (threaded: at least two, so the stages overlap; inline: the first
    ///     one is used). Owned by the pipeline from now on.
    ///   - send: the send stage, run for each submitted buffer in order; its thread's CPU time
    ///     is added to `cpu`.
    init(buffers: [Buffer], threaded: Bool, cpu: CPUMeter, send: @escaping Send) {
        precondition(threaded ? buffers.count >= 2 : !buffers.isEmpty,
                     "a \(threaded ? "threaded" : "inline") send pipeline needs \(threaded ? "two buffers" : "a buffer")")
        all = threaded ? buffers : [buffers[0]]
        free = all
        queue.reserveCapacity(all.count)
        self.send = send
        self.threaded = threaded
        threadRunning = threaded
        if threaded { Thread.detachNewThread { [self] in sendLoop(cpu: cpu) } }
    }

    /// A buffer to fill: waits while every buffer is queued or being sent. Throws the send
    /// stage's failure.
    func acquire() throws(MigrationError) -> Buffer {
        condition.lock()
        defer { condition.unlock() }
        while failure == nil, free.isEmpty { condition.wait() }
        if let failure { throw failure }
        return free.removeLast()
    }

    /// Hands a filled buffer (from `acquire`) to the send stage, behind those already
    /// submitted. Inline, sends it before returning. Throws the send stage's failure (the
    /// buffer is then dropped back into the pool).
    func submit(_ buffer: Buffer) throws(MigrationError) {
        guard threaded else {
            if let failure = condition.withLock({ failure }) { throw failure }
            do throws(MigrationError) { try send(buffer) } catch {
                condition.withLock { failure = error }
                throw error
            }
            condition.withLock { free.append(buffer) }
            return
        }
        condition.lock()
        defer { condition.unlock() }
        precondition(queue.count + free.count + (inFlight ? 1 : 0) < all.count, "a buffer was submitted twice")
        if let failure {
            free.append(buffer)
            throw failure
        }
        queue.append(buffer)
        condition.broadcast()
    }

    /// Waits until every submitted buffer has been sent, then throws the send stage's failure
    /// if there was one. Afterwards the send stage is idle.
    func drain() throws(MigrationError) {
        condition.lock()
        defer { condition.unlock() }
        while failure == nil, !queue.isEmpty || inFlight { condition.wait() }
        if let failure { throw failure }
    }

    /// The end of a stream's round: waits until every submitted buffer has been sent, then
    /// sends `last` (from `acquire`), if any, on the caller's thread. Nothing is left to
    /// overlap with the last batch, and a round of one batch — the small late rounds and the
    /// paused final round — then costs no hand-off between threads (two wake-ups, each a
    /// scheduler latency on a busy host). Afterwards the send stage is idle.
    func finish(last: Buffer?) throws(MigrationError) {
        guard threaded else {
            if let last { try submit(last) }
            return
        }
        try drain()
        guard let last else { return }
        do throws(MigrationError) { try send(last) } catch {
            condition.withLock {
                if failure == nil { failure = error }
            }
            throw error
        }
        condition.withLock { free.append(last) }
    }

    /// The encode stage failed with `error`: drops what is queued, waits for the send in
    /// flight and returns the error to report — the send stage's own failure if it failed
    /// first, else `error`. Every buffer is back in the pool afterwards.
    func abandon(_ error: MigrationError) -> MigrationError {
        condition.lock()
        defer { condition.unlock() }
        if failure == nil { failure = error }
        queue.removeAll(keepingCapacity: true)
        condition.broadcast()
        while inFlight { condition.wait() }
        free = all
        return failure!
    }

    /// Ends the send thread once the send in flight (if any) is done; what is still queued is
    /// dropped. Does not wait; `isRunning` says when the thread has ended.
    func stop() {
        condition.withLock {
            stopped = true
            queue.removeAll(keepingCapacity: true)
            condition.broadcast()
        }
    }

    /// Whether the send thread is still running (false once it ended after `stop`, and inline).
    var isRunning: Bool { condition.withLock { threadRunning } }

    /// The send thread. Its CPU time is added after each send as the difference from the
    /// previous reading, so everything the thread does is counted (the hand-offs too), not
    /// only the sends: measured per send, the meter read a third less than the process's own
    /// times (docs/benchmarks.md, "Source: encode and send pipelined").
    private func sendLoop(cpu: CPUMeter) {
        var counted = CPUMeter.threadSeconds()
        while let buffer = next() {
            var failed: MigrationError?
            do throws(MigrationError) { try send(buffer) } catch { failed = error }
            let now = CPUMeter.threadSeconds()
            cpu.add(now - counted)
            counted = now
            condition.withLock {
                inFlight = false
                free.append(buffer)
                if let failed, failure == nil {
                    failure = failed
                    free.append(contentsOf: queue)
                    queue.removeAll(keepingCapacity: true)
                }
                condition.broadcast()
            }
        }
        condition.withLock {
            threadRunning = false
            condition.broadcast()
        }
    }

    /// The oldest queued buffer, marked in flight; nil once stopped.
    private func next() -> Buffer? {
        condition.lock()
        defer { condition.unlock() }
        while !stopped, queue.isEmpty { condition.wait() }
        guard !stopped else { return nil }
        inFlight = true
        return queue.removeFirst()
    }
}
