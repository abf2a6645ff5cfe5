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
                each host H, DIR/H/{ca.pem,cert.pem,key.pem}. Keys are mode 0600.

                Each host is NAME or NAME=EXTRA,EXTRA…: its certificate carries exactly NAME and the \
                extras — DNS names, or IP addresses for address literals — and nothing else (no \
                localhost). Give every name or address peers will dial: `send` checks the \
                destination's certificate against the host it dials (or --peer-name), and `listen \
                --allow-source` matches these names. Example: --hosts dst=192.0.2.10,dst.example src. \
                One certificate per host serves both roles (serverAuth and clientAuth).

                Copy DIR/H to host H \
                as its TLS directory ($PVMIGRATE_TLS_DIR, or <runtime directory>/tls), or pass \
                --tls-dir DIR/H to `pvmigrate listen` and `pvmigrate send` there. Keep DIR/ca.key \
                private: whoever holds it can add hosts.
                """)

        @Option(name: .long, help: "Where to write the CA and the host directories.")
        var dir: String

        @Option(name: .long, parsing: .upToNextOption,
                help: ArgumentHelp("Hosts to issue certificates for, each NAME or NAME=NAME|ADDRESS,… "
                    + "(default: this host's name).", valueName: "host"))
        var hosts: [String] = []

        mutating func validate() throws {
            guard !dir.isEmpty else { throw ValidationError("--dir must not be empty") }
            if hosts.isEmpty { hosts = [Self.thisHost] }
            var seen = Set<String>()
            hosts = hosts.filter { seen.insert($0).inserted }
            for host in hosts {
                do { _ = try CertificateAuthority.HostSpec(parsing: host) } catch {
                    throw ValidationError(error.description)
                }
            }
        }

        func run() throws {
            let written: [String]
            do { written = try CertificateAuthority.initialize(directory: dir, hosts: hosts) } catch {
                throw Diagnostics.fail(error)
            }
            let root = URL(fileURLWithPath: dir).standardizedFileURL.path
            print("CA:    \(root)/ca.pem, \(root)/ca.key (keep ca.key private: it signs new hosts)")
            for (host, path) in zip(hosts, written) {
                let names = (try? CertificateAuthority.HostSpec(parsing: host))?.names.joined(separator: ", ") ?? host
                print("host \(path.split(separator: "/").last ?? ""): \(path)/ca.pem cert.pem key.pem (names: \(names))")
            }
            print("""

                To use them, copy each host's directory to that host as its TLS directory:
                    scp -r \(root)/<host> <host>:<runtime directory>/tls     (or set PVMIGRATE_TLS_DIR)
                or name it explicitly:
                    pvmigrate listen --tls-dir \(root)/<this host> --allow-source <source host>
                    pvmigrate send <destination name or address>:7500 <vm> --tls-dir \(root)/<this host>
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
