import ArgumentParser
import Control
import Core
import Foundation
import Logging
import Migrate
import Net
import Operations

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
            on standard output, as text or, with --log-format json, one JSON object per line \
            (docs/operations.md). --config FILE reads the flags from a TOML file, one key per flag \
            (max-incoming = 4); flags on the command line win. --control PATH serves the \
            listener's job list (`pvmigrate job --listener PATH`). Under systemd (Type=notify, \
            contrib/systemd) it reports READY/RELOADING/STOPPING. SIGHUP: read the TLS directory \
            again (a new certificate or CA) for the next handshakes and, with --config, the file: \
            allow-source, max-incoming, max-memory and log-level change at once, other keys need a \
            restart; running VMs and migrations are not touched. --net-bridge BR: an arriving VM with a PV network device gets a new \
            TAP on bridge BR (made when the migration starts, used once the guest runs here; the \
            guest then announces itself with a gratuitous ARP, docs/protocol.md §5.8); without \
            it such a VM is refused and keeps running at its source. SIGINT/SIGTERM: refuse new migrations, fence and fail those in \
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

    @OptionGroup var logging: LogOptions

    @Option(name: .long, help: ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics (docs/operations.md); "
                + "bind a loopback or management address, e.g. 127.0.0.1:9750 (default: no endpoint).", valueName: "host:port"),
            transform: Endpoint.listenArgument)
    var metrics: Endpoint?

    @Flag(name: .long, help: ArgumentHelp("The same as --log-format json (kept for older scripts).", visibility: .hidden))
    var json = false

    @Option(name: .customLong("max-streams"), help: "Grant a source at most this many streams (protocol.md §3.2), 1–64.")
    var maxStreams = 64

    @Option(name: .long, help: "Capabilities to grant, comma-separated: zstd, delta, pv-state, ping, commit-work, balloon-map, or none (default: all).")
    var accept = "zstd,delta,pv-state,ping,commit-work,balloon-map"

    @Option(name: .customLong("net-bridge"),
            help: ArgumentHelp("Give each arriving VM that has a PV network device a new TAP on this Linux bridge "
                + "(needs /dev/net/tun and CAP_NET_ADMIN); without it such VMs are refused while they still run at the source.",
                               valueName: "bridge"))
    var netBridge: String?

    @Option(name: .customLong("net-poll-us"),
            help: ArgumentHelp("With --net-bridge: the most an arriving VM's vCPU thread busy-polls its TAP whenever the guest sleeps "
                + "(as `run --net …,poll-us=N`: adapts to the traffic, 0 while the NIC is quiet; default 2500, 0 never).", valueName: "n"))
    var netPollMicroseconds: Int?

    mutating func validate() throws {
        if let netBridge {
            do { try TapDevice.check(bridge: netBridge) } catch { throw ValidationError("--net-bridge: \(error)") }
        }
        if insecure, tlsDirectory != nil { throw ValidationError("--insecure and --tls-dir exclude each other") }
        guard maxIncoming >= 1, maxPending >= 1 else { throw ValidationError("--max-incoming and --max-pending must be at least 1") }
        guard [handshakeTimeout, progressTimeout, commitTimeout].allSatisfy({ $0 > 0 && $0.isFinite }) else {
            throw ValidationError("--handshake-timeout, --progress-timeout and --commit-timeout must be positive numbers of seconds")
        }
        guard (1...64).contains(maxStreams) else { throw ValidationError("--max-streams must be 1–64") }
        if let netPollMicroseconds {
            guard (0...NetSpec.maximumPollMicroseconds).contains(netPollMicroseconds) else {
                throw ValidationError("--net-poll-us must be 0–\(NetSpec.maximumPollMicroseconds)")
            }
            guard netBridge != nil else { throw ValidationError("--net-poll-us needs --net-bridge") }
        }
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

    /// Starts the /metrics responder; the gauges of the listener's state are set at each scrape.
    static func serveMetrics(_ at: Endpoint, listener: MigrationListener, arrivals: Arrivals) throws -> MetricsEndpoint {
        let endpoint: MetricsEndpoint
        do {
            endpoint = try MetricsEndpoint(host: at.host, port: at.port) {
                MigrationMetrics.listenerState(migrationsInProgress: listener.migrationsInProgress,
                                               vmsHosted: arrivals.current.count)
                return MetricsExport.shared.exposition()
            }
        } catch { throw Diagnostics.fail(error) }
        let shown = Endpoint(host: at.host, port: endpoint.port)
        ListenLog.event("metrics", ["address": "\(shown)"], text: "metrics at http://\(shown)/metrics")
        return endpoint
    }

    static func capabilities(_ list: String) throws -> Capabilities {
        var c: Capabilities = []
        for word in list.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
            switch word {
            case "zstd": c.insert(.zstd)
            case "delta": c.insert(.delta)
            case "pv-state": c.insert(.pvState)
            case "ping": c.insert(.ping)
            case "commit-work": c.insert(.commitWork)
            case "balloon-map": c.insert(.balloonMap)
            case "none": continue
            default: throw ValidationError("--accept: unknown capability '\(word)' (zstd, delta, pv-state, ping, commit-work, balloon-map, none)")
            }
        }
        return c
    }

    func run() throws {
        var logging = logging
        if json { logging.format = .json }
        logging.apply(stream: .standardOutput, daemon: true)
        let runtime: RuntimeDirectory
        do { runtime = try RuntimeDirectory(environment: ProcessInfo.processInfo.environment) } catch {
            throw Diagnostics.fail(error)
        }
        // Caught from here on: a SIGHUP before the listener exists must not end the process.
        let service = ListenService()
        let tls: TLSMode
        if insecure {
            Diagnostics.warn(Diagnostics.insecureWarning, Log.listen)
            tls = .insecure
        } else {
            let sources = allowSource.isEmpty ? nil : allowSource
            tls = try loadTLS(runtime)
            if sources == nil {
                Diagnostics.warn("accepting VMs from any host holding a certificate of this CA; "
                    + "name the hosts that may send here with --allow-source NAME", Log.listen)
            }
        }
        if metrics != nil { _ = MetricsExport.shared } // before anything is counted
        let arrivals = Arrivals(runtime: runtime) { event in
            ListenReport.log(event)
            MigrationMetrics.record(event)
        }
        var options = ReceiverOptions()
        options.maximumStreams = maxStreams
        options.capabilities = try Self.capabilities(accept)
        if let maxMemory { options.maximumMemory = maxMemory.bytes }
        options.maximumIncoming = maxIncoming
        options.listener.maxPendingConnections = maxPending
        options.listener.handshakeTimeout = handshakeTimeout
        options.progressTimeout = progressTimeout
        options.goDeadline = commitTimeout
        let poll = netPollMicroseconds ?? NetSpec.defaultPollMicroseconds
        options.attachNetwork = netBridge.map { NetworkAttacher.bridge($0, pollMicroseconds: poll) }
        arrivals.configure(&options)
        // The commit decisions (protocol.md §3.6.4) outlive this process: a source that lost
        // the end of a migration asks for them with RESOLVE, also after a restart.
        do { options.outcomes = try OutcomeTable(path: runtime.path + "/outcomes") } catch { throw Diagnostics.fail(error) }
        options.log = { ListenReport.engineNote($0) }
        let listener: MigrationListener
        do { listener = try MigrationListener(host: address.host, port: address.port, tls: tls, options: options) } catch {
            throw Diagnostics.fail(error)
        }
        let jobs: ListenerControl?
        do { jobs = try control.map { path in try ListenerControl(path: path) { listener.jobs } } } catch {
            listener.close()
            throw Diagnostics.fail(error)
        }
        let endpoint = try metrics.map { try Self.serveMetrics($0, listener: listener, arrivals: arrivals) }
        let finished = DispatchSemaphore(value: 0)
        let signals = SignalWatcher(SIGINT, SIGTERM) { finished.signal() }
        var settings = self
        settings.logging = logging
        let reload = ListenReload(settings, listener: listener, runtime: runtime)
        service.onReload { try reload() } log: { ListenLog.event("reload", ["result": "\($0)"], text: "reload: \($0)") }
        listener.serve(arrivals)
        let shown = Endpoint(host: address.host, port: listener.port)
        ListenLog.event("listening", ["address": "\(shown)", "tls": insecure ? "off" : "mutual",
                                      "sources": "\(allowSource.isEmpty ? "any" : allowSource.joined(separator: ","))",
                                      "runtime": "\(runtime.path)"],
                  text: "listening on \(shown) (\(insecure ? "PLAINTEXT, no authentication" : "mutual TLS")); "
                      + "VMs that arrive are served in \(runtime.path)")
        ListenLog.event("limits", ["max_incoming": .stringConvertible(maxIncoming),
                                   "max_memory_bytes": .stringConvertible(options.maximumMemory),
                                   "max_pending": .stringConvertible(maxPending),
                                   "handshake_timeout": .stringConvertible(handshakeTimeout),
                                   "progress_timeout": .stringConvertible(progressTimeout),
                                   "commit_timeout": .stringConvertible(commitTimeout)],
                  text: "limits: \(maxIncoming) migrations at once, \(options.maximumMemory >> 20) MiB of guest memory "
                      + "in total, \(maxPending) pending connections, \(Format.seconds(handshakeTimeout)) to handshake, "
                      + "\(Format.seconds(progressTimeout)) without progress, \(Format.seconds(commitTimeout)) for GO")
        service.ready(status: "listening on \(shown); \(jobs.map { "jobs at \($0.path)" } ?? "no --control socket")")
        finished.wait()
        signals.cancel()
        service.stopping()
        ListenLog.event("stopping", ["hosted": "\(arrivals.current.count)"],
                        text: "stopping: no new migrations; failing those in progress; stopping the \(arrivals.current.count) "
                            + "VM(s) received here")
        endpoint?.close()
        let (fenced, settled) = listener.shutDown(timeout: 20)
        if fenced > 0 || !settled {
            ListenLog.event("note", ["fenced": "\(fenced)", "settled": "\(settled)"],
                            text: "\(fenced) migration(s) in progress fenced (their sources keep the VMs)"
                                + (settled ? "" : "; some did not end within 20 s"),
                            level: settled ? .info : .warning)
        }
        jobs?.close()
        if !arrivals.shutDown(timeout: 30) {
            ListenLog.event("note", [:], text: "some VMs did not stop within 30 s", level: .warning)
        }
        ListenLog.event("stopped", [:], text: "stopped")
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

/// The daemon's log: one record per event through swift-log (`LogOutput`), on standard output
/// so a supervisor sees them as they happen; `event` names what happened (docs/operations.md
/// "Logs" lists the events and their keys).
enum ListenLog {
    static func event(_ kind: String, _ fields: Logger.Metadata, text: String, to logger: Logger = Log.listen,
                      level: Logger.Level = .info) {
        var metadata = fields
        metadata["event"] = "\(kind)"
        logger.log(level: level, "\(text)", metadata: metadata)
    }
}

/// How `listen` logs what happens to arrivals (`Arrivals` hosts them): one event each, on the
/// logger of the subsystem it concerns, with the keys of docs/operations.md "Logs".
enum ListenReport {
    static func log(_ event: Arrivals.Event) {
        switch event {
        case let .failed(failure):
            let why = failure.description
            var keys: Logger.Metadata = ["error": "\(why)"]
            if let peer = failure.peer { keys["peer"] = "\(peer)" }
            if let id = failure.migrationID { keys["migration_id"] = "\(OutcomeTable.hex(id))" }
            if let state = failure.state { keys["state"] = "\(state)" }
            switch failure.kind {
            case .rejected: ListenLog.event("rejected", keys, text: why, to: Log.transport, level: .warning)
            case .refused: ListenLog.event("refused", keys, text: why, to: Log.receiver, level: .warning)
            case .failed: ListenLog.event("failed", keys, text: "migration failed: \(why)", to: Log.receiver, level: .error)
            }
            for note in failure.notes { ListenLog.event("note", keys.filter { $0.key != "error" }, text: "  \(note)", to: Log.vm) }
        case let .notHosted(vm, reason?):
            ListenLog.event("failed", fields(vm).merging(["error": "\(reason)"]) { a, _ in a },
                            text: "VM \(vm.name) arrived \(summary(vm)) but cannot be hosted (\(reason)): stopped",
                            to: Log.receiver, level: .error)
        case let .notHosted(vm, nil):
            ListenLog.event("stopped-on-arrival", fields(vm),
                            text: "VM \(vm.name) arrived \(summary(vm)) while shutting down: stopped", to: Log.receiver)
        case let .arrived(arrival):
            var keys = fields(arrival.vm)
            keys["vm"] = "\(arrival.name)"
            let renamed = arrival.renamed ? " (\"\(arrival.vm.name)\" is taken here)" : ""
            ListenLog.event("arrived", keys, text: "VM \(arrival.name) arrived\(renamed) \(summary(arrival.vm))", to: Log.receiver)
            for note in arrival.vm.notes {
                ListenLog.event("note", ["vm": "\(arrival.name)"], text: "VM \(arrival.name): \(note)", to: Log.vm)
            }
        case let .gone(arrival, end, migratedTo):
            let how: String
            switch end {
            case let .exited(exit): how = "ended here: \(exit)"
            case .migrated: how = "migrated away to \(migratedTo ?? "another host")"
            }
            ListenLog.event("ended", ["vm": "\(arrival.name)", "how": "\(how)"], text: "VM \(arrival.name) is gone: \(how)", to: Log.vm)
        }
    }

    /// What the engine says that belongs to no arrival: RESOLVE answers (the commit
    /// protocol's) and what arrived machines log later.
    static func engineNote(_ message: String) {
        let logger = message.hasPrefix("RESOLVE ") ? Log.commit : Log.vm
        ListenLog.event("note", [:], text: message, to: logger)
    }

    private static func fields(_ vm: ReceivedVM) -> Logger.Metadata {
        var fields: Logger.Metadata = [
            "vm": "\(vm.name)", "source_name": "\(vm.name)", "peer": "\(vm.peer)",
            "migration_id": "\(OutcomeTable.hex(vm.migrationID))",
            "memory_bytes": .stringConvertible(vm.machine.memory.size), "seconds": .stringConvertible(vm.stats.seconds),
            "pages": .stringConvertible(vm.stats.pagesApplied), "streams": .stringConvertible(vm.stats.streams),
            "cpu_s": .stringConvertible(vm.stats.cpuSeconds), "cpu_s_per_gib": .stringConvertible(vm.stats.cpuSecondsPerGiB),
        ]
        // This host's share of the pause (issue 11): its own work, and of it the durable
        // "started" record (protocol.md §3.6.4, an fsync).
        if let phases = vm.stats.phases {
            fields["pause_work_s"] = .stringConvertible(phases.work)
            fields["record_s"] = .stringConvertible(phases.record)
        }
        return fields
    }

    private static func summary(_ vm: ReceivedVM) -> String {
        "from \(vm.peer): \(vm.machine.memory.size >> 20) MiB in \(Format.seconds(vm.stats.seconds)), "
            + "\(vm.stats.pagesApplied) pages over \(vm.stats.streams) stream\(vm.stats.streams == 1 ? "" : "s"), "
            + String(format: "%.2f CPU-s (%.2f per GiB)", vm.stats.cpuSeconds, vm.stats.cpuSecondsPerGiB)
    }
}
