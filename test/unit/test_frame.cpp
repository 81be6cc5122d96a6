/*
 * test_frame.cpp - the tunnel codec: headers of every type and their
 * length limits, the preface, every control payload (round trip, every
 * truncation, trailing bytes, bad values), the auth MAC and the names.
 * Decoders are fed heap copies of exactly the given length so ASan sees
 * any read past the end.
 */
#include <doctest/doctest.h>

#include "frame.h"

#include <stdint.h>
#include <string.h>

#include <string>
#include <vector>

#include <openssl/evp.h>
#include <openssl/hmac.h>

static const uint8_t *bytes(const std::string &s)
{
    return (const uint8_t *)s.data();
}

/* An exact-size heap copy of the first n bytes of s. */
static std::vector<uint8_t> exact(const std::string &s, size_t n)
{
    return std::vector<uint8_t>(s.begin(), s.begin() + (long)n);
}

static std::string hex(const uint8_t *p, size_t n)
{
    static const char d[] = "0123456789abcdef";
    std::string s;
    for (size_t i = 0; i < n; i++) {
        s.push_back(d[p[i] >> 4]);
        s.push_back(d[p[i] & 15]);
    }
    return s;
}

/* ---- header ---- */

struct type_limit {
    uint8_t type;
    uint32_t max;
};

static const type_limit limits[] = {
    {FT_DATA, 16384}, {FT_OPEN, 1024},   {FT_WINDOW, 4},    {FT_RESET, 1024},
    {FT_PING, 8},     {FT_GOAWAY, 1024}, {FT_HELLO, 1024},  {FT_AUTH, 32},
    {FT_READY, 0},    {FT_REGISTER, 16384}, {FT_REGISTERED, 1024}, {FT_DGRAM, 65792},
    {FT_UNREGISTER, 0}, {FT_RECLAIM, 4},
};

TEST_CASE("frame: constants of the wire format")
{
    CHECK(PREFACE_LEN == 8);
    CHECK(FRAME_HDR == 9);
    CHECK(FRAME_MAX_DATA == 16384);
    CHECK(FRAME_MAX_PAYLOAD == 65792);
    CHECK(NONCE_LEN == 32);
    CHECK(MAC_LEN == 32);
    CHECK(FT_MAX == 14);
    CHECK(sizeof limits / sizeof limits[0] == FT_MAX);
}

TEST_CASE("frame: header byte layout")
{
    uint8_t b[FRAME_HDR];
    frame_hdr_encode(b, 0x00123456, 0xab, 0xcd, 0x89abcdefu);
    const uint8_t want[FRAME_HDR] = {0x12, 0x34, 0x56, 0xab, 0xcd, 0x89, 0xab, 0xcd, 0xef};
    CHECK(memcmp(b, want, FRAME_HDR) == 0);

    /* the length is 24 bits: higher bits are not encoded */
    frame_hdr_encode(b, 0xff000001u, FT_DATA, 0, 0);
    CHECK(b[0] == 0);
    CHECK(b[1] == 0);
    CHECK(b[2] == 1);

    frame_hdr_encode(b, 16384, FT_DATA, FL_FIN, 1);
    const uint8_t fin[FRAME_HDR] = {0x00, 0x40, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01};
    CHECK(memcmp(b, fin, FRAME_HDR) == 0);
}

