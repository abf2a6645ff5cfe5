// The TLS transport (protocol.md §3.1): TLS 1.3 only, mutual certificate
// authentication against one CA, over OpenSSL 3. The only transport file
// that imports COpenSSL (certificate creation is in CertificateAuthority.swift).
//
// Locking design. OpenSSL does not support concurrent calls on one SSL
// object (a TLS 1.3 SSL_read may itself write: key updates, alerts). So every
// SSL call runs under one per-connection mutex. To let a reader and a writer
// thread share a stream without a blocked one holding the lock, the socket is
// non-blocking: SSL_read/SSL_write return WANT_READ/WANT_WRITE instead of
// blocking, the lock is released, and the thread waits in poll(2) (which
// also implements the timeout). Each SSL call therefore holds the lock only
// for the time to encrypt or decrypt what the socket buffers hold, and full
// duplex transfers cannot deadlock (with blocking sockets, a writer blocked
// in SSL_write while holding the lock would keep the reader from draining the
// receive side, and two peers doing that to each other would hang).

import COpenSSL
#if canImport(Glibc)
import Glibc
#endif
import Posix
import Synchronization

/// TLS 1.3 cipher suites in order of preference: AES-128-GCM first (the
/// fastest with AES-NI, ~4.4 GB/s per core here), then the other two.
private let cipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

// MARK: - Contexts

/// The client and server SSL_CTX for one `TLSFiles` value, built once and
/// shared by every listener and connector using it (or a copy), with the
/// name policy their handshakes apply.
///
/// `@unchecked Sendable`: the contexts are fully configured in `init` and
/// never modified afterwards; OpenSSL allows SSL_new from several threads on
/// one SSL_CTX.
final class TLSContexts: @unchecked Sendable {
    let server: OpaquePointer
    let client: OpaquePointer
    let names: PeerNames

    init(caFile: String, certificateFile: String, keyFile: String, names: PeerNames,
         verifyingOwnCertificate: Bool) throws(TransportError) {
        self.names = names
        let files = (ca: caFile, certificate: certificateFile, key: keyFile)
        let server = try Self.make(isServer: true, files: files, verifyingOwnCertificate: verifyingOwnCertificate)
        do throws(TransportError) {
            client = try Self.make(isServer: false, files: files, verifyingOwnCertificate: false)
        } catch {
            SSL_CTX_free(server)
            throw error
        }
        self.server = server
    }

    deinit {
        SSL_CTX_free(server)
        SSL_CTX_free(client)
    }

    private static func make(isServer: Bool, files: (ca: String, certificate: String, key: String),
                             verifyingOwnCertificate: Bool) throws(TransportError) -> OpaquePointer {
        ERR_clear_error()
        guard let context = SSL_CTX_new(isServer ? TLS_server_method() : TLS_client_method()) else {
            throw .tls("cannot create an OpenSSL context (\(openSSLErrors()))")
        }
        do throws(TransportError) {
            try configure(context, isServer: isServer, files: files)
            if verifyingOwnCertificate { try verifyOwnCertificate(context, files: files) }
            return context
        } catch {
            SSL_CTX_free(context)
            throw error
        }
    }

    private static func configure(_ context: OpaquePointer, isServer: Bool,
                                  files: (ca: String, certificate: String, key: String)) throws(TransportError) {
        guard COpenSSL_SSL_CTX_set_min_proto_version(context, TLS1_3_VERSION) == 1,
              COpenSSL_SSL_CTX_set_max_proto_version(context, TLS1_3_VERSION) == 1,
              SSL_CTX_set_ciphersuites(context, cipherSuites) == 1 else {
            throw .tls("this OpenSSL cannot be limited to TLS 1.3 (\(openSSLErrors())); install OpenSSL 3")
        }
        // Both sides demand and verify the peer's certificate. The CA file is
        // the only trust anchor (the system store is never loaded). OpenSSL
        // checks the extended key usage for the role (serverAuth of a
        // listener, clientAuth of a source); `checkPeerNames` then checks the
        // names of the connection's `NameCheck` (docs/security.md "Names").
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, checkPeerNames)
        // An EOF without close_notify reads as a clean close (SSL_ERROR_ZERO_RETURN
        // → .peerClosed): the migration stream has its own end frames, so
        // truncation is detected above this layer.
        _ = SSL_CTX_set_options(context, COpenSSL_SSL_OP_IGNORE_UNEXPECTED_EOF | COpenSSL_SSL_OP_NO_RENEGOTIATION)
        // Partial writes return after each record, so a writer can retry from
        // where it stopped; the buffer may move between retries.
        _ = COpenSSL_SSL_CTX_set_mode(
            context, Int(SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER))
        // Read whole socket buffers at once instead of header + body per record.
        COpenSSL_SSL_CTX_set_read_ahead(context, 1)
        SSL_CTX_set_default_read_buffer_len(context, 256 << 10)
        // A key on disk is never encrypted; never prompt on the terminal.
        SSL_CTX_set_default_passwd_cb(context) { _, _, _, _ in 0 }
        if isServer {
            // One session ticket: the client waits for it as the proof that we
            // accepted its certificate (see `TLSHandshake`). Sessions are never resumed.
            _ = SSL_CTX_set_num_tickets(context, 1)
            _ = SSL_CTX_set_session_id_context(context, "pvmigrate", 9)
        } else {
            _ = COpenSSL_SSL_CTX_set_session_cache_mode(context, Int(SSL_SESS_CACHE_OFF))
        }

