#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A real Unix datagram socket standing in for systemd's notify socket: bound at a path or
/// an abstract name, read with a deadline.
public final class NotifySocket {
    private let fd: Int32
    /// What goes in $NOTIFY_SOCKET: the path, or "@name".
    public let name: String

    public init(abstract: Bool) throws {
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        let unique = "pvm-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        name = abstract ? "@" + unique : "/tmp/" + unique
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(name.utf8)
        if abstract { bytes[0] = 0 }
        // Sound: `bytes` (< 40 bytes) fits in sun_path (108 bytes).
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = abstract ? socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count)
            : socklen_t(MemoryLayout<sockaddr_un>.size)
        // Sound: sockaddr_un is layout-compatible with sockaddr for bind.
        let bound = withUnsafePointer(to: &address) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard bound == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    }

    deinit {
        close(fd)
        if !name.hasPrefix("@") { unlink(name) }
    }

    /// The next datagram as text; nil when none came within `timeout` s (bounds a hang only).
    public func receive(timeout: Double = Wait.hangBound) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n > 0 ? String(decoding: buffer[..<n], as: UTF8.self) : nil
    }

    /// Datagrams until one contains `line` as a whole line (returns them all), or nil.
    public func receive(until line: String, timeout: Double = Wait.hangBound) -> [String]? {
        var seen: [String] = []
        let deadline = Date(timeIntervalSinceNow: timeout)
        while let next = receive(timeout: max(deadline.timeIntervalSinceNow, 0)) {
            seen.append(next)
            if next.split(separator: "\n").contains(Substring(line)) { return seen }
        }
        return nil
    }
}

