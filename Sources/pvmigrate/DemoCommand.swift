import ArgumentParser
import Control
import Core
import Foundation
import GuestImage
import Migrate

/// `pvmigrate demo`: a live migration over mutual TLS on this machine, start to finish, with
/// every claim checked — the guest keeps running on the destination and its own self-check
/// finds no lost or stale page.
struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Migrate a running guest live over mutual TLS, on this machine, and check it.",
        discussion: """
            Creates certificates for two hosts (src, dst) in a temporary directory, starts a \
            destination listener on a loopback port, boots the built-in guest with a workload that \
            keeps dirtying memory, migrates it while it runs, shows it carrying on at the destination, \
            has it verify every page it wrote, prints the statistics and cleans up. Exit status 0 \
            only if every check passed.

            --net (root): a second demo in network namespaces it creates and deletes — a guest serving \
            the UDP key-value store (docs/protocol.md §5.7) answers ping, SET and GET from a client \
            namespace before and after it moves between two pvmigrate processes whose TAPs share a bridge.
            """)

    @Option(name: .long, help: "Guest memory (256M–4G).")
    var memory: MemorySize = MemorySize(argument: "512M")!

    @Option(name: .long, help: "The guest's workload (built-in guest command line).")
    var cmdline = "workload=dirty mib=64 passes=0 pattern=random content=mixed rate=20000 progress=1000"

    @Option(name: .customLong("dirty-source"), help: "Dirty-page source: pv-verified, kvm, pv or hybrid.")
    var dirtySource = MigrationOptions().dirtySource.rawValue

    @Option(name: .long, help: "Seconds to show the guest's console before and after the migration.")
    var show: Double = 2

    @Flag(name: .long, help: "The network demo: a serving guest answers ping and its UDP store before and after the move (root).")
    var net = false

    mutating func validate() throws {
        guard (256 << 20...4 << 30).contains(memory.bytes), memory.bytes % (2 << 20) == 0 else {
            throw ValidationError("--memory must be 256M–4G and a multiple of 2M")
        }
        guard (0.5...30).contains(show) else { throw ValidationError("--show must be 0.5–30 seconds") }
        guard DirtySourceMode(rawValue: dirtySource) != nil else { throw ValidationError("--dirty-source must be pv-verified, kvm, pv or hybrid") }
    }

    func run() throws {
        if net { return try runNet() }
        let demo = try DemoRun(memory: memory.bytes, cmdline: cmdline, dirtySource: DirtySourceMode(rawValue: dirtySource) ?? MigrationOptions().dirtySource,
                               show: show)
        defer { demo.cleanUp() }
        // Ctrl-C: stop both VMs and remove the temporary directory before leaving.
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            demo.cleanUp()
            Foundation.exit(130)
        }
        defer { interrupt.cancel() }
        let passed = demo.perform()
        if !passed { throw ExitCode.failure }
    }
}

/// One demo run: the steps, the checks, and the clean-up.
final class DemoRun: @unchecked Sendable {
    let memory: UInt64, cmdline: String, dirtySource: DirtySourceMode, show: Double
    let root: String
    let runtime: RuntimeDirectory
    private var checks: [(String, Bool)] = []
    private var listener: MigrationListener?
    private var source: Machine?
    /// The destination's host of arriving VMs, as `pvmigrate listen` has it.
    private let arrivals: Arrivals
    private let cleaned = Locked(false)

