/*
 * test_socks5.cpp - SOCKS5 codec: every message fed at every split size,
 * malformed input, and encoders byte-exact against RFC 1928/1929 layouts.
 */
#include <doctest/doctest.h>

#include "socks5.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>

#include <functional>
#include <string>
#include <vector>

typedef std::vector<uint8_t> bytes;
typedef std::function<int(const uint8_t *, size_t)> parser;

static bytes B(std::initializer_list<int> l)
{
    bytes b;
    for (int v : l)
        b.push_back((uint8_t)v);
    return b;
}

static bytes cat(bytes a, const std::string &s)
{
    a.insert(a.end(), s.begin(), s.end());
    return a;
}

static bytes cat(bytes a, const bytes &b)
{
    a.insert(a.end(), b.begin(), b.end());
    return a;
}

/* parse() on a heap copy of exactly len bytes, so ASan flags any read past len */
static int exact(const parser &parse, const uint8_t *p, size_t len)
{
    uint8_t *copy = new uint8_t[len ? len : 1];
    memcpy(copy, p, len);
    int r = parse(copy, len);
    delete[] copy;
    return r;
}

/*
 * Feed msg as it would arrive in chunks of k bytes, for every k from 1 to
 * its length, reparsing the accumulated bytes each time: partial until
 * `decide` bytes are in, then `expect` for good. For a valid message decide
 * is its length and expect the bytes consumed.
 */
static void splits(const parser &parse, const bytes &msg, int expect, size_t decide)
{
    REQUIRE(decide <= msg.size());
    CHECK(exact(parse, msg.data(), 0) == S5_PARTIAL);
    for (size_t k = 1; k <= msg.size(); k++) {
        for (size_t have = 0; have < msg.size();) {
            have = have + k < msg.size() ? have + k : msg.size();
            int r = exact(parse, msg.data(), have);
            INFO("chunk " << k << " have " << have);
            CHECK(r == (have < decide ? S5_PARTIAL : expect));
        }
    }
    /* pipelined bytes behind a complete message are not consumed */
    if (expect > 0) {
        bytes more = cat(msg, B({0x05, 0x01, 0x00}));
        CHECK(exact(parse, more.data(), more.size()) == expect);
    }
}

static void valid(const parser &parse, const bytes &msg)
{
    splits(parse, msg, (int)msg.size(), msg.size());
}

static parser greeting(socks5_span *m)
{
    return [m](const uint8_t *p, size_t n) { return socks5_parse_greeting(p, n, m); };
}

static parser userpass(socks5_span *u, socks5_span *pw)
{
    return [u, pw](const uint8_t *p, size_t n) { return socks5_parse_userpass(p, n, u, pw); };
}

static parser request(socks5_req *r)
{
    return [r](const uint8_t *p, size_t n) { return socks5_parse_request(p, n, r); };
}

static bool span_is(const socks5_span &s, const std::string &v)
{
    return s.n == v.size() && memcmp(s.p, v.data(), s.n) == 0;
}

TEST_CASE("socks5 greeting")
{
    socks5_span m = {};
    valid(greeting(&m), B({5, 1, 0}));
    bytes two = B({5, 2, 0, 2});
    valid(greeting(&m), two);
    REQUIRE(socks5_parse_greeting(two.data(), two.size(), &m) == 4);
    CHECK(m.p == two.data() + 2);
    CHECK(m.n == 2);

    bytes all(2 + 255);
    all[0] = 5;
    all[1] = 255;
    for (int i = 0; i < 255; i++)
        all[2 + i] = (uint8_t)i;
    valid(greeting(&m), all);

    splits(greeting(&m), B({4, 1, 0}), S5_INVALID, 1);      /* SOCKS4 */
    splits(greeting(&m), B({'G', 'E', 'T'}), S5_INVALID, 1);
    splits(greeting(&m), B({5, 0, 0}), S5_INVALID, 2);      /* no methods */
}

