#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation
import Posix

// The only file of Control that calls libc's socket API, through Posix: Unix stream sockets
// carrying JSON lines (protocol.md §4), and the datagrams that notify systemd. Every call
// retries EINTR (`syscall`); both stream socket kinds own a `FileDescriptor`, whose close protocol lets one thread close while another is
// blocked in recv or accept; writes use MSG_NOSIGNAL so a client that went away is an error,
// not a SIGPIPE.

/// One connected control socket: reads `\n`-terminated lines (at most 1 MiB), writes whole
/// lines. One reader at a time; writers are serialized, so several threads may answer
/// requests on the same connection.
final class LineSocket: @unchecked Sendable {
    static let lineLimit = 1 << 20

    private let descriptor: FileDescriptor
    private let writeLock = NSLock()
    private var buffer: [UInt8] = []       // reader only
    private var scanned = 0                // reader only: bytes of `buffer` known to hold no "\n"

    init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// Connects to the socket at `path`.
    static func connect(path: String) throws(SocketError) -> LineSocket {
        var address = try UnixAddress(path)
        let fd: Int32
        do { fd = try syscall { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) } }
        catch { throw SocketError(operation: "socket", errno: error.rawValue) }
        let s = LineSocket(FileDescriptor(owning: fd))
        do { _ = try s.descriptor.call { fd in address.withSockaddr { Glibc.connect(fd, $0, $1) } } }
        catch { throw SocketError(operation: "connect", errno: error.rawValue) }
        return s
    }

    /// A receive timeout in seconds (nil: wait for ever).
    func setReceiveTimeout(_ seconds: Double?) {
        var tv = timeval()
        if let seconds, seconds > 0 {
            tv.tv_sec = Int(seconds)
            tv.tv_usec = Int((seconds - Double(Int(seconds))) * 1_000_000)
        }
        _ = try? descriptor.call { setsockopt($0, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size)) }
    }

    /// The next line without its "\n"; nil at end of stream (a partial last line is dropped)
    /// or once `shutdown()` ran.
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
            let received = chunk.withUnsafeMutableBytes { b in
                Result { () throws(Errno) in try descriptor.call { recv($0, b.baseAddress, b.count, 0) } }
            }
            switch received {
            case .success(0): return nil
            case .success(let n): buffer += chunk[..<n]
            case .failure(let error):
                let code = error.rawValue
                if code == EAGAIN || code == EWOULDBLOCK { throw SocketError(operation: "read", errno: ETIMEDOUT) }
                if descriptor.isClosing || code == ECONNRESET { return nil }
                throw SocketError(operation: "read", errno: code)
            }
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
            let sent = bytes.withUnsafeBytes { b in
                Result { () throws(Errno) in
                    try descriptor.call { send($0, b.baseAddress! + offset, b.count - offset, Int32(MSG_NOSIGNAL)) }
                }
            }
            switch sent {
            case .success(let n) where n > 0: offset += n
            case .success: throw SocketError(operation: "write", errno: EPIPE)
            case .failure(let error):
                throw SocketError(operation: "write", errno: descriptor.isClosing ? EPIPE : error.rawValue)
            }
        }
    }

    /// Wakes a blocked reader (it sees end of stream) and fails later writes; the descriptor
    /// is closed once no call is inside it.
    func shutdown() { descriptor.close() }
}

/// The listening side of a control socket.
final class ListeningSocket: Sendable {
    private let descriptor: FileDescriptor
    private let closed = Locked(false)
    let path: String
    /// The socket file's inode, to remove only our own file.
    let inode: UInt

