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
    /// One thread per stream for the whole migration: rounds hand them work, none is
    /// created per round (the final round's overhead is part of the pause).
    private let workers: [StreamWorker]

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
        policies = channels.map { _ in CompressionPolicy(adaptive: options.adaptiveCompression, linkCap: cap) }
        workers = channels.map { _ in StreamWorker() }
        encoders = channels.indices.map { i in
            PageBatchEncoder(maxPages: options.batchPages, compressionLevel: options.compressionLevel,
                             deltaCache: options.delta ? caches[i] : nil)
        }
    }

    deinit { workers.forEach { $0.stop() } }

    var deltaHitRate: Double {
        let lookups = caches.reduce(0) { $0 + $1.lookups }
        return lookups == 0 ? 0 : Double(caches.reduce(0) { $0 + $1.hits }) / Double(lookups)
    }

    /// Sends `pages` as round `round`, then a ROUND frame on the control stream. With
    /// `skipZero` (round 0: the destination starts zeroed) all-zero pages are not sent.
    func send(pages: PageBitmap, round: UInt32, skipZero: Bool) throws(MigrationError) -> RoundStats {
        let n = channels.count
        var perStream = [[Int]](repeating: [], count: n)
        for index in pages.indices { perStream[index % n].append(index) }
        let started = ContinuousClock.now
        let results = Locked<[Result<StreamTotals, MigrationError>?]>(Array(repeating: nil, count: n))
        let group = DispatchGroup()
        let byteBudget = options.bandwidthLimit.map { $0 / Double(n) }
        for s in 0..<n {
            group.enter()
            let indices = perStream[s]
            workers[s].run { [self] in
                let r: Result<StreamTotals, MigrationError>
                do throws(MigrationError) {
                    r = .success(try cpu.measure { () throws(MigrationError) in
                        try sendStream(s, indices: indices, round: round, skipZero: skipZero, budget: byteBudget)
                    })
                } catch { r = .failure(error) }
                results.withLock { $0[s] = r }
                group.leave()
            }
        }
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
        do {
            try channels[0].send(.round(RoundReport(round: round, pages: UInt64(stats.pages), bytes: stats.wireBytes)))
        } catch { throw .transport(error) }
        return stats
    }

    /// STREAM_END on every stream (control last), after the final round.
    func finish() throws(MigrationError) {
        for c in channels.reversed() {
            do { try c.send(.streamEnd(frames: c.framesSent)) } catch { throw .transport(error) }
        }
    }

    private func sendStream(_ s: Int, indices: [Int], round: UInt32, skipZero: Bool,
                            budget: Double?) throws(MigrationError) -> StreamTotals {
        let encoder = encoders[s], channel = channels[s], memory = machine.memory, policy = policies[s]
        var total = StreamTotals()
        let started = ContinuousClock.now
        var sentBytes = 0.0
        func flush() throws(MigrationError) {
            guard encoder.count > 0 else { return }
            encoder.compressNext = policy.shouldCompress()
            let t0 = ContinuousClock.now
            let (flags, payload, b) = encoder.finish()
            let t1 = ContinuousClock.now
            do { try channel.sendPages(flags: flags, payload: payload) } catch { throw .transport(error) }
            policy.record(compressed: encoder.compressNext, plainBytes: b.uncompressedBytes, payloadBytes: b.payloadBytes,
                          encodeSeconds: (t1 - t0).seconds, sendSeconds: (ContinuousClock.now - t1).seconds)
            total.zero += b.zero; total.raw += b.raw; total.delta += b.delta
            total.payloadBytes += b.payloadBytes; total.frames += 1
            encoder.begin(round: round)
            if let budget { // token bucket: stay under the cap on average
                sentBytes += Double(payload.count + FrameHeader.size)
                let ahead = sentBytes / budget - (ContinuousClock.now - started).seconds
                if ahead > 0 { Thread.sleep(forTimeInterval: ahead) }
            }
        }
        encoder.begin(round: round)
        for index in indices {
            if cancelled.value { throw .cancelled }
            guard let page = memory.page(atIndex: index) else { continue }
            let bytes = UnsafeRawBufferPointer(page)
            if skipZero, PageKind.classify(bytes) == .zero { continue }
            _ = encoder.add(pageIndex: UInt64(index), page: bytes)
            if encoder.isFull { try flush() }
        }
        try flush()
        return total
    }
}