TEST_CASE("frame: every type's header round-trips up to its maximum length")
{
    const uint32_t sids[] = {0, 1, 2, 0x7fffffffu, 0x80000000u, 0xffffffffu};
    const uint8_t flags[] = {0, FL_FIN, 0x80, 0xff};
    for (const type_limit &tl : limits) {
        std::vector<uint32_t> lens = {0, 1, tl.max / 2, tl.max - 1, tl.max};
        for (uint32_t len : lens) {
            if (len > tl.max)
                continue;
            for (uint32_t sid : sids) {
                for (uint8_t fl : flags) {
                    CAPTURE((int)tl.type);
                    CAPTURE(len);
                    CAPTURE(sid);
                    CAPTURE((int)fl);
                    uint8_t b[FRAME_HDR];
                    frame_hdr_encode(b, len, tl.type, fl, sid);
                    frame_hdr h = {0xdead, 0xee, 0xee, 0xbeef};
                    REQUIRE(frame_hdr_decode(b, &h) == 1);
                    CHECK(h.len == len);
                    CHECK(h.type == tl.type);
                    CHECK(h.flags == fl);
                    CHECK(h.sid == sid);
                }
            }
        }
    }
}

TEST_CASE("frame: a length over the type's limit is rejected")
{
    for (const type_limit &tl : limits) {
        CAPTURE((int)tl.type);
        uint8_t b[FRAME_HDR];
        frame_hdr h;
        frame_hdr_encode(b, tl.max + 1, tl.type, 0, 1);
        CHECK(frame_hdr_decode(b, &h) == 0);
        frame_hdr_encode(b, 0xffffff, tl.type, 0, 1);
        CHECK(frame_hdr_decode(b, &h) == 0);
        frame_hdr_encode(b, tl.max, tl.type, 0, 1);
        CHECK(frame_hdr_decode(b, &h) == 1);
    }
}

TEST_CASE("frame: unknown types are rejected whatever the length")
{
    for (int type = FT_MAX; type <= 255; type++) {
        CAPTURE(type);
        uint8_t b[FRAME_HDR];
        frame_hdr h;
        frame_hdr_encode(b, 0, (uint8_t)type, 0, 0);
        CHECK(frame_hdr_decode(b, &h) == 0);
        frame_hdr_encode(b, 4, (uint8_t)type, 0, 0);
        CHECK(frame_hdr_decode(b, &h) == 0);
    }
}

/* ---- preface ---- */

TEST_CASE("frame: preface bytes")
{
    uint8_t p[PREFACE_LEN];
    memset(p, 0xaa, sizeof p);
    preface_encode(p);
    const uint8_t want[PREFACE_LEN] = {'W', 'M', 'P', 'X', 0, 1, 0, 0};
    CHECK(memcmp(p, want, PREFACE_LEN) == 0);

    uint8_t version = 99;
    CHECK(preface_decode(p, &version) == 1);
    CHECK(version == WMPX_VERSION);
    CHECK(version == 1);
}

TEST_CASE("frame: preface of another version decodes with that version")
{
    for (int v : {0, 2, 255}) {
        CAPTURE(v);
        uint8_t p[PREFACE_LEN];
        preface_encode(p);
        p[5] = (uint8_t)v;
        uint8_t version = 1;
        CHECK(preface_decode(p, &version) == 1);
        CHECK(version == v);
    }
}

TEST_CASE("frame: preface with the wrong magic is not ours")
{
    const char *bad[] = {"WMPY", "wmpx", "GET ", "\x05\x01\x00\x00", "XMPW"};
    for (const char *m : bad) {
        CAPTURE(m);
        uint8_t p[PREFACE_LEN];
        preface_encode(p);
        memcpy(p, m, 4);
        uint8_t version = 42;
        CHECK(preface_decode(p, &version) == 0);
        CHECK(version == 42);   /* untouched */
    }
    uint8_t p[PREFACE_LEN];
    preface_encode(p);
    p[4] = 1;   /* byte 4 is part of the magic: must be 0 */
    uint8_t version = 42;
    CHECK(preface_decode(p, &version) == 0);
}

/* ---- payloads: a valid encoding, every prefix and trailing garbage ---- */

