#if canImport(Glibc)
import Glibc
#endif
import Core
import Foundation
import Migrate
import Posix

/// How a hosted VM left this host.
public enum VMHostEnd: Sendable {
    /// The VM ended here: the guest exited or halted, or it was stopped.
    case exited(VMExit)
    /// The VM migrated away and runs at the destination now.
    case migrated(MigrationStats)
}

/// Hosts one named VM in this process: binds its control socket (throws if the name is
/// taken by a live VM; removes a stale socket), serves protocol.md §4 on background threads,
/// runs `migrate` with `MigrationSender` (one at a time), and removes the socket when the VM
/// ends or migrates away.
///
/// The caller starts the machine (before or after creating the host). Threads: one accepts
/// connections, one per connection reads requests, one per request answers it (so a `status`
/// is answered while a `migrate` streams its rounds on the same connection), and one waits
/// for the VM's end.
public final class VMHost: @unchecked Sendable {
    public let name: String
    public let machine: Machine
    public let console: ConsoleRing
    public let runtime: RuntimeDirectory
    public let kernelSHA256: [UInt8]
    /// The peer a received VM came from (`listen`), shown by `status`.
    public let arrivedFrom: String?
    public let socketPath: String
    let startedAt = Date()
    private let listener: ListeningSocket

    /// A migration in progress.
    struct Migration {
        var sender: MigrationSender
        var destination: String
        var startedAt: Date
        var last: RoundStats?
        /// Sums over the finished rounds (the `job` command).
        var bytes: UInt64 = 0
        var pages = 0
    }

    /// A migration whose outcome is unknown (protocol.md §3.6.5): the VM is paused here.
    struct Unresolved {
        var migration: UnresolvedMigration
        var sender: MigrationSender
        var since = Date()
        var attempts = 0
        var lastError: String?
    }

    let condition = NSCondition()
    // Guarded by `condition`:
    var migration: Migration?
    var unresolved: Unresolved?
    var migrated: (stats: MigrationStats, destination: String)?
    /// The last migration that ended here (the `job` command, when none is in progress).
    var lastJob: MigrationJob?
    private var end: VMHostEnd?
    private var drained = false
    private var activeRequests = 0
    private var connections: [ObjectIdentifier: Connection] = [:]
    var cachedExecution: ExecutionMode?

    public init(name: String, machine: Machine, console: ConsoleRing, runtime: RuntimeDirectory,
                kernelSHA256: [UInt8], arrivedFrom: String? = nil) throws {
        try RuntimeDirectory.validate(name: name)
        self.name = name
        self.machine = machine
        self.console = console
        self.runtime = runtime
        self.kernelSHA256 = kernelSHA256
        self.arrivedFrom = arrivedFrom
        socketPath = runtime.socketPath(for: name)
        listener = try Self.bind(name: name, path: socketPath, runtime: runtime)
        Thread.detachNewThread { [self] in acceptConnections() }
        Thread.detachNewThread { [self] in awaitEnd() }
    }

    /// Blocks until the VM is gone from this host: it exited, was stopped, or migrated away.
    /// By then the socket is removed and every request in flight has been answered.
    public func waitUntilGone() -> VMHostEnd {
        condition.withLock {
            while !drained { condition.wait() }
            return end!
        }
    }

    /// The VM's end, once it is gone (nil while it runs here).
    public var gone: VMHostEnd? { condition.withLock { drained ? end : nil } }

    /// Where the VM went, once it has migrated away.
    public var migratedTo: String? { condition.withLock { migrated?.destination } }

    /// Stops the VM (cancelling a migration in progress first).
    public func stop() {
        condition.withLock { migration?.sender.cancel() }
        machine.stop()
    }

    /// Blocks until the VM has ended and its socket is removed (not waiting for requests).
    func waitForEnd() {
        condition.withLock { while end == nil { condition.wait() } }
    }

    var hasEnded: Bool { condition.withLock { end != nil } }
    /// `condition` held.
    var hasEndedLocked: Bool { end != nil }

    // MARK: Socket

