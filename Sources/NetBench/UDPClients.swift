// The generator's UDP sockets, made inside the client network namespace. setns(2) moves only
// the calling thread, and a socket belongs for life to the namespace it was made in, so one
// short-lived thread enters the namespace, opens the sockets and ends: the process and its
// other threads stay where they were.

import CKVM
import Core
import Foundation
import Posix

/// The NetBench subsystem's one error type: each message says what failed and what to do.
public enum NetBenchError: Error, Sendable, CustomStringConvertible {
    /// Something this machine lacks (root, a device, a tool).
    case requirement(String)
    /// A command run for the lab failed: what it was, its output.
    case command(String, String)
    case system(String, Errno)
    /// The guest, a client or the migration did not do what the run needs.
    case run(String)

    public var description: String {
        switch self {
        case let .requirement(what): "bench --net needs \(what)"
        case let .command(what, output): "\(what) failed: \(output.trimmingCharacters(in: .whitespacesAndNewlines).suffix(600))"
        case let .system(what, errno): "cannot \(what): \(errno)"
        case let .run(what): what
        }
    }
}

/// The monotonic clock every timestamp of a run is taken on (the same in every process and
/// namespace of this machine), and the wall clock's offset from it (for ping's -D stamps).
public enum MonotonicClock {
    public static func now() -> UInt64 { read(CLOCK_MONOTONIC) }

    /// CLOCK_REALTIME minus CLOCK_MONOTONIC, in nanoseconds, now.
    public static func realtimeOffset() -> Int64 { Int64(read(CLOCK_REALTIME)) - Int64(now()) }

    static func read(_ clock: clockid_t) -> UInt64 {
        var ts = timespec()
        clock_gettime(clock, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Sleeps until the monotonic clock reads `ns` (or returns at once if it already does).
    public static func sleep(until ns: UInt64) {
        var ts = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
}

/// `count` UDP sockets connected to `host:port`, made in the network namespace at `namespace`
/// (e.g. /run/netns/NAME; nil: this thread's own).
public final class UDPClients: Sendable {
    public let sockets: [FileDescriptor]

    public init(count: Int, host: String, port: UInt16, namespace: String?) throws(NetBenchError) {
        let made = Locked<Result<[FileDescriptor], NetBenchError>>(.failure(.run("the socket thread did not run")))
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            defer { done.signal() }
            made.withLock { $0 = Self.open(count: count, host: host, port: port, namespace: namespace) }
        }
        thread.start()
        done.wait()
        sockets = try made.withLock { $0 }.get()
    }

    private static func open(count: Int, host: String, port: UInt16, namespace: String?) -> Result<[FileDescriptor], NetBenchError> {
        if let namespace {
            let rc = ckvm_enter_netns(namespace)
            guard rc == 0 else { return .failure(.system("enter the network namespace \(namespace)", Errno(-rc))) }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return .failure(.run("\(host) is not an IPv4 address")) }
        var out: [FileDescriptor] = []
        for _ in 0..<count {
            do {
                let fd = try syscall { socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
                let descriptor = FileDescriptor(owning: fd)
                // Sound: `address` is a sockaddr_in and the length says so.
                _ = try withUnsafePointer(to: &address) { p throws(Errno) in
                    try p.withMemoryRebound(to: sockaddr.self, capacity: 1) { s throws(Errno) in
                        try syscall { connect(fd, s, socklen_t(MemoryLayout<sockaddr_in>.size)) }
                    }
                }
                try descriptor.setNonBlocking(true)
                // The kernel stamps each answer when it arrives, as it does for ping (`receive`).
                _ = try syscall { ckvm_socket_rx_timestamps(fd) } // sets errno too
                out.append(descriptor)
            } catch {
                return .failure(.system("open a UDP socket to \(host):\(port)", error))
            }
        }
        return .success(out)
    }

    /// Sends one datagram on socket `index`; false if the kernel refused it (counted by the caller).
    public func send(_ index: Int, _ message: String) -> Bool { send(index, Array(message.utf8)) }

    public func send(_ index: Int, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { b in
            retryingEINTR { Glibc.send(sockets[index].rawValue, b.baseAddress, b.count, Int32(MSG_DONTWAIT)) } == b.count
        }
    }

    /// Waits up to `timeoutMs` for datagrams on every socket (or only on socket `only`) and
    /// hands each to `body` with its socket and two receive times on the monotonic clock: when
    /// this thread read it (`user`, after its wake-up), and when the kernel received it
    /// (`kernel`: its SO_TIMESTAMPNS stamp, the time iputils ping measures to; nil if the
    /// datagram carried none). They differ by the receiving thread's wake-up and the recv.
    public func receive(only: Int? = nil, timeoutMs: Int32, _ body: (Int, UnsafeRawBufferPointer, ReceiveTimes) -> Void) {
        let indices = only.map { [$0] } ?? Array(sockets.indices)
        var fds = indices.map { pollfd(fd: sockets[$0].rawValue, events: Int16(POLLIN), revents: 0) }
        guard retryingEINTR({ poll(&fds, nfds_t(fds.count), timeoutMs) }) > 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 2048)
        for (i, p) in zip(indices, fds) where p.revents != 0 {
            while true {
                var stamp: Int64 = 0
                // Sound: the buffer's base address and count describe its own storage.
                let n = buffer.withUnsafeMutableBytes { ckvm_recv_timestamped(p.fd, $0.baseAddress, UInt($0.count), &stamp) }
                guard n > 0 else { break } // EAGAIN: drained (an error: the next poll says so again)
                let at = MonotonicClock.now()
                // CLOCK_REALTIME → CLOCK_MONOTONIC with the offset of this moment (a step of the
                // wall clock between the stamp and now would shift this one reading; none is expected).
                let kernel = stamp > 0 ? UInt64(clamping: stamp - MonotonicClock.realtimeOffset()) : nil
                buffer.withUnsafeBytes { body(i, UnsafeRawBufferPointer(rebasing: $0[..<n]), ReceiveTimes(user: at, kernel: kernel)) }
            }
        }
    }
}

/// When an answer was received, on the monotonic clock (`UDPClients.receive`).
public struct ReceiveTimes: Sendable, Equatable {
    /// After the receiving thread woke and read it.
    public var user: UInt64
    /// The kernel's receive stamp (SO_TIMESTAMPNS), as ping's; nil when none came with it.
    public var kernel: UInt64?

    public init(user: UInt64, kernel: UInt64? = nil) { self.user = user; self.kernel = kernel }
}