TEST_CASE("socks5 method choice")
{
    bytes none = B({0}), up = B({2}), both = B({0, 1, 2}), gss = B({1, 0x80});
    socks5_span s_none = {none.data(), 1}, s_up = {up.data(), 1}, s_both = {both.data(), 3},
                s_gss = {gss.data(), 2};
    CHECK(socks5_choose_method(&s_none, false) == 0x00);
    CHECK(socks5_choose_method(&s_none, true) == 0xFF);
    CHECK(socks5_choose_method(&s_up, true) == 0x02);
    CHECK(socks5_choose_method(&s_up, false) == 0x02);
    CHECK(socks5_choose_method(&s_both, true) == 0x02);
    CHECK(socks5_choose_method(&s_both, false) == 0x00);
    CHECK(socks5_choose_method(&s_gss, false) == 0xFF);
    CHECK(socks5_choose_method(&s_gss, true) == 0xFF);
}

TEST_CASE("socks5 user/pass (RFC 1929)")
{
    socks5_span u = {}, pw = {};
    bytes msg = cat(cat(cat(B({1, 4}), "user"), B({6})), "secret");
    valid(userpass(&u, &pw), msg);
    REQUIRE(socks5_parse_userpass(msg.data(), msg.size(), &u, &pw) == 13);
    CHECK(span_is(u, "user"));
    CHECK(span_is(pw, "secret"));

    std::string big(255, 'x'), big2(255, 'y');
    bytes longest = cat(cat(cat(B({1, 255}), big), B({255})), big2);
    valid(userpass(&u, &pw), longest);
    REQUIRE(socks5_parse_userpass(longest.data(), longest.size(), &u, &pw) == 513);
    CHECK(span_is(u, big));
    CHECK(span_is(pw, big2));

    splits(userpass(&u, &pw), cat(B({5, 1}), "u\x01p"), S5_INVALID, 1);  /* not version 1 */
    splits(userpass(&u, &pw), cat(B({1, 0, 1}), "p"), S5_INVALID, 2);    /* empty user */
    splits(userpass(&u, &pw), B({1, 1, 'u', 0}), S5_INVALID, 4);      /* empty password */
}

TEST_CASE("socks5 request: CONNECT to every address type")
{
    socks5_req r;
    bytes v4 = B({5, 1, 0, 1, 127, 0, 0, 1, 0x1f, 0x90});
    valid(request(&r), v4);
    REQUIRE(socks5_parse_request(v4.data(), v4.size(), &r) == 10);
    CHECK(r.cmd == S5_CMD_CONNECT);
    CHECK(r.dst.atyp == S5_ATYP_IPV4);
    CHECK(r.dst.len == 4);
    CHECK(memcmp(r.dst.ip, "\x7f\0\0\x01", 4) == 0);
    CHECK(r.dst.port == 8080);

    bytes v6 = B({5, 1, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0xbb});
    valid(request(&r), v6);
    REQUIRE(socks5_parse_request(v6.data(), v6.size(), &r) == 22);
    CHECK(r.dst.atyp == S5_ATYP_IPV6);
    CHECK(r.dst.len == 16);
    CHECK(memcmp(r.dst.ip, v6.data() + 4, 16) == 0);
    CHECK(r.dst.port == 443);

    bytes dn = cat(cat(B({5, 1, 0, 3, 11}), "example.com"), B({0, 80}));
    valid(request(&r), dn);
    REQUIRE(socks5_parse_request(dn.data(), dn.size(), &r) == 18);
    CHECK(r.dst.atyp == S5_ATYP_DOMAIN);
    CHECK(r.dst.len == 11);
    CHECK(std::string(r.dst.host) == "example.com");
    CHECK(r.dst.port == 80);

    std::string name(255, 'a');
    bytes longest = cat(cat(B({5, 1, 0, 3, 255}), name), B({0xff, 0xff}));
    valid(request(&r), longest);
    REQUIRE(socks5_parse_request(longest.data(), longest.size(), &r) == 262);
    CHECK(std::string(r.dst.host) == name);
    CHECK(r.dst.port == 65535);
}

