/*
 * COpenSSL: libssl + libcrypto (apt: libssl-dev, OpenSSL 3.0 or newer) and
 * plain-function wrappers for the OpenSSL function-like macros Swift cannot
 * import. Only the TLS transport file of the Migrate target imports this
 * module (Sources/Migrate/Transport/TLSStream.swift, which also reports the
 * library version), plus the certificate file (Transport/CertificateAuthority.swift).
 *
 * Naming: COpenSSL_<the macro it wraps>. Each wrapper returns exactly what
 * the wrapped OpenSSL call returns (OpenSSL reports failure by value and on
 * its error queue, not through errno); COpenSSL_ERR_drain turns the queue
 * into text for an error message.
 */
#ifndef PVMIGRATE_COPENSSL_H
#define PVMIGRATE_COPENSSL_H

#include <stddef.h>
#include <stdint.h>

#include <openssl/bio.h>
#include <openssl/buffer.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/opensslv.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#if OPENSSL_VERSION_MAJOR < 3
#error "pvmigrate needs OpenSSL 3.0 or newer (apt: libssl-dev on Debian 12)"
#endif

/* ---- Library identity -------------------------------------------------- */

/// The version text of the libcrypto linked at run time, e.g.
/// "OpenSSL 3.0.11 19 Sep 2023". Never NULL; owned by OpenSSL, do not free.
const char *COpenSSL_version_text(void);

/// The version text of the headers this module was compiled against
/// (OPENSSL_VERSION_TEXT). Never NULL; a static string.
const char *COpenSSL_header_version_text(void);

/// The run-time library version number (OpenSSL_version_num()),
/// 0xMNN00PP0L for 3.x.
unsigned long COpenSSL_version_number(void);

/* ---- SSL_CTX / SSL configuration (macros over SSL_CTX_ctrl / SSL_ctrl) -- */

/// SSL_CTX_set_min_proto_version: the lowest protocol `ctx` negotiates
/// (e.g. TLS1_3_VERSION; 0 means the library's lowest).
/// Returns 1 on success, 0 if `version` is not a valid protocol version.
int COpenSSL_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version);

/// SSL_CTX_set_max_proto_version: the highest protocol `ctx` negotiates
/// (0 means the library's highest).
/// Returns 1 on success, 0 if `version` is not a valid protocol version.
int COpenSSL_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version);

/// SSL_CTX_set_mode: adds the SSL_MODE_* bits in `mode` to `ctx`
/// (e.g. SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_AUTO_RETRY).
/// Returns the mode bitmask now in effect. Cannot fail.
long COpenSSL_SSL_CTX_set_mode(SSL_CTX *ctx, long mode);

/// SSL_CTX_clear_mode: removes the SSL_MODE_* bits in `mode` from `ctx`.
/// Returns the mode bitmask now in effect. Cannot fail.
long COpenSSL_SSL_CTX_clear_mode(SSL_CTX *ctx, long mode);

/// SSL_CTX_set_session_cache_mode: sets the SSL_SESS_CACHE_* mode of `ctx`
/// (SSL_SESS_CACHE_OFF disables resumption). Returns the previous mode.
long COpenSSL_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode);

/// SSL_CTX_set1_groups_list: the key-exchange groups `ctx` offers, as a
/// colon-separated list (e.g. "X25519:P-256"). `list` is copied.
/// Returns 1 on success, 0 if no group in the list is known.
int COpenSSL_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list);

/// SSL_CTX_set1_sigalgs_list: the signature algorithms `ctx` accepts and
/// offers, colon-separated (e.g. "ECDSA+SHA256:ed25519"). `list` is copied.
/// Returns 1 on success, 0 if the list is invalid.
int COpenSSL_SSL_CTX_set1_sigalgs_list(SSL_CTX *ctx, const char *list);

/// SSL_set_tlsext_host_name: the SNI host name a client `ssl` sends.
/// `name` is copied; NULL clears it.
/// Returns 1 on success, 0 on failure (name too long or invalid).
int COpenSSL_SSL_set_tlsext_host_name(SSL *ssl, const char *name);

/* ---- Memory BIOs ------------------------------------------------------- */

/// BIO_get_mem_data: points `*data` at the bytes buffered in memory BIO `bio`
/// (not NUL-terminated; owned by the BIO and valid until the BIO is written,
/// read or freed). Returns the number of bytes, or a value <= 0 if `bio` is
/// not a memory BIO (then `*data` is unspecified).
long COpenSSL_BIO_get_mem_data(BIO *bio, char **data);

