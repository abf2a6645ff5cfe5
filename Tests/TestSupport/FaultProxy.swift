#if canImport(Glibc)
import Glibc
#endif
import Foundation

/// A fault-injecting TCP proxy for the migration stream, on loopback (issue 9's fault suite).
///
/// Every connection to `port` is forwarded to `127.0.0.1:upstream`. In `.frames` mode each
/// direction is parsed as protocol.md §3.2 frames (16-byte header: magic, u16 type, u16 flags,
/// u32 length, u32 reserved — read here from the spec, not from the code under test) and the
/// first frame that matches a rule gets the rule's fault; everything else is forwarded as is.
/// In `.bytes` mode (TLS: frames are invisible) rules count bytes instead. Each rule fires
/// once, on whichever connection first matches, so a later RESOLVE connection passes cleanly.
public final class FaultProxy: @unchecked Sendable {
    public enum Direction: Sendable, CustomStringConvertible {
        case toDestination, toSource
        public var description: String { self == .toDestination ? "S→D" : "D→S" }
    }

    public enum Fault: Sendable, CustomStringConvertible {
        /// The frame is not forwarded; the connection carries on.
        case drop
        /// The connection is cut (both ways) before the frame is forwarded.
        case cutBefore
        /// The frame is forwarded, then the connection is cut.
        case cutAfter
        /// One bit of the payload (bit index from the payload's start) is inverted.
        case flipBit(Int)
        /// The frame is held this many seconds, then forwarded.
        case delay(Double)
        /// `action` runs with the frame held (e.g. kill a process), then the frame is dropped.
        case hook(@Sendable () -> Void)

        public var description: String {
            switch self {
            case .drop: "drop"
            case .cutBefore: "cut before"
            case .cutAfter: "cut after"
            case let .flipBit(b): "flip bit \(b)"
            case let .delay(s): "delay \(s) s"
            case .hook: "hook"
            }
        }
    }

    public struct Rule: Sendable {
        public var direction: Direction
        /// Frame type number (protocol.md §3.2), `.frames` mode.
        public var frameType: UInt16?
        /// Which match fires (1 = the first frame of that type in that direction).
        public var occurrence: Int
        /// `.bytes` mode: fire once this many bytes have gone that way (cut only).
        public var afterBytes: Int?
        /// Only on this connection, counted in the order the proxy accepted them from 0 (a
        /// migration's control stream is 0, its data streams 1, 2, …); nil: any.
        public var connection: Int?
        public var fault: Fault

        public init(_ direction: Direction, frameType: UInt16, occurrence: Int = 1, connection: Int? = nil, _ fault: Fault) {
            self.direction = direction; self.frameType = frameType; self.occurrence = occurrence
            self.afterBytes = nil; self.connection = connection; self.fault = fault
        }

        public init(_ direction: Direction, cutAfterBytes: Int) {
            self.direction = direction; frameType = nil; occurrence = 1; afterBytes = cutAfterBytes; fault = .cutBefore
        }
    }

    public let port: UInt16
    private let upstream: UInt16
    private let listenFD: Int32
    private let lock = NSLock()
    private let rules: [Rule]
    private var seen: [Int: Int] = [:] // rule index → matches so far; guarded by `lock`
    private var spent: Set<Int> = []   // rules that fired; guarded by `lock`
    private var fired: [String] = []   // guarded by `lock`
    private var open: [Int32] = []      // guarded by `lock`
    private var accepted = 0            // connections so far; guarded by `lock`
    private var closed = false          // guarded by `lock`

    public init(upstream: UInt16, rules: [Rule]) throws {
        self.upstream = upstream
        self.rules = rules
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 16) == 0 else { Glibc.close(fd); throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listenFD = fd
        port = UInt16(bigEndian: address.sin_port)
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    /// The faults that fired, e.g. "S→D GO: drop".
    public var firedFaults: [String] { lock.withLock { fired } }

    public func close() {
        let fds = lock.withLock { () -> [Int32]? in
            if closed { return nil } // idempotent: a second close would hit a reused descriptor
            closed = true
            return open
        }
        guard let fds else { return }
        shutdown(listenFD, Int32(SHUT_RDWR)) // the accept thread closes it when it leaves
        fds.forEach { shutdown($0, Int32(SHUT_RDWR)) }
    }

    deinit { close() }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        return a
    }

