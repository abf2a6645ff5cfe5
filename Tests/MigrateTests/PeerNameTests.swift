import Foundation
import Testing

@testable import Migrate

// Identity beyond "signed by the CA" (docs/security.md "Names", protocol.md §3.1):
// real TLS 1.3 handshakes on 127.0.0.1 between certificates of one CA that carry
// different names.

/// One CA; each host's certificate carries exactly the names in its spec.
struct NamedHosts: Sendable {
    /// "src": DNS:src.
    let src: String
    /// "dst=127.0.0.1": DNS:dst, IP:127.0.0.1 — the address the tests dial.
    let dst: String
    /// "named": DNS:named only — a listener on 127.0.0.1 whose certificate lacks that address.
    let named: String
    /// "evil=127.0.0.1": another host of the same CA.
    let evil: String

    static let shared = Result { try NamedHosts() }

    private init() throws {
        let root = makeTemporaryDirectory("tls-names")
        try CertificateAuthority.initialize(directory: root, hosts: ["src", "dst=127.0.0.1", "named", "evil=127.0.0.1"])
        (src, dst, named, evil) = ("\(root)/src", "\(root)/dst", "\(root)/named", "\(root)/evil")
    }
}

/// A listener on 127.0.0.1 with `names`, and what one handshake against it gives on each side.
struct Handshake {
    let client: Result<any ByteStream, any Error>
    let server: Result<any ByteStream, any Error>

    init(listener directory: String, _ listenerNames: PeerNames = .default,
         client clientDirectory: String, _ clientNames: PeerNames = .default) throws {
        let listener = try StreamListener(host: "127.0.0.1", port: 0,
                                          mode: .mutual(TLSFiles(directory: directory, peerNames: listenerNames)))
        defer { listener.close() }
        let accepting = Background { try listener.accept() }
        let mode = TLSMode.mutual(try TLSFiles(directory: clientDirectory, peerNames: clientNames))
        client = Result { try StreamConnector.connect(host: "127.0.0.1", port: listener.port, mode: mode, timeout: 10) }
        server = Result { try accepting.join(timeout: 20) }
        if case .success(let stream) = client { stream.close() }
        if case .success(let stream) = server { stream.close() }
    }

    /// Both ends connected, and data flows.
    var succeeded: Bool {
        guard case .success = client, case .success = server else { return false }
        return true
    }

    var clientError: TransportError? { Self.error(client) }
    var serverError: TransportError? { Self.error(server) }

    private static func error(_ result: Result<any ByteStream, any Error>) -> TransportError? {
        guard case .failure(let error) = result else { return nil }
        return error as? TransportError
    }
}

@Suite("peer names: the sender checks the destination, the listener checks sources")
struct PeerNameTests {
    @Test("the sender refuses a destination whose certificate lacks the address it dialed; both sides say why")
    func senderRefusesDestinationWithoutTheDialedAddress() throws {
        let hosts = try NamedHosts.shared.get()
        let h = try Handshake(listener: hosts.named, client: hosts.src)
        let clientError = try #require(h.clientError, "the sender accepted a certificate without 127.0.0.1: \(h.client)")
        guard case .peerNameMismatch(_, let expected, let presented, false) = clientError else {
            Issue.record("sender: expected .peerNameMismatch, got \(clientError)")
            return
        }
        #expect(expected == ["127.0.0.1"])
        #expect(presented == "DNS:named (CN=named)")
        print("sender sees: \(clientError)")
        #expect(clientError.description.contains("is not 127.0.0.1"))
        #expect(clientError.description.contains("--peer-name"))
        // The listener hears that the source refused its certificate, not a vague close.
        let serverError = try #require(h.serverError, "the listener accepted: \(h.server)")
        print("listener sees: \(serverError)")
        guard case .identityRefused(_, let reason, let own, true) = serverError else {
            Issue.record("listener: expected .identityRefused by the source, got \(serverError)")
            return
        }
        #expect(reason.contains("bad certificate"))
        #expect(own.contains("DNS:named"))
    }

    @Test("the sender accepts a destination whose certificate carries the address dialed")
    func senderAcceptsTheDialedAddress() throws {
        let hosts = try NamedHosts.shared.get()
        let h = try Handshake(listener: hosts.dst, client: hosts.src)
        #expect(h.succeeded, "client: \(h.client); server: \(h.server)")
    }

    @Test("--peer-name: the sender checks the name given instead of the address dialed")
    func peerNameReplacesTheDialedHost() throws {
        let hosts = try NamedHosts.shared.get()
        let accepted = try Handshake(listener: hosts.named, client: hosts.src, PeerNames(server: "named"))
        #expect(accepted.succeeded, "client: \(accepted.client); server: \(accepted.server)")
        // The dialed address no longer counts when a name is given: dst carries 127.0.0.1 but not "named".
        let refused = try Handshake(listener: hosts.dst, client: hosts.src, PeerNames(server: "named"))
        guard case .peerNameMismatch(_, ["named"], let presented, false)? = refused.clientError else {
            Issue.record("expected a mismatch against \"named\", got \(refused.client)")
            return
        }
        #expect(presented == "DNS:dst, IP Address:127.0.0.1 (CN=dst)")
    }

