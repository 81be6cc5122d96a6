/*
 * tls.cpp - OpenSSL as a state machine over memory BIOs.
 *
 * The engine (tls_conn) owns two memory BIOs: rbio holds ciphertext from the
 * peer until SSL_read/SSL_do_handshake consume it, wbio collects ciphertext
 * OpenSSL produced until someone sends it. Neither ever blocks, so OpenSSL
 * only ever says "want read" (rbio ran dry); "want write" cannot happen.
 * tls_transport puts a nonblocking socket under the engine for the mux.
 *
 * The BIOs are our own small memory BIO over a ring (ring.h) rather than
 * BIO_s_mem(): the socket reads straight into rbio's ring and writes
 * straight from wbio's, and nothing is reallocated or cleansed as
 * OpenSSL's memory BIO does (ciphertext is no secret).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif

#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "ring.h"
#include "tls.h"

enum {
    TLS_REC = 16384,          /* plaintext per record, the TLS maximum */
    TLS_READ_CHUNK = 32768,   /* ciphertext taken per read(2) */
    TLS_HIGH = 65536,         /* held ciphertext above which writev says IO_AGAIN */
    TLS_OUT_MAX = 2 * TLS_HIGH, /* held ciphertext above which reading stops: what
                                   reading makes (key update answers) the peer
                                   does not take; writev never holds this much */
};

/* RFC 8446 5.5: at most 2^24.5 full records under one AES-GCM key; new
 * sending keys (KeyUpdate) after 2^24 records, whatever their size, so a
 * tunnel that lives for months never nears the limit. */
#define TLS_REKEY_RECORDS (1ull << 24)

struct tls_ctx {
    int refs = 1;                   /* its owner's, and one per connection made from it */
    uint64_t rekey = TLS_REKEY_RECORDS;
    SSL_CTX *ssl = nullptr;
    bool server = false;
    std::string pin;                /* client: 32 raw bytes, or empty */
    std::string alpn;               /* server: wire format */
    std::vector<SSL_CTX *> sni;     /* server: one holder per cert pair, [0] default */
};

struct tls_conn {
    tls_ctx *ctx = nullptr;         /* a reference: its callbacks' data lives as long */
    SSL *ssl = nullptr;
    BIO *rbio = nullptr;            /* peer's ciphertext, waiting for OpenSSL: in */
    BIO *wbio = nullptr;            /* OpenSSL's ciphertext, waiting for the peer: out */
    ring in, out;
    uint64_t records = 0;           /* sent under the current keys (about: a write's
                                       bytes / TLS_REC, rounded up) */
    unsigned key_updates = 0;       /* ours, sent */
    bool dead = false;              /* a fatal error happened: err says which */
    std::string err;
    std::string fail;               /* certificate problem seen while verifying */
    std::string name;               /* client: the name we verify */
};

/* ---- helpers ---- */

static std::string hex_colons(const unsigned char *p, size_t n)
{
    static const char digits[] = "0123456789ABCDEF";
    std::string s;
    for (size_t i = 0; i < n; i++) {
        if (i)
            s += ':';
        s += digits[p[i] >> 4];
        s += digits[p[i] & 15];
    }
    return s;
}

/* The reason of the oldest queued OpenSSL error ("No such file or directory",
 * "key values mismatch"), then an empty queue. */
static std::string ossl_reason()
{
    unsigned long e = ERR_peek_error();
    const char *r = e ? ERR_reason_error_string(e) : nullptr;
    char buf[256];
    if (e && ERR_SYSTEM_ERROR(e))
        r = strerror(ERR_GET_REASON(e));    /* the reason is an errno */
    if (!r) {
        ERR_error_string_n(e, buf, sizeof buf);
        r = e ? buf : "unknown error";
    }
    std::string s = r;
    ERR_clear_error();
    return s;
}

static bool is_ip_literal(const char *name)
{
    unsigned char a[16];
    return inet_pton(AF_INET, name, a) == 1 || inet_pton(AF_INET6, name, a) == 1;
}

static tls_conn *conn_of_store(X509_STORE_CTX *x)
{
    SSL *s = (SSL *)X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    return s ? (tls_conn *)SSL_get_app_data(s) : nullptr;
}

/* Remember the first certificate problem in words, naming the certificate
 * involved, because the bare X509 error ("unable to get local issuer
 * certificate") does not tell an operator which CA is missing. */
