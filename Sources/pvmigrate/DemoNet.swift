import ArgumentParser
import Foundation
import Migrate
import NetBench

/// `demo --net` (`scripts/demo.sh --net`): a serving guest answers ping and the UDP store
/// before and after a live migration, inside network namespaces the demo creates and deletes
/// (BenchNetwork; needs root). The source and the destination are real `pvmigrate run` and
/// `pvmigrate listen --net-bridge` processes; the client is in its own namespace.
final class NetDemo {
    let run: NetBenchRun
    private var checks: [(String, Bool)] = []

    init(memory: MemorySize) throws {
        run = try NetBenchRun(options: NetBenchSettings(memory: memory.bytes), label: "demo --net")
    }

    private func check(_ what: String, _ ok: Bool) {
        checks.append((what, ok))
        DemoRun.say("    \(ok ? "✔" : "✘") \(what)")
    }

    /// ping -c 3 from the client namespace: true if all three came back.
    private func ping(_ stage: String) throws {
        let out = try run.network.run(in: run.network.clients, ["ping", "-c", "3", "-i", "0.2", "-W", "2", BenchNetwork.guestAddress])
        let summary = out.split(separator: "\n").first { $0.contains("packets transmitted") }.map(String.init) ?? out
        check("ping \(BenchNetwork.guestAddress) \(stage): \(summary)", summary.contains("3 received"))
    }

    private func kv(_ message: String, key: String, _ clients: UDPClients) -> KVAnswer? {
        KVLoad.request(message, key: key, on: clients, socket: run.spare)
    }

    func perform() -> Bool {
        let started = ContinuousClock.now
        do { try steps() } catch {
            DemoRun.say("\ndemo --net: FAILED: \(error)")
            checks.append(("\(error)", false))
        }
        run.stopVM()
        let failed = checks.filter { !$0.1 }
        let seconds = (ContinuousClock.now - started).components.seconds
        DemoRun.say(failed.isEmpty ? "\ndemo --net: all \(checks.count) checks passed in \(seconds) s"
            : "\ndemo --net: \(failed.count) of \(checks.count) checks FAILED: \(failed.map(\.0).joined(separator: "; "))")
        return failed.isEmpty
    }

    private func steps() throws {
        let n = run.network
        DemoRun.step("1. a private network: namespace \(n.hosts) (bridge \(BenchNetwork.bridge), both pvmigrate processes) and "
            + "\(n.clients) (the client, \(BenchNetwork.clientAddress)/24); TEST-NET-1 only, deleted at the end")
        DemoRun.step("2. the source: pvmigrate run --name \(NetBenchRun.vmName) --net bridge=\(BenchNetwork.bridge) "
            + "--cmdline \"workload=serve ip=\(BenchNetwork.guestAddress)/24\"")
        try run.bootGuest()
        for line in run.sourceLog.split(separator: "\n") where line.hasPrefix("pvguest: net") || line.hasPrefix("pvguest: serving") {
            DemoRun.say("    [src] \(line)")
        }
        let clients = try run.clients()

        DemoRun.step("3. the client talks to the guest before the move")
        try ping("before the move")
        let value = "set-before-the-move-\(getpid())"
        check("SET demo \(value) → \(kv("SET demo \(value)", key: "demo", clients).map { "\($0)" } ?? "no answer")",
              kv("GET demo", key: "demo", clients) == .value(value))

        DemoRun.step("4. the destination: pvmigrate listen --net-bridge \(BenchNetwork.bridge) (mutual TLS, accepts only src)")
        try run.startDestination()

        DemoRun.step("5. live migration of the serving guest to the destination's TAP on the bridge")
        let stats = try run.migrate()
        DemoRun.say(String(format: "    migrated in %.2f s; the guest was paused for %.1f ms", stats.totalSeconds, stats.downtimeSeconds * 1000))
        check("the source process ended: the VM runs in one place only", run.sourceEnded)

        DemoRun.step("6. the same client, after the move (the guest announced its MAC on its new port)")
        try ping("after the move")
        let after = kv("GET demo", key: "demo", clients)
        check("GET demo → \(after.map { "\($0)" } ?? "no answer"): the value SET before the move", after == .value(value))
        _ = kv("SET moved yes", key: "moved", clients)
        check("SET moved yes, then GET moved at the destination", kv("GET moved", key: "moved", clients) == .value("yes"))
    }
}

extension Demo {
    func runNet() throws {
        let demo = try NetDemo(memory: memory)
        let run = demo.run
        let interrupt = SignalWatcher(SIGINT, SIGTERM) {
            run.cleanUp(keepLogs: true)
            Foundation.exit(130)
        }
        defer { interrupt.cancel() }
        let passed = demo.perform()
        demo.run.cleanUp(keepLogs: !passed)
        if !passed { throw ExitCode.failure }
    }
}
