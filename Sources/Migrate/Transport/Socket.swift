// TCP sockets for the transport: the only file of the transport that calls
// the socket API of libc, through Posix (`syscall`, `retryingEINTR`, `FileDescriptor`).
// Every call retries EINTR and turns -1 into a typed TransportError (or a negative errno
// for the hot send/recv paths).

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// Socket buffer size requested for migration streams (the kernel doubles
/// it, up to net.core.{w,r}mem_max): room for a few milliseconds of data at
/// several GB/s, so one stream can keep a fast link busy.
private let streamBufferBytes: Int32 = 4 << 20

/// An owned TCP socket. Its descriptor is a `FileDescriptor`, whose close protocol is safe
/// against other threads using it: `close()` shuts the socket down at once — which wakes
/// any thread blocked in recv/send/poll/accept on it — and close(2) runs only when the last
/// operation that `enter()`ed has `leave()`n.
final class Socket: Sendable {
    let descriptor: FileDescriptor
    var fd: Int32 { descriptor.rawValue }

    private init(owning fd: Int32) { descriptor = FileDescriptor(owning: fd) }

    // MARK: Lifecycle

    /// Marks an operation in progress. Throws `.closed` once `close()` ran.
    func enter() throws(TransportError) {
        do { try descriptor.enter() } catch { throw .closed }
    }

    /// Ends an operation begun with `enter()` (see `FileDescriptor.leave()`).
    func leave() { descriptor.leave() }

    /// True once `close()` has been called.
    var isClosing: Bool { descriptor.isClosing }

    /// shutdown(2) now (unblocking other threads), close(2) when no operation
    /// is inside. Idempotent.
    func close() { descriptor.close() }

    // MARK: Opening

