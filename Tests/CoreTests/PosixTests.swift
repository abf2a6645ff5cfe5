import Foundation
import Glibc
import Posix
import Synchronization
import Testing
import TestSupport

/// The system layer (Sources/Posix): the one errno formatter, the EINTR-retrying call, and
/// the owning descriptor's close protocol that the socket wrappers rely on.
@Suite("Posix system layer")
struct PosixTests {
    @Test("Errno reads as strerror's text, lowercased, with the number")
    func errnoDescription() {
        #expect(Errno(ECONNREFUSED).description == "connection refused (errno \(ECONNREFUSED))")
        #expect(Errno(ENOENT).description == "no such file or directory (errno \(ENOENT))")
    }

    @Test("syscall returns the result, or throws the call's errno")
    func syscallResultOrErrno() throws {
        let ends = try FileDescriptor.pipe()
        var byte: UInt8 = 7
        #expect(try syscall { write(ends.write.rawValue, &byte, 1) } == 1)
        #expect(throws: Errno(EBADF)) { try syscall { close(-1) } }
    }

    @Test("writeAll puts every byte in the file; after close() it refuses with EBADF")
    func writeAllWritesEverything() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("posix-writeall-\(getpid())").path
        defer { unlink(path) }
        let bytes = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let file = try FileDescriptor.open(path, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try file.writeAll(bytes)
        try file.writeAll([])
        file.close()
        let back = FileManager.default.contents(atPath: path).map { [UInt8]($0) }
        #expect(back == bytes, "read back \(back?.count ?? -1) bytes, wrote \(bytes.count)")
        #expect(throws: Errno(EBADF)) { try file.writeAll([1]) }
    }

    @Test("a closed descriptor refuses new calls with EBADF but stays open until the call inside leaves")
    func closeWaitsForActiveCall() throws {
        let ends = try FileDescriptor.pipe()
        try ends.read.enter()                       // an operation in progress
        ends.read.close()
        #expect(ends.read.isClosing)
        #expect(throws: Errno(EBADF)) { try ends.read.enter() }
        // Still ours: the descriptor number was not closed under the operation.
        #expect(fcntl(ends.read.rawValue, F_GETFD) >= 0, "the descriptor was closed while a call was inside")
        ends.read.leave()                           // the last one out closes it
        var byte: UInt8 = 0
        #expect(throws: Errno(EBADF)) { try ends.read.call { read($0, &byte, 1) } }
    }

    @Test("close() wakes a thread blocked in recv on the same socket")
    func closeWakesBlockedReceiver() throws {
        var pair: [Int32] = [-1, -1]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0, "socketpair: \(Errno.current)")
        let mine = FileDescriptor(owning: pair[0]), peer = FileDescriptor(owning: pair[1])
        let outcome = Mutex<String?>(nil)
        let started = Mutex(false)
        let thread = Thread {
            started.withLock { $0 = true }
            var byte: UInt8 = 0
            let text: String
            do { text = "returned \(try mine.call { recv($0, &byte, 1, 0) })" } catch { text = "threw \(error)" }
            outcome.withLock { $0 = text }
        }
        thread.start()
        #expect(Wait.until { started.withLock { $0 } }, "the receiving thread never started")
        mine.close()
        #expect(Wait.until { outcome.withLock { $0 } != nil }, "recv stayed blocked after close()")
        let seen = outcome.withLock { $0 } ?? "nothing"
        #expect(seen == "returned 0" || seen == "threw \(Errno(EBADF))", "recv after close(): \(seen)")
        _ = peer
    }
}
