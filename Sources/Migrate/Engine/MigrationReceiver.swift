import Core
import Foundation

/// One incoming migration at the destination, from HELLO until the guest runs here or the
/// migration fails: it walks `ReceiverState` (drawn there; protocol.md §3.4, §3.6.3) and
/// records each move in `state`. On any error it moves to `failed` (from `prepared` on,
/// with "aborted" recorded) and the half-built VM is discarded with everything it holds.
/// The guest starts only after GO, once "started" is on disk.
///
/// Threads: `run()` on the migration's own thread (reads the control stream), one thread
/// per data stream while `receiving`; `attach` from the listener's threads (JOIN).
final class MigrationReceiver: @unchecked Sendable {
    let id: [UInt8]
    let hello: Hello
    private let control: FrameChannel
    private let stateLock = Locked(ReceiverState.awaitHello)
    /// The machine's messages while it is being received (`ReceivedVM.notes`).
    private let notes: HeldNotes
    private let options: ReceiverOptions
    private let joins = NSCondition()
    private var joined: [Int: FrameChannel] = [:] // guarded by `joins`
    private var streams = 1
    private var granted: Capabilities = []
    /// The balloon map from BALLOON frames (BALLOON_MAP with PV_STATE granted, protocol.md
    /// §3.2.1); only the control stream's thread touches it. nil: the map comes in STATE.
    private var balloonMap: BalloonMapReceiver?
    private var failed = false
    private let admission: Admission
    private let ticket: Admission.Ticket
    private let progress: ProgressWatchdog
    /// A page worker failed and told the source (only the first one does).
    private let workerFailed = Locked(false)
    /// For `job()`: when HELLO came, what MACHINE announced, pages applied so far.
    private let startedAt = ContinuousClock.now
    private let announced = Locked<MachineDescription?>(nil)
    private let appliedPages = Locked(0)
    /// The commit work this destination expects (PONG_WORK); the control thread's only.
    private var commitWork = CommitWorkEstimate()
    /// The arriving NIC's network, detached if the migration fails.
    private let network = Locked<NetworkAttachment?>(nil)

    /// `ticket`: this migration's admission (counted by `MigrationListener` at HELLO).
    init(hello: Hello, control: FrameChannel, options: ReceiverOptions, admission: Admission, ticket: Admission.Ticket) {
        id = hello.migrationID
        self.hello = hello
        self.control = control
        self.options = options
        self.admission = admission
        self.ticket = ticket
        progress = ProgressWatchdog(seconds: options.progressTimeout, minimumBytes: options.minimumProgressBytes)
        notes = HeldNotes(forwardingTo: options.log)
    }

    /// Where this migration stands.
    var state: ReceiverState { stateLock.value }
    /// The state the migration was in when it failed (set on `run()`'s thread before it throws).
    private(set) var failedIn: ReceiverState?

    /// Moves to `next`, which must be a move `ReceiverState` allows from here.
    private func enter(_ next: ReceiverState) {
        stateLock.withLock { state in
            precondition(state.mayMove(to: next), "receiver state \(state) → \(next) is not a move of ReceiverState")
            state = next
        }
    }

    /// Where this migration stands, for the listener's `jobs` (protocol.md §4.2).
    func job() -> ArrivalJob {
        let machine = announced.value
        return ArrivalJob(migrationID: OutcomeTable.hex(id), peer: control.stream.peerDescription, name: machine?.name,
                          memoryBytes: machine?.memoryBytes, phase: "\(state)", pages: appliedPages.value,
                          bytes: progress.bytesReceived, elapsedSeconds: (ContinuousClock.now - startedAt).seconds)
    }

    /// Ends the migration now (the listener shuts down): tells the source, closes every
    /// stream; `run()` then fails. The caller fenced the id first (protocol.md §3.6.5).
    func cancel(_ reason: String) {
        control.sendError(.resources, reason)
        abandon()
    }

    /// The machine's messages so far, for a failure report; later ones go to `options.log`.
    func releaseNotes() -> [String] { notes.release() }

    /// A data stream of this migration arrived (JOIN). False when it does not belong.
    func attach(_ channel: FrameChannel, index: Int) -> Bool {
        joins.withLock {
            guard !failed, index >= 1, index < streams, joined[index] == nil else { return false }
            joined[index] = channel
            joins.broadcast()
            return true
        }
    }

    private func abandon() {
        joins.withLock {
            failed = true
            joined.values.forEach { $0.stream.close() }
        }
        control.stream.close()
    }

