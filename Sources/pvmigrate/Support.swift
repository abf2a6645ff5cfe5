import ArgumentParser
import Core
import Foundation

/// Console output straight to standard output, line by line.
final class StandardOutputConsole: ConsoleSink, Sendable {
    func console(_ bytes: [UInt8]) {
        FileHandle.standardOutput.write(Data(bytes))
    }
}

/// pvmigrate's own messages: on standard error, prefixed, so they never mix with guest output.
enum Diagnostics {
    static func note(_ message: String) {
        FileHandle.standardError.write(Data("pvmigrate: \(message)\n".utf8))
    }

    /// A one-line warning: something works, but not as safely as it could.
    static func warn(_ message: String) {
        FileHandle.standardError.write(Data("pvmigrate: warning: \(message)\n".utf8))
    }

    /// What `send --insecure` and `listen --insecure` warn about (docs/security.md).
    static let insecureWarning = "--insecure: this migration is unauthenticated and unencrypted — anyone on the "
        + "network path can read the VM's memory, alter it, or pose as the peer; use it only on a trusted "
        + "network, or drop --insecure to use mutual TLS"

    /// A one-line error for people, as an ArgumentParser exit.
    static func fail(_ error: any Error) -> any Error {
        FileHandle.standardError.write(Data("pvmigrate: error: \(error)\n".utf8))
        return ExitCode.failure
    }
}

/// Runs `handler` on SIGINT/SIGTERM (instead of dying) until cancelled.
final class SignalWatcher {
    private let sources: [any DispatchSourceSignal]

    init(_ signals: Int32..., handler: @escaping @Sendable () -> Void) {
        sources = signals.map { sig in
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler(handler: handler)
            source.resume()
            return source
        }
    }

    func cancel() { sources.forEach { $0.cancel() } }
}
