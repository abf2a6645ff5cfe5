import Core
import Foundation

/// How a destination receives VMs, and the limits that protect it (protocol.md §3.1.1).
public struct ReceiverOptions: Sendable {
    /// Guest memory all incoming migrations together, plus the VMs that arrived and still run
    /// here (`hostedMemory`), may claim. Default: this host's physical memory.
    public var maximumMemory: UInt64 = ProcessInfo.processInfo.physicalMemory
    /// Migrations arriving at once (from HELLO until the VM runs here or the migration fails).
    public var maximumIncoming = 4
    /// Streams granted at most (HELLO_ACK may lower the source's count, protocol.md §3.2).
    public var maximumStreams = 64
    /// Capabilities this host accepts; HELLO_ACK grants their intersection with the offer, and
    /// a source that then uses one it was not granted is a protocol violation.
    public var capabilities: Capabilities = .all
    /// Per-read timeout (seconds) on an admitted migration's streams.
    public var timeout: Double = 30
    /// A migration that receives less than `minimumProgressBytes` and reaches no new phase
    /// within this many seconds is dropped and freed (a deadline on progress, distinct from
    /// the per-read timeout, which a peer trickling a byte at a time never trips).
    public var progressTimeout: Double = 60
    public var minimumProgressBytes: UInt64 = 1 << 20
    /// Handshake deadline and cap on pending connections. The first frame (HELLO or JOIN)
    /// must arrive within `listener.handshakeTimeout` of the handshake, and at most
    /// `listener.maxPendingConnections` handshaken connections may be waiting for it.
    public var listener = ListenerLimits()
    /// Guest memory of the VMs that arrived through this listener and still run here; it
    /// counts against `maximumMemory`. The engine does not keep arrived VMs: their host does.
    public var hostedMemory: @Sendable () -> UInt64 = { 0 }
    /// How long a PREPARED destination waits for GO before it aborts (protocol.md §3.6.3).
    public var goDeadline: Double = 30
    /// The decisions this host made (protocol.md §3.6.4); `listen` keeps them in its runtime
    /// directory. The default, in memory, does not survive the process.
    public var outcomes = try! OutcomeTable(path: nil)
    /// Makes the console of an arriving VM, by its source name; the VM's `ReceivedVM.console`
    /// is the sink this returned (Control's `Arrivals` makes `ConsoleRing`s).
    public var console: @Sendable (String) -> ConsoleSink = { _ in ConsoleBuffer() }
    /// Messages for the host's log that belong to no arrival: RESOLVE answers, and what an
    /// arrived machine logs later. What a machine logs while it is being received travels
    /// with its `ReceivedVM` or `ReceiveFailure` as `notes` instead.
    public var log: @Sendable (String) -> Void = { _ in }
    /// Gives an arriving VM's PV NIC a network (pvmigrate: a new TAP on `listen --net-bridge`),
    /// called with the NIC and the VM's source name as soon as MACHINE announces one — before
    /// the source pauses. The NIC stays quiesced (frames wait in the TAP) until the guest
    /// starts here. Nil: this host has no network for NICs, and a VM with one is refused
    /// (`ERROR` 3) while it still runs at the source (protocol.md §5.8).
    public var attachNetwork: (@Sendable (PVNet, String) throws -> NetworkAttachment)?
    public init() {}
}

/// A network an arriving VM's NIC was given (`ReceiverOptions.attachNetwork`): whoever owns
/// the VM calls `detach()` once it is gone; a migration that fails does so itself.
public final class NetworkAttachment: Sendable {
    /// For logs, e.g. "TAP pvtap3 on bridge br0".
    public let description: String
    private let body: Locked<(@Sendable () -> Void)?>

    public init(description: String, detach: @escaping @Sendable () -> Void) {
        self.description = description
        body = Locked(detach)
    }

    /// Stops the backend and releases the TAP; only the first call does anything.
    public func detach() {
        let b = body.withLock { (b: inout (@Sendable () -> Void)?) -> (@Sendable () -> Void)? in
            defer { b = nil }
            return b
        }
        b?()
    }
}