    func run() throws(MigrationError) -> ReceivedVM {
        progress.start { [self] reason in
            // The session's thread is blocked reading: tell the peer, then unblock it.
            control.sendError(.timeout, reason)
            abandon()
        }
        do {
            defer { _ = progress.disarm() }
            return try receive()
        } catch {
            if !state.isFinal {
                failedIn = state
                enter(.failed)
            }
            let error = progress.reason.map { MigrationError.refused(.timeout, $0) } ?? error
            if error.isReported { control.sendError(error.reportCode, error.reportReason) }
            abandon()
            network.value?.detach()
            throw error
        }
    }

    private func receive() throws(MigrationError) -> ReceivedVM {
        let started = ContinuousClock.now
        let cpu = CPUMeter(), threadCPUAtStart = CPUMeter.threadSeconds()
        guard hello.minVersion <= 2, hello.maxVersion >= 2 else {
            throw .incompatible("the source speaks protocol versions \(hello.minVersion)–\(hello.maxVersion); this host speaks "
                + "only 2 (version 1 can run a VM in two places: upgrade the source's pvmigrate)")
        }
        joins.withLock { streams = min(Int(hello.streams), options.maximumStreams) }
        granted = hello.capabilities.intersection(options.capabilities)
        do { try control.send(.helloAck(HelloAck(version: 2, streams: UInt32(streams), capabilities: granted))) }
        catch { throw .transport(error) }
        enter(.awaitMachine)
        progress.advanced()

        guard case let .machine(description) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than MACHINE", state: "awaiting MACHINE"))
        }
        progress.advanced()
        announced.withLock { $0 = description }
        let (machine, console) = try build(description)
        enter(.awaitJoins)
        let dataStreams = try waitForJoins()
        enter(.receiving)
        progress.advanced()

        // Receiving: every stream applies its own pages (disjoint: index mod streams), and
        // records each page's hash for the digest as it lands.
        let hashes = PageHashTable(pageCount: machine.memory.pageCount)
        if granted.isSuperset(of: [.balloonMap, .pvState]) { balloonMap = BalloonMapReceiver(pageCount: machine.memory.pageCount) }
        if granted.contains(.commitWork) { rehearseCommit(machine, hashes) }
        // The first failure is the one to report: the others are its follow-on closes.
        let failures = Locked<MigrationError?>(nil)
        let applied = appliedPages
        let group = DispatchGroup()
        for channel in dataStreams {
            group.enter()
            Thread.detachNewThread { [self] in
                defer { group.leave() }
                do throws(MigrationError) {
                    _ = try cpu.measure { () throws(MigrationError) in
                        try drain(channel, into: machine, hashes: hashes, applied: applied, cpu: cpu, control: false)
                    }
                } catch {
                    failures.withLock { if $0 == nil { $0 = error } }
                    control.stream.close() // unblock the control loop
                }
            }
        }
        var clock = PhaseClock<DestinationPhases>()
        do {
            _ = try drain(control, into: machine, hashes: hashes, applied: applied, cpu: cpu, control: true)
            clock = PhaseClock()
        } catch {
            failures.withLock { if $0 == nil { $0 = error } }
            dataStreams.forEach { $0.stream.close() }
            group.wait()
            throw failures.value ?? error
        }
        group.wait()
        clock.lap(\.streamsTail)
        // The streams ended: the source is paused. A short slice for this thread until DONE
        // (`LatencySlice`); the clean-up after it runs with the default one.
        let slice = LatencySlice()
        defer { slice.end() }
        if let e = failures.value { throw e }
        enter(.awaitState)
        progress.advanced()