        guard SSL_CTX_load_verify_locations(context, files.ca, nil) == 1 else {
            throw .certificate("cannot load the CA certificate \(files.ca) (\(openSSLErrors())); it must be "
                + "the PEM ca.pem written by `pvmigrate certs init`")
        }
        guard SSL_CTX_use_certificate_chain_file(context, files.certificate) == 1 else {
            throw .certificate("cannot load the certificate \(files.certificate) (\(openSSLErrors())); it must be "
                + "the PEM cert.pem written by `pvmigrate certs init`")
        }
        guard SSL_CTX_use_PrivateKey_file(context, files.key, SSL_FILETYPE_PEM) == 1 else {
            if ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH {
                ERR_clear_error()
                throw keyMismatch(files)
            }
            throw .certificate("cannot load the private key \(files.key) (\(openSSLErrors())); it must be "
                + "the unencrypted PEM key.pem written by `pvmigrate certs init`")
        }
        guard SSL_CTX_check_private_key(context) == 1 else {
            ERR_clear_error()
            throw keyMismatch(files)
        }
    }

    private static func keyMismatch(_ files: (ca: String, certificate: String, key: String)) -> TransportError {
        .certificate("the private key \(files.key) does not belong to the certificate \(files.certificate); "
            + "copy cert.pem and key.pem from the same host directory written by `pvmigrate certs init`")
    }

    /// Fails early, with a message naming the files, when this host's own
    /// certificate is not valid under the CA (wrong ca.pem, expired, ...):
    /// otherwise every handshake would fail on the peer's side.
    private static func verifyOwnCertificate(_ context: OpaquePointer,
                                             files: (ca: String, certificate: String, key: String)) throws(TransportError) {
        guard let store = SSL_CTX_get_cert_store(context), let certificate = SSL_CTX_get0_certificate(context),
              let check = X509_STORE_CTX_new() else {
            throw .tls("cannot check \(files.certificate) against \(files.ca) (\(openSSLErrors()))")
        }
        defer { X509_STORE_CTX_free(check) }
        guard X509_STORE_CTX_init(check, store, certificate, nil) == 1 else {
            throw .tls("cannot check \(files.certificate) against \(files.ca) (\(openSSLErrors()))")
        }
        guard X509_verify_cert(check) == 1 else {
            let reason = String(cString: X509_verify_cert_error_string(Int(X509_STORE_CTX_get_error(check))))
            ERR_clear_error()
            throw .certificate("the certificate \(files.certificate) is not valid under the CA \(files.ca) "
                + "(\(reason)); copy ca.pem, cert.pem and key.pem from one host directory written by "
                + "`pvmigrate certs init`, or re-run it")
        }
    }
}

/// What `openSSLErrors` returns when the queue was empty.
private let noOpenSSLDetails = "no details from OpenSSL"

/// Empties this thread's OpenSSL error queue into text: the reasons only
/// ("certificate verify failed"), oldest first, "; "-separated.
private func openSSLErrors() -> String {
    let text = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 1024) { buffer -> String in
        // Sound: COpenSSL_ERR_drain writes at most buffer.count bytes, NUL-terminated.
        _ = COpenSSL_ERR_drain(buffer.baseAddress, buffer.count)
        return String(cString: buffer.baseAddress!)
    }
    // "error:0A000086:SSL routines::certificate verify failed" → the reason.
    let reasons = text.split(separator: "; ").map { entry -> Substring in
        let fields = entry.split(separator: ":", maxSplits: 4, omittingEmptySubsequences: false)
        return fields.count == 5 && fields[0] == "error" ? fields[4] : entry
    }
    return reasons.isEmpty ? noOpenSSLDetails : reasons.joined(separator: "; ")
}