static int verify_cb(int ok, X509_STORE_CTX *x)
{
    tls_conn *t = conn_of_store(x);
    if (ok || !t || !t->fail.empty())
        return ok;
    int e = X509_STORE_CTX_get_error(x);
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    char subj[256] = "?", iss[256] = "?";
    if (cert) {
        X509_NAME_oneline(X509_get_subject_name(cert), subj, sizeof subj);
        X509_NAME_oneline(X509_get_issuer_name(cert), iss, sizeof iss);
    }
    t->fail = "certificate verify failed: ";
    t->fail += X509_verify_cert_error_string(e);
    switch (e) {
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        t->fail += " (unknown CA: issuer ";
        t->fail += iss;
        break;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
        t->fail += " (wanted " + t->name + ", certificate for ";
        t->fail += subj;
        break;
    default:
        t->fail += " (subject ";
        t->fail += subj;
        break;
    }
    t->fail += ")";
    return 0;
}

/* With a pin the chain means nothing: this replaces chain verification and
 * compares the leaf's SHA-256 in constant time. Failing here (rather than
 * after the handshake) also tells the server why, with a bad_certificate
 * alert, and no application byte ever flows to the wrong peer. */
static int pin_cb(X509_STORE_CTX *x, void *arg)
{
    const tls_ctx *c = (const tls_ctx *)arg;
    tls_conn *t = conn_of_store(x);
    X509 *leaf = X509_STORE_CTX_get0_cert(x);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;

    if (leaf && X509_digest(leaf, EVP_sha256(), md, &n) && n == c->pin.size()
        && CRYPTO_memcmp(md, c->pin.data(), n) == 0)
        return 1;
    if (t)
        t->fail = "certificate fingerprint mismatch (got " + hex_colons(md, n) + ")";
    X509_STORE_CTX_set_error(x, X509_V_ERR_CERT_REJECTED);
    return 0;
}

static int sni_cb(SSL *s, int *alert, void *arg)
{
    (void)alert;
    const tls_ctx *c = (const tls_ctx *)arg;
    const char *name = SSL_get_servername(s, TLSEXT_NAMETYPE_host_name);
    if (!name)
        return SSL_TLSEXT_ERR_OK;
    for (size_t i = 0; i < c->sni.size(); i++) {
        X509 *x = SSL_CTX_get0_certificate(c->sni[i]);
        /* SAN DNS names, CN only without them; "*." covers one label */
        if (X509_check_host(x, name, 0, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS, nullptr) != 1)
            continue;
        if (i == 0)
            return SSL_TLSEXT_ERR_OK;     /* the default is already in place */
        STACK_OF(X509) *chain = nullptr;
        SSL_CTX_get0_chain_certs(c->sni[i], &chain);
        /* clear first: a default with another key type would stay in its
         * slot and might be preferred over the one we pick */
        SSL_certs_clear(s);
        if (SSL_use_cert_and_key(s, x, SSL_CTX_get0_privatekey(c->sni[i]), chain, 1) != 1)
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_OK;
}

static int alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)s;
    const tls_ctx *c = (const tls_ctx *)arg;
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, (const unsigned char *)c->alpn.data(),
                              (unsigned int)c->alpn.size(), in, inlen) != OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;    /* no overlap: carry on without ALPN */
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Never let OpenSSL prompt on a terminal for an encrypted key's passphrase. */
static int no_passphrase(char *buf, int size, int rw, void *u)
{
    (void)buf; (void)size; (void)rw; (void)u;
    return 0;
}

/*
 * TLS 1.3 suites in order of preference. With AES instructions AES-128-GCM
 * comes first (10 rounds instead of AES-256's 14, the order of Mozilla's
 * guidelines and of browsers); without them, as on many ARM boards,
 * ChaCha20-Poly1305 is several times faster than AES in software. The
 * server follows the client's order, so the side without AES hardware
 * chooses, as BoringSSL and Go do.
 */
#define SUITES_AES_FIRST "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define SUITES_CHACHA_FIRST "TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384"

static bool aes_hw()
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul");
#elif defined(__linux__) && defined(__aarch64__)
    return (getauxval(AT_HWCAP) & (1ul << 3 | 1ul << 4)) == (1ul << 3 | 1ul << 4);   /* HWCAP_AES, HWCAP_PMULL */
#elif defined(__linux__) && defined(__arm__)
    return (getauxval(AT_HWCAP2) & 3ul) == 3ul;         /* HWCAP2_AES, HWCAP2_PMULL */
#else
    return true;    /* unknown: OpenSSL's own preference is AES too */
#endif
}

static tls_ctx *ctx_new(bool server, std::string *err)
{
    SSL_CTX *s = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!s) {
        *err = "SSL_CTX_new: " + ossl_reason();
        return nullptr;
    }
    SSL_CTX_set_min_proto_version(s, TLS1_2_VERSION);
    SSL_CTX_set_options(s, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    /* partial writes let writev report what it took; RELEASE_BUFFERS frees
     * OpenSSL's record buffers whenever they are empty (a transport that
     * moves bulk keeps them until it is quiet: tls_transport::moved) */
    SSL_CTX_set_mode(s, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                        | SSL_MODE_RELEASE_BUFFERS | SSL_MODE_AUTO_RETRY);
    SSL_CTX_set_default_passwd_cb(s, no_passphrase);
    SSL_CTX_set_ciphersuites(s, aes_hw() ? SUITES_AES_FIRST : SUITES_CHACHA_FIRST);
    tls_ctx *c = new tls_ctx;
    c->ssl = s;
    c->server = server;
    return c;
}

