import ArgumentParser
import Core
import Foundation
import GuestImage
import Migrate

/// `pvmigrate bench`: migration benchmarks on loopback — the same cases QEMU was measured
/// with (docs/benchmarks.md), and a matrix of engine configurations. Both ends run in this
/// process, over real mutual TLS unless a matrix case says plain.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the migration benchmarks on this machine (loopback, real KVM, mutual TLS).",
        discussion: """
            Without options: the four cases compared with QEMU (scripts/compare-qemu.sh), \(Bench.defaultRuns) runs each.

            --matrix: every combination of idle/dirtying guest × plain/TLS × zstd on/off × delta on/off × \
            dirty source kvm/pv/hybrid (\(BenchMatrix.all.count) cases, one run each unless --runs).

            The final round's page part of the prediction (pages × cost per page + round overhead) is shown \
            next to the time the paused round really took to send its pages; the rest of the pause is the \
            fixed part (harvest, state, commit) and whatever the model leaves out.

            --resident: the same dirtying load on guests with 0.25, 1, 4 and 8 GiB of resident data (the guest's \
            fill= option), to see whether the pause depends on the guest's size.

            --quick (CI): quarter-size guests, one run each, the QEMU cases plus \(BenchMatrix.pruned.count) matrix \
            cases (the default configuration and one factor changed at a time) and the 0.25 GiB resident case; \
            with --matrix, only the matrix cases.

            Columns: total time, downtime (guest paused → running at the destination) and the downtime \
            predicted when stop-and-copy started, bytes on the wire, rounds, the guest's dirtying speed during \
            the migration relative to before it, page encodings, CPU-seconds per GiB of guest memory moved \
            (source/destination, per-thread getrusage), MB/s on the wire while sending.

            --net (root): the PV NIC measured from outside the VM in network namespaces the run creates and \
            deletes — round trips and packets/s of the NIC alone, then a migration under ping and a fixed-rate \
            UDP load: client-observed blackout next to the VMM's downtime, lost requests, latency before/during/\
            after, and a check that every acknowledged SET survived (BenchNet.swift; docs/benchmarks.md).
            """)

    static let defaultRuns = 3

    @Flag(name: .long, help: "Small guests and one run per case; the QEMU cases plus a pruned matrix (for CI).")
    var quick = false

    @Flag(name: .long, help: "Run the configuration matrix instead of the QEMU comparison cases.")
    var matrix = false

    @Flag(name: .long, help: "Run the resident-size cases (0.25–8 GiB of data, the same dirtying load) instead.")
    var resident = false

    @Option(name: .long, help: "Runs per case; the table shows medians (default: \(Bench.defaultRuns), 1 for the matrix and --quick).")
    var runs: Int?

    @Option(name: .long, parsing: .upToNextOption,
            help: "Cases to run by name (default: the set the other options choose); --list shows them.")
    var cases: [String] = []

    @Flag(name: .long, help: "List the cases (name, memory bytes, bandwidth limit, command line), tab-separated, and exit.")
    var list = false

    @Option(name: .long, help: "Write every run's statistics (per round too) as JSON to this file.")
    var json: String?

    @Option(name: .long, help: "Write an SVG chart: per-round bytes and dirty pages over time for each case.")
    var svg: String?

    @Option(name: .customLong("from-json"), help: "Run nothing: print the table (and --svg chart) of an earlier --json file.")
    var fromJSON: String?

    @OptionGroup var netOptions: NetBenchOptions

    mutating func validate() throws {
        if netOptions.enabled {
            if quick || matrix || resident || !cases.isEmpty || list || runs != nil || svg != nil || fromJSON != nil {
                throw ValidationError("--net runs its own measures: of the other options only --json applies")
            }
        } else if netOptions.nicOnly {
            throw ValidationError("--nic-only is part of --net: add --net")
        }
        if let runs, !(1...20).contains(runs) { throw ValidationError("--runs must be 1–20") }
        let known = Set((BenchCase.named).map(\.name))
        if resident && matrix { throw ValidationError("--resident and --matrix are separate sets: choose one") }
        for c in cases where !known.contains(c) {
            throw ValidationError("unknown case \(c); `pvmigrate bench --list` shows the cases")
        }
    }

    /// The results table, then the pause phase by phase (both ends, predicted vs actual) when the runs recorded it.
    private func printTables(_ results: [BenchResult]) {
        print(BenchResult.table(results))
        let more = [BenchResult.pauseTable(results), BenchResult.destinationTable(results), BenchResult.predictionTable(results)]
        for table in more where !table.isEmpty { print("\n" + table) }
    }

    /// The cases the options select, before --quick scales them.
    var selected: [BenchCase] {
        if !cases.isEmpty { return (BenchCase.named).filter { cases.contains($0.name) } }
        if resident { return quick ? Array(BenchCase.resident.prefix(1)) : BenchCase.resident }
        switch (quick, matrix) {
        case (false, false): return BenchCase.all
        case (false, true): return BenchMatrix.all
        case (true, false): return BenchCase.all + BenchMatrix.pruned + BenchCase.resident.prefix(1)
        case (true, true): return BenchMatrix.pruned
        }
    }

    func run() throws {
        if netOptions.enabled { return try runNet() }
        if list {
            for c in BenchCase.named {
                print([c.name, "\(c.memory)", c.bandwidth.map { String(Int($0)) } ?? "-", c.cmdline].joined(separator: "\t"))
            }
            return
        }
        if let fromJSON {
            let results: [BenchResult]
            do { results = try JSONDecoder().decode([BenchResult].self, from: Data(contentsOf: URL(fileURLWithPath: fromJSON))) } catch {
                throw Diagnostics.fail(ValidationError("cannot read bench results from \(fromJSON): \(error)"))
            }
            printTables(results)
            try writeChart(results, title: "pvmigrate bench: \((fromJSON as NSString).lastPathComponent)")
            return
        }
        let pki = FileManager.default.temporaryDirectory.appendingPathComponent("pvmigrate-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: pki) }
        // As `certs init --hosts src dst=127.0.0.1`, `listen --allow-source src`: the same name
        // checks as between two hosts.
        try CertificateAuthority.initialize(directory: pki, hosts: ["src", "dst=127.0.0.1"])
        let src = TLSMode.mutual(try TLSFiles(directory: pki + "/src"))
        let dst = TLSMode.mutual(try TLSFiles(directory: pki + "/dst", peerNames: PeerNames(clients: ["src"])))
        let selected = self.selected
        let runsPerCase = runs ?? (quick || (matrix && cases.isEmpty) ? 1 : Self.defaultRuns)
        let started = ContinuousClock.now
        var results: [BenchResult] = []
        for (i, c) in selected.enumerated() {
            let scaled = quick ? c.quick : c
            for run in 0..<runsPerCase {
                Diagnostics.note("bench [\(i + 1)/\(selected.count)] \(scaled.name) run \(run + 1)…")
                do {
                    results.append(try scaled.measure(src: scaled.tls ? src : .insecure, dst: scaled.tls ? dst : .insecure,
                                                      quick: quick))
                } catch {
                    Diagnostics.note("bench \(scaled.name) run \(run + 1) failed: \(error)")
                    results.append(BenchResult(name: scaled.name, failure: "\(error)"))
                }
                results[results.count - 1].configuration = BenchResult.Configuration(scaled)
            }
        }
        let seconds = (ContinuousClock.now - started).components.seconds
        printTables(results)
        print("\(selected.count) cases, \(runsPerCase) run\(runsPerCase == 1 ? "" : "s") each, \(seconds) s"
            + (quick ? " (--quick: \(BenchCase.quickMemory >> 20) MiB guests, quarter-size working sets)" : ""))
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            do { try encoder.encode(results).write(to: URL(fileURLWithPath: json)) } catch {
                throw Diagnostics.fail(ValidationError("cannot write \(json): \(error.localizedDescription)"))
            }
        }
        try writeChart(results, title: "pvmigrate bench\(quick ? " --quick" : "")\(matrix ? " --matrix" : ""): \(selected.count) cases, "
            + "loopback, \(ProcessInfo.processInfo.activeProcessorCount) cores")
        if results.contains(where: { $0.failure != nil }) { throw ExitCode.failure }
    }

    private func writeChart(_ results: [BenchResult], title: String) throws {
        guard let svg else { return }
        do { try BenchChart.svg(results, title: title).write(toFile: svg, atomically: true, encoding: .utf8) } catch {
            throw Diagnostics.fail(ValidationError("cannot write \(svg): \(error.localizedDescription)"))
        }
        Diagnostics.note("chart written to \(svg)")
    }
}

