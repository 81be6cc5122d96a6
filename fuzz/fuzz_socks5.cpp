/*
 * fuzz_socks5.cpp - the SOCKS5 parsers (greeting, user/pass, request, UDP
 * header) and the PROXY protocol parser on arbitrary bytes.
 *
 * Input: one selector byte, then the message bytes.
 * Properties:
 *  - every prefix of the input is parsed from an exact-size copy (ASan:
 *    nothing is read past len), and a non-partial answer on a prefix is
 *    the answer on the whole input ("splitting the input anywhere gives
 *    the same answer as receiving it whole");
 *  - a parsed request address or UDP header encodes back to the bytes it
 *    came from; a parsed PROXY header encodes (v1 and v2) to one that
 *    parses to the same addresses.
 */
#include "proxyproto.h"
#include "socks5.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); abort(); } } while (0)

/* Messages are short: prefixes past this are not re-parsed one by one. */
#define PREFIX_MAX 600

struct exact {
    uint8_t *p;
    exact(const uint8_t *src, size_t n) : p((uint8_t *)malloc(n ? n : 1)) { if (n) memcpy(p, src, n); }
    ~exact() { free(p); }
};

static bool same_addr(const socks5_addr &a, const socks5_addr &b)
{
    if (a.atyp != b.atyp || a.len != b.len || a.port != b.port)
        return false;
    if (a.atyp == S5_ATYP_DOMAIN)
        return !strcmp(a.host, b.host);
    return !memcmp(a.ip, b.ip, a.len);
}

static void check_addr(const socks5_addr &a)
{
    if (a.atyp == S5_ATYP_DOMAIN) {
        CHECK(a.len >= 1 && strlen(a.host) == a.len);
    } else {
        CHECK((a.atyp == S5_ATYP_IPV4 && a.len == 4) || (a.atyp == S5_ATYP_IPV6 && a.len == 16));
        /* to a sockaddr and back */
        sockaddr_storage ss;
        socklen_t sl;
        CHECK(socks5_addr_to_sockaddr(&a, &ss, &sl) == 0);
        socks5_addr b;
        CHECK(socks5_addr_from_sockaddr((const sockaddr *)&ss, &b) == 0);
        static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        bool mapped = a.atyp == S5_ATYP_IPV6 && !memcmp(a.ip, v4mapped, 12);
        if (!mapped)
            CHECK(same_addr(a, b));
        uint8_t rep[SOCKS5_REPLY_MAX];
        size_t n = socks5_reply(rep, S5_REP_SUCCEEDED, (const sockaddr *)&ss);
        CHECK(n == 10 || n == 22);
    }
}

static void fuzz_greeting(const uint8_t *d, size_t len)
{
    exact w(d, len);
    socks5_span m, mp;
    int r = socks5_parse_greeting(w.p, len, &m);
    CHECK(r == S5_PARTIAL || r == S5_INVALID || (r > 1 && (size_t)r <= len));
    for (size_t l = 0; l < len && l < PREFIX_MAX; l++) {
        exact p(d, l);
        int pr = socks5_parse_greeting(p.p, l, &mp);
        if (pr != S5_PARTIAL) {
            CHECK(pr == r);
            if (pr > 0)
                CHECK(mp.n == m.n && mp.p - p.p == m.p - w.p);
        }
    }
    if (r > 0) {
        CHECK(m.n >= 1 && m.n == (size_t)r - 2);
        uint8_t a = socks5_choose_method(&m, true), b = socks5_choose_method(&m, false);
        CHECK(a == S5_METHOD_USERPASS || a == S5_METHOD_NOACCEPT);
        CHECK(b == S5_METHOD_NONE || b == S5_METHOD_USERPASS || b == S5_METHOD_NOACCEPT);
        CHECK(b != S5_METHOD_NONE || memchr(m.p, 0, m.n));
        CHECK(a != S5_METHOD_USERPASS || memchr(m.p, 2, m.n));
        uint8_t out[2];
        CHECK(socks5_method_reply(out, b) == 2 && out[0] == 5 && out[1] == b);
    }
}

static void fuzz_userpass(const uint8_t *d, size_t len)
{
    exact w(d, len);
    socks5_span u, p, up, pp;
    int r = socks5_parse_userpass(w.p, len, &u, &p);
    CHECK(r == S5_PARTIAL || r == S5_INVALID || (r > 0 && (size_t)r <= len));
    for (size_t l = 0; l < len && l < PREFIX_MAX; l++) {
        exact x(d, l);
        int pr = socks5_parse_userpass(x.p, l, &up, &pp);
        if (pr != S5_PARTIAL) {
            CHECK(pr == r);
            if (pr > 0)
                CHECK(up.n == u.n && pp.n == p.n);
        }
    }
    if (r > 0) {
        CHECK(u.n >= 1 && p.n >= 1 && (size_t)r == 3 + u.n + p.n);
        /* the comparison used for credentials agrees with memcmp */
        bool eq = u.n == p.n && !memcmp(u.p, p.p, u.n);
        CHECK(cred_equal(u.p, u.n, p.p, p.n) == (int)eq);
        CHECK(cred_equal(u.p, u.n, u.p, u.n) == 1);
    }
}

