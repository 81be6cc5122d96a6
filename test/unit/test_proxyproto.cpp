/*
 * test_proxyproto.cpp - PROXY protocol headers byte-exact against the
 * examples and layouts of haproxy's proxy-protocol.txt, and encode -> parse.
 */
#include <doctest/doctest.h>

#include "proxyproto.h"

#include <arpa/inet.h>
#include <string.h>

#include <string>

struct pp_addrs {
    uint8_t src[16], dst[16];
};

static pp_addrs ips(int af, const char *s, const char *d)
{
    pp_addrs a = {};
    REQUIRE(inet_pton(af, s, a.src) == 1);
    REQUIRE(inet_pton(af, d, a.dst) == 1);
    return a;
}

static std::string bin(std::initializer_list<int> l)
{
    std::string s;
    for (int v : l)
        s.push_back((char)v);
    return s;
}

static const std::string SIG("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);

/* parse() on a heap copy of exactly len bytes (ASan catches overreads) */
static int parse(const std::string &s, size_t len, proxyproto_hdr *h)
{
    uint8_t *copy = new uint8_t[len ? len : 1];
    memcpy(copy, s.data(), len);
    int r = proxyproto_parse(copy, len, h);
    delete[] copy;
    return r;
}

/* Partial for every proper prefix, the whole length once complete, the
 * same with the service's first bytes behind it. */
static void valid(const std::string &msg, proxyproto_hdr *h)
{
    for (size_t n = 0; n < msg.size(); n++) {
        INFO("prefix " << n);
        CHECK(parse(msg, n, h) == -2);
    }
    std::string more = msg + "GET / HTTP/1.1\r\n";
    CHECK(parse(more, more.size(), h) == (int)msg.size());
    REQUIRE(parse(msg, msg.size(), h) == (int)msg.size());
}

/* Partial until `decide` bytes are in, invalid from then on. */
static void invalid(const std::string &msg, size_t decide)
{
    proxyproto_hdr h;
    for (size_t n = 0; n <= msg.size(); n++) {
        INFO("prefix " << n);
        CHECK(parse(msg, n, &h) == (n < decide ? -2 : -1));
    }
}

TEST_CASE("PROXY v1 encoder, examples of the specification")
{
    std::string out;
    pp_addrs a = ips(AF_INET, "255.255.255.255", "255.255.255.255");
    CHECK(proxyproto_v1(4, a.src, a.dst, 65535, 65535, &out) == 56);
    CHECK(out == "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n");

    out = "kept ";   /* the header is appended */
    a = ips(AF_INET, "192.168.0.1", "192.168.0.11");
    CHECK(proxyproto_v1(4, a.src, a.dst, 56324, 443, &out) == 47);
    CHECK(out == "kept PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n");

    out.clear();
    a = ips(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    CHECK(proxyproto_v1(6, a.src, a.dst, 65535, 65535, &out) == 104);
    CHECK(out == "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                 "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n");
    CHECK(out.size() <= PP_V1_MAX);

    out.clear();
    a = ips(AF_INET6, "2001:db8::1", "::1");
    proxyproto_v1(6, a.src, a.dst, 1111, 2222, &out);
    CHECK(out == "PROXY TCP6 2001:db8::1 ::1 1111 2222\r\n");

    out.clear();
    CHECK(proxyproto_v1(0, a.src, a.dst, 1, 2, &out) == 15);
    CHECK(out == "PROXY UNKNOWN\r\n");
    out.clear();
    proxyproto_v1(5, a.src, a.dst, 1, 2, &out);
    CHECK(out == "PROXY UNKNOWN\r\n");

    /* an IPv4 user of a dual-stack listener is reported as TCP4 */
    out.clear();
    a = ips(AF_INET6, "::ffff:1.2.3.4", "::ffff:5.6.7.8");
    proxyproto_v1(6, a.src, a.dst, 1111, 2222, &out);
    CHECK(out == "PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n");
    /* but only when both are mapped */
    out.clear();
    a = ips(AF_INET6, "::ffff:1.2.3.4", "2001:db8::2");
    proxyproto_v1(6, a.src, a.dst, 1111, 2222, &out);
    CHECK(out == "PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 1111 2222\r\n");
}

TEST_CASE("PROXY v2 encoder, header layout of the specification")
{
    std::string out;
    pp_addrs a = ips(AF_INET, "1.2.3.4", "5.6.7.8");
    CHECK(proxyproto_v2(4, a.src, a.dst, 1111, 2222, &out) == 16 + 12);
    CHECK(out == SIG + bin({0x21, 0x11, 0x00, 0x0c,
                            1, 2, 3, 4, 5, 6, 7, 8,
                            0x04, 0x57, 0x08, 0xae}));

    out.clear();
    a = ips(AF_INET6, "2001:db8::1", "2001:db8::2");
    CHECK(proxyproto_v2(6, a.src, a.dst, 65535, 80, &out) == 16 + 36);
    CHECK(out == SIG + bin({0x21, 0x21, 0x00, 0x24,
                            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
                            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2,
                            0xff, 0xff, 0x00, 0x50}));

    out.clear();
    CHECK(proxyproto_v2(0, a.src, a.dst, 1, 2, &out) == 16);
    CHECK(out == SIG + bin({0x20, 0x00, 0x00, 0x00}));

    out.clear();
    a = ips(AF_INET6, "::ffff:10.0.0.1", "::ffff:10.0.0.2");
    CHECK(proxyproto_v2(6, a.src, a.dst, 1, 2, &out) == 28);
    CHECK(out == SIG + bin({0x21, 0x11, 0x00, 0x0c, 10, 0, 0, 1, 10, 0, 0, 2, 0, 1, 0, 2}));
}

TEST_CASE("PROXY encode -> parse round trip, both versions, every prefix")
{
    static const struct { int af, family; const char *s, *d; uint16_t sp, dp; } cases[] = {
        {AF_INET, 4, "1.2.3.4", "5.6.7.8", 1111, 2222},
        {AF_INET, 4, "0.0.0.0", "255.255.255.255", 0, 65535},
        {AF_INET6, 6, "2001:db8::1", "fe80::1:2", 40000, 443},
        {AF_INET6, 6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "::", 65535, 1},
    };
    for (const auto &c : cases) {
        pp_addrs a = ips(c.af, c.s, c.d);
        for (int v = 1; v <= 2; v++) {
            CAPTURE(v);
            CAPTURE(c.s);
            std::string out;
            if (v == 1)
                proxyproto_v1(c.family, a.src, a.dst, c.sp, c.dp, &out);
            else
                proxyproto_v2(c.family, a.src, a.dst, c.sp, c.dp, &out);
            proxyproto_hdr h;
            valid(out, &h);
            CHECK(h.version == v);
            CHECK(h.local == 0);
            CHECK(h.family == c.family);
            size_t n = c.family == 4 ? 4 : 16;
            CHECK(memcmp(h.src, a.src, n) == 0);
            CHECK(memcmp(h.dst, a.dst, n) == 0);
            CHECK(h.sport == c.sp);
            CHECK(h.dport == c.dp);
        }
    }
    pp_addrs a = {};
    std::string out;
    proxyproto_hdr h;
    proxyproto_v1(0, a.src, a.dst, 0, 0, &out);
    valid(out, &h);
    CHECK(h.version == 1);
    CHECK(h.family == 0);
    out.clear();
    proxyproto_v2(0, a.src, a.dst, 0, 0, &out);
    valid(out, &h);
    CHECK(h.version == 2);
    CHECK(h.local == 1);
    CHECK(h.family == 0);
}

TEST_CASE("PROXY v1 decoder limits")
{
    proxyproto_hdr h;
    /* the worst case of the specification: UNKNOWN with its optional fields, 107 bytes */
    std::string worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                        "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    REQUIRE(worst.size() == PP_V1_MAX);
    valid(worst, &h);
    CHECK(h.family == 0);
    /* one byte more and the CRLF is out of reach */
    std::string over = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
                       "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffff 65535 65535\r\n";
    invalid(over, PP_V1_MAX);
    invalid(std::string(200, 'P'), 2);

    invalid("XROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", 1);
    invalid("PROXY\tTCP4 1.2.3.4 5.6.7.8 1 2\r\n", 6);
    invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", 31);              /* LF without CR */
    invalid("PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX", 32);             /* CR without LF */
    std::string nul("PROXY TCP4 1.2.3.4\0 5.6.7.8 1 2\r\n", 33);
    invalid(nul, 19);
    /* a complete line that is not a header: decided at its LF */
    const char *bad[] = {
        "PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 -2\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        "PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n",
        "PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n",
        "PROXY TCP4 ::1 ::1 1 2\r\n",
        "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        "PROXY \r\n",
        "PROXY UNKNOWNX\r\n",
    };
    for (const char *b : bad) {
        CAPTURE(b);
        invalid(b, strlen(b));
    }
    /* UNKNOWN ignores the rest of its line */
    std::string unk = "PROXY UNKNOWN 1.2.3.4 whatever\r\n";
    valid(unk, &h);
    CHECK(h.family == 0);
}

TEST_CASE("PROXY v2 decoder limits")
{
    proxyproto_hdr h;
    std::string v4 = SIG + bin({0x21, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2});
    for (size_t i = 0; i < 12; i++) {      /* a wrong signature byte anywhere */
        std::string m = v4;
        m[i] ^= 0x40;
        CAPTURE(i);
        invalid(m, i + 1);
    }
    invalid(SIG + bin({0x11, 0x11, 0x00, 0x0c}), 13);   /* version 1 */
    invalid(SIG + bin({0x22, 0x11, 0x00, 0x0c}), 13);   /* command 2 */
    invalid(SIG + bin({0x21, 0x41, 0x00, 0x0c}), 14);   /* family 4 */
    invalid(SIG + bin({0x21, 0x13, 0x00, 0x0c}), 14);   /* transport 3 */
    invalid(SIG + bin({0x21, 0x01, 0x00, 0x00}), 14);   /* UNSPEC family, a transport */
    invalid(SIG + bin({0x21, 0x11, 0x00, 0x0b}), 16);   /* too short for IPv4 */
    invalid(SIG + bin({0x21, 0x21, 0x00, 0x0c}), 16);   /* too short for IPv6 */

    /* TLVs after the addresses are consumed and skipped */
    std::string tlv = SIG + bin({0x21, 0x11, 0x00, 0x0f, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2,
                                 0x04, 0x00, 0x00});   /* PP2_TYPE_NOOP, empty */
    valid(tlv, &h);
    CHECK(h.family == 4);
    CHECK(h.sport == 1);
    CHECK(h.dport == 2);

    /* LOCAL: whatever family and addresses it carries are ignored */
    std::string local = SIG + bin({0x20, 0x11, 0x00, 0x0c, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0, 2});
    valid(local, &h);
    CHECK(h.local == 1);
    CHECK(h.family == 0);

    /* PROXY with UNSPEC: accepted, no addresses */
    std::string unspec = SIG + bin({0x21, 0x00, 0x00, 0x00});
    valid(unspec, &h);
    CHECK(h.local == 0);
    CHECK(h.family == 0);

    /* a UDP over IPv6 header parses like TCP */
    std::string udp6 = SIG + bin({0x21, 0x22, 0x00, 0x24});
    udp6.append(32, '\x11');
    udp6 += bin({0x12, 0x34, 0x56, 0x78});
    valid(udp6, &h);
    CHECK(h.family == 6);
    CHECK(h.sport == 0x1234);
    CHECK(h.dport == 0x5678);
}