/* Load a PEM chain and key into s. */
static bool load_pair(SSL_CTX *s, const std::string &cert, const std::string &key,
                      std::string *err)
{
    const std::string &k = key.empty() ? cert : key;
    if (SSL_CTX_use_certificate_chain_file(s, cert.c_str()) != 1) {
        *err = "cert " + cert + ": " + ossl_reason();
        return false;
    }
    if (SSL_CTX_use_PrivateKey_file(s, k.c_str(), SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(s) != 1) {
        *err = "key " + k + ": " + ossl_reason();
        return false;
    }
    return true;
}

/* A fresh self-signed EC P-256 certificate, valid 10 years, that lives only
 * in memory: a key in the source or on disk would be everyone's key. */
static bool self_signed(SSL_CTX *s, const std::string &cn, std::string *err)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    X509 *x = X509_new();
    BIGNUM *bn = nullptr;
    X509_EXTENSION *san = nullptr;
    unsigned char serial[16];
    bool ok = false;

    if (!k || !x || RAND_bytes(serial, sizeof serial) != 1)
        goto out;
    serial[0] &= 0x7f;                  /* positive, per RFC 5280 */
    serial[0] |= 0x40;                  /* and never short */
    bn = BN_bin2bn(serial, sizeof serial, nullptr);
    if (!bn || !BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x))
        || !X509_set_version(x, X509_VERSION_3)
        || !X509_gmtime_adj(X509_getm_notBefore(x), -3600)      /* tolerate clock skew */
        || !X509_time_adj_ex(X509_getm_notAfter(x), 3650, 0, nullptr)
        || !X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_UTF8,
                                       (const unsigned char *)cn.c_str(), -1, -1, 0)
        || !X509_set_issuer_name(x, X509_get_subject_name(x))
        || !X509_set_pubkey(x, k))
        goto out;
    {
        X509V3_CTX v;
        std::string alt = (is_ip_literal(cn.c_str()) ? "IP:" : "DNS:") + cn;
        X509V3_set_ctx_nodb(&v);
        X509V3_set_ctx(&v, x, x, nullptr, nullptr, 0);
        san = X509V3_EXT_conf_nid(nullptr, &v, NID_subject_alt_name, alt.c_str());
    }
    if (!san || !X509_add_ext(x, san, -1) || !X509_sign(x, k, EVP_sha256())
        || SSL_CTX_use_cert_and_key(s, x, k, nullptr, 1) != 1)
        goto out;
    ok = true;
out:
    if (!ok)
        *err = "self-signed certificate for " + cn + ": " + ossl_reason();
    X509_EXTENSION_free(san);
    BN_free(bn);
    X509_free(x);
    EVP_PKEY_free(k);
    return ok;
}

/* ---- contexts ---- */

