// The private network `bench --net` and `demo --net` run in (issue 14): two network
// namespaces on this machine, made at the start and deleted at the end — also after a failure
// or Ctrl-C (the caller's signal handler calls `close()`), and, for a run that was killed,
// by the next run (`removeStale`):
//
//   <prefix><pid>h  "the hosts": bridge pvmt-nbbr; the source's and the destination's
//                   pvmigrate processes run here, so both TAPs join the bridge; the migration
//                   stream goes over this namespace's loopback
//   <prefix><pid>c  "the clients": ping and the UDP generator, 192.0.2.1/24 on a veth whose
//                   other end is a bridge port
//
// Only TEST-NET-1 addresses (192.0.2.0/24), IPv6 off, no route out: nothing here reaches,
// or is reachable from, outside. Names carry the prefix "pvmt-nb" (≤ 15 bytes).

import Core
import Foundation

public final class BenchNetwork: @unchecked Sendable {
    public static let prefix = "pvmt-nb"
    public static let bridge = "pvmt-nbbr"
    public static let clientInterface = "pvmt-nbc"
    public static let clientAddress = "192.0.2.1"
    public static let guestAddress = "192.0.2.2"

    public let hosts: String
    public let clients: String
    /// The client namespace's path for setns (UDPClients).
    public var clientsPath: String { "/run/netns/" + clients }
    private let started = Locked<[Process]>([])
    private let closed = Locked(false)

    /// What this machine lacks for the network (root, /dev/net/tun, iproute2, ping), or nil.
    public static var unavailable: String? {
        if getuid() != 0 { return "root (network namespaces, a bridge and TAP devices): run it with sudo" }
        for device in ["/dev/net/tun", "/dev/kvm"] where !FileManager.default.fileExists(atPath: device) {
            return "\(device) on this machine"
        }
        for tool in ["ip", "ping"] where find(tool) == nil {
            return "\(tool) on PATH (scripts/setup.sh installs iproute2 and iputils-ping)"
        }
        return nil
    }

    /// Creates the namespaces, the bridge and the client's veth (after deleting what killed
    /// runs left); on a failure deletes what it made.
    public init() throws(NetBenchError) {
        if let missing = Self.unavailable { throw .requirement(missing) }
        Self.removeStale()
        let tag = String(getpid(), radix: 16)
        hosts = Self.prefix + tag + "h"
        clients = Self.prefix + tag + "c"
        do {
            try Self.makeTopology(hosts: hosts, clients: clients, bridge: Self.bridge, hostVeth: "pvmt-nbv",
                                  clientInterface: Self.clientInterface, clientAddress: Self.clientAddress)
        } catch {
            close()
            throw error
        }
    }

