import Core
import Foundation

/// The destination's accept loop: every connection's first frame says what it is — HELLO
/// starts a migration (its own thread), JOIN attaches a data stream to one in progress,
/// RESOLVE asks what this host decided for a migration (protocol.md §3.6.5).
/// Several migrations may arrive at once. A failed handshake (wrong CA, plaintext peer) is
/// logged and the listener keeps accepting.
public final class MigrationListener: @unchecked Sendable {
    private let listener: StreamListener
    private let options: ReceiverOptions
    private let sessions = Locked<[[UInt8]: ReceiveSession]>([:])
    private let closed = Locked(false)

    public init(host: String, port: UInt16, tls: TLSMode, options: ReceiverOptions = .init()) throws(MigrationError) {
        do { listener = try StreamListener(host: host, port: port, mode: tls) } catch { throw .transport(error) }
        self.options = options
    }

    public var port: UInt16 { listener.port }

    /// Starts accepting on a background thread.
    public func serve(onArrival: @escaping @Sendable (ReceivedVM) -> Void,
                      onFailure: @escaping @Sendable (String) -> Void) {
        Thread.detachNewThread { [self] in
            while !closed.value {
                let stream: ByteStream
                do { stream = try listener.accept() } catch {
                    if (error as? TransportError) == .closed { return }
                    if closed.value { return }
                    onFailure("rejected a connection: \(error)")
                    continue
                }
                Thread.detachNewThread { [self] in handle(stream, onArrival: onArrival, onFailure: onFailure) }
            }
        }
    }

    public func close() {
        closed.withLock { $0 = true }
        listener.close()
    }

    private func handle(_ stream: ByteStream, onArrival: @Sendable (ReceivedVM) -> Void,
                        onFailure: @Sendable (String) -> Void) {
        stream.setTimeout(seconds: options.timeout)
        let channel = FrameChannel(stream)
        let first: Frame
        do { first = try channel.receive() } catch {
            onFailure("\(stream.peerDescription): \(error)")
            stream.close()
            return
        }
        switch first {
        case let .hello(hello):
            let session = ReceiveSession(hello: hello, control: channel, options: options)
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
                options.log("received VM \(vm.name) from \(stream.peerDescription) in \(String(format: "%.3f", vm.stats.seconds)) s")
                onArrival(vm)
            } catch {
                onFailure("migration from \(stream.peerDescription) failed: \(error)")
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
