import Foundation
import Testing

@testable import Migrate

// The listener's limits (protocol.md §3.1.1) below the engine: the pending-connection cap on
// real sockets and TLS, the admission arithmetic, and the progress watchdog.

@Suite("listener limits (protocol.md §3.1.1)")
struct ListenerLimitsTests {
    @Test("connections over --max-pending are closed at once; the refusals are reported, rate-limited")
    func pendingCapClosesExcessConnectionsAtOnce() throws {
        var limits = ListenerLimits()
        limits.handshakeTimeout = 60
        limits.maxPendingConnections = 1
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: try StreamKind.tls.listenerMode(), limits: limits)
        defer { listener.close() }
        let refusal = Background { () throws -> TransportError? in
            do { _ = try listener.accept() } catch let error as TransportError { return error }
            return nil
        }
        // The one slot: a TCP connection that never starts its handshake.
        let idle = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .insecure)
        defer { idle.close() }
        // Ten more, each closed at once although the handshake deadline is 60 s (read timeout 20 s).
        let excess = try (0..<10).map { _ in try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .insecure) }
        defer { excess.forEach { $0.close() } }
        for connection in excess {
            connection.setTimeout(seconds: 20)
            #expect(throws: TransportError.peerClosed) { _ = try connection.read(count: 1) }
        }
        guard case let .refused(peer, reason)? = try refusal.join(timeout: 20) else {
            Issue.record("accept() did not report the refusal")
            return
        }
        #expect(peer.hasPrefix("127.0.0.1:") && reason.contains("1 connection is already in its TLS handshake"), "\(reason)")
        // The slot comes back when the idle peer goes: a real client gets through.
        idle.close()
        // Next comes the idle peer's failed handshake, which frees its slot — not nine more
        // refusals: those came within a second of the first and are only counted.
        #expect {
            _ = try Background { try listener.accept() }.join(timeout: 20)
        } throws: { error in
            if case .handshakeFailed? = error as? TransportError { return true }
            print("instead of the idle peer's handshake failure: \(error)")
            return false
        }
        let accepting = Background { try listener.accept() }
        let client = try StreamConnector.connect(host: "127.0.0.1", port: listener.port,
                                                 mode: try StreamKind.tls.connectorMode(), timeout: 20)
        defer { client.close() }
        try accepting.join(timeout: 20).close()
    }

    static func options(memory: UInt64, incoming: Int, hosted: UInt64 = 0) -> ReceiverOptions {
        var o = ReceiverOptions()
        o.maximumMemory = memory
        o.maximumIncoming = incoming
        o.hostedMemory = { hosted }
        return o
    }

    static func refusalReason(_ body: () throws -> Void) -> String? {
        do { try body() } catch {
            if case let .refused(code, reason)? = error as? MigrationError, code == .resources { return reason }
            Issue.record("not a resources refusal: \(error)")
        }
        return nil
    }

    @Test("admission counts migrations and claims, refuses past either limit, and gives back on release")
    func admissionArithmetic() throws {
        let admission = Admission(options: Self.options(memory: 1 << 30, incoming: 2, hosted: 256 << 20))
        let a = try admission.admit()
        let b = try admission.admit()
        #expect(Self.refusalReason { _ = try admission.admit() }?.contains("--max-incoming 2") == true)
        try admission.claim(a, bytes: 512 << 20)
        // 256 hosted + 512 claimed: 256 MiB left.
        let reason = Self.refusalReason { try admission.claim(b, bytes: 512 << 20) }
        #expect(reason?.contains("only 256 MiB") == true && reason?.contains("512 MiB claimed by migrations arriving") == true,
                "\(reason ?? "admitted")")
        #expect(Self.refusalReason { try admission.claim(b, bytes: UInt64.max) }?.contains("more than this host accepts") == true)
        try admission.claim(b, bytes: 256 << 20)
        admission.release(a)
        admission.release(a) // idempotent: must not give back twice
        let c = try admission.admit()
        try admission.claim(c, bytes: 512 << 20)
        #expect(Self.refusalReason { try admission.claim(c, bytes: 1) } != nil, "the double release freed memory twice")
    }

    @Test("limits changed by a reload apply to the next admissions; those admitted keep their place and memory")
    func admissionLimitsChangeForTheNextMigrations() throws {
        let admission = Admission(options: Self.options(memory: 1 << 30, incoming: 2, hosted: 0))
        let a = try admission.admit()
        try admission.claim(a, bytes: 768 << 20)
        admission.setLimits(maximumIncoming: 1, maximumMemory: 512 << 20)
        #expect(Self.refusalReason { _ = try admission.admit() }?.contains("--max-incoming 1") == true,
                "a lowered limit still admitted a second migration")
        admission.setLimits(maximumIncoming: 3, maximumMemory: 512 << 20)
        let b = try admission.admit()
        #expect(Self.refusalReason { try admission.claim(b, bytes: 1 << 20) }?.contains("--max-memory` 512 MiB") == true,
                "768 MiB already claimed exceed the lowered 512 MiB: nothing more fits")
        admission.release(a) // the first migration ends: its memory comes back under the new limit
        try admission.claim(b, bytes: 512 << 20)
        #expect(Self.refusalReason { try admission.claim(b, bytes: 1) } != nil)
    }

    /// Waits for the watchdog's verdict: the reason, or nil when it did not fire within `timeout`.
    static func stall(_ watchdog: ProgressWatchdog, timeout: Double, while feeding: (() -> Void)? = nil) -> String? {
        let fired = DispatchSemaphore(value: 0)
        watchdog.start { _ in fired.signal() }
        let end = Date(timeIntervalSinceNow: timeout)
        while Date() < end {
            if fired.wait(timeout: .now() + 0.05) == .success { return watchdog.reason }
            feeding?()
        }
        return nil
    }

    @Test("the progress watchdog drops a trickle but not a migration that moves")
    func progressWatchdog() {
        let trickled = ProgressWatchdog(seconds: 0.5, minimumBytes: 1 << 20)
        let reason = Self.stall(trickled, timeout: 20) { trickled.received(4096 + 16) }
        #expect(reason?.contains("no progress") == true, "a trickle of one page per 50 ms was not dropped")
        #expect(!trickled.disarm(), "disarm() must say the migration was dropped")

        let moving = ProgressWatchdog(seconds: 0.5, minimumBytes: 1 << 20)
        #expect(Self.stall(moving, timeout: 2) { moving.received(1 << 20) } == nil, "a migration at 20 MiB/s was dropped")
        #expect(moving.disarm())

        let phased = ProgressWatchdog(seconds: 0.5, minimumBytes: 1 << 20)
        #expect(Self.stall(phased, timeout: 2) { phased.advanced() } == nil, "phase changes are progress")
        #expect(phased.disarm())
    }
}
