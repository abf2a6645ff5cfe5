import Foundation
import Testing

@testable import Migrate

/// A fresh, empty directory under /tmp for one test.
func makeTemporaryDirectory(_ label: String) -> String {
    let path = FileManager.default.temporaryDirectory
        .appendingPathComponent("pvmigrate-\(label)-\(UUID().uuidString)").path
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

private func mode(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return (attributes[.posixPermissions] as? NSNumber)?.intValue ?? -1
}

private func contents(_ path: String) -> Data? { FileManager.default.contents(atPath: path) }

@Suite("pvmigrate certs init")
struct CertificateTests {
    @Test("init writes the CA and each host's ca.pem, cert.pem and key.pem; private keys are mode 0600")
    func initWritesFilesWithPrivateKeysMode0600() throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let written = try CertificateAuthority.initialize(directory: root, hosts: ["src", "192.0.2.20"])
        #expect(written == ["\(root)/src", "\(root)/192.0.2.20"])

        #expect(try mode("\(root)/ca.key") == 0o600)
        #expect(try mode("\(root)/ca.pem") == 0o644)
        for host in ["src", "192.0.2.20"] {
            #expect(try mode("\(root)/\(host)/key.pem") == 0o600)
            #expect(try mode("\(root)/\(host)/cert.pem") == 0o644)
            #expect(contents("\(root)/\(host)/ca.pem") == contents("\(root)/ca.pem"))
            // The directory is directly usable (TLSFiles checks cert.pem against ca.pem).
            _ = try TLSFiles(directory: "\(root)/\(host)")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(root)/ca.key.tmp"))
    }

    @Test("host certificates: CN, exactly the names asked for, digitalSignature, both EKUs, P-256, 10 years")
    func hostCertificateContents() throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let written = try CertificateAuthority.initialize(
            directory: root, hosts: ["dst.example", "192.0.2.20", "dst=192.0.2.10,dst.example,2001:db8::1"])
        #expect(written == ["\(root)/dst.example", "\(root)/192.0.2.20", "\(root)/dst"])
        let ca = try CertificateAuthority.summary(ofCertificateAt: "\(root)/ca.pem")
        #expect(ca.isCA)
        #expect(ca.subject == ca.issuer)
        #expect(ca.subject.contains("CN = pvmigrate CA "))

        // A bare name: that DNS name and nothing else (no localhost, no 127.0.0.1).
        let named = try CertificateAuthority.summary(ofCertificateAt: "\(root)/dst.example/cert.pem")
        #expect(!named.isCA)
        #expect(named.subject.contains("CN = dst.example"))
        #expect(named.issuer == ca.subject)
        #expect(named.subjectAltNames == "DNS:dst.example")
        #expect(named.keyUsage == "Digital Signature")
        #expect(named.extendedKeyUsage == "TLS Web Server Authentication, TLS Web Client Authentication")
        #expect(named.keyType == "EC 256")
        #expect((3649...3650).contains(named.daysValid), "valid for \(named.daysValid) days")

        // A bare address: that IP address only.
        let address = try CertificateAuthority.summary(ofCertificateAt: "\(root)/192.0.2.20/cert.pem")
        #expect(address.subjectAltNames == "IP Address:192.0.2.20")
        #expect(address.serialHex.count == 32)
        #expect(address.serialHex != named.serialHex)
        #expect(address.serialHex != ca.serialHex)

        // NAME=extras: the name, then each extra as DNS or IP, in order.
        let listed = try CertificateAuthority.summary(ofCertificateAt: "\(root)/dst/cert.pem")
        #expect(listed.subject.contains("CN = dst"))
        #expect(listed.subjectAltNames == "DNS:dst, IP Address:192.0.2.10, DNS:dst.example, IP Address:2001:DB8:0:0:0:0:0:1")
    }

    @Test("openssl x509 -text agrees: only the names asked for, critical digitalSignature, serverAuth+clientAuth")
    func opensslToolSeesOnlyTheAskedNames() throws {
        let openssl = "/usr/bin/openssl"
        try #require(FileManager.default.isExecutableFile(atPath: openssl), "needs the openssl tool (apt: openssl)")
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        try CertificateAuthority.initialize(directory: root, hosts: ["dst=192.0.2.10,dst.example", "src"])
        func text(_ host: String) throws -> String {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: openssl)
            process.arguments = ["x509", "-in", "\(root)/\(host)/cert.pem", "-noout", "-text"]
            let out = Pipe()
            process.standardOutput = out
            try process.run()
            let data = out.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            #expect(process.terminationStatus == 0)
            return String(decoding: data, as: UTF8.self)
        }
        /// The line after `heading` in the text, trimmed.
        func field(_ text: String, _ heading: String) -> String? {
            let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            return lines.firstIndex { $0.hasPrefix(heading) }.map { lines[$0 + 1] }
        }
        let dst = try text("dst")
        #expect(field(dst, "X509v3 Subject Alternative Name") == "DNS:dst, IP Address:192.0.2.10, DNS:dst.example")
        #expect(field(dst, "X509v3 Key Usage: critical") == "Digital Signature")
        #expect(field(dst, "X509v3 Extended Key Usage") == "TLS Web Server Authentication, TLS Web Client Authentication")
        #expect(field(dst, "X509v3 Basic Constraints: critical") == "CA:FALSE")
        let src = try text("src")
        #expect(field(src, "X509v3 Subject Alternative Name") == "DNS:src")
        for certificate in [dst, src] {
            #expect(!certificate.contains("localhost"))
            #expect(!certificate.contains("127.0.0.1"))
        }
    }

    @Test("host specs parse into the directory name and the certificate's names")
    func hostSpecsParse() throws {
        let spec = try CertificateAuthority.HostSpec(parsing: "dst=192.0.2.10,dst.example,dst")
        #expect(spec.name == "dst")
        #expect(spec.names == ["dst", "192.0.2.10", "dst.example"])
        #expect(try CertificateAuthority.HostSpec(parsing: "src").names == ["src"])
        #expect(try CertificateAuthority.HostSpec(parsing: "::1").names == ["::1"])
    }

    @Test("re-running init reuses the existing CA and issues the new hosts under it")
    func rerunReusesTheCA() throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        try CertificateAuthority.initialize(directory: root, hosts: ["src"])
        let caCertificate = contents("\(root)/ca.pem")
        let caKey = contents("\(root)/ca.key")
        #expect(caCertificate != nil && caKey != nil)

        try CertificateAuthority.initialize(directory: root, hosts: ["dst"])
        #expect(contents("\(root)/ca.pem") == caCertificate)
        #expect(contents("\(root)/ca.key") == caKey)
        #expect(contents("\(root)/dst/ca.pem") == caCertificate)
        let first = try CertificateAuthority.summary(ofCertificateAt: "\(root)/src/cert.pem")
        let second = try CertificateAuthority.summary(ofCertificateAt: "\(root)/dst/cert.pem")
        #expect(first.issuer == second.issuer)
        _ = try TLSFiles(directory: "\(root)/src")
        _ = try TLSFiles(directory: "\(root)/dst")
    }

    @Test("two runs in different directories make different CAs")
    func separateDirectoriesMakeSeparateCAs() throws {
        let one = makeTemporaryDirectory("certs")
        let two = makeTemporaryDirectory("certs")
        defer {
            try? FileManager.default.removeItem(atPath: one)
            try? FileManager.default.removeItem(atPath: two)
        }
        try CertificateAuthority.initialize(directory: one, hosts: [])
        try CertificateAuthority.initialize(directory: two, hosts: [])
        let first = try CertificateAuthority.summary(ofCertificateAt: "\(one)/ca.pem")
        let second = try CertificateAuthority.summary(ofCertificateAt: "\(two)/ca.pem")
        #expect(first.subject != second.subject)
        #expect(contents("\(one)/ca.key") != contents("\(two)/ca.key"))
    }

    @Test("host names that cannot be a directory or a SAN are refused before anything is written",
          arguments: ["", "a/b", "..", "a,b", "host name", "evil,IP:1.2.3.4", "dst=IP:1.2.3.4", "dst=",
                      "dst=a,,b", "*.example", "dst=*.example", "=192.0.2.1"])
    func badHostNamesAreRefused(host: String) throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect {
            try CertificateAuthority.initialize(directory: "\(root)/out", hosts: ["ok", host])
        } throws: { error in
            guard case .certificate(let message) = error as? TransportError else { return false }
            return message.contains("not a usable host name")
        }
        #expect(!FileManager.default.fileExists(atPath: "\(root)/out"))
    }

    @Test("a CA key without its certificate is reported, not silently replaced")
    func halfACAIsReported() throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        try CertificateAuthority.initialize(directory: root, hosts: [])
        let key = contents("\(root)/ca.key")
        try FileManager.default.removeItem(atPath: "\(root)/ca.pem")
        #expect {
            try CertificateAuthority.initialize(directory: root, hosts: ["src"])
        } throws: { error in
            guard case .certificate(let message) = error as? TransportError else { return false }
            return message.contains("\(root)/ca.pem") && message.contains("does not")
        }
        #expect(contents("\(root)/ca.key") == key)
    }

    @Test("a TLS directory whose key belongs to another certificate is refused with both file names")
    func mismatchedKeyIsRefused() throws {
        let root = makeTemporaryDirectory("certs")
        defer { try? FileManager.default.removeItem(atPath: root) }
        try CertificateAuthority.initialize(directory: root, hosts: ["src", "dst"])
        try FileManager.default.removeItem(atPath: "\(root)/src/key.pem")
        try FileManager.default.copyItem(atPath: "\(root)/dst/key.pem", toPath: "\(root)/src/key.pem")
        #expect {
            try TLSFiles(directory: "\(root)/src")
        } throws: { error in
            guard case .certificate(let message) = error as? TransportError else { return false }
            return message.contains("\(root)/src/key.pem") && message.contains("does not belong")
        }
    }

    @Test("a TLS directory whose cert.pem was issued by another CA is refused when loaded")
    func certificateFromAnotherCAIsRefusedAtLoad() throws {
        let one = makeTemporaryDirectory("certs")
        let two = makeTemporaryDirectory("certs")
        defer {
            try? FileManager.default.removeItem(atPath: one)
            try? FileManager.default.removeItem(atPath: two)
        }
        try CertificateAuthority.initialize(directory: one, hosts: ["src"])
        try CertificateAuthority.initialize(directory: two, hosts: ["src"])
        try FileManager.default.removeItem(atPath: "\(one)/src/ca.pem")
        try FileManager.default.copyItem(atPath: "\(two)/ca.pem", toPath: "\(one)/src/ca.pem")
        #expect {
            try TLSFiles(directory: "\(one)/src")
        } throws: { error in
            guard case .certificate(let message) = error as? TransportError else { return false }
            return message.contains("is not valid under the CA")
        }
    }
}
