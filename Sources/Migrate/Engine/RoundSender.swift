import Core
import Foundation

/// Sends the pages of one round over every stream in parallel (protocol.md §3.3–3.4):
/// page `i` always goes to stream `i mod streams`, so each stream — with its own encoder and
/// delta cache — always holds the destination's current copy of its pages.
final class RoundSender: @unchecked Sendable {
    let channels: [FrameChannel]
    let machine: Machine
    let options: MigrationOptions
    private let cancelled: Locked<Bool>
    private let encoders: [PageBatchEncoder]
    private let caches: [DeltaCache]
    private let policies: [CompressionPolicy]
    private let cpu: CPUMeter
    /// One thread per stream but the first for the whole migration (`workers[s - 1]` is
    /// stream `s`'s; stream 0 runs on the thread that calls `send`): rounds hand them work,
    /// none is created per round (the final round's overhead is part of the pause). Each
    /// encodes its stream's batches and hands them to the stream's `SendPipeline`.
    private let workers: [StreamWorker]
    /// Per stream: the send stage (a thread of its own where that pays, `SendPipeline.pays`)
    /// and its reused frame buffers.
    private let pipelines: [SendPipeline<OutgoingFrame>]
    /// Per stream: the `--bandwidth` token bucket, run by the send stage.
    private let pacers: [Pacer]
    /// The hash of every page as last sent (§3.5): the source's incremental digest, and
    /// what the verification sweep (§3.5.2) compares memory with.
    let sentHashes: PageHashTable

    init(channels: [FrameChannel], machine: Machine, options: MigrationOptions, cancelled: Locked<Bool>, cpu: CPUMeter) {
        self.channels = channels
        self.cpu = cpu
        self.machine = machine
        self.options = options
        self.cancelled = cancelled
        let perStreamCache = options.deltaCacheBytes / max(1, channels.count)
        let caches = options.delta ? channels.map { _ in DeltaCache(capacityBytes: perStreamCache) } : []
        self.caches = caches
        let cap = options.bandwidthLimit.map { $0 / Double(max(1, channels.count)) }
        let policies = channels.map { _ in CompressionPolicy(adaptive: options.adaptiveCompression, linkCap: cap) }
        self.policies = policies
        workers = channels.dropFirst().map { _ in StreamWorker() }  // stream 0 runs on the caller's thread
        let sentHashes = PageHashTable(pageCount: machine.memory.pageCount)
        self.sentHashes = sentHashes
        encoders = channels.indices.map { i in
            let encoder = PageBatchEncoder(maxPages: options.batchPages, compressionLevel: options.compressionLevel,
                                           deltaCache: options.delta ? caches[i] : nil)
            encoder.sentHashes = sentHashes
            return encoder
        }
        let pacers = channels.map { _ in Pacer(bytesPerSecond: cap) }
        self.pacers = pacers
        let threaded = SendPipeline<OutgoingFrame>.pays(streams: channels.count)
        pipelines = channels.indices.map { i in
            Self.sendStage(channels[i], policy: policies[i], pacer: pacers[i], options: options, threaded: threaded, cpu: cpu)
        }
    }

    /// A stream's send stage: writes each finished frame from its buffer, tells the compression
    /// policy how long the link took, and paces to `--bandwidth`.
    private static func sendStage(_ channel: FrameChannel, policy: CompressionPolicy, pacer: Pacer, options: MigrationOptions,
                                  threaded: Bool, cpu: CPUMeter) -> SendPipeline<OutgoingFrame> {
        let buffers = (0..<(threaded ? 2 : 1)).map { _ in
            OutgoingFrame(FrameBuffer(maxPages: options.batchPages, compressing: options.compressionLevel != nil))
        }
        return SendPipeline(buffers: buffers, threaded: threaded, cpu: cpu) { out throws(MigrationError) in
            let t0 = ContinuousClock.now
            do throws(TransportError) { try channel.send(out.buffer) } catch { throw .transport(error) }
            policy.record(compressed: out.compressionTried, plainBytes: out.stats.uncompressedBytes,
                          payloadBytes: out.stats.payloadBytes, encodeSeconds: out.encodeSeconds,
                          sendSeconds: (ContinuousClock.now - t0).seconds)
            pacer.sent(bytes: out.buffer.frame.count)
        }
    }