TEST_CASE("socks5 request: BIND and UDP ASSOCIATE parse, unknown commands are distinct")
{
    socks5_req r;
    bytes bind = B({5, 2, 0, 1, 0, 0, 0, 0, 0, 0});
    valid(request(&r), bind);
    socks5_parse_request(bind.data(), bind.size(), &r);
    CHECK(r.cmd == S5_CMD_BIND);
    bytes udp = B({5, 3, 0, 1, 0, 0, 0, 0, 0, 0});
    valid(request(&r), udp);
    socks5_parse_request(udp.data(), udp.size(), &r);
    CHECK(r.cmd == S5_CMD_UDP);

    splits(request(&r), B({5, 0, 0, 1, 1, 2, 3, 4, 0, 80}), S5_BADCMD, 2);
    splits(request(&r), B({5, 4, 0, 1, 1, 2, 3, 4, 0, 80}), S5_BADCMD, 2);
    splits(request(&r), B({5, 0xff, 1, 9}), S5_BADCMD, 2);  /* decided before RSV/ATYP */
}

TEST_CASE("socks5 request: malformed")
{
    socks5_req r;
    splits(request(&r), B({4, 1, 0, 80, 127, 0, 0, 1}), S5_INVALID, 1);       /* SOCKS4 */
    splits(request(&r), B({5, 1, 1, 1, 127, 0, 0, 1, 0, 80}), S5_INVALID, 3); /* RSV */
    splits(request(&r), B({5, 1, 0, 0, 127, 0, 0, 1, 0, 80}), S5_BADATYP, 4);
    splits(request(&r), B({5, 1, 0, 2, 127, 0, 0, 1, 0, 80}), S5_BADATYP, 4);
    splits(request(&r), B({5, 1, 0, 5, 127, 0, 0, 1, 0, 80}), S5_BADATYP, 4);
    splits(request(&r), B({5, 1, 0, 3, 0, 0, 80}), S5_INVALID, 5);            /* empty name */
    /* a NUL anywhere in the name, decided when it arrives */
    for (size_t at = 0; at < 5; at++) {
        bytes m = cat(cat(B({5, 1, 0, 3, 5}), "abcde"), B({0, 80}));
        m[5 + at] = 0;
        splits(request(&r), m, S5_INVALID, 5 + at + 1);
    }
}

TEST_CASE("socks5 encoders")
{
    uint8_t o[SOCKS5_REPLY_MAX];
    CHECK(socks5_method_reply(o, S5_METHOD_NONE) == 2);
    CHECK(bytes(o, o + 2) == B({0x05, 0x00}));
    socks5_method_reply(o, S5_METHOD_USERPASS);
    CHECK(bytes(o, o + 2) == B({0x05, 0x02}));
    socks5_method_reply(o, S5_METHOD_NOACCEPT);
    CHECK(bytes(o, o + 2) == B({0x05, 0xff}));
    CHECK(socks5_userpass_reply(o, true) == 2);
    CHECK(bytes(o, o + 2) == B({0x01, 0x00}));
    socks5_userpass_reply(o, false);
    CHECK(bytes(o, o + 2) == B({0x01, 0x01}));

    sockaddr_in s4 = {};
    s4.sin_family = AF_INET;
    s4.sin_port = htons(1080);
    inet_pton(AF_INET, "10.0.0.1", &s4.sin_addr);
    CHECK(socks5_reply(o, S5_REP_SUCCEEDED, (sockaddr *)&s4) == 10);
    CHECK(bytes(o, o + 10) == B({5, 0, 0, 1, 10, 0, 0, 1, 0x04, 0x38}));

    sockaddr_in6 s6 = {};
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(443);
    inet_pton(AF_INET6, "2001:db8::1", &s6.sin6_addr);
    CHECK(socks5_reply(o, S5_REP_SUCCEEDED, (sockaddr *)&s6) == 22);
    CHECK(bytes(o, o + 22) == B({5, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                                 0x01, 0xbb}));

    inet_pton(AF_INET6, "::ffff:192.0.2.7", &s6.sin6_addr);  /* dual-stack socket, IPv4 peer */
    CHECK(socks5_reply(o, S5_REP_SUCCEEDED, (sockaddr *)&s6) == 10);
    CHECK(bytes(o, o + 10) == B({5, 0, 0, 1, 192, 0, 2, 7, 0x01, 0xbb}));

    CHECK(socks5_reply(o, S5_REP_REFUSED, NULL) == 10);
    CHECK(bytes(o, o + 10) == B({5, 5, 0, 1, 0, 0, 0, 0, 0, 0}));
    sockaddr un = {};
    un.sa_family = AF_UNIX;
    CHECK(socks5_reply(o, S5_REP_CMD_UNSUPPORTED, &un) == 10);
    CHECK(bytes(o, o + 10) == B({5, 7, 0, 1, 0, 0, 0, 0, 0, 0}));

    /* the REP values of RFC 1928 section 6 */
    CHECK(S5_REP_SUCCEEDED == 0);
    CHECK(S5_REP_FAILURE == 1);
    CHECK(S5_REP_NOT_ALLOWED == 2);
    CHECK(S5_REP_NET_UNREACHABLE == 3);
    CHECK(S5_REP_HOST_UNREACHABLE == 4);
    CHECK(S5_REP_REFUSED == 5);
    CHECK(S5_REP_TTL_EXPIRED == 6);
    CHECK(S5_REP_CMD_UNSUPPORTED == 7);
    CHECK(S5_REP_ATYP_UNSUPPORTED == 8);
}