    @Test("the listener refuses a source of the same CA that --allow-source does not name; the source hears it")
    func listenerRefusesSourceNotAllowed() throws {
        let hosts = try NamedHosts.shared.get()
        let h = try Handshake(listener: hosts.dst, PeerNames(clients: ["src"]), client: hosts.evil)
        let serverError = try #require(h.serverError, "the listener accepted evil: \(h.server)")
        print("listener sees: \(serverError)")
        guard case .peerNameMismatch(let peer, let expected, let presented, true) = serverError else {
            Issue.record("listener: expected .peerNameMismatch, got \(serverError)")
            return
        }
        #expect(peer.hasPrefix("127.0.0.1:"))
        #expect(expected == ["src"])
        #expect(presented == "DNS:evil, IP Address:127.0.0.1 (CN=evil)")
        #expect(serverError.description.hasPrefix("refused source 127.0.0.1:"))
        #expect(serverError.description.contains("--allow-source src"))

        let clientError = try #require(h.clientError, "the source believes it was accepted: \(h.client)")
        print("source sees: \(clientError)")
        guard case .identityRefused(_, _, let own, false) = clientError else {
            Issue.record("source: expected .identityRefused by the destination, got \(clientError)")
            return
        }
        #expect(own == "DNS:evil, IP Address:127.0.0.1 (CN=evil)")
        #expect(clientError.description.contains("the destination 127.0.0.1:"))
        #expect(clientError.description.contains("refused this host's identity"))
    }

    @Test("the listener accepts a source that --allow-source names, by DNS name or by address")
    func listenerAcceptsAllowedSources() throws {
        let hosts = try NamedHosts.shared.get()
        let byName = try Handshake(listener: hosts.dst, PeerNames(clients: ["evil", "src"]), client: hosts.src)
        #expect(byName.succeeded, "client: \(byName.client); server: \(byName.server)")
        let byAddress = try Handshake(listener: hosts.dst, PeerNames(clients: ["192.0.2.7", "127.0.0.1"]),
                                      client: hosts.evil)
        #expect(byAddress.succeeded, "client: \(byAddress.client); server: \(byAddress.server)")
        // Without --allow-source, any certificate of the CA is accepted (the documented default).
        let anyone = try Handshake(listener: hosts.dst, client: hosts.evil)
        #expect(anyone.succeeded, "client: \(anyone.client); server: \(anyone.server)")
    }

    @Test("names that are neither a DNS name nor an address are refused up front",
          arguments: ["", "*.example", "a/b", "DNS:dst", "-dst", "dst name"])
    func invalidNamesAreRefused(name: String) {
        #expect(throws: TransportError.self) { try PeerNames(server: name) }
        #expect(throws: TransportError.self) { try PeerNames(clients: ["src", name]) }
    }

    @Test("an empty allow list is refused (it would refuse every source)")
    func emptyAllowListIsRefused() {
        #expect(throws: TransportError.self) { try PeerNames(clients: []) }
    }
}

@Suite("extended key usage: each role needs its own")
struct KeyUsageTests {
    /// A TLS directory for a certificate of `hosts`' CA with only `extendedKeyUsage`,
    /// made with the openssl tool (certs init never issues one).
    static func directory(extendedKeyUsage: String, name: String) throws -> String {
        let openssl = "/usr/bin/openssl"
        try #require(FileManager.default.isExecutableFile(atPath: openssl), "needs the openssl tool (apt: openssl)")
        let hosts = try NamedHosts.shared.get()
        let ca = (hosts.src as NSString).deletingLastPathComponent
        let dir = makeTemporaryDirectory("eku-\(name)")
        try "extendedKeyUsage=\(extendedKeyUsage)\nsubjectAltName=DNS:\(name),IP:127.0.0.1\n"
            .write(toFile: "\(dir)/ext.cnf", atomically: true, encoding: .utf8)
        for arguments in [
            ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "\(dir)/key.pem",
             "-subj", "/CN=\(name)", "-out", "\(dir)/req.csr"],
            ["x509", "-req", "-in", "\(dir)/req.csr", "-CA", "\(ca)/ca.pem", "-CAkey", "\(ca)/ca.key", "-set_serial", "7",
             "-days", "1", "-extfile", "\(dir)/ext.cnf", "-out", "\(dir)/cert.pem"],
        ] {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: openssl)
            process.arguments = arguments
            process.standardError = FileHandle.nullDevice
            try process.run()
            process.waitUntilExit()
            try #require(process.terminationStatus == 0, "openssl \(arguments.joined(separator: " ")) failed")
        }
        try FileManager.default.copyItem(atPath: "\(ca)/ca.pem", toPath: "\(dir)/ca.pem")
        return dir
    }

    /// `error` is a handshake failure for the certificate's purpose, naming the usage `role` needs.
    static func expectPurposeRefusal(_ error: TransportError?, _ side: String, needs usage: String) {
        guard case .handshakeFailed(_, let reason)? = error else {
            Issue.record("\(side): expected .handshakeFailed, got \(String(describing: error))")
            return
        }
        print("\(side) sees: \(reason)")
        #expect(reason.contains("unsuitable certificate purpose"))
        #expect(reason.contains(usage))
    }

    @Test("a certificate of the CA with serverAuth only cannot be a source")
    func serverOnlyCertificateIsNoSource() throws {
        let hosts = try NamedHosts.shared.get()
        let h = try Handshake(listener: hosts.dst, client: try Self.directory(extendedKeyUsage: "serverAuth", name: "srvonly"))
        Self.expectPurposeRefusal(h.serverError, "listener", needs: "clientAuth for a source")
        #expect(h.clientError != nil, "the source believes it was accepted")
    }

    @Test("a certificate of the CA with clientAuth only cannot be a listener")
    func clientOnlyCertificateIsNoListener() throws {
        let hosts = try NamedHosts.shared.get()
        let h = try Handshake(listener: try Self.directory(extendedKeyUsage: "clientAuth", name: "clionly"), client: hosts.src)
        Self.expectPurposeRefusal(h.clientError, "source", needs: "serverAuth for a listener")
    }
}
