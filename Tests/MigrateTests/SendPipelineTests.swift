import Core
import Foundation
import Testing
import TestSupport

@testable import Migrate

/// A buffer the tests fill: a sequence number and a block of bytes derived from it, so a send
/// that sees the bytes of another number read a buffer the encoder was refilling.
private final class Slot: @unchecked Sendable {
    var number = -1
    var bytes = [UInt8](repeating: 0, count: 512)

    func fill(_ n: Int) {
        number = n
        for i in bytes.indices { bytes[i] = UInt8(truncatingIfNeeded: n &* 31 &+ i) }
    }

    var intact: Bool { bytes.indices.allSatisfy { bytes[$0] == UInt8(truncatingIfNeeded: number &* 31 &+ $0) } }
}

/// A send stage the test holds: `started` signals as each send begins, and it waits for `gate`.
private final class Gate: @unchecked Sendable {
    let started = DispatchSemaphore(value: 0)
    let gate = DispatchSemaphore(value: 0)

    func pass() { started.signal(); gate.wait() }
    /// Waits for a send to begin (a bound only against a hang).
    func awaitStart() -> Bool { started.wait(timeout: .now() + Wait.hangBound) == .success }
}

@Suite("send pipeline")
struct SendPipelineTests {
    private func slots(_ n: Int) -> [Slot] { (0..<n).map { _ in Slot() } }

    /// A threaded pipeline whose send stage is held at the gate: batch 0 in flight (its send
    /// has started), batch 1 queued behind it; `sent` lists what each finished send carried.
    private func gatedPipelineWithTwoSubmitted() throws -> (SendPipeline<Slot>, Gate, Locked<[Int]>) {
        let gate = Gate(), sent = Locked<[Int]>([])
        let pipeline = SendPipeline(buffers: slots(2), threaded: true, cpu: CPUMeter()) { slot throws(MigrationError) in
            gate.pass()
            sent.withLock { $0.append(slot.number) }
        }
        let first = try pipeline.acquire()
        first.fill(0)
        try pipeline.submit(first)
        #expect(gate.awaitStart(), "the first send never started")
        let second = try pipeline.acquire()
        second.fill(1)
        try pipeline.submit(second)
        return (pipeline, gate, sent)
    }

    /// Many batches, each sent while the next is filled, then a last one through `finish`: the
    /// send stage sees them in the order submitted, each with the contents it was submitted
    /// with, and the last on the caller's thread.
    @Test("sends a stream's buffers in the order submitted, each intact, the last on the caller's thread",
          arguments: [true, false])
    func keepsOrder(threaded: Bool) throws {
        let seen = Locked<[Int]>([]), damaged = Locked<[Int]>([]), lastOnCaller = Locked(false)
        let caller = pthread_self()
        let pipeline = SendPipeline(buffers: slots(2), threaded: threaded, cpu: CPUMeter()) { slot throws(MigrationError) in
            if !slot.intact { damaged.withLock { $0.append(slot.number) } }
            seen.withLock { $0.append(slot.number) }
            if slot.number == 499 { lastOnCaller.withLock { $0 = pthread_equal(pthread_self(), caller) != 0 } }
        }
        defer { pipeline.stop() }
        for n in 0..<499 {
            let slot = try pipeline.acquire()
            slot.fill(n)
            try pipeline.submit(slot)
        }
        let last = try pipeline.acquire()
        last.fill(499)
        try pipeline.finish(last: last)
        #expect(seen.value == Array(0..<500), "sent out of order or not all: first differences \(zip(seen.value, 0...).filter { $0 != $1 }.prefix(5))")
        #expect(damaged.value.isEmpty, "buffers changed while being sent: \(damaged.value.prefix(10))")
        #expect(lastOnCaller.value, "the round's last batch crossed to the send thread")
        try pipeline.finish(last: nil)  // a round that ended on a full batch: just drains
    }

    /// The encoder never gets a buffer that is queued or being sent. The test tracks what it
    /// submitted and what the send stage finished (before the pipeline itself learns it), so a
    /// buffer handed out too early is caught at `acquire`, whatever the interleaving.
    @Test("never hands out a buffer that is still queued or being sent")
    func noReuseWhileSending() throws {
        let outstanding = Locked<Set<ObjectIdentifier>>([])  // submitted, send not yet finished
        let pipeline = SendPipeline(buffers: slots(2), threaded: true, cpu: CPUMeter()) { slot throws(MigrationError) in
            let intact = slot.intact
            outstanding.withLock { _ = $0.remove(ObjectIdentifier(slot)) }
            if !intact { throw .cancelled }  // surfaces at the encoder as a failure
        }
        defer { pipeline.stop() }
        var reused = 0
        for n in 0..<500 {
            let slot = try pipeline.acquire()
            if outstanding.value.contains(ObjectIdentifier(slot)) { reused += 1 }
            slot.fill(n)
            outstanding.withLock { _ = $0.insert(ObjectIdentifier(slot)) }
            try pipeline.submit(slot)
        }
        try pipeline.drain()
        #expect(reused == 0, "\(reused) buffers were handed out while queued or being sent")
        #expect(outstanding.value.isEmpty, "drain returned with \(outstanding.value.count) sends unfinished")
    }

