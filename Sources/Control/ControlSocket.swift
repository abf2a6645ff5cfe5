#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation

// The only file of Control that calls libc's socket API: Unix stream sockets carrying JSON
// lines (protocol.md §4). Every call retries EINTR; writes use MSG_NOSIGNAL so a client that
// went away is an error, not a SIGPIPE.

/// One connected control socket: reads `\n`-terminated lines (at most 1 MiB), writes whole
/// lines. One reader at a time; writers are serialized, so several threads may answer
/// requests on the same connection.
final class LineSocket: @unchecked Sendable {
    static let lineLimit = 1 << 20

    private let fd: Int32
    private let writeLock = NSLock()
    private var buffer: [UInt8] = []       // reader only
    private var scanned = 0                // reader only: bytes of `buffer` known to hold no "\n"
    private let closedFlag = Locked(false)

    init(fd: Int32) { self.fd = fd }

    deinit { close(fd) }

    /// Connects to the socket at `path`.
    static func connect(path: String) throws(SocketError) -> LineSocket {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(operation: "socket", errno: errno) }
        let s = LineSocket(fd: fd)
        var address = try UnixAddress(path)
        let rc = address.withSockaddr { sa, len in retryingEINTR { Glibc.connect(fd, sa, len) } }
        guard rc == 0 else { throw SocketError(operation: "connect", errno: errno) }
        return s
    }

    /// A receive timeout in seconds (nil: wait for ever).
    func setReceiveTimeout(_ seconds: Double?) {
        var tv = timeval()
        if let seconds, seconds > 0 {
            tv.tv_sec = Int(seconds)
            tv.tv_usec = Int((seconds - Double(Int(seconds))) * 1_000_000)
        }
        _ = setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    /// The next line without its "\n"; nil at end of stream (a partial last line is dropped).
    func readLine() throws(SocketError) -> [UInt8]? {
        while true {
            if let nl = buffer[scanned...].firstIndex(of: 0x0a) {
                let line = Array(buffer[..<nl])
                buffer.removeSubrange(...nl)
                scanned = 0
                return line
            }
            scanned = buffer.count
            guard buffer.count <= Self.lineLimit else { throw SocketError(operation: "read", errno: EMSGSIZE) }
            var chunk = [UInt8](repeating: 0, count: 64 << 10)
            // Sound: `chunk` has `chunk.count` writable bytes for the duration of the call.
            let n = chunk.withUnsafeMutableBytes { b in retryingEINTR { recv(fd, b.baseAddress, b.count, 0) } }
            if n == 0 { return nil }
            if n < 0 {
                let code = errno
                if code == EAGAIN || code == EWOULDBLOCK { throw SocketError(operation: "read", errno: ETIMEDOUT) }
                if closedFlag.value || code == ECONNRESET { return nil }
                throw SocketError(operation: "read", errno: code)
            }
            buffer += chunk[..<n]
        }
    }

    /// Writes `line` and a "\n" as one unit with respect to other writers.
    func writeLine(_ line: [UInt8]) throws(SocketError) {
        var bytes = line
        bytes.append(0x0a)
        writeLock.lock()
        defer { writeLock.unlock() }
        var offset = 0
        while offset < bytes.count {
            // Sound: the range [offset, count) lies inside `bytes` for the duration of the call.
            let n = bytes.withUnsafeBytes { b in
                retryingEINTR { send(fd, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
            }
            guard n > 0 else { throw SocketError(operation: "write", errno: n < 0 ? errno : EPIPE) }
            offset += n
        }
    }

    /// Wakes a blocked reader (it sees end of stream) and fails later writes.
    func shutdown() {
        closedFlag.withLock { $0 = true }
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
    }
}

/// The listening side of a control socket.
final class ListeningSocket: @unchecked Sendable {
    private let fd: Int32
    private let closed = Locked(false)
    let path: String
    /// The socket file's inode, to remove only our own file.
    let inode: UInt

    /// Binds and listens at `path` (which must not exist).
    init(path: String) throws(SocketError) {
        var address = try UnixAddress(path)
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(operation: "socket", errno: errno) }
        self.fd = fd
        self.path = path
        let rc = address.withSockaddr { sa, len in Glibc.bind(fd, sa, len) }
        guard rc == 0, listen(fd, 64) == 0 else {
            let code = errno
            Glibc.close(fd)
            throw SocketError(operation: "bind", errno: code)
        }
        _ = chmod(path, 0o600)
        var info = stat()
        inode = stat(path, &info) == 0 ? UInt(info.st_ino) : 0
    }

    deinit { close() }

    /// The next connection; nil once `close()` was called.
    func accept() -> LineSocket? {
        while !closed.value {
            let c = Glibc.accept(fd, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                return LineSocket(fd: c)
            }
            switch errno {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EMFILE, ENFILE, ENOBUFS, ENOMEM: usleep(100_000)
            default: if closed.value { return nil }; usleep(10_000)
            }
        }
        return nil
    }

    /// Stops accepting (wakes a blocked `accept`) and removes the socket file if it is still ours.
    func close() {
        let first = closed.withLock { c -> Bool in defer { c = true }; return !c }
        guard first else { return }
        var info = stat()
        if stat(path, &info) == 0, UInt(info.st_ino) == inode { unlink(path) }
        _ = Glibc.shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }
}

/// A failed socket call, with its errno.
struct SocketError: Error {
    var operation: String
    var errno: Int32
}

/// `struct sockaddr_un` for a path.
struct UnixAddress {
    private var storage = sockaddr_un()

    init(_ path: String) throws(SocketError) {
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard bytes.count < capacity else { throw SocketError(operation: "socket path", errno: ENAMETOOLONG) }
        storage.sun_family = sa_family_t(AF_UNIX)
        // Sound: sun_path is `capacity` bytes and `bytes.count < capacity` leaves room for the NUL
        // that the zero-initialised storage already holds.
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let length = socklen_t(MemoryLayout<sockaddr_un>.size)
        // Sound: sockaddr_un is layout-compatible with sockaddr for the socket calls.
        return withUnsafePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

@inline(__always)
func retryingEINTR<T: BinaryInteger>(_ call: () -> T) -> T {
    while true {
        let r = call()
        if r >= 0 || errno != EINTR { return r }
    }
}
