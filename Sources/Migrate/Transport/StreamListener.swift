// Opening migration streams: the listening side and the connecting side.

import Synchronization

/// Accepts migration streams on a TCP port.
///
/// One thread calls `accept()` in a loop; any thread may call `close()`.
public final class StreamListener: @unchecked Sendable {
    /// How long an accepted peer has to complete the TLS handshake.
    static let handshakeTimeout: Double = 10

    private let socket: Socket
    private let mode: TLSMode
    /// The connection whose handshake `accept()` is running, so that
    /// `close()` can cut it short.
    private let handshaking = Mutex<Socket?>(nil)

    public let port: UInt16

    /// Binds and listens (port 0 = ephemeral). SO_REUSEADDR.
    public init(host: String, port: UInt16, mode: TLSMode) throws(TransportError) {
        socket = try Socket.listen(host: host, port: port)
        self.mode = mode
        self.port = socket.localPort
    }

    /// Blocks for the next connection; returns it after the TLS handshake and
    /// peer-certificate verification (mutual mode). A handshake failure throws
    /// `.handshakeFailed(peer:reason:)`: log it and call `accept()` again, the
    /// listener stays usable. Throws `.closed` after `close()`.
    public func accept() throws(TransportError) -> ByteStream {
        try socket.enter()
        defer { socket.leave() }
        let connection = try socket.acceptConnection()
        switch mode {
        case .insecure:
            return try PlainStream(socket: connection)
        case .mutual(let files):
            handshaking.withLock { $0 = connection }
            defer { handshaking.withLock { $0 = nil } }
            // close() may have run between acceptConnection and the line above.
            if socket.isClosing { throw .closed }
            do throws(TransportError) {
                return try TLSHandshake.accept(socket: connection, contexts: files.contexts,
                                               timeout: Self.handshakeTimeout)
            } catch {
                throw socket.isClosing ? .closed : error
            }
        }
    }

    /// Unblocks `accept()` (which then throws `.closed`). Idempotent.
    public func close() {
        socket.close()
        handshaking.withLock { $0?.close() }
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