// MARK: - Connection

/// What one SSL call on a non-blocking socket came to.
private enum TLSStep: Sendable {
    case done(Int)
    case wantRead, wantWrite
    /// close_notify (or, with SSL_OP_IGNORE_UNEXPECTED_EOF, a TCP EOF).
    case zeroReturn
    /// `errno` is non-zero for a failed system call; `reason` is OpenSSL's.
    case failed(errno: Int32, reason: String)
}

/// An SSL object over a non-blocking socket, with the lock that serialises
/// every call on it.
///
/// `@unchecked Sendable`: `ssl` is only used inside `sslLock` (or in deinit).
private final class TLSConnection: @unchecked Sendable {
    let socket: Socket
    /// The names the peer's certificate must carry, if any; `checkPeerNames`
    /// finds it through the SSL's app data (ex_data index 0).
    let nameCheck: NameCheck?
    private let ssl: OpaquePointer
    private let sslLock = Mutex(())

    init(socket: Socket, context: OpaquePointer, nameCheck: NameCheck?) throws(TransportError) {
        try socket.setNonBlocking(true)
        socket.setNoDelay()
        ERR_clear_error()
        guard let ssl = SSL_new(context) else { throw .tls("cannot create an SSL object (\(openSSLErrors()))") }
        guard let bio = COpenSSL_BIO_new_socket_nosigpipe(socket.fd) else {
            SSL_free(ssl)
            throw .tls("cannot create a socket BIO (\(openSSLErrors()))")
        }
        // Sound: SSL_set_bio takes ownership of `bio` (freed with the SSL);
        // the BIO never closes the descriptor, which `socket` owns and keeps
        // open until after SSL_free (deinit order: ssl first, then socket).
        SSL_set_bio(ssl, bio, bio)
        if let nameCheck {
            // Sound: `self.nameCheck` keeps the object alive as long as the SSL
            // (freed in deinit), so the unretained pointer never dangles.
            _ = SSL_set_ex_data(ssl, 0, Unmanaged.passUnretained(nameCheck).toOpaque())
        }
        self.socket = socket
        self.nameCheck = nameCheck
        self.ssl = ssl
    }

    deinit { SSL_free(ssl) }

    /// One SSL call under the lock. `call` returns the SSL function's result
    /// (1 = success) and may set the byte count.
    func step(_ call: (OpaquePointer, inout Int) -> Int32) -> TLSStep {
        sslLock.withLock { _ in
            ERR_clear_error()
            var count = 0
            let result = call(ssl, &count)
            if result == 1 { return .done(count) }
            let code = errno
            switch SSL_get_error(ssl, result) {
            case SSL_ERROR_WANT_READ: return .wantRead
            case SSL_ERROR_WANT_WRITE: return .wantWrite
            case SSL_ERROR_ZERO_RETURN: return .zeroReturn
            case SSL_ERROR_SYSCALL: return .failed(errno: code, reason: openSSLErrors())
            default: return .failed(errno: 0, reason: openSSLErrors())
            }
        }
    }

    /// Reads state of the SSL object under the lock.
    func inspect<R: Sendable>(_ body: (OpaquePointer) -> R) -> R {
        sslLock.withLock { _ in body(ssl) }
    }
}

// MARK: - Stream

/// A TLS 1.3 stream (see the locking design at the top of this file).
final class TLSStream: ByteStream {
    private let connection: TLSConnection
    let peer: PeerIdentity
    private let timeoutMilliseconds = Atomic<Int32>(Deadline.milliseconds(defaultStreamTimeout))
    private let closeStarted = Atomic<Bool>(false)

    fileprivate init(connection: TLSConnection, peer: PeerIdentity) {
        self.connection = connection
        self.peer = peer
    }

    func setTimeout(seconds: Double) {
        timeoutMilliseconds.store(Deadline.milliseconds(seconds), ordering: .relaxed)
    }

