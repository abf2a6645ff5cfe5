import Core
import Foundation
import Migrate

/// Hosts the VMs that arrive through a `MigrationListener` (`pvmigrate listen`, `pvmigrate
/// demo`): each one runs here under its source name — NAME-2, NAME-3, … when that is taken —
/// with its own `VMHost` (control socket, console ring) until it ends or migrates away.
///
/// Install it with `configure(_:)` (arriving VMs get a `ConsoleRing` console and their memory
/// counts against the listener's limit while they run here) and `listener.serve(arrivals)`.
/// What happens is told to `report`, typed, on the thread it happens on: the migration's for
/// an arrival or a failure, a watcher thread's for a VM that is gone.
public final class Arrivals: ArrivalHandling, @unchecked Sendable {
    /// A VM that arrived and is hosted here.
    public struct Arrival: @unchecked Sendable {
        /// The name it runs under here (its source name unless that was taken).
        public let name: String
        public let vm: ReceivedVM
        public let host: VMHost
        public var renamed: Bool { name != vm.name }
    }

    public enum Event: @unchecked Sendable {
        case arrived(Arrival)
        /// A VM arrived but is not hosted (it was stopped): while shutting down
        /// (`reason` nil), or because no name or socket could be had.
        case notHosted(ReceivedVM, reason: String?)
        case failed(ReceiveFailure)
        /// A hosted VM is gone: it ended here, or migrated away (`migratedTo`).
        case gone(Arrival, VMHostEnd, migratedTo: String?)
    }

    private let runtime: RuntimeDirectory
    private let report: @Sendable (Event) -> Void
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var hosted: [String: Arrival] = [:]
    private var stopping = false
    private var failures = 0
    /// Hosted VMs whose end has not been reported yet.
    private var unreported = 0
    private var first: Arrival?

    public init(runtime: RuntimeDirectory, report: @escaping @Sendable (Event) -> Void = { _ in }) {
        self.runtime = runtime
        self.report = report
    }

    /// Points `options` at these arrivals: the console each arriving VM gets, and the memory
    /// of the VMs hosted here (it counts against `maximumMemory`).
    public func configure(_ options: inout ReceiverOptions) {
        options.console = { _ in ConsoleRing() }
        options.hostedMemory = { [weak self] in self?.hostedMemory ?? 0 }
    }

    /// Guest memory of the VMs hosted here.
    public var hostedMemory: UInt64 {
        condition.withLock { hosted.values.reduce(0) { $0 + $1.vm.machine.memory.size } }
    }

    /// The VMs hosted here now, by name.
    public var current: [Arrival] {
        condition.withLock { hosted.values.sorted { $0.name < $1.name } }
    }

    public func failed(_ failure: ReceiveFailure) {
        condition.withLock { failures += 1; condition.broadcast() }
        report(.failed(failure))
    }

    public func arrived(_ vm: ReceivedVM) {
        // `configure(_:)` made this console; a listener configured otherwise gets a fresh ring
        // (the control socket's `console` then shows only what comes after this point).
        let ring = vm.console as? ConsoleRing ?? ConsoleRing()
        condition.lock()
        if stopping {
            condition.unlock()
            stop(vm)
            report(.notHosted(vm, reason: nil))
            return
        }
        var arrival: Arrival?
        var lastError: (any Error)?
        for candidate in Self.candidateNames(for: vm.name, taken: Set(runtime.listNames()).union(hosted.keys)) {
            do {
                let host = try VMHost(name: candidate, machine: vm.machine, console: ring, runtime: runtime,
                                      kernelSHA256: vm.kernelSHA256, arrivedFrom: vm.peer.description)
                arrival = Arrival(name: candidate, vm: vm, host: host)
                break
            } catch { lastError = error }
        }
        guard let arrival else {
            condition.unlock()
            stop(vm)
            report(.notHosted(vm, reason: lastError.map { "\($0)" } ?? "no free name"))
            return
        }
        hosted[arrival.name] = arrival
        unreported += 1
        if first == nil { first = arrival }
        condition.broadcast()
        condition.unlock()
        report(.arrived(arrival))
        Thread.detachNewThread { [self] in
            let end = arrival.host.waitUntilGone()
            arrival.vm.network?.detach()
            condition.withLock { hosted[arrival.name] = nil }
            report(.gone(arrival, end, migratedTo: arrival.host.migratedTo))
            condition.withLock {
                unreported -= 1
                condition.broadcast()
            }
        }
    }

    private func stop(_ vm: ReceivedVM) {
        vm.machine.stop()
        _ = vm.machine.waitForExit()
        vm.network?.detach()
    }

    /// Waits for the first VM to arrive here; nil when a migration failed first or none came
    /// within `timeout` seconds.
    public func firstArrival(timeout: Double) -> Arrival? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while first == nil, failures == 0, condition.wait(until: deadline) {}
            return first
        }
    }

    /// Stops accepting arrivals (a VM that arrives from now on is stopped), stops every VM
    /// hosted here and waits until their sockets are gone and their ends reported; false when
    /// some did not go within `timeout` seconds.
    @discardableResult
    public func shutDown(timeout: Double = 30) -> Bool {
        let hosts = condition.withLock { () -> [VMHost] in
            stopping = true
            return hosted.values.map(\.host)
        }
        hosts.forEach { $0.stop() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while unreported > 0, condition.wait(until: deadline) {}
            return unreported == 0
        }
    }

    /// NAME, NAME-2, NAME-3, … NAME-99 without the names in `taken`; a name that is not a
    /// valid VM name (`RuntimeDirectory.validate(name:)`) becomes "vm".
    public static func candidateNames(for name: String, taken: Set<String>) -> [String] {
        let base = (try? RuntimeDirectory.validate(name: name)) != nil ? name : "vm"
        return ([base] + (2...99).map { "\(base)-\($0)" }).filter { !taken.contains($0) }
    }
}