    /// A failing send stops the send stage (nothing queued behind it is sent) and the encoder
    /// gets that error at its next step.
    @Test("a send failure stops both stages and reaches the encoder", arguments: [true, false])
    func sendFailureStops(threaded: Bool) {
        let sends = Locked(0)
        let pipeline = SendPipeline(buffers: slots(2), threaded: threaded, cpu: CPUMeter()) { _ throws(MigrationError) in
            let n = sends.withLock { $0 += 1; return $0 }
            if n == 5 { throw .transport(.peerClosed) }
        }
        defer { pipeline.stop() }
        var thrown: MigrationError?, submitted = 0
        do throws(MigrationError) {
            for n in 0..<1_000 {
                let slot = try pipeline.acquire()
                slot.fill(n)
                try pipeline.submit(slot)
                submitted += 1
            }
            try pipeline.drain()
        } catch { thrown = error }
        guard case .transport(.peerClosed)? = thrown else {
            Issue.record("expected the send stage's peerClosed at the encoder, got \(String(describing: thrown))")
            return
        }
        #expect(sends.value == 5, "the send stage went on after its failure: \(sends.value) sends")
        #expect(submitted < 1_000, "the encoder never noticed the failure")
        #expect(pipeline.abandon(.cancelled).isPeerClosed, "abandon after a send failure must report the first cause")
    }

    /// The encoder fails while a send is in flight and another batch is queued: the queued one
    /// is dropped, abandon waits for the one in flight and returns the encoder's error, and the
    /// pipeline refuses work afterwards.
    @Test("an encode failure drops the queue, waits for the send in flight and reports its error")
    func encodeFailureStops() throws {
        let (pipeline, gate, sent) = try gatedPipelineWithTwoSubmitted()
        defer { pipeline.stop() }
        // Opens the gate only once abandon has dropped the queue: a third acquire waits (both
        // buffers are taken) until abandon records its failure, then throws.
        let opener = Background { [gate] in
            do { _ = try pipeline.acquire() } catch {}
            gate.gate.signal()
        }
        let reported = pipeline.abandon(.cancelled)
        try opener.join(timeout: Wait.hangBound)
        guard case .cancelled = reported else {
            Issue.record("abandon should report the encoder's own error, got \(reported)")
            return
        }
        #expect(sent.value == [0], "abandon returned before the send in flight ended, or a dropped batch was sent: \(sent.value)")
        #expect(throws: MigrationError.self, "the pipeline accepted work after abandon") { _ = try pipeline.acquire() }
    }

    /// Stopping a pipeline whose send is blocked ends the thread once that send returns, without
    /// sending what was queued.
    @Test("stop ends the send thread without sending what is queued, and does not hang")
    func stopDoesNotHang() throws {
        let (pipeline, gate, sent) = try gatedPipelineWithTwoSubmitted()
        pipeline.stop()
        gate.gate.signal()
        #expect(Wait.until { !pipeline.isRunning }, "the send thread still runs after stop; sent: \(sent.value)")
        #expect(sent.value == [0], "stop sent what was queued: \(sent.value)")

        let idle = SendPipeline(buffers: slots(2), threaded: true, cpu: CPUMeter()) { _ throws(MigrationError) in }
        idle.stop()
        #expect(Wait.until { !idle.isRunning }, "an idle pipeline's thread did not end on stop")
    }

    /// The send thread only where cores would otherwise idle, unless overridden for measuring.
    @Test("threaded only with spare cores, or when overridden")
    func threadedWithSpareCores() {
        #expect(!SendPipeline<Slot>.pays(streams: 2, cores: 2, override: nil))
        #expect(SendPipeline<Slot>.pays(streams: 2, cores: 8, override: nil))
        #expect(SendPipeline<Slot>.pays(streams: 2, cores: 2, override: "threaded"))
        #expect(!SendPipeline<Slot>.pays(streams: 2, cores: 8, override: "inline"))
    }
}

private extension MigrationError {
    var isPeerClosed: Bool { if case .transport(.peerClosed) = self { true } else { false } }
}
