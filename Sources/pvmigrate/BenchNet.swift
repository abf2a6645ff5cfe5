import ArgumentParser
import Control
import Foundation
import Migrate
import Net
import NetBench

/// `bench --net`'s options (the rest of `bench`'s are for the loopback cases).
struct NetBenchOptions: ParsableArguments {
    @Flag(name: .customLong("net"), help: """
        Measure the PV NIC from outside the VM, inside network namespaces this run creates and deletes \
        (needs root): the NIC alone, then a migration under ping and UDP load (docs/benchmarks.md).
        """)
    var enabled = false

    @Flag(name: .customLong("nic-only"), help: "With --net: only the NIC-alone figures, no migration.")
    var nicOnly = false

    @Option(name: .customLong("net-memory"), help: "With --net: guest memory (64M–4G).")
    var memory: MemorySize = MemorySize(argument: "256M")!

    @Option(name: .customLong("net-rate"), help: "With --net: UDP requests per second during the migration.")
    var rate: Double = 2000

    @Option(name: .customLong("net-seconds"), help: "With --net: seconds of load before and after the migration, and per NIC measure.")
    var seconds: Double = 3

    @Option(name: .customLong("net-window"), help: "With --net: UDP requests in flight for the NIC's packets/s.")
    var window: Int = 16

    @Option(name: .customLong("net-poll-us"),
            help: "With --net: the serving VM's --net poll-us= (the most its vCPU thread busy-polls the TAP when the guest sleeps, adapting to the traffic; default 2500, 0 never).")
    var pollMicroseconds: Int = NetSpec.defaultPollMicroseconds

    func validate() throws {
        guard (64 << 20...4 << 30).contains(memory.bytes), memory.bytes % (2 << 20) == 0 else {
            throw ValidationError("--net-memory must be 64M–4G and a multiple of 2M")
        }
        if let problem = KVLoadPlan(rate: rate).problem { throw ValidationError("--net-rate: \(problem)") }
        guard (0.5...600).contains(seconds) else { throw ValidationError("--net-seconds must be 0.5–600") }
        guard (1...256).contains(window) else { throw ValidationError("--net-window must be 1–256") }
        guard (0...NetSpec.maximumPollMicroseconds).contains(pollMicroseconds) else {
            throw ValidationError("--net-poll-us must be 0–\(NetSpec.maximumPollMicroseconds)")
        }
    }

    var settings: NetBenchSettings {
        NetBenchSettings(memory: memory.bytes, rate: rate, seconds: seconds, window: window, nicOnly: nicOnly,
                         pollMicroseconds: pollMicroseconds)
    }
}

/// What one `bench --net` (or `demo --net`) run does; the defaults are bench's.
struct NetBenchSettings {
    var memory: UInt64 = 256 << 20
    var rate: Double = 2000
    var seconds: Double = 3
    var window = 16
    var nicOnly = false
    /// The serving VM's `--net …,poll-us=` (0: no busy-polling).
    var pollMicroseconds = NetSpec.defaultPollMicroseconds
}

/// One `bench --net` run: the network, the serving guest, the clients, the migration, the
/// checks, the clean-up (BenchNetwork describes the network).
final class NetBenchRun: @unchecked Sendable {
    static let vmName = "nbvm"
    static let migrationPort: UInt16 = 42000

    let options: NetBenchSettings
    let network: BenchNetwork
    let directory: String
    /// The load's plan; each load continues the ids of the one before (`KVLoadPlan.firstID`).
    private(set) var plan: KVLoadPlan
    /// How notes name the run: "bench --net" or "demo --net".
    let label: String
    /// The socket of `clients()` kept out of the load, for single requests and the final reads.
    var spare: Int { plan.sockets }
    private(set) var report: NetBenchReport
    private var source: LoggedProcess?
    private var destination: LoggedProcess?
    private var vmOut: LoggedProcess? // whichever process runs the VM now

    init(options: NetBenchSettings, label: String = "bench --net") throws {
        self.label = label
        self.options = options
        plan = KVLoadPlan(rate: options.rate)
        report = NetBenchReport(date: ISO8601DateFormatter().string(from: Date()), loadAverage: NetBenchReport.loadAverage(),
                                guestMemoryMiB: Int(options.memory >> 20), plan: plan)
        report.pollMicroseconds = options.pollMicroseconds
        do { network = try BenchNetwork() } catch { throw Diagnostics.fail(error) }
        directory = NSTemporaryDirectory() + "pvmigrate-netbench-\(getpid())"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    }

    /// Stops everything this run started and deletes the network; keeps the logs only when `keepLogs`.
    func cleanUp(keepLogs: Bool) {
        network.close()
        if keepLogs { Diagnostics.note("\(label): logs kept in \(directory)") } else { try? FileManager.default.removeItem(atPath: directory) }
    }

