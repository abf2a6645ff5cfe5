import ArgumentParser
import Control
import Core
import Foundation
import Migrate

/// `pvmigrate listen`: the receiving daemon. Every VM that arrives runs here under its own
/// name and control socket, so `pvmigrate ps / status / console` on this host show it.
struct Listen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Receive migrating VMs (the destination daemon).",
        discussion: """
            Accepts migrations from peers that present a certificate from this host's CA (mutual \
            TLS; `pvmigrate certs init` makes them) and, with --allow-source, whose certificate \
            carries one of the allowed names (docs/security.md). Each arriving VM keeps the name it had at the \
            source (with -2, -3, … appended when that name is taken here) and gets a control socket \
            in this host's runtime directory, so `pvmigrate ps`, `status` and `console` show it. \
            Several migrations may arrive at once, up to --max-incoming, and together with the \
            VMs already running here they may claim at most --max-memory of guest memory; a \
            migration over either limit is refused (the source keeps its VM and is told which \
            limit). Handshakes run concurrently: idle or slow connections cannot hold up a \
            migration; each must finish its TLS handshake and send its first frame within \
            --handshake-timeout, at most --max-pending at a time. A migration that makes no \
            progress for --progress-timeout is dropped and its memory freed.

            Logs one line per arrival (with its statistics) and per failed or rejected migration \
            on standard output. --config FILE reads the flags from a TOML file, one key per flag \
            (max-incoming = 4); flags on the command line win. --control PATH serves the \
            listener's job list (`pvmigrate job --listener PATH`). Under systemd (Type=notify, \
            contrib/systemd) it reports READY/RELOADING/STOPPING. SIGHUP: read the TLS directory \
            again (a new certificate or CA) for the next handshakes; running VMs and migrations \
            are not touched. SIGINT/SIGTERM: refuse new migrations, fence and fail those in \
            progress (their sources keep the VMs), stop the VMs received here (they run in this \
            process), remove their sockets, exit 0 (docs/protocol.md §3.6.8).
            """)

    @Option(name: .long, help: ArgumentHelp("Read the flags from this TOML file (one key per flag, e.g. max-incoming = 4); flags given here win.",
                                            valueName: "file"))
    var config: String?

    @Option(name: .long, help: ArgumentHelp("Serve the listener's control socket here: `jobs`, the arrivals in progress and recently ended (pvmigrate job --listener PATH).",
                                            valueName: "path"))
    var control: String?

    @Option(name: .long, help: "Where to listen, HOST:PORT (port 0: any free port, printed at start).",
            transform: Endpoint.listenArgument)
    var address = Endpoint(host: "0.0.0.0", port: 7500)

    @Option(name: .customLong("tls-dir"),
            help: "TLS directory with ca.pem, cert.pem, key.pem (default: $PVMIGRATE_TLS_DIR, else <runtime directory>/tls).")
    var tlsDirectory: String?

    @Flag(name: .long, help: "Accept plaintext connections (no TLS, no authentication): trusted networks only.")
    var insecure = false

    @Option(name: .customLong("allow-source"),
            help: ArgumentHelp("Accept VMs only from sources whose certificate carries this name (repeatable, "
                + "or a comma list; default: any certificate of the CA, with a warning).", valueName: "name"))
    var allowSource: [String] = []

    @Option(name: .customLong("max-memory"),
            help: ArgumentHelp("Guest memory that arriving VMs and the VMs received here and still running may claim in total, e.g. 16G (default: this host's physical memory).",
                               valueName: "size"))
    var maxMemory: MemorySize?

    @Option(name: .customLong("max-incoming"), help: ArgumentHelp("Migrations that may arrive at once; more are refused.", valueName: "n"))
    var maxIncoming = ReceiverOptions().maximumIncoming

    @Option(name: .customLong("max-pending"),
            help: ArgumentHelp("Connections that may be completing their TLS handshake (and, separately, waiting to send their first frame) at once; more are closed at once.", valueName: "n"))
    var maxPending = ListenerLimits().maxPendingConnections

    @Option(name: .customLong("handshake-timeout"),
            help: ArgumentHelp("Seconds a connection has for its TLS handshake, and then again for its first frame.", valueName: "seconds"))
    var handshakeTimeout = ListenerLimits().handshakeTimeout

    @Option(name: .customLong("progress-timeout"),
            help: ArgumentHelp("Drop a migration that receives less than 1 MiB and reaches no new phase in this many seconds.", valueName: "seconds"))
    var progressTimeout = ReceiverOptions().progressTimeout

    @Option(name: .customLong("commit-timeout"),
            help: ArgumentHelp("Seconds a prepared migration waits for the source's GO before it aborts (protocol.md §3.6.3).",
                               valueName: "seconds"))
    var commitTimeout = ReceiverOptions().goDeadline

    @Flag(name: .long, help: "Log JSON objects, one per line, instead of text.")
    var json = false

    @Option(name: .customLong("max-streams"), help: "Grant a source at most this many streams (protocol.md §3.2), 1–64.")
    var maxStreams = 64

    @Option(name: .long, help: "Capabilities to grant, comma-separated: zstd, delta, pv-state, or none (default: all).")
    var accept = "zstd,delta,pv-state"

    mutating func validate() throws {
        if insecure, tlsDirectory != nil { throw ValidationError("--insecure and --tls-dir exclude each other") }
        guard maxIncoming >= 1, maxPending >= 1 else { throw ValidationError("--max-incoming and --max-pending must be at least 1") }
        guard [handshakeTimeout, progressTimeout, commitTimeout].allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw ValidationError("--handshake-timeout, --progress-timeout and --commit-timeout must be positive numbers of seconds")
        }
        guard (1...64).contains(maxStreams) else { throw ValidationError("--max-streams must be 1–64") }
        _ = try Self.capabilities(accept)
        allowSource = allowSource.flatMap { $0.split(separator: ",").map(String.init) }
        if insecure, !allowSource.isEmpty {
            throw ValidationError("--insecure and --allow-source exclude each other: plaintext checks no names")
        }
        if let bad = allowSource.first(where: { !PeerNames.isValid($0) }) {
            throw ValidationError("--allow-source \"\(bad)\" is not a DNS name or an IP address")
        }
    }

    /// The TLS directory's files (at start and on every reload).
    func loadTLS(_ runtime: RuntimeDirectory) throws -> TLSMode {
        try ListenTLS.load(tlsDirectory ?? runtime.defaultTLSDirectory, explicit: tlsDirectory != nil,
                           allowedSources: allowSource.isEmpty ? nil : allowSource)
    }

    static func capabilities(_ list: String) throws -> Capabilities {
        var c: Capabilities = []
        for word in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            switch word {
            case "zstd": c.insert(.zstd)
            case "delta": c.insert(.delta)
            case "pv-state": c.insert(.pvState)
            case "none": continue
            default: throw ValidationError("--accept: unknown capability '\(word)' (zstd, delta, pv-state, none)")
            }
        }
        return c
    }

    func run() throws {
        let runtime: RuntimeDirectory
        do { runtime = try RuntimeDirectory(environment: ProcessInfo.processInfo.environment) } catch {
            throw Diagnostics.fail(error)
        }
        // Caught from here on: a SIGHUP before the listener exists must not end the process.
        let service = ListenService()
        let tls: TLSMode
        if insecure {
            Diagnostics.warn(Diagnostics.insecureWarning)
            tls = .insecure
        } else {
            let sources = allowSource.isEmpty ? nil : allowSource
            tls = try loadTLS(runtime)
            if sources == nil {
                Diagnostics.warn("accepting VMs from any host holding a certificate of this CA; "
                    + "name the hosts that may send here with --allow-source NAME")
            }
        }
        let log = ListenLog(json: json)
        let arrivals = Arrivals(runtime: runtime) { ListenReport.log($0, to: log) }
        var options = ReceiverOptions()
        options.maximumStreams = maxStreams
        options.capabilities = try Self.capabilities(accept)
        if let maxMemory { options.maximumMemory = maxMemory.bytes }
        options.maximumIncoming = maxIncoming
        options.listener.maxPendingConnections = maxPending
        options.listener.handshakeTimeout = handshakeTimeout
        options.progressTimeout = progressTimeout
        options.goDeadline = commitTimeout
        arrivals.configure(&options)
        // The commit decisions (protocol.md §3.6.4) outlive this process: a source that lost
        // the end of a migration asks for them with RESOLVE, also after a restart.
        do { options.outcomes = try OutcomeTable(path: runtime.path + "/outcomes") } catch { throw Diagnostics.fail(error) }
        options.log = { log.event("note", ["message": $0], text: $0) }
        let listener: MigrationListener
        do { listener = try MigrationListener(host: address.host, port: address.port, tls: tls, options: options) } catch {
            throw Diagnostics.fail(error)
        }
        let jobs: ListenerControl?
        do { jobs = try control.map { path in try ListenerControl(path: path) { listener.jobs } } } catch {
            listener.close()
            throw Diagnostics.fail(error)
        }
        let finished = DispatchSemaphore(value: 0)
        let signals = SignalWatcher(SIGINT, SIGTERM) { finished.signal() }
        service.onReload { [self] in
            guard !insecure else { return "plaintext (--insecure): no certificates to read again" }
            let directory = tlsDirectory ?? runtime.defaultTLSDirectory
            try listener.reloadTLS(.mutual(try TLSFiles(directory: directory,
                                                        peerNames: PeerNames(clients: allowSource.isEmpty ? nil : allowSource))))
            return "certificates read again from \(directory); the next handshakes use them"
        } log: { log.event("reload", ["result": $0], text: "reload: \($0)") }
        listener.serve(arrivals)
        let shown = Endpoint(host: address.host, port: listener.port)
        log.event("listening", ["address": "\(shown)", "tls": insecure ? "off (plaintext)" : "mutual",
                                "sources": allowSource.isEmpty ? "any" : allowSource.joined(separator: ","),
                                "runtime": runtime.path],
                  text: "listening on \(shown) (\(insecure ? "PLAINTEXT, no authentication" : "mutual TLS")); "
                      + "VMs that arrive are served in \(runtime.path)")
        log.event("limits", ["max_incoming": maxIncoming, "max_memory_bytes": options.maximumMemory,
                             "max_pending": maxPending, "handshake_timeout": handshakeTimeout,
                             "progress_timeout": progressTimeout, "commit_timeout": commitTimeout],
                  text: "limits: \(maxIncoming) migrations at once, \(options.maximumMemory >> 20) MiB of guest memory "
                      + "in total, \(maxPending) pending connections, \(Format.seconds(handshakeTimeout)) to handshake, "
                      + "\(Format.seconds(progressTimeout)) without progress, \(Format.seconds(commitTimeout)) for GO")
        service.ready(status: "listening on \(shown); \(jobs.map { "jobs at \($0.path)" } ?? "no --control socket")")
        finished.wait()
        signals.cancel()
        service.stopping()
        log.event("stopping", ["hosted": arrivals.current.count],
                  text: "stopping: no new migrations; failing those in progress; stopping the \(arrivals.current.count) "
                      + "VM(s) received here")
        let (fenced, settled) = listener.shutDown(timeout: 20)
        if fenced > 0 || !settled {
            log.event("note", ["message": "\(fenced) migration(s) in progress fenced; all ended: \(settled)"],
                      text: "\(fenced) migration(s) in progress fenced (their sources keep the VMs)"
                          + (settled ? "" : "; some did not end within 20 s"))
        }
        jobs?.close()
        if !arrivals.shutDown(timeout: 30) {
            log.event("note", ["message": "some VMs did not stop within 30 s"], text: "some VMs did not stop within 30 s")
        }
        log.event("stopped", [:], text: "stopped")
    }
}