struct BenchCase: Sendable {
    var name: String
    var memory: UInt64
    var cmdline: String
    var bandwidth: Double?
    var maxTime: Double = 120
    /// Engine configuration (the matrix varies these; the QEMU cases use the defaults).
    var tls = true
    var compression: Int32? = 1
    /// MigrationOptions.adaptiveCompression: skip zstd while it does not pay.
    var adaptive = MigrationOptions().adaptiveCompression
    var delta = true
    var dirtySource = MigrationOptions().dirtySource
    /// Runs at this size under --quick too (the resident cases: their size is the point).
    var fixedSize = false
    /// False: the guest runs in KVM's instruction emulator (`run --no-native`), as a guest
    /// that is not PVM-aware runs under QEMU on this host — for like-for-like comparisons.
    var native = true
    /// vCPUs of the guest (issue 13); the built-in guest splits its working set among them.
    var vcpus = 1

    static let all: [BenchCase] = [
        BenchCase(name: "idle-1g", memory: 1 << 30, cmdline: "workload=idle"),
        BenchCase(name: "dirty-64mibps", memory: 1 << 30,
                  cmdline: "workload=dirty mib=256 passes=0 pattern=random content=mixed rate=16384 progress=0"),
        BenchCase(name: "dirty-max", memory: 1 << 30,
                  cmdline: "workload=dirty mib=512 passes=0 pattern=random content=mixed progress=0"),
        BenchCase(name: "dirty-max-128mibps", memory: 1 << 30,
                  cmdline: "workload=dirty mib=512 passes=0 pattern=random content=mixed progress=0",
                  bandwidth: 128 * 1_048_576, maxTime: 90),
    ]