    deinit {
        workers.forEach { $0.stop() }
        pipelines.forEach { $0.stop() }
    }

    var deltaHitRate: Double {
        let lookups = caches.reduce(0) { $0 + $1.lookups }
        return lookups == 0 ? 0 : Double(caches.reduce(0) { $0 + $1.hits }) / Double(lookups)
    }

    /// Sends `pages` as round `round`, then a ROUND frame on the control stream. With
    /// `skipZero` (round 0: the destination starts zeroed) all-zero pages are not sent.
    func send(pages: PageBitmap, round: UInt32, skipZero: Bool) throws(MigrationError) -> RoundStats {
        let n = channels.count
        var perStream = [[Int]](repeating: [], count: n)
        pages.forEachIndex { perStream[$0 % n].append($0) }
        let started = ContinuousClock.now
        let cpuAtStart = cpu.seconds, guestAtStart = machine.vcpuCPUSeconds, idleAtStart = HostCPU.idleSeconds()
        let results = Locked<[Result<StreamTotals, MigrationError>?]>(Array(repeating: nil, count: n))
        let group = DispatchGroup()
        // Streams 1… on their workers, stream 0 on this thread: one thread hand-off fewer per
        // round. In the paused final round waking a sleeping worker costs ~30 µs on a quiet
        // host and up to 2 ms on a busy one (docs/benchmarks.md "The pause's size-dependent
        // work"); pre-copy rounds go the same way, so the predictor measures what the pause does.
        for s in 1..<n {
            group.enter()
            let indices = perStream[s]
            workers[s - 1].run { [self] in
                let r = cpu.measure { runStream(s, indices: indices, round: round, skipZero: skipZero) }
                results.withLock { $0[s] = r }
                group.leave()
            }
        }
        // This thread's CPU is the caller's to count (MigrationSender adds its own thread's
        // time), so it goes into the round's figure only, not into `cpu`.
        let ownCPUAtStart = CPUMeter.threadSeconds()
        let first = runStream(0, indices: perStream[0], round: round, skipZero: skipZero)
        let ownCPU = CPUMeter.threadSeconds() - ownCPUAtStart
        results.withLock { $0[0] = first }
        group.wait()
        var stats = RoundStats(round: Int(round))
        for r in results.value {
            switch r {
            case let .success(b)?:
                stats.zeroPages += b.zero; stats.rawPages += b.raw; stats.deltaPages += b.delta
                stats.wireBytes += UInt64(b.payloadBytes + FrameHeader.size * b.frames)
            case let .failure(e)?:
                // The data streams are done for; the control stream stays open so that the
                // destination's ERROR frame, if it sent one, can still be read.
                channels.dropFirst().forEach { $0.stream.close() }
                throw e
            case nil: throw MigrationError.cancelled
            }
        }
        stats.pages = stats.zeroPages + stats.rawPages + stats.deltaPages
        stats.seconds = (ContinuousClock.now - started).seconds
        stats.cpuSeconds = cpu.seconds - cpuAtStart + max(0, ownCPU)
        stats.guestCPUSeconds = machine.vcpuCPUSeconds - guestAtStart
        if let idleAtStart, let idle = HostCPU.idleSeconds() { stats.hostIdleSeconds = max(0, idle - idleAtStart) }
        do {
            try channels[0].send(.round(RoundReport(round: round, pages: UInt64(stats.pages), bytes: stats.wireBytes)))
        } catch { throw .transport(error) }
        return stats
    }

    private func runStream(_ s: Int, indices: [Int], round: UInt32, skipZero: Bool) -> Result<StreamTotals, MigrationError> {
        do throws(MigrationError) {
            return .success(try sendStream(s, indices: indices, round: round, skipZero: skipZero))
        } catch { return .failure(error) }
    }

    /// STREAM_END on every stream (control last), after the final round.
    func finish() throws(MigrationError) {
        for c in channels.reversed() {
            do { try c.send(.streamEnd(frames: c.framesSent)) } catch { throw .transport(error) }
        }
    }