template <typename Msg, typename Decode>
static void check_truncations(const std::string &enc, Decode decode)
{
    for (size_t k = 0; k < enc.size(); k++) {
        CAPTURE(k);
        std::vector<uint8_t> v = exact(enc, k);
        Msg m;
        CHECK(decode(v.data(), k, &m) == -1);
    }
    std::string longer = enc + '\0';
    std::vector<uint8_t> v = exact(longer, longer.size());
    Msg m;
    CHECK(decode(v.data(), v.size(), &m) == -1);
    longer = enc + "garbage";
    v = exact(longer, longer.size());
    CHECK(decode(v.data(), v.size(), &m) == -1);
    v = exact(enc, enc.size());
    CHECK(decode(v.data(), v.size(), &m) == 0);
}

static hello_msg sample_hello()
{
    hello_msg m;
    m.heartbeat_ms = 15000;
    m.window = 256 * 1024;
    m.auth_required = 1;
    for (int i = 0; i < NONCE_LEN; i++)
        m.nonce[i] = (uint8_t)(0xa0 + i);
    m.name = "wmproxyd 0.1.0";
    for (int i = 0; i < 16; i++)
        m.client_id[i] = (uint8_t)(0xc0 + i);
    return m;
}

TEST_CASE("frame: HELLO round-trips with its exact layout")
{
    hello_msg m = sample_hello();
    std::string out = "pre";   /* encoders append */
    int n = hello_encode(m, &out);
    REQUIRE(n == 4 + 4 + 1 + 32 + 1 + 14 + 16);
    REQUIRE(out.size() == 3 + (size_t)n);
    CHECK(out.substr(0, 3) == "pre");
    std::string enc = out.substr(3);
    CHECK(hex(bytes(enc), 9) == "00003a98" "00040000" "01");
    CHECK((uint8_t)enc[9] == 0xa0);
    CHECK((uint8_t)enc[40] == 0xbf);
    CHECK((uint8_t)enc[41] == 14);
    CHECK(enc.substr(42, 14) == "wmproxyd 0.1.0");
    CHECK((uint8_t)enc[56] == 0xc0);      /* client id follows the name */
    CHECK((uint8_t)enc[71] == 0xcf);

    std::vector<uint8_t> v = exact(enc, enc.size());
    hello_msg d;
    REQUIRE(hello_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.heartbeat_ms == 15000);
    CHECK(d.window == 262144);
    CHECK(d.auth_required == 1);
    CHECK(memcmp(d.nonce, m.nonce, NONCE_LEN) == 0);
    CHECK(d.name == "wmproxyd 0.1.0");
    CHECK(memcmp(d.client_id, m.client_id, sizeof d.client_id) == 0);
}

TEST_CASE("frame: HELLO limits: empty and 255-byte names, extreme values")
{
    hello_msg m;
    m.heartbeat_ms = 0xffffffffu;
    m.window = 0x7fffffffu;   /* credit counts are signed 32-bit on the wire */
    m.auth_required = 0;
    std::string enc;
    REQUIRE(hello_encode(m, &enc) == 42 + 16);
    hello_msg d;
    std::vector<uint8_t> v = exact(enc, enc.size());
    REQUIRE(hello_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.heartbeat_ms == 0xffffffffu);
    CHECK(d.window == 0x7fffffffu);
    CHECK(d.name.empty());

    /* a window past 2^31-1 could never be expressed in WINDOW credit */
    m.window = 0x80000000u;
    enc.clear();
    hello_encode(m, &enc);
    v = exact(enc, enc.size());
    CHECK(hello_decode(v.data(), v.size(), &d) == -1);
    m.window = 0x7fffffffu;

    /* names are cut at 255 bytes */
    m.name = std::string(300, 'n');
    enc.clear();
    REQUIRE(hello_encode(m, &enc) == 41 + 1 + 255 + 16);
    CHECK(enc.size() <= 1024);
    v = exact(enc, enc.size());
    REQUIRE(hello_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.name == std::string(255, 'n'));
}

TEST_CASE("frame: HELLO truncated or with trailing bytes is rejected")
{
    std::string enc;
    hello_encode(sample_hello(), &enc);
    check_truncations<hello_msg>(enc, hello_decode);
}