    /// The same dirtying load (64 MiB/s of random writes over 64 MiB) on guests holding
    /// 0.25, 1, 4 and 8 GiB of data written once at boot (protocol.md §1.7 `fill`): the pause
    /// should not grow with the resident size. Each guest has 0.25–1 GiB more memory than it
    /// fills; with both ends in this process the 8 GiB case holds ~17 GiB of this host's memory.
    static let resident: [BenchCase] = [(256, 512), (1024, 1536), (4096, 4608), (8192, 9216)].map { fill, memory in
        BenchCase(name: "resident-\(fill >= 1024 ? "\(fill >> 10)g" : "\(fill)m")", memory: UInt64(memory) << 20,
                  cmdline: "workload=dirty mib=64 passes=0 pattern=random content=mixed rate=16384 progress=0 fill=\(fill)",
                  maxTime: 600, fixedSize: true)
    }

    /// Like-for-like with QEMU (scripts/compare-qemu.sh): the guest runs emulated, as it does
    /// under QEMU on a PVM host, so both VMMs migrate the same guest doing the same thing. Small:
    /// the emulator writes a page in ~2 ms on a quiet host and far slower on a busy one, so
    /// 256 MiB guests, idle or dirtying a 1 MiB working set at a fixed 16 pages/s — a rate the
    /// emulated guest keeps under either VMM.
    static let emulated: [BenchCase] = [
        ("emulated-idle", "workload=idle"),
        ("emulated-dirty", "workload=dirty mib=1 passes=0 pattern=random content=mixed rate=16 progress=0"),
    ].map { name, cmdline in
        var c = BenchCase(name: name, memory: 256 << 20, cmdline: cmdline, maxTime: 120, fixedSize: true)
        c.native = false
        return c
    }

    /// The compression policies on compressible and incompressible writes (by name only):
    /// zstd always (the default), adaptive, and off.
    static let compressionPolicies: [BenchCase] = ["mixed", "random"].flatMap { content in
        [("zstd", Int32(1), false), ("adaptive", 1, true), ("off", nil, false)].map { policy, level, adaptive in
            var c = BenchCase(name: "dirty-max-\(content)-\(policy)", memory: 1 << 30,
                              cmdline: "workload=dirty mib=512 passes=0 pattern=random content=\(content) progress=0")
            c.compression = level
            c.adaptive = adaptive
            return c
        }
    }

    /// A guest dirtying 256 MiB as fast as it can, under each dirty source (by name only):
    /// how much of its speed each mode leaves it during pre-copy (protocol.md §3.5.1).
    static let dirtySources: [BenchCase] = DirtySourceMode.allCases.map { mode in
        var c = BenchCase(name: "dirty-max-source-\(mode.rawValue)", memory: 1 << 30,
                          cmdline: "workload=dirty mib=256 passes=0 pattern=random content=mixed progress=0", maxTime: 120)
        c.dirtySource = mode
        return c
    }