    init(memory: UInt64, cmdline: String, dirtySource: DirtySourceMode, show: Double) throws {
        self.memory = memory; self.cmdline = cmdline; self.dirtySource = dirtySource; self.show = show
        let tmp = NSTemporaryDirectory().hasSuffix("/") ? String(NSTemporaryDirectory().dropLast()) : NSTemporaryDirectory()
        var template = Array((tmp + "/pvmigrate-demo-XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else { throw Diagnostics.fail(ValidationError("cannot create a temporary directory")) }
        root = String(cString: made)
        var environment = ProcessInfo.processInfo.environment
        environment["PVMIGRATE_RUNTIME_DIR"] = root + "/dst-runtime"
        do { runtime = try RuntimeDirectory(environment: environment) } catch { throw Diagnostics.fail(error) }
        arrivals = Arrivals(runtime: runtime) { event in
            switch event {
            case let .failed(failure): Self.say("    [dst] \(failure)")
            case let .notHosted(vm, reason): Self.say("    [dst] cannot host the arrived VM \(vm.name): \(reason ?? "shutting down")")
            case .arrived, .gone: break
            }
        }
    }

    static func step(_ title: String) { say("\n==> \(title)") }
    static func say(_ text: String) { FileHandle.standardOutput.write(Data((text + "\n").utf8)) }

    private func check(_ what: String, _ ok: Bool) {
        checks.append((what, ok))
        Self.say("    \(ok ? "✔" : "✘") \(what)")
    }

    /// Runs every step; false when a check failed (the reason was printed).
    func perform() -> Bool {
        let started = ContinuousClock.now
        do { try steps() } catch {
            Self.say("\ndemo: FAILED: \(error)")
            checks.append(("\(error)", false))
        }
        let failed = checks.filter { !$0.1 }
        let seconds = (ContinuousClock.now - started).components.seconds
        Self.say(failed.isEmpty
            ? "\ndemo: all \(checks.count) checks passed in \(seconds) s"
            : "\ndemo: \(failed.count) of \(checks.count) checks FAILED: \(failed.map(\.0).joined(separator: "; "))")
        return failed.isEmpty
    }

    private func steps() throws {
        Self.step("1. certificates for two hosts (pvmigrate certs init --dir \(root)/pki --hosts src dst=127.0.0.1)")
        try CertificateAuthority.initialize(directory: root + "/pki", hosts: ["src", "dst=127.0.0.1"])
        Self.say("    CA \(root)/pki/ca.pem; src/ and dst/ each hold ca.pem, cert.pem, key.pem (0600); "
            + "src's certificate names src, dst's names dst and 127.0.0.1 (the address the source dials)")
        let srcTLS = TLSMode.mutual(try TLSFiles(directory: root + "/pki/src"))
        let dstTLS = TLSMode.mutual(try TLSFiles(directory: root + "/pki/dst", peerNames: PeerNames(clients: ["src"])))

        Self.step("2. the destination: pvmigrate listen --allow-source src, mutual TLS, on a loopback port")
        var options = ReceiverOptions()
        arrivals.configure(&options)
        options.log = { Self.say("    [dst] \($0)") }
        let listener = try MigrationListener(host: "127.0.0.1", port: 0, tls: dstTLS, options: options)
        self.listener = listener
        listener.serve(arrivals)
        Self.say("    listening on 127.0.0.1:\(listener.port); arriving VMs are served in \(runtime.path)")

        Self.step("3. the source: boot the built-in guest (\(memory >> 20) MiB) — \(cmdline)")
        let sourceConsole = DemoConsole(prefix: "src")
        sourceConsole.showing = true
        let machine = try Machine(configuration: .init(memorySize: memory, kernel: GuestImage.elf, commandLine: cmdline,
                                                       console: sourceConsole))
        source = machine
        machine.start()
        let deadline = ContinuousClock.now + .seconds(10)
        while !machine.pv.isRegistered, machine.exit == nil, ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        Thread.sleep(forTimeInterval: show)
        sourceConsole.showing = false
        let mode = (try? machine.executionMode()).map { "\($0)" } ?? "unknown"
        check("the guest runs on the source (execution: \(mode), PV interface registered)", machine.exit == nil && machine.pv.isRegistered)
        let beforeCounter = machine.pv.guestCounters?.pagesWritten ?? 0

        Self.step("4. live migration src → dst over mutual TLS (the guest keeps running until the last round)")
        var migrationOptions = MigrationOptions()
        migrationOptions.dirtySource = dirtySource
        migrationOptions.maxTime = 60
        let sender = MigrationSender(machine: machine, name: "demo", kernelSHA256: KernelDigest.sha256(GuestImage.elf), options: migrationOptions)
        let progress = DemoProgress()
        let stats = try sender.migrate(to: "127.0.0.1", port: listener.port, tls: srcTLS) { round in
            progress.show(String(format: "    round %d: %@ pages, %.1f MiB in %.2f s (%.0f MiB/s); %@ dirty since → predicted pause %.1f ms",
                                 round.round, round.pages.formatted(), Double(round.wireBytes) / 1_048_576, round.seconds,
                                 round.bandwidth / 1_048_576, round.dirtyPages.formatted(), round.expectedDowntime * 1000))
        }
        progress.done()
        Self.say(String(format: "    migrated in %.2f s; the guest was paused for %.1f ms (predicted %.1f ms)", stats.totalSeconds, stats.downtimeSeconds * 1000, stats.predictedDowntimeSeconds * 1000))
        check("the source let go of the VM (it stopped there after the destination acknowledged)",
              machine.waitForExit() == .stopped)
        source = nil

        Self.step("5. the guest carries on at the destination")
        guard let vm = arrivals.firstArrival(timeout: 10) else {
            check("the VM arrived at the destination", false)
            return
        }
        // The guest's lines at the destination, as `pvmigrate console --follow` shows them.
        let console = DemoConsole(prefix: "dst")
        let following = vm.host.console.subscribe()
        Thread.detachNewThread { while let bytes = following.next() { console.console(bytes) } }
        check("the VM arrived and runs at the destination, served as \"\(vm.name)\" at \(runtime.socketPath(for: vm.name))",
              vm.vm.machine.exit == nil)
        let client = try ControlClient(name: vm.name, runtime: runtime)
        let status = try client.status()
        let state = status.state.rawValue, execution = status.execution.rawValue
        check("its control socket answers like `pvmigrate status \(vm.name)`: \(state), execution \(execution), "
            + "arrived from \(status.arrivedFrom ?? "?")", status.state == .running)
        check("memory digests match (source 0x\(String(stats.digest, radix: 16)), destination 0x\(String(vm.vm.stats.digest, radix: 16)))",
              stats.digest == vm.vm.stats.digest)
        let arrivedCounter = vm.vm.machine.pv.guestCounters?.pagesWritten ?? 0
        console.showing = true
        Thread.sleep(forTimeInterval: show)
        console.showing = false
        let afterCounter = vm.vm.machine.pv.guestCounters?.pagesWritten ?? 0
        Self.say("    the guest's page counter: \(beforeCounter.formatted()) before the migration, "
            + "\(arrivedCounter.formatted()) on arrival, \(afterCounter.formatted()) \(show) s later")
        check("the guest keeps working at the destination (counter \(arrivedCounter.formatted()) → \(afterCounter.formatted()))",
              afterCounter > arrivedCounter && arrivedCounter >= beforeCounter)
        check("its console continues at the destination (\(console.lineCount) lines since arrival)", console.lineCount > 0)

        Self.step("6. the guest verifies every page it has written (like `pvmigrate selfcheck \(vm.name)` at the destination)")
        console.showing = true
        let answer = try client.request(.selfcheck)
        Thread.sleep(forTimeInterval: 0.1)
        console.showing = false
        let checked = try answer.result(SelfcheckResult.self, of: .selfcheck)
        let pages = checked.pages, bad = checked.bad
        check("self-check: \(pages.formatted()) pages, \(bad) bad", pages > 0 && bad == 0)

        Self.step("7. statistics")
        Self.say(DemoRun.statistics(stats, tls: "TLS 1.3, mutual authentication", compression: migrationOptions))
        vm.host.stop()
        _ = vm.host.waitUntilGone()
    }

    static func statistics(_ s: MigrationStats, tls: String, compression options: MigrationOptions) -> String {
        func mib(_ bytes: UInt64) -> String { String(format: "%.1f MiB", Double(bytes) / 1_048_576) }
        let sent = max(1, s.pagesSent)
        var lines = [
            String(format: "    total time       %.3f s", s.totalSeconds),
            String(format: "    downtime         %.1f ms (guest paused at the source → running at the destination)", s.downtimeSeconds * 1000),
            "    on the wire      \(mib(s.wireBytes)) for \(mib(s.memoryBytes)) of guest memory (\(String(format: "%.1f", Double(s.wireBytes) * 100 / Double(max(1, s.memoryBytes)))) %)",
            "    transport        \(tls), \(s.streams) parallel stream\(s.streams == 1 ? "" : "s")",
            "    rounds           \(s.rounds.count) (\(s.rounds.count - 1) pre-copy + stop-and-copy)\(s.throttled ? ", guest throttled (auto-converge)" : "")",
            "    dirty source     \(s.dirtySource.rawValue); \(s.verification.summary)",
            "    encodings        \(s.zeroPages.formatted()) zero, \(s.rawPages.formatted()) raw, \(s.deltaPages.formatted()) delta pages "
                + "(\(s.rawPages * 100 / sent) % / \(s.deltaPages * 100 / sent) % of data pages); zstd "
                + "\(options.compressionLevel.map { "level \($0)\(options.adaptiveCompression ? ", adaptive" : "")" } ?? "off"), XOR delta \(options.delta ? "on" : "off") "
                + String(format: "(cache hit rate %.0f %%)", s.deltaHitRate * 100),
            "    memory digest    0x\(String(s.digest, radix: 16)) over \(s.pagesWithData.formatted()) pages with data",
            "",
            "    round     pages      zero       raw     delta    wire MiB   seconds   dirty after",
        ]
        for r in s.rounds {
            let last = r.round == s.rounds.count - 1
            let label = last ? "final" : "\(r.round)"
            let dirty = last ? "-" : r.dirtyPages.formatted()
            lines.append("    " + String(repeating: " ", count: max(0, 5 - label.count)) + label
                + String(format: " %9d %9d %9d %9d %11.1f %9.3f ", r.pages, r.zeroPages, r.rawPages, r.deltaPages,
                         Double(r.wireBytes) / 1_048_576, r.seconds)
                + String(repeating: " ", count: max(0, 13 - dirty.count)) + dirty)
        }
        return lines.joined(separator: "\n")
    }

    func cleanUp() {
        guard cleaned.withLock({ done in defer { done = true }; return !done }) else { return }
        listener?.close()
        if let source { source.stop(); _ = source.waitForExit() }
        arrivals.shutDown()
        try? FileManager.default.removeItem(atPath: root)
    }
}

/// A console that prints the guest's lines with a prefix while `showing`, counts the lines it
/// showed.
final class DemoConsole: ConsoleSink, @unchecked Sendable {
    let prefix: String
    private let state = Locked((showing: false, lines: 0, partial: [UInt8]()))

    init(prefix: String) {
        self.prefix = prefix
    }

    var showing: Bool {
        get { state.value.showing }
        set { state.withLock { $0.showing = newValue } }
    }

    var lineCount: Int { state.value.lines }

    func console(_ bytes: [UInt8]) {
        let text = state.withLock { s -> String? in
            guard s.showing else { return nil }
            s.lines += bytes.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
            return String(decoding: bytes, as: UTF8.self)
        }
        guard let text else { return }
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        let shown = lines.enumerated().compactMap { i, line -> String? in
            i == lines.count - 1 && line.isEmpty ? nil : "    [\(prefix)] \(line)\n"
        }
        FileHandle.standardOutput.write(Data(shown.joined().utf8))
    }
}

/// A progress line that redraws itself on a terminal and prints one line per update otherwise.
final class DemoProgress: @unchecked Sendable {
    private let terminal = isatty(STDOUT_FILENO) == 1
    private var width = 0

    func show(_ text: String) {
        if terminal {
            let padded = text.padding(toLength: max(width, text.count), withPad: " ", startingAt: 0)
            width = text.count
            FileHandle.standardOutput.write(Data(("\r" + padded).utf8))
        } else {
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
        }
    }

    func done() { if terminal, width > 0 { FileHandle.standardOutput.write(Data("\n".utf8)) } }
}
