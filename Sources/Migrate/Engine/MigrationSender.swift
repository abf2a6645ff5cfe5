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
        var channels: [FrameChannel] = []
        defer { channels.forEach { $0.stream.close() } }
        let granted: Capabilities
        (channels, granted) = try connect(host: host, port: port, tls: tls)
        // Exactly what HELLO_ACK granted (§3.2): no zstd or deltas the destination declined.
        let effective = options.restricted(to: granted)
        let tracker: DirtyTracker
        do { tracker = try DirtyTracker(machine: machine, mode: options.dirtySource) }
        catch { throw .dirtyTracking(error) }
        var paused = false
        do {
            var stats = MigrationStats()
            stats.memoryBytes = machine.memory.size
            stats.streams = channels.count
            stats.dirtySource = options.dirtySource
            let rounds = RoundSender(channels: channels, machine: machine, options: effective, cancelled: cancelled)
            let pending = try precopy(tracker: tracker, rounds: rounds, stats: &stats, started: started, progress: progress)

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
                digest = MemoryDigest.compute(memory: memory, candidates: memory.residentPages(), excluding: excluded)
                digestDone.signal()
            }
            var last = try rounds.send(pages: pending.union(final.pages).subtracting(excluded),
                                       round: UInt32(stats.rounds.count), skipZero: false)
            try rounds.finish()
            try sendControl(channels[0], .state(try stateBlob(granted: granted)))
            digestDone.wait()
            try sendControl(channels[0], .commit(digest: digest.digest, pagesWithData: digest.pagesWithData))
            switch try channels[0].receive() {
            case .commitAck(status: 0): break
            case let .error(report): throw MigrationError.peer(report)
            case let other: throw MigrationError.wire(.unexpected(frame: other.name, state: "awaiting COMMIT_ACK"))
            }
            stats.downtimeSeconds = (ContinuousClock.now - pausedAt).seconds
            last.seconds = stats.downtimeSeconds
            stats.add(last)
            stats.finalPages = last.pages
            stats.digest = digest.digest
            stats.pagesWithData = digest.pagesWithData
            stats.deltaHitRate = rounds.deltaHitRate
            stats.wireBytes = channels.reduce(0) { $0 + $1.bytesSent }
            stats.totalSeconds = (ContinuousClock.now - started).seconds
            // The guest runs on the destination now: this copy is over.
            machine.stop()
            return stats
        } catch {
            let failure = destinationReason(for: error as? MigrationError ?? .transport(.tls("\(error)")),
                                            control: channels.first)
            if failure.isReported { channels.first?.sendError(failure.reportCode, failure.description) }
            releaseThrottle()
            tracker.stop()
            if paused { machine.resume() }
            throw failure
        }
    }

    // MARK: Connection set-up

    /// Opens the control stream, negotiates (HELLO / HELLO_ACK, §3.2), sends MACHINE and opens
    /// exactly the data streams the destination granted. Returns them with the granted capabilities.
    private func connect(host: String, port: UInt16, tls: TLSMode) throws(MigrationError) -> ([FrameChannel], Capabilities) {
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
        try sendControl(control, .hello(Hello(streams: UInt32(options.streams), capabilities: capabilities, migrationID: id)))
        let ack: HelloAck
        switch try control.receive() {
        case let .helloAck(a): ack = a
        case let .error(report): throw .peer(report)
        case let other: throw .wire(.unexpected(frame: other.name, state: "awaiting HELLO_ACK"))
        }
        guard ack.version == 1 else { throw .incompatible("the destination chose protocol version \(ack.version)") }
        guard ack.capabilities.isSubset(of: capabilities), (1...UInt32(options.streams)).contains(ack.streams) else {
            throw .incompatible("the destination's HELLO_ACK offers capabilities or streams that were not asked for")
        }
        if !ack.capabilities.contains(.pvState), machine.pv.savedState().isInUse {
            throw .incompatible("the destination declined PV_STATE, but this guest uses the PV interface (its state cannot travel)")
        }
        do throws(MigrationError) {
            return (try attachStreams(control, ack: ack, id: id, open: open), ack.capabilities)
        } catch {
            // Refused at MACHINE, say: the destination said why before hanging up.
            throw destinationReason(for: error, control: control)
        }
    }

    private func attachStreams(_ control: FrameChannel, ack: HelloAck, id: [UInt8],
                               open: () throws(MigrationError) -> FrameChannel) throws(MigrationError) -> [FrameChannel] {
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

    /// The STATE payload (§1.8): the PV section (tag 4) only when PV_STATE was granted. Without
    /// it the guest's PV state must be empty (checked again here: the guest may have registered
    /// since the handshake), else the migration fails and the VM resumes here.
    private func stateBlob(granted: Capabilities) throws(MigrationError) -> [UInt8] {
        var state: MachineState
        do { state = try machine.saveState() } catch { throw .machine(error) }
        if !granted.contains(.pvState) {
            if state.pv?.isInUse == true {
                throw .incompatible("the destination declined PV_STATE, but this guest uses the PV interface (its state cannot travel)")
            }
            state.pv = nil
        }
        return state.encoded()
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
