import Core
import Foundation

/// The source side of a live migration (design.md "Migrate", protocol.md §3): pre-copy
/// rounds of dirty pages over parallel TLS streams, a stop-and-copy when the rest fits the
/// downtime target, then the commit protocol (§3.6, `MigrationSender+Commit.swift`): until
/// GO is sent the VM stays here and any failure resumes it; after GO it runs only where the
/// destination decided, and if that cannot be known the VM stays paused (`.unresolved`).
public final class MigrationSender: @unchecked Sendable {
    public let machine: Machine
    public let name: String
    public let kernelSHA256: [UInt8]
    public let options: MigrationOptions
    private let cancelled = Locked(false)
    private let openStreams = Locked<[ByteStream]>([])
    /// Where the commit protocol stands (nil before COMMIT): decides what a failure means.
    let commitState = Locked<SourceCommit?>(nil)
    /// Called when the destination is PREPARED, before GO is sent: records the hand-over
    /// (`VMHost` writes it to the runtime directory). If it throws, GO is not sent and the VM
    /// resumes here.
    public var onHandOver: (@Sendable (UnresolvedMigration) throws -> Void)?
    /// HELLO → HELLO_ACK on the control stream: the commit's round trip, for the prediction.
    private let handshakeRoundTrip = Locked(0.0)
    /// The last stop-and-copy pause, phase by phase (nil until one completed).
    public var lastPausePhases: PausePhases? { pausePhases.value }
    /// Where the commit protocol stands (protocol.md §3.6.3); nil before COMMIT is prepared.
    public var commitPhase: SourceCommit.Phase? { commitState.value?.phase }
    private let pausePhases = Locked<PausePhases?>(nil)

    public init(machine: Machine, name: String, kernelSHA256: [UInt8], options: MigrationOptions = .init()) {
        self.machine = machine
        self.name = name
        self.kernelSHA256 = kernelSHA256
        self.options = options
    }

    /// Stops the migration at the next batch boundary; the VM keeps running here. Does
    /// nothing once the hand-over has begun (PREPARED received): then the destination decides.
    public func cancel() {
        guard commitState.value?.mayResume ?? true else { return }
        cancelled.withLock { $0 = true }
        openStreams.value.forEach { $0.close() }
    }

    var isCancelled: Bool { cancelled.value }

