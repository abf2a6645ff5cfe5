@testable import Control
import Foundation
import Synchronization
import Testing
import TestSupport

extension EndToEnd {
    /// The control socket's listener shares the transport's close protocol (Posix
    /// `FileDescriptor`): `close()` from another thread wakes a blocked `accept`, and the
    /// descriptor is closed only after accept has returned — before, `close()` called close(2)
    /// under a concurrent accept, which could then run on a reused descriptor number.
    @Suite struct ControlSocketCloseTests {
        @Test func closeWakesABlockedAcceptAndRemovesTheSocketFile() throws {
            let path = "/tmp/pvm-cs-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
            let listener = try ListeningSocket(path: path)
            #expect(FileManager.default.fileExists(atPath: path))
            let accepted = Mutex<String?>(nil)
            let entered = Mutex(false)
            let thread = Thread {
                entered.withLock { $0 = true }
                let connection = listener.accept()
                accepted.withLock { $0 = connection == nil ? "nil" : "a connection" }
            }
            thread.start()
            #expect(Wait.until { entered.withLock { $0 } }, "the accepting thread never started")
            // A client first: accept serves it, so the listener works before the close.
            let client = try LineSocket.connect(path: path)
            #expect(Wait.until { accepted.withLock { $0 } != nil }, "accept never returned the client")
            #expect(accepted.withLock { $0 } == "a connection")
            _ = client

            accepted.withLock { $0 = nil }
            let second = Thread {
                let connection = listener.accept()
                accepted.withLock { $0 = connection == nil ? "nil" : "a connection" }
            }
            second.start()
            listener.close()
            #expect(Wait.until { accepted.withLock { $0 } != nil }, "accept stayed blocked after close()")
            #expect(accepted.withLock { $0 } == "nil", "accept after close() returned \(accepted.withLock { $0 } ?? "nothing")")
            #expect(!FileManager.default.fileExists(atPath: path), "close() left the socket file behind")
            listener.close() // idempotent
        }
    }
}
