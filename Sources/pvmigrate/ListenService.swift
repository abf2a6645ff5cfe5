import Control
import Core
import Foundation

/// What makes `listen` a service (contrib/systemd/pvmigrate-listen.service): systemd's
/// notifications (`ServiceNotifier`: READY, RELOADING, STOPPING, STATUS) and the reload on
/// SIGHUP. Created before anything slow, so that a SIGHUP is caught (not fatal) from then on.
final class ListenService: Sendable {
    private let notifier = ServiceNotifier()
    private let hangUp: SignalWatcher
    private let reload = Locked<(@Sendable () throws -> String, @Sendable (String) -> Void)?>(nil)

    init() {
        let reload = reload
        let notifier = notifier
        // Runs on the signal thread, one SIGHUP after the other.
        hangUp = SignalWatcher(SIGHUP) {
            guard let (body, log) = reload.value else { return } // not listening yet: nothing to reload
            Self.send(notifier, .reloading)
            let result: String
            do { result = try body() } catch { result = "failed, every setting stays as it was: \(error)" }
            log(result)
            Self.send(notifier, .ready, .status("reloaded: \(result)"))
        }
    }

    /// What a SIGHUP does (returns one line for the log), and where that line goes.
    func onReload(_ body: @escaping @Sendable () throws -> String, log: @escaping @Sendable (String) -> Void) {
        reload.withLock { $0 = (body, log) }
    }

    /// The listener accepts: READY=1.
    func ready(status: String) { Self.send(notifier, .ready, .status(status)) }

    /// Shutting down: STOPPING=1, and no more reloads.
    func stopping() {
        hangUp.cancel()
        Self.send(notifier, .stopping, .status("stopping"))
    }

    private static func send(_ notifier: ServiceNotifier, _ states: ServiceNotifier.State...) {
        do { try notifier.notify(states) } catch { Diagnostics.warn("\(error)") }
    }
}
