/*
 * Wrappers for OpenSSL function-like macros; contracts in include/COpenSSL.h.
 * Each body is the macro it names, nothing more.
 */
#include "COpenSSL.h"

#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>

const char *COpenSSL_version_text(void) { return OpenSSL_version(OPENSSL_VERSION); }

const char *COpenSSL_header_version_text(void) { return OPENSSL_VERSION_TEXT; }

unsigned long COpenSSL_version_number(void) { return OpenSSL_version_num(); }

int COpenSSL_SSL_CTX_set_min_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_min_proto_version(ctx, version);
}

int COpenSSL_SSL_CTX_set_max_proto_version(SSL_CTX *ctx, int version) {
    return (int)SSL_CTX_set_max_proto_version(ctx, version);
}

long COpenSSL_SSL_CTX_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }

long COpenSSL_SSL_CTX_clear_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_clear_mode(ctx, mode); }

long COpenSSL_SSL_CTX_set_session_cache_mode(SSL_CTX *ctx, long mode) {
    return SSL_CTX_set_session_cache_mode(ctx, mode);
}

int COpenSSL_SSL_CTX_set1_groups_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_groups_list(ctx, list);
}

int COpenSSL_SSL_CTX_set1_sigalgs_list(SSL_CTX *ctx, const char *list) {
    return (int)SSL_CTX_set1_sigalgs_list(ctx, list);
}

int COpenSSL_SSL_set_tlsext_host_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

long COpenSSL_BIO_get_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }

BUF_MEM *COpenSSL_BIO_get_mem_ptr(BIO *bio) {
    BUF_MEM *mem = NULL;
    if (BIO_get_mem_ptr(bio, &mem) <= 0) return NULL;
    return mem;
}

EVP_PKEY *COpenSSL_EVP_EC_gen(const char *curve) {
    if (curve == NULL) return NULL;
    return EVP_EC_gen(curve);
}

EVP_PKEY *COpenSSL_EVP_RSA_gen(unsigned int bits) { return EVP_RSA_gen(bits); }

EVP_PKEY *COpenSSL_EVP_ED25519_gen(void) { return EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"); }

int COpenSSL_X509_add_ext_nid(X509 *cert, X509 *issuer, int nid, const char *value) {
    if (cert == NULL || issuer == NULL || value == NULL) return 0;
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
    X509V3_set_ctx_nodb(&ctx);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
    if (ext == NULL) return 0;
    int ok = X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 1 : 0;
}

const unsigned long COpenSSL_XN_FLAG_ONELINE = XN_FLAG_ONELINE;

int COpenSSL_ERR_drain(char *buf, size_t len) {
    int count = 0;
    size_t used = 0;
    if (buf != NULL && len > 0) buf[0] = '\0';
    unsigned long code;
    while ((code = ERR_get_error()) != 0) {
        count++;
        if (buf == NULL || len == 0 || used + 1 >= len) continue;
        if (count > 1) {
            size_t n = strlen("; ");
            if (used + n + 1 >= len) { used = len - 1; continue; }
            memcpy(buf + used, "; ", n);
            used += n;
            buf[used] = '\0';
        }
        ERR_error_string_n(code, buf + used, len - used);
        used += strlen(buf + used);
    }
    return count;
}

void COpenSSL_OPENSSL_free(void *ptr) { OPENSSL_free(ptr); }

/* ---- Transport ---------------------------------------------------------- */

const uint64_t COpenSSL_SSL_OP_IGNORE_UNEXPECTED_EOF = SSL_OP_IGNORE_UNEXPECTED_EOF;
const uint64_t COpenSSL_SSL_OP_NO_RENEGOTIATION = SSL_OP_NO_RENEGOTIATION;

void COpenSSL_SSL_CTX_set_read_ahead(SSL_CTX *ctx, int yes) { SSL_CTX_set_read_ahead(ctx, yes); }

/* The no-SIGPIPE socket BIO: BIO_s_socket's logic with send(MSG_NOSIGNAL). */

static int nosig_should_retry(int err) {
    return err == EAGAIN || err == EWOULDBLOCK || err == EINTR || err == EINPROGRESS;
}

static int nosig_fd(BIO *bio) { return (int)(intptr_t)BIO_get_data(bio); }

static int nosig_write(BIO *bio, const char *data, int len) {
    BIO_clear_retry_flags(bio);
    if (len <= 0) return 0;
    ssize_t n = send(nosig_fd(bio), data, (size_t)len, MSG_NOSIGNAL);
    if (n <= 0 && nosig_should_retry(errno)) BIO_set_retry_write(bio);
    return (int)n;
}

static int nosig_read(BIO *bio, char *data, int len) {
    BIO_clear_retry_flags(bio);
    if (data == NULL || len <= 0) return 0;
    ssize_t n = recv(nosig_fd(bio), data, (size_t)len, 0);
    if (n < 0 && nosig_should_retry(errno)) BIO_set_retry_read(bio);
    else if (n == 0) BIO_set_flags(bio, BIO_FLAGS_IN_EOF);
    return (int)n;
}

static int nosig_puts(BIO *bio, const char *text) { return nosig_write(bio, text, (int)strlen(text)); }

static long nosig_ctrl(BIO *bio, int cmd, long num, void *ptr) {
    (void)num;
    switch (cmd) {
    case BIO_C_GET_FD:
        if (ptr != NULL) *(int *)ptr = nosig_fd(bio);
        return nosig_fd(bio);
    case BIO_CTRL_DUP:
    case BIO_CTRL_FLUSH:
        return 1;
    case BIO_CTRL_EOF:
        return BIO_test_flags(bio, BIO_FLAGS_IN_EOF) != 0;
    default:
        return 0;
    }
}

static int nosig_create(BIO *bio) {
    BIO_set_data(bio, (void *)(intptr_t)-1);
    BIO_set_init(bio, 0);
    return 1;
}

static BIO_METHOD *nosig_method = NULL;
static pthread_once_t nosig_once = PTHREAD_ONCE_INIT;

static void nosig_make_method(void) {
    int type = BIO_get_new_index();
    if (type == -1) return;
    BIO_METHOD *method = BIO_meth_new(type | BIO_TYPE_SOURCE_SINK | BIO_TYPE_DESCRIPTOR,
                                      "pvmigrate socket (MSG_NOSIGNAL)");
    if (method == NULL) return;
    if (!BIO_meth_set_write(method, nosig_write) || !BIO_meth_set_read(method, nosig_read)
        || !BIO_meth_set_puts(method, nosig_puts) || !BIO_meth_set_ctrl(method, nosig_ctrl)
        || !BIO_meth_set_create(method, nosig_create)) {
        BIO_meth_free(method);
        return;
    }
    nosig_method = method; /* lives as long as the process */
}

BIO *COpenSSL_BIO_new_socket_nosigpipe(int fd) {
    pthread_once(&nosig_once, nosig_make_method);
    if (nosig_method == NULL || fd < 0) return NULL;
    BIO *bio = BIO_new(nosig_method);
    if (bio == NULL) return NULL;
    BIO_set_data(bio, (void *)(intptr_t)fd);
    BIO_set_init(bio, 1);
    return bio;
}