    /// Two vCPUs (by name only): idle, and both dirtying — `rate` is per vCPU, so the guest
    /// writes what `dirty-64mibps` writes (16,384 pages/s over 256 MiB), split over two vCPUs.
    static let twoVCPUs: [BenchCase] = [
        ("vcpus2-idle-1g", "workload=idle"),
        ("vcpus2-dirty-64mibps", "workload=dirty mib=256 passes=0 pattern=random content=mixed rate=8192 progress=0"),
    ].map { name, cmdline in
        var c = BenchCase(name: name, memory: 1 << 30, cmdline: cmdline)
        c.vcpus = 2
        return c
    }

    /// Every case `--cases` and `--list` know.
    static var named: [BenchCase] {
        all + resident + emulated + compressionPolicies + dirtySources + twoVCPUs + BenchMatrix.all
    }

    static let quickMemory: UInt64 = 256 << 20

    /// A scaled-down version for CI: quarter-size working sets and guests.
    var quick: BenchCase {
        var q = self
        guard !fixedSize else { return q }
        q.memory = Self.quickMemory
        q.cmdline = cmdline.replacingOccurrences(of: "mib=512", with: "mib=128").replacingOccurrences(of: "mib=256", with: "mib=64")
        q.maxTime = 60
        return q
    }

    func measure(src: TLSMode, dst: TLSMode, quick: Bool = false) throws -> BenchResult {
        let arrived = Locked<ReceivedVM?>(nil)
        var receiverOptions = ReceiverOptions()
        receiverOptions.console = { _ in ConsoleBuffer() }
        // Both ends share this process: the guest's memory exists once already, so the
        // listener's total (default: physical memory) must not refuse a large idle guest.
        receiverOptions.maximumMemory = .max
        let listener = try MigrationListener(host: "127.0.0.1", port: 0, tls: dst, options: receiverOptions)
        defer { listener.close() }
        let arrival = DispatchSemaphore(value: 0)
        listener.serve(onArrival: { vm in arrived.withLock { $0 = vm }; arrival.signal() },
                       onFailure: { Diagnostics.note("receiver: \($0)") })

        let console = ConsoleBuffer()
        var configuration = Machine.Configuration(memorySize: memory, kernel: GuestImage.elf, commandLine: cmdline,
                                                  console: console)
        configuration.allowNativeExecution = native
        configuration.vcpuCount = vcpus
        let machine = try Machine(configuration: configuration)
        machine.start()
        defer { machine.stop(); _ = machine.waitForExit() }
        if cmdline.contains("fill=") { try Self.waitForFill(console, machine: machine) }
        let settle = quick ? 0.5 : 1.0
        Thread.sleep(forTimeInterval: settle) // boot, balloon, reach steady state
        let before = machine.pv.guestCounters?.pagesWritten ?? 0
        Thread.sleep(forTimeInterval: settle)
        let baseline = Double((machine.pv.guestCounters?.pagesWritten ?? 0) - before) / settle

        var options = MigrationOptions()
        options.bandwidthLimit = bandwidth
        options.maxTime = maxTime
        options.compressionLevel = compression
        options.adaptiveCompression = adaptive
        options.delta = delta
        options.dirtySource = dirtySource
        let sender = MigrationSender(machine: machine, name: name, kernelSHA256: [UInt8](repeating: 0, count: 32), options: options)
        let startCount = machine.pv.guestCounters?.pagesWritten ?? 0
        let stats = try sender.migrate(to: "127.0.0.1", port: listener.port, tls: src)
        let written = Double((machine.pv.guestCounters?.pagesWritten ?? startCount) - startCount)
        let duringRate = written / max(stats.totalSeconds - stats.downtimeSeconds, 0.001)
        // The destination reports the arrival just after its acknowledgment, which may be after
        // migrate() returned: wait for it (bounded only against a hang), for its stats and to stop it.
        if arrival.wait(timeout: .now() + 60) == .timedOut { Diagnostics.note("bench \(name): the destination never reported the arrival") }
        if let vm = arrived.value { vm.machine.stop(); _ = vm.machine.waitForExit() }
        var result = BenchResult(name: name, stats: stats, guestBaseline: baseline, guestDuring: duringRate)
        result.receiver = arrived.value?.stats
        result.pausePhases = sender.lastPausePhases
        return result
    }

