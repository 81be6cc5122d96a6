/*
 * test_tls.cpp - the TLS engine driven through memory, and the transport
 * over a socketpair.
 */
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <string>

#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "tls.h"

/* ---- helpers ---- */

static std::string random_bytes(size_t n, unsigned seed)
{
    std::mt19937 rng(seed);
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i++)
        s[i] = (char)(rng() & 0xff);
    return s;
}

static size_t rnd(std::mt19937 &rng, size_t lo, size_t hi)
{
    return std::uniform_int_distribution<size_t>(lo, hi)(rng);
}

/* "AB:CD:.." -> 32 raw bytes */
static std::string unhex(const std::string &fp)
{
    std::string raw;
    for (size_t i = 0; i + 1 < fp.size(); i += 3)
        raw += (char)strtol(fp.substr(i, 2).c_str(), nullptr, 16);
    return raw;
}

/* Move up to max bytes of ciphertext from one engine to the other. */
static size_t xfer(tls_conn *from, tls_conn *to, size_t max)
{
    static char buf[1 << 16];
    size_t n = tls_drain(from, buf, max < sizeof buf ? max : sizeof buf);
    if (n)
        CHECK(tls_feed(to, buf, n) == n);
    return n;
}

/* Handshake both until done or failed, ciphertext moved in random pieces.
 * Returns the two results. */
static void handshake_pair(tls_conn *c, tls_conn *s, int *rc, int *rs, unsigned seed = 1)
{
    std::mt19937 rng(seed);
    *rc = *rs = IO_AGAIN;
    for (int i = 0; i < 100000; i++) {
        if (*rc == IO_AGAIN)
            *rc = tls_handshake(c);
        if (*rs == IO_AGAIN)
            *rs = tls_handshake(s);
        size_t moved = xfer(c, s, rnd(rng, 1, 65536)) + xfer(s, c, rnd(rng, 1, 65536));
        if (*rc != IO_AGAIN && *rs != IO_AGAIN)
            return;
        if (!moved && (*rc == IO_ERR || *rs == IO_ERR) && !tls_pending_out(c) && !tls_pending_out(s))
            return;
    }
    FAIL("handshake did not finish");
}

/* Read what one engine has, once; returns what tls_read returned. */
static ssize_t read_some(tls_conn *t, std::string *into, size_t max)
{
    static char buf[1 << 16];
    ssize_t r = tls_read(t, buf, max < sizeof buf ? max : sizeof buf);
    if (r > 0)
        into->append(buf, (size_t)r);
    return r;
}

/* Send data both ways after a handshake, every piece of random size. */
static void exchange(tls_conn *a, tls_conn *b, size_t total, unsigned seed)
{
    std::mt19937 rng(seed);
    std::string out[2] = {random_bytes(total, seed + 1), random_bytes(total, seed + 2)};
    std::string in[2];
    size_t sent[2] = {0, 0};
    tls_conn *e[2] = {a, b};
    for (int step = 0; in[0].size() < total || in[1].size() < total; step++) {
        REQUIRE(step < 1000000);
        for (int k = 0; k < 2; k++) {
            if (sent[k] < total) {
                size_t n = rnd(rng, 1, 65536);
                if (n > total - sent[k])
                    n = total - sent[k];
                ssize_t r = tls_write(e[k], out[k].data() + sent[k], n);
                REQUIRE(r > 0);
                sent[k] += (size_t)r;
            }
            xfer(e[k], e[1 - k], rnd(rng, 1, 65536));
            ssize_t r = read_some(e[k], &in[k], rnd(rng, 1, 65536));
            REQUIRE((r > 0 || r == IO_AGAIN));
        }
    }
    CHECK(in[0] == out[1]);
    CHECK(in[1] == out[0]);
}

/* ---- certificates made for the tests ---- */

static EVP_PKEY *ec_key() { return EVP_EC_gen("P-256"); }

/* A certificate for cn (SAN san, e.g. "DNS:localhost,IP:127.0.0.1"), signed
 * by issuer (self-signed when null), valid from..to days from now. */
