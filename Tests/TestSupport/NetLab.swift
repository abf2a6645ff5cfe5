import Foundation
import NetBench

/// A private network on this machine for PV NIC tests (protocol.md §5): two network
/// namespaces the lab creates and deletes — `<id>h` (the "host": a bridge `pvmtbr` and the
/// pvmigrate process, whose TAP joins the bridge) and `<id>c` (the client: a veth into the
/// bridge with 192.0.2.1/24). Names start with `pvmt` plus a random part, so parallel runs
/// never collide; only TEST-NET-1 addresses are used; IPv6 is off in both, so the only
/// traffic is the test's own. The topology is `bench --net`'s (`BenchNetwork.makeTopology`). Needs root, /dev/net/tun and iproute2.
public final class NetLab: @unchecked Sendable {
    public static let clientAddress = "192.0.2.1"
    public static let guestAddress = "192.0.2.2"
    public static let bridge = "pvmtbr"
    public static let clientInterface = "pvmtc"

    /// Nil when the lab can be built here, else why not (for a loud skip).
    public static let unavailable: String? = {
        if getuid() != 0 { return "needs root (network namespaces, TAP devices)" }
        if !FileManager.default.fileExists(atPath: "/dev/net/tun") { return "needs /dev/net/tun" }
        if !FileManager.default.fileExists(atPath: "/dev/kvm") { return "needs /dev/kvm" }
        for name in ["ip", "ping", "arping", "python3"] where find(tool: name) == nil {
            return "needs \(name) on PATH (scripts/setup.sh installs iproute2, iputils-ping, iputils-arping)"
        }
        return nil
    }()

    public let id: String
    public var hostNamespace: String { id + "h" }
    public var clientNamespace: String { id + "c" }
    private var processes: [Process] = []

    /// `prefix`: the start of the namespaces' names (a test line's own, e.g. "pvmt-nm"); with
    /// the random part and the h/c suffix at most 15 characters.
    public init(prefix: String = "pvmt") throws {
        id = prefix + String(UInt32.random(in: 0...UInt32.max) >> 8, radix: 16)
        do {
            try BenchNetwork.makeTopology(hosts: hostNamespace, clients: clientNamespace, bridge: Self.bridge,
                                          hostVeth: "pvmtv", clientInterface: Self.clientInterface,
                                          clientAddress: Self.clientAddress)
        } catch {
            close()
            throw error
        }
    }

    deinit { close() }

    /// Stops every process the lab started, then deletes both namespaces (and with them the
    /// bridge, the veth pair and any TAP left). Safe to call twice.
    public func close() {
        for p in processes where p.isRunning {
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
        }
        processes.removeAll()
        for ns in [hostNamespace, clientNamespace] { _ = try? Self.ip(["netns", "del", ns]) }
    }

    /// Runs a command in the client namespace to its end (killed after `timeout` seconds).
    public func client(_ arguments: [String], timeout: Double = 60) throws -> CommandOutput {
        try Self.run(["ip", "netns", "exec", clientNamespace] + arguments, timeout: timeout, check: false)
    }

    /// Runs a command in the host namespace to its end.
    public func host(_ arguments: [String], timeout: Double = 60) throws -> CommandOutput {
        try Self.run(["ip", "netns", "exec", hostNamespace] + arguments, timeout: timeout, check: false)
    }

    /// Starts `pvmigrate run --net bridge=pvmtbr …` in the host namespace.
    public func startVM(_ arguments: [String], environment: [String: String] = [:]) throws -> LabProcess {
        try startPVMigrate(["run", "--net", "bridge=\(Self.bridge)"] + arguments, environment: environment)
    }

