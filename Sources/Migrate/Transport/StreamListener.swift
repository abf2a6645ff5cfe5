// Opening migration streams: the listening side and the connecting side.

import Core
import Foundation

/// How a listener defends itself against peers that have not authenticated
/// (protocol.md §3.1.1).
public struct ListenerLimits: Sendable {
    /// Seconds an accepted connection has, in total, to complete the TLS
    /// handshake (a deadline, not a per-read timeout).
    public var handshakeTimeout: Double = 10
    /// Connections accepted but not yet handed to `accept()`'s caller
    /// (handshaking, or handshaken and queued). Further ones are closed at
    /// once and reported as `.refused`.
    public var maxPendingConnections = 256

    public init() {}
}

/// Accepts migration streams on a TCP port.
///
/// A background thread accepts TCP connections and never waits on a peer:
/// each connection's TLS handshake runs on its own thread under the
/// handshake deadline, at most `limits.maxPendingConnections` at a time.
/// `accept()` hands out the handshaken streams (and the failures, to log) in
/// the order they finish. Any thread may call `close()`.
public final class StreamListener: @unchecked Sendable {
    private let socket: Socket
    /// Replaced by `reload(_:)`; each handshake reads it once, when it begins.
    private let currentMode: Locked<TLSMode>
    private var mode: TLSMode { currentMode.value }
    public let limits: ListenerLimits
    public let port: UInt16

    /// Guards everything below.
    private let state = NSCondition()
    private var started = false
    private var closed = false
    /// Finished handshakes, oldest first; each holds a slot until taken.
    private var ready: [Result<ByteStream, TransportError>] = []
    /// Sockets whose handshake is running, so that `close()` can cut them short.
    private var handshaking: [ObjectIdentifier: Socket] = [:]
    /// Connections holding a slot: handshaking, or succeeded and queued.
    private var slotsInUse = 0
    /// Refusals not yet reported (at most one report per second, and at most
    /// `errorQueueLimit` unread errors queued: a flood must not flood the log).
    private var unreportedRefusals = 0
    private var lastRefusalReport: ContinuousClock.Instant?
    private static let errorQueueLimit = 64

    /// Binds and listens (port 0 = ephemeral). SO_REUSEADDR.
    public init(host: String, port: UInt16, mode: TLSMode, limits: ListenerLimits = .init()) throws(TransportError) {
        socket = try Socket.listen(host: host, port: port)
        currentMode = Locked(mode)
        self.limits = limits
        self.port = socket.localPort
    }

    /// Blocks for the next connection that completed its TLS handshake and
    /// peer-certificate verification (mutual mode). A failed handshake throws
    /// `.handshakeFailed(peer:reason:)` and a connection closed for lack of a
    /// slot `.refused(peer:reason:)`: log them and call `accept()` again, the
    /// listener stays usable. Throws `.closed` after `close()`.
    public func accept() throws(TransportError) -> ByteStream {
        state.lock()
        defer { state.unlock() }
        if !started, !closed {
            started = true
            Thread.detachNewThread { [self] in acceptLoop() }
        }
        while true {
            if closed { throw .closed }
            if !ready.isEmpty {
                let next = ready.removeFirst()
                if case .success = next { slotsInUse -= 1 }
                return try next.get()
            }
            state.wait()
        }
    }

    /// Unblocks `accept()` (which then throws `.closed`), cuts running
    /// handshakes short and closes queued streams. Idempotent.
    public func close() {
        socket.close()
        let (cut, queued) = state.withLock { () -> ([Socket], [Result<ByteStream, TransportError>]) in
            closed = true
            state.broadcast()
            defer { ready = [] }
            return (Array(handshaking.values), ready)
        }
        cut.forEach { $0.close() }
        for case let .success(stream) in queued { stream.close() }
    }

    /// Uses `mode` for the handshakes that begin from now on (a certificate or CA rotation:
    /// `pvmigrate listen` on SIGHUP). Streams already open keep the TLS session they have.
    /// Switching between plaintext and TLS is refused: it would change what the listener is.
    public func reload(_ mode: TLSMode) throws(TransportError) {
        let replaced = currentMode.withLock { (current: inout TLSMode) -> Bool in
            switch (current, mode) {
            case (.mutual, .mutual), (.insecure, .insecure): current = mode; return true
            default: return false
            }
        }
        if !replaced { throw .tls("a reload cannot switch between plaintext and TLS: restart the listener") }
    }

