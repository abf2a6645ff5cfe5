// `pvmigrate certs init`: a private CA and one certificate per host for the
// mutual TLS of protocol.md §3.1, made with OpenSSL's API. The certificate
// file of the transport (the other file importing COpenSSL is TLSStream.swift).

import COpenSSL
#if canImport(Glibc)
import Glibc
#endif
import Posix

/// `pvmigrate certs init`: a CA plus host certificates for mutual TLS, made with OpenSSL's API.
public enum CertificateAuthority {
    /// Certificates are valid this long (and from an hour ago, for clock skew).
    static let validityDays = 3650

    /// Creates DIR/ca.pem + DIR/ca.key (key mode 0600) unless they exist (then reuses that CA),
    /// and for each host spec (see `HostSpec`: `NAME[=NAME|ADDRESS,…]`) DIR/NAME/ca.pem (copy of
    /// the CA cert), DIR/NAME/cert.pem and DIR/NAME/key.pem (0600). The certificate carries
    /// exactly the names asked for in its subjectAltName — NAME and the extras, each as DNS:
    /// or, for an address literal, IP: — and nothing implicit (no localhost, no 127.0.0.1).
    /// EC P-256 keys, SHA-256, validity 10 years, random serial, keyUsage digitalSignature,
    /// extKeyUsage serverAuth+clientAuth (one certificate per host: a host both receives and
    /// sends; docs/security.md "Certificates"). Returns the host directories written.
    ///
    /// Every spec is checked before anything is written. A host's existing directory is
    /// overwritten with a new key and certificate.
    @discardableResult
    public static func initialize(directory: String, hosts: [String]) throws(TransportError) -> [String] {
        var specs: [HostSpec] = []
        for host in hosts { specs.append(try HostSpec(parsing: host)) }
        try FileIO.makeDirectory(directory, mode: 0o755)
        let (caCertificate, caKey) = try loadOrCreateCA(directory: directory)
        let caPEM = try pem(certificate: caCertificate.pointer)
        var written: [String] = []
        for spec in specs {
            let hostDirectory = TLSFiles.join(directory, spec.name)
            try FileIO.makeDirectory(hostDirectory, mode: 0o755)
            let key = try generateKey()
            let certificate = try issue(
                commonName: spec.name, subjectKey: key, issuer: (caCertificate, caKey),
                extensions: [
                    (NID_basic_constraints, "critical,CA:FALSE"),
                    (NID_key_usage, "critical,digitalSignature"),
                    (NID_ext_key_usage, "serverAuth,clientAuth"),
                    (NID_subject_alt_name, spec.subjectAltNames),
                    (NID_subject_key_identifier, "hash"),
                    (NID_authority_key_identifier, "keyid:always"),
                ])
            try FileIO.write(pem(privateKey: key.pointer), to: TLSFiles.join(hostDirectory, "key.pem"), mode: 0o600)
            try FileIO.write(pem(certificate: certificate.pointer), to: TLSFiles.join(hostDirectory, "cert.pem"), mode: 0o644)
            try FileIO.write(caPEM, to: TLSFiles.join(hostDirectory, "ca.pem"), mode: 0o644)
            written.append(hostDirectory)
        }
        return written
    }

    // MARK: Hosts

    /// One host of `certs init --hosts`: `NAME[=NAME|ADDRESS[,NAME|ADDRESS…]]`, e.g. `src`,
    /// `dst=192.0.2.10,dst.example`. NAME names the host's directory and its certificate's
    /// CN, and is its first subjectAltName; the extras after `=` are the other names and
    /// addresses its certificate carries (the ones peers dial, or list in --allow-source).
    public struct HostSpec: Equatable, Sendable {
        /// The directory name and CN.
        public let name: String
        /// Every name and address in the certificate, `name` first, without duplicates.
        public let names: [String]

        public init(parsing spec: String) throws(TransportError) {
            let parts = spec.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            let name = parts[0]
            guard PeerNames.isValid(name) else { throw Self.unusable(name, in: spec) }
            var names = [name]
            if parts.count == 2 {
                let extras = parts[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                for extra in extras {
                    guard PeerNames.isValid(extra) else { throw Self.unusable(extra, in: spec) }
                    if !names.contains(extra) { names.append(extra) }
                }
            }
            self.name = name
            self.names = names
        }

        /// The subjectAltName value: DNS:N for a name, IP:A for an address literal.
        var subjectAltNames: String {
            names.map { Socket.isAddressLiteral($0) ? "IP:\($0)" : "DNS:\($0)" }.joined(separator: ",")
        }

        private static func unusable(_ part: String, in spec: String) -> TransportError {
            .certificate("\"\(part)\" in \"\(spec)\" is not a usable host name for a certificate; give each "
                + "host as NAME or NAME=NAME|ADDRESS,… — a DNS name (letters, digits, '.', '-', '_') or an "
                + "IPv4/IPv6 address, e.g. dst=192.0.2.10,dst.example")
        }
    }