tls_ctx *tls_server_ctx_new(const tls_server_opts &o, std::string *err)
{
    tls_ctx *c = ctx_new(true, err);
    if (!c)
        return nullptr;
    SSL_CTX *s = c->ssl;
    static const unsigned char sid[] = "wmproxyd";

    /* resumption is refused without a session id context once client
     * certificates are verified */
    SSL_CTX_set_session_id_context(s, sid, sizeof sid - 1);
    SSL_CTX_sess_set_cache_size(s, 1024);     /* bounded: low-memory hosts */

    if (o.certs.empty() && o.keep_generated) {
        if (SSL_CTX_use_cert_and_key(s, SSL_CTX_get0_certificate(o.keep_generated->ssl),
                                     SSL_CTX_get0_privatekey(o.keep_generated->ssl), nullptr, 1) != 1) {
            *err = "generated certificate: " + ossl_reason();
            goto fail;
        }
    } else if (o.certs.empty()) {
        if (!self_signed(s, o.self_signed_cn, err))
            goto fail;
    }
    /* each pair loads into a holder context of its own, so SNI can pick its
     * certificate, key and chain without reading files per handshake */
    for (size_t i = 0; i < o.certs.size(); i++) {
        SSL_CTX *h = SSL_CTX_new(TLS_server_method());
        if (!h) {
            *err = "SSL_CTX_new: " + ossl_reason();
            goto fail;
        }
        c->sni.push_back(h);
        SSL_CTX_set_default_passwd_cb(h, no_passphrase);
        if (!load_pair(h, o.certs[i].first, o.certs[i].second, err))
            goto fail;
    }
    if (!c->sni.empty()) {
        STACK_OF(X509) *chain = nullptr;
        SSL_CTX_get0_chain_certs(c->sni[0], &chain);
        if (SSL_CTX_use_cert_and_key(s, SSL_CTX_get0_certificate(c->sni[0]),
                                     SSL_CTX_get0_privatekey(c->sni[0]), chain, 1) != 1) {
            *err = "cert " + o.certs[0].first + ": " + ossl_reason();
            goto fail;
        }
    }
    if (c->sni.size() > 1) {
        SSL_CTX_set_tlsext_servername_callback(s, sni_cb);
        SSL_CTX_set_tlsext_servername_arg(s, c);
    }
    if (!o.client_ca.empty()) {
        const char *ca = o.client_ca.c_str();
        STACK_OF(X509_NAME) *names;
        if (SSL_CTX_load_verify_locations(s, ca, nullptr) != 1
            || !(names = SSL_load_client_CA_file(ca))) {
            *err = "client_ca " + o.client_ca + ": " + ossl_reason();
            goto fail;
        }
        SSL_CTX_set_client_CA_list(s, names);
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
    }
    if (o.alpn && *o.alpn) {
        size_t n = strlen(o.alpn);
        if (n > 255) {
            *err = "alpn: protocol name too long";
            goto fail;
        }
        c->alpn.assign(1, (char)n);
        c->alpn += o.alpn;
        SSL_CTX_set_alpn_select_cb(s, alpn_cb, c);
    }
    return c;
fail:
    tls_ctx_free(c);
    return nullptr;
}

tls_ctx *tls_client_ctx_new(const tls_client_opts &o, std::string *err)
{
    tls_ctx *c = ctx_new(false, err);
    if (!c)
        return nullptr;
    SSL_CTX *s = c->ssl;

    if (!o.fingerprint.empty()) {
        if (o.fingerprint.size() != 32) {
            *err = "fingerprint: want the 32 bytes of a SHA-256 digest";
            goto fail;
        }
        c->pin = o.fingerprint;
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER, nullptr);
        SSL_CTX_set_cert_verify_callback(s, pin_cb, c);
    } else if (!o.verify) {
        SSL_CTX_set_verify(s, SSL_VERIFY_NONE, nullptr);
    } else {
        if (!o.ca.empty() ? SSL_CTX_load_verify_locations(s, o.ca.c_str(), nullptr) != 1
                          : SSL_CTX_set_default_verify_paths(s) != 1) {
            *err = (o.ca.empty() ? std::string("system CA store") : "ca " + o.ca) + ": "
                 + ossl_reason();
            goto fail;
        }
        SSL_CTX_set_verify(s, SSL_VERIFY_PEER, verify_cb);
    }
    if ((!o.cert.empty() || !o.key.empty()) && !load_pair(s, o.cert, o.key, err))
        goto fail;
    return c;
fail:
    tls_ctx_free(c);
    return nullptr;
}

void tls_ctx_free(tls_ctx *c)
{
    if (!c || --c->refs > 0)
        return;
    for (SSL_CTX *h : c->sni)
        SSL_CTX_free(h);
    SSL_CTX_free(c->ssl);
    delete c;
}

std::string tls_ctx_fingerprint(const tls_ctx *c)
{
    X509 *x = SSL_CTX_get0_certificate(c->ssl);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (!x || !X509_digest(x, EVP_sha256(), md, &n))
        return "";
    return hex_colons(md, n);
}

/* ---- the ring BIO: a memory BIO whose bytes live in a ring ---- */

/* Make room for n more bytes, in steps of 16 KiB: 16 KiB areas come from
 * the pool, and the largest ring (TLS_HIGH plus a record) stays under
 * glibc's mmap threshold. */
static int ring_reserve(ring *r, size_t n)
{
    if (ring_room(r) >= n)
        return 0;
    size_t sz = (r->data + n + TLS_REC - 1) / TLS_REC * TLS_REC;
    return r->area ? ring_grow(r, sz) : ring_alloc(r, sz);
}

static int rbio_write(BIO *b, const char *p, int n)
{
    ring *r = (ring *)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (n <= 0)
        return 0;
    if (ring_reserve(r, (size_t)n) < 0)
        return -1;
    ring_put(r, p, (size_t)n);
    return n;
}

static int rbio_read(BIO *b, char *p, int n)
{
    ring *r = (ring *)BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (r->data == 0) {
        BIO_set_retry_read(b);      /* empty means "more later", never EOF */
        return -1;
    }
    size_t k = (size_t)n < r->data ? (size_t)n : r->data;
    ring_peek(r, 0, p, k);
    ring_consume(r, k);
    return (int)k;
}

