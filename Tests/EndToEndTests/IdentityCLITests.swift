import Foundation
import Testing
import TestSupport

// Identity through the real `pvmigrate` binary on two runtime directories
// (docs/security.md "Names"): `send` checks the destination's name (or
// --peer-name, carried as `peer_name` in the migrate request, protocol.md §4),
// `listen --allow-source` refuses other sources of the CA.

/// The VM still runs at the source, and the destination lists none.
private func expectRunsAtTheSource(_ hosts: EndToEnd.ListenSendTests.Hosts, _ vm: String) throws {
    let status = try #require(try hosts.status("src", vm), "VM \(vm) is gone from the source")
    #expect(status["state"]?.string == "running", "\(status)")
    #expect(try hosts.psNames("dst").isEmpty, "the destination lists a VM")
}

extension EndToEnd {
    private typealias Hosts = ListenSendTests.Hosts

    @Suite(.serialized, .enabled(if: KVMGate.present, "needs /dev/kvm"))
    struct IdentityCLITests {
        @Test func sendRefusesADestinationWhoseCertificateLacksTheDialedAddressAndPeerNameAcceptsIt() throws {
            let hosts = try Hosts()
            // dst's certificate names only "dst": the source dials 127.0.0.1.
            try hosts.certs("pki", hosts: ["src", "dst"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--allow-source", "src"])
            try hosts.startVM("vm")

            let refused = try hosts.send("vm", port: port, tlsDir: "pki/src")
            #expect(refused.status != 0, "send to a destination not named 127.0.0.1 succeeded: \(refused.text)")
            #expect(refused.stderr.contains("is not 127.0.0.1: its certificate names DNS:dst (CN=dst)"), "\(refused.text)")
            #expect(refused.stderr.contains("--peer-name"), "\(refused.text)")
            try expectRunsAtTheSource(hosts, "vm")
            #expect(listener.wait(for: "refused this host's identity"), "the listener logged no refusal: \(listener.text)")

            // The same destination under the name its certificate carries.
            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src", ["--peer-name", "dst"])
            #expect(sent.status == 0, "send --peer-name dst failed: \(sent.text)")
            #expect(try hosts.psNames("dst") == ["vm"], "\(listener.text)")
            #expect(try hosts.psNames("src").isEmpty)
            #expect(listener.terminate() == 0, "\(listener.text)")
        }

        @Test func listenRefusesASourceThatAllowSourceDoesNotNameAndTheSourceSaysSo() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["src", "evil", "dst=127.0.0.1"])
            let (listener, port) = try hosts.listen(tlsDir: "pki/dst", ["--allow-source", "src,backup", "--allow-source", "other"])
            try hosts.startVM("vm")

            let refused = try hosts.send("vm", port: port, tlsDir: "pki/evil")
            #expect(refused.status != 0, "a source not allowed pushed its VM: \(refused.text)")
            #expect(refused.stderr.contains("refused this host's identity"), "\(refused.text)")
            #expect(refused.stderr.contains("DNS:evil"), "\(refused.text)")
            #expect(refused.stderr.contains("--allow-source"), "\(refused.text)")
            try expectRunsAtTheSource(hosts, "vm")
            #expect(listener.wait(for: "refused source 127.0.0.1:"), "no refusal logged: \(listener.text)")
            #expect(listener.stdout.contains("its certificate names DNS:evil (CN=evil)"), "\(listener.text)")
            #expect(listener.stdout.contains("--allow-source src,backup,other"), "\(listener.text)")

            // The listener keeps serving: an allowed source gets through.
            let sent = try hosts.send("vm", port: port, tlsDir: "pki/src")
            #expect(sent.status == 0, "send from an allowed source failed: \(sent.text)")
            #expect(try hosts.psNames("dst") == ["vm"], "\(listener.text)")
            #expect(listener.terminate() == 0, "\(listener.text)")
        }

        @Test func sendInsecureWarnsThatTheMigrationIsUnauthenticatedAndUnencrypted() throws {
            let hosts = try Hosts()
            try hosts.startVM("vm")
            // Nobody listens on port 1: the migration fails after the warning, the VM stays.
            let r = try hosts.run("src", ["send", "127.0.0.1:1", "vm", "--insecure"])
            #expect(r.status != 0)
            let lines = r.stderr.split(separator: "\n")
            #expect(lines.first.map { $0.hasPrefix(IdentityWarningTests.insecureWarning) } == true, "\(r.stderr)")
            #expect(lines.filter { $0.contains("warning:") }.count == 1, "one warning line: \(r.stderr)")
            try expectRunsAtTheSource(hosts, "vm")
        }
    }

    /// The one-line warnings of issue 9 item 6 and of the allow-source default (no guest needed).
    @Suite(.serialized)
    struct IdentityWarningTests {
        static let insecureWarning = "pvmigrate: warning: --insecure: this migration is unauthenticated and unencrypted"

        @Test func listenInsecureWarnsOnceAtStart() throws {
            let hosts = try Hosts()
            let l = try ListenSendTests.Background(["listen", "--address", "127.0.0.1:0", "--insecure"],
                                                   environment: hosts.environment("dst"))
            hosts.listeners.append(l)
            #expect(l.wait(for: "listening on 127.0.0.1:"), "listen did not start: \(l.text)")
            #expect(l.wait(for: Self.insecureWarning, orStandardError: true), "no warning: \(l.text)")
            #expect(l.terminate() == 0, "\(l.text)")
            #expect(l.text.components(separatedBy: "warning:").count == 2, "one warning: \(l.text)")
        }

        @Test func listenWithoutAllowSourceWarnsThatAnyHostOfTheCAMaySend() throws {
            let hosts = try Hosts()
            try hosts.certs("pki", hosts: ["dst=127.0.0.1"])
            let (open, _) = try hosts.listen(tlsDir: "pki/dst")
            #expect(open.wait(for: "warning: accepting VMs from any host holding a certificate of this CA",
                              orStandardError: true), "no warning: \(open.text)")
            #expect(open.terminate() == 0, "\(open.text)")

            let (restricted, _) = try hosts.listen(tlsDir: "pki/dst", ["--allow-source", "src"])
            #expect(restricted.terminate() == 0, "\(restricted.text)")
            #expect(!restricted.text.contains("warning:"), "a warning although --allow-source was given: \(restricted.text)")
        }
    }
}