    func writeAll(_ buffer: UnsafeRawBufferPointer) throws(TransportError) {
        let socket = connection.socket
        try socket.enter()
        defer { socket.leave() }
        var done = 0
        while done < buffer.count {
            let rest = UnsafeRawBufferPointer(rebasing: buffer[done...])
            // Sound: SSL_write_ex reads at most rest.count bytes from a live buffer.
            switch connection.step({ ssl, count in SSL_write_ex(ssl, rest.baseAddress, rest.count, &count) }) {
            case .done(let count): done += count
            case .wantWrite: try waitForSocket(writable: true)
            case .wantRead: try waitForSocket(writable: false)
            case .zeroReturn: throw socket.isClosing ? .closed : .peerClosed
            case .failed(let code, let reason): throw failure(code, reason, operation: "send to")
            }
        }
    }

    func readExactly(_ buffer: UnsafeMutableRawBufferPointer) throws(TransportError) {
        let socket = connection.socket
        try socket.enter()
        defer { socket.leave() }
        var done = 0
        while done < buffer.count {
            let rest = UnsafeMutableRawBufferPointer(rebasing: buffer[done...])
            // Sound: SSL_read_ex writes at most rest.count bytes into a live buffer.
            switch connection.step({ ssl, count in SSL_read_ex(ssl, rest.baseAddress, rest.count, &count) }) {
            case .done(let count): done += count
            case .wantRead: try waitForSocket(writable: false)
            case .wantWrite: try waitForSocket(writable: true)
            case .zeroReturn: throw socket.isClosing ? .closed : .peerClosed
            case .failed(let code, let reason): throw failure(code, reason, operation: "receive from")
            }
        }
    }

    /// Sends close_notify (best effort, never blocks), then shuts the socket
    /// down, which wakes a reader or writer polling in another thread.
    func close() {
        guard closeStarted.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing)
            .exchanged else { return }
        _ = connection.step { ssl, _ in SSL_shutdown(ssl) }
        connection.socket.close()
    }

    private func waitForSocket(writable: Bool) throws(TransportError) {
        let socket = connection.socket
        if socket.isClosing { throw .closed }
        let limit = timeoutMilliseconds.load(ordering: .relaxed)
        guard try socket.wait(writable: writable, milliseconds: limit) else {
            throw socket.isClosing ? .closed : .timeout
        }
    }

    private func failure(_ code: Int32, _ reason: String, operation: String) -> TransportError {
        if connection.socket.isClosing { return .closed }
        switch code {
        case EPIPE: return .peerClosed
        case 0: return .tls("\(reason) (\(operation) \(peerDescription))")
        default: return .io(operation: "\(operation) \(peerDescription)", errno: code)
        }
    }
}

// MARK: - Names

/// The names one connection's peer certificate must carry (any one of
/// `expected`), and what a refused certificate carried instead.
///
/// `@unchecked Sendable`: `presented` is written by `checkPeerNames` inside
/// SSL_do_handshake and read after it, all under the connection's SSL lock.
final class NameCheck: @unchecked Sendable {
    let expected: [String]
    let peerIsSource: Bool
    private let presented = Mutex<String?>(nil)

    init(expected: [String], peerIsSource: Bool) {
        self.expected = expected
        self.peerIsSource = peerIsSource
    }

    /// Whether `certificate` carries one of the expected names in its
    /// subjectAltName (OpenSSL's X509_check_host / X509_check_ip_asc; never
    /// the CN, no partial wildcards). Remembers the names it carried if not.
    func accepts(_ certificate: OpaquePointer) -> Bool {
        for name in expected where Self.carries(certificate, name) { return true }
        let names = CertificateAuthority.namesText(ofCertificate: certificate)
        presented.withLock { $0 = names }
        return false
    }

    /// The error for a certificate `accepts` refused, nil if none was.
    func refusal(peer: String) -> TransportError? {
        presented.withLock { $0 }.map {
            .peerNameMismatch(peer: peer, expected: expected, presented: $0, peerIsSource: peerIsSource)
        }
    }