static long rbio_ctrl(BIO *b, int cmd, long, void *)
{
    switch (cmd) {
    case BIO_CTRL_PENDING:
        return (long)((ring *)BIO_get_data(b))->data;
    case BIO_CTRL_FLUSH:
        return 1;
    default:
        return 0;
    }
}

static int rbio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *ring_bio_method;

static void ring_bio_method_free(void)
{
    BIO_meth_free(ring_bio_method);
}

static BIO *ring_bio_new(ring *r)
{
    if (!ring_bio_method) {
        BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "wmproxy ring");
        if (!m || !BIO_meth_set_write(m, rbio_write) || !BIO_meth_set_read(m, rbio_read) ||
            !BIO_meth_set_ctrl(m, rbio_ctrl) || !BIO_meth_set_create(m, rbio_create)) {
            BIO_meth_free(m);
            return nullptr;
        }
        ring_bio_method = m;
        atexit(ring_bio_method_free);
    }
    BIO *b = BIO_new(ring_bio_method);
    if (b)
        BIO_set_data(b, r);
    return b;
}

/* ---- the engine ---- */

tls_conn *tls_conn_new(tls_ctx *c, bool is_server, const char *server_name)
{
    tls_conn *t = new tls_conn;
    t->ssl = SSL_new(c->ssl);
    t->rbio = ring_bio_new(&t->in);
    t->wbio = ring_bio_new(&t->out);
    if (!t->ssl || !t->rbio || !t->wbio) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        delete t;
        ERR_clear_error();
        return nullptr;
    }
    /* an empty rbio means "wait for more", never end of stream (default -1) */
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_app_data(t->ssl, t);
    t->ctx = c;
    c->refs++;
    if (is_server) {
        SSL_set_accept_state(t->ssl);
        return t;
    }
    SSL_set_connect_state(t->ssl);
    if (server_name && *server_name) {
        std::string n = server_name;
        if (n.size() > 2 && n.front() == '[' && n.back() == ']')
            n = n.substr(1, n.size() - 2);
        t->name = n;
        bool ip = is_ip_literal(n.c_str());
        if (!ip)
            SSL_set_tlsext_host_name(t->ssl, n.c_str());   /* RFC 6066: no IPs in SNI */
        X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (ip)
            X509_VERIFY_PARAM_set1_ip_asc(p, n.c_str());
        else
            X509_VERIFY_PARAM_set1_host(p, n.c_str(), 0);
    }
    ERR_clear_error();
    return t;
}

void tls_conn_free(tls_conn *t)
{
    if (!t)
        return;
    SSL_free(t->ssl);   /* frees both BIOs */
    ring_free(&t->in);
    ring_free(&t->out);
    tls_ctx_free(t->ctx);
    delete t;
}

size_t tls_feed(tls_conn *t, const void *buf, size_t len)
{
    if (ring_reserve(&t->in, len) < 0)
        return 0;       /* out of memory; the memory BIO cannot refuse otherwise */
    ring_put(&t->in, buf, len);
    return len;
}

size_t tls_pending_out(const tls_conn *t)
{
    return t->out.data;
}

size_t tls_drain(tls_conn *t, void *buf, size_t len)
{
    size_t n = len < t->out.data ? len : t->out.data;
    ring_peek(&t->out, 0, buf, n);
    ring_consume(&t->out, n);
    return n;
}

/* Turn a failed SSL_* call into words an operator understands. */
static void set_error(tls_conn *t, int sslerr)
{
    unsigned long e, first = 0;
    int reason = 0;
    bool init = SSL_is_init_finished(t->ssl);

    /* the first SSL-library reason is the cause; later ones are fallout */
    while ((e = ERR_get_error()) != 0) {
        if (!first)
            first = e;
        if (!reason && ERR_GET_LIB(e) == ERR_LIB_SSL)
            reason = ERR_GET_REASON(e);
    }
    t->dead = true;
    if (!init && (sslerr == SSL_ERROR_ZERO_RETURN || (sslerr == SSL_ERROR_SYSCALL && !first))) {
        t->err = "connection closed during handshake";
        return;
    }
    if (sslerr == SSL_ERROR_ZERO_RETURN) {
        t->err = "connection closed by peer";
        return;
    }
    switch (reason) {
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_RECORD_LENGTH_MISMATCH:
    case SSL_R_WRONG_SSL_VERSION:
        t->err = "peer is not speaking TLS";
        return;
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        if (!t->fail.empty()) {
            t->err = t->fail;
        } else {
            t->err = "certificate verify failed: ";
            t->err += X509_verify_cert_error_string(SSL_get_verify_result(t->ssl));
        }
        return;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
        t->err = "peer sent no certificate";
        return;
    case SSL_R_UNSUPPORTED_PROTOCOL:
        t->err = "peer offers no TLS version we accept (TLS 1.2 or later)";
        return;
    }
    /* OpenSSL reports a received alert as reason 1000 + its description */
    if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
        int d = reason - SSL_AD_REASON_OFFSET;
        t->err = "alert from peer: ";
        /* OpenSSL 3.0 has no words for the TLS 1.3 additions */
        t->err += d == 116 ? "certificate required" : d == 109 ? "missing extension"
                : d == 86 ? "inappropriate fallback" : SSL_alert_desc_string_long(d);
        return;
    }
    char buf[256];
    if (first) {
        ERR_error_string_n(first, buf, sizeof buf);
        t->err = std::string("TLS error: ") + buf;
    } else {
        snprintf(buf, sizeof buf, "TLS error %d", sslerr);
        t->err = buf;
    }
}

