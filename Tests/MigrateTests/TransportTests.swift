import Foundation
import Synchronization
import Testing

@testable import Migrate

// End-to-end tests of the transport: real sockets on 127.0.0.1, real TLS.
// Blocking calls run on their own threads (`Background`), never on the
// test's cooperative thread pool alone.

// MARK: - Fixtures

/// Certificates for the tests, made once: "src" and "dst" from one CA,
/// "rogue" from another CA, and "impostor" = rogue's certificate and key
/// next to the good CA (so it trusts our listener but we must not trust it).
struct TLSFixture: Sendable {
    let src: TLSFiles
    let dst: TLSFiles
    let rogue: TLSFiles
    let impostor: TLSFiles

    static let shared = Result { try TLSFixture() }

    private init() throws {
        let good = makeTemporaryDirectory("tls-good")
        let other = makeTemporaryDirectory("tls-other")
        try CertificateAuthority.initialize(directory: good, hosts: ["src", "dst=127.0.0.1"])
        try CertificateAuthority.initialize(directory: other, hosts: ["rogue=127.0.0.1"])
        let impostor = "\(other)/impostor"
        try FileManager.default.createDirectory(atPath: impostor, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: "\(good)/ca.pem", toPath: "\(impostor)/ca.pem")
        try FileManager.default.copyItem(atPath: "\(other)/rogue/cert.pem", toPath: "\(impostor)/cert.pem")
        try FileManager.default.copyItem(atPath: "\(other)/rogue/key.pem", toPath: "\(impostor)/key.pem")
        src = try TLSFiles(directory: "\(good)/src")
        dst = try TLSFiles(directory: "\(good)/dst")
        rogue = try TLSFiles(directory: "\(other)/rogue")
        // TLSFiles refuses by default a cert.pem that is not valid under its ca.pem.
        self.impostor = try TLSFiles(directory: impostor, verifyingOwnCertificate: false)
    }
}

/// Which transport a parameterized test runs over.
enum StreamKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case tls, plain
    var testDescription: String { rawValue }

    func listenerMode() throws -> TLSMode {
        self == .tls ? .mutual(try TLSFixture.shared.get().dst) : .insecure
    }

    func connectorMode() throws -> TLSMode {
        self == .tls ? .mutual(try TLSFixture.shared.get().src) : .insecure
    }
}

/// Runs `body` on a new thread; `join` waits for its result.
final class Background<T: Sendable>: @unchecked Sendable {
    private let finished = DispatchSemaphore(value: 0)
    private let result = Mutex<Result<T, any Error>?>(nil)

    init(_ body: @escaping @Sendable () throws -> T) {
        Thread.detachNewThread { [self] in
            let outcome = Result { try body() }
            result.withLock { $0 = outcome }
            finished.signal()
        }
    }

    /// The thread's result; fails the test (and throws) if it takes longer than `timeout` seconds.
    func join(timeout: Double = 60) throws -> T {
        guard finished.wait(timeout: .now() + timeout) == .success else {
            throw TestTimeout(seconds: timeout)
        }
        return try result.withLock { $0! }.get()
    }

    struct TestTimeout: Error { let seconds: Double }
}

/// A connected client/server pair over 127.0.0.1.
func connectedPair(_ kind: StreamKind) throws -> (client: any ByteStream, server: any ByteStream) {
    let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: try kind.listenerMode())
    defer { listener.close() }
    let accepted = Background { try listener.accept() }
    let client = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: try kind.connectorMode())
    return (client, try accepted.join())
}

extension ByteStream {
    func send(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try writeAll($0) } }

    func receive(_ count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        try bytes.withUnsafeMutableBytes { try readExactly($0) }
        return bytes
    }
}

/// Deterministic pseudo-random bytes (xorshift64, 8 bytes a step), different per seed.
func pattern(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var words = [UInt64](repeating: 0, count: (count + 7) / 8)
    for index in words.indices {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        words[index] = state
    }
    return words.withUnsafeBytes { Array($0.prefix(count)) }
}

private func transportError(_ error: any Error) -> TransportError? { error as? TransportError }

private func seconds(since start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
}

// MARK: - Tests

