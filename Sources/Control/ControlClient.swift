#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Posix

/// A client of one named VM's control socket (protocol.md §4). Not thread-safe: one request
/// at a time per client (open a second client to, say, cancel while a `migrate` streams).
public final class ControlClient {
    public let name: String
    public let socketPath: String
    private let socket: LineSocket
    private var nextID: Int64 = 1

    /// Connects to the VM's socket.
    /// - Throws: `ControlError` `.noSuchVM` when no VM of that name answers on this host.
    public init(name: String, runtime: RuntimeDirectory) throws {
        try RuntimeDirectory.validate(name: name)
        self.name = name
        socketPath = runtime.socketPath(for: name)
        do {
            socket = try LineSocket.connect(path: socketPath)
        } catch {
            switch error.errno {
            case ENOENT, ECONNREFUSED:
                throw ControlError(.noSuchVM, "no VM named \(name) on this host (pvmigrate ps lists them)")
            case EACCES, EPERM:
                throw ControlError(.connection, "cannot reach VM \(name) at \(socketPath): permission denied; "
                    + "run as the user that started it")
            case ENAMETOOLONG:
                throw ControlError(.connection, "the socket path \(socketPath) is too long for a Unix socket; "
                    + "set PVMIGRATE_RUNTIME_DIR to a shorter directory")
            default:
                throw ControlError(.connection, "cannot reach VM \(name) at \(socketPath): "
                    + "\(Errno(error.errno).description)")
            }
        }
    }

    /// Connects to a listener's control socket (`pvmigrate listen --control PATH`, protocol.md
    /// §4.2); messages name it by its path.
    public init(listenerSocket path: String) throws(ControlError) {
        name = path
        socketPath = path
        do { socket = try LineSocket.connect(path: path) } catch {
            throw ControlError(error.errno == ENOENT || error.errno == ECONNREFUSED ? .noSuchVM : .connection,
                               "no listener answers at \(path) (\(Errno(error.errno).description)); "
                                   + "start one with `pvmigrate listen --control \(path)`")
        }
    }

    /// How long to wait for each line of an answer (nil: for ever, the default — a migration
    /// may take minutes between events).
    public var timeout: Double? {
        didSet { socket.setReceiveTimeout(timeout) }
    }

    /// Sends one request; calls `onEvent` for each event line; returns the final result object
    /// or throws the error string as `ControlError` (`.refused`).
    public func request(_ request: ControlRequest,
                        onEvent: (ControlEvent) -> Void = { _ in }) throws -> JSONValue {
        let id = nextID
        nextID += 1
        let cmd = request.command.rawValue
        // A request encodes to an object (strings, numbers, booleans): this cannot fail.
        guard case var .object(message) = try JSONValue(encoding: request) else {
            throw ControlError(.protocolViolation, "\(cmd) did not encode to a JSON object")
        }
        message["id"] = .int(id)
        do { try socket.writeLine(Array(JSONValue.object(message).jsonText.utf8)) } catch {
            throw ControlError(.connection, "VM \(name) closed its control socket (\(Errno(error.errno).description)); "
                + "it may have ended — pvmigrate ps lists the VMs")
        }
        while true {
            let line: [UInt8]?
            do { line = try socket.readLine() } catch {
                if error.errno == ETIMEDOUT {
                    throw ControlError(.connection, "VM \(name) did not answer \(cmd) within \(timeout ?? 0) s; "
                        + "its process may be stuck")
                }
                if error.errno == EMSGSIZE {
                    throw ControlError(.protocolViolation, "VM \(name) sent a line longer than 1 MiB")
                }
                throw ControlError(.connection, "reading from VM \(name)'s control socket failed: "
                    + Errno(error.errno).description)
            }
            guard let line else {
                throw ControlError(.connection, "VM \(name) closed its control socket before answering \(cmd); "
                    + "it may have ended — pvmigrate ps lists the VMs")
            }
            guard let response = ControlResponse(line: line) else {
                throw ControlError(.protocolViolation, "VM \(name) sent a malformed line: \(String(decoding: line.prefix(200), as: UTF8.self))")
            }
            guard response.id.int64 == id else { continue }
            switch response {
            case let .event(_, event): onEvent(event)
            case let .ok(_, result): return result
            case let .failed(_, error): throw ControlError(.refused, error)
            }
        }
    }
}
