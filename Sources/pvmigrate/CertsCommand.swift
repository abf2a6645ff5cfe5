import ArgumentParser
import Foundation
import Migrate

/// `pvmigrate certs …`: the certificates for mutual TLS between hosts (protocol.md §3.1).
struct Certs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Certificates for mutual TLS between pvmigrate hosts.",
        subcommands: [Init.self])

    /// `pvmigrate certs init --dir DIR [--hosts h1 h2 …]`.
    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a private CA and a certificate for each host.",
            discussion: """
                Writes DIR/ca.pem and DIR/ca.key (the CA; an existing CA in DIR is reused) and, for \
                each host H, DIR/H/{ca.pem,cert.pem,key.pem}. Keys are mode 0600. Copy DIR/H to host H \
                as its TLS directory ($PVMIGRATE_TLS_DIR, or <runtime directory>/tls), or pass \
                --tls-dir DIR/H to `pvmigrate listen` and `pvmigrate send` there. Keep DIR/ca.key \
                private: whoever holds it can add hosts.
                """)

        @Option(name: .long, help: "Where to write the CA and the host directories.")
        var dir: String

        @Option(name: .long, parsing: .upToNextOption,
                help: "Host names or addresses to issue certificates for (default: this host's name and localhost).")
        var hosts: [String] = []

        mutating func validate() throws {
            guard !dir.isEmpty else { throw ValidationError("--dir must not be empty") }
            if hosts.isEmpty { hosts = [Self.thisHost, "localhost"] }
            var seen = Set<String>()
            hosts = hosts.filter { seen.insert($0).inserted }
        }

        func run() throws {
            let written: [String]
            do { written = try CertificateAuthority.initialize(directory: dir, hosts: hosts) } catch {
                throw Diagnostics.fail(error)
            }
            let root = URL(fileURLWithPath: dir).standardizedFileURL.path
            print("CA:    \(root)/ca.pem, \(root)/ca.key (keep ca.key private: it signs new hosts)")
            for (host, path) in zip(hosts, written) {
                print("host \(host): \(path)/ca.pem cert.pem key.pem")
            }
            print("""

                To use them, copy each host's directory to that host as its TLS directory:
                    scp -r \(root)/<host> <host>:<runtime directory>/tls     (or set PVMIGRATE_TLS_DIR)
                or name it explicitly:
                    pvmigrate listen --tls-dir \(root)/\(hosts.last ?? "<host>")
                    pvmigrate send <host>:7500 <vm> --tls-dir \(root)/\(hosts.first ?? "<host>")
                Add a host later with: pvmigrate certs init --dir \(root) --hosts <new host>
                """)
        }

        /// This machine's host name, as `hostname` prints it.
        static var thisHost: String {
            var buffer = [CChar](repeating: 0, count: 256)
            guard gethostname(&buffer, buffer.count - 1) == 0 else { return "localhost" }
            let name = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return name.isEmpty ? "localhost" : name
        }
    }
}