    /// Creates namespaces `hosts` and `clients` (loopback up, IPv6 off), a bridge in `hosts`
    /// and a veth pair from it (`hostVeth`, a bridge port) to `clients` (`clientInterface`
    /// with `clientAddress`/24). Shared with the tests' NetLab; the caller deletes both
    /// namespaces on a failure.
    public static func makeTopology(hosts: String, clients: String, bridge: String, hostVeth: String,
                                    clientInterface: String, clientAddress: String) throws(NetBenchError) {
        for ns in [hosts, clients] {
            try ip(["netns", "add", ns])
            try ip(["-n", ns, "link", "set", "lo", "up"])
            try run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                     "net.ipv6.conf.default.disable_ipv6=1"])
        }
        try ip(["-n", hosts, "link", "add", bridge, "type", "bridge"])
        try ip(["-n", hosts, "link", "set", bridge, "up"])
        try ip(["-n", hosts, "link", "add", hostVeth, "type", "veth", "peer", "name", clientInterface, "netns", clients])
        try ip(["-n", hosts, "link", "set", hostVeth, "master", bridge, "up"])
        try ip(["-n", clients, "addr", "add", clientAddress + "/24", "dev", clientInterface])
        try ip(["-n", clients, "link", "set", clientInterface, "up"])
    }

    deinit { close() }

    /// Ends every process started here (SIGKILL, by its own pid), then deletes both namespaces
    /// (the bridge, the veth pair and any TAP go with them). Safe to call twice and from a
    /// signal handler's thread.
    public func close() {
        guard !closed.withLock({ c in defer { c = true }; return c }) else { return }
        for p in started.withLock({ $0 }) where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        for ns in [hosts, clients] { _ = try? Self.ip(["netns", "del", ns]) }
    }

    /// A namespace of this harness (`<prefix><hex pid>[hc]`) whose run's process has ended.
    public static func isStale(_ name: String) -> Bool {
        guard name.hasPrefix(prefix), name.count > prefix.count + 1, "hc".contains(name.last!),
              let pid = Int32(name.dropFirst(prefix.count).dropLast(), radix: 16) else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }

    /// Deletes namespaces named `<prefix><hex pid>[hc]` whose pid no longer runs (a run that was
    /// killed before it could clean up), after ending the processes that run was running in them
    /// (`ip netns pids`: its VMs and pings, which outlive a killed parent).
    static func removeStale() {
        guard let list = try? run(["ip", "netns", "list"]) else { return }
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            guard isStale(name) else { continue }
            let inside = (try? run(["ip", "netns", "pids", name]))?.split(separator: "\n").compactMap { Int32($0) } ?? []
            for orphan in inside { kill(orphan, SIGKILL) }
            _ = try? ip(["netns", "del", name])
        }
    }

    /// Starts `arguments` in namespace `namespace`, its standard output and error into `log`.
    public func start(in namespace: String, _ arguments: [String], log: String,
                      environment: [String: String] = [:]) throws(NetBenchError) -> LoggedProcess {
        let p = try LoggedProcess(["ip", "netns", "exec", namespace] + arguments, log: log, environment: environment)
        started.withLock { $0.append(p.process) }
        return p
    }

    /// Runs `arguments` in `namespace` to its end and returns its output (bounded by `timeout` s).
    public func run(in namespace: String, _ arguments: [String], timeout: Double = 60) throws(NetBenchError) -> String {
        try Self.run(["ip", "netns", "exec", namespace] + arguments, timeout: timeout)
    }

    static func ip(_ arguments: [String]) throws(NetBenchError) { _ = try run(["ip"] + arguments) }

    /// Runs a command to its end (killed after `timeout` s, which bounds a hang); throws with
    /// its output unless it exits 0.
    @discardableResult
    static func run(_ arguments: [String], timeout: Double = 60) throws(NetBenchError) -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        do { try p.run() } catch { throw .command(arguments.joined(separator: " "), "\(error)") }
        // A command still running after `timeout` is killed, which also ends the read below.
        let watchdog = DispatchWorkItem { if p.isRunning { kill(p.processIdentifier, SIGKILL) } }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: watchdog)
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        watchdog.cancel()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationReason == .exit, p.terminationStatus == 0 else {
            throw .command(arguments.joined(separator: " "), text)
        }
        return text
    }

    static func find(_ tool: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        return (path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin", "/usr/bin", "/bin"])
            .map { $0 + "/" + tool }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// A process whose output goes to a log file (kept for a failed run), searched as it grows.
public final class LoggedProcess: @unchecked Sendable {
    public let process = Process()
    public let log: String

    init(_ arguments: [String], log: String, environment: [String: String]) throws(NetBenchError) {
        self.log = log
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        process.standardInput = FileHandle.nullDevice
        guard FileManager.default.createFile(atPath: log, contents: nil),
              let handle = FileHandle(forWritingAtPath: log) else { throw .run("cannot create the log \(log)") }
        process.standardOutput = handle
        process.standardError = handle
        do { try process.run() } catch { throw .command(arguments.joined(separator: " "), "\(error)") }
        try? handle.close()
    }

    public var text: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Waits until the log contains `needle`; throws if the process ended first or `timeout`
    /// seconds passed (which only bounds a hang). The log is a file: it is read again every 20 ms.
    public func wait(for needle: String, what: String, timeout: Double = 120) throws(NetBenchError) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !text.contains(needle) {
            guard process.isRunning else {
                throw .run("\(what): the process ended (status \(process.terminationStatus)) before printing "
                    + "\"\(needle)\"; its log (\(log)) ends: \(text.suffix(800))")
            }
            guard Date() < deadline else {
                throw .run("\(what): no \"\(needle)\" within \(Int(timeout)) s; its log (\(log)) ends: \(text.suffix(800))")
            }
            Thread.sleep(forTimeInterval: 0.02) // re-reading the log file: a process writing to a file has no other signal
        }
    }

    /// Waits for the end (bounded by `timeout` s, then SIGKILL); true if it ended by itself.
    @discardableResult
    public func waitForExit(timeout: Double) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        guard process.isRunning else { return true }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        return false
    }

    /// SIGINT, then waits for the end (bounded by `timeout` s).
    @discardableResult
    public func interrupt(timeout: Double = 30) -> Bool {
        if process.isRunning { kill(process.processIdentifier, SIGINT) }
        return waitForExit(timeout: timeout)
    }
}