/// BIO_get_mem_ptr: the BUF_MEM behind memory BIO `bio` (owned by the BIO).
/// Returns NULL if `bio` is not a memory BIO.
BUF_MEM *COpenSSL_BIO_get_mem_ptr(BIO *bio);

/* ---- Keys and certificates --------------------------------------------- */

/// EVP_EC_gen: a new EC private key on the named curve (e.g. "P-256",
/// "prime256v1", "P-384"). Returns a key the caller frees with EVP_PKEY_free,
/// or NULL on failure (unknown curve; details on the error queue).
EVP_PKEY *COpenSSL_EVP_EC_gen(const char *curve);

/// EVP_RSA_gen: a new RSA private key of `bits` bits (2048 or more).
/// Returns a key the caller frees with EVP_PKEY_free, or NULL on failure.
EVP_PKEY *COpenSSL_EVP_RSA_gen(unsigned int bits);

/// EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"): a new Ed25519 private key.
/// Returns a key the caller frees with EVP_PKEY_free, or NULL on failure.
EVP_PKEY *COpenSSL_EVP_ED25519_gen(void);

/// Adds the X.509 v3 extension `nid` with the textual `value` (OpenSSL's
/// config syntax, e.g. NID_subject_alt_name "DNS:host,IP:10.0.0.1",
/// NID_basic_constraints "critical,CA:TRUE", NID_key_usage
/// "critical,keyCertSign,cRLSign", NID_subject_key_identifier "hash")
/// to `cert`. `issuer` is the issuing certificate (`cert` itself when
/// self-signed), needed for NID_authority_key_identifier; its public key must
/// already be set. Wraps X509V3_set_ctx + the X509V3_set_ctx_nodb macro +
/// X509V3_EXT_conf_nid + X509_add_ext.
/// Returns 1 on success, 0 on failure (bad value; details on the error queue).
int COpenSSL_X509_add_ext_nid(X509 *cert, X509 *issuer, int nid, const char *value);

/// XN_FLAG_ONELINE (a macro of casts Swift cannot import) for
/// X509_NAME_print_ex: prints "O = pvmigrate, CN = dst".
extern const unsigned long COpenSSL_XN_FLAG_ONELINE;

/* ---- Transport ---------------------------------------------------------- */

/// SSL_OP_IGNORE_UNEXPECTED_EOF (SSL_OP_BIT(7), which Swift cannot import):
/// a TCP EOF without close_notify reads as SSL_ERROR_ZERO_RETURN.
extern const uint64_t COpenSSL_SSL_OP_IGNORE_UNEXPECTED_EOF;

/// SSL_OP_NO_RENEGOTIATION: refuse renegotiation (irrelevant in TLS 1.3, set
/// for defence in depth).
extern const uint64_t COpenSSL_SSL_OP_NO_RENEGOTIATION;

/// SSL_CTX_set_read_ahead: when `yes` is 1, the record layer reads as many
/// bytes as the socket has (up to its read buffer) instead of one record
/// header and body at a time. Cannot fail.
void COpenSSL_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes);

/// A BIO over the connected socket `fd` that sends with MSG_NOSIGNAL, so a
/// write to a connection the peer closed returns EPIPE instead of raising
/// SIGPIPE (OpenSSL's socket BIO uses write(2), which raises it). Otherwise it
/// behaves like BIO_s_socket: recv/send with the retry flags set on
/// EAGAIN/EWOULDBLOCK/EINTR (so non-blocking sockets work), BIO_eof true after
/// recv returned 0, BIO_get_fd returns `fd`. It never closes `fd`; the caller
/// owns it and must keep it open while the BIO (or the SSL holding it) is used.
/// Returns a BIO the caller frees with BIO_free (or hands to SSL_set_bio), or
/// NULL on allocation failure.
BIO *COpenSSL_BIO_new_socket_nosigpipe(int fd);

/* ---- Errors and memory ------------------------------------------------- */

/// Empties this thread's OpenSSL error queue, writing the messages, oldest
/// first and separated by "; ", into `buf` (`len` bytes, always
/// NUL-terminated when len > 0; truncated if too small; `buf` may be NULL
/// when len == 0). Returns the number of errors removed from the queue.
int COpenSSL_ERR_drain(char *buf, size_t len);

/// OPENSSL_free: frees memory OpenSSL allocated and handed to the caller
/// (e.g. from X509_NAME_oneline or i2d_* with a NULL output). NULL is a no-op.
void COpenSSL_OPENSSL_free(void *ptr);

#endif /* PVMIGRATE_COPENSSL_H */