    private static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    private func acceptLoop() {
        defer { Glibc.close(listenFD) }
        while !lock.withLock({ closed }) {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let server = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            var address = Self.loopback(port: upstream)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(server, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            let index = lock.withLock { () -> Int? in
                guard !closed else { return nil }
                open += [client, server]
                accepted += 1
                return accepted - 1
            }
            guard connected == 0, let index else { Glibc.close(client); Glibc.close(server); continue }
            // Forward each write at once, as pvmigrate's own sockets do (TCP_NODELAY): with Nagle
            // a small frame written while the previous one is unacknowledged waits for the
            // delayed ACK (up to 40 ms), which the source's PING samples would take for the
            // commit's round trip and never converge.
            Self.noDelay(client); Self.noDelay(server)
            let pair = Pair(client: client, server: server) { [weak self] in
                self?.lock.withLock { self?.open.removeAll { $0 == client || $0 == server } }
            }
            Thread.detachNewThread { [self] in pump(pair, from: client, to: server, .toDestination, connection: index) }
            Thread.detachNewThread { [self] in pump(pair, from: server, to: client, .toSource, connection: index) }
        }
    }

    /// One connection's two sockets; closed when both pumps are done (and forgotten by the
    /// proxy first, so that `close()` never shuts down a descriptor number reused since).
    private final class Pair: @unchecked Sendable {
        let client: Int32, server: Int32
        private let forget: @Sendable () -> Void
        private let lock = NSLock()
        private var finished = 0
        private var isSevered = false // guarded by `lock`
        init(client: Int32, server: Int32, forget: @escaping @Sendable () -> Void) {
            self.client = client; self.server = server; self.forget = forget
        }
        /// From now on nothing more is forwarded either way (the cut that follows a frame
        /// must not let the other direction's next frame slip through).
        func sever() { lock.withLock { isSevered = true } }
        var severed: Bool { lock.withLock { isSevered } }
        func cut() {
            sever()
            shutdown(client, Int32(SHUT_RDWR))
            shutdown(server, Int32(SHUT_RDWR))
        }
        func pumpDone() {
            let last = lock.withLock { finished += 1; return finished == 2 }
            if last { forget(); Glibc.close(client); Glibc.close(server) }
        }
    }

    private func readFully(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var buffer = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress! + got, count - got) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return nil }
            got += n
        }
        return buffer
    }

    private func writeFully(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + sent, bytes.count - sent, Int32(MSG_NOSIGNAL)) }
            if n < 0, errno == EINTR { continue }
            if n <= 0 { return false }
            sent += n
        }
        return true
    }

    /// The fault for the next unit going `direction`: a frame of `type`, or after `bytes` in all.
    private func match(_ direction: Direction, connection: Int, type: UInt16?, bytesSoFar: Int, unit: Int) -> Fault? {
        lock.withLock {
            for (i, rule) in rules.enumerated()
            where rule.direction == direction && !spent.contains(i) && (rule.connection ?? connection) == connection {
                if let limit = rule.afterBytes {
                    guard bytesSoFar + unit > limit else { continue }
                } else {
                    guard rule.frameType == type else { continue }
                    seen[i, default: 0] += 1
                    guard seen[i] == rule.occurrence else { continue }
                }
                spent.insert(i)
                fired.append("\(direction) #\(connection) \(type.map { "type \($0)" } ?? "byte \(rule.afterBytes!)"): \(rule.fault)")
                return rule.fault
            }
            return nil
        }
    }

    private var framesMode: Bool { lock.withLock { rules.allSatisfy { $0.afterBytes == nil } } }

    private func pump(_ pair: Pair, from: Int32, to: Int32, _ direction: Direction, connection: Int) {
        defer {
            shutdown(to, Int32(SHUT_WR))
            pair.pumpDone()
        }
        var total = 0
        if !framesMode {
            var buffer = [UInt8](repeating: 0, count: 16 << 10)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress!, $0.count) }
                if n < 0, errno == EINTR { continue }
                if n <= 0 { return }
                if match(direction, connection: connection, type: nil, bytesSoFar: total, unit: n) != nil { pair.cut(); return }
                guard !pair.severed, writeFully(to, Array(buffer[0..<n])) else { return }
                total += n
            }
        }
        while true {
            guard var header = readFully(from, 16) else { return }
            let magicOK = header[0] == 0x50 && header[1] == 0x56 && header[2] == 0x4d && header[3] == 0x47
            let type = UInt16(header[4]) | UInt16(header[5]) << 8
            let length = Int(header[8]) | Int(header[9]) << 8 | Int(header[10]) << 16 | Int(header[11]) << 24
            guard magicOK, length <= 16 << 20, var payload = readFully(from, length) else {
                _ = writeFully(to, header) // not a frame: pass on what we have and stop parsing
                return
            }
            switch match(direction, connection: connection, type: type, bytesSoFar: total, unit: 16 + length) {
            case nil: break
            case .drop?: continue
            case .cutBefore?: pair.cut(); return
            case .cutAfter?:
                pair.sever()
                _ = writeFully(to, header + payload)
                pair.cut()
                return
            case let .flipBit(bit)?:
                if bit / 8 < payload.count { payload[bit / 8] ^= 1 << (bit % 8) } else { header[4] ^= 0x80 }
            case let .delay(seconds)?:
                Thread.sleep(forTimeInterval: seconds) // not a condition: the fault itself, holding the frame
            case let .hook(action)?:
                action()
                continue
            }
            guard !pair.severed, writeFully(to, header + payload) else { return }
            total += 16 + length
        }
    }
}