TEST_CASE("frame: HELLO with bad values is rejected")
{
    struct {
        uint32_t hb, window;
        uint8_t auth;
        int want;
    } cases[] = {
        {0, 262144, 0, -1},
        {1, 262144, 0, 0},
        {15000, 4095, 0, -1},
        {15000, 4096, 0, 0},
        {15000, 0, 0, -1},
        {15000, 262144, 2, -1},
        {15000, 262144, 255, -1},
        {15000, 262144, 1, 0},
    };
    for (auto &c : cases) {
        CAPTURE(c.hb);
        CAPTURE(c.window);
        CAPTURE((int)c.auth);
        hello_msg m = sample_hello();
        m.heartbeat_ms = c.hb;
        m.window = c.window;
        m.auth_required = c.auth;
        std::string enc;
        hello_encode(m, &enc);
        std::vector<uint8_t> v = exact(enc, enc.size());
        hello_msg d;
        CHECK(hello_decode(v.data(), v.size(), &d) == c.want);
    }
}

static register_msg sample_register()
{
    register_msg m;
    m.mode = 3;
    m.remote_port = 10022;
    m.proxy_protocol = 2;
    m.udp_timeout_ms = 60000;
    m.name = "ssh";
    m.domains = "a.example.com,*.b.example.com";
    m.rules = "H intranet\nQ X-A: 1";
    return m;
}

TEST_CASE("frame: REGISTER round-trips with its exact layout")
{
    register_msg m = sample_register();
    std::string enc;
    int n = register_encode(m, &enc);
    REQUIRE(n == 1 + 2 + 1 + 4 + 1 + 3 + 2 + 29 + 2 + 19);
    REQUIRE(enc.size() == (size_t)n);
    CHECK(hex(bytes(enc), 12) == "03" "2726" "02" "0000ea60" "03" "737368");
    CHECK(hex(bytes(enc) + 12, 2) == "001d");
    CHECK(enc.substr(14, 29) == "a.example.com,*.b.example.com");
    CHECK(hex(bytes(enc) + 43, 2) == "0013");
    CHECK(enc.substr(45) == "H intranet\nQ X-A: 1");

    std::vector<uint8_t> v = exact(enc, enc.size());
    register_msg d;
    REQUIRE(register_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.mode == 3);
    CHECK(d.remote_port == 10022);
    CHECK(d.proxy_protocol == 2);
    CHECK(d.udp_timeout_ms == 60000);
    CHECK(d.name == "ssh");
    CHECK(d.domains == "a.example.com,*.b.example.com");
    CHECK(d.rules == "H intranet\nQ X-A: 1");
}

TEST_CASE("frame: REGISTER of every mode and proxy_protocol, empty strings, extreme numbers")
{
    for (uint8_t mode = 1; mode <= 5; mode++) {
        for (uint8_t pp = 0; pp <= 2; pp++) {
            CAPTURE((int)mode);
            CAPTURE((int)pp);
            register_msg m;
            m.mode = mode;
            m.proxy_protocol = pp;
            m.remote_port = 65535;
            m.udp_timeout_ms = 0xffffffffu;
            std::string enc;
            REQUIRE(register_encode(m, &enc) == 13);
            std::vector<uint8_t> v = exact(enc, enc.size());
            register_msg d;
            REQUIRE(register_decode(v.data(), v.size(), &d) == 0);
            CHECK(d.mode == mode);
            CHECK(d.proxy_protocol == pp);
            CHECK(d.remote_port == 65535);
            CHECK(d.udp_timeout_ms == 0xffffffffu);
            CHECK(d.name.empty());
            CHECK(d.domains.empty());
            CHECK(d.rules.empty());
        }
    }
}

TEST_CASE("frame: REGISTER truncated or with trailing bytes is rejected")
{
    std::string enc;
    register_encode(sample_register(), &enc);
    check_truncations<register_msg>(enc, register_decode);
}

