import Core
import Foundation
import Logging
import Migrate

/// `listen --metrics HOST:PORT`: a minimal HTTP/1.1 responder for Prometheus scrapes
/// (docs/operations.md "Metrics"). `GET /metrics` answers the exposition; any other path is
/// 404, any other method 405, a request line or header block over `maximumRequestBytes` 431,
/// anything unparseable 400. One request per connection (`Connection: close`).
///
/// It runs on its own listener and threads: a slow or hostile scraper can hold at most
/// `maximumClients` connections for at most `requestDeadline` seconds each, and never a
/// migration's thread or listener.
public final class MetricsEndpoint: @unchecked Sendable {
    public static let maximumRequestBytes = 8192
    public static let maximumClients = 8
    public static let requestDeadline = 10.0

    private let listener: StreamListener
    private let body: @Sendable () -> [UInt8]
    private let clients = Locked(0)

    /// Binds `host:port` (port 0: any free port, `port` says which) and serves `body()` as
    /// the exposition of each scrape.
    public init(host: String, port: UInt16, body: @escaping @Sendable () -> [UInt8]) throws(TransportError) {
        var limits = ListenerLimits()
        limits.maxPendingConnections = Self.maximumClients
        limits.handshakeTimeout = Self.requestDeadline
        listener = try StreamListener(host: host, port: port, mode: .insecure, limits: limits)
        self.body = body
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    public var port: UInt16 { listener.port }

    public func close() { listener.close() }

    private func acceptLoop() {
        while true {
            let stream: ByteStream
            do { stream = try listener.accept() } catch {
                if error == .closed { return }
                continue // a refused or failed connection: the listener said why; nothing to answer
            }
            let admitted = clients.withLock { n -> Bool in
                guard n < Self.maximumClients else { return false }
                n += 1
                return true
            }
            guard admitted else { stream.close(); continue }
            Thread.detachNewThread { [self] in
                defer { clients.withLock { $0 -= 1 } }
                serve(stream)
            }
        }
    }

    private func serve(_ stream: ByteStream) {
        // A deadline for the whole request, not only per read: a byte now and then must not hold on.
        let deadline = DispatchWorkItem { stream.close() }
        DispatchQueue.global().asyncAfter(deadline: .now() + Self.requestDeadline, execute: deadline)
        defer { deadline.cancel(); stream.close() }
        stream.setTimeout(seconds: Self.requestDeadline)
        let response: Response
        switch Self.readHead(stream) {
        case .none: return // closed or timed out: no one to answer
        case let .some(.failure(status)): response = Response(status: status)
        case let .some(.success(head)): response = Self.respond(to: head, body: body)
        }
        let bytes = response.bytes
        try? bytes.withUnsafeBytes { try stream.writeAll($0) }
    }

    /// The request's head (request line and headers, up to the blank line), or the status
    /// that refuses it; nil when the connection ended first.
    static func readHead(_ stream: ByteStream) -> Result<String, Status>? {
        var head: [UInt8] = []
        var byte: UInt8 = 0
        let end: [UInt8] = Array("\r\n\r\n".utf8)
        while !head.ends(with: end) {
            guard head.count < maximumRequestBytes else { return .failure(.requestHeaderFieldsTooLarge) }
            do { try withUnsafeMutableBytes(of: &byte) { try stream.readExactly($0) } } catch { return nil }
            head.append(byte)
        }
        guard let text = String(validating: head, as: UTF8.self) else { return .failure(.badRequest) }
        return .success(text)
    }

    /// The answer to one request head.
    static func respond(to head: String, body: () -> [UInt8]) -> Response {
        // "\r\n" is one Character in Swift: cut at it as a whole.
        let firstLine = head.components(separatedBy: "\r\n").first ?? ""
        let requestLine = firstLine.split(separator: " ", omittingEmptySubsequences: false)
        guard requestLine.count == 3, requestLine[2].hasPrefix("HTTP/1.") else { return Response(status: .badRequest) }
        let path = requestLine[1].prefix { $0 != "?" }
        guard path == "/metrics" else { return Response(status: .notFound) }
        guard requestLine[0] == "GET" else { return Response(status: .methodNotAllowed) }
        return Response(status: .ok, body: body())
    }

    enum Status: Int, Error {
        case ok = 200, badRequest = 400, notFound = 404, methodNotAllowed = 405, requestHeaderFieldsTooLarge = 431

        var reason: String {
            switch self {
            case .ok: "OK"
            case .badRequest: "Bad Request"
            case .notFound: "Not Found"
            case .methodNotAllowed: "Method Not Allowed"
            case .requestHeaderFieldsTooLarge: "Request Header Fields Too Large"
            }
        }
    }

    struct Response {
        var status: Status
        var body: [UInt8] = []

        init(status: Status, body: [UInt8]? = nil) {
            self.status = status
            self.body = body ?? Array("\(status.rawValue) \(status.reason)\n".utf8)
        }

        var bytes: [UInt8] {
            let type = status == .ok ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain; charset=utf-8"
            var head = "HTTP/1.1 \(status.rawValue) \(status.reason)\r\nContent-Type: \(type)\r\n"
                + "Content-Length: \(body.count)\r\nConnection: close\r\n"
            if status == .methodNotAllowed { head += "Allow: GET\r\n" }
            return Array((head + "\r\n").utf8) + body
        }
    }
}

private extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool { count >= suffix.count && self[(count - suffix.count)...].elementsEqual(suffix) }
}
