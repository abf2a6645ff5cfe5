import Core
import Foundation

/// The destination's accept loop: every connection's first frame says what it is — HELLO
/// starts a migration (its own thread), JOIN attaches a data stream to one in progress,
/// RESOLVE asks what this host decided for a migration (protocol.md §3.6.5).
/// Several migrations may arrive at once. A failed handshake (wrong CA, plaintext peer) is
/// reported to the handler (`ArrivalHandling.failed`, `.rejected`) and the listener keeps accepting.
///
/// Defences (protocol.md §3.1.1): handshakes run concurrently under a deadline
/// (`StreamListener`); the first frame has the same deadline and only HELLO or JOIN is read;
/// at most `listener.maxPendingConnections` connections wait for it; a HELLO is admitted only
/// within `maximumIncoming`, its memory only within `maximumMemory` (`Admission`); an
/// admitted migration that stops progressing is dropped (`ProgressWatchdog`).
public final class MigrationListener: @unchecked Sendable {
    private let listener: StreamListener
    private let options: ReceiverOptions
    private let admission: Admission
    private let sessions = Locked<[[UInt8]: MigrationReceiver]>([:])
    private let closed = Locked(false)
    /// Handshaken connections whose first frame has not arrived yet.
    private let awaitingFirstFrame = Locked(0)
    /// Set by `shutDown`, read and set under `sessions`' lock: no HELLO is admitted after it.
    private let draining = Locked(false)
    /// Sessions between admission and their report to the handler (`shutDown` waits for them).
    private let inFlight = DispatchGroup()
    private let finished = Locked(FinishedArrivals())

    public init(host: String, port: UInt16, tls: TLSMode, options: ReceiverOptions = .init()) throws(MigrationError) {
        do { listener = try StreamListener(host: host, port: port, mode: tls, limits: options.listener) }
        catch { throw .transport(error) }
        self.options = options
        admission = Admission(options: options)
    }

    public var port: UInt16 { listener.port }

    /// Migrations in progress here: admitted (HELLO read), not yet arrived or failed.
    public var migrationsInProgress: Int { sessions.value.count }

    /// Starts accepting on a background thread; `handler` hears of every arrival and every
    /// failure, on that migration's (or connection's) own thread.
    public func serve(_ handler: some ArrivalHandling) {
        Thread.detachNewThread { [self] in
            while !closed.value {
                let stream: ByteStream
                do { stream = try listener.accept() } catch {
                    if (error as? TransportError) == .closed { return }
                    if closed.value { return }
                    handler.failed(ReceiveFailure(kind: .rejected, peer: nil, description: "rejected a connection: \(error)",
                                                  transportError: error as? TransportError))
                    continue
                }
                Thread.detachNewThread { [self] in handle(stream, handler) }
            }
        }
    }

    /// `serve(_:)` with closures; `onFailure` gets the failure's one line.
    public func serve(onArrival: @escaping @Sendable (ReceivedVM) -> Void,
                      onFailure: @escaping @Sendable (String) -> Void) {
        serve(ArrivalClosures(onArrival: onArrival, onFailure: { onFailure($0.description) }))
    }

    public func close() {
        closed.withLock { $0 = true }
        listener.close()
    }

    /// Uses `tls` for the handshakes that begin from now on (`pvmigrate listen` reloads its
    /// certificates on SIGHUP); migrations in progress keep the sessions they have.
    public func reloadTLS(_ tls: TLSMode) throws(MigrationError) {
        do { try listener.reload(tls) } catch { throw .transport(error) }
    }

    /// New admission limits (`--max-incoming`, `--max-memory`) for the migrations that arrive
    /// from now on (`pvmigrate listen` re-reads its configuration on SIGHUP); migrations in
    /// progress keep what they were admitted with.
    public func setLimits(maximumIncoming: Int, maximumMemory: UInt64) {
        admission.setLimits(maximumIncoming: maximumIncoming, maximumMemory: maximumMemory)
    }

