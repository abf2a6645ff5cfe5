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
            let fresh = sessions.withLock { s -> Bool in
                // An id with a decision on record is spent, even across restarts.
                guard s[hello.migrationID] == nil, options.outcomes.lookup(hello.migrationID) == .unknown else { return false }
                s[hello.migrationID] = session
                return true
            }
            guard fresh else {
                channel.sendError(.protocolViolation, "duplicate migration id")
                stream.close()
                return
            }
            defer { sessions.withLock { $0[hello.migrationID] = nil } }
            do {
                let vm = try session.run()
                handler.arrived(vm) // the VM's memory now counts as hosted; then its claim goes
            } catch {
                sessions.withLock { $0[hello.migrationID] = nil }
                admission.release(ticket) // before the report: whoever reads it may retry at once
                let refused = if case .refused = error { true } else { false }
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

/// `ArrivalHandling` from two closures.
struct ArrivalClosures: ArrivalHandling {
    let onArrival: @Sendable (ReceivedVM) -> Void
    let onFailure: @Sendable (ReceiveFailure) -> Void

    func arrived(_ vm: ReceivedVM) { onArrival(vm) }
    func failed(_ failure: ReceiveFailure) { onFailure(failure) }
}