    /// Waits for the guest's "fill … done" line (protocol.md §1.7); the wait is bounded only
    /// against a guest that never gets there.
    static func waitForFill(_ console: ConsoleBuffer, machine: Machine) throws {
        let deadline = ContinuousClock.now + .seconds(600)
        while !console.text.contains("pvguest: fill ") {
            if let exit = machine.exit {
                throw ValidationError("the guest ended before filling its memory (\(exit)): \(console.text.suffix(300))")
            }
            guard ContinuousClock.now < deadline else {
                throw ValidationError("the guest did not fill its memory within 600 s: \(console.text.suffix(300))")
            }
            Thread.sleep(forTimeInterval: 0.05) // polling the console: the guest has no other signal for this
        }
    }
}

struct BenchResult: Codable {
    var name: String
    var stats: MigrationStats?
    /// Pages per second the guest wrote before / during the migration.
    var guestBaseline = 0.0
    var guestDuring = 0.0
    var failure: String?
    var configuration: Configuration?
    /// The destination's statistics (its CPU time).
    var receiver: ReceiveStats?
    /// The pause, phase by phase (absent in files written before it existed).
    var pausePhases: PausePhases?

    /// What the case ran: enough to reproduce it and to group the matrix.
    struct Configuration: Codable {
        var memoryBytes: UInt64
        var cmdline: String
        var bandwidthLimit: Double?
        var tls: Bool
        var compressionLevel: Int32?
        var adaptiveCompression: Bool?
        var delta: Bool
        var dirtySource: String
        /// False: the guest ran emulated (`--no-native`). Absent in files written before it existed.
        var native: Bool?

        init(_ c: BenchCase) {
            memoryBytes = c.memory; cmdline = c.cmdline; bandwidthLimit = c.bandwidth; tls = c.tls
            compressionLevel = c.compression; adaptiveCompression = c.adaptive; delta = c.delta; dirtySource = c.dirtySource.rawValue
            native = c.native
        }
    }

    init(name: String, stats: MigrationStats? = nil, guestBaseline: Double = 0, guestDuring: Double = 0, failure: String? = nil) {
        self.name = name; self.stats = stats; self.guestBaseline = guestBaseline; self.guestDuring = guestDuring
        self.failure = failure
    }

    static func table(_ results: [BenchResult]) -> String {
        var lines = ["| case | runs | total s | downtime ms | predicted ms | final pages ms pred/actual | sent MiB | rounds | guest speed during | pages zero/raw/delta | CPU-s/GiB src/dst | wire MB/s |",
                     "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        let names = results.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        for name in names {
            let ok = results.filter { $0.name == name && $0.stats != nil }
            let failed = results.filter { $0.name == name && $0.failure != nil }.count
            guard !ok.isEmpty else { lines.append("| \(name) | \(failed) failed | | | | | | | | | | |"); continue }
            func median(_ f: (BenchResult) -> Double) -> Double {
                let v = ok.map(f).sorted()
                return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
            }
            let s = ok[ok.count / 2].stats!
            let speed = median { $0.guestBaseline > 0 ? $0.guestDuring / $0.guestBaseline : 1 }
            lines.append(String(format: "| %@ | %d%@ | %.2f | %.1f | %.1f | %.1f/%.1f | %.1f | %.0f | %@ | %d/%d/%d | %.2f/%.2f | %.0f |", name, ok.count,
                                failed > 0 ? " (+\(failed) failed)" : "", median { $0.stats!.totalSeconds },
                                median { $0.stats!.downtimeSeconds * 1000 }, median { $0.stats!.predictedDowntimeSeconds * 1000 },
                                median { ($0.stats!.predictedDowntimeSeconds - $0.stats!.predictedFixedSeconds) * 1000 },
                                median { $0.stats!.finalRoundSeconds * 1000 },
                                median { Double($0.stats!.wireBytes) / 1_048_576 },
                                median { Double($0.stats!.rounds.count) },
                                ok[0].guestBaseline > 0 ? String(format: "%.0f%%", speed * 100) : "idle",
                                s.zeroPages, s.rawPages, s.deltaPages,
                                median { $0.stats!.cpuSecondsPerGiB }, median { $0.receiver?.cpuSecondsPerGiB ?? .nan },
                                median { $0.stats!.wireBytesPerSecond / 1e6 }))
        }
        return lines.joined(separator: "\n")
    }
}