@Suite("Transport: TCP and mutual TLS 1.3", .serialized)
struct TransportTests {
    @Test("mutual TLS carries data both ways, multi-MiB intact, and names the peers by CN")
    func mutualTLSRoundTrip() throws {
        let (client, server) = try connectedPair(.tls)
        defer { client.close(); server.close() }
        #expect(client.peerDescription.hasPrefix("127.0.0.1:"))
        #expect(client.peerDescription.hasSuffix("(CN=dst)"))
        #expect(server.peerDescription.hasSuffix("(CN=src)"))

        try client.send(Array("HELLO".utf8))
        #expect(try server.receive(5) == Array("HELLO".utf8))
        try server.send(Array("WELCOME".utf8))
        #expect(try client.receive(7) == Array("WELCOME".utf8))

        let upstream = pattern(9 << 20 + 12_345, seed: 1)
        let downstream = pattern(5 << 20 + 7, seed: 2)
        let sending = Background { try client.send(upstream) }
        #expect(try server.receive(upstream.count) == upstream)
        try sending.join()
        let replying = Background { try server.send(downstream) }
        #expect(try client.receive(downstream.count) == downstream)
        try replying.join()
    }

    @Test("a reader and a writer on each end run at once without deadlock", arguments: StreamKind.allCases)
    func fullDuplexDoesNotDeadlock(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { client.close(); server.close() }
        let size = 48 << 20  // far more than the socket buffers hold
        let toServer = pattern(size, seed: 3)
        let toClient = pattern(size, seed: 4)
        let writers = [Background { try client.send(toServer) }, Background { try server.send(toClient) }]
        let readers = [Background { try server.receive(size) }, Background { try client.receive(size) }]
        #expect(try readers[0].join() == toServer)
        #expect(try readers[1].join() == toClient)
        for writer in writers { try writer.join() }
    }

