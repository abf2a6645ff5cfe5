import ArgumentParser
import Core
import Foundation
import Logging
import Operations
import Posix

/// Console output straight to standard output, line by line.
final class StandardOutputConsole: ConsoleSink, Sendable {
    func console(_ bytes: [UInt8]) {
        FileHandle.standardOutput.write(Data(bytes))
    }
}

/// pvmigrate's own messages, through the log (`LogOutput`: on standard error unless the
/// command chose otherwise, "pvmigrate: …" as text), so they never mix with guest output.
enum Diagnostics {
    static func note(_ message: String, _ logger: Logger = Log.cli) {
        logger.info("\(message)")
    }

    /// A one-line warning: something works, but not as safely as it could.
    static func warn(_ message: String, _ logger: Logger = Log.cli) {
        logger.warning("\(message)")
    }

    /// What `send --insecure` and `listen --insecure` warn about (docs/security.md).
    static let insecureWarning = "--insecure: this migration is unauthenticated and unencrypted — anyone on the "
        + "network path can read the VM's memory, alter it, or pose as the peer; use it only on a trusted "
        + "network, or drop --insecure to use mutual TLS"

    /// A one-line error for people, as an ArgumentParser exit. Not a log record: the command's
    /// last word, always plain text on standard error (docs/operations.md "Logs").
    static func fail(_ error: any Error) -> any Error {
        FileHandle.standardError.write(Data("pvmigrate: error: \(error)\n".utf8))
        return ExitCode.failure
    }
}

/// Runs `handler` on SIGINT/SIGTERM (instead of dying) until cancelled.
///
/// The signal handler is installed with `sigaction` before `init` returns, so a signal that
/// arrives the moment after (a supervisor's SIGTERM right after "listening on …") is never
/// lost. (A Dispatch signal source was used before: libdispatch installs its own handler
/// asynchronously, and a SIGTERM in that window was ignored — seen as a listener that
/// outlived its SIGTERM on a loaded machine.) The handler only writes the signal's number
/// to a pipe, which is async-signal-safe; one thread reads the pipe and runs the handlers.
final class SignalWatcher: Sendable {
    private let token = UInt64.random(in: 0...UInt64.max)

    init(_ signals: Int32..., handler: @escaping @Sendable () -> Void) {
        SignalPipe.shared.add(token, signals, handler)
    }

    /// No more calls of the handler; the signals stay caught (a later SIGTERM does nothing).
    func cancel() { SignalPipe.shared.remove(token) }
}

/// The self-pipe behind `SignalWatcher`: a process-wide pipe, one reader thread.
private final class SignalPipe: @unchecked Sendable {
    static let shared = SignalPipe()
    /// Read end and write end; the write end is what the C handler uses (a global, no capture).
    /// Both ends live as long as the process (a static), so the raw numbers stay valid.
    private static let ends: (read: FileDescriptor, write: FileDescriptor) = {
        do {
            let ends = try FileDescriptor.pipe()
            try ends.write.setNonBlocking(true) // a full pipe drops, never blocks
            return ends
        } catch { fatalError("pvmigrate: pipe() for signal handling failed: \(error)") }
    }()
    fileprivate static let fds = (read: ends.read.rawValue, write: ends.write.rawValue)
    private let lock = NSLock()
    private var watchers: [UInt64: (signals: [Int32], handler: @Sendable () -> Void)] = [:] // guarded by `lock`

    private init() {
        let fd = Self.fds.read
        Thread.detachNewThread { [self] in
            var byte: UInt8 = 0
            while true {
                let n = retryingEINTR { read(fd, &byte, 1) }
                guard n == 1 else { return }
                let handlers = lock.withLock { watchers.values.filter { $0.signals.contains(Int32(byte)) }.map(\.handler) }
                handlers.forEach { $0() }
            }
        }
    }

    func add(_ token: UInt64, _ signals: [Int32], _ handler: @escaping @Sendable () -> Void) {
        lock.withLock { watchers[token] = (signals, handler) }
        for sig in signals {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                var byte = UInt8(truncatingIfNeeded: sig)
                _ = write(SignalPipe.fds.write, &byte, 1) // async-signal-safe
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = SA_RESTART
            sigaction(sig, &action, nil)
        }
    }

    func remove(_ token: UInt64) { lock.withLock { watchers[token] = nil } }
}
