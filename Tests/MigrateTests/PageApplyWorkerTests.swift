import Core
import Testing

@testable import Migrate
import TestSupport

@Suite("page apply worker")
struct PageApplyWorkerTests {
    /// Many rounds of small changes to the same pages (so most go as DELTA against the version
    /// the previous batch left), all queued faster than they are applied: the destination ends
    /// equal to the source only if every batch was applied once, in order.
    @Test("applies a stream's batches in order: later versions and deltas land on the right base",
          arguments: [true, false])
    func appliesInOrder(threaded: Bool) throws {
        let source = try GuestMemory(size: 4 << 20)
        let destination = try GuestMemory(size: 4 << 20)
        let encoder = PageBatchEncoder(maxPages: 8, compressionLevel: 1, deltaCache: DeltaCache(capacityBytes: 64 * 4096))
        let applied = Locked(0)
        let worker = PageApplyWorker(decoder: PageBatchDecoder(), memory: destination, threaded: threaded, depth: 2,
                                     cpu: CPUMeter(), pageApplied: { _, _ in },
                                     batchApplied: { n in applied.withLock { $0 += n } })
        var generator = SeededGenerator(seed: 7)
        var sent = 0, deltas = 0
        for round in 0..<20 as Range<UInt32> {
            encoder.begin(round: round)
            for index in 0..<24 {
                let page = source.page(atIndex: index)!
                page[Int.random(in: 0..<4096, using: &generator)] = UInt8.random(in: 1...255, using: &generator)
                encoder.add(pageIndex: UInt64(index), page: UnsafeRawBufferPointer(page))
                if encoder.isFull || index == 23 {
                    let (flags, payload, stats) = encoder.finish()
                    deltas += stats.delta
                    sent += stats.zero + stats.raw + stats.delta
                    try worker.submit(flags: flags, payload: payload)
                    encoder.begin(round: round)
                }
            }
        }
        #expect(try worker.finish() == sent)
        #expect(applied.value == sent)
        #expect(deltas > 300, "most versions went as deltas against the previous one (\(deltas))")
        for index in 0..<24 {
            #expect(pageBytes(destination, index) == pageBytes(source, index), "page \(index) differs after the worker drained")
        }
    }

    /// A batch that fails validation stops the worker: the reader's next submit (or finish)
    /// reports the codec error, and nothing after the bad batch is applied.
    @Test("a malformed batch fails the stream with the codec's error and stops applying")
    func malformedBatchStops() throws {
        let destination = try GuestMemory(size: 4 << 20)
        let worker = PageApplyWorker(decoder: PageBatchDecoder(), memory: destination, depth: 1, cpu: CPUMeter(),
                                     pageApplied: { _, _ in }, batchApplied: { _ in })
        let encoder = PageBatchEncoder(maxPages: 4, compressionLevel: nil, deltaCache: nil)
        let good = randomBytes(4096, seed: 3)
        encoder.begin(round: 0)
        good.withUnsafeBytes { _ = encoder.add(pageIndex: 1, page: $0) }
        let (flags, payload, _) = encoder.finish()
        try worker.submit(flags: 0, payload: [1, 2, 3])  // shorter than a batch header
        var thrown: MigrationError?
        do {
            // The worker may not have reached the bad batch yet: keep feeding until it reports.
            for _ in 0..<10_000 { try worker.submit(flags: flags, payload: payload) }
            _ = try worker.finish()
        } catch { thrown = error }
        guard case .codec(.pageBatchMalformed)? = thrown else {
            Issue.record("expected the codec's pageBatchMalformed, got \(String(describing: thrown))")
            return
        }
        #expect(pageBytes(destination, 1) == [UInt8](repeating: 0, count: 4096), "a batch after the bad one was applied")
    }

    /// A worker thread per stream only where cores would otherwise idle.
    @Test("a worker thread is used only when the host has more cores than the migration has streams")
    func threadsOnlyWithSpareCores() {
        #expect(!PageApplyWorker.pays(streams: 2, cores: 2))
        #expect(!PageApplyWorker.pays(streams: 4, cores: 2))
        #expect(PageApplyWorker.pays(streams: 2, cores: 8))
        #expect(PageApplyWorker.pays(streams: 1, cores: 2))
    }

    /// A reader that stops (its stream broke) gets its own error back when the worker is fine.
    @Test("abandon reports the reader's error when the worker did not fail")
    func abandonKeepsTheReadersError() throws {
        let destination = try GuestMemory(size: 4 << 20)
        let worker = PageApplyWorker(decoder: PageBatchDecoder(), memory: destination, cpu: CPUMeter(),
                                     pageApplied: { _, _ in }, batchApplied: { _ in })
        let error = worker.abandon(.transport(.timeout))
        guard case .transport(.timeout) = error else {
            Issue.record("expected the reader's transport timeout, got \(error)")
            return
        }
    }
}