static X509 *make_cert(const char *cn, const char *san, EVP_PKEY *key, X509 *issuer,
                       EVP_PKEY *ikey, long from, long to, bool ca)
{
    X509 *x = X509_new();
    static long serial = 1;
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_set_version(x, X509_VERSION_3);
    X509_time_adj_ex(X509_getm_notBefore(x), (int)from, 0, nullptr);
    X509_time_adj_ex(X509_getm_notAfter(x), (int)to, 0, nullptr);
    X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
                               (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, X509_get_subject_name(issuer ? issuer : x));
    X509_set_pubkey(x, key);
    X509V3_CTX v;
    X509V3_set_ctx_nodb(&v);
    X509V3_set_ctx(&v, issuer ? issuer : x, x, nullptr, nullptr, 0);
    const char *bc = ca ? "critical,CA:TRUE" : "CA:FALSE";
    X509_EXTENSION *e = X509V3_EXT_conf_nid(nullptr, &v, NID_basic_constraints, bc);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    if (ca) {
        e = X509V3_EXT_conf_nid(nullptr, &v, NID_key_usage, "critical,keyCertSign,cRLSign");
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    if (san) {
        e = X509V3_EXT_conf_nid(nullptr, &v, NID_subject_alt_name, san);
        X509_add_ext(x, e, -1);
        X509_EXTENSION_free(e);
    }
    REQUIRE(X509_sign(x, ikey ? ikey : key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const std::string &path, X509 *x, EVP_PKEY *k)
{
    FILE *f = fopen(path.c_str(), "w");
    REQUIRE(f);
    if (x)
        PEM_write_X509(f, x);
    if (k)
        PEM_write_PrivateKey(f, k, nullptr, nullptr, 0, nullptr, nullptr);
    fclose(f);
}

/* A temporary directory with a CA, another CA, and certificates. */
struct pki {
    std::string dir;
    std::string path(const char *n) const { return dir + "/" + n; }
    pki()
    {
        char tmpl[] = "/tmp/wmtls.XXXXXX";
        REQUIRE(mkdtemp(tmpl));
        dir = tmpl;
        EVP_PKEY *cak = ec_key(), *ca2k = ec_key(), *sk = ec_key(), *ck = ec_key();
        EVP_PKEY *rk = EVP_RSA_gen(2048);
        X509 *ca = make_cert("Test CA", nullptr, cak, nullptr, nullptr, -1, 3650, true);
        X509 *ca2 = make_cert("Other CA", nullptr, ca2k, nullptr, nullptr, -1, 3650, true);
        X509 *srv = make_cert("localhost", "DNS:localhost,IP:127.0.0.1", sk, ca, cak, -1, 365, false);
        X509 *old = make_cert("localhost", "DNS:localhost", sk, ca, cak, -30, -10, false);
        X509 *wild = make_cert("wild", "DNS:*.example.com", rk, ca, cak, -1, 365, false);
        X509 *cli = make_cert("client1", nullptr, ck, ca, cak, -1, 365, false);
        X509 *rogue = make_cert("client2", nullptr, ck, ca2, ca2k, -1, 365, false);
        write_pem(path("ca.pem"), ca, nullptr);
        write_pem(path("ca2.pem"), ca2, nullptr);
        write_pem(path("server.pem"), srv, nullptr);
        write_pem(path("server.key"), nullptr, sk);
        write_pem(path("expired.pem"), old, nullptr);
        write_pem(path("wild.pem"), wild, rk);  /* cert and key in one file */
        write_pem(path("client.pem"), cli, nullptr);
        write_pem(path("client.key"), nullptr, ck);
        write_pem(path("rogue.pem"), rogue, ck);
        X509 *all[] = {ca, ca2, srv, old, wild, cli, rogue};
        for (X509 *x : all)
            X509_free(x);
        EVP_PKEY *keys[] = {cak, ca2k, sk, ck, rk};
        for (EVP_PKEY *k : keys)
            EVP_PKEY_free(k);
    }
    ~pki()
    {
        std::string cmd = "rm -rf " + dir;
        CHECK(system(cmd.c_str()) == 0);
    }
};

static tls_ctx *server_ctx(const tls_server_opts &o)
{
    std::string err;
    tls_ctx *c = tls_server_ctx_new(o, &err);
    INFO(err);
    REQUIRE(c);
    return c;
}

static tls_ctx *client_ctx(const tls_client_opts &o)
{
    std::string err;
    tls_ctx *c = tls_client_ctx_new(o, &err);
    INFO(err);
    REQUIRE(c);
    return c;
}

/* Handshake a client for name against sctx; returns both error strings
 * ("" when that side succeeded) after a little data each way. */
static void try_pair(tls_ctx *sctx, tls_ctx *cctx, const char *name, std::string *cerr,
                     std::string *serr)
{
    tls_conn *s = tls_conn_new(sctx, true, nullptr);
    tls_conn *c = tls_conn_new(cctx, false, name);
    int rc, rs;
    handshake_pair(c, s, &rc, &rs);
    /* TLS 1.3 clients finish before the server judged their certificate:
     * the verdict comes with the first read */
    std::string in;
    if (rc == 1)
        tls_write(c, "ping", 4);
    if (rs == 1)
        tls_write(s, "pong", 4);
    for (int i = 0; i < 10; i++) {
        xfer(c, s, 1 << 16);
        xfer(s, c, 1 << 16);
        if (rs == 1 && read_some(s, &in, 100) == IO_ERR)
            rs = IO_ERR;
        if (rc == 1 && read_some(c, &in, 100) == IO_ERR)
            rc = IO_ERR;
    }
    if (rs == 1 && rc == 1)
        CHECK(in == "pingpong");
    *cerr = rc == 1 ? "" : tls_error(c);
    *serr = rs == 1 ? "" : tls_error(s);
    if (rc != 1)
        CHECK(cerr->size() > 0);
    if (rs != 1)
        CHECK(serr->size() > 0);
    tls_conn_free(c);
    tls_conn_free(s);
}

/* ---- the engine through memory ---- */

TEST_CASE("tls: memory engines, random splits, several MiB each way")
{
    tls_server_opts so;
    tls_ctx *sctx = server_ctx(so);
    std::string fp = tls_ctx_fingerprint(sctx);
    CHECK(fp.size() == 32 * 3 - 1);

    SUBCASE("verify off") {
        tls_client_opts co;
        co.verify = false;
        tls_ctx *cctx = client_ctx(co);
        tls_conn *c = tls_conn_new(cctx, false, "wmproxyd");
        tls_conn *s = tls_conn_new(sctx, true, nullptr);
        int rc, rs;
        handshake_pair(c, s, &rc, &rs, 7);
        REQUIRE(rc == 1);
        REQUIRE(rs == 1);
        exchange(c, s, 4 << 20, 11);
        tls_conn_free(c);
        tls_conn_free(s);
        tls_ctx_free(cctx);
    }
    SUBCASE("pinned fingerprint, handshake driven by read and write") {
        tls_client_opts co;
        co.fingerprint = unhex(fp);
        tls_ctx *cctx = client_ctx(co);
        tls_conn *c = tls_conn_new(cctx, false, "wmproxyd");
        tls_conn *s = tls_conn_new(sctx, true, nullptr);
        /* no explicit handshake: the exchange's writes and reads drive it */
        CHECK(tls_write(c, "x", 1) == IO_AGAIN);
        xfer(c, s, 1 << 16);
        CHECK(tls_write(s, "x", 1) == IO_AGAIN);
        xfer(s, c, 1 << 16);
        std::string dummy;
        CHECK(read_some(c, &dummy, 10) == IO_AGAIN);
        xfer(c, s, 1 << 16);
        int rc, rs;
        handshake_pair(c, s, &rc, &rs, 3);
        REQUIRE(rc == 1);
        REQUIRE(rs == 1);
        exchange(c, s, 3 << 20, 21);

        /* close_notify: the reader sees 0, the other direction stays open */
        CHECK(tls_close_notify(c) == 0);
        xfer(c, s, 1 << 16);
        std::string in;
        CHECK(read_some(s, &in, 100) == 0);
        CHECK(tls_write(s, "after", 5) == 5);
        xfer(s, c, 1 << 16);
        CHECK(read_some(c, &in, 100) == 5);
        CHECK(in == "after");
        tls_conn_free(c);
        tls_conn_free(s);
        tls_ctx_free(cctx);
    }
    tls_ctx_free(sctx);
}

TEST_CASE("tls: records delivered one byte at a time")
{
    tls_ctx *sctx = server_ctx(tls_server_opts());
    tls_client_opts co;
    co.fingerprint = unhex(tls_ctx_fingerprint(sctx));
    tls_ctx *cctx = client_ctx(co);
    tls_conn *c = tls_conn_new(cctx, false, "wmproxyd");
    tls_conn *s = tls_conn_new(sctx, true, nullptr);
    std::mt19937 rng(5);
    int rc = IO_AGAIN, rs = IO_AGAIN;
    while (rc == IO_AGAIN || rs == IO_AGAIN) {
        if (rc == IO_AGAIN)
            rc = tls_handshake(c);
        if (rs == IO_AGAIN)
            rs = tls_handshake(s);
        size_t moved = xfer(c, s, 1) + xfer(s, c, 1);
        REQUIRE((moved || rc != IO_AGAIN || rs != IO_AGAIN));
    }
    REQUIRE(rc == 1);
    REQUIRE(rs == 1);

    std::string out = random_bytes(300000, 9), in;
    for (size_t sent = 0; sent < out.size();) {
        size_t n = rnd(rng, 1, 20000);
        ssize_t r = tls_write(s, out.data() + sent, n < out.size() - sent ? n : out.size() - sent);
        REQUIRE(r > 0);
        sent += (size_t)r;
    }
    while (tls_pending_out(s)) {
        xfer(s, c, 1);
        ssize_t r = read_some(c, &in, rnd(rng, 1, 5000));
        REQUIRE((r > 0 || r == IO_AGAIN));
        while (r > 0 && tls_has_pending_plain(c))
            r = read_some(c, &in, rnd(rng, 1, 5000));
    }
    CHECK(in == out);
    tls_conn_free(c);
    tls_conn_free(s);
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}

TEST_CASE("tls: wrong pin fails with the mismatch message")
{
    tls_ctx *sctx = server_ctx(tls_server_opts());
    tls_client_opts co;
    co.fingerprint = std::string(32, '\xab');
    tls_ctx *cctx = client_ctx(co);
    std::string cerr, serr;
    try_pair(sctx, cctx, "wmproxyd", &cerr, &serr);
    CHECK(cerr == "certificate fingerprint mismatch (got " + tls_ctx_fingerprint(sctx) + ")");
    CHECK(serr == "alert from peer: bad certificate");
    tls_ctx_free(cctx);

    std::string err;
    co.fingerprint = "short";
    CHECK(tls_client_ctx_new(co, &err) == nullptr);
    CHECK(err.find("fingerprint") == 0);
    tls_ctx_free(sctx);
}

TEST_CASE("tls: CA verification, SNI and mutual TLS")
{
    pki p;
    tls_server_opts so;
    so.certs.push_back({p.path("server.pem"), p.path("server.key")});
    so.certs.push_back({p.path("wild.pem"), ""});
    tls_ctx *sctx = server_ctx(so);
    std::string cerr, serr;

    tls_client_opts co;
    co.ca = p.path("ca.pem");
    tls_ctx *good = client_ctx(co);
    co.ca = p.path("ca2.pem");
    tls_ctx *other = client_ctx(co);

    SUBCASE("right CA, by name and by IP") {
        try_pair(sctx, good, "localhost", &cerr, &serr);
        CHECK(cerr == "");
        CHECK(serr == "");
        try_pair(sctx, good, "127.0.0.1", &cerr, &serr);
        CHECK(cerr == "");
        CHECK(serr == "");
    }
    SUBCASE("SNI picks the wildcard (RSA) certificate for one label only") {
        try_pair(sctx, good, "a.example.com", &cerr, &serr);
        CHECK(cerr == "");
        try_pair(sctx, good, "a.b.example.com", &cerr, &serr);
        CHECK(cerr.find("hostname mismatch") != std::string::npos);
    }
    SUBCASE("unknown CA") {
        try_pair(sctx, other, "localhost", &cerr, &serr);
        INFO(cerr);
        CHECK(cerr.find("certificate verify failed: ") == 0);
        CHECK(cerr.find("unknown CA") != std::string::npos);
        CHECK(cerr.find("Test CA") != std::string::npos);
        CHECK(serr == "alert from peer: unknown CA");
    }
    SUBCASE("hostname mismatch") {
        try_pair(sctx, good, "evil.example.org", &cerr, &serr);
        INFO(cerr);
        CHECK(cerr.find("certificate verify failed: hostname mismatch") == 0);
        CHECK(cerr.find("evil.example.org") != std::string::npos);
    }
    SUBCASE("expired") {
        tls_server_opts eo;
        eo.certs.push_back({p.path("expired.pem"), p.path("server.key")});
        tls_ctx *ectx = server_ctx(eo);
        try_pair(ectx, good, "localhost", &cerr, &serr);
        INFO(cerr);
        CHECK(cerr.find("certificate verify failed: ") == 0);
        CHECK(cerr.find("expired") != std::string::npos);
        CHECK(serr == "alert from peer: certificate expired");
        tls_ctx_free(ectx);
    }
    SUBCASE("mutual TLS") {
        tls_server_opts mo = so;
        mo.client_ca = p.path("ca.pem");
        tls_ctx *mctx = server_ctx(mo);

        try_pair(mctx, good, "localhost", &cerr, &serr);
        CHECK(serr == "peer sent no certificate");
        CHECK(cerr == "alert from peer: certificate required");

        tls_client_opts wc;
        wc.ca = p.path("ca.pem");
        wc.cert = p.path("client.pem");
        wc.key = p.path("client.key");
        tls_ctx *withcert = client_ctx(wc);
        try_pair(mctx, withcert, "localhost", &cerr, &serr);
        CHECK(cerr == "");
        CHECK(serr == "");

        wc.cert = p.path("rogue.pem");
        wc.key = "";
        tls_ctx *rogue = client_ctx(wc);
        try_pair(mctx, rogue, "localhost", &cerr, &serr);
        INFO(serr);
        CHECK(serr.find("certificate verify failed: ") == 0);
        CHECK(serr.find("Other CA") != std::string::npos);
        CHECK(cerr == "alert from peer: unknown CA");

        tls_ctx_free(rogue);
        tls_ctx_free(withcert);
        tls_ctx_free(mctx);
    }
    SUBCASE("file errors name the file and the reason") {
        std::string err;
        tls_server_opts bo;
        bo.certs.push_back({p.path("nonexistent.pem"), p.path("server.key")});
        CHECK(tls_server_ctx_new(bo, &err) == nullptr);
        CHECK(err == "cert " + p.path("nonexistent.pem") + ": No such file or directory");
        bo.certs[0] = {p.path("server.pem"), p.path("client.key")};
        CHECK(tls_server_ctx_new(bo, &err) == nullptr);
        CHECK(err.find("key " + p.path("client.key") + ": ") == 0);
        tls_client_opts bc;
        bc.ca = p.path("nonexistent.pem");
        CHECK(tls_client_ctx_new(bc, &err) == nullptr);
        CHECK(err.find("ca " + p.path("nonexistent.pem")) == 0);
    }
    tls_ctx_free(other);
    tls_ctx_free(good);
    tls_ctx_free(sctx);
}

/* A server context and a client one that does not verify it. */
struct unverified_ctxs {
    tls_ctx *sctx, *cctx;
    unverified_ctxs()
    {
        sctx = server_ctx(tls_server_opts());
        tls_client_opts co;
        co.verify = false;
        cctx = client_ctx(co);
    }
    ~unverified_ctxs()
    {
        tls_ctx_free(cctx);
        tls_ctx_free(sctx);
    }
};

TEST_CASE("tls: plaintext peers are told apart")
{
    unverified_ctxs x;

    tls_conn *s = tls_conn_new(x.sctx, true, nullptr);
    const char get[] = "GET / HTTP/1.1\r\n\r\n";
    tls_feed(s, get, sizeof get - 1);
    CHECK(tls_handshake(s) == IO_ERR);
    CHECK(std::string(tls_error(s)) == "peer is not speaking TLS");
    tls_conn_free(s);

    tls_conn *c = tls_conn_new(x.cctx, false, "example.com");
    CHECK(tls_handshake(c) == IO_AGAIN);
    const char resp[] = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n";
    tls_feed(c, resp, sizeof resp - 1);
    CHECK(tls_handshake(c) == IO_ERR);
    CHECK(std::string(tls_error(c)) == "peer is not speaking TLS");
    tls_conn_free(c);
}

/* ---- the transport over a socketpair ---- */

static void nonblocking_pair(int sv[2])
{
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
    for (int i = 0; i < 2; i++)
        REQUIRE(fcntl(sv[i], F_SETFL, fcntl(sv[i], F_GETFL) | O_NONBLOCK) == 0);
}

struct end {
    transport *t;
    std::string tx, rx;
    size_t sent = 0;
    bool up = false, shut = false, eof = false;
};

TEST_CASE("tls: transport over a nonblocking socketpair, 4 MiB each way")
{
    tls_server_opts so;
    so.alpn = "http/1.1";
    tls_ctx *sctx = server_ctx(so);
    tls_client_opts co;
    co.fingerprint = unhex(tls_ctx_fingerprint(sctx));
    tls_ctx *cctx = client_ctx(co);
    int sv[2];
    nonblocking_pair(sv);

    const size_t total = 4 << 20;
    end e[2];
    e[0].t = tls_transport_new(sctx, sv[0], true, nullptr);
    e[1].t = tls_transport_new(cctx, sv[1], false, "wmproxyd");
    e[0].tx = random_bytes(total, 31);
    e[1].tx = random_bytes(total, 32);
    std::mt19937 rng(77);
    static char buf[3][70000];
    int backpressure = 0;

    for (int loop = 0; !(e[0].eof && e[1].eof); loop++) {
        REQUIRE(loop < 200000);
        for (end &x : e) {
            if (!x.up) {
                int r = x.t->handshake();
                REQUIRE_MESSAGE((r == 1 || r == IO_AGAIN), x.t->error());
                x.up = r == 1;
                if (!x.up)
                    continue;
            }
            while (x.sent < total) {
                /* two pieces, as a ring buffer wrapping would give */
                size_t n = rnd(rng, 1, 200000), a = rnd(rng, 0, n);
                if (n > total - x.sent)
                    n = total - x.sent;
                if (a > n)
                    a = n;
                iovec iov[2] = {{(char *)x.tx.data() + x.sent, a},
                                {(char *)x.tx.data() + x.sent + a, n - a}};
                ssize_t r = x.t->writev(iov, 2);
                REQUIRE_MESSAGE((r > 0 || r == IO_AGAIN), x.t->error());
                if (r == IO_AGAIN) {
                    /* backpressure: what is held stays bounded */
                    CHECK(x.t->buffered() < 100000);
                    backpressure++;
                    break;
                }
                x.sent += (size_t)r;
            }
            if (x.sent == total && !x.shut) {
                int r = x.t->shutdown_write();
                REQUIRE((r == 0 || r == IO_AGAIN));
                x.shut = r == 0;
            }
            while (!x.eof) {
                size_t n1 = rnd(rng, 1, 70000), n2 = rnd(rng, 0, 70000);
                iovec iov[2] = {{buf[0], n1}, {buf[1], n2}};
                ssize_t r = x.t->readv(iov, 2);
                REQUIRE_MESSAGE((r >= 0 || r == IO_AGAIN), x.t->error());
                if (r == IO_AGAIN) {
                    CHECK(!x.t->pending());
                    break;
                }
                if (r == 0) {
                    x.eof = true;
                    CHECK(std::string(x.t->error()) == "");
                    break;
                }
                x.rx.append(buf[0], (size_t)r < n1 ? (size_t)r : n1);
                if ((size_t)r > n1)
                    x.rx.append(buf[1], (size_t)r - n1);
            }
            if (x.t->buffered())
                REQUIRE(x.t->flush() != IO_ERR);
        }
        pollfd p[2];
        for (int i = 0; i < 2; i++) {
            p[i].fd = e[i].t->fd;
            p[i].events = POLLIN;
            if (e[i].t->buffered() || !e[i].shut)
                p[i].events |= POLLOUT;
        }
        poll(p, 2, 1000);
    }
    CHECK(backpressure > 0);
    CHECK(e[0].rx == e[1].tx);
    CHECK(e[1].rx == e[0].tx);
    CHECK(e[1].t->describe().find("tls=TLSv1.3 cipher=TLS_") == 0);
    CHECK(e[0].t->describe() == e[1].t->describe());
    CHECK(tls_transport_sni(e[0].t) == "wmproxyd");
    CHECK(tls_transport_sni(e[1].t) == "wmproxyd");
    delete e[0].t;
    delete e[1].t;
    tls_ctx_free(cctx);
    tls_ctx_free(sctx);
}

/* Both ends through their handshakes, over a socketpair. */
static void shake(transport *s, transport *c)
{
    int rs = IO_AGAIN, rc = IO_AGAIN;
    for (int i = 0; i < 100 && (rs != 1 || rc != 1); i++) {
        if (rs != 1)
            rs = s->handshake();
        if (rc != 1)
            rc = c->handshake();
    }
    REQUIRE(rs == 1);
    REQUIRE(rc == 1);
}

/* Send data from one end, read it at the other; true when all of it
 * arrived intact and nothing failed. */
static bool pass_bytes(transport *from, transport *to, const std::string &data)
{
    static char b[1 << 16];
    std::string got;
    for (size_t sent = 0, loop = 0; got.size() < data.size() && loop < 10000; loop++) {
        iovec w = {(char *)data.data() + sent, data.size() - sent};
        ssize_t k = sent < data.size() ? from->writev(&w, 1) : (ssize_t)IO_AGAIN;
        if (k < 0 && k != IO_AGAIN)
            return false;
        sent += k > 0 ? (size_t)k : 0;
        from->flush();
        iovec r = {b, sizeof b};
        while ((k = to->readv(&r, 1)) > 0)
            got.append(b, (size_t)k);
        if (k != IO_AGAIN)
            return false;
    }
    return got == data;
}

TEST_CASE("tls: transport ends: closed during handshake, EOF without close_notify")
{
    unverified_ctxs x;
    tls_ctx *sctx = x.sctx, *cctx = x.cctx;
    int sv[2];

    nonblocking_pair(sv);
    transport *c = tls_transport_new(cctx, sv[1], false, "127.0.0.1");
    CHECK(c->handshake() == IO_AGAIN);
    char hello[4096];
    CHECK(read(sv[0], hello, sizeof hello) > 0);   /* unread data would make it a reset */
    close(sv[0]);
    CHECK(c->handshake() == IO_ERR);
    CHECK(std::string(c->error()) == "connection closed during handshake");
    delete c;

    nonblocking_pair(sv);
    transport *s = tls_transport_new(sctx, sv[0], true, nullptr);
    c = tls_transport_new(cctx, sv[1], false, "127.0.0.1");
    shake(s, c);
    CHECK(tls_transport_sni(s) == "");      /* no SNI for an IP literal */
    /* a burst grows the buffers, the small exchange after it lets them go */
    CHECK(pass_bytes(s, c, random_bytes(300000, 41)));
    iovec w = {(void *)"last words", 10};
    CHECK(s->writev(&w, 1) == 10);
    shutdown(s->fd, SHUT_WR);               /* a FIN without close_notify */
    char b[64];
    iovec r = {b, sizeof b};
    ssize_t n = c->readv(&r, 1);
    REQUIRE(n == 10);
    CHECK(std::string(b, 10) == "last words");
    CHECK(c->pending());                    /* the end is still to be told */
    CHECK(c->readv(&r, 1) == 0);
    CHECK(!c->pending());
    CHECK(std::string(c->error()) == "connection closed without close_notify");
    delete s;
    delete c;
}

/* Heap bytes in use, from ASan's allocator when it owns the heap (its
 * runtime has the function; not every compiler ships the header). */
#if defined(__SANITIZE_ADDRESS__)
extern "C" size_t __sanitizer_get_current_allocated_bytes(void);
static size_t heap_in_use(void) { return __sanitizer_get_current_allocated_bytes(); }
#else
#include <malloc.h>
static size_t heap_in_use(void) { return mallinfo2().uordblks; }
#endif

TEST_CASE("tls: a transport that moved bulk gives its record buffers back when quiet")
{
    unverified_ctxs x;
    int sv[2];
    nonblocking_pair(sv);
    transport *s = tls_transport_new(x.sctx, sv[0], true, nullptr);
    transport *c = tls_transport_new(x.cctx, sv[1], false, "127.0.0.1");
    auto move = [](transport *from, transport *to, size_t n) {
        return pass_bytes(from, to, random_bytes(n, (unsigned)n));
    };
    shake(s, c);
    /* small exchanges first: session tickets and the like are settled */
    REQUIRE(move(s, c, 100));
    REQUIRE(move(c, s, 100));
    s->release();
    c->release();
    size_t before = heap_in_use();
    REQUIRE(move(s, c, 1 << 20));           /* bulk: buffers are kept meanwhile */
    REQUIRE(move(s, c, 10));
    s->release();
    c->release();
    size_t after = heap_in_use();
    INFO("heap in use " << before << " -> " << after << " bytes");
    CHECK(after <= before + 2048);          /* a record buffer is 16 KiB and more */
    REQUIRE(move(s, c, 1 << 20));           /* and it works on after that */
    delete s;
    delete c;
}

/* Move what the memory engine p has for its peer into fd, as far as fd
 * takes it (held: bytes it did not take yet). */
static void engine_send(tls_conn *p, int fd, std::string *held)
{
    char b[16384];
    size_t n;
    while ((n = tls_drain(p, b, sizeof b)) > 0)
        held->append(b, n);
    while (!held->empty()) {
        ssize_t k = write(fd, held->data(), held->size());
        if (k <= 0)
            break;
        held->erase(0, (size_t)k);
    }
}

TEST_CASE("tls: a peer that asks for key updates and never reads is cut off, in bounded memory")
{
    /* each KeyUpdate with update_requested makes OpenSSL queue one of its
     * own; a peer that never reads them made that queue grow without end
     * (a CONNECT session over a tc bind_addr has no timeout: 45 MiB after
     * 40 s of it) */
    unverified_ctxs x;
    int sv[2];
    nonblocking_pair(sv);
    transport *s = tls_transport_new(x.sctx, sv[0], true, nullptr);
    tls_conn *p = tls_conn_new(x.cctx, false, "127.0.0.1");
    std::string held;
    char b[65536];
    int hs = IO_AGAIN, hp = IO_AGAIN;
    for (int i = 0; i < 100 && (hs != 1 || hp != 1); i++) {
        if (hs != 1)
            hs = s->handshake();
        if (hp != 1)
            hp = tls_handshake(p);
        engine_send(p, sv[1], &held);
        ssize_t k = read(sv[1], b, sizeof b);
        if (k > 0)
            tls_feed(p, b, (size_t)k);
    }
    REQUIRE(hs == 1);
    REQUIRE(hp == 1);

    CHECK(tls_key_update(p, true) == 0);
    engine_send(p, sv[1], &held);
    iovec v = {b, sizeof b};
    CHECK(s->readv(&v, 1) == IO_AGAIN);   /* one is answered, nothing more */

    size_t most = 0;
    ssize_t r = IO_AGAIN;
    int i;
    for (i = 0; i < 100000 && r == IO_AGAIN; i++) {
        REQUIRE(tls_key_update(p, true) == 0);
        engine_send(p, sv[1], &held);
        r = s->readv(&v, 1);
        most = s->buffered() > most ? s->buffered() : most;
    }
    INFO("key updates sent: " << i);
    CHECK(r == IO_ERR);
    CHECK(std::string(s->error()) == "peer does not read what it asks for (key updates)");
    CHECK(most <= 2 * 65536 + 1024);
    tls_conn_free(p);
    delete s;
}

TEST_CASE("tls: sending keys change every so many records (RFC 8446 5.5), data intact both ways")
{
    /* every 2^24 records in use; 8 here, so 2 MiB each way (128 full
     * records, more in smaller writes) changes them at least 16 times */
    unverified_ctxs x;
    tls_ctx_set_rekey(x.sctx, 8);
    tls_ctx_set_rekey(x.cctx, 8);
    tls_conn *c = tls_conn_new(x.cctx, false, "wmproxyd");
    tls_conn *s = tls_conn_new(x.sctx, true, nullptr);
    int rc, rs;
    handshake_pair(c, s, &rc, &rs, 5);
    REQUIRE(rc == 1);
    REQUIRE(rs == 1);
    exchange(c, s, 2 << 20, 31);
    CHECK(tls_key_updates(c) >= 16);
    CHECK(tls_key_updates(s) >= 16);
    tls_conn_free(c);
    tls_conn_free(s);
}
