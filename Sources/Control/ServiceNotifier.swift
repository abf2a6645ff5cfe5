#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Posix

/// systemd's service notifications (sd_notify(3)) without libsystemd: one datagram of
/// `KEY=VALUE` lines to the Unix datagram socket named in `$NOTIFY_SOCKET` (a path, or
/// `@name` in the abstract namespace). Outside systemd (`$NOTIFY_SOCKET` unset) every call
/// does nothing, so a daemon calls it unconditionally.
///
/// `pvmigrate listen` (contrib/systemd/pvmigrate-listen.service, `Type=notify`) sends
/// `READY=1` once its TCP listener accepts, `RELOADING=1` … `READY=1` around a reload (SIGHUP)
/// and `STOPPING=1` when it begins to shut down; `STATUS=` lines say what it does, for
/// `systemctl status`.
public struct ServiceNotifier: Sendable {
    /// The socket, or nil outside systemd.
    public let socket: String?

    /// From `$NOTIFY_SOCKET` in `environment` (empty counts as unset).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        socket = environment["NOTIFY_SOCKET"].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// What the service tells systemd.
    public enum State: Sendable, Equatable {
        /// Start-up finished, or a reload did: `READY=1`.
        case ready
        /// A reload began: `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC, µs), as
        /// systemd ≥ 253 asks for `Type=notify-reload`; older ones ignore the second line.
        case reloading
        /// Shutting down: `STOPPING=1`.
        case stopping
        /// A line for `systemctl status`: `STATUS=…` (one line: newlines become spaces).
        case status(String)

        /// The datagram's lines for this state.
        public var lines: [String] {
            switch self {
            case .ready: ["READY=1"]
            case .reloading: ["RELOADING=1", "MONOTONIC_USEC=\(ServiceNotifier.monotonicMicroseconds())"]
            case .stopping: ["STOPPING=1"]
            case let .status(text):
                ["STATUS=" + String(text.map { $0.isNewline ? " " : $0 })]
            }
        }
    }

    /// Sends `states` as one datagram. Does nothing outside systemd; throws when the socket
    /// cannot be reached (the caller warns: systemd then times the service out, which says more
    /// than a daemon that exits).
    public func notify(_ states: State...) throws(ControlError) { try notify(states) }

    public func notify(_ states: [State]) throws(ControlError) {
        guard let socket, !states.isEmpty else { return }
        let text = states.flatMap(\.lines).joined(separator: "\n") + "\n"
        do { try UnixDatagram.send(Array(text.utf8), to: socket) } catch {
            throw ControlError(.connection, "cannot notify systemd at $NOTIFY_SOCKET=\(socket): "
                + "\(error.operation): \(Errno(error.errno).description)")
        }
    }

    static func monotonicMicroseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1000
    }
}
