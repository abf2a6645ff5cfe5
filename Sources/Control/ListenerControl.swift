#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Migrate
import Posix

/// A listener's own control socket (`pvmigrate listen --control PATH`, protocol.md §4.2):
/// the same JSON lines as a VM's socket (§4), answering `jobs` — the arrivals in progress and
/// the last ones that ended — so an orchestrator follows incoming migrations without reading
/// the log. Other commands are refused with a pointer to the VMs' own sockets.
///
/// Threads: one accepts; one per connection reads and answers (each answer is a snapshot).
public final class ListenerControl: Sendable {
    private let socket: ListeningSocket
    private let jobs: @Sendable () -> [ArrivalJob]

    /// Binds `path` (a stale socket file there is replaced; a live one is an error).
    public init(path: String, jobs: @escaping @Sendable () -> [ArrivalJob]) throws(ControlError) {
        let path = RuntimeDirectory.absolute(path)
        if (try? LineSocket.connect(path: path)) != nil {
            throw ControlError(.nameTaken, "another listener answers at \(path): choose another --control path")
        }
        unlink(path)
        do { socket = try ListeningSocket(path: path) } catch {
            throw ControlError(.connection, "cannot create the listener's control socket \(path): "
                + "\(error.operation): \(Errno(error.errno).description)")
        }
        self.jobs = jobs
        Thread.detachNewThread { [self] in
            while let connection = socket.accept() {
                Thread.detachNewThread { [self] in serve(connection) }
            }
        }
    }

    public var path: String { socket.path }

    /// Stops answering and removes the socket file.
    public func close() { socket.close() }

    private func serve(_ connection: LineSocket) {
        defer { connection.shutdown() }
        while let line = try? connection.readLine() {
            let response: ControlResponse
            switch ControlRequest.parse(line) {
            case .blank: continue
            case let .refused(id, message): response = .failed(id: id, error: message)
            case let .request(id, .jobs):
                response = .ok(id: id, result: (try? JSONValue(encoding: ArrivalJobs(jobs: jobs()))) ?? [:])
            case let .request(id, request):
                response = .failed(id: id, error: "\(request.command.rawValue): this is a listener's control socket, "
                    + "which answers only jobs; each VM has its own socket (pvmigrate ps, pvmigrate status NAME)")
            }
            guard (try? connection.writeLine(response.line)) != nil else { return }
        }
    }
}