    /// The pause's phases by name in ms (their Codable names: what bench --json also writes).
    static func milliseconds(_ phases: PausePhases) -> [String: Double]? {
        guard let data = try? JSONEncoder().encode(phases),
              let seconds = try? JSONDecoder().decode([String: Double].self, from: data) else { return nil }
        return seconds.mapValues { $0 * 1000 }
    }

    static var binary: String { (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0] }

    /// Boots the serving guest at the source and waits until it serves.
    func bootGuest() throws {
        Diagnostics.note("\(label): booting a \(options.memory >> 20) MiB serving guest in namespace \(network.hosts)…")
        let vm = try network.start(in: network.hosts, [Self.binary, "run", "--name", Self.vmName, "--memory", "\(options.memory >> 20)M",
                                                       "--net", "bridge=\(BenchNetwork.bridge),poll-us=\(options.pollMicroseconds)",
                                                       "--cmdline", "workload=serve ip=\(BenchNetwork.guestAddress)/24"],
                                   log: directory + "/source.log", environment: ["PVMIGRATE_RUNTIME_DIR": directory + "/src"])
        source = vm
        vmOut = vm
        try vm.wait(for: "pvguest: serving udp 7070", what: "the serving guest")
    }

    /// What the source process printed (its guest's console included).
    var sourceLog: String { source?.text ?? "" }
    /// Whether the source process has ended (after a migration: it let go of the VM).
    var sourceEnded: Bool { source.map { !$0.process.isRunning } ?? false }

    /// The client sockets (load sockets plus the spare one) in the client namespace, once the
    /// guest answers (its ARP and store are up).
    func clients() throws -> UDPClients {
        let clients = try UDPClients(count: plan.sockets + 1, host: BenchNetwork.guestAddress, port: 7070, namespace: network.clientsPath)
        guard KVLoad.request("GET nbready", key: "nbready", on: clients, socket: spare, attempts: 50) != nil else {
            throw NetBenchError.run("the guest at \(BenchNetwork.guestAddress) never answered a GET from the client namespace")
        }
        return clients
    }

    /// ping from the client namespace, one line per answer (-D stamps, -O for missed ones).
    func startPing(count: Int?, name: String) throws -> LoggedProcess {
        try network.start(in: network.clients, ["ping", "-D", "-O", "-n", "-i", "0.002", "-W", "1"]
            + (count.map { ["-c", "\($0)"] } ?? []) + [BenchNetwork.guestAddress], log: directory + "/\(name).log")
    }

    static func ping(_ p: LoggedProcess, window: PhaseWindow, offset: Int64) -> ClientSummary {
        PingOutput(p.text).summary(window: window, realtimeMinusMonotonicNs: offset, intervalNs: 2_000_000)
    }

    /// The NIC alone: ping, the fixed-rate load, then a fixed number in flight, one after another.
    func measureNIC(_ clients: UDPClients) throws -> NICFigures {
        let offset = MonotonicClock.realtimeOffset()
        let pings = max(50, Int(options.seconds / 0.002))
        Diagnostics.note("\(label): NIC alone: \(pings) pings, then UDP at \(Int(plan.rate))/s and \(options.window) in flight, \(options.seconds) s each…")
        let ping = try startPing(count: pings, name: "nic-ping")
        guard ping.waitForExit(timeout: options.seconds * 4 + 30) else { throw NetBenchError.run("ping did not finish: \(ping.text.suffix(300))") }
        let pingSummary = Self.ping(ping, window: PhaseWindow(), offset: offset)
        let udp = load(clients, pacing: .rate)
        let saturated = load(clients, pacing: .window(options.window, giveUpMs: 200))
        return NICFigures(ping: pingSummary, udp: udp.ledger.summary(window: PhaseWindow()), window: options.window,
                          saturated: saturated.ledger.summary(window: PhaseWindow()))
    }

    private func load(_ clients: UDPClients, pacing: KVLoad.Pacing) -> (ledger: KVLedger, sendFailures: Int) {
        let load = KVLoad(plan: plan, clients: clients)
        load.start(pacing: pacing)
        MonotonicClock.sleep(until: MonotonicClock.now() + UInt64(options.seconds * 1e9)) // the measure's length
        return finish(load)
    }

    /// Stops `load` once its answers are in (bounded) and moves the next load's first id past its ids.
    private func finish(_ load: KVLoad) -> (ledger: KVLedger, sendFailures: Int) {
        let result = load.stop(drainSeconds: min(2, plan.reuseSeconds))
        plan.firstID += result.ledger.records.count
        return result
    }

    /// Starts `pvmigrate listen --net-bridge` (mutual TLS, the source named src) in the hosts'
    /// namespace and waits until it listens.
    func startDestination() throws {
        try CertificateAuthority.initialize(directory: directory + "/pki", hosts: ["src", "dst=127.0.0.1"])
        let listen = try network.start(in: network.hosts, [Self.binary, "listen", "--address", "127.0.0.1:\(Self.migrationPort)",
                                                           "--tls-dir", directory + "/pki/dst", "--allow-source", "src",
                                                           "--net-bridge", BenchNetwork.bridge, "--net-poll-us", "\(options.pollMicroseconds)"],
                                       log: directory + "/destination.log", environment: ["PVMIGRATE_RUNTIME_DIR": directory + "/dst"])
        destination = listen
        try listen.wait(for: "listening on", what: "pvmigrate listen --net-bridge (the destination)", timeout: 60)
    }

