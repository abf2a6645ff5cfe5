// The insecure transport: plain TCP behind the ByteStream interface.

#if canImport(Glibc)
import Glibc
#endif

/// A plaintext TCP stream on a blocking socket; SO_RCVTIMEO/SO_SNDTIMEO
/// implement the timeout.
///
/// Thread safety: the kernel serialises send(2) and recv(2) on one socket, so
/// one reader thread and one writer thread need no lock here.
final class PlainStream: ByteStream {
    private let socket: Socket
    let peer: PeerIdentity

    init(socket: Socket) throws(TransportError) {
        try socket.setNonBlocking(false)
        socket.setNoDelay()
        socket.setBlockingTimeouts(milliseconds: Deadline.milliseconds(defaultStreamTimeout))
        self.socket = socket
        peer = PeerIdentity(address: socket.peerText)
    }

    func setTimeout(seconds: Double) {
        socket.setBlockingTimeouts(milliseconds: Deadline.milliseconds(seconds))
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(TransportError) {
        try socket.enter()
        defer { socket.leave() }
        var done = 0
        while done < buffer.count {
            let n = socket.send(UnsafeRawBufferPointer(rebasing: buffer[done...]))
            if n > 0 { done += n; continue }
            throw failure(code: Int32(-n), operation: "send to \(peerDescription)")
        }
    }

    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws(TransportError) {
        try socket.enter()
        defer { socket.leave() }
        var done = 0
        while done < buffer.count {
            let n = socket.receive(UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
            if n > 0 { done += n; continue }
            if n == 0 { throw socket.isClosing ? .closed : .peerClosed }
            throw failure(code: Int32(-n), operation: "receive from \(peerDescription)")
        }
    }

    /// Maps a failed send/recv to the error the caller sees.
    private func failure(code: Int32, operation: String) -> TransportError {
        if socket.isClosing { return .closed }
        switch code {
        case EAGAIN, EWOULDBLOCK: return .timeout  // SO_RCVTIMEO / SO_SNDTIMEO expired
        case EPIPE: return .peerClosed
        default: return .io(operation: operation, errno: code)
        }
    }

    func close() { socket.close() }
}
