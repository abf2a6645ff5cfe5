import ArgumentParser
import Control
import Core
import Foundation
import Logging
import Migrate
import Operations

/// `pvmigrate send HOST:PORT VM`: live-migrate a named VM to a `pvmigrate listen` peer.
struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Live-migrate a named VM to another host running `pvmigrate listen`.",
        discussion: """
            The VM's own process does the migration (pre-copy over mutual TLS, docs/protocol.md §3);
            this command asks it to, shows the progress and prints the statistics. On success the
            VM runs at the destination and is gone here; on a failure (or Ctrl-C, which cancels)
            before the hand-over it keeps running here. If the connection fails during the
            hand-over (docs/protocol.md §3.6), the VM stays PAUSED here, `pvmigrate status` shows
            it "unresolved", and pvmigrate asks the destination what it did and settles it
            (`pvmigrate recover` asks on demand).
            TLS: the directory holds ca.pem, cert.pem and key.pem (`pvmigrate certs init`); by
            default $PVMIGRATE_TLS_DIR, else <runtime directory>/tls. The destination's certificate
            must name the host dialed (DNS name or IP address), or --peer-name when given
            (docs/security.md).
            """)

    @Argument(help: "The destination, HOST:PORT (e.g. 10.0.0.2:7070, [::1]:7070).", transform: Endpoint.argument)
    var destination: Endpoint

    @OptionGroup var target: VMArgument

    @Option(name: .customLong("downtime-ms"), help: "Target pause: stop-and-copy once the rest fits in this many ms.")
    var downtimeMilliseconds: Double = 50

    @Option(name: .long, help: "Cap on the migration's bytes per second, e.g. 500M or 1G (K/M/G: binary units; default: no cap).",
            transform: Send.byteRate)
    var bandwidth: ByteRate?

    @Option(name: .long, help: "Parallel TCP/TLS streams, 1–64 (default: one per core).")
    var streams: Int?

    @Option(name: .long, help: "zstd level 1–22 for page batches, or off (default: 1).")
    var compression: String?

    @Flag(name: .customLong("always-compress"),
          help: "Compress every batch, even while the link carries bytes faster than zstd saves them (default: adaptive).")
    var alwaysCompress = false

    @Flag(name: .customLong("no-delta"), help: "Do not send re-sent pages as XOR deltas.")
    var noDelta = false

    @Option(name: .customLong("dirty-source"), help: "Dirty-page source: pv-verified, kvm, pv or hybrid (default: pv-verified; protocol.md §3.5.1).")
    var dirtySource: DirtySourceMode?

    @Option(name: .customLong("tls-dir"), help: "The TLS directory (default: $PVMIGRATE_TLS_DIR, else <runtime>/tls).")
    var tlsDirectory: String?

    @Option(name: .customLong("peer-name"),
            help: "The name the destination's certificate must carry (default: the host dialed).")
    var peerName: String?

    @Flag(name: .long, help: "Plain TCP without TLS (the listener must be --insecure too).")
    var insecure = false

    @Option(name: .customLong("max-time"), help: "Give up after this many seconds if not converged (default: 300).")
    var maxTime: Double?

    @Flag(name: .long, help: "Print the statistics as JSON (the engine's MigrationStats).")
    var json = false

    @OptionGroup var logging: LogOptions

    static func byteRate(_ text: String) throws -> ByteRate {
        guard let rate = ByteRate(argument: text) else {
            throw ValidationError("expected bytes per second with an optional K, M or G suffix, e.g. 500M")
        }
        return rate
    }

    mutating func validate() throws {
        if insecure, tlsDirectory != nil {
            throw ValidationError("--insecure and --tls-dir exclude each other: choose plain TCP or a TLS directory")
        }
        if insecure, peerName != nil {
            throw ValidationError("--insecure and --peer-name exclude each other: plaintext checks no names")
        }
        if let compression, compression != "off", Int32(compression) == nil {
            throw ValidationError("--compression must be a zstd level 1–22, or off")
        }
        // The ranges: MigrationOptions.validate(), the one check the VM's process runs too.
        do { try request(security: insecure ? .insecure : .tlsDefault).validate() } catch {
            throw ValidationError(error.message)
        }
    }

    /// The `migrate` request these options make (`validate()` checked them).
    private func request(security: MigrateRequest.Security) -> MigrateRequest {
        var o = MigrationOptions()
        o.downtimeTarget = downtimeMilliseconds / 1000
        o.bandwidthLimit = bandwidth?.bytesPerSecond
        if let streams { o.streams = streams }
        if let compression { o.compressionLevel = compression == "off" ? nil : Int32(compression) }
        o.adaptiveCompression = !alwaysCompress
        o.delta = !noDelta
        if let dirtySource { o.dirtySource = dirtySource }
        if let maxTime { o.maxTime = maxTime }
        return MigrateRequest(destination: destination, security: security, peerName: peerName, options: o)
    }

    func run() throws {
        logging.apply(stream: .standardError, daemon: false)
        let runtime = try ControlCommand.runtime()
        let client = try target.connect()
        let vm = target.vm
        let log = Log.send.with(["vm": "\(vm)", "peer": "\(destination)"])
        // Once the VM is known to exist: the migration is about to start.
        if insecure { Diagnostics.warn(Diagnostics.insecureWarning, log) }
        log.debug("migration started", metadata: ["event": "started"])
        // Ctrl-C cancels the migration (the VM stays here) instead of leaving it running unseen.
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            Diagnostics.note("cancelling the migration…", log)
            if let canceller = try? ControlClient(name: vm, runtime: runtime) { _ = try? canceller.request(.cancel) }
        }
        defer { interrupt.cancel() }
        let progress = ProgressLine()
        let result: JSONValue
        do {
            // The VM's process may have another working directory: send an absolute path.
            let security: MigrateRequest.Security = insecure ? .insecure
                : .tls(directory: absolute(tlsDirectory ?? runtime.defaultTLSDirectory))
            result = try client.request(.migrate(request(security: security))) { event in
                guard case let .round(round) = event else { return }
                progress.show(round)
            }
        } catch let error as ControlError {
            progress.finish()
            // The command's last word: plain text, whatever the log format (Diagnostics.fail).
            FileHandle.standardError.write(Data("pvmigrate: error: \(error)\n".utf8))
            log.debug("migration failed", metadata: ["event": "failed", "error": "\(error)"])
            // Say where the VM is: a failed migration leaves it here, unless it was stopped meanwhile.
            if let again = try? ControlClient(name: vm, runtime: runtime), (try? again.request(.status)) != nil {
                Diagnostics.note("the VM still runs here (pvmigrate status \(vm))", log)
            } else if error.kind == .refused {
                Diagnostics.note("VM \(vm) no longer runs here: it was stopped while migrating", log)
            }
            throw ExitCode.failure
        }
        progress.finish()
        guard let stats = try? result.decode(MigrationStats.self) else {
            throw Diagnostics.fail(ControlError(.protocolViolation,
                "VM \(vm) migrated, but answered with statistics this pvmigrate cannot read: \(result.jsonText)"))
        }
        log.debug("migration finished", metadata: ["event": "migrated", "seconds": .stringConvertible(stats.totalSeconds),
                                                   "downtime_seconds": .stringConvertible(stats.downtimeSeconds),
                                                   "wire_bytes": .stringConvertible(stats.wireBytes),
                                                   "rounds": .stringConvertible(stats.rounds.count)])
        if json {
            print(try JSONText.pretty(stats))
        } else {
            print(Self.summary(stats, vm: vm, destination: destination))
        }
    }

    private func absolute(_ path: String) -> String {
        URL(fileURLWithPath: path).standardizedFileURL.path
    }

    static func summary(_ s: MigrationStats, vm: String, destination: Endpoint) -> String {
        let rounds = s.rounds.count
        return """
            migrated VM \(vm) to \(destination); it runs there now
              total time    \(Format.seconds(s.totalSeconds))
              downtime      \(Format.seconds(s.downtimeSeconds)) (predicted \(Format.seconds(s.predictedDowntimeSeconds)) for \
            \(Format.count(s.predictedFinalPages)) pages, of which \(Format.seconds(s.predictedFixedSeconds)) fixed; \
            target \(Format.seconds(s.downtimeTargetSeconds)))
              transferred   \(Format.bytes(Double(s.wireBytes))) on the wire for \(Format.memory(s.memoryBytes)) of memory, \
            \(s.streams) stream\(s.streams == 1 ? "" : "s")
              rounds        \(rounds) (the last one, paused: \(Format.count(s.finalPages)) pages)\(s.throttled ? "; the guest was throttled" : "")
              pages         \(Format.count(s.pagesSent)) sent: \(Format.count(s.zeroPages)) zero, \(Format.count(s.rawPages)) raw, \
            \(Format.count(s.deltaPages)) delta
              delta hits    \(String(format: "%.1f%%", s.deltaHitRate * 100))
              cost          \(String(format: "%.2f", s.cpuSeconds)) CPU-s in the migration threads here, \
            \(String(format: "%.2f", s.cpuSecondsPerGiB)) CPU-s per GiB moved; \(Format.rate(s.wireBytesPerSecond)) on the wire
              dirty source  \(s.dirtySource.rawValue); \(s.verification.summary)
            """ + (s.verification.warning.map { "\nwarning: " + $0 } ?? "")
    }
}

