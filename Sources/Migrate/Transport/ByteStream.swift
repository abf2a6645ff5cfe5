// The transport's public face (protocol.md §3.1): a byte stream with
// timeouts, over plain TCP or mutually authenticated TLS 1.3, and the TLS
// directory that configures the latter.

#if canImport(Glibc)
import Glibc
#endif

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
    /// The OpenSSL client and server contexts built from the files.
    let contexts: TLSContexts

    /// Checks that DIR/ca.pem, DIR/cert.pem and DIR/key.pem exist and are
    /// readable, then loads them.
    /// - Throws: `.certificate` naming the missing or unusable file.
    public init(directory: String) throws(TransportError) {
        try self.init(directory: directory, verifyingOwnCertificate: true)
    }

    /// `verifyingOwnCertificate: false` skips the check that cert.pem is valid
    /// under ca.pem (tests use it to build a client that trusts our CA but
    /// presents another CA's certificate).
    init(directory: String, verifyingOwnCertificate: Bool) throws(TransportError) {
        self.directory = directory
        for name in Self.fileNames {
            let path = Self.join(directory, name)
            // Sound: `path` is a NUL-terminated copy for the duration of the call.
            guard access(path, R_OK) == 0 else {
                let code = errno
                let problem = code == ENOENT ? "is missing" : "cannot be read (\(TransportError.errnoText(code)))"
                throw .certificate("TLS file \(path) \(problem); a TLS directory holds ca.pem, cert.pem "
                    + "and key.pem — create them with `pvmigrate certs init` and copy the host's "
                    + "directory here, or pass the right directory")
            }
        }
        contexts = try TLSContexts(
            caFile: Self.join(directory, "ca.pem"),
            certificateFile: Self.join(directory, "cert.pem"),
            keyFile: Self.join(directory, "key.pem"),
            verifyingOwnCertificate: verifyingOwnCertificate)
    }

    static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
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
    /// "127.0.0.1:40022 (CN=dst)" — for logs and errors.
    var peerDescription: String { get }
}

/// The stream timeout used until `setTimeout` is called.
let defaultStreamTimeout: Double = 30