    /// Migrates the machine to `host:port`. On success the VM runs on the destination and is
    /// stopped here. On failure it runs here (resumed if it had been paused) — except
    /// `.unresolved`: the VM is paused here until `resolve` learns the destination's decision.
    public func migrate(to host: String, port: UInt16, tls: TLSMode,
                        progress: @escaping @Sendable (RoundStats) -> Void = { _ in }) throws(MigrationError) -> MigrationStats {
        try options.validate()
        let started = ContinuousClock.now
        // This thread's CPU time plus every worker's (CPUMeter): the sender's cost.
        let cpu = CPUMeter(), threadCPUAtStart = CPUMeter.threadSeconds()
        var channels: [FrameChannel] = []
        defer { channels.forEach { $0.stream.close() } }
        let granted: Capabilities, migrationID: [UInt8]
        (channels, granted, migrationID) = try connect(host: host, port: port, tls: tls)
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
            let rounds = RoundSender(channels: channels, machine: machine, options: effective, cancelled: cancelled, cpu: cpu)
            var balloonMap = balloonMapSender(granted: granted) // nil: the map goes in STATE
            let pending = try precopy(tracker: tracker, rounds: rounds, stats: &stats, started: started,
                                      roundTrip: handshakeRoundTrip.value,
                                      probeRoundTrip: granted.contains(.ping) ? { [self] nonce throws(MigrationError) in
                                          try pingRoundTrip(channels[0], nonce: nonce, work: granted.contains(.commitWork)) } : nil,
                                      balloonUpdate: balloonMap == nil ? nil : { [self] () throws(MigrationError) in
                                          try sendBalloonUpdate(&balloonMap!, words: machine.pv.balloonedPages.words,
                                                                on: channels[0], final: false) },
                                      progress: progress)

            // Stop-and-copy: from here the guest is paused until the destination resumes it.
            var slice: LatencySlice?
            defer { slice?.end() }
            releaseThrottle()
            let pausedAt = ContinuousClock.now
            machine.pause()
            paused = true
            var clock = PhaseClock<PausePhases>(startingAt: pausedAt)
            clock.lap(\.stopVCPUs)
            let final: DirtyRound
            do { final = try tracker.harvest(vcpusPaused: true, last: true) } catch { throw MigrationError.dirtyTracking(error) }
            clock.lap(\.harvest)
            let excluded = final.ballooned
            var finalSet = pending  // one copy of the bitmap, not two (O(memory) in the pause)
            finalSet.formUnion(final.pages)
            finalSet.subtract(excluded)
            let last = try rounds.send(pages: finalSet,
                                       round: UInt32(stats.rounds.count), skipZero: false)
            clock.lap(\.finalRound)
            // This thread asks for a short slice until DONE (`LatencySlice`): from here it mostly
            // waits (PREPARED, DONE), and a wake-up must not queue behind the guest started at the
            // destination. Not in the final round: this thread encodes stream 0's pages itself,
            // CPU work a 0.1 ms slice only interrupts (the round took 0.31–0.34 ms against 0.38–0.41,
            // medians of 12 runs a case, docs/benchmarks.md "The pause rehearsed in its own conditions").
            slice = LatencySlice()
            if balloonMap != nil {
                try sendBalloonUpdate(&balloonMap!, words: excluded.words, on: channels[0], final: true)
                clock.lap(\.balloonUpdate)
            }
            try rounds.finish()
            clock.lap(\.finish)
            // The digest of what was sent (§3.5): kept up to date as pages were encoded and
            // made exact by the verification sweep, so no page is read here.
            let digest = rounds.sentHashes.digest(excluding: excluded)
            let state = try stateBlob(granted: granted, withBalloonMap: balloonMap == nil, tracker: tracker)
            clock.lap(\.stateSave)
            try sendControl(channels[0], .state(state))
            clock.lap(\.stateSend)
            let target = UnresolvedMigration(host: host, port: port, tls: tls, migrationID: migrationID,
                                             reason: "no DONE yet")
            try commit(channels[0], target, .commit(digest: digest.digest, pagesWithData: digest.pagesWithData,
                                                    stateDigest: StateDigest.compute(state)), clock: &clock)
            stats.downtimeSeconds = (ContinuousClock.now - pausedAt).seconds
            slice?.end()
            var phases = clock.phases
            phases.harvestKVM = final.kvmSeconds
            pausePhases.withLock { $0 = phases }
            stats.pausePhases = phases
            stats.addFinal(last, digest: digest)
            stats.deltaHitRate = rounds.deltaHitRate
            stats.wireBytes = channels.reduce(0) { $0 + $1.bytesSent }
            stats.totalSeconds = (ContinuousClock.now - started).seconds
            stats.cpuSeconds = cpu.seconds + CPUMeter.threadSeconds() - threadCPUAtStart
            // The guest runs on the destination now: this copy is over.
            machine.stop()
            return stats
        } catch {
            let failure = destinationReason(for: error as? MigrationError ?? .transport(.tls("\(error)")),
                                            control: channels.first)
            releaseThrottle()
            tracker.stop()
            if case .unresolved = failure { throw failure } // paused here: only the destination knows
            if failure.isReported { channels.first?.sendError(failure.reportCode, failure.description) }
            if paused { machine.resume() }
            throw failure
        }
    }

    // MARK: Connection set-up

    /// Opens the control stream, negotiates (HELLO / HELLO_ACK, §3.2), sends MACHINE and opens
    /// exactly the data streams the destination granted. Returns them with the granted
    /// capabilities and the migration's id.
    private func connect(host: String, port: UInt16, tls: TLSMode)
        throws(MigrationError) -> ([FrameChannel], Capabilities, [UInt8]) {
        var opened: [FrameChannel] = []
        func open() throws(MigrationError) -> FrameChannel {
            let c = try self.open(host: host, port: port, tls: tls)
            openStreams.withLock { $0.append(c.stream) }
            opened.append(c)
            if isCancelled { c.stream.close() }
            return c
        }
        do throws(MigrationError) {
            return try negotiate(open)
        } catch {
            // Whatever failed (no HELLO_ACK, a bad one, a refusal, a data stream that would not
            // open): ERROR on the control stream where the destination did not say it first
            // (protocol.md §3.7), and no stream opened here outlives the attempt — `migrate`
            // only closes what this returns.
            if error.isReported { opened.first?.sendError(error.reportCode, error.description) }
            opened.forEach { $0.stream.close() }
            throw error
        }
    }

    private func negotiate(_ open: () throws(MigrationError) -> FrameChannel)
        throws(MigrationError) -> ([FrameChannel], Capabilities, [UInt8]) {
        let control = try open()
        var id = [UInt8](repeating: 0, count: 16)
        for i in id.indices { id[i] = UInt8.random(in: 0...255) }
        var capabilities: Capabilities = [.pvState, .ping, .commitWork, .balloonMap]
        if options.compressionLevel != nil { capabilities.insert(.zstd) }
        if options.delta { capabilities.insert(.delta) }
        // Version 2 only: a v1 destination starts the guest before the source has let go of it
        // (protocol.md §3.6.6), so this source does not migrate to one.
        let helloSent = ContinuousClock.now
        try sendControl(control, .hello(Hello(minVersion: 2, maxVersion: 2, streams: UInt32(options.streams),
                                              capabilities: capabilities, migrationID: id)))
        let ack: HelloAck
        switch try control.receive() {
        case let .helloAck(a): ack = a; handshakeRoundTrip.withLock { $0 = (ContinuousClock.now - helloSent).seconds }
        case let .error(report): throw .peer(report)
        case let other: throw .wire(.unexpected(frame: other.name, state: "awaiting HELLO_ACK"))
        }
        guard ack.version == 2 else {
            throw .incompatible("the destination chose protocol version \(ack.version); this source speaks only 2 — upgrade the destination's pvmigrate")
        }
        guard ack.capabilities.isSubset(of: capabilities), (1...UInt32(options.streams)).contains(ack.streams) else {
            throw .incompatible("the destination's HELLO_ACK offers capabilities or streams that were not asked for")
        }
        if !ack.capabilities.contains(.pvState), machine.pv.savedState().isInUse {
            throw .incompatible("the destination declined PV_STATE, but this guest uses the PV interface (its state cannot travel)")
        }
        do throws(MigrationError) {
            return (try attachStreams(control, ack: ack, id: id, open: open), ack.capabilities, id)
        } catch {
            // Refused at MACHINE, say: the destination said why before hanging up.
            throw destinationReason(for: error, control: control)
        }
    }

    private func attachStreams(_ control: FrameChannel, ack: HelloAck, id: [UInt8],
                               open: () throws(MigrationError) -> FrameChannel) throws(MigrationError) -> [FrameChannel] {
        try sendControl(control, .machine(MachineDescription(
            memoryBytes: machine.memory.size, vcpus: UInt32(machine.vcpus.count),
            inKernelIRQChip: machine.vm.irqChipCreated, hasNIC: machine.net != nil, kernelSHA256: kernelSHA256, name: name)))
        var channels = [control]
        for index in 1..<Int(ack.streams) {
            let c = try open()
            try sendControl(c, .join(migrationID: id, streamIndex: UInt32(index)))
            channels.append(c)
        }
        return channels
    }

    func open(host: String, port: UInt16, tls: TLSMode) throws(MigrationError) -> FrameChannel {
        do {
            let s = try StreamConnector.connect(host: host, port: port, mode: tls, timeout: options.timeout)
            s.setTimeout(seconds: options.timeout)
            return FrameChannel(s)
        } catch { throw .transport(error) }
    }

    /// The STATE payload (§1.8): the PV section (tag 4) only when PV_STATE was granted. Without
    /// it the guest's PV state must be empty (checked again here: the guest may have registered
    /// since the handshake), else the migration fails and the VM resumes here. Without
    /// `withBalloonMap` the PV section's map is left out: it went in BALLOON frames (§3.2.1).
    /// The paused machine's state for STATE; first, the VIF pages it holds must be those the
    /// tracker's rounds relied on (`DirtyTracker.confirmVIFPages`, §3.5.1).
    private func stateBlob(granted: Capabilities, withBalloonMap: Bool, tracker: DirtyTracker) throws(MigrationError) -> [UInt8] {
        var state: MachineState
        do { state = try machine.saveState() } catch { throw .machine(error) }
        do { try tracker.confirmVIFPages(state.registeredVIFPages) } catch { throw .dirtyTracking(error) }
        if !withBalloonMap { state.pv?.balloonWords = [] }
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

    func releaseThrottle() {
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

    /// Records the paused round — its `seconds` becomes the downtime, set before — and the
    /// digest of what was sent.
    mutating func addFinal(_ r: RoundStats, digest: (digest: UInt64, pagesWithData: UInt64)) {
        finalRoundSeconds = r.seconds
        var last = r
        last.seconds = downtimeSeconds
        add(last)
        finalPages = r.pages
        self.digest = digest.digest
        pagesWithData = digest.pagesWithData
    }
}