/* SSL_get_error() reads the thread's error queue, so it must be empty
 * before an SSL_* call. Clearing walks every slot of the queue; looking
 * is one load, and on the data path the queue is always empty. */
static inline void err_reset(void)
{
    if (ERR_peek_error())
        ERR_clear_error();
}

/* Map the result of an SSL_* call that did not succeed. SSL_get_error()
 * says "want" or "closed" only when the error queue is empty. */
static int fail_result(tls_conn *t, int ret)
{
    int e = SSL_get_error(t->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return IO_AGAIN;
    if (e == SSL_ERROR_ZERO_RETURN && SSL_is_init_finished(t->ssl))
        return 0;
    set_error(t, e);
    return IO_ERR;
}

int tls_handshake(tls_conn *t)
{
    if (t->dead)
        return IO_ERR;
    err_reset();
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 1;
    return fail_result(t, r);
}

ssize_t tls_read(tls_conn *t, void *buf, size_t len)
{
    size_t n = 0;
    if (t->dead)
        return IO_ERR;
    err_reset();
    int r = SSL_read_ex(t->ssl, buf, len, &n);
    if (r == 1)
        return (ssize_t)n;
    return fail_result(t, r);
}

ssize_t tls_write(tls_conn *t, const void *buf, size_t len)
{
    size_t n = 0;
    if (t->dead)
        return IO_ERR;
    if (len == 0)
        return 0;
    err_reset();
    int r = SSL_write_ex(t->ssl, buf, len, &n);
    if (r == 1) {
        t->records += (n + TLS_REC - 1) / TLS_REC;
        if (t->records >= t->ctx->rekey) {
            t->records = 0;
            /* TLS 1.3 only; the peer takes it as it comes (its keys for
             * reading change, nothing is asked of it) */
            if (SSL_version(t->ssl) == TLS1_3_VERSION && tls_key_update(t, false) == 0)
                t->key_updates++;
        }
        return (ssize_t)n;
    }
    r = fail_result(t, r);
    if (r == 0) {       /* SSL_write never ends a stream: that is a failure */
        set_error(t, SSL_ERROR_ZERO_RETURN);
        return IO_ERR;
    }
    return r;
}

unsigned tls_key_updates(const tls_conn *t)
{
    return t->key_updates;
}

void tls_ctx_set_rekey(tls_ctx *c, uint64_t records)
{
    c->rekey = records;
}

int tls_key_update(tls_conn *t, bool ask_peer)
{
    if (t->dead || !SSL_is_init_finished(t->ssl))
        return IO_ERR;
    err_reset();
    if (SSL_key_update(t->ssl, ask_peer ? SSL_KEY_UPDATE_REQUESTED : SSL_KEY_UPDATE_NOT_REQUESTED) != 1)
        return IO_ERR;
    /* written now, into out: the memory BIO never says "want write" */
    int r = SSL_do_handshake(t->ssl);
    return r == 1 ? 0 : IO_ERR;
}

int tls_close_notify(tls_conn *t)
{
    if (t->dead)
        return IO_ERR;
    /* nothing to close before the handshake: the FIN says it all */
    if (!SSL_is_init_finished(t->ssl))
        return 0;
    err_reset();
    int r = SSL_shutdown(t->ssl);
    if (r >= 0)
        return 0;
    r = fail_result(t, r);
    return r == IO_AGAIN ? 0 : r;
}

bool tls_has_pending_plain(const tls_conn *t)
{
    return SSL_pending(t->ssl) > 0 || SSL_has_pending(t->ssl) || t->in.data > 0;
}

const char *tls_error(const tls_conn *t)
{
    return t->err.c_str();
}

/* ---- the transport: the engine over a nonblocking socket ---- */

struct tls_transport : transport {
    tls_conn *c;
    std::string terr;       /* socket-level reason, when the engine has none */
    /* The engine wants more ciphertext than it holds and read(2) said
     * EAGAIN: only a readiness event can bring progress. */
    bool starved = false;
    ssize_t rd_end = 1;     /* 1 open, else what readv keeps returning: 0 or IO_ERR */
    bool rd_told = false;   /* rd_end was returned once */
    int wr_state = 0;       /* 0 open, 1 close_notify queued, 2 FIN sent */
    bool wr_err = false;
    bool bulk = false;      /* OpenSSL keeps its record buffers until release() */

    tls_transport(tls_conn *c_, int fd_) : transport(fd_), c(c_) {}
    ~tls_transport() override
    {
        tls_conn_free(c);
        if (fd >= 0)
            close(fd);
    }

    /* Read ciphertext from the socket into the engine.
     * Returns 1 fed, 0 end of stream, IO_AGAIN, IO_ERR. */
    int fill()
    {
        for (;;) {
            /* straight into the engine's ring */
            iovec iov[2];
            size_t room = ring_room(&c->in);
            size_t want = room >= (size_t)TLS_READ_CHUNK / 2 ? room : (size_t)TLS_READ_CHUNK;
            if (ring_reserve(&c->in, want) < 0) {
                terr = "out of memory";
                return IO_ERR;
            }
            int k = ring_room_spans(&c->in, 0, ring_room(&c->in), iov);
            ssize_t n = ::readv(fd, iov, k);
            if (n > 0) {
                ring_produce(&c->in, (size_t)n);
                starved = false;
                return 1;
            }
            if (n == 0)
                return 0;
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                starved = true;
                return IO_AGAIN;
            }
            terr = std::string("read: ") + strerror(errno);
            return IO_ERR;
        }
    }

    /* Send held ciphertext. Returns 1 nothing left, IO_AGAIN, IO_ERR. */
    int push()
    {
        if (wr_err)
            return IO_ERR;
        while (c->out.data > 0) {
            iovec iov[2];
            int k = ring_data_spans(&c->out, 0, c->out.data, iov);
            msghdr mh = {};
            mh.msg_iov = iov;
            mh.msg_iovlen = (size_t)k;
            ssize_t w = sendmsg(fd, &mh, MSG_NOSIGNAL);
            if (w < 0) {
                if (errno == EINTR)
                    continue;
                if (errno == EAGAIN || errno == EWOULDBLOCK)
                    return IO_AGAIN;
                terr = std::string("write: ") + strerror(errno);
                wr_err = true;
                return IO_ERR;
            }
            ring_consume(&c->out, (size_t)w);
        }
        return 1;
    }

    /* A call moved two records or more: OpenSSL keeps its record buffers
     * rather than freeing and allocating them for every record, until the
     * owner finds the connection quiet (release). */
    void moved(size_t n)
    {
        if (!bulk && n >= 2 * (size_t)TLS_REC) {
            SSL_clear_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
            bulk = true;
        }
    }

    /* At end of stream: fatal while handshaking, else a (noted) 0. */
    ssize_t eof()
    {
        if (!SSL_is_init_finished(c->ssl)) {
            terr = "connection closed during handshake";
            return IO_ERR;
        }
        terr = "connection closed without close_notify";
        return 0;
    }

    int handshake() override
    {
        for (;;) {
            int r = tls_handshake(c);
            /* send what it produced, alerts included, before anything else */
            if (push() == IO_ERR)
                return IO_ERR;
            if (r != IO_AGAIN)
                return r;
            int f = fill();
            if (f == 1)
                continue;
            if (f == 0)
                return (int)eof();
            return f;
        }
    }

    ssize_t readv(const iovec *iov, int n) override
    {
        size_t got = 0, off = 0;
        int i = 0;
        if (rd_end != 1) {
            rd_told = true;
            return rd_end;
        }
        for (;;) {
            while (i < n && off == iov[i].iov_len) {
                i++;
                off = 0;
            }
            if (i == n)
                break;
            ssize_t r = tls_read(c, (char *)iov[i].iov_base + off, iov[i].iov_len - off);
            /* reading may produce output (handshake, alerts, key update
             * replies): send it now, or buffered() tells the owner to */
            push();
            if (r > 0) {
                off += (size_t)r;
                got += (size_t)r;
            }
            if (tls_pending_out(c) > TLS_OUT_MAX) {
                /* a peer that asks for key updates and never reads the
                 * answers would make them pile up without end */
                terr = "peer does not read what it asks for (key updates)";
                rd_end = IO_ERR;
                break;
            }
            if (r > 0)
                continue;
            if (r == IO_AGAIN) {
                int f = fill();
                if (f == 1)
                    continue;
                if (f == IO_AGAIN)
                    break;
                r = f == 0 ? eof() : (ssize_t)IO_ERR;
            }
            rd_end = r;
            break;
        }
        if (got) {
            moved(got);
            return (ssize_t)got;
        }
        if (rd_end != 1) {
            rd_told = true;
            return rd_end;
        }
        if (i == n)
            return 0;       /* no room given */
        return IO_AGAIN;
    }

    ssize_t writev(const iovec *iov, int n) override
    {
        char gather[TLS_REC];
        size_t took = 0, off = 0;
        int i = 0;

        if (wr_state) {
            terr = "write after shutdown";
            return IO_ERR;
        }
        /* writing before the handshake is done would make SSL_write read */
        if (!SSL_is_init_finished(c->ssl)) {
            int h = handshake();
            if (h != 1)
                return h;
        }
        if (tls_pending_out(c) >= TLS_HIGH && push() == IO_ERR)
            return IO_ERR;
        while (tls_pending_out(c) < TLS_HIGH) {
            while (i < n && off == iov[i].iov_len) {
                i++;
                off = 0;
            }
            if (i == n)
                break;
            /* small pieces are gathered into full records: fewer bytes of
             * overhead; large ones are encrypted in place */
            const char *p = (const char *)iov[i].iov_base + off;
            size_t len = iov[i].iov_len - off;
            if (len >= TLS_REC) {
                len = TLS_REC;
            } else if (i + 1 < n) {
                memcpy(gather, p, len);
                for (int j = i + 1; j < n && len < TLS_REC; j++) {
                    size_t k = iov[j].iov_len < TLS_REC - len ? iov[j].iov_len : TLS_REC - len;
                    memcpy(gather + len, iov[j].iov_base, k);
                    len += k;
                }
                p = gather;
            }
            ssize_t r = tls_write(c, p, len);
            if (r < 0) {
                if (took)
                    break;      /* report the error on the next call */
                push();         /* an alert, maybe */
                return r;
            }
            took += (size_t)r;
            for (size_t left = (size_t)r; left > 0;) {
                size_t k = iov[i].iov_len - off < left ? iov[i].iov_len - off : left;
                off += k;
                left -= k;
                if (off == iov[i].iov_len) {
                    i++;
                    off = 0;
                }
            }
            if (tls_pending_out(c) >= TLS_HIGH && push() != 1)
                break;
        }
        if (push() == IO_ERR && !took)
            return IO_ERR;
        moved(took);
        return took ? (ssize_t)took : (i == n ? 0 : IO_AGAIN);
    }

    int flush() override
    {
        int r = push();
        if (r != 1)
            return r;
        if (wr_state == 1) {    /* close_notify is out: now the FIN */
            ::shutdown(fd, SHUT_WR);
            wr_state = 2;
        }
        return 1;
    }

    int shutdown_write() override
    {
        if (wr_state == 0) {
            if (tls_close_notify(c) == IO_ERR)
                return IO_ERR;
            wr_state = 1;
        }
        int r = flush();
        return r == 1 ? 0 : r;
    }

    /* True when readv can make progress without the socket: plaintext held,
     * or whole records may sit unread because readv stopped at a full iov,
     * or an end or error is still to be reported. */
    bool pending() const override
    {
        if (rd_end != 1)
            return !rd_told;
        return SSL_pending(c->ssl) > 0
            || (!starved && (SSL_has_pending(c->ssl) || c->in.data > 0));
    }

    size_t buffered() const override { return tls_pending_out(c); }

    /* The owner found the connection quiet: empty rings go, and OpenSSL's
     * record buffers (SSL_free_buffers refuses while they hold a partial
     * record; RELEASE_BUFFERS frees them once it is through). Not done on
     * every empty ring: a busy connection empties them all the time. */
    void release() override
    {
        if (bulk) {
            SSL_set_mode(c->ssl, SSL_MODE_RELEASE_BUFFERS);
            SSL_free_buffers(c->ssl);
            bulk = false;
        }
        if (c->in.data == 0)
            ring_free(&c->in);
        if (c->out.data == 0)
            ring_free(&c->out);
    }

    const char *error() const override
    {
        return !c->err.empty() ? c->err.c_str() : terr.c_str();
    }

    std::string describe() const override
    {
        const char *cipher = SSL_get_cipher_name(c->ssl);
        return std::string("tls=") + SSL_get_version(c->ssl) + " cipher=" + (cipher ? cipher : "(none)");
    }
};

transport *tls_transport_new(tls_ctx *c, int fd, bool is_server, const char *server_name)
{
    tls_conn *t = tls_conn_new(c, is_server, server_name);
    if (!t)
        return nullptr;
    return new tls_transport(t, fd);
}

std::string tls_transport_sni(transport *t)
{
    const char *n = SSL_get_servername(static_cast<tls_transport *>(t)->c->ssl,
                                       TLSEXT_NAMETYPE_host_name);
    return n ? n : "";
}