    /// The migrations arriving now, then the last ones that ended (oldest first).
    public var jobs: [ArrivalJob] {
        let running = sessions.withLock { Array($0.values) }.map { $0.job() }
        return running.sorted { $0.elapsedSeconds > $1.elapsedSeconds } + finished.value.jobs
    }

    /// A clean shutdown (SIGTERM; protocol.md §3.6.8). From now on every HELLO is refused.
    /// Every migration in progress whose guest has not been decided "started" is fenced —
    /// "aborted" is recorded for its id, as a RESOLVE would (§3.6.5), so a GO on its way can no
    /// longer start the guest here — and cut short with an ERROR: its source keeps its VM
    /// (before PREPARED), or learns "aborted" by RESOLVE and resumes it (after PREPARED). A
    /// migration already decided "started" is not touched: its guest runs here and is handed
    /// to the handler. Waits up to `timeout` seconds for the migrations to end, then closes
    /// the listening socket (RESOLVE is answered until then). Returns how many were fenced
    /// and whether all ended in time.
    @discardableResult
    public func shutDown(timeout: Double) -> (fenced: Int, settled: Bool) {
        let fenced = sessions.withLock { sessions -> [MigrationReceiver] in
            draining.withLock { $0 = true }
            return sessions.filter { options.outcomes.resolve($0.key, active: true) != .started }.map(\.value)
        }
        for session in fenced {
            options.log("shutting down: migration \(OutcomeTable.hex(session.id)) from \(session.job().peer) "
                + "fenced (\"aborted\" recorded) and cancelled; its source keeps the VM")
            session.cancel("the destination is shutting down; the VM stays at the source")
        }
        let settled = inFlight.wait(timeout: .now() + timeout) == .success
        close()
        return (fenced.count, settled)
    }

