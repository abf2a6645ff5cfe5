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
        policies = channels.map { _ in CompressionPolicy(adaptive: options.adaptiveCompression, linkCap: cap) }
        workers = channels.map { _ in StreamWorker() }
        let sentHashes = PageHashTable(pageCount: machine.memory.pageCount)
        self.sentHashes = sentHashes
        encoders = channels.indices.map { i in
            let encoder = PageBatchEncoder(maxPages: options.batchPages, compressionLevel: options.compressionLevel,
                                           deltaCache: options.delta ? caches[i] : nil)
            encoder.sentHashes = sentHashes
            return encoder
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
        let cpuAtStart = cpu.seconds, guestAtStart = machine.vcpuCPUSeconds, idleAtStart = HostCPU.idleSeconds()
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
        stats.cpuSeconds = cpu.seconds - cpuAtStart
        stats.guestCPUSeconds = machine.vcpuCPUSeconds - guestAtStart
        if let idleAtStart, let idle = HostCPU.idleSeconds() { stats.hostIdleSeconds = max(0, idle - idleAtStart) }
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

/// What one stream sent in a round.
struct StreamTotals {
    var zero = 0, raw = 0, delta = 0, payloadBytes = 0, frames = 0
}
