import Core
import Foundation

/// The source side of a live migration (design.md "Migrate", protocol.md §3): pre-copy
/// rounds of dirty pages over parallel TLS streams, a stop-and-copy when the rest fits the
/// downtime target, commit with a memory digest, and — until the destination acknowledges —
/// the VM stays here: on any failure it is resumed and the error says why.
public final class MigrationSender: @unchecked Sendable {
    public let machine: Machine
    public let name: String
    public let kernelSHA256: [UInt8]
    public let options: MigrationOptions
    private let cancelled = Locked(false)
    private let openStreams = Locked<[ByteStream]>([])
    /// HELLO → HELLO_ACK on the control stream: the commit's round trip, for the prediction.
    private let handshakeRoundTrip = Locked(0.0)

    public init(machine: Machine, name: String, kernelSHA256: [UInt8], options: MigrationOptions = .init()) {
        self.machine = machine
        self.name = name
        self.kernelSHA256 = kernelSHA256
        self.options = options
    }

    /// Stops the migration at the next batch boundary; the VM keeps running here.
    public func cancel() {
        cancelled.withLock { $0 = true }
        openStreams.value.forEach { $0.close() }
    }

    var isCancelled: Bool { cancelled.value }

    /// Migrates the machine to `host:port`. On success the VM runs on the destination and is
    /// stopped here. On failure it runs here (resumed if it had been paused).
    public func migrate(to host: String, port: UInt16, tls: TLSMode,
                        progress: @escaping @Sendable (RoundStats) -> Void = { _ in }) throws(MigrationError) -> MigrationStats {
        try options.validate()
        let started = ContinuousClock.now
        // This thread's CPU time plus every worker's (CPUMeter): the sender's cost.
        let cpu = CPUMeter(), threadCPUAtStart = CPUMeter.threadSeconds()
        var channels: [FrameChannel] = []
        defer { channels.forEach { $0.stream.close() } }
        do {
            channels = try connect(host: host, port: port, tls: tls)
        } catch {
            throw error
        }
        let tracker: DirtyTracker
        do { tracker = try DirtyTracker(machine: machine, mode: options.dirtySource) }
        catch { throw .dirtyTracking(error) }
        var paused = false
        do {
            var stats = MigrationStats()
            stats.memoryBytes = machine.memory.size
            stats.streams = channels.count
            stats.dirtySource = options.dirtySource
            let rounds = RoundSender(channels: channels, machine: machine, options: options, cancelled: cancelled, cpu: cpu)
            let pending = try precopy(tracker: tracker, rounds: rounds, stats: &stats, started: started,
                                      roundTrip: handshakeRoundTrip.value, progress: progress)

            // Stop-and-copy: from here the guest is paused until the destination resumes it.
            releaseThrottle()
            let pausedAt = ContinuousClock.now
            machine.pause()
            paused = true
            let final: DirtyRound
            do { final = try tracker.harvest(vcpusPaused: true) } catch { throw MigrationError.dirtyTracking(error) }
            let memory = machine.memory
            let excluded = final.ballooned
            nonisolated(unsafe) var digest: (digest: UInt64, pagesWithData: UInt64) = (0, 0)
            let digestDone = DispatchSemaphore(value: 0)
            Thread.detachNewThread {
                digest = cpu.measure { MemoryDigest.compute(memory: memory, candidates: memory.residentPages(), excluding: excluded) }
                digestDone.signal()
            }
            var last = try rounds.send(pages: pending.union(final.pages).subtracting(excluded),
                                       round: UInt32(stats.rounds.count), skipZero: false)
            try rounds.finish()
            let state: [UInt8]
            do { state = try machine.saveState().encoded() } catch { throw MigrationError.machine(error) }
            try sendControl(channels[0], .state(state))
            digestDone.wait()
            try sendControl(channels[0], .commit(digest: digest.digest, pagesWithData: digest.pagesWithData))
            switch try channels[0].receive() {
            case .commitAck(status: 0): break
            case let .error(report): throw MigrationError.peer(report)
            case let other: throw MigrationError.wire(.unexpected(frame: other.name, state: "awaiting COMMIT_ACK"))
            }
            stats.downtimeSeconds = (ContinuousClock.now - pausedAt).seconds
            stats.finalRoundSeconds = last.seconds
            last.seconds = stats.downtimeSeconds
            stats.add(last)
            stats.finalPages = last.pages
            stats.digest = digest.digest
            stats.pagesWithData = digest.pagesWithData
            stats.deltaHitRate = rounds.deltaHitRate
            stats.wireBytes = channels.reduce(0) { $0 + $1.bytesSent }
            stats.totalSeconds = (ContinuousClock.now - started).seconds
            stats.cpuSeconds = cpu.seconds + CPUMeter.threadSeconds() - threadCPUAtStart
            // The guest runs on the destination now: this copy is over.
            machine.stop()
            return stats
        } catch {
            let failure = error as? MigrationError ?? .transport(.tls("\(error)"))
            channels.first?.sendError(failure.reportCode, failure.description)
            releaseThrottle()
            tracker.stop()
            if paused { machine.resume() }
            throw failure
        }
    }