    // MARK: The CA

    private static func loadOrCreateCA(directory: String) throws(TransportError) -> (Certificate, PrivateKey) {
        let certificatePath = TLSFiles.join(directory, "ca.pem")
        let keyPath = TLSFiles.join(directory, "ca.key")
        switch (FileIO.exists(certificatePath), FileIO.exists(keyPath)) {
        case (true, true):
            let certificate = try readCertificate(certificatePath)
            let key = try readPrivateKey(keyPath)
            guard X509_check_private_key(certificate.pointer, key.pointer) == 1 else {
                ERR_clear_error()
                throw .certificate("the CA key \(keyPath) does not belong to the CA certificate \(certificatePath); "
                    + "restore the matching pair, or move both away to create a new CA (then re-issue every host)")
            }
            return (certificate, key)
        case (false, false):
            let key = try generateKey()
            let certificate = try issue(
                commonName: "pvmigrate CA \(randomHex(bytes: 4))", subjectKey: key, issuer: nil,
                extensions: [
                    (NID_basic_constraints, "critical,CA:TRUE,pathlen:0"),
                    (NID_key_usage, "critical,keyCertSign,cRLSign"),
                    (NID_subject_key_identifier, "hash"),
                    (NID_authority_key_identifier, "keyid:always"),
                ])
            try FileIO.write(pem(privateKey: key.pointer), to: keyPath, mode: 0o600)
            try FileIO.write(pem(certificate: certificate.pointer), to: certificatePath, mode: 0o644)
            return (certificate, key)
        case (true, false), (false, true):
            let (present, missing) = FileIO.exists(certificatePath) ? (certificatePath, keyPath) : (keyPath, certificatePath)
            throw .certificate("\(present) exists but \(missing) does not; restore \(missing), or move "
                + "\(present) away to create a new CA (then re-issue every host)")
        }
    }

    // MARK: Keys and certificates

    /// An owned EVP_PKEY (freed in deinit).
    final class PrivateKey {
        let pointer: OpaquePointer
        init(_ pointer: OpaquePointer) { self.pointer = pointer }
        deinit { EVP_PKEY_free(pointer) }
    }

    /// An owned X509 (freed in deinit).
    final class Certificate {
        let pointer: OpaquePointer
        init(_ pointer: OpaquePointer) { self.pointer = pointer }
        deinit { X509_free(pointer) }
    }

    private static func generateKey() throws(TransportError) -> PrivateKey {
        guard let key = COpenSSL_EVP_EC_gen("P-256") else {
            throw .certificate("cannot generate an EC P-256 key (\(errors()))")
        }
        return PrivateKey(key)
    }

    /// A certificate for `subjectKey`, signed by `issuer` (self-signed when nil).
    private static func issue(commonName: String, subjectKey: PrivateKey, issuer: (Certificate, PrivateKey)?,
                              extensions: [(Int32, String)]) throws(TransportError) -> Certificate {
        ERR_clear_error()
        guard let raw = X509_new() else { throw .certificate("cannot allocate a certificate (\(errors()))") }
        let certificate = Certificate(raw)
        let issuerCertificate = issuer?.0.pointer ?? raw
        let signingKey = issuer?.1.pointer ?? subjectKey.pointer
        var ok = X509_set_version(raw, Int(X509_VERSION_3)) == 1
        ok = ok && setRandomSerial(raw)
        ok = ok && X509_gmtime_adj(X509_getm_notBefore(raw), -3600) != nil
        ok = ok && X509_time_adj_ex(X509_getm_notAfter(raw), Int32(validityDays), 0, nil) != nil
        let subject = X509_get_subject_name(raw)
        ok = ok && X509_NAME_add_entry_by_txt(subject, "O", MBSTRING_UTF8, "pvmigrate", -1, -1, 0) == 1
        ok = ok && X509_NAME_add_entry_by_txt(subject, "CN", MBSTRING_UTF8, commonName, -1, -1, 0) == 1
        ok = ok && X509_set_issuer_name(raw, X509_get_subject_name(issuerCertificate)) == 1
        ok = ok && X509_set_pubkey(raw, subjectKey.pointer) == 1
        for (nid, value) in extensions where ok {
            ok = COpenSSL_X509_add_ext_nid(raw, issuerCertificate, nid, value) == 1
        }
        ok = ok && X509_sign(raw, signingKey, EVP_sha256()) > 0
        guard ok else { throw .certificate("cannot build the certificate for \(commonName) (\(errors()))") }
        return certificate
    }