    /// Starts `pvmigrate arguments…` in the host namespace (e.g. `listen --net-bridge pvmtbr`),
    /// with `environment` added (e.g. its own PVMIGRATE_RUNTIME_DIR); stopped by `close()`.
    public func startPVMigrate(_ arguments: [String], environment: [String: String] = [:]) throws -> LabProcess {
        guard let binary = PVMigrateBinary.path else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "the pvmigrate binary was not found: run `swift build` first"])
        }
        return try start(inHost: true, environment.map { "\($0.key)=\($0.value)" }.sorted() + [binary] + arguments)
    }

    /// Starts a command in the host (or client) namespace in the background; stopped by `close()`.
    public func start(inHost: Bool, _ arguments: [String]) throws -> LabProcess {
        let p = LabProcess(["ip", "netns", "exec", inHost ? hostNamespace : clientNamespace, "env"] + arguments)
        processes.append(p.process)
        try p.start()
        return p
    }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> CommandOutput { try run(["ip"] + arguments) }

    /// Runs a command to its end (killed after `timeout` seconds: that bounds a hang); with
    /// `check`, throws with its output unless it exits 0.
    @discardableResult
    static func run(_ arguments: [String], timeout: Double = 60, check: Bool = true) throws -> CommandOutput {
        let p = LabProcess(arguments)
        try p.start()
        let finished = p.waitForExit(timeout: timeout)
        if !finished {
            kill(p.process.processIdentifier, SIGKILL)
            p.process.waitUntilExit()
        }
        let out = CommandOutput(status: finished ? p.process.terminationStatus : -1, stdout: p.stdout, stderr: p.stderr)
        if check && out.status != 0 {
            throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey:
                "\(arguments.joined(separator: " ")) failed (status \(out.status)\(finished ? "" : ", killed after \(timeout) s")): \(out.text)"])
        }
        return out
    }

    private static func find(tool name: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/sbin:/usr/bin:/sbin:/bin"
        return (path.split(separator: ":").map(String.init) + ["/usr/sbin", "/sbin"])
            .map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// A process whose standard output and error are collected as they come and can be waited on.
public final class LabProcess: @unchecked Sendable {
    public let process = Process()
    private let condition = NSCondition()
    private var out = Data(), err = Data(), open = 2

    init(_ arguments: [String]) {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        process.standardInput = FileHandle.nullDevice
    }

    func start() throws {
        let o = Pipe(), e = Pipe()
        process.standardOutput = o
        process.standardError = e
        try process.run()
        for (pipe, isOut) in [(o, true), (e, false)] {
            Thread.detachNewThread { [self] in
                let h = pipe.fileHandleForReading
                while true {
                    let d = h.availableData
                    condition.withLock {
                        if d.isEmpty { open -= 1 } else if isOut { out += d } else { err += d }
                        condition.broadcast()
                    }
                    if d.isEmpty { return }
                }
            }
        }
    }

    public var stdout: String { condition.withLock { String(decoding: out, as: UTF8.self) } }
    public var stderr: String { condition.withLock { String(decoding: err, as: UTF8.self) } }
    public var text: String { stdout + stderr }

    /// Waits until standard output or error contains `needle` (false if the process ended or
    /// `timeout` passed first).
    public func wait(for needle: String, timeout: Double = Wait.hangBound) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        return condition.withLock {
            while true {
                let text = String(decoding: out, as: UTF8.self) + String(decoding: err, as: UTF8.self)
                if text.contains(needle) { return true }
                if open == 0 || !condition.wait(until: deadline) {
                    return (String(decoding: out, as: UTF8.self) + String(decoding: err, as: UTF8.self)).contains(needle)
                }
            }
        }
    }

    /// Waits for the process to end and its output to be read; false on timeout.
    @discardableResult
    public func waitForExit(timeout: Double = Wait.hangBound) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        let closed = condition.withLock {
            while open > 0 { if !condition.wait(until: deadline) { return false } }
            return true
        }
        guard closed else { return false }
        process.waitUntilExit()
        return true
    }

    /// SIGINT (pvmigrate run stops its VM and reports), then waits for the end.
    public func interrupt() {
        if process.isRunning { kill(process.processIdentifier, SIGINT) }
        waitForExit()
    }
}