TEST_CASE("socks5 errno to REP")
{
    CHECK(socks5_rep_from_errno(ECONNREFUSED) == S5_REP_REFUSED);
    CHECK(socks5_rep_from_errno(ENETUNREACH) == S5_REP_NET_UNREACHABLE);
    CHECK(socks5_rep_from_errno(EHOSTUNREACH) == S5_REP_HOST_UNREACHABLE);
    CHECK(socks5_rep_from_errno(ETIMEDOUT) == S5_REP_TTL_EXPIRED);
    CHECK(socks5_rep_from_errno(EACCES) == S5_REP_NOT_ALLOWED);
    CHECK(socks5_rep_from_errno(EAFNOSUPPORT) == S5_REP_ATYP_UNSUPPORTED);
    CHECK(socks5_rep_from_errno(EMFILE) == S5_REP_FAILURE);
    CHECK(socks5_rep_from_errno(0) == S5_REP_FAILURE);
}

TEST_CASE("socks5 addresses to and from sockaddr")
{
    sockaddr_in6 s6 = {};
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(53);
    inet_pton(AF_INET6, "fe80::2", &s6.sin6_addr);
    socks5_addr a;
    REQUIRE(socks5_addr_from_sockaddr((sockaddr *)&s6, &a) == 0);
    CHECK(a.atyp == S5_ATYP_IPV6);
    CHECK(a.port == 53);
    sockaddr_storage ss;
    socklen_t len = 0;
    REQUIRE(socks5_addr_to_sockaddr(&a, &ss, &len) == 0);
    CHECK(len == sizeof(sockaddr_in6));
    CHECK(memcmp(&((sockaddr_in6 *)&ss)->sin6_addr, &s6.sin6_addr, 16) == 0);
    CHECK(((sockaddr_in6 *)&ss)->sin6_port == htons(53));

    a.atyp = S5_ATYP_IPV4;
    memcpy(a.ip, "\x01\x02\x03\x04", 4);
    REQUIRE(socks5_addr_to_sockaddr(&a, &ss, &len) == 0);
    CHECK(len == sizeof(sockaddr_in));
    CHECK(((sockaddr_in *)&ss)->sin_addr.s_addr == htonl(0x01020304));
    a.atyp = S5_ATYP_DOMAIN;
    CHECK(socks5_addr_to_sockaddr(&a, &ss, &len) == -1);
}

