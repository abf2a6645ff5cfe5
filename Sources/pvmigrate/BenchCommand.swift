import ArgumentParser
import Core
import Foundation
import GuestImage
import Migrate

/// `pvmigrate bench`: migration benchmarks on loopback — the same cases QEMU was measured
/// with (docs/benchmarks.md). Both ends run in this process, over real mutual TLS.
struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the migration benchmarks on this machine (loopback, real KVM, mutual TLS).")

    @Flag(name: .long, help: "Small guests and one run per case (for CI).")
    var quick = false

    @Option(name: .long, help: "Runs per case; the table shows medians.")
    var runs: Int = 3

    @Option(name: .long, parsing: .upToNextOption, help: "Cases to run (default: all): \(BenchCase.all.map(\.name).joined(separator: ", ")).")
    var cases: [String] = []

    @Option(name: .long, help: "Write every run's statistics as JSON to this file.")
    var json: String?

    mutating func validate() throws {
        guard (1...20).contains(runs) else { throw ValidationError("--runs must be 1–20") }
        let known = Set(BenchCase.all.map(\.name))
        for c in cases where !known.contains(c) { throw ValidationError("unknown case \(c); known: \(known.sorted().joined(separator: ", "))") }
    }

    func run() throws {
        let pki = FileManager.default.temporaryDirectory.appendingPathComponent("pvmigrate-bench-\(getpid())").path
        defer { try? FileManager.default.removeItem(atPath: pki) }
        try CertificateAuthority.initialize(directory: pki, hosts: ["src", "dst"])
        let src = TLSMode.mutual(try TLSFiles(directory: pki + "/src"))
        let dst = TLSMode.mutual(try TLSFiles(directory: pki + "/dst"))
        let selected = BenchCase.all.filter { cases.isEmpty || cases.contains($0.name) }
        var results: [BenchResult] = []
        for c in selected {
            let scaled = quick ? c.quick : c
            for run in 0..<(quick ? 1 : runs) {
                Diagnostics.note("bench \(scaled.name) run \(run + 1)…")
                do {
                    results.append(try scaled.measure(src: src, dst: dst))
                } catch {
                    Diagnostics.note("bench \(scaled.name) run \(run + 1) failed: \(error)")
                    results.append(BenchResult(name: scaled.name, failure: "\(error)"))
                }
            }
        }
        print(BenchResult.table(results))
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(results).write(to: URL(fileURLWithPath: json))
        }
        if results.contains(where: { $0.failure != nil }) { throw ExitCode.failure }
    }
}

struct BenchCase: Sendable {
    var name: String
    var memory: UInt64
    var cmdline: String
    var bandwidth: Double?
    var maxTime: Double = 120

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

    /// A scaled-down version for CI: quarter-size working sets and guests.
    var quick: BenchCase {
        var q = self
        q.memory = 256 << 20
        q.cmdline = cmdline.replacingOccurrences(of: "mib=512", with: "mib=128").replacingOccurrences(of: "mib=256", with: "mib=64")
        q.maxTime = 60
        return q
    }

    func measure(src: TLSMode, dst: TLSMode) throws -> BenchResult {
        let arrived = Locked<ReceivedVM?>(nil)
        var receiverOptions = ReceiverOptions()
        receiverOptions.console = { _ in ConsoleBuffer() }
        let listener = try MigrationListener(host: "127.0.0.1", port: 0, tls: dst, options: receiverOptions)
        defer { listener.close() }
        listener.serve(onArrival: { vm in arrived.withLock { $0 = vm } }, onFailure: { Diagnostics.note("receiver: \($0)") })

        let machine = try Machine(configuration: .init(memorySize: memory, kernel: GuestImage.elf, commandLine: cmdline,
                                                       console: ConsoleBuffer()))
        machine.start()
        defer { machine.stop(); _ = machine.waitForExit() }
        Thread.sleep(forTimeInterval: 1.0) // boot, balloon, reach steady state
        let before = machine.pv.guestCounters?.pagesWritten ?? 0
        Thread.sleep(forTimeInterval: 1.0)
        let baseline = Double((machine.pv.guestCounters?.pagesWritten ?? 0) - before)

        var options = MigrationOptions()
        options.bandwidthLimit = bandwidth
        options.maxTime = maxTime
        let sender = MigrationSender(machine: machine, name: name, kernelSHA256: [UInt8](repeating: 0, count: 32), options: options)
        let startCount = machine.pv.guestCounters?.pagesWritten ?? 0
        let stats = try sender.migrate(to: "127.0.0.1", port: listener.port, tls: src)
        let written = Double((machine.pv.guestCounters?.pagesWritten ?? startCount) - startCount)
        let duringRate = written / max(stats.totalSeconds - stats.downtimeSeconds, 0.001)
        if let vm = arrived.value { vm.machine.stop(); _ = vm.machine.waitForExit() }
        return BenchResult(name: name, stats: stats, guestBaseline: baseline, guestDuring: duringRate)
    }
}

struct BenchResult: Codable {
    var name: String
    var stats: MigrationStats?
    /// Pages per second the guest wrote before / during the migration.
    var guestBaseline = 0.0
    var guestDuring = 0.0
    var failure: String?

    init(name: String, stats: MigrationStats? = nil, guestBaseline: Double = 0, guestDuring: Double = 0, failure: String? = nil) {
        self.name = name; self.stats = stats; self.guestBaseline = guestBaseline; self.guestDuring = guestDuring
        self.failure = failure
    }

    static func table(_ results: [BenchResult]) -> String {
        var lines = ["| case | runs | total s | downtime ms | sent MiB | rounds | guest speed during | pages zero/raw/delta |",
                     "|---|---|---|---|---|---|---|---|"]
        let names = results.map(\.name).reduce(into: [String]()) { if !$0.contains($1) { $0.append($1) } }
        for name in names {
            let ok = results.filter { $0.name == name && $0.stats != nil }
            let failed = results.filter { $0.name == name && $0.failure != nil }.count
            guard !ok.isEmpty else { lines.append("| \(name) | \(failed) failed | | | | | | |"); continue }
            func median(_ f: (BenchResult) -> Double) -> Double {
                let v = ok.map(f).sorted()
                return v.count % 2 == 1 ? v[v.count / 2] : (v[v.count / 2 - 1] + v[v.count / 2]) / 2
            }
            let s = ok[ok.count / 2].stats!
            let speed = median { $0.guestBaseline > 0 ? $0.guestDuring / $0.guestBaseline : 1 }
            lines.append(String(format: "| %@ | %d%@ | %.2f | %.1f | %.1f | %.0f | %@ | %d/%d/%d |", name, ok.count,
                                failed > 0 ? " (+\(failed) failed)" : "", median { $0.stats!.totalSeconds },
                                median { $0.stats!.downtimeSeconds * 1000 }, median { Double($0.stats!.wireBytes) / 1_048_576 },
                                median { Double($0.stats!.rounds.count) },
                                ok[0].guestBaseline > 0 ? String(format: "%.0f%%", speed * 100) : "idle",
                                s.zeroPages, s.rawPages, s.deltaPages))
        }
        return lines.joined(separator: "\n")
    }
}
