/*
 * Wrappers for OpenSSL function-like macros; contracts in include/COpenSSL.h.
 * Each body is the macro it names, nothing more.
 */
#include "COpenSSL.h"

#include <string.h>

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
