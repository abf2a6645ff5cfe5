import Foundation

/// Which incoming migrations a destination takes on (protocol.md §3.1.1): at most
/// `maximumIncoming` at once, and memory only while the total claimed — by migrations in
/// progress and by VMs that arrived and still run here — stays within `maximumMemory`.
///
/// A migration is counted from its HELLO (before anything is allocated for it) and claims
/// its memory when its MACHINE frame declares the size, before the machine or its page-hash
/// table is built. Both are released when the migration fails, or when the arrived VM has
/// been handed over (it then counts through `ReceiverOptions.hostedMemory`).
final class Admission: @unchecked Sendable {
    private let options: ReceiverOptions
    private let lock = NSLock()
    private var incoming = 0 // guarded by `lock`
    private var claimed: UInt64 = 0 // guarded by `lock`
    /// The limits, from `options` at first; `setLimits` changes them (`listen` on SIGHUP).
    private var maximumIncoming: Int // guarded by `lock`
    private var maximumMemory: UInt64 // guarded by `lock`

    init(options: ReceiverOptions) {
        self.options = options
        maximumIncoming = options.maximumIncoming
        maximumMemory = options.maximumMemory
    }

    /// New limits for the migrations admitted from now on. Migrations already admitted keep
    /// their place and their memory, even when that now exceeds a lowered limit: the limits
    /// then refuse new ones until enough of them have ended.
    func setLimits(maximumIncoming: Int, maximumMemory: UInt64) {
        lock.withLock { (self.maximumIncoming, self.maximumMemory) = (maximumIncoming, maximumMemory) }
    }

    /// One admitted migration's hold on the limits.
    final class Ticket: @unchecked Sendable {
        fileprivate var memory: UInt64 = 0 // guarded by the admission's lock
        fileprivate var released = false
    }

    /// Counts a new migration, or refuses it when `maximumIncoming` are already arriving.
    func admit() throws(MigrationError) -> Ticket {
        let (admitted, limit) = lock.withLock { () -> (Bool, Int) in
            guard incoming < maximumIncoming else { return (false, maximumIncoming) }
            incoming += 1
            return (true, maximumIncoming)
        }
        guard admitted else {
            throw .refused(.resources, "\(limit) migration\(limit == 1 ? " is" : "s are") already arriving at this host "
                + "(its limit, `listen --max-incoming \(limit)`); retry when one has finished, or raise --max-incoming there")
        }
        return Ticket()
    }

    /// Claims `bytes` of guest memory for the ticket's migration, or refuses.
    func claim(_ ticket: Ticket, bytes: UInt64) throws(MigrationError) {
        let limit = lock.withLock { maximumMemory }
        let mib = { (b: UInt64) in "\(b >> 20) MiB" }
        guard bytes <= limit else {
            throw .refused(.resources, "the VM has \(mib(bytes)), more than this host accepts in total "
                + "(`listen --max-memory` \(mib(limit))); send it to a larger host or raise --max-memory there")
        }
        let hosted = options.hostedMemory()
        let inFlight = lock.withLock { () -> UInt64? in
            let total = claimed.addingReportingOverflow(hosted)
            guard !total.overflow, total.partialValue <= limit, bytes <= limit - total.partialValue else { return claimed }
            claimed += bytes
            ticket.memory += bytes
            return nil
        }
        if let inFlight {
            throw .refused(.resources, "the VM has \(mib(bytes)) but only \(mib(limit - min(limit, inFlight + hosted))) "
                + "of this host's `listen --max-memory` \(mib(limit)) are free (\(mib(inFlight)) claimed by migrations "
                + "arriving, \(mib(hosted)) by VMs running here); retry later, send it elsewhere, or raise --max-memory there")
        }
    }

    /// Gives back everything the ticket holds. Idempotent.
    func release(_ ticket: Ticket) {
        lock.withLock {
            guard !ticket.released else { return }
            ticket.released = true
            incoming -= 1
            claimed -= ticket.memory
        }
    }
}

/// Drops a migration that makes no progress (protocol.md §3.1.1): in every window of
/// `seconds`, the migration must receive at least `minimumBytes` of frames or advance a
/// phase (HELLO → MACHINE → streams joined → data done → STATE → COMMIT); a peer that
/// trickles a small batch now and then — within every read timeout — is dropped and its
/// memory freed. `disarm()` ends the watch before the guest may start.
final class ProgressWatchdog: @unchecked Sendable {
    private let seconds: Double
    private let minimumBytes: UInt64
    private let condition = NSCondition()
    private var bytes: UInt64 = 0 // guarded by `condition`
    private var phases = 0
    private var armed = true
    private var stallReason: String?

    init(seconds: Double, minimumBytes: UInt64) {
        self.seconds = seconds
        self.minimumBytes = minimumBytes
    }

    /// Watches on a thread of its own; calls `onStall` once, with the reason, if the
    /// migration stalls before `disarm()`.
    func start(onStall: @escaping @Sendable (String) -> Void) {
        Thread.detachNewThread { [self] in
            condition.lock()
            while armed {
                let (startBytes, startPhases) = (bytes, phases)
                let end = Date(timeIntervalSinceNow: seconds)
                while armed, condition.wait(until: end) {}
                guard armed else { break }
                let received = bytes - startBytes
                if phases == startPhases, received < minimumBytes {
                    armed = false
                    let reason = "no progress: \(received) bytes arrived in \(Int(seconds)) s (at least \(minimumBytes) "
                        + "expected, or the next step of the migration); the source or the network is stalled — this "
                        + "host dropped the migration and freed its memory"
                    stallReason = reason
                    condition.unlock()
                    onStall(reason)
                    return
                }
            }
            condition.unlock()
        }
    }

    /// Frames of `count` bytes arrived.
    func received(_ count: Int) { condition.withLock { bytes += UInt64(count) } }

    /// Bytes received so far (the listener's `jobs`).
    var bytesReceived: UInt64 { condition.withLock { bytes } }

    /// The migration reached its next phase.
    func advanced() { condition.withLock { phases += 1 } }

    /// Ends the watch. False when the watchdog already dropped the migration.
    func disarm() -> Bool {
        condition.withLock {
            defer { armed = false; condition.broadcast() }
            return stallReason == nil
        }
    }

    /// Why the watchdog dropped the migration, if it did.
    var reason: String? { condition.withLock { stallReason } }
}