TEST_CASE("frame: REGISTER with bad values is rejected")
{
    struct {
        uint8_t mode, pp;
        int want;
    } cases[] = {{0, 0, -1}, {6, 0, -1}, {255, 0, -1}, {1, 0, 0}, {5, 0, 0}, {3, 3, -1}, {3, 255, -1}};
    for (auto &c : cases) {
        CAPTURE((int)c.mode);
        CAPTURE((int)c.pp);
        register_msg m = sample_register();
        m.mode = c.mode;
        m.proxy_protocol = c.pp;
        std::string enc;
        register_encode(m, &enc);
        std::vector<uint8_t> v = exact(enc, enc.size());
        register_msg d;
        CHECK(register_decode(v.data(), v.size(), &d) == c.want);
    }
}

static open_msg sample_open_v4()
{
    open_msg m;
    m.mapping = 7;
    m.family = 4;
    const uint8_t src[4] = {192, 0, 2, 1}, dst[4] = {198, 51, 100, 2};
    memcpy(m.src, src, 4);
    memcpy(m.dst, dst, 4);
    m.sport = 54321;
    m.dport = 8001;
    return m;
}

TEST_CASE("frame: OPEN with IPv4 addresses round-trips with its exact layout")
{
    open_msg m = sample_open_v4();
    std::string enc;
    int n = open_encode(m, &enc);
    REQUIRE(n == 4 + 1 + 16 + 16 + 2 + 2 + 1);
    REQUIRE(enc.size() == 42);
    CHECK(hex(bytes(enc), 5) == "0000000704");
    CHECK(hex(bytes(enc) + 5, 16) == "c0000201000000000000000000000000");
    CHECK(hex(bytes(enc) + 21, 16) == "c6336402000000000000000000000000");
    CHECK(hex(bytes(enc) + 37, 5) == "d431" "1f41" "00");

    std::vector<uint8_t> v = exact(enc, enc.size());
    open_msg d;
    REQUIRE(open_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.mapping == 7);
    CHECK(d.family == 4);
    CHECK(memcmp(d.src, m.src, 16) == 0);
    CHECK(memcmp(d.dst, m.dst, 16) == 0);
    CHECK(d.sport == 54321);
    CHECK(d.dport == 8001);
    CHECK(d.target.empty());
}