TEST_CASE("socks5 UDP ASSOCIATE datagram header")
{
    socks5_udp_hdr h;
    bytes d4 = B({0, 0, 0, 1, 8, 8, 4, 4, 0, 53, 'q', 'r'});
    REQUIRE(socks5_udp_parse(d4.data(), d4.size(), &h) == 10);
    CHECK(h.frag == 0);
    CHECK(h.addr.atyp == S5_ATYP_IPV4);
    CHECK(memcmp(h.addr.ip, "\x08\x08\x04\x04", 4) == 0);
    CHECK(h.addr.port == 53);
    /* an empty payload is a valid datagram */
    CHECK(socks5_udp_parse(d4.data(), 10, &h) == 10);
    /* a datagram comes whole: any shorter header is invalid, never partial */
    for (size_t n = 0; n < 10; n++) {
        bytes cut(d4.begin(), d4.begin() + n);
        CHECK(socks5_udp_parse(cut.data(), n, &h) == S5_INVALID);
    }

    bytes dn = cat(cat(B({0, 0, 0, 3, 7}), "dns.lan"), B({0, 53, 'x'}));
    REQUIRE(socks5_udp_parse(dn.data(), dn.size(), &h) == 14);
    CHECK(std::string(h.addr.host) == "dns.lan");

    bytes frag = B({0, 0, 1, 1, 8, 8, 4, 4, 0, 53, 'q'});
    CHECK(socks5_udp_parse(frag.data(), frag.size(), &h) == S5_FRAG);
    bytes rsv = B({0, 1, 0, 1, 8, 8, 4, 4, 0, 53, 'q'});
    CHECK(socks5_udp_parse(rsv.data(), rsv.size(), &h) == S5_INVALID);
    bytes atyp = B({0, 0, 0, 2, 8, 8, 4, 4, 0, 53, 'q'});
    CHECK(socks5_udp_parse(atyp.data(), atyp.size(), &h) == S5_INVALID);
    bytes nul = B({0, 0, 0, 3, 2, 'a', 0, 0, 53});
    CHECK(socks5_udp_parse(nul.data(), nul.size(), &h) == S5_INVALID);

    /* encode byte-exact, then back */
    socks5_udp_hdr e = {};
    sockaddr_in6 s6 = {};
    s6.sin6_family = AF_INET6;
    s6.sin6_port = htons(5353);
    inet_pton(AF_INET6, "2001:db8::53", &s6.sin6_addr);
    REQUIRE(socks5_addr_from_sockaddr((sockaddr *)&s6, &e.addr) == 0);
    uint8_t out[SOCKS5_UDP_HDR_MAX];
    REQUIRE(socks5_udp_encode(&e, out) == 22);
    CHECK(bytes(out, out + 22) == B({0, 0, 0, 4, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                     0x53, 0x14, 0xe9}));
    CHECK(socks5_udp_parse(out, 22, &h) == 22);
    CHECK(memcmp(h.addr.ip, e.addr.ip, 16) == 0);
    CHECK(h.addr.port == 5353);

    socks5_udp_hdr longest = {};
    longest.addr.atyp = S5_ATYP_DOMAIN;
    longest.addr.len = 255;
    memset(longest.addr.host, 'z', 255);
    longest.addr.port = 1;
    REQUIRE(socks5_udp_encode(&longest, out) == SOCKS5_UDP_HDR_MAX);
    CHECK(socks5_udp_parse(out, SOCKS5_UDP_HDR_MAX, &h) == SOCKS5_UDP_HDR_MAX);
    CHECK(h.addr.len == 255);
    CHECK(h.addr.port == 1);
}

TEST_CASE("cred_equal")
{
    CHECK(cred_equal("secret", 6, "secret", 6) == 1);
    CHECK(cred_equal("Secret", 6, "secret", 6) == 0);
    CHECK(cred_equal("secreT", 6, "secret", 6) == 0);
    CHECK(cred_equal("secre", 5, "secret", 6) == 0);
    CHECK(cred_equal("secrets", 7, "secret", 6) == 0);
    CHECK(cred_equal("", 0, "secret", 6) == 0);
    CHECK(cred_equal("x", 1, "", 0) == 0);
    CHECK(cred_equal("", 0, "", 0) == 1);
    /* same bytes, lengths differing by a multiple of 256 */
    std::string a(256, 'a');
    CHECK(cred_equal(a.data(), 256, "", 0) == 0);
}