    /// The first frame, within the handshake deadline; nil (and reported as `.rejected`) when none came.
    private func firstFrame(_ channel: FrameChannel, _ handler: some ArrivalHandling) -> Frame? {
        let stream = channel.stream
        func onFailure(_ line: String) {
            handler.failed(ReceiveFailure(kind: .rejected, peer: stream.peer, description: line))
        }
        let limit = options.listener.maxPendingConnections
        let admitted = awaitingFirstFrame.withLock { n -> Bool in
            guard n < limit else { return false }
            n += 1
            return true
        }
        guard admitted else {
            onFailure("rejected a connection: \(TransportError.refused(peer: stream.peerDescription, reason: "\(limit) connections are already waiting to send their first frame (the limit: listen --max-pending)"))")
            stream.close()
            return nil
        }
        defer { awaitingFirstFrame.withLock { $0 -= 1 } }
        // A deadline, not a read timeout: a peer sending a byte now and then must not hold on.
        let seconds = options.listener.handshakeTimeout
        // nil: waiting; true: the deadline passed first; false: the frame arrived first.
        let outcome = Locked<Bool?>(nil)
        let deadline = DispatchWorkItem {
            let expired = outcome.withLock { o -> Bool in
                if o == nil { o = true }
                return o == true
            }
            if expired { stream.close() }
        }
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds, execute: deadline)
        defer { deadline.cancel() }
        stream.setTimeout(seconds: seconds)
        do throws(MigrationError) {
            let frame = try channel.receive(allowed: [.hello, .join, .resolve], state: "awaiting HELLO, JOIN or RESOLVE")
            let inTime = outcome.withLock { o -> Bool in
                if o == nil { o = false }
                return o == false
            }
            guard inTime else { throw .transport(.closed) }
            stream.setTimeout(seconds: options.timeout)
            return frame
        } catch {
            if outcome.value == true {
                onFailure("rejected a connection: \(stream.peerDescription) sent no HELLO or JOIN within \(seconds) s")
            } else {
                if case .wire = error { channel.sendError(.protocolViolation, error.description) }
                onFailure("rejected a connection: \(stream.peerDescription): \(error)")
            }
            stream.close()
            return nil
        }
    }

    private func finish(_ session: MigrationReceiver, _ result: ArrivalJob.Result, _ error: String?) {
        var job = session.job()
        job.result = result
        job.error = error
        finished.withLock { $0.append(job) }
    }

    private func handle(_ stream: ByteStream, _ handler: some ArrivalHandling) {
        let channel = FrameChannel(stream)
        guard let first = firstFrame(channel, handler) else { return }
        switch first {
        case let .hello(hello):
            let ticket: Admission.Ticket
            do { ticket = try admission.admit() } catch {
                channel.sendError(error.reportCode, error.reportReason)
                handler.failed(ReceiveFailure(kind: .refused, peer: stream.peer,
                                              description: "migration from \(stream.peerDescription) \(error)",
                                              migrationID: hello.migrationID))
                stream.close()
                return
            }
            defer { admission.release(ticket) }
            let session = MigrationReceiver(hello: hello, control: channel, options: options,
                                         admission: admission, ticket: ticket)
            let admitted = sessions.withLock { s -> Admitted in
                if draining.value { return .draining }
                // An id with a decision on record is spent, even across restarts.
                guard s[hello.migrationID] == nil, options.outcomes.lookup(hello.migrationID) == .unknown else { return .duplicate }
                s[hello.migrationID] = session
                inFlight.enter()
                return .fresh
            }
            switch admitted {
            case .fresh: break
            case .duplicate:
                channel.sendError(.protocolViolation, "duplicate migration id")
                stream.close()
                return
            case .draining:
                let why = "the destination is shutting down: it accepts no migrations"
                channel.sendError(.resources, why)
                handler.failed(ReceiveFailure(kind: .refused, peer: stream.peer,
                                              description: "migration from \(stream.peerDescription) refused: \(why)"))
                stream.close()
                return
            }
            defer {
                sessions.withLock { $0[hello.migrationID] = nil }
                inFlight.leave()
            }
            do {
                let vm = try session.run()
                finish(session, .completed, nil)
                handler.arrived(vm) // the VM's memory now counts as hosted; then its claim goes
            } catch {
                finish(session, error.isRefusal ? .refused : .failed, error.description)
                sessions.withLock { $0[hello.migrationID] = nil }
                admission.release(ticket) // before the report: whoever reads it may retry at once
                let refused = error.isRefusal
                let verb = refused ? "" : "failed: " // "refused: …" / "dropped: …"
                handler.failed(ReceiveFailure(kind: refused ? .refused : .failed, peer: stream.peer,
                                              description: "migration from \(stream.peerDescription) \(verb)\(error)",
                                              notes: session.releaseNotes(), state: session.failedIn,
                                              migrationID: hello.migrationID))
            }
        case let .join(id, index):
            guard let session = sessions.withLock({ $0[id] }), session.attach(channel, index: Int(index)) else {
                channel.sendError(.protocolViolation, "JOIN for an unknown migration or stream")
                stream.close()
                return
            }
        case let .resolve(id):
            // Under the sessions lock: a session in progress cannot finish its decision
            // between the check and the answer without the table seeing it first.
            let outcome = sessions.withLock { options.outcomes.resolve(id, active: $0[id] != nil) }
            options.log("RESOLVE \(OutcomeTable.hex(id)) from \(stream.peerDescription): \(outcome)")
            try? channel.send(.outcome(outcome))
            stream.close()
        default:
            channel.sendError(.protocolViolation, "expected HELLO, JOIN or RESOLVE, got \(first.name)")
            stream.close()
        }
    }
}

/// What became of a HELLO at the sessions table.
private enum Admitted { case fresh, duplicate, draining }

/// `ArrivalHandling` from two closures.
struct ArrivalClosures: ArrivalHandling {
    let onArrival: @Sendable (ReceivedVM) -> Void
    let onFailure: @Sendable (ReceiveFailure) -> Void

    func arrived(_ vm: ReceivedVM) { onArrival(vm) }
    func failed(_ failure: ReceiveFailure) { onFailure(failure) }
}

extension MigrationError {
    /// This host refused the migration at a limit (or dropped it for lack of progress).
    var isRefusal: Bool { if case .refused = self { true } else { false } }
}