/// When to compress (issue: "backed off when the link is faster than compression"):
/// compression pays while the bytes it saves take longer to cross the link than compressing
/// them takes. Each stream keeps running estimates of its link rate (bytes / send time),
/// zstd's speed and its ratio on this guest's pages; while compression is off, every 16th
/// batch is still compressed to keep the estimates current.
final class CompressionPolicy {
    private let adaptive: Bool
    private let linkCap: Double?      // this stream's share of --bandwidth
    private var linkRate = 0.0        // bytes/s, EWMA over sends
    private var compressRate = 0.0    // plain bytes/s through zstd, EWMA
    private var savedFraction = 0.0   // 1 − payload/plain when compressed, EWMA
    private var batches = 0
    private var on = true

    init(adaptive: Bool, linkCap: Double?) {
        self.adaptive = adaptive
        self.linkCap = linkCap
    }

    func shouldCompress() -> Bool {
        batches += 1
        guard adaptive, linkRate > 0, compressRate > 0 else { return true }
        return on || batches % 16 == 0
    }

    func record(compressed: Bool, plainBytes: Int, payloadBytes: Int, encodeSeconds: Double, sendSeconds: Double) {
        func ewma(_ old: Double, _ new: Double) -> Double { old == 0 ? new : old * 0.7 + new * 0.3 }
        if sendSeconds > 0 { linkRate = ewma(linkRate, Double(payloadBytes) / sendSeconds) }
        if let linkCap { linkRate = min(linkRate == 0 ? linkCap : linkRate, linkCap) } // the limiter's sleeps are link time too
        if compressed, encodeSeconds > 0, plainBytes > 0 {
            compressRate = ewma(compressRate, Double(plainBytes) / encodeSeconds)
            savedFraction = ewma(savedFraction, 1 - Double(payloadBytes) / Double(plainBytes))
        }
        guard linkRate > 0, compressRate > 0 else { return }
        // Per plain byte: compressing costs 1/compressRate seconds and saves savedFraction/linkRate.
        on = savedFraction / linkRate > 1 / compressRate
    }
}

/// A thread that runs one job at a time until stopped (a stream's sender for the whole
/// migration).
final class StreamWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var job: (@Sendable () -> Void)? // guarded by `condition`
    private var stopped = false              // guarded by `condition`

    init() {
        Thread.detachNewThread { [self] in loop() }
    }

    /// Runs `job` on the worker's thread; the caller waits for it by its own means.
    func run(_ job: @escaping @Sendable () -> Void) {
        condition.withLock {
            precondition(self.job == nil, "a stream worker got a job while busy")
            self.job = job
            condition.broadcast()
        }
    }

    /// Ends the thread once its current job (if any) is done.
    func stop() {
        condition.withLock {
            stopped = true
            condition.broadcast()
        }
    }

    private func loop() {
        while true {
            condition.lock()
            while job == nil && !stopped { condition.wait() }
            guard let next = job else {
                condition.unlock()
                return
            }
            job = nil
            condition.unlock()
            next()
        }
    }
}

/// What one stream sent in a round.
struct StreamTotals {
    var zero = 0, raw = 0, delta = 0, payloadBytes = 0, frames = 0
}