    /// Binds `path` unless a live VM answers there. A lock file serialises the check with the
    /// bind, so two processes cannot both take a name.
    private static func bind(name: String, path: String, runtime: RuntimeDirectory) throws -> ListeningSocket {
        let lockFD = open(runtime.vmsDirectory + "/.lock", O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        if lockFD >= 0 { _ = flock(lockFD, LOCK_EX) }
        defer { if lockFD >= 0 { close(lockFD) } }
        let taken = ControlError(.nameTaken, "a VM named \(name) is already running on this host; "
            + "choose another name, or stop that one with `pvmigrate stop \(name)`")
        if access(path, F_OK) == 0 {
            if (try? LineSocket.connect(path: path)) != nil { throw taken }
            unlink(path) // stale: nobody answers
        }
        do {
            return try ListeningSocket(path: path)
        } catch {
            switch error.errno {
            case EADDRINUSE: throw taken
            case ENAMETOOLONG:
                throw ControlError(.connection, "the socket path \(path) is too long for a Unix socket; "
                    + "set PVMIGRATE_RUNTIME_DIR to a shorter directory")
            default:
                throw ControlError(.connection, "cannot create the control socket \(path): "
                    + "\(Errno(error.errno).description); set PVMIGRATE_RUNTIME_DIR to a directory you can write")
            }
        }
    }

    private func acceptConnections() {
        while let socket = listener.accept() {
            let connection = Connection(socket)
            let open = condition.withLock { () -> Bool in
                guard !drained else { return false }
                connections[ObjectIdentifier(connection)] = connection
                return true
            }
            guard open else { socket.shutdown(); continue }
            Thread.detachNewThread { [self] in serve(connection) }
        }
    }

    /// Waits for the VM's exit (and for a migration to settle: a successful one stops the
    /// VM just before it returns), then removes the socket and ends console followers.
    private func awaitEnd() {
        let exit = machine.waitForExit()
        condition.withLock {
            while migration != nil { condition.wait() }
            end = migrated.map { .migrated($0.stats) } ?? .exited(exit)
            condition.broadcast()
        }
        listener.close()
        console.finish()
        let deadline = Date(timeIntervalSinceNow: 3)
        let open = condition.withLock { () -> [Connection] in
            while activeRequests > 0, condition.wait(until: deadline) {}
            drained = true
            condition.broadcast()
            return Array(connections.values)
        }
        open.forEach { $0.socket.shutdown() }
    }

    // MARK: Requests

    /// One client connection; its console subscriptions end when it closes.
    final class Connection: @unchecked Sendable {
        let socket: LineSocket
        private let subscriptions = Locked<[ConsoleRing.Subscription]>([])

        init(_ socket: LineSocket) { self.socket = socket }

        @discardableResult
        func send(_ response: ControlResponse) -> Bool {
            (try? socket.writeLine(response.line)) != nil
        }

        func track(_ s: ConsoleRing.Subscription) { subscriptions.withLock { $0.append(s) } }

        func closed() { subscriptions.withLock { all in all.forEach { $0.cancel() }; all = [] } }
    }

    /// Where one request's events and final response go.
    struct Reply {
        let id: JSONValue
        let connection: Connection

        @discardableResult
        func event(_ event: ControlEvent) -> Bool {
            connection.send(.event(id: id, event))
        }

        func ok(_ result: JSONValue = [:]) { connection.send(.ok(id: id, result: result)) }

        /// A typed result (`VMStatus`, `MigrationStats`, …): numbers and strings, it encodes.
        func ok(_ result: some Encodable) { ok((try? JSONValue(encoding: result)) ?? [:]) }

        func fail(_ message: String) { connection.send(.failed(id: id, error: message)) }
    }

    private func serve(_ connection: Connection) {
        defer {
            connection.closed()
            condition.withLock { _ = connections.removeValue(forKey: ObjectIdentifier(connection)) }
        }
        while true {
            let line: [UInt8]?
            do { line = try connection.socket.readLine() } catch {
                Reply(id: .null, connection: connection).fail("request line longer than 1 MiB: closing the connection")
                return
            }
            guard let line else { return }
            let request: ControlRequest, reply: Reply
            switch ControlRequest.parse(line) {
            case .blank: continue
            case let .refused(id, message):
                Reply(id: id, connection: connection).fail(message)
                continue
            case let .request(id, parsed):
                request = parsed
                reply = Reply(id: id, connection: connection)
            }
            condition.withLock { activeRequests += 1 }
            Thread.detachNewThread { [self] in
                defer { condition.withLock { activeRequests -= 1; condition.broadcast() } }
                handle(request, reply, connection)
            }
        }
    }

    private func handle(_ request: ControlRequest, _ reply: Reply, _ connection: Connection) {
        switch request {
        case .status: reply.ok(status())
        case .stop: stopRequest(reply)
        case let .console(follow): console(follow: follow, reply, connection)
        case .selfcheck: selfcheck(reply)
        case let .migrate(arguments): migrate(arguments, reply)
        case .cancel: cancelRequest(reply)
        case let .recover(force): recoverRequest(force: force, reply)
        case .job: reply.ok(job())
        case .jobs: reply.fail("jobs is a listener's command (pvmigrate listen --control PATH); ask VM \(name) for its job")
        case let .save(arguments): save(arguments, reply)
        }
    }

    /// Records a successful migration (before the host notices the VM stopped).
    func finishMigration(success: (stats: MigrationStats, destination: String)?) {
        condition.withLock {
            if let success { migrated = success; removeHandOverRecord() }
            migration = nil
            condition.broadcast()
        }
    }
}