    /// A random positive 128-bit serial number (RFC 5280 allows up to 20 octets).
    private static func setRandomSerial(_ certificate: OpaquePointer) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 16)
        // Sound: RAND_bytes fills exactly bytes.count bytes.
        guard RAND_bytes(&bytes, Int32(bytes.count)) == 1 else { return false }
        bytes[0] = (bytes[0] & 0x7f) | 0x40  // positive, full length
        guard let number = BN_bin2bn(bytes, Int32(bytes.count), nil) else { return false }
        defer { BN_free(number) }
        guard let serial = BN_to_ASN1_INTEGER(number, nil) else { return false }
        defer { ASN1_INTEGER_free(serial) }
        return X509_set_serialNumber(certificate, serial) == 1
    }

    private static func randomHex(bytes count: Int) -> String {
        var bytes = [UInt8](repeating: 0, count: count)
        // Sound: RAND_bytes fills exactly bytes.count bytes. On failure the
        // name is merely less unique.
        _ = RAND_bytes(&bytes, Int32(count))
        return bytes.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined()
    }

    // MARK: PEM

    private static func pem(certificate: OpaquePointer) throws(TransportError) -> [UInt8] {
        try withMemoryBIO { bio in PEM_write_bio_X509(bio, certificate) == 1 }
    }

    private static func pem(privateKey: OpaquePointer) throws(TransportError) -> [UInt8] {
        // PKCS#8, unencrypted: the file mode protects it.
        try withMemoryBIO { bio in PEM_write_bio_PrivateKey(bio, privateKey, nil, nil, 0, nil, nil) == 1 }
    }

    /// The bytes `write` puts into a memory BIO.
    private static func withMemoryBIO(_ write: (OpaquePointer) -> Bool) throws(TransportError) -> [UInt8] {
        guard let bio = BIO_new(BIO_s_mem()) else { throw .certificate("out of memory (\(errors()))") }
        defer { BIO_free(bio) }
        guard write(bio) else { throw .certificate("cannot encode PEM (\(errors()))") }
        var data: UnsafeMutablePointer<CChar>?
        let length = COpenSSL_BIO_get_mem_data(bio, &data)
        guard length > 0, let data else { throw .certificate("cannot encode PEM (empty output)") }
        // Sound: the BIO holds `length` bytes at `data` until it is freed (deferred above).
        return Array(UnsafeRawBufferPointer(start: data, count: length))
    }

    private static func readCertificate(_ path: String) throws(TransportError) -> Certificate {
        guard let bio = BIO_new_file(path, "r") else {
            throw .certificate("cannot open \(path) (\(errors())); check its permissions")
        }
        defer { BIO_free(bio) }
        guard let certificate = PEM_read_bio_X509(bio, nil, nil, nil) else {
            throw .certificate("\(path) is not a PEM certificate (\(errors())); restore it, or move the CA "
                + "files away to create a new CA")
        }
        return Certificate(certificate)
    }

    private static func readPrivateKey(_ path: String) throws(TransportError) -> PrivateKey {
        guard let bio = BIO_new_file(path, "r") else {
            throw .certificate("cannot open \(path) (\(errors())); check its permissions")
        }
        defer { BIO_free(bio) }
        // The callback refuses passphrases: keys are written unencrypted, and
        // OpenSSL must never prompt on the terminal.
        guard let key = PEM_read_bio_PrivateKey(bio, nil, { _, _, _, _ in 0 }, nil) else {
            throw .certificate("\(path) is not an unencrypted PEM private key (\(errors())); restore it, or "
                + "move the CA files away to create a new CA")
        }
        return PrivateKey(key)
    }

    /// Empties this thread's OpenSSL error queue into text.
    private static func errors() -> String {
        let text = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 1024) { buffer -> String in
            // Sound: COpenSSL_ERR_drain writes at most buffer.count bytes, NUL-terminated.
            _ = COpenSSL_ERR_drain(buffer.baseAddress, buffer.count)
            return String(cString: buffer.baseAddress!)
        }
        return text.isEmpty ? "no details from OpenSSL" : text
    }

    // MARK: Inspection (tests, `pvmigrate certs show`)

    /// What a certificate file says, as text.
    struct Summary: Equatable {
        var subject: String
        var issuer: String
        /// e.g. "DNS:dst, IP Address:192.0.2.10"
        var subjectAltNames: String
        /// e.g. "Digital Signature" (critical)
        var keyUsage: String
        /// e.g. "TLS Web Server Authentication, TLS Web Client Authentication"
        var extendedKeyUsage: String
        var isCA: Bool
        var serialHex: String
        var daysValid: Int
        var keyType: String
    }

    /// The names a certificate carries, for messages: "DNS:dst, IP Address:192.0.2.10 (CN=dst)";
    /// "no subjectAltName (CN=x)" when it has none.
    static func namesText(ofCertificate certificate: OpaquePointer) -> String {
        let alternatives = extensionText(certificate, nid: NID_subject_alt_name)
        var common = [CChar](repeating: 0, count: 256)
        // Sound: writes at most common.count bytes, NUL-terminated.
        let length = X509_NAME_get_text_by_NID(X509_get_subject_name(certificate), NID_commonName,
                                               &common, Int32(common.count))
        let cn = length > 0 ? cString(common) : "none"
        return "\(alternatives.isEmpty ? "no subjectAltName" : alternatives) (CN=\(cn))"
    }

    /// The text OpenSSL prints for extension `nid` of `certificate` ("" when absent).
    static func extensionText(_ certificate: OpaquePointer, nid: Int32) -> String {
        let index = X509_get_ext_by_NID(certificate, nid, -1)
        guard index >= 0, let ext = X509_get_ext(certificate, index) else { return "" }
        return (try? withMemoryBIO { bio in X509V3_EXT_print(bio, ext, 0, 0) == 1 })
            .map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    private static func nameText(_ name: OpaquePointer?) -> String {
        (try? withMemoryBIO { bio in X509_NAME_print_ex(bio, name, 0, COpenSSL_XN_FLAG_ONELINE) >= 0 })
            .map { String(decoding: $0, as: UTF8.self) } ?? ""
    }

    /// Reads and describes the PEM certificate at `path`.
    static func summary(ofCertificateAt path: String) throws(TransportError) -> Summary {
        let certificate = try readCertificate(path)
        let raw = certificate.pointer
        func extensionText(_ nid: Int32) -> String { Self.extensionText(raw, nid: nid) }
        var days: Int32 = 0
        var seconds: Int32 = 0
        _ = ASN1_TIME_diff(&days, &seconds, nil, X509_getm_notAfter(raw))
        var serialHex = ""
        if let number = ASN1_INTEGER_to_BN(X509_get_serialNumber(raw), nil) {
            if let hex = BN_bn2hex(number) {
                serialHex = String(cString: hex)
                COpenSSL_OPENSSL_free(hex)
            }
            BN_free(number)
        }
        let keyType = X509_get0_pubkey(raw).map { key -> String in
            let bits = EVP_PKEY_get_bits(key)
            return EVP_PKEY_is_a(key, "EC") == 1 ? "EC \(bits)" : "other \(bits)"
        } ?? "none"
        return Summary(
            subject: nameText(X509_get_subject_name(raw)), issuer: nameText(X509_get_issuer_name(raw)),
            subjectAltNames: extensionText(NID_subject_alt_name),
            keyUsage: extensionText(NID_key_usage),
            extendedKeyUsage: extensionText(NID_ext_key_usage),
            isCA: X509_check_ca(raw) != 0, serialHex: serialHex, daysValid: Int(days), keyType: keyType)
    }
}