TEST_CASE("frame: OPEN with IPv6 addresses and a target round-trips")
{
    open_msg m;
    m.mapping = 0xffffffffu;
    m.family = 6;
    const uint8_t src[16] = {0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    const uint8_t dst[16] = {0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x02, 0x11, 0x22, 0xff, 0xfe, 0x33, 0x44, 0x55};
    memcpy(m.src, src, 16);
    memcpy(m.dst, dst, 16);
    m.sport = 65535;
    m.dport = 1;
    m.target = "intranet.example:443";
    std::string enc;
    REQUIRE(open_encode(m, &enc) == 42 + 20);
    std::vector<uint8_t> v = exact(enc, enc.size());
    open_msg d;
    REQUIRE(open_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.mapping == 0xffffffffu);
    CHECK(d.family == 6);
    CHECK(memcmp(d.src, src, 16) == 0);
    CHECK(memcmp(d.dst, dst, 16) == 0);
    CHECK(d.sport == 65535);
    CHECK(d.dport == 1);
    CHECK(d.target == "intranet.example:443");

    /* family 0: no address */
    open_msg z;
    enc.clear();
    REQUIRE(open_encode(z, &enc) == 42);
    v = exact(enc, enc.size());
    REQUIRE(open_decode(v.data(), v.size(), &d) == 0);
    CHECK(d.family == 0);
    CHECK(d.mapping == 0);
    CHECK(d.target.empty());
}

TEST_CASE("frame: OPEN truncated or with trailing bytes is rejected")
{
    open_msg m = sample_open_v4();
    m.target = "t";
    std::string enc;
    open_encode(m, &enc);
    check_truncations<open_msg>(enc, open_decode);
}

TEST_CASE("frame: OPEN with an unknown address family is rejected")
{
    for (int fam : {1, 2, 3, 5, 7, 10, 255}) {
        CAPTURE(fam);
        open_msg m = sample_open_v4();
        m.family = (uint8_t)fam;
        std::string enc;
        open_encode(m, &enc);
        std::vector<uint8_t> v = exact(enc, enc.size());
        open_msg d;
        CHECK(open_decode(v.data(), v.size(), &d) == -1);
    }
}

TEST_CASE("frame: code payloads (RESET, GOAWAY, REGISTERED) round-trip")
{
    std::string enc = "x";
    REQUIRE(code_encode(GA_AUTH, "wrong token", &enc) == 12);
    CHECK(enc == std::string("x\x03wrong token"));
    enc.erase(0, 1);
    std::vector<uint8_t> v = exact(enc, enc.size());
    uint8_t code = 0;
    std::string text = "stale";
    REQUIRE(code_decode(v.data(), v.size(), &code, &text) == 0);
    CHECK(code == 3);
    CHECK(text == "wrong token");

    /* code only, empty text */
    enc.clear();
    REQUIRE(code_encode(255, "", &enc) == 1);
    v = exact(enc, enc.size());
    REQUIRE(code_decode(v.data(), v.size(), &code, &text) == 0);
    CHECK(code == 255);
    CHECK(text.empty());

    /* text cut at 200 bytes */
    std::string longtext(300, 'L');
    enc.clear();
    REQUIRE(code_encode(RST_LIMIT, longtext.c_str(), &enc) == 201);
    v = exact(enc, enc.size());
    REQUIRE(code_decode(v.data(), v.size(), &code, &text) == 0);
    CHECK(code == RST_LIMIT);
    CHECK(text == std::string(200, 'L'));
}

TEST_CASE("frame: code payloads: empty or over 201 bytes rejected, every other prefix is a shorter text")
{
    std::string enc;
    code_encode(RST_REFUSED, "connection refused", &enc);
    for (size_t k = 0; k <= enc.size(); k++) {
        CAPTURE(k);
        std::vector<uint8_t> v = exact(enc, k);
        uint8_t code = 99;
        std::string text;
        if (k == 0) {
            CHECK(code_decode(v.data(), k, &code, &text) == -1);
            CHECK(code == 99);
        } else {
            REQUIRE(code_decode(v.data(), k, &code, &text) == 0);
            CHECK(code == RST_REFUSED);
            CHECK(text == enc.substr(1, k - 1));
        }
    }
    std::string big(202, 'a');
    std::vector<uint8_t> v = exact(big, big.size());
    uint8_t code;
    std::string text;
    CHECK(code_decode(v.data(), 202, &code, &text) == -1);
    CHECK(code_decode(v.data(), 201, &code, &text) == 0);
    CHECK(text.size() == 200);
}

TEST_CASE("frame: code text is made printable")
{
    const uint8_t raw[] = {4, 'a', '\n', 0x00, 0x7f, 0x80, 0xff, ' ', '~', 0x1b, 'z'};
    std::vector<uint8_t> v(raw, raw + sizeof raw);
    uint8_t code;
    std::string text;
    REQUIRE(code_decode(v.data(), v.size(), &code, &text) == 0);
    CHECK(code == 4);
    CHECK(text == "a????? ~?z");
}

/* ---- auth ---- */

TEST_CASE("frame: auth_mac is HMAC-SHA256(token, nonce || label || NUL)")
{
    uint8_t nonce[NONCE_LEN];
    for (int i = 0; i < NONCE_LEN; i++)
        nonce[i] = (uint8_t)i;
    uint8_t mac[MAC_LEN];
    auth_mac("secret", nonce, mac);
    /* python3: hmac.new(b"secret", bytes(range(32)) + b"wmproxyd tunnel auth v1\0", sha256) */
    CHECK(hex(mac, MAC_LEN) == "a1921b52f26c53aeffa1459896803fa91740097b816eadf7ee0b67c0f9beb77e");

    uint8_t zero[NONCE_LEN] = {};
    auth_mac("", zero, mac);
    CHECK(hex(mac, MAC_LEN) == "b82e6d310a4e6de3f2fb9c99979d5866f0ed1e9e26abe1b37ba44b5623b2483d");

    /* the same with OpenSSL directly: the label's NUL byte is in the message */
    uint8_t msg[NONCE_LEN + 24];
    memcpy(msg, nonce, NONCE_LEN);
    memcpy(msg + NONCE_LEN, "wmproxyd tunnel auth v1", 24);
    uint8_t want[MAC_LEN];
    unsigned int wl = MAC_LEN;
    HMAC(EVP_sha256(), "k", 1, msg, sizeof msg, want, &wl);
    auth_mac("k", nonce, mac);
    CHECK(memcmp(mac, want, MAC_LEN) == 0);
}

TEST_CASE("frame: auth_mac is deterministic and depends on token and nonce")
{
    uint8_t n1[NONCE_LEN], n2[NONCE_LEN];
    for (int i = 0; i < NONCE_LEN; i++)
        n1[i] = n2[i] = (uint8_t)(i * 7);
    n2[NONCE_LEN - 1] ^= 1;

    uint8_t a[MAC_LEN], b[MAC_LEN], c[MAC_LEN], d[MAC_LEN], e[MAC_LEN], f[MAC_LEN];
    auth_mac("token-one", n1, a);
    auth_mac("token-one", n1, b);
    auth_mac("token-two", n1, c);
    auth_mac("token-one", n2, d);
    auth_mac("token-onf", n1, e);
    auth_mac("token-on", n1, f);
    CHECK(memcmp(a, b, MAC_LEN) == 0);
    CHECK(memcmp(a, c, MAC_LEN) != 0);
    CHECK(memcmp(a, d, MAC_LEN) != 0);
    CHECK(memcmp(a, e, MAC_LEN) != 0);
    CHECK(memcmp(a, f, MAC_LEN) != 0);
    /* (a key shorter than the hash block is zero-padded by HMAC, so
     * "token-one" and "token-one\0" do give the same MAC) */
}

/* ---- names ---- */

TEST_CASE("frame: names of frame types, reset and goaway codes")
{
    const char *types[] = {"DATA", "OPEN", "WINDOW", "RESET", "PING", "GOAWAY",
                           "HELLO", "AUTH", "READY", "REGISTER", "REGISTERED", "DGRAM",
                           "UNREGISTER", "RECLAIM"};
    for (int i = 0; i < FT_MAX; i++)
        CHECK(std::string(frame_type_name((uint8_t)i)) == types[i]);
    for (int i = FT_MAX; i <= 255; i++)
        CHECK(std::string(frame_type_name((uint8_t)i)) == "UNKNOWN");

    const char *resets[] = {"cancel", "refused", "timeout", "unreachable", "protocol",
                            "no mapping", "limit", "reset", "dns"};
    for (int i = 0; i <= RST_DNS; i++)
        CHECK(std::string(reset_code_name((uint8_t)i)) == resets[i]);
    for (int i = RST_DNS + 1; i <= 255; i++)
        CHECK(std::string(reset_code_name((uint8_t)i)) == "unknown");

    const char *goaways[] = {"normal", "protocol error", "version mismatch", "authentication failed",
                             "timeout", "limit", "shutdown", "replaced"};
    for (int i = 0; i <= GA_REPLACED; i++)
        CHECK(std::string(goaway_code_name((uint8_t)i)) == goaways[i]);
    for (int i = GA_REPLACED + 1; i <= 255; i++)
        CHECK(std::string(goaway_code_name((uint8_t)i)) == "unknown");
}