    static func carries(_ certificate: OpaquePointer, _ name: String) -> Bool {
        if Socket.isAddressLiteral(name) { return X509_check_ip_asc(certificate, name, 0) == 1 }
        let flags = UInt32(X509_CHECK_FLAG_NEVER_CHECK_SUBJECT | X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        return X509_check_host(certificate, name, name.utf8.count, flags, nil) == 1
    }
}

/// The verify callback of both contexts. OpenSSL calls it for each
/// certificate of the peer's chain, the leaf (depth 0) last; once the chain is
/// valid, the leaf must also pass the connection's `NameCheck` (none installed:
/// any certificate of the CA). A refusal reports X509_V_ERR_HOSTNAME_MISMATCH,
/// which fails the handshake with a "bad certificate" alert to the peer.
private let checkPeerNames: @convention(c) (Int32, OpaquePointer?) -> Int32 = { preverified, store in
    guard preverified == 1, let store, X509_STORE_CTX_get_error_depth(store) == 0 else { return preverified }
    guard let ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()),
          let data = SSL_get_ex_data(OpaquePointer(ssl), 0) else { return preverified }
    // Sound: index 0 of an SSL's ex_data only ever holds the NameCheck its
    // TLSConnection keeps alive for the SSL's whole life.
    let check = Unmanaged<NameCheck>.fromOpaque(data).takeUnretainedValue()
    guard let certificate = X509_STORE_CTX_get_current_cert(store), check.accepts(certificate) else {
        X509_STORE_CTX_set_error(store, X509_V_ERR_HOSTNAME_MISMATCH)
        return 0
    }
    return 1
}

// MARK: - Handshake

/// Establishing TLS streams on connected sockets.
///
/// In TLS 1.3 the client finishes its handshake before the server has
/// checked the client's certificate, so a rejected client would only learn
/// of it at its first read. The client therefore waits (within the
/// handshake timeout) for the server's first session ticket, which the server
/// sends only after accepting the client's certificate: a rejected client
/// fails in `connect`, like a rejected server.
enum TLSHandshake {
    /// The server side, on an accepted socket.
    static func accept(socket: Socket, contexts: TLSContexts, timeout: Double) throws(TransportError) -> TLSStream {
        let peer = socket.peerText
        let check = contexts.names.clients.map { NameCheck(expected: $0, peerIsSource: true) }
        let connection = try TLSConnection(socket: socket, context: contexts.server, nameCheck: check)
        connection.inspect { ssl in SSL_set_accept_state(ssl) }
        return try establish(connection, peer: peer, isServer: true, timeout: timeout)
    }

    /// The client side, on a connected socket. The server's certificate must
    /// carry `contexts.names.server`, else `dialed` (the host name or address
    /// that was dialed); that name goes out as SNI unless it is an address
    /// literal (RFC 6066 forbids those).
    static func connect(socket: Socket, contexts: TLSContexts, serverName dialed: String,
                        timeout: Double) throws(TransportError) -> TLSStream {
        let peer = socket.peerText
        let serverName = contexts.names.server ?? dialed
        let check = NameCheck(expected: [serverName], peerIsSource: false)
        let connection = try TLSConnection(socket: socket, context: contexts.client, nameCheck: check)
        let sendsName = !serverName.isEmpty && !Socket.isAddressLiteral(serverName)
        _ = connection.inspect { ssl in
            SSL_set_connect_state(ssl)
            return sendsName ? COpenSSL_SSL_set_tlsext_host_name(ssl, serverName) : 1
        }
        return try establish(connection, peer: peer, isServer: false, timeout: timeout)
    }

    private static let closedDuringHandshake =
        "the peer closed the connection during the handshake (it may not be using TLS, or it rejected "
        + "this host's certificate)"

    private static func establish(_ connection: TLSConnection, peer: String, isServer: Bool,
                                  timeout: Double) throws(TransportError) -> TLSStream {
        let deadline = Deadline(seconds: timeout)
        func fail(_ reason: String) -> TransportError { .handshakeFailed(peer: peer, reason: reason) }
        func waitOrFail(writable: Bool, _ what: String) throws(TransportError) {
            guard try connection.socket.wait(writable: writable, milliseconds: deadline.remainingMilliseconds()) else {
                throw fail("no \(what) within \(timeout) s")
            }
        }

        handshake: while true {
            switch connection.step({ ssl, _ in SSL_do_handshake(ssl) }) {
            case .done: break handshake
            case .wantRead: try waitOrFail(writable: false, "TLS handshake reply (is the peer using TLS?)")
            case .wantWrite: try waitOrFail(writable: true, "room to send the TLS handshake")
            case .zeroReturn:
                throw fail(closedDuringHandshake)
            case .failed(let code, let reason):
                if let refused = connection.nameCheck?.refusal(peer: peer) { throw refused }
                if code == 0 && reason == noOpenSSLDetails { throw fail(closedDuringHandshake) }
                if code == 0, let refused = identityRefused(reason, connection, peer: peer, peerIsSource: isServer) {
                    throw refused
                }
                throw fail(code != 0 ? Errno(code).description : explain(reason, connection))
            }
        }

        if !isServer {
            var byte: UInt8 = 0
            confirmation: while true {
                // SSL_peek processes the records that arrived (the ticket may
                // already sit in the read-ahead buffer) without consuming data.
                // Sound: SSL_peek_ex writes at most 1 byte into `byte`, which outlives the call.
                let step = connection.step { ssl, count in
                    if SSL_SESSION_has_ticket(SSL_get_session(ssl)) == 1 { return 1 }
                    let result = SSL_peek_ex(ssl, &byte, 1, &count)
                    return SSL_SESSION_has_ticket(SSL_get_session(ssl)) == 1 ? 1 : result
                }
                switch step {
                case .done: break confirmation
                case .wantRead: try waitOrFail(writable: false, "confirmation that the peer accepted this host's certificate")
                case .wantWrite: try waitOrFail(writable: true, "room to send")
                case .zeroReturn:
                    throw fail("the peer closed the connection after the handshake: it rejected this host's certificate")
                case .failed(let code, let reason):
                    if code == 0, let refused = identityRefused(reason, connection, peer: peer, peerIsSource: false) {
                        throw refused
                    }
                    throw fail(code != 0 ? Errno(code).description
                        : "\(reason) (the peer rejected this host's certificate)")
                }
            }
        }

        let (verified, name) = connection.inspect { ssl in
            (SSL_get_verify_result(ssl) == X509_V_OK, peerCommonName(ssl))
        }
        guard verified, let name else { throw fail("the peer presented no verified certificate") }
        return TLSStream(connection: connection, peer: PeerIdentity(address: "\(peer)", certificateName: name))
    }

