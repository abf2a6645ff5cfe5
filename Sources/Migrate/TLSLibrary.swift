// The OpenSSL library behind the TLS transport. For now the only file in the
// package that imports COpenSSL; the transport itself is a later issue and
// will become that one file.

import COpenSSL

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