        // awaitCommit: STATE, then COMMIT with the source's digests; nothing of the state is
        // used before its digest matches.
        guard case let .state(blob) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than STATE", state: "awaiting STATE"))
        }
        enter(.awaitCommit)
        progress.advanced()
        guard case let .commit(expected, _, expectedState) = try control.receive() else {
            throw .wire(.unexpected(frame: "a frame other than COMMIT", state: "awaiting COMMIT"))
        }
        clock.lap(\.awaitCommit)
        // From here on the guest may start: the progress watchdog must not cut in.
        guard progress.disarm() else { throw .refused(.timeout, progress.reason ?? "no progress") }
        let stateDigest = StateDigest.compute(blob)
        guard stateDigest == expectedState else { throw .stateDigestMismatch(expected: expectedState, actual: stateDigest) }
        var state: MachineState
        do { state = try MachineState(encoded: blob) } catch { throw .state(error) }
        if state.pv != nil, !granted.contains(.pvState) {
            throw .wire(.malformed(type: "STATE", reason: "a PV section (tag 4) although PV_STATE was not granted"))
        }
        if let balloonMap { try Self.insert(balloonMap, into: &state) }
        clock.lap(\.stateCheck)
        var ballooned: PageBitmap?
        if let words = state.pv?.balloonWords, words.count == (machine.memory.pageCount + 63) / 64 {
            ballooned = PageBitmap(pageCount: machine.memory.pageCount, words: words)
        }
        let digest = hashes.digest(excluding: ballooned)
        guard digest.digest == expected else { throw .digestMismatch(expected: expected, actual: digest.digest) }
        clock.lap(\.memoryDigest)
        do { try machine.restore(state) } catch { throw .machine(error) }
        clock.lap(\.restore)
        try commit(machine, name: description.name, clock: &clock)
        let ended = ContinuousClock.now
        slice.end()
        // The source's turn first (§3.6.3): it closes after reading DONE; then our clean-up.
        switch SourceClose.await(control.stream) {
        case .closed: break
        case .spoke: notes.log("the source sent more after DONE (§3.6.3); it was not read")
        case .timedOut: notes.log("the source kept the connection open \(SourceClose.bound) s after DONE (§3.6.3)")
        }
        control.stream.close()
        dataStreams.forEach { $0.stream.close() }
        let stats = ReceiveStats(seconds: (ended - started).seconds, streams: streams,
                                 pagesApplied: applied.value,
                                 frames: control.framesReceived + dataStreams.reduce(0) { $0 + $1.framesReceived },
                                 digest: digest.digest,
                                 cpuSeconds: cpu.seconds + CPUMeter.threadSeconds() - threadCPUAtStart,
                                 phases: clock.phases)
        return ReceivedVM(machineDescription: description, machine: machine, peer: control.stream.peer,
                          console: console, stats: stats, notes: notes.release(), migrationID: id,
                          network: network.value)
    }

    /// Puts the map the BALLOON frames built (§3.2.1) into STATE's PV section, which must
    /// not carry one itself; the map must be final (the pause's update arrived).
    static func insert(_ map: BalloonMapReceiver, into state: inout MachineState) throws(MigrationError) {
        guard map.isFinal else { throw .balloonMap(.finalMissing) }
        guard state.pv?.balloonWords.isEmpty ?? true else {
            throw .wire(.malformed(type: "STATE", reason: "the PV section carries a balloon map although BALLOON_MAP was granted"))
        }
        if state.pv == nil {
            guard map.words.allSatisfy({ $0 == 0 }) else {
                throw .wire(.malformed(type: "STATE", reason: "BALLOON frames ballooned pages, but STATE has no PV section"))
            }
            return
        }
        state.pv!.balloonWords = map.words
    }

    /// prepared → (GO) → started, or aborted (protocol.md §3.6.3). Returns with the guest
    /// running; throws with "aborted" recorded (the caller discards the VM).
    /// `clock` charges each step to its `DestinationPhases`.
    private func commit(_ machine: Machine, name: String, clock: inout PhaseClock<DestinationPhases>) throws(MigrationError) {
        var commit = DestinationCommit(migrationID: id)
        _ = commit.handle(.verified)
        enter(ReceiverState(commit.phase))
        let frame: Frame
        do {
            try control.send(.prepared(migrationID: id))
            clock.lap(\.prepared)
            control.stream.setTimeout(seconds: options.goDeadline)
            frame = try control.receive()
            clock.lap(\.awaitGo)
        } catch {
            _ = commit.handle(.failed)
            _ = try? options.outcomes.decide(id, .aborted)
            throw error as? MigrationError ?? .transport(.timeout)
        }
        guard commit.handle(.received(frame)) == .recordStarted else {
            _ = try? options.outcomes.decide(id, .aborted)
            throw MigrationSender.refusal(frame, awaiting: "GO")
        }
        enter(ReceiverState(commit.phase))
        let decided: CommitOutcome
        do { decided = try options.outcomes.decide(id, .started) } catch {
            _ = commit.handle(.failed)
            throw error
        }
        clock.lap(\.record)
        guard commit.handle(.recorded(decided)) == .startAndSendDone else {
            throw .incompatible("GO came after this migration was resolved as \(decided) (the source asked with RESOLVE)")
        }
        enter(ReceiverState(commit.phase))
        machine.start()
        clock.lap(\.start)
        do { try control.send(.done(migrationID: id)) } catch {
            // The guest runs here, as recorded; the source learns it with RESOLVE.
            notes.log("VM \(name) started, but DONE could not be sent (the source will ask): \(error)")
        }
        clock.lap(\.done)
    }

    /// Admission of the memory first (protocol.md §3.1.1): nothing of the VM's size is
    /// allocated before the claim succeeds.
    private func build(_ d: MachineDescription) throws(MigrationError) -> (Machine, any ConsoleSink) {
        guard (1...UInt32(Machine.maximumVCPUs)).contains(d.vcpus) else {
            throw .machine(.invalidConfiguration("\(d.vcpus) vCPUs: a VM has 1 to \(Machine.maximumVCPUs)"))
        }
        guard d.kernelSHA256.count == 32, !d.name.isEmpty else { throw .wire(.malformed(type: "MACHINE", reason: "bad identity")) }
        try admission.claim(ticket, bytes: d.memoryBytes)
        let console = options.console(d.name)
        // A NIC needs a network here: refused now, while the VM still runs at the source (§5.8).
        if d.hasNIC, options.attachNetwork == nil {
            throw .refused(.resources, "the VM has a PV network device and this listener has no network for it: "
                + "start it with `pvmigrate listen --net-bridge BRIDGE`")
        }
        var configuration = Machine.Configuration(memorySize: d.memoryBytes, kernel: [], inKernelIRQChip: d.inKernelIRQChip,
                                                  console: console, log: { [notes] in notes.log($0) })
        configuration.vcpuCount = Int(d.vcpus)
        // The MAC is the saved one (the `net` section); this one lasts until the state is restored.
        if d.hasNIC { configuration.netMAC = MACAddress.random() }
        let machine: Machine
        do { machine = try Machine(restoring: configuration) } catch { throw .machine(error) }
        if let nic = machine.net, let attach = options.attachNetwork {
            do {
                let attachment = try attach(nic, d.name)
                network.withLock { $0 = attachment }
                notes.log("PV NIC: \(attachment.description)")
            } catch {
                throw .refused(.resources, "cannot give the VM's PV network device a network here: \(error)")
            }
        }
        return (machine, console)
    }

    private func waitForJoins() throws(MigrationError) -> [FrameChannel] {
        let deadline = Date(timeIntervalSinceNow: options.timeout)
        joins.lock()
        defer { joins.unlock() }
        while joined.count < streams - 1 {
            if !joins.wait(until: deadline) { throw .transport(.timeout) }
        }
        return (1..<streams).compactMap { joined[$0] }
    }

    /// One rehearsal of this destination's commit work for PONG_WORK (`CommitWorkEstimate`).
    private func rehearseCommit(_ machine: Machine, _ hashes: PageHashTable) {
        let r = CommitWorkEstimate.rehearse(machine: machine, hashes: hashes)
        commitWork.record(prepare: r.prepare, threadStart: r.threadStart)
        commitWork.record = options.outcomes.recentWriteSeconds
        commitWork.vcpus = machine.vcpus.count
    }

    /// Reads frames until STREAM_END; a `PageApplyWorker` decodes and applies the pages
    /// meanwhile, in order. The control stream also carries ROUND frames, and PING (answered
    /// with PONG, protocol.md §3.2).
    private func drain(_ channel: FrameChannel, into machine: Machine, hashes: PageHashTable, applied: Locked<Int>,
                       cpu: CPUMeter, control isControl: Bool) throws(MigrationError) -> Int {
        let worker = PageApplyWorker(
            decoder: PageBatchDecoder(allowZstd: granted.contains(.zstd), allowDelta: granted.contains(.delta)),
            memory: machine.memory, threaded: PageApplyWorker.pays(streams: streams), cpu: cpu,
            pageApplied: { hashes.record($0, $1) },
            batchApplied: { n in applied.withLock { $0 += n } },
            onFailure: { [self] error in
                guard workerFailed.withLock({ (reported: inout Bool) -> Bool in
                    defer { reported = true }
                    return !reported
                }) else { return }
                if error.isReported { control.sendError(error.reportCode, error.reportReason) }
                channel.stream.close()
                control.stream.close()
            })
        do throws(MigrationError) {
        while true {
            let before = channel.framesReceived
            let frame = try channel.receive()
            switch frame {
            case let .pages(flags, payload):
                    progress.received(FrameHeader.size + payload.count)
                    try worker.submit(flags: flags, payload: payload)
            case .round where isControl:
                continue
            case let .balloon(update) where isControl && balloonMap != nil:
                do { try balloonMap!.apply(update) } catch { throw MigrationError.balloonMap(error) }
            case let .ping(nonce) where isControl && granted.contains(.ping):
                // Answered at once, from this thread (the control stream's only writer while receiving);
                // the next rehearsal of the commit only after the answer, so the round trip is not in it.
                let work = commitWork.micros
                let answer: Frame = granted.contains(.commitWork)
                    ? .pongWork(nonce: nonce, prepareMicros: work.prepare, startMicros: work.start) : .pong(nonce: nonce)
                do { try channel.send(answer) } catch { throw MigrationError.transport(error) }
                if granted.contains(.commitWork) { rehearseCommit(machine, hashes) }
            case let .streamEnd(frames):
                guard frames == before else {
                        throw MigrationError.wire(.malformed(type: "STREAM_END",
                                                            reason: "\(frames) frames announced, \(before) received"))
                }
                    return try worker.finish()
            case let .error(report):
                    throw MigrationError.peer(report)
            case let other:
                    throw MigrationError.wire(.unexpected(frame: other.name, state: "receiving pages"))
            }
        }
        } catch {
            throw worker.abandon(error)
        }
    }
}