static void fuzz_request(const uint8_t *d, size_t len)
{
    exact w(d, len);
    static socks5_req req, preq;
    int r = socks5_parse_request(w.p, len, &req);
    CHECK(r == S5_PARTIAL || r == S5_INVALID || r == S5_BADCMD || r == S5_BADATYP ||
          (r >= 8 && (size_t)r <= len));
    for (size_t l = 0; l < len && l < PREFIX_MAX; l++) {
        exact x(d, l);
        int pr = socks5_parse_request(x.p, l, &preq);
        if (pr != S5_PARTIAL) {
            CHECK(pr == r);
            if (pr > 0)
                CHECK(preq.cmd == req.cmd && same_addr(preq.dst, req.dst));
        }
    }
    if (r > 0) {
        CHECK(req.cmd >= S5_CMD_CONNECT && req.cmd <= S5_CMD_UDP);
        check_addr(req.dst);
        /* the address re-encodes to the same bytes (UDP header layout) */
        socks5_udp_hdr h;
        h.frag = 0;
        h.addr = req.dst;
        uint8_t out[SOCKS5_UDP_HDR_MAX];
        size_t n = socks5_udp_encode(&h, out);
        CHECK(n == (size_t)r && !memcmp(out + 3, d + 3, n - 3));
    }
}

static void fuzz_udp(const uint8_t *d, size_t len)
{
    exact w(d, len);
    static socks5_udp_hdr h, h2;
    int r = socks5_udp_parse(w.p, len, &h);
    CHECK(r == S5_INVALID || r == S5_FRAG || (r >= 8 && (size_t)r <= len));
    if (r > 0) {
        CHECK(h.frag == 0);
        check_addr(h.addr);
        uint8_t out[SOCKS5_UDP_HDR_MAX];
        size_t n = socks5_udp_encode(&h, out);
        CHECK(n == (size_t)r && !memcmp(out, d, n));
        CHECK(socks5_udp_parse(out, n, &h2) == r && same_addr(h.addr, h2.addr));
    }
}

static bool same_pp(const proxyproto_hdr &a, const proxyproto_hdr &b)
{
    size_t al = a.family == 4 ? 4 : a.family == 6 ? 16 : 0;
    return a.version == b.version && a.local == b.local && a.family == b.family && a.sport == b.sport &&
           a.dport == b.dport && !memcmp(a.src, b.src, al) && !memcmp(a.dst, b.dst, al);
}

/* What a parsed header says once written by one of our encoders. */
static void pp_reencode(const proxyproto_hdr &h, int v)
{
    std::string out;
    size_t n = v == 1 ? proxyproto_v1(h.family, h.src, h.dst, h.sport, h.dport, &out)
                      : proxyproto_v2(h.family, h.src, h.dst, h.sport, h.dport, &out);
    CHECK(n == out.size());
    if (v == 1)
        CHECK(n <= PP_V1_MAX);
    exact o((const uint8_t *)out.data(), out.size());
    proxyproto_hdr g;
    CHECK(proxyproto_parse(o.p, out.size(), &g) == (int)n);
    CHECK(g.version == v);
    if (h.family != 4 && h.family != 6) {
        CHECK(g.family == 0);
        return;
    }
    /* v4-mapped pairs come back as IPv4 */
    static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    bool m = h.family == 6 && !memcmp(h.src, mapped, 12) && !memcmp(h.dst, mapped, 12);
    CHECK(g.family == (m ? 4 : h.family) && g.sport == h.sport && g.dport == h.dport);
    CHECK(!memcmp(g.src, h.src + (m ? 12 : 0), g.family == 4 ? 4 : 16));
    CHECK(!memcmp(g.dst, h.dst + (m ? 12 : 0), g.family == 4 ? 4 : 16));
}

static void fuzz_proxyproto(const uint8_t *d, size_t len)
{
    exact w(d, len);
    proxyproto_hdr h, hp;
    int r = proxyproto_parse(w.p, len, &h);
    CHECK(r == -1 || r == -2 || (r > 0 && (size_t)r <= len));
    for (size_t l = 0; l < len && l < PREFIX_MAX; l++) {
        exact x(d, l);
        int pr = proxyproto_parse(x.p, l, &hp);
        if (pr != -2) {
            CHECK(pr == r);
            if (pr > 0)
                CHECK(same_pp(hp, h));
        }
    }
    if (r > 0) {
        CHECK(h.version == 1 || h.version == 2);
        CHECK(h.family == 0 || h.family == 4 || h.family == 6);
        pp_reencode(h, 1);
        pp_reencode(h, 2);
    }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *p = data + 1;
    size_t len = size - 1;
    switch (data[0] % 5) {
    case 0: fuzz_greeting(p, len); break;
    case 1: fuzz_userpass(p, len); break;
    case 2: fuzz_request(p, len); break;
    case 3: fuzz_udp(p, len); break;
    default: fuzz_proxyproto(p, len); break;
    }
    return 0;
}