    /// The peer's refusal of this host's certificate for its name (an alert
    /// "bad certificate", which `checkPeerNames` makes OpenSSL send for a
    /// name mismatch; a certificate from another CA gets "unknown ca"), or
    /// nil for any other failure.
    private static func identityRefused(_ reason: String, _ connection: TLSConnection, peer: String,
                                        peerIsSource: Bool) -> TransportError? {
        guard reason.contains("alert bad certificate") else { return nil }
        let own = connection.inspect { ssl in SSL_get_certificate(ssl).map(CertificateAuthority.namesText) }
        return .identityRefused(peer: peer, reason: reason, ownNames: own ?? "none", peerIsSource: peerIsSource)
    }

    /// Adds the certificate verification detail to "certificate verify failed".
    private static func explain(_ reason: String, _ connection: TLSConnection) -> String {
        let result = connection.inspect { ssl in SSL_get_verify_result(ssl) }
        guard result != X509_V_OK else { return reason }
        let detail = String(cString: X509_verify_cert_error_string(result))
        let hint: String
        switch Int32(result) {
        case X509_V_ERR_INVALID_PURPOSE:
            hint = "the peer's certificate lacks the extended key usage of its role: serverAuth for a listener, "
                + "clientAuth for a source; `pvmigrate certs init` issues both"
        case X509_V_ERR_CERT_HAS_EXPIRED, X509_V_ERR_CERT_NOT_YET_VALID:
            hint = "check both hosts' clocks, or re-issue the certificate"
        default:
            hint = "the peer's certificate is not from this host's CA"
        }
        return "\(reason): \(detail) (\(hint))"
    }

    /// The CN of the verified peer certificate.
    private static func peerCommonName(_ ssl: OpaquePointer) -> String? {
        guard let certificate = SSL_get1_peer_certificate(ssl) else { return nil }
        defer { X509_free(certificate) }
        guard let subject = X509_get_subject_name(certificate) else { return nil }
        var buffer = [CChar](repeating: 0, count: 256)
        // Sound: writes at most buffer.count bytes, NUL-terminated.
        let length = X509_NAME_get_text_by_NID(subject, NID_commonName, &buffer, Int32(buffer.count))
        return length > 0 ? cString(buffer) : "?"
    }
}
// The OpenSSL library behind the TLS transport. For now the only file in the
// package that imports COpenSSL; the transport itself is a later issue and
// will become that one file.


/// Facts about the OpenSSL library pvmigrate is linked against.
public enum TLSLibrary {
    /// The run-time OpenSSL version text, e.g. "OpenSSL 3.0.11 19 Sep 2023".
    public static var version: String {
        String(cString: COpenSSL_version_text())
    }

    /// The version text of the OpenSSL headers pvmigrate was built against.
    public static var headerVersion: String {
        String(cString: COpenSSL_header_version_text())
    }

    /// The run-time OpenSSL version number (0xMNN00PP0L for 3.x).
    public static var versionNumber: UInt {
        UInt(COpenSSL_version_number())
    }
}