/// The listener's TLS directory, with a one-line error that says how to make one when it is missing.
enum ListenTLS {
    static func load(_ directory: String, explicit: Bool, allowedSources: [String]?) throws -> TLSMode {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            let hint = explicit ? "" : " (the default: set PVMIGRATE_TLS_DIR or pass --tls-dir to use another)"
            throw Diagnostics.fail(ValidationError(
                "no TLS directory at \(directory)\(hint); create certificates with `pvmigrate certs init --dir DIR "
                    + "--hosts <this host>=<its address> <peers>` and copy DIR/<this host> there, or pass --insecure for plaintext"))
        }
        do { return .mutual(try TLSFiles(directory: directory, peerNames: PeerNames(clients: allowedSources))) } catch {
            throw Diagnostics.fail(error)
        }
    }
}

/// The daemon's log: text lines with a time stamp, or JSON objects; one line per event, on
/// standard output, written at once (not buffered) so a supervisor sees them as they happen.
final class ListenLog: Sendable {
    let json: Bool
    private let lock = Locked(())

    init(json: Bool) { self.json = json }

    func event(_ kind: String, _ fields: [String: any Sendable], text: String) {
        let line: String
        if json {
            var object: [String: Any] = fields
            object["event"] = kind
            object["time"] = Date().timeIntervalSince1970
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
            line = String(decoding: data, as: UTF8.self)
        } else {
            line = "\(Date().formatted(.iso8601)) \(text)"
        }
        lock.withLock { _ in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
    }
}

/// How `listen` logs what happens to arrivals (`Arrivals` hosts them): one event each.
enum ListenReport {
    static func log(_ event: Arrivals.Event, to log: ListenLog) {
        switch event {
        case let .failed(failure):
            let why = failure.description
            switch failure.kind {
            case .rejected: log.event("rejected", ["error": why], text: why)
            case .refused: log.event("refused", ["error": why], text: why)
            case .failed: log.event("failed", ["error": why], text: "migration failed: \(why)")
            }
            for note in failure.notes { log.event("note", ["message": note], text: "  \(note)") }
        case let .notHosted(vm, reason?):
            log.event("failed", fields(vm).merging(["error": reason]) { a, _ in a },
                      text: "VM \(vm.name) arrived \(summary(vm)) but cannot be hosted (\(reason)): stopped")
        case let .notHosted(vm, nil):
            log.event("stopped-on-arrival", fields(vm), text: "VM \(vm.name) arrived \(summary(vm)) while shutting down: stopped")
        case let .arrived(arrival):
            var fields = fields(arrival.vm)
            fields["name"] = arrival.name
            let renamed = arrival.renamed ? " (\"\(arrival.vm.name)\" is taken here)" : ""
            log.event("arrived", fields, text: "VM \(arrival.name) arrived\(renamed) \(summary(arrival.vm))")
            for note in arrival.vm.notes {
                log.event("note", ["name": arrival.name, "message": note], text: "VM \(arrival.name): \(note)")
            }
        case let .gone(arrival, end, migratedTo):
            let how: String
            switch end {
            case let .exited(exit): how = "ended here: \(exit)"
            case .migrated: how = "migrated away to \(migratedTo ?? "another host")"
            }
            log.event("ended", ["name": arrival.name, "how": how], text: "VM \(arrival.name) is gone: \(how)")
        }
    }

    private static func fields(_ vm: ReceivedVM) -> [String: any Sendable] {
        [
            "source_name": vm.name, "from": vm.peer.description, "memory_bytes": vm.machine.memory.size,
            "seconds": vm.stats.seconds, "pages": vm.stats.pagesApplied, "streams": vm.stats.streams,
            "cpu_s": vm.stats.cpuSeconds, "cpu_s_per_gib": vm.stats.cpuSecondsPerGiB,
        ]
    }

    private static func summary(_ vm: ReceivedVM) -> String {
        "from \(vm.peer): \(vm.machine.memory.size >> 20) MiB in \(Format.seconds(vm.stats.seconds)), "
            + "\(vm.stats.pagesApplied) pages over \(vm.stats.streams) stream\(vm.stats.streams == 1 ? "" : "s"), "
            + String(format: "%.2f CPU-s (%.2f per GiB)", vm.stats.cpuSeconds, vm.stats.cpuSecondsPerGiB)
    }
}