/// The file operations `certs init` needs. Writes go to a temporary file
/// renamed into place, so a crash never leaves a half-written key.
private enum FileIO {
    static func exists(_ path: String) -> Bool {
        var info = stat()
        return stat(path, &info) == 0
    }

    /// mkdir -p, leaving existing directories as they are.
    static func makeDirectory(_ path: String, mode: mode_t) throws(TransportError) {
        var prefix = path.hasPrefix("/") ? "/" : ""
        for component in path.split(separator: "/") {
            prefix += component
            if mkdir(prefix, mode) != 0, errno != EEXIST {
                throw .certificate("cannot create the directory \(prefix): "
                    + "\(Errno.current.description); choose a directory you can write to")
            }
            prefix += "/"
        }
    }

    static func write(_ bytes: [UInt8], to path: String, mode: mode_t) throws(TransportError) {
        let temporary = path + ".tmp"
        func fail(_ what: String) -> TransportError {
            .certificate("cannot \(what) \(path): \(Errno.current.description); check the directory's "
                + "permissions and free space")
        }
        _ = unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw fail("create") }
        var done = 0
        while done < bytes.count {
            // Sound: reads at most bytes.count - done bytes from the array's storage.
            let n = bytes.withUnsafeBytes { b in retryingEINTR { Glibc.write(fd, b.baseAddress! + done, b.count - done) } }
            guard n > 0 else { let error = fail("write"); _ = Glibc.close(fd); _ = unlink(temporary); throw error }
            done += n
        }
        // The umask may have narrowed `mode`; set it exactly (0600 keys stay 0600).
        guard fchmod(fd, mode) == 0, fsync(fd) == 0 else {
            let error = fail("write")
            _ = Glibc.close(fd)
            _ = unlink(temporary)
            throw error
        }
        _ = Glibc.close(fd)
        guard rename(temporary, path) == 0 else { let error = fail("replace"); _ = unlink(temporary); throw error }
    }
}