    /// Binds and listens at `path` (which must not exist).
    init(path: String) throws(SocketError) {
        var address = try UnixAddress(path)
        let fd: Int32
        do { fd = try syscall { socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) } }
        catch { throw SocketError(operation: "socket", errno: error.rawValue) }
        descriptor = FileDescriptor(owning: fd)  // closed on deinit if binding fails
        self.path = path
        do {
            _ = try syscall { address.withSockaddr { sa, len in Glibc.bind(fd, sa, len) } }
            _ = try syscall { listen(fd, 64) }
        } catch { throw SocketError(operation: "bind", errno: error.rawValue) }
        _ = chmod(path, 0o600)
        var info = stat()
        inode = stat(path, &info) == 0 ? UInt(info.st_ino) : 0
    }

    deinit { close() }

    /// The next connection; nil once `close()` was called. A concurrent `close()` wakes a
    /// blocked accept, and the descriptor stays open until accept has returned, so accept
    /// never runs on a closed (or reused) descriptor number.
    func accept() -> LineSocket? {
        while !descriptor.isClosing {
            do {
                let c = try descriptor.call { Glibc.accept($0, nil, nil) }
                let connection = FileDescriptor(owning: c)
                connection.setCloseOnExec()
                return LineSocket(connection)
            } catch {
                switch error.rawValue {
                case ECONNABORTED, EPROTO: continue
                case EMFILE, ENFILE, ENOBUFS, ENOMEM: usleep(100_000)
                default: if descriptor.isClosing { return nil }; usleep(10_000)
                }
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
        descriptor.close()
    }
}

/// A failed socket call, with its errno.
struct SocketError: Error {
    var operation: String
    var errno: Int32
}

/// `struct sockaddr_un` for a path, or (with `abstract`) for a name in Linux's abstract
/// namespace written `@name`, as systemd passes one in $NOTIFY_SOCKET.
struct UnixAddress {
    private var storage = sockaddr_un()
    /// The address's length: the whole structure for a path (its NUL ends it), the used
    /// bytes for an abstract name (every byte of it counts, NULs included).
    private var length = socklen_t(MemoryLayout<sockaddr_un>.size)

    init(_ path: String, abstract allowAbstract: Bool = false) throws(SocketError) {
        var bytes = Array(path.utf8)
        let abstract = allowAbstract && bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        let capacity = MemoryLayout.size(ofValue: storage.sun_path)
        guard !bytes.isEmpty, bytes.count < capacity else { throw SocketError(operation: "socket path", errno: ENAMETOOLONG) }
        storage.sun_family = sa_family_t(AF_UNIX)
        // Sound: sun_path is `capacity` bytes and `bytes.count < capacity` leaves room for the NUL
        // that the zero-initialised storage already holds.
        withUnsafeMutableBytes(of: &storage.sun_path) { raw in
            raw.copyBytes(from: bytes)
        }
        if abstract { length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count) }
    }

    mutating func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        let length = length
        // Sound: sockaddr_un is layout-compatible with sockaddr for the socket calls.
        return withUnsafePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

/// Sends one datagram to a Unix datagram socket: a path, or `@name` in the abstract
/// namespace (the transport of systemd's notifications, `ServiceNotifier`).
enum UnixDatagram {
    static func send(_ bytes: [UInt8], to path: String) throws(SocketError) {
        var address = try UnixAddress(path, abstract: true)
        let fd: Int32
        do { fd = try syscall { socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) } }
        catch { throw SocketError(operation: "socket", errno: error.rawValue) }
        let descriptor = FileDescriptor(owning: fd)
        defer { descriptor.close() }
        // Sound: `bytes` is readable for `bytes.count` bytes for the duration of the call.
        let result = bytes.withUnsafeBytes { b in
            Result { () throws(Errno) in
                try descriptor.call { fd in
                    address.withSockaddr { sendto(fd, b.baseAddress, b.count, Int32(MSG_NOSIGNAL), $0, $1) }
                }
            }
        }
        let sent: Int
        switch result {
        case let .success(n): sent = n
        case let .failure(error): throw SocketError(operation: "sendto \(path)", errno: error.rawValue)
        }
        guard sent == bytes.count else { throw SocketError(operation: "sendto \(path)", errno: EMSGSIZE) }
    }
}
