import Config
import Control
import Core
import Foundation
import Migrate
import Operations

/// What `listen` does on SIGHUP (docs/operations.md "Reload"): with `--config`, read the file
/// again with the command line (flags on the command line still win), then read the TLS
/// directory again and apply what can change while migrations run — the allowed sources,
/// `--max-incoming`, `--max-memory` and `--log-level`. Nothing changes unless everything
/// read and checked: a file or TLS directory that fails leaves every setting as it was. A
/// changed key that needs a restart is named in the reload's log line and keeps its value.
struct ListenReload: Sendable {
    /// The settings in use: the start's, then each successful reload's live part.
    private let current: Locked<Listen>
    private let listener: MigrationListener
    private let runtime: RuntimeDirectory
    /// The arguments after `pvmigrate` (the command line as given, `--config` unexpanded).
    private let commandLine: [String]

    init(_ settings: Listen, listener: MigrationListener, runtime: RuntimeDirectory,
         commandLine: [String] = Array(CommandLine.arguments.dropFirst())) {
        current = Locked(settings)
        self.listener = listener
        self.runtime = runtime
        self.commandLine = commandLine
    }

    /// Reloads; returns the log line, or throws why nothing changed.
    func callAsFunction() throws -> String {
        let old = current.value
        var next = old
        if old.config != nil { next = try Self.reread(commandLine) }
        var done: [String] = []
        if let path = old.config { done.append("\(path) read again") }
        if next.insecure {
            if !old.insecure || old.config == nil { done.append("plaintext (--insecure): no certificates to read again") }
        } else if !old.insecure {
            let directory = old.tlsDirectory ?? runtime.defaultTLSDirectory
            try listener.reloadTLS(.mutual(try TLSFiles(directory: directory,
                                                        peerNames: PeerNames(clients: next.allowSource.isEmpty ? nil : next.allowSource))))
            done.append("certificates read again from \(directory); the next handshakes use them")
        }
        var live = old
        live.allowSource = old.insecure ? [] : next.allowSource
        live.maxIncoming = next.maxIncoming
        live.maxMemory = next.maxMemory
        live.logging.level = next.logging.level
        let applied = Self.liveChanges(from: old, to: live)
        if !applied.isEmpty {
            listener.setLimits(maximumIncoming: live.maxIncoming, maximumMemory: live.maxMemory?.bytes ?? ReceiverOptions().maximumMemory)
            LogOutput.shared.configure { $0.level = live.logging.level }
            done.append("now " + applied.joined(separator: ", "))
        }
        let wanted = Self.restartOnly(next)
        let restart = Self.restartOnly(old).filter { key, value in wanted[key] != value }.keys.sorted()
        if !restart.isEmpty { done.append("changed but kept until a restart: " + restart.joined(separator: ", ")) }
        current.withLock { $0 = live }
        return done.joined(separator: "; ")
    }

    /// `listen`'s settings from the command line and its `--config` file, parsed and checked
    /// as at the start.
    static func reread(_ commandLine: [String]) throws -> Listen {
        let expanded = try ListenConfig.expand(commandLine) { entry in
            do { _ = try Listen.parse(entry.arguments) } catch { throw ConfigValueError(Listen.message(for: error)) }
        }
        do { return try Listen.parse(Array(expanded.dropFirst())) } catch {
            throw ConfigError(Listen.message(for: error))
        }
    }

    /// The live settings that differ, as `key value` (`key any` for an empty source list).
    static func liveChanges(from old: Listen, to new: Listen) -> [String] {
        var changes: [String] = []
        if old.allowSource != new.allowSource {
            changes.append("allow-source " + (new.allowSource.isEmpty ? "any" : new.allowSource.joined(separator: ",")))
        }
        if old.maxIncoming != new.maxIncoming { changes.append("max-incoming \(new.maxIncoming)") }
        if old.maxMemory?.bytes != new.maxMemory?.bytes {
            changes.append("max-memory " + (new.maxMemory.map { "\($0)" } ?? "this host's memory"))
        }
        if old.logging.level != new.logging.level { changes.append("log-level \(new.logging.level)") }
        return changes
    }

    /// The settings a reload cannot change, by key (the config file's names).
    static func restartOnly(_ l: Listen) -> [String: String] {
        ["address": "\(l.address)", "tls-dir": l.tlsDirectory ?? "", "insecure": "\(l.insecure)",
         "max-pending": "\(l.maxPending)", "handshake-timeout": "\(l.handshakeTimeout)",
         "progress-timeout": "\(l.progressTimeout)", "commit-timeout": "\(l.commitTimeout)",
         "max-streams": "\(l.maxStreams)", "accept": l.accept, "net-bridge": l.netBridge ?? "", "net-poll-us": l.netPollMicroseconds.map { "\($0)" } ?? "",
         "control": l.control ?? "", "metrics": l.metrics.map { "\($0)" } ?? "",
         "log-format": "\(l.json ? .json : l.logging.format)"]
    }
}