    private static func make(family: Int32) throws(TransportError) -> Socket {
        let fd: Int32
        do { fd = try syscall { Glibc.socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), Int32(IPPROTO_TCP)) } }
        catch { throw .io(operation: "socket", errno: error.rawValue) }
        let socket = Socket(owning: fd)
        // Before connect/listen, so that TCP window scaling is negotiated for
        // the large buffers. Best effort: the kernel caps them silently.
        socket.setOption(SOL_SOCKET, SO_SNDBUF, streamBufferBytes)
        socket.setOption(SOL_SOCKET, SO_RCVBUF, streamBufferBytes)
        return socket
    }

    /// Resolves `host` and connects to the first address that answers within
    /// `timeout` seconds (in total). The socket is left non-blocking.
    static func connect(host: String, port: UInt16, timeout: Double) throws(TransportError) -> Socket {
        let addresses = try resolve(host: host, port: port, passive: false)
        let deadline = Deadline(seconds: timeout)
        var lastError = ECONNREFUSED
        for address in addresses {
            let socket = try make(family: address.family)
            try socket.setNonBlocking(true)
            let rc = address.withSockaddr { Glibc.connect(socket.fd, $0, $1) }
            if rc == 0 { return socket }
            let code = errno
            guard code == EINPROGRESS || code == EINTR else { lastError = code; continue }
            guard try socket.wait(writable: true, milliseconds: deadline.remainingMilliseconds()) else {
                lastError = ETIMEDOUT
                break
            }
            let pending = socket.pendingError()
            if pending == 0 { return socket }
            lastError = pending
        }
        throw .connectFailed(host: host, port: port, errno: lastError)
    }

    /// A listening socket bound to `host`:`port` (0 = ephemeral) with
    /// SO_REUSEADDR. An empty host means every local address.
    static func listen(host: String, port: UInt16) throws(TransportError) -> Socket {
        var lastError: TransportError = .resolveFailed(host: host)
        for address in try resolve(host: host, port: port, passive: true) {
            let socket = try make(family: address.family)
            socket.setOption(SOL_SOCKET, SO_REUSEADDR, 1)
            guard address.withSockaddr({ Glibc.bind(socket.fd, $0, $1) }) == 0 else {
                lastError = .io(operation: "bind to \(TransportError.endpoint(host, port))", errno: errno)
                continue
            }
            guard Glibc.listen(socket.fd, 128) == 0 else {
                lastError = .io(operation: "listen on \(TransportError.endpoint(host, port))", errno: errno)
                continue
            }
            return socket
        }
        throw lastError
    }

    /// Blocks for the next connection on a listening socket. Throws `.closed`
    /// after `close()`.
    func acceptConnection() throws(TransportError) -> Socket {
        while true {
            do {
                let fd = try syscall { Glibc.accept(self.fd, nil, nil) }
                let socket = Socket(owning: fd)
                // Glibc does not export accept4; nothing here forks meanwhile.
                socket.descriptor.setCloseOnExec()
                return socket
            } catch {
                if isClosing { throw .closed }
                // The client gave up before we got to it: next one.
                if error.rawValue == ECONNABORTED { continue }
                throw .io(operation: "accept", errno: error.rawValue)
            }
        }
    }

    private static func resolve(host: String, port: UInt16, passive: Bool) throws(TransportError) -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_protocol = Int32(IPPROTO_TCP)
        hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(host.isEmpty ? nil : host, String(port), &hints, &list)
        guard rc == 0, let first = list else { throw .resolveFailed(host: host) }
        defer { freeaddrinfo(first) }
        var addresses: [SocketAddress] = []
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let current = entry {
            // Sound: getaddrinfo returned a well-formed list; ai_addr points
            // at ai_addrlen bytes, at most sizeof(sockaddr_storage).
            if let address = current.pointee.ai_addr,
               Int(current.pointee.ai_addrlen) <= MemoryLayout<sockaddr_storage>.size {
                addresses.append(SocketAddress(address, length: current.pointee.ai_addrlen))
            }
            entry = current.pointee.ai_next
        }
        guard !addresses.isEmpty else { throw .resolveFailed(host: host) }
        return addresses
    }

    // MARK: Options

    private func setOption(_ level: Int32, _ name: Int32, _ value: Int32) {
        var value = value
        _ = setsockopt(fd, level, name, &value, socklen_t(MemoryLayout<Int32>.size))
    }

    /// TCP_NODELAY: frames go out at once; the writers send large buffers anyway.
    func setNoDelay() { setOption(Int32(IPPROTO_TCP), TCP_NODELAY, 1) }

    func setNonBlocking(_ nonBlocking: Bool) throws(TransportError) {
        do { try descriptor.setNonBlocking(nonBlocking) } catch { throw .io(operation: "fcntl(O_NONBLOCK)", errno: error.rawValue) }
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO for a blocking socket; -1 = none.
    func setBlockingTimeouts(milliseconds: Int32) {
        var time = timeval()
        if milliseconds > 0 {
            time.tv_sec = Int(milliseconds / 1000)
            time.tv_usec = Int(milliseconds % 1000) * 1000
        }
        for name in [SO_RCVTIMEO, SO_SNDTIMEO] {
            _ = setsockopt(fd, SOL_SOCKET, name, &time, socklen_t(MemoryLayout<timeval>.size))
        }
    }

    /// SO_ERROR: the result of a non-blocking connect.
    private func pendingError() -> Int32 {
        var value: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &value, &length) == 0 else { return errno }
        return value
    }

    // MARK: Data

    /// send(2) with MSG_NOSIGNAL (a closed peer gives EPIPE, not SIGPIPE).
    /// Returns the bytes sent or -errno.
    func send(_ buffer: UnsafeRawBufferPointer) -> Int {
        // Sound: reads at most buffer.count bytes from a live buffer.
        let n = retryingEINTR { Glibc.send(fd, buffer.baseAddress, buffer.count, Int32(MSG_NOSIGNAL)) }
        return n >= 0 ? n : -Int(errno)
    }

    /// recv(2). Returns the bytes received, 0 at EOF, or -errno.
    func receive(_ buffer: UnsafeMutableRawBufferPointer) -> Int {
        // Sound: writes at most buffer.count bytes into a live buffer.
        let n = retryingEINTR { Glibc.recv(fd, buffer.baseAddress, buffer.count, 0) }
        return n >= 0 ? n : -Int(errno)
    }

    /// Waits until the socket is readable (or writable), or `milliseconds`
    /// pass (-1 = forever). Returns false on timeout. Hang-up and error
    /// conditions count as ready: the next I/O call reports them.
    func wait(writable: Bool, milliseconds: Int32) throws(TransportError) -> Bool {
        let deadline = Deadline(milliseconds: milliseconds)
        var entry = pollfd(fd: fd, events: Int16(writable ? POLLOUT : POLLIN), revents: 0)
        // Each retry after EINTR polls for what is left of the deadline.
        do { return try syscall { poll(&entry, 1, deadline.remainingMilliseconds()) } > 0 }
        catch { throw .io(operation: "poll", errno: error.rawValue) }
    }

    // MARK: Addresses

    /// The local port (for a listener bound to port 0).
    var localPort: UInt16 {
        var address = SocketAddress()
        _ = address.fill { getsockname(fd, $0, $1) }
        return address.port
    }

    /// The peer's "address:port", or "unknown peer".
    var peerText: String {
        var address = SocketAddress()
        guard address.fill({ getpeername(fd, $0, $1) }) else { return "unknown peer" }
        return address.text
    }

    /// True when `text` is an IPv4 or IPv6 address literal.
    static func isAddressLiteral(_ text: String) -> Bool {
        var buffer = in6_addr()
        return inet_pton(AF_INET, text, &buffer) == 1 || inet_pton(AF_INET6, text, &buffer) == 1
    }
}

