import Foundation
import Glibc
import NetBench
import Testing

/// The UDP client's two receive times (docs/benchmarks.md, "Like for like with ping"): the
/// kernel's SO_TIMESTAMPNS stamp and the time its thread read the answer, on real loopback
/// sockets (127.0.0.1, an ephemeral port).
@Suite struct UDPClientsTests {
    /// A UDP socket bound to 127.0.0.1 on an ephemeral port: (descriptor, port).
    static func server() throws -> (Int32, UInt16) {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        try #require(fd >= 0, "socket: errno \(errno)")
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        try #require(bound, "bind 127.0.0.1:0: errno \(errno)")
        return (fd, UInt16(bigEndian: address.sin_port))
    }

    @Test func answersCarryTheKernelsReceiveStampBetweenTheSendAndTheThreadsRead() throws {
        let (server, port) = try Self.server()
        defer { close(server) }
        let clients = try UDPClients(count: 1, host: "127.0.0.1", port: port, namespace: nil)
        let sent = MonotonicClock.now()
        #expect(clients.send(0, "GET nb0"))
        // Echo it back from the server socket to where it came from.
        var buffer = [UInt8](repeating: 0, count: 64)
        var from = sockaddr_storage()
        var fromLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let n = withUnsafeMutablePointer(to: &from) { f in
            f.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(server, &buffer, buffer.count, 0, $0, &fromLength) }
        }
        try #require(n == 7, "the server read \(n) bytes, errno \(errno)")
        let echoed = withUnsafePointer(to: &from) { f in
            f.withMemoryRebound(to: sockaddr.self, capacity: 1) { sendto(server, buffer, n, 0, $0, fromLength) }
        }
        try #require(echoed == n)
        var times: [ReceiveTimes] = []
        let deadline = MonotonicClock.now() + 10_000_000_000 // bounds a hang only
        while times.isEmpty, MonotonicClock.now() < deadline {
            clients.receive(timeoutMs: 100) { _, bytes, at in
                #expect(Array(bytes) == Array("GET nb0".utf8))
                times.append(at)
            }
        }
        let at = try #require(times.first, "no answer within 10 s")
        let kernel = try #require(at.kernel, "the answer carried no SO_TIMESTAMPNS stamp")
        // The stamp is CLOCK_REALTIME converted with the offset of the moment: allow 1 ms for
        // the wall clock's slewing between the two readings.
        #expect(kernel + 1_000_000 >= sent, "stamped \(Int64(sent) - Int64(kernel)) ns before the send")
        #expect(kernel <= at.user + 1_000_000, "stamped \(Int64(kernel) - Int64(at.user)) ns after the thread read it")
    }
}