/// Migration progress on standard error: one live line on a terminal, one line per round
/// otherwise.
final class ProgressLine {
    private let live = isatty(STDERR_FILENO) == 1
    private var shown = false

    func show(_ r: RoundStats) {
        let pagesPerSecond = r.seconds > 0 ? Double(r.pages) / r.seconds : 0
        let eta: String
        if r.dirtyPages == 0 {
            eta = "0 s"
        } else if pagesPerSecond > r.dirtyRate {
            eta = Format.seconds(Double(r.dirtyPages) / (pagesPerSecond - r.dirtyRate))
        } else {
            eta = "not converging yet"
        }
        let text = "round \(r.round): \(Format.count(r.dirtyPages)) pages left, \(Format.rate(r.bandwidth)), "
            + "dirtying \(Format.count(Int(r.dirtyRate.isFinite ? r.dirtyRate : 0))) pages/s, "
            + "predicted pause \(Format.seconds(r.expectedDowntime)), ETA \(eta)"
        if live {
            FileHandle.standardError.write(Data("\r\u{1b}[K\(text)".utf8))
            shown = true
        } else {
            FileHandle.standardError.write(Data("pvmigrate: \(text)\n".utf8))
        }
    }

    func finish() {
        if shown { FileHandle.standardError.write(Data("\n".utf8)) }
        shown = false
    }
}