    /// Migrates the VM to the destination (as `pvmigrate send` asks its process to) and returns
    /// the VMM's statistics; afterwards the destination's process runs the VM.
    func migrate() throws -> MigrationStats {
        let runtime = try RuntimeDirectory(environment: ["PVMIGRATE_RUNTIME_DIR": directory + "/src"])
        let client = try ControlClient(name: Self.vmName, runtime: runtime)
        let request = MigrateRequest(destination: Endpoint(host: "127.0.0.1", port: Self.migrationPort),
                                     security: .tls(directory: directory + "/pki/src"))
        let result: JSONValue
        do { result = try client.request(.migrate(request)) } catch { throw NetBenchError.run("the migration failed: \(error)") }
        guard let stats = try? result.decode(MigrationStats.self) else {
            throw NetBenchError.run("the migration answered statistics this pvmigrate cannot read: \(result.jsonText)")
        }
        vmOut = destination
        _ = source?.waitForExit(timeout: 30) // `run --name` ends once its VM migrated away
        return stats
    }

    /// The migration under load: ping and the UDP load run throughout; `seconds` before, the
    /// migration, `seconds` after; then every key is read at the destination.
    func measureMigration(_ clients: UDPClients) throws -> MigrationFigures {
        try startDestination()
        let offset = MonotonicClock.realtimeOffset()
        let ping = try startPing(count: nil, name: "migration-ping")
        let load = KVLoad(plan: plan, clients: clients)
        load.start()
        MonotonicClock.sleep(until: MonotonicClock.now() + UInt64(options.seconds * 1e9)) // load before the migration
        Diagnostics.note("\(label): migrating under load (\(Int(plan.rate)) UDP requests/s, ping every 2 ms)…")
        var window = PhaseWindow(migrationStartNs: MonotonicClock.now())
        let stats: MigrationStats
        do { stats = try migrate() } catch {
            _ = load.stop(drainSeconds: 0)
            ping.interrupt()
            throw error
        }
        window.migrationEndNs = MonotonicClock.now()
        MonotonicClock.sleep(until: MonotonicClock.now() + UInt64(options.seconds * 1e9)) // load after the migration
        let (ledger, failures) = finish(load)
        ping.interrupt()
        var verdict = KVConsistency.checkLoad(ledger.records, plan: ledger.plan)
        var finals: [Int: KVAnswer?] = [:]
        for key in 0..<plan.keys { finals[key] = KVLoad.get(key, on: clients, socket: spare) }
        KVConsistency.verifyFinal(ledger.records, plan: ledger.plan, finals: finals, into: &verdict)
        var figures = MigrationFigures(vmmDowntimeMs: stats.downtimeSeconds * 1000, totalSeconds: stats.totalSeconds, rounds: stats.rounds.count,
                                       udp: ledger.summary(window: window), ping: Self.ping(ping, window: window, offset: offset),
                                       verdict: verdict, udpSendFailures: failures, udpStrayAnswers: ledger.stray)
        figures.vmmPredictedDowntimeMs = stats.predictedDowntimeSeconds * 1000
        figures.vmmPausePhasesMs = stats.pausePhases.flatMap(Self.milliseconds)
        return figures
    }

    /// Ends the VM (`run` and `listen` stop their VMs on SIGINT and print the NIC's counters)
    /// and the destination.
    func stopVM() {
        vmOut?.interrupt()
        destination?.interrupt()
    }

    /// The whole run; the report says what ran and what failed.
    func perform() -> NetBenchReport {
        do {
            try bootGuest()
            let clients = try clients()
            report.nic = try measureNIC(clients)
            if !options.nicOnly { report.migration = try measureMigration(clients) }
        } catch {
            report.failure = "\(error)"
        }
        stopVM()
        report.loadAverageEnd = NetBenchReport.loadAverage()
        return report
    }
}

extension Bench {
    /// `bench --net`: runs, prints the tables, writes --json, cleans up; fails unless every check passed.
    func runNet() throws {
        let run = try NetBenchRun(options: netOptions.settings)
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            run.cleanUp(keepLogs: true)
            Foundation.exit(130)
        }
        defer { interrupt.cancel() }
        let report = run.perform()
        run.cleanUp(keepLogs: !report.passed)
        print(report.table)
        if let json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            do { try encoder.encode(report).write(to: URL(fileURLWithPath: json)) } catch {
                throw Diagnostics.fail(ValidationError("cannot write \(json): \(error.localizedDescription)"))
            }
        }
        if !report.passed { throw ExitCode.failure }
    }
}