    @Test("a client with certificates from another CA is refused on both sides; the listener keeps accepting")
    func clientFromAnotherCAIsRefused() throws {
        let fixture = try TLSFixture.shared.get()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: .mutual(fixture.dst))
        defer { listener.close() }
        try expectRefusal(listener: listener, clientMode: .mutual(fixture.rogue),
                          serverReason: "alert unknown ca", clientReason: "certificate verify failed")
        try expectGoodClientIsAccepted(listener: listener, fixture: fixture)
    }

    @Test("a client trusting our CA but holding another CA's certificate is refused, in connect()")
    func impostorClientIsRefused() throws {
        let fixture = try TLSFixture.shared.get()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: .mutual(fixture.dst))
        defer { listener.close() }
        // The impostor accepts our listener's certificate, so only the
        // listener's check stands between it and the protocol.
        try expectRefusal(listener: listener, clientMode: .mutual(fixture.impostor),
                          serverReason: "certificate verify failed", clientReason: "rejected this host's certificate")
        try expectGoodClientIsAccepted(listener: listener, fixture: fixture)
    }

    @Test("a plaintext client against a TLS listener: .handshakeFailed there, an error here, listener still works")
    func plaintextClientAgainstTLSListener() throws {
        let fixture = try TLSFixture.shared.get()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: .mutual(fixture.dst))
        defer { listener.close() }
        let accepting = Background { try listener.accept() }
        let client = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .insecure)
        defer { client.close() }
        client.setTimeout(seconds: 5)
        try client.send(Array("PVMIGRATE HELLO, plaintext here, please answer\n".utf8))
        #expect(throws: TransportError.self) { _ = try client.receive(64) }
        #expect {
            _ = try accepting.join()
        } throws: { error in
            guard case .handshakeFailed(let peer, let reason) = transportError(error) else { return false }
            print("plaintext client refused: \(error)")
            return peer.hasPrefix("127.0.0.1:") && !reason.isEmpty
        }
        try expectGoodClientIsAccepted(listener: listener, fixture: fixture)
    }

    @Test("a TLS client against a plaintext listener fails cleanly with .handshakeFailed")
    func tlsClientAgainstPlaintextListener() throws {
        let fixture = try TLSFixture.shared.get()
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: .insecure)
        defer { listener.close() }
        // A plaintext server that answers with text (and keeps the connection open until the
        // client has given up, so the client fails on the answer, not on a close), then one
        // that says nothing.
        let clientDone = DispatchSemaphore(value: 0)
        let answering = Background {
            let stream = try listener.accept()
            _ = try stream.receive(5)
            try stream.send(Array("PVMIGRATE plaintext server here\n".utf8))
            clientDone.wait()
            stream.close()
        }
        #expect {
            _ = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .mutual(fixture.src))
        } throws: { error in
            print("TLS client against plaintext listener: \(error)")
            if case .handshakeFailed = transportError(error) { return true }
            return false
        }
        clientDone.signal()
        try answering.join()

        let silent = Background { try listener.accept() }
        let start = ContinuousClock.now
        #expect {
            _ = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .mutual(fixture.src),
                                            timeout: 0.5)
        } throws: { error in
            guard case .handshakeFailed(_, let reason) = transportError(error) else { return false }
            return reason.contains("no TLS handshake reply")
        }
        #expect(seconds(since: start) < 3)
        try silent.join().close()
    }

    @Test("connecting to a closed port gives .connectFailed(ECONNREFUSED) and suggests `pvmigrate listen`")
    func connectToClosedPort() throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: .insecure)
        let port = listener.port
        listener.close()
        #expect {
            _ = try StreamConnector.connect(host: "127.0.0.1", port: port, mode: .insecure)
        } throws: { error in
            guard transportError(error) == .connectFailed(host: "127.0.0.1", port: port, errno: ECONNREFUSED) else {
                return false
            }
            let text = "\(error)"
            return text.contains("127.0.0.1:\(port)") && text.contains("refused") && text.contains("pvmigrate listen")
        }
    }

    @Test("an unresolvable host gives .resolveFailed")
    func unresolvableHost() throws {
        #expect(throws: TransportError.resolveFailed(host: "no-such-host.invalid")) {
            _ = try StreamConnector.connect(host: "no-such-host.invalid", port: 1, mode: .insecure)
        }
    }

    @Test("a read with no data times out with .timeout after the stream timeout", arguments: StreamKind.allCases)
    func readTimesOut(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { client.close(); server.close() }
        client.setTimeout(seconds: 0.3)
        let start = ContinuousClock.now
        #expect(throws: TransportError.timeout) { _ = try client.receive(1) }
        let elapsed = seconds(since: start)
        #expect(elapsed >= 0.25 && elapsed < 3, "timed out after \(elapsed) s")
        // The stream still works after a timeout.
        try server.send([42])
        #expect(try client.receive(1) == [42])
    }

    @Test("the peer closing mid-read gives .peerClosed", arguments: StreamKind.allCases)
    func peerCloseEndsRead(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { client.close() }
        try server.send([1, 2, 3])
        server.close()
        #expect(throws: TransportError.peerClosed) { _ = try client.receive(10) }
    }

    @Test("close() from another thread unblocks a blocked readExactly with .closed", arguments: StreamKind.allCases)
    func closeUnblocksRead(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { server.close() }
        let reading = Background { try client.receive(100) }
        // If the reader has not blocked yet, its read starts after close() and throws .closed all the same.
        Thread.sleep(forTimeInterval: 0.3) // not a condition: a thread blocked in a read cannot be observed
        let start = ContinuousClock.now
        client.close()
        #expect(throws: TransportError.closed) { _ = try reading.join(timeout: 5) }
        #expect(seconds(since: start) < 2)
        client.close()  // idempotent
        #expect(throws: TransportError.closed) { try client.send([1]) }
        #expect(throws: TransportError.closed) { _ = try client.receive(1) }
    }

    @Test("close() from another thread unblocks a writer blocked on a full connection", arguments: StreamKind.allCases)
    func closeUnblocksWrite(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { server.close() }
        let data = [UInt8](repeating: 5, count: 64 << 20)  // far more than the buffers hold; nobody reads
        let writing = Background { try client.send(data) }
        // If the writer has not filled the buffers yet, its next write after close() throws .closed all the same.
        Thread.sleep(forTimeInterval: 0.5) // not a condition: a writer blocked on a full socket cannot be observed
        client.close()
        #expect(throws: TransportError.closed) { try writing.join(timeout: 5) }
    }

    @Test("writing to a peer that closed fails with an error instead of SIGPIPE", arguments: StreamKind.allCases)
    func writeAfterPeerCloseDoesNotRaiseSIGPIPE(kind: StreamKind) throws {
        let (client, server) = try connectedPair(kind)
        defer { client.close() }
        server.close()
        let chunk = pattern(1 << 20, seed: 6)
        #expect(throws: TransportError.self) {
            for _ in 0..<64 { try client.send(chunk) }
        }
    }

    @Test("listener.close() unblocks accept() with .closed and is idempotent", arguments: StreamKind.allCases)
    func listenerCloseUnblocksAccept(kind: StreamKind) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0, mode: try kind.listenerMode())
        let accepting = Background { try listener.accept() }
        // If accept() has not blocked yet, it starts after close() and throws .closed all the same.
        Thread.sleep(forTimeInterval: 0.3) // not a condition: a thread blocked in accept() cannot be observed
        listener.close()
        #expect(throws: TransportError.closed) { _ = try accepting.join(timeout: 5) }
        listener.close()
        #expect(throws: TransportError.closed) { _ = try listener.accept() }
    }

    @Test("a missing TLS file is named in the error, which suggests `pvmigrate certs init`",
          arguments: ["ca.pem", "cert.pem", "key.pem"])
    func missingTLSFileIsNamed(file: String) throws {
        let root = makeTemporaryDirectory("tls-missing")
        defer { try? FileManager.default.removeItem(atPath: root) }
        try CertificateAuthority.initialize(directory: root, hosts: ["src"])
        try FileManager.default.removeItem(atPath: "\(root)/src/\(file)")
        #expect {
            _ = try TLSFiles(directory: "\(root)/src")
        } throws: { error in
            guard case .certificate(let message) = transportError(error) else { return false }
            return message.contains("\(root)/src/\(file) is missing") && message.contains("pvmigrate certs init")
        }
    }

    @Test("throughput over loopback (printed, not asserted)",
          arguments: [(StreamKind.tls, 1 << 20), (.tls, 64 << 10), (.plain, 1 << 20), (.plain, 64 << 10)])
    func throughput(kind: StreamKind, chunk: Int) throws {
        let (client, server) = try connectedPair(kind)
        defer { client.close(); server.close() }
        let total = 1 << 30
        let data = pattern(chunk, seed: 7)
        let start = ContinuousClock.now
        let writer = Background {
            try data.withUnsafeBytes { buffer in
                for _ in 0..<(total / chunk) { try client.writeAll(buffer) }
            }
        }
        var sink = [UInt8](repeating: 0, count: chunk)
        try sink.withUnsafeMutableBytes { buffer in
            for _ in 0..<(total / chunk) { try server.readExactly(buffer) }
        }
        try writer.join()
        let elapsed = seconds(since: start)
        #expect(sink == data)
        print("throughput \(kind.rawValue) \(chunk >> 10) KiB writes: "
            + "\(Int(Double(total) / elapsed / 1e6)) MB/s (\(total >> 20) MiB in \(String(format: "%.2f", elapsed)) s)")
    }
}

// MARK: - Helpers for the refusal tests

/// The listener refuses the client's handshake with .handshakeFailed and the
/// client's connect() fails too.
private func expectRefusal(listener: StreamListener, clientMode: TLSMode,
                           serverReason: String, clientReason: String) throws {
    let accepting = Background { try listener.accept() }
    #expect {
        _ = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: clientMode)
    } throws: { error in
        print("refused client sees: \(error)")
        guard case .handshakeFailed(_, let reason) = transportError(error) else { return false }
        return reason.contains(clientReason)
    }
    #expect {
        _ = try accepting.join()
    } throws: { error in
        print("listener sees: \(error)")
        guard case .handshakeFailed(let peer, let reason) = transportError(error) else { return false }
        return peer.hasPrefix("127.0.0.1:") && reason.contains(serverReason)
    }
}

private func expectGoodClientIsAccepted(listener: StreamListener, fixture: TLSFixture) throws {
    let accepting = Background { try listener.accept() }
    let client = try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: .mutual(fixture.src))
    let server = try accepting.join()
    defer { client.close(); server.close() }
    try client.send([7, 7, 7])
    #expect(try server.receive(3) == [7, 7, 7])
    #expect(server.peerDescription.hasSuffix("(CN=src)"))
}
