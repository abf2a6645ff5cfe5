import Core
import Foundation

// What the receiving engine hands its host (`MigrationListener.serve`): a typed arrival or a
// typed failure, each with the peer it concerns, so a host never reads the engine's log text
// or relies on which thread calls it. The host (Control's `Arrivals`, the tests, `bench`)
// decides names, control sockets and how to report.

/// A VM that arrived and runs on this host.
public struct ReceivedVM: @unchecked Sendable {
    /// The MACHINE frame the source announced (protocol.md §3.2): its name, size, kernel.
    public let machineDescription: MachineDescription
    public let machine: Machine
    /// Who sent it: the address and the name in its verified certificate.
    public let peer: PeerIdentity
    /// The console the guest writes to: the one `ReceiverOptions.console` made for it.
    public let console: any ConsoleSink
    public let stats: ReceiveStats
    /// Messages the machine logged while it was being received (restoring its devices), in
    /// order; later ones go to `ReceiverOptions.log`.
    public let notes: [String]
    /// The id the source gave the migration in HELLO (protocol.md §3.2), for logs.
    public let migrationID: [UInt8]
    /// The network its PV NIC was given here (`ReceiverOptions.attachNetwork`); the VM's
    /// host detaches it when the VM is gone.
    public var network: NetworkAttachment? = nil

    /// The name the VM had at the source.
    public var name: String { machineDescription.name }
    public var kernelSHA256: [UInt8] { machineDescription.kernelSHA256 }
}

public struct ReceiveStats: Sendable, Codable, Equatable {
    public var seconds = 0.0
    public var streams = 0
    public var pagesApplied = 0
    public var frames: UInt64 = 0
    public var digest: UInt64 = 0
    /// CPU seconds (user + system) of the session's threads, summed per thread (`CPUMeter`);
    /// the listener's accept and TLS handshake threads are not included.
    public var cpuSeconds = 0.0

    /// CPU seconds per GiB of guest memory applied (pages applied × 4 KiB).
    public var cpuSecondsPerGiB: Double { MigrationStats.perGiB(cpuSeconds, pages: pagesApplied) }
}

/// A connection or migration the listener gave up on. The VM, if any was being built, is
/// discarded; the source keeps running it (protocol.md §3.6).
public struct ReceiveFailure: Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        /// A connection closed before it started a migration: failed TLS handshake, no or a
        /// wrong first frame, too many pending connections (protocol.md §3.1.1).
        case rejected
        /// A migration refused by a limit of this host (admission, memory) or dropped for
        /// lack of progress (protocol.md §3.1.1); the source was told why.
        case refused
        /// A migration that failed: transport, protocol, digest, state, commit.
        case failed
    }

    public let kind: Kind
    /// The other end, when a connection got that far (always, today: the TLS handshake
    /// names the peer before anything can fail here).
    public let peer: PeerIdentity?
    /// One line for people, e.g. "migration from 127.0.0.1:4000 (CN=src) refused: …".
    public let description: String
    /// Messages the half-built machine logged before it was discarded.
    public let notes: [String]
    /// The state the migration failed in (nil: it never started, e.g. `rejected`).
    public let state: ReceiverState?
    /// The migration's id from its HELLO, once one was read (for logs).
    public let migrationID: [UInt8]?
    /// The transport's error when a connection was rejected before its first frame (a TLS
    /// handshake that failed, a limit), so a host can count failures by kind.
    public let transportError: TransportError?

    public init(kind: Kind, peer: PeerIdentity?, description: String, notes: [String] = [], state: ReceiverState? = nil,
                migrationID: [UInt8]? = nil, transportError: TransportError? = nil) {
        self.kind = kind
        self.peer = peer
        self.description = description
        self.notes = notes
        self.state = state
        self.migrationID = migrationID
        self.transportError = transportError
    }
}

/// Receives what a `MigrationListener` produces. Called on the migration's own thread.
public protocol ArrivalHandling: Sendable {
    /// A VM arrived: it runs (GO was recorded, protocol.md §3.6.3); the handler now owns it.
    func arrived(_ vm: ReceivedVM)
    func failed(_ failure: ReceiveFailure)
}

/// Messages a machine logs while it is being received: held until the migration ends (they
/// travel with its `ReceivedVM` or `ReceiveFailure`), then passed on as they come.
final class HeldNotes: @unchecked Sendable {
    private let forward: @Sendable (String) -> Void
    private let lock = NSLock()
    private var held: [String]? = [] // guarded by `lock`; nil once released

    init(forwardingTo forward: @escaping @Sendable (String) -> Void) { self.forward = forward }

    func log(_ message: String) {
        let kept = lock.withLock { () -> Bool in
            guard held != nil else { return false }
            held!.append(message)
            return true
        }
        if !kept { forward(message) }
    }

    /// The notes so far; later ones are forwarded.
    func release() -> [String] {
        lock.withLock {
            defer { held = nil }
            return held ?? []
        }
    }
}
