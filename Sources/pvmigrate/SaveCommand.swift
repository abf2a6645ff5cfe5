import ArgumentParser
import Control
import Core
import Foundation
import Migrate

/// `pvmigrate save VM FILE`: save a named VM to a snapshot file (docs/protocol.md §6).
struct Save: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Save a named VM to a snapshot file (a migration to a file).",
        discussion: """
            The VM's own process writes the file (docs/protocol.md §6) with the migration engine:
            the same page encodings, state and digests as `send`. Without --live the guest is
            paused while its memory is written; with --live, pre-copy rounds go to the file while
            it runs and the pause covers only the last dirty pages (the same downtime target as
            `send`). The VM keeps running afterwards unless --stop. The file is written under a
            temporary name (.FILE.partial-PID), fsync'ed and renamed: an interrupted save leaves
            no FILE. Files are created 0600 (they hold guest memory).
            Layouts: mapped (default; one slot per guest page, pages without data are holes;
            `restore` maps it, in milliseconds whatever the size) or compressed (zstd page
            batches; smaller; `restore` reads and checks it).
            """)

    @OptionGroup var target: VMArgument

    @Argument(help: "The snapshot file to write.")
    var file: String

    @Flag(name: .long, help: "Pre-copy while the guest runs, then a short pause (as `send`).")
    var live = false

    @Option(name: .long, help: "mapped (default) or compressed, or a zstd level 1–22 for the compressed layout.")
    var compression: String?

    @Flag(name: .long, help: "Stop the VM once the file is complete.")
    var stop = false

    @Option(name: .customLong("downtime-ms"), help: "With --live: the target pause, in ms (default: 50).")
    var downtimeMilliseconds: Double = 50

    @Option(name: .customLong("max-time"), help: "With --live: give up after this many seconds if not converged (default: 300).")
    var maxTime: Double?

    @Option(name: .customLong("dirty-source"), help: "With --live: pv-verified, kvm, pv or hybrid (default: pv-verified).")
    var dirtySource: DirtySourceMode?

    @Flag(name: .long, help: "Print the result as JSON (the file, its size, and the engine's MigrationStats).")
    var json = false

    mutating func validate() throws {
        do { try request().validate() } catch { throw ValidationError(error.message) }
    }

    private func request() throws(ControlError) -> SaveRequest {
        var o = MigrationOptions()
        o.downtimeTarget = downtimeMilliseconds / 1000
        if let maxTime { o.maxTime = maxTime }
        if let dirtySource { o.dirtySource = dirtySource }
        var layout = SnapshotLayout.mapped
        switch compression {
        case nil, "mapped", "off": break
        case "compressed", "zstd": layout = .compressed
        case let level?:
            guard let l = Int32(level) else {
                throw ControlError(.invalidArgument, "--compression must be mapped, compressed or a zstd level 1–22")
            }
            layout = .compressed
            o.compressionLevel = l
        }
        return SaveRequest(path: URL(fileURLWithPath: file).standardizedFileURL.path, layout: layout, live: live,
                           stop: stop, options: o)
    }

    func run() throws {
        let runtime = try ControlCommand.runtime()
        let client = try target.connect()
        let vm = target.vm
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            Diagnostics.note("cancelling the save…")
            if let canceller = try? ControlClient(name: vm, runtime: runtime) { _ = try? canceller.request(.cancel) }
        }
        defer { interrupt.cancel() }
        let progress = ProgressLine()
        let result: JSONValue
        do {
            result = try client.request(.save(try request())) { event in
                guard case let .round(round) = event else { return }
                progress.show(round)
            }
        } catch let error as ControlError {
            progress.finish()
            FileHandle.standardError.write(Data("pvmigrate: error: \(error)\n".utf8))
            throw ExitCode.failure
        }
        progress.finish()
        guard let saved = try? result.decode(SnapshotSaved.self) else {
            throw Diagnostics.fail(ControlError(.protocolViolation,
                "VM \(vm) saved, but answered with a result this pvmigrate cannot read: \(result.jsonText)"))
        }
        if json {
            print(try JSONText.pretty(saved))
            return
        }
        let s = saved.stats
        print("""
            saved VM \(vm) to \(saved.path) (\(saved.layout)); \(stop ? "the VM is stopped" : "the VM runs on")
              file          \(Format.bytes(Double(saved.fileBytes))), \(Format.bytes(Double(saved.allocatedBytes))) on disk, \
            for \(Format.memory(s.memoryBytes)) of memory (\(Format.count(Int(s.pagesWithData))) pages with data)
              total time    \(Format.seconds(s.totalSeconds))
              downtime      \(Format.seconds(s.downtimeSeconds))\(live ? " (target \(Format.seconds(s.downtimeTargetSeconds)))" : "")
              rounds        \(s.rounds.count) (the last one, paused: \(Format.count(s.finalPages)) pages)\(s.throttled ? "; the guest was throttled" : "")
              pages         \(Format.count(s.pagesSent)) written: \(Format.count(s.zeroPages)) zero, \(Format.count(s.rawPages)) raw, \
            \(Format.count(s.deltaPages)) delta
              digest        0x\(String(s.digest, radix: 16))
            """)
    }
}

/// JSON for people: sorted keys, pretty, non-finite numbers as strings (as `send --json`).
enum JSONText {
    static func pretty(_ value: some Encodable) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.nonConformingFloatEncodingStrategy = .convertToString(
            positiveInfinity: "Infinity", negativeInfinity: "-Infinity", nan: "NaN")
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}