    // MARK: The accept loop

    private func acceptLoop() {
        while true {
            let connection: Socket
            do throws(TransportError) {
                try socket.enter()
                defer { socket.leave() }
                connection = try socket.acceptConnection()
            } catch {
                if error == .closed || socket.isClosing { return }
                deliver(.failure(error))
                // EMFILE and the like: give the holders of descriptors time to let go.
                Thread.sleep(forTimeInterval: 0.1)
                continue
            }
            let admitted = state.withLock { () -> Bool in
                guard !closed, slotsInUse < limits.maxPendingConnections else { return false }
                slotsInUse += 1
                handshaking[ObjectIdentifier(connection)] = connection
                return true
            }
            if admitted {
                Thread.detachNewThread { [self] in handshake(connection) }
            } else {
                refuse(connection)
            }
        }
    }

    private func handshake(_ connection: Socket) {
        let result: Result<ByteStream, TransportError>
        do throws(TransportError) {
            switch mode { // read once: a reload meanwhile applies to the next handshake
            case .insecure:
                result = .success(try PlainStream(socket: connection))
            case .mutual(let files):
                result = .success(try TLSHandshake.accept(socket: connection, contexts: files.contexts,
                                                          timeout: limits.handshakeTimeout))
            }
        } catch {
            result = .failure(error)
        }
        let keep = state.withLock { () -> Bool in
            handshaking[ObjectIdentifier(connection)] = nil
            guard case .success = result, !closed else {
                slotsInUse -= 1
                return false
            }
            ready.append(result)
            state.broadcast()
            return true
        }
        guard !keep else { return }
        switch result {
        case .success(let stream): stream.close()
        case .failure(let error):
            connection.close()
            if !state.withLock({ closed }) { deliver(.failure(error)) }
        }
    }

    /// Closes a connection that found no free slot, and reports it (rate-limited).
    private func refuse(_ connection: Socket) {
        let peer = connection.peerText
        connection.close()
        let now = ContinuousClock.now
        let report = state.withLock { () -> TransportError? in
            unreportedRefusals += 1
            if let last = lastRefusalReport, now - last < .seconds(1) { return nil }
            lastRefusalReport = now
            defer { unreportedRefusals = 0 }
            let others = unreportedRefusals - 1
            let n = limits.maxPendingConnections
            let stage = if case .mutual = mode { n == 1 ? "in its TLS handshake" : "in their TLS handshake" } else { "being set up" }
            return .refused(peer: peer, reason: "\(n) connection\(n == 1 ? " is" : "s are") already "
                + "\(stage) (the limit: listen --max-pending)"
                + (others > 0 ? "; \(others) more connection\(others == 1 ? "" : "s") refused since the last report" : ""))
        }
        if let report { deliver(.failure(report)) }
    }

    /// Queues an error for `accept()`; errors beyond `errorQueueLimit` unread are dropped.
    private func deliver(_ failure: Result<ByteStream, TransportError>) {
        state.withLock {
            guard !closed, ready.count < Self.errorQueueLimit else { return }
            ready.append(failure)
            state.broadcast()
        }
    }
}

/// Opens migration streams to a listener.
public enum StreamConnector {
    /// Connects to `host`:`port` and, in mutual mode, completes the TLS
    /// handshake; `timeout` (seconds) bounds both together.
    public static func connect(host: String, port: UInt16, mode: TLSMode,
                               timeout: Double = 10) throws(TransportError) -> ByteStream {
        let deadline = Deadline(seconds: timeout)
        let socket = try Socket.connect(host: host, port: port, timeout: timeout)
        switch mode {
        case .insecure:
            return try PlainStream(socket: socket)
        case .mutual(let files):
            let remaining = deadline.remainingMilliseconds()
            return try TLSHandshake.connect(
                socket: socket, contexts: files.contexts, serverName: host,
                timeout: remaining < 0 ? 0 : max(Double(remaining) / 1000, 0.001))
        }
    }
}
