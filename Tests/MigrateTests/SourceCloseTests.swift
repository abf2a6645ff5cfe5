import Foundation
import Testing

@testable import Migrate

// The destination's wait after DONE (protocol.md §3.6.3, §3.7): it lets the source close the
// migration's connections first. Real sockets, plain and TLS (a TLS close is a close_notify
// and then FIN; a plain one only the FIN).

@Suite("After DONE the destination waits for the source to close")
struct SourceCloseTests {
    @Test("returns .closed when the source closes", arguments: StreamKind.allCases)
    func closed(kind: StreamKind) throws {
        let (source, destination) = try connectedPair(kind)
        defer { destination.close() }
        let waiting = Background { SourceClose.await(destination, bound: 60) } // a bound on a hang only
        source.close()
        #expect(try waiting.join() == .closed)
    }

    @Test("a source that sends after DONE ends the wait as .spoke", arguments: StreamKind.allCases)
    func spoke(kind: StreamKind) throws {
        let (source, destination) = try connectedPair(kind)
        defer { source.close(); destination.close() }
        let waiting = Background { SourceClose.await(destination, bound: 60) }
        try source.send([0x42])
        #expect(try waiting.join() == .spoke)
    }

    // With the source open the wait does not end on its own: not .closed, only the bound.
    @Test("a source that keeps the connection open is waited for only up to the bound")
    func bounded() throws {
        let (source, destination) = try connectedPair(.tls)
        defer { source.close(); destination.close() }
        #expect(SourceClose.await(destination, bound: 0.05) == .timedOut)
    }
}