extension MigrationSender {
    /// Pre-copy rounds until the remaining set fits the downtime target. Returns the pages
    /// still dirty, which the stop-and-copy round must send together with whatever the
    /// paused harvest adds.
    /// Stop-and-copy starts when the `DowntimePredictor`'s pause for the remaining set fits the
    /// target; the prediction is kept in `stats` to be set against the actual pause.
    func precopy(tracker: DirtyTracker, rounds: RoundSender, stats: inout MigrationStats, started: ContinuousClock.Instant,
                 roundTrip: Double, progress: @Sendable (RoundStats) -> Void) throws(MigrationError) -> PageBitmap {
        do { try tracker.start() } catch { throw .dirtyTracking(error) }
        let memory = machine.memory
        // Round 0: every page that can hold data — resident on this host, not ballooned.
        var set = memory.residentPages().subtracting(machine.pv.balloonedPages)
        var bandwidth = 0.0, bytesPerPage = 4096.0, throttleLevel = 0, throttle: UInt32 = 0
        var round: UInt32 = 0
        var predictor = DowntimePredictor()
        predictor.roundTrip = roundTrip
        stats.downtimeTargetSeconds = options.downtimeTarget
        while true {
            if isCancelled { throw .cancelled }
            let elapsed = (ContinuousClock.now - started).seconds
            guard elapsed < options.maxTime else {
                throw .notConverging(Self.notConvergingReason(stats: stats, predictor: predictor, elapsed: elapsed,
                                                              target: options.downtimeTarget))
            }
            var r = try rounds.send(pages: set, round: round, skipZero: round == 0)
            let next: PageBitmap
            let harvestStarted = ContinuousClock.now
            do { next = try tracker.harvest(vcpusPaused: false).pages } catch { throw .dirtyTracking(error) }
            predictor.harvest = (ContinuousClock.now - harvestStarted).seconds
            predictor.record(pages: r.pages, seconds: r.seconds)
            r.bandwidth = r.seconds > 0 ? Double(r.wireBytes) / r.seconds : 0
            if r.wireBytes >= 256 << 10 { bandwidth = max(bandwidth * 0.5, r.bandwidth) } // a round that says something
            if bandwidth == 0 { bandwidth = max(r.bandwidth, 100e6) }
            if let cap = options.bandwidthLimit { bandwidth = min(bandwidth, cap) }
            if r.pages > 0 { bytesPerPage = max(16, Double(r.wireBytes) / Double(r.pages)) }
            r.dirtyPages = next.count
            r.dirtyRate = r.seconds > 0 ? Double(next.count) / r.seconds : 0
            let prediction = predictor.predict(pages: next.count)
            r.expectedDowntime = prediction.seconds
            r.throttle = throttle
            stats.add(r)
            progress(r)
            if next.isEmpty || prediction.seconds <= options.downtimeTarget {
                stats.predictedDowntimeSeconds = prediction.seconds
                stats.predictedFixedSeconds = prediction.fixedSeconds
                stats.predictedFinalPages = next.count
                return next
            }
            // Auto-converge: the guest dirties faster than the link drains.
            if options.autoConverge, round >= 1, r.dirtyRate * bytesPerPage > 0.7 * bandwidth {
                throttleLevel += 1
                stats.throttled = true
                throttle = applyThrottle(level: throttleLevel, dirtyRate: r.dirtyRate, linkPages: bandwidth / bytesPerPage)
            }
            set = next
            round += 1
        }
    }

    /// Why pre-copy gave up, with the figures that decide it: what the pause would have been,
    /// which part of it does not shrink with the dirty set, and how fast the guest dirtied.
    static func notConvergingReason(stats: MigrationStats, predictor: DowntimePredictor, elapsed: Double,
                                    target: Double) -> String {
        guard let last = stats.rounds.last else { return "no round finished within --max-time" }
        let p = predictor.predict(pages: last.dirtyPages)
        let perPage = predictor.fit.secondsPerPage
        func ms(_ s: Double) -> String { String(format: "%.1f ms", s * 1000) }
        var why = "after \(Int(elapsed)) s (--max-time) \(last.dirtyPages) pages were still dirty; the pause would have been "
            + "\(ms(p.seconds)) (\(ms(p.pagesSeconds)) for the pages, \(ms(p.fixedSeconds)) fixed: harvest, state, commit round trip), "
            + "above the \(ms(target)) target. "
        if p.fixedSeconds >= target {
            why += "The fixed part alone exceeds the target: raise --downtime-ms."
        } else {
            why += String(format: "The guest dirtied %.0f pages/s; this link moves about %.0f pages/s",
                          last.dirtyRate, perPage > 0 ? 1 / perPage : 0)
            why += stats.throttled ? " even with the guest throttled (auto-converge)" : ""
            why += ". Raise --downtime-ms or --max-time, or lower the guest's write load."
        }
        return why
    }

    /// PV guests are asked to slow down (halving per level); others have their vCPUs paused
    /// for a growing share of the time. Returns the figure for the statistics.
    private func applyThrottle(level: Int, dirtyRate: Double, linkPages: Double) -> UInt32 {
        if machine.pv.isRegistered {
            let target = max(64, min(dirtyRate, linkPages) / Double(1 << min(level, 16)))
            let pagesPerSecond = UInt32(min(target, Double(UInt32.max)))
            machine.pv.setThrottle(pagesPerSecond: pagesPerSecond)
            return pagesPerSecond
        }
        let fraction = min(0.9, 0.2 * Double(level))
        machine.setCPUThrottle(fraction)
        return UInt32(fraction * 1000)
    }
}