/// A socket address of any family, stored by value.
struct SocketAddress {
    private var storage = sockaddr_storage()
    private var length = socklen_t(MemoryLayout<sockaddr_storage>.size)

    init() {}

    init(_ address: UnsafePointer<sockaddr>, length: socklen_t) {
        self.length = length
        // Sound: the caller guarantees `length` <= sizeof(sockaddr_storage)
        // readable bytes at `address`.
        withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: Int(length))) }
    }

    var family: Int32 { Int32(storage.ss_family) }

    func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        // Sound: sockaddr_storage is layout-compatible with sockaddr (its
        // purpose); the pointer does not escape `body`.
        withUnsafePointer(to: storage) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) } }
    }

    /// Fills the address with getsockname/getpeername-style `call`.
    mutating func fill(_ call: (UnsafeMutablePointer<sockaddr>, UnsafeMutablePointer<socklen_t>) -> Int32) -> Bool {
        var size = socklen_t(MemoryLayout<sockaddr_storage>.size)
        // Sound: the kernel writes at most `size` bytes into the storage.
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call($0, &size) }
        }
        length = size
        return rc == 0
    }

    var port: UInt16 {
        var port: UInt16 = 0
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        if numericName(&host, &service) { port = UInt16(cString(service)) ?? 0 }
        return port
    }

    /// "127.0.0.1:40022" or "[::1]:40022" (IPv4-mapped IPv6 shown as IPv4).
    var text: String {
        var host = [CChar](repeating: 0, count: Int(NI_MAXHOST))
        var service = [CChar](repeating: 0, count: Int(NI_MAXSERV))
        guard numericName(&host, &service) else { return "unknown peer" }
        var name = cString(host)
        if name.hasPrefix("::ffff:"), name.contains(".") { name.removeFirst(7) }
        return TransportError.endpoint(name, UInt16(cString(service)) ?? 0)
    }

    private func numericName(_ host: inout [CChar], _ service: inout [CChar]) -> Bool {
        withSockaddr { address, length in
            // Sound: getnameinfo writes NUL-terminated text within the given sizes.
            getnameinfo(address, length, &host, socklen_t(host.count), &service, socklen_t(service.count),
                        NI_NUMERICHOST | NI_NUMERICSERV) == 0
        }
    }
}

/// The text before the first NUL of a C character buffer.
func cString(_ buffer: [CChar]) -> String {
    let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
    return String(decoding: bytes, as: UTF8.self)
}

/// A point in CLOCK_MONOTONIC time for timeouts spanning several waits.
struct Deadline {
    private let end: UInt64?  // nanoseconds; nil = never

    init(milliseconds: Int32) {
        end = milliseconds < 0 ? nil : Self.now() + UInt64(milliseconds) * 1_000_000
    }

    /// 0, negative or infinite seconds = never.
    init(seconds: Double) {
        self.init(milliseconds: Self.milliseconds(seconds))
    }

    /// A timeout in seconds as poll(2) milliseconds (-1 = forever), rounded up.
    static func milliseconds(_ seconds: Double) -> Int32 {
        guard seconds > 0, seconds.isFinite, seconds < Double(Int32.max) / 1000 else { return -1 }
        return max(1, Int32((seconds * 1000).rounded(.up)))
    }

    /// What is left, for poll(2): -1 = forever, 0 = expired.
    func remainingMilliseconds() -> Int32 {
        guard let end else { return -1 }
        let now = Self.now()
        guard now < end else { return 0 }
        return Int32(min((end - now + 999_999) / 1_000_000, UInt64(Int32.max)))
    }

    private static func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}
