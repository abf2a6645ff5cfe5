// The transport's public face (protocol.md §3.1): a byte stream with
// timeouts, over plain TCP or mutually authenticated TLS 1.3, and the TLS
// directory that configures the latter.

#if canImport(Glibc)
import Glibc
#endif
import Posix

/// How a listener or connector protects its streams.
public enum TLSMode: Sendable {
    /// TLS 1.3 with mutual certificate authentication against the CA in the
    /// directory (the only trust anchor).
    case mutual(TLSFiles)
    /// Plain TCP. Only when the user asked for it by name (`--insecure`).
    case insecure
}

/// A TLS directory: ca.pem, cert.pem, key.pem (`pvmigrate certs init`
/// writes one per host).
///
/// `init` checks the files, loads them and builds the OpenSSL contexts once;
/// every listener and connector using this value (or a copy) shares them.
public struct TLSFiles: Sendable {
    /// The file names a TLS directory must hold.
    static let fileNames = ["ca.pem", "cert.pem", "key.pem"]

    public let directory: String
    /// Which names the peer's certificate must carry (docs/security.md "Names").
    public let peerNames: PeerNames
    /// The OpenSSL client and server contexts built from the files.
    let contexts: TLSContexts

    /// Checks that DIR/ca.pem, DIR/cert.pem and DIR/key.pem exist and are
    /// readable, then loads them. `peerNames` is the name policy of every
    /// stream opened with this value.
    /// - Throws: `.certificate` naming the missing or unusable file.
    public init(directory: String, peerNames: PeerNames = .default) throws(TransportError) {
        try self.init(directory: directory, peerNames: peerNames, verifyingOwnCertificate: true)
    }

    /// `verifyingOwnCertificate: false` skips the check that cert.pem is valid
    /// under ca.pem (tests use it to build a client that trusts our CA but
    /// presents another CA's certificate).
    init(directory: String, peerNames: PeerNames = .default,
         verifyingOwnCertificate: Bool) throws(TransportError) {
        self.directory = directory
        self.peerNames = peerNames
        for name in Self.fileNames {
            let path = Self.join(directory, name)
            // Sound: `path` is a NUL-terminated copy for the duration of the call.
            guard access(path, R_OK) == 0 else {
                let code = errno
                let problem = code == ENOENT ? "is missing" : "cannot be read (\(Errno(code).description))"
                throw .certificate("TLS file \(path) \(problem); a TLS directory holds ca.pem, cert.pem "
                    + "and key.pem — create them with `pvmigrate certs init` and copy the host's "
                    + "directory here, or pass the right directory")
            }
        }
        contexts = try TLSContexts(
            caFile: Self.join(directory, "ca.pem"),
            certificateFile: Self.join(directory, "cert.pem"),
            keyFile: Self.join(directory, "key.pem"),
            names: peerNames,
            verifyingOwnCertificate: verifyingOwnCertificate)
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }
}

/// Which certificate names a TLS peer must present, beyond a valid chain to
/// the CA (docs/security.md "Names"). A name is a DNS name or an IP address
/// and matches a subjectAltName entry of that kind (never the CN; no
/// wildcards are issued).
public struct PeerNames: Sendable, Equatable {
    /// Connecting (`send --peer-name`): the listener's certificate must carry
    /// this name. nil: the host that was dialed.
    public let server: String?
    /// Listening (`listen --allow-source`): a source's certificate must carry
    /// one of these names. nil: any certificate of the CA.
    public let clients: [String]?

    /// The defaults: the listener must carry the host dialed; any source of the CA is accepted.
    public static let `default` = PeerNames(checked: nil, nil)

    private init(checked server: String?, _ clients: [String]?) {
        self.server = server
        self.clients = clients
    }

    /// - Throws: `.certificate` naming a value that is neither a DNS name nor an address.
    public init(server: String? = nil, clients: [String]? = nil) throws(TransportError) {
        for name in (server.map { [$0] } ?? []) + (clients ?? []) where !Self.isValid(name) {
            throw .certificate("\"\(name)\" is not a certificate name: give a DNS name (letters, digits, "
                + "'.', '-', '_') or an IPv4/IPv6 address, as `pvmigrate certs init --hosts` issued it")
        }
        if let clients, clients.isEmpty {
            throw .certificate("an empty list of allowed sources would refuse every source; name at least one")
        }
        self.init(checked: server, clients)
    }

    /// A DNS name (1–253 of `[A-Za-z0-9._-]`, not starting with '.' or '-')
    /// or an IPv4/IPv6 address literal.
    public static func isValid(_ name: String) -> Bool {
        if Socket.isAddressLiteral(name) { return true }
        let allowed = name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "."), UInt8(ascii: "-"), UInt8(ascii: "_"):
                return true
            default:
                return false
            }
        }
        guard let first = name.utf8.first else { return false }
        return allowed && name.utf8.count <= 253 && first != UInt8(ascii: ".") && first != UInt8(ascii: "-")
    }
}

/// One direction-independent connection: plain TCP or TLS.
public protocol ByteStream: AnyObject, Sendable {
    /// Writes every byte (loops over partial writes). Thread-safe against a concurrent reader
    /// on the same stream (one reader thread and one writer thread at a time may use a stream).
    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(TransportError)
    /// Reads exactly buffer.count bytes; .peerClosed on EOF before that; .timeout after the read timeout.
    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws(TransportError)
    /// Read/write timeout (default 30 s): the longest a read or write waits
    /// without any progress. 0, a negative value or infinity means no timeout.
    func setTimeout(seconds: Double)
    /// Closes; unblocks a reader/writer blocked in another thread (shutdown(2) first). Idempotent.
    func close()
    /// Who is at the other end: its address and, over TLS, the name its verified
    /// certificate carries.
    var peer: PeerIdentity { get }
}

extension ByteStream {
    /// "127.0.0.1:40022 (CN=dst)" — for logs and errors.
    public var peerDescription: String { peer.description }
}

/// The other end of a stream, as the transport established it: the address it connects
/// from and, for mutual TLS, the common name of its verified certificate (nil on a
/// plaintext connection, which authenticates nobody).
public struct PeerIdentity: Sendable, Equatable, CustomStringConvertible {
    /// "127.0.0.1:40022", "[::1]:40022".
    public var address: String
    public var certificateName: String?

    public init(address: String, certificateName: String? = nil) {
        self.address = address
        self.certificateName = certificateName
    }

    /// "127.0.0.1:40022 (CN=dst)", or "127.0.0.1:40022 (insecure)" without TLS.
    public var description: String { "\(address) (\(certificateName.map { "CN=\($0)" } ?? "insecure"))" }
}

/// The stream timeout used until `setTimeout` is called.
let defaultStreamTimeout: Double = 30