    // MARK: Connection set-up

    private func connect(host: String, port: UInt16, tls: TLSMode) throws(MigrationError) -> [FrameChannel] {
        func open() throws(MigrationError) -> FrameChannel {
            do {
                let s = try StreamConnector.connect(host: host, port: port, mode: tls, timeout: options.timeout)
                s.setTimeout(seconds: options.timeout)
                openStreams.withLock { $0.append(s) }
                if isCancelled { s.close() }
                return FrameChannel(s)
            } catch { throw .transport(error) }
        }
        let control = try open()
        var id = [UInt8](repeating: 0, count: 16)
        for i in id.indices { id[i] = UInt8.random(in: 0...255) }
        var capabilities: Capabilities = [.pvState]
        if options.compressionLevel != nil { capabilities.insert(.zstd) }
        if options.delta { capabilities.insert(.delta) }
        let helloSent = ContinuousClock.now
        try sendControl(control, .hello(Hello(streams: UInt32(options.streams), capabilities: capabilities, migrationID: id)))
        let ack: HelloAck
        switch try control.receive() {
        case let .helloAck(a): ack = a; handshakeRoundTrip.withLock { $0 = (ContinuousClock.now - helloSent).seconds }
        case let .error(report): throw .peer(report)
        case let other: throw .wire(.unexpected(frame: other.name, state: "awaiting HELLO_ACK"))
        }
        guard ack.version == 1 else { throw .incompatible("the destination chose protocol version \(ack.version)") }
        guard ack.capabilities.isSubset(of: capabilities), (1...UInt32(options.streams)).contains(ack.streams) else {
            throw .incompatible("the destination's HELLO_ACK offers capabilities or streams that were not asked for")
        }
        try sendControl(control, .machine(MachineDescription(
            memoryBytes: machine.memory.size, vcpus: UInt32(machine.vcpus.count),
            inKernelIRQChip: machine.vm.irqChipCreated, kernelSHA256: kernelSHA256, name: name)))
        var channels = [control]
        for index in 1..<Int(ack.streams) {
            let c = try open()
            try sendControl(c, .join(migrationID: id, streamIndex: UInt32(index)))
            channels.append(c)
        }
        return channels
    }

    func sendControl(_ channel: FrameChannel, _ frame: Frame) throws(MigrationError) {
        do { try channel.send(frame) } catch { throw .transport(error) }
    }

    private func releaseThrottle() {
        machine.setCPUThrottle(0)
        machine.pv.setThrottle(pagesPerSecond: 0)
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}

extension MigrationStats {
    mutating func add(_ r: RoundStats) {
        rounds.append(r)
        zeroPages += r.zeroPages; rawPages += r.rawPages; deltaPages += r.deltaPages
    }
}