    /// Encodes stream `s`'s pages of the round into frame buffers and hands each full one to
    /// the stream's send stage; returns once the last has been sent.
    private func sendStream(_ s: Int, indices: [Int], round: UInt32, skipZero: Bool) throws(MigrationError) -> StreamTotals {
        let encoder = encoders[s], memory = machine.memory, policy = policies[s], pipeline = pipelines[s]
        var total = StreamTotals()
        var filling: OutgoingFrame?  // acquired from the pipeline, being filled by the encoder
        /// Seals the batch being filled; returns its buffer, ready to send.
        func seal() -> OutgoingFrame? {
            guard let out = filling else { return nil }
            filling = nil
            out.compressionTried = policy.shouldCompress()
            encoder.compressNext = out.compressionTried
            let t0 = ContinuousClock.now
            let b = encoder.finishFrame()
            out.encodeSeconds = (ContinuousClock.now - t0).seconds
            out.stats = b
            total.zero += b.zero; total.raw += b.raw; total.delta += b.delta
            total.payloadBytes += b.payloadBytes; total.frames += 1
            return out
        }
        pacers[s].begin()  // the send stage is idle between rounds (drained below)
        let cachedFrom = caches.isEmpty ? 0 : Self.firstCached(pages: indices.count, capacity: caches[s].capacityPages)
        do throws(MigrationError) {
            for (position, index) in indices.enumerated() {
                // Every 64 pages, not every page: the lock was ~8 % of the sending threads' samples in bulk.
                if position & 63 == 0, cancelled.value { throw .cancelled }
                guard let page = memory.page(atIndex: index) else { continue }
                let bytes = UnsafeRawBufferPointer(page)
                if skipZero, PageKind.classify(bytes) == .zero { continue }
                if filling == nil {
                    let out = try pipeline.acquire()
                    encoder.begin(round: round, into: out.buffer)
                    filling = out
                }
                _ = encoder.add(pageIndex: UInt64(index), page: bytes, cache: position >= cachedFrom)
                if encoder.isFull, let full = seal() { try pipeline.submit(full) }
            }
            try pipeline.finish(last: seal())
        } catch {
            throw pipeline.abandon(error)
        }
        return total
    }
}

extension RoundSender {
    /// The position in a stream's round of `pages` pages from which pages are stored in its
    /// delta cache of `capacity` pages. A round of more pages than the cache holds (round 0
    /// of a big guest: 131,000 pages per stream against 8,192) evicts its own early stores
    /// before any of those pages is sent again; storing them costs a 4 KiB copy and an index
    /// update each — 0.3–0.5 CPU-seconds of the source's ~2.1 per GiB in round 0 (measured,
    /// docs/benchmarks.md) — for nothing. Only the last `capacity` pages are stored: about what
    /// the cache would hold at the round's end anyway (exactly, for a cache with no hits).
    static func firstCached(pages: Int, capacity: Int) -> Int {
        max(0, pages - max(0, capacity))
    }
}

/// A frame buffer on its way through a stream's `SendPipeline`, with what the send stage
/// reports to the compression policy.
final class OutgoingFrame {
    let buffer: FrameBuffer
    var compressionTried = false
    var encodeSeconds = 0.0
    var stats = BatchStats()
    init(_ buffer: FrameBuffer) { self.buffer = buffer }
}

/// One stream's share of `--bandwidth`: a token bucket over a round — after each frame, the
/// send stage sleeps for as long as it is ahead of the budget (the encode stage then waits for
/// a free buffer). nil budget: never sleeps.
final class Pacer: @unchecked Sendable {
    private let budget: Double?
    // Used by the send stage; `begin` runs while it is idle (between rounds), ordered by the pipeline's lock.
    private var started = ContinuousClock.now
    private var sentBytes = 0.0

    init(bytesPerSecond: Double?) { budget = bytesPerSecond }

    func begin() {
        started = ContinuousClock.now
        sentBytes = 0
    }

    func sent(bytes: Int) {
        guard let budget else { return }
        sentBytes += Double(bytes)
        let ahead = sentBytes / budget - (ContinuousClock.now - started).seconds
        if ahead > 0 { Thread.sleep(forTimeInterval: ahead) }
    }
}

/// What one stream sent in a round.
struct StreamTotals {
    var zero = 0, raw = 0, delta = 0, payloadBytes = 0, frames = 0
}
