/*
 * test_http.cpp - the HTTP/1.x parser, framing, chunked scanner, helpers
 * and head writer.
 *
 * Every parser input is placed so that its last byte is the last byte of a
 * page followed by a PROT_NONE page (picohttpparser's test.c): a read past
 * the input crashes. Every head is also fed in pieces of every size, the
 * way a socket may deliver it, and must parse as it does whole.
 */
#include <doctest/doctest.h>

#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "http.h"

/* ---- helpers ---- */

/* A buffer whose end touches a guard page. */
struct guard_buf {
    char *base = nullptr;
    size_t size = 0, page = 0;

    explicit guard_buf(size_t n)
    {
        page = (size_t)sysconf(_SC_PAGESIZE);
        size = (n + page - 1) / page * page;
        void *m = mmap(nullptr, size + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        REQUIRE(m != MAP_FAILED);
        base = (char *)m;
        REQUIRE(mprotect(base + size, page, PROT_NONE) == 0);
    }
    ~guard_buf() { munmap(base, size + page); }
    /* Copy n bytes so that they end at the guard page. */
    const char *put(const char *p, size_t n)
    {
        REQUIRE(n <= size);
        char *d = base + size - n;
        memcpy(d, p, n);
        return d;
    }
};

static guard_buf &gbuf()
{
    static guard_buf g(2 * HTTP_MAX_HEAD);
    return g;
}

static std::string S(http_str s) { return std::string(s.p ? s.p : "", s.n); }

static std::string dump_fields(const http_head &m)
{
    std::string o = "1." + std::to_string(m.minor) + "\n";
    for (size_t i = 0; i < m.num_headers; i++)
        o += S(m.headers[i].name) + "=" + S(m.headers[i].value) + "|\n";
    return o;
}

static std::string dump(const http_request &r) { return S(r.method) + " " + S(r.target) + " " + dump_fields(r); }
static std::string dump(const http_response &r)
{
    return std::to_string(r.status) + " " + S(r.reason) + " " + dump_fields(r);
}

static int parse(const std::string &s, http_request *r, size_t last = 0)
{
    return http_parse_request(gbuf().put(s.data(), s.size()), s.size(), r, last);
}
static int parse(const std::string &s, http_response *r, size_t last = 0)
{
    return http_parse_response(gbuf().put(s.data(), s.size()), s.size(), r, last);
}

/*
 * Feed msg in prefixes growing by step bytes, passing the previous length
 * as last_len, until a result other than HTTP_PARTIAL; every prefix sits
 * against the guard page. Returns that result, the message dumped in *out.
 */
template <class M>
static int feed(const std::string &msg, size_t step, std::string *out)
{
    static M m;
    size_t last = 0, cur = step < msg.size() ? step : msg.size();
    for (;;) {
        int r = parse(msg.substr(0, cur), &m, last);
        if (r != HTTP_PARTIAL || cur == msg.size()) {
            *out = r > 0 ? dump(m) : "";
            return r;
        }
        last = cur;
        cur = cur + step < msg.size() ? cur + step : msg.size();
    }
}

/* Whole, then in pieces of every size: the same result each time. */
template <class M>
static int check_pieces(const std::string &msg, M *whole)
{
    int r = parse(msg, whole);
    std::string want = r > 0 ? dump(*whole) : "";
    for (size_t step = 1; step <= msg.size(); step++) {
        std::string got;
        int r2 = feed<M>(msg, step, &got);
        if (r2 != r || got != want) {
            INFO("step " << step << " message " << msg);
            CHECK(r2 == r);
            CHECK(got == want);
            break;
        }
    }
    /* re-read whole once more: the views must be into the last buffer */
    return parse(msg, whole);
}

/* ---- requests ---- */

struct req_case {
    const char *head, *body;
    const char *method, *target;
    int minor;
    size_t nhdr;
    http_body_kind kind;
    uint64_t length;
    bool keep_alive, upgrade, expect;
    const char *host;       /* nullptr: absent */
};

static std::string many_headers()
{
    std::string s = "GET /index.html?q=1&r=%20x HTTP/1.1\r\nHost: Example.COM\r\n"
                    "User-Agent: curl/8.5.0\r\nAccept: */*\r\n";
    for (int i = 0; i < 60; i++)
        s += "X-Header-" + std::to_string(i) + ": value number " + std::to_string(i) + "\r\n";
    return s + "\r\n";
}

TEST_CASE("valid requests, whole and in pieces of every size")
{
    static std::string many = many_headers();
    const req_case cases[] = {
        {many.c_str(), "", "GET", "/index.html?q=1&r=%20x", 1, 63, HTTP_BODY_NONE, 0, true, false,
         false, "Example.COM"},
        {"POST /submit HTTP/1.1\r\nHost: a.example\r\nContent-Length: 11\r\n"
         "Content-Type: text/plain\r\n\r\n", "hello world", "POST", "/submit", 1, 3,
         HTTP_BODY_LENGTH, 11, true, false, false, "a.example"},
        {"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
         "5\r\nhello\r\n0\r\n\r\n", "POST", "/up", 1, 2, HTTP_BODY_CHUNKED, 0, true, false, false, "x"},
        {"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
         "0\r\n\r\n", "POST", "/up", 1, 3, HTTP_BODY_CHUNKED, 0, true, false, false, "x"},
        {"GET / HTTP/1.0\r\n\r\n", "", "GET", "/", 0, 0, HTTP_BODY_NONE, 0, false, false, false,
         nullptr},
        {"GET /k HTTP/1.0\r\nConnection: Keep-Alive\r\nHost: h\r\n\r\n", "", "GET", "/k", 0, 2,
         HTTP_BODY_NONE, 0, true, false, false, "h"},
        {"GET http://example.com:8080/a?b HTTP/1.1\r\nHost: example.com:8080\r\n"
         "Proxy-Connection: keep-alive\r\n\r\n", "", "GET", "http://example.com:8080/a?b", 1, 2,
         HTTP_BODY_NONE, 0, true, false, false, "example.com:8080"},
        {"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", "\x16\x03\x01", "CONNECT",
         "example.com:443", 1, 1, HTTP_BODY_NONE, 0, true, false, false, "example.com:443"},
        {"GET / HTTP/1.1\nHost: lf\n\n", "", "GET", "/", 1, 1, HTTP_BODY_NONE, 0, true, false, false,
         "lf"},
        {"GET / HTTP/1.1\r\nHost: mixed\n\r\n", "", "GET", "/", 1, 1, HTTP_BODY_NONE, 0, true, false,
         false, "mixed"},
        {"\r\n\r\n\nGET /after-empty-lines HTTP/1.1\r\nHost: a\r\n\r\n", "", "GET",
         "/after-empty-lines", 1, 1, HTTP_BODY_NONE, 0, true, false, false, "a"},
        {"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n", "", "GET", "/ws", 1, 4, HTTP_BODY_NONE, 0, true, true,
         false, "a"},
        {"PUT /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-Continue\r\n\r\n", "12345",
         "PUT", "/f", 1, 3, HTTP_BODY_LENGTH, 5, true, false, true, "a"},
        {"GET / HTTP/1.1\r\nHost:a\r\nX-Empty:\r\nX-Sp: \t v  w \t\r\nConnection: x, close\r\n\r\n", "",
         "GET", "/", 1, 4, HTTP_BODY_NONE, 0, false, false, false, "a"},
        {"OPTIONS * HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", "", "OPTIONS", "*", 1, 2,
         HTTP_BODY_NONE, 0, true, false, false, "a"},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 7\r\ncontent-length: 7, 7\r\n\r\n", "1234567",
         "POST", "/", 1, 3, HTTP_BODY_LENGTH, 7, true, false, false, "a"},
        {"GET /\xc3\xa9t\xc3\xa9 HTTP/1.1\r\nHost: a\r\nX-Obs: caf\xc3\xa9\r\n\r\n", "", "GET",
         "/\xc3\xa9t\xc3\xa9", 1, 2, HTTP_BODY_NONE, 0, true, false, false, "a"},
        {"GET /ws HTTP/1.0\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
         "Expect: 100-continue\r\n\r\n", "", "GET", "/ws", 0, 4, HTTP_BODY_NONE, 0, false, false,
         false, "a"},
    };
    for (const req_case &c : cases) {
        std::string head = c.head, msg = head + c.body;
        INFO(msg);
        http_request req;
        int r = check_pieces(msg, &req);
        REQUIRE(r == (int)head.size());
        CHECK(S(req.method) == c.method);
        CHECK(S(req.target) == c.target);
        CHECK(req.minor == c.minor);
        CHECK(req.num_headers == c.nhdr);
        http_msg_info info;
        REQUIRE(http_request_framing(req, &info) == 0);
        CHECK(info.body == c.kind);
        CHECK(info.length == c.length);
        CHECK(info.keep_alive == c.keep_alive);
        CHECK(info.upgrade == c.upgrade);
        CHECK(info.expect_continue == c.expect);
        if (c.host)
            CHECK(S(info.host) == c.host);
        else
            CHECK(info.host.p == nullptr);
    }
}

TEST_CASE("header values are trimmed, names kept as sent")
{
    http_request req;
    REQUIRE(parse("GET / HTTP/1.1\r\nHost:a\r\nX-Empty:\r\nX-Sp: \t v  w \t\r\n\r\n", &req) > 0);
    CHECK(S(req.headers[0].value) == "a");
    CHECK(S(req.headers[1].value) == "");
    CHECK(S(req.headers[2].name) == "X-Sp");
    CHECK(S(req.headers[2].value) == "v  w");
    REQUIRE(http_find_header(req, "x-sp"));
    CHECK(S(*http_find_header(req, "X-SP")) == "v  w");
    CHECK(http_find_header(req, "x-s") == nullptr);
    CHECK(http_header_index(req, "host") == 0);
    CHECK(http_header_index(req, "host", 1) == -1);
}

TEST_CASE("malformed requests are rejected, whole and in pieces")
{
    const char *bad[] = {
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",          /* bare CR in a field */
        "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",              /* bare CR in the target */
        "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",              /* CR CR LF */
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\nX: y\r\n\r\n",   /* bare CR on an empty line */
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  c\r\n\r\n",   /* obs-fold */
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n",   /* obs-fold with HTAB */
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",               /* whitespace before the first field */
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",               /* SP before the colon */
        "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",              /* HTAB before the colon */
        "G@T / HTTP/1.1\r\nHost: a\r\n\r\n",                /* not a token */
        "GET / HTTP/1.1\r\nX(y): 1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\n: x\r\nHost: a\r\n\r\n",         /* empty name */
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",                 /* no colon */
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",               /* two SP */
        "GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
        " GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /\r\nHost: a\r\n\r\n",                        /* HTTP/0.9 */
        "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n",           /* DEL */
        "GET / HTTP/1.1\r\nHost: a\x01 b\r\n\r\n",          /* CTL */
        "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n",
        "\x16\x03\x01\x02\x10\x01\x02\x0c\x03\x03\n\n", /* TLS-like bytes, by chance with LFs */
    };
    for (const char *b : bad) {
        std::string msg = b;
        INFO(msg);
        http_request req;
        CHECK(check_pieces(msg, &req) == HTTP_INVALID);
    }
    /* a NUL, anywhere */
    std::string nul("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", 29);
    http_request req;
    CHECK(check_pieces(nul, &req) == HTTP_INVALID);
}

TEST_CASE("every byte at every place of a long value: CTLs and DEL rejected, HTAB and obs-text kept")
{
    /* the value scan takes eight bytes at a time: put each byte before,
     * inside and after such a word, in values up to 40 bytes long */
    for (int ch = 0; ch < 256; ch++) {
        if (ch == '\r' || ch == '\n')
            continue;
        bool ok = ch == '\t' || (ch >= 0x20 && ch != 0x7f);
        for (size_t at = 1; at < 39; at++) {
            std::string value(40, 'v');
            value[at] = (char)ch;
            std::string msg = "GET / HTTP/1.1\r\nHost: a\r\nX: " + value + "\r\nY: w\r\n\r\n";
            http_request req;
            int r = parse(msg, &req);
            INFO("byte ", ch, " at ", at);
            if (!ok) {
                CHECK(r == HTTP_INVALID);
                continue;
            }
            REQUIRE(r == (int)msg.size());
            REQUIRE(req.num_headers == 3);
            CHECK(S(req.headers[1].value) == value);
            CHECK(S(req.headers[2].value) == "w");
        }
    }
}

TEST_CASE("request smuggling and framing errors are rejected")
{
    const char *bad[] = {
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n",
        "Content-Length: 5\r\nContent-Length: 6\r\n",
        "Content-Length: 5, 6\r\n",
        "Content-Length: 5,\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5a\r\n",
        "Content-Length: 0x5\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length:\r\n",
        "Content-Length: 99999999999999999999999\r\n",
        "Content-Length: 4611686018427387905\r\n",     /* 2^62 + 1 */
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: foo, chunked\r\n",
        "Transfer-Encoding: chunked;q=1\r\n",
        "Transfer-Encoding: chunked,\r\n",
        "Transfer-Encoding: , chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding:\r\n",
        "Host: b\r\n",                                   /* duplicate Host */
    };
    for (const char *b : bad) {
        std::string msg = std::string("POST / HTTP/1.1\r\nHost: a\r\n") + b + "\r\n";
        INFO(msg);
        http_request req;
        REQUIRE(check_pieces(msg, &req) == (int)msg.size());
        http_msg_info info;
        CHECK(http_request_framing(req, &info) == -1);
        CHECK(info.error != nullptr);
    }
    const char *bad2[] = {
        "GET / HTTP/1.1\r\n\r\n",                                         /* no Host */
        "GET / HTTP/1.1\r\nX: y\r\n\r\n",
        "GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
        "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    };
    for (const char *b : bad2) {
        INFO(b);
        http_request req;
        REQUIRE(parse(b, &req) > 0);
        http_msg_info info;
        CHECK(http_request_framing(req, &info) == -1);
    }
    /* the longest Content-Length we accept */
    http_request req;
    http_msg_info info;
    REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4611686018427387904\r\n\r\n", &req) > 0);
    REQUIRE(http_request_framing(req, &info) == 0);
    CHECK(info.length == HTTP_MAX_LENGTH);
    /* leading zeros are digits too */
    REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", &req) > 0);
    REQUIRE(http_request_framing(req, &info) == 0);
    CHECK(info.length == 7);
}

TEST_CASE("header count limit")
{
    for (int n : {HTTP_MAX_HEADERS - 1, HTTP_MAX_HEADERS, HTTP_MAX_HEADERS + 1, 1000}) {
        std::string msg = "GET / HTTP/1.1\r\nHost: a\r\n";
        for (int i = 1; i < n; i++)
            msg += "X-" + std::to_string(i) + ": " + std::to_string(i) + "\r\n";
        msg += "\r\n";
        INFO(n);
        http_request req;
        int r = parse(msg, &req);
        if (n <= HTTP_MAX_HEADERS) {
            CHECK(r == (int)msg.size());
            CHECK(req.num_headers == (size_t)n);
        } else {
            CHECK(r == HTTP_TOO_MANY_HEADERS);
        }
    }
    /* in pieces, for a short one */
    std::string msg = "GET / HTTP/1.1\r\n";
    for (int i = 0; i <= HTTP_MAX_HEADERS; i++)
        msg += "a:\n";
    msg += "\n";
    http_request req;
    CHECK(check_pieces(msg, &req) == HTTP_TOO_MANY_HEADERS);
}

TEST_CASE("head size limit")
{
    http_request req;
    std::string start = "GET / HTTP/1.1\r\nHost: a\r\nX: ";
    /* exactly HTTP_MAX_HEAD: fine */
    std::string msg = start + std::string(HTTP_MAX_HEAD - start.size() - 4, 'v') + "\r\n\r\n";
    REQUIRE(msg.size() == HTTP_MAX_HEAD);
    CHECK(parse(msg, &req) == HTTP_MAX_HEAD);
    CHECK(parse(msg + "body", &req) == HTTP_MAX_HEAD);
    /* one byte more: never complete, over the limit once 64 KiB are in */
    msg = start + std::string(HTTP_MAX_HEAD - start.size() - 3, 'v') + "\r\n\r\n";
    int r = parse(msg.substr(0, HTTP_MAX_HEAD - 1), &req);
    CHECK(r == HTTP_PARTIAL);
    CHECK_FALSE(http_head_over_limit(r, HTTP_MAX_HEAD - 1));
    r = parse(msg.substr(0, HTTP_MAX_HEAD), &req, HTTP_MAX_HEAD - 1);
    CHECK(r == HTTP_PARTIAL);
    CHECK(http_head_over_limit(r, HTTP_MAX_HEAD));
    /* a caller that buffered more still gets PARTIAL, not a head > 64 KiB */
    r = parse(msg, &req);
    CHECK(r == HTTP_PARTIAL);
    CHECK(http_head_over_limit(r, msg.size()));
    http_response resp;
    r = parse("HTTP/1.1 200 OK\r\nX: " + std::string(70000, 'v') + "\r\n\r\n", &resp);
    CHECK(http_head_over_limit(r, 70000));
    /* only bytes after last_len - 2 are searched for the end (the contract
     * that makes feeding in small reads linear) */
    std::string small = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    CHECK(parse(small, &req, small.size()) == HTTP_PARTIAL);
    CHECK(parse(small, &req, small.size() - 2) == (int)small.size());
}

/* ---- responses ---- */

struct resp_case {
    const char *head, *body;
    bool to_head;
    int status;
    const char *reason;
    int minor;
    http_body_kind kind;
    uint64_t length;
    bool keep_alive, upgrade;
};

TEST_CASE("valid responses, whole and in pieces of every size")
{
    const resp_case cases[] = {
        {"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", "hello", false,
         200, "OK", 1, HTTP_BODY_LENGTH, 5, true, false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "5\r\nhello\r\n0\r\n\r\n", false, 200,
         "OK", 1, HTTP_BODY_CHUNKED, 0, true, false},
        {"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "\x1f\x8b", false, 200, "OK", 1,
         HTTP_BODY_CLOSE, 0, false, false},
        {"HTTP/1.1 204 No Content\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n", "", false, 204,
         "No Content", 1, HTTP_BODY_NONE, 0, true, false},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: 100\r\nETag: \"x\"\r\n\r\n", "", false, 304,
         "Not Modified", 1, HTTP_BODY_NONE, 0, true, false},
        {"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
         "\x81\x05hello", false, 101, "Switching Protocols", 1, HTTP_BODY_NONE, 0, true, true},
        {"HTTP/1.1 100 Continue\r\n\r\n", "HTTP/1.1 200 OK\r\n", false, 100, "Continue", 1,
         HTTP_BODY_NONE, 0, true, false},
        {"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", "until close", false, 200, "OK", 0,
         HTTP_BODY_CLOSE, 0, false, false},
        {"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n", "ok", false, 200,
         "OK", 0, HTTP_BODY_LENGTH, 2, true, false},
        {"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "", false, 200, "", 1, HTTP_BODY_NONE, 0, true,
         false},
        {"HTTP/1.1 404 Not Found\nContent-Length: 3\n\n", "abc", false, 404, "Not Found", 1,
         HTTP_BODY_LENGTH, 3, true, false},
        {"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n", "ok", false, 200, "OK",
         1, HTTP_BODY_LENGTH, 2, false, false},
        {"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", "", true, 200, "OK", 1, HTTP_BODY_NONE,
         0, true, false},
        {"HTTP/1.1 200 OK\r\n\r\n", "no length", false, 200, "OK", 1, HTTP_BODY_CLOSE, 0, false,
         false},
        {"HTTP/1.1 599 Custom \t Reason \xc3\xa9\r\nContent-Length: 1\r\n\r\n", "x", false, 599,
         "Custom \t Reason \xc3\xa9", 1, HTTP_BODY_LENGTH, 1, true, false},
        {"HTTP/1.1 304 Not Modified\r\nContent-Length: bogus\r\nConnection: close\r\n\r\n", "", false,
         304, "Not Modified", 1, HTTP_BODY_NONE, 0, false, false},
    };
    for (const resp_case &c : cases) {
        std::string head = c.head, msg = head + c.body;
        INFO(msg);
        http_response resp;
        int r = check_pieces(msg, &resp);
        REQUIRE(r == (int)head.size());
        CHECK(resp.status == c.status);
        CHECK(S(resp.reason) == c.reason);
        CHECK(resp.minor == c.minor);
        http_msg_info info;
        REQUIRE(http_response_framing(resp.status, c.to_head, resp, &info) == 0);
        CHECK(info.body == c.kind);
        CHECK(info.length == c.length);
        CHECK(info.keep_alive == c.keep_alive);
        CHECK(info.upgrade == c.upgrade);
    }
}

TEST_CASE("malformed responses are rejected")
{
    const char *bad[] = {
        "HTTP/1.1 20 OK\r\n\r\n", "HTTP/1.1 200OK\r\n\r\n", "HTTP/1.1 099 Low\r\n\r\n",
        "HTTP/2 200 OK\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n", "HTTP/1.1 2x0 OK\r\n\r\n",
        "HTTP/1.1 200 O\rK\r\n\r\n", "HTTP/1.1 200 OK\r\nX : y\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX: y\r\n z\r\n\r\n", "\r\nHTTP/1.1 200 OK\r\n\r\n",
        "ICY 200 OK\r\n\r\n", "HTTP/1.1 200 OK\x01\r\n\r\n",
    };
    for (const char *b : bad) {
        INFO(b);
        http_response resp;
        CHECK(check_pieces(std::string(b), &resp) == HTTP_INVALID);
    }
    const char *bad_framing[] = {
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Content-Length: 5\r\nContent-Length: 7\r\n",
        "Content-Length: x\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: bogus\r\n",
    };
    for (const char *b : bad_framing) {
        std::string msg = std::string("HTTP/1.1 200 OK\r\n") + b + "\r\n";
        INFO(msg);
        http_response resp;
        REQUIRE(parse(msg, &resp) > 0);
        http_msg_info info;
        CHECK(http_response_framing(resp.status, false, resp, &info) == -1);
        /* answering HEAD, the same fields describe no body */
        CHECK(http_response_framing(resp.status, true, resp, &info) == 0);
    }
}

/* ---- chunked ---- */

static std::string big_chunks()
{
    std::string s;
    for (size_t n : {1, 15, 16, 255, 4096, 70000}) {
        char h[32];
        snprintf(h, sizeof h, "%zX\r\n", n);
        s += h + std::string(n, 'a' + n % 26) + "\r\n";
    }
    return s + "0\r\n\r\n";
}

/* Scan body (+ trailing bytes of a next message) at the guard page, split
 * at every boundary, byte by byte; returns the body length found or -1. */
static ssize_t scan_whole(const std::string &s)
{
    http_chunked c = {};
    ssize_t n = http_chunked_scan(&c, gbuf().put(s.data(), s.size()), s.size());
    if (n >= 0 && !c.done)
        n = -2;     /* not finished */
    return n;
}

static ssize_t scan_bytewise(const std::string &s)
{
    http_chunked c = {};
    size_t total = 0;
    for (size_t i = 0; i < s.size(); i++) {
        ssize_t n = http_chunked_scan(&c, gbuf().put(&s[i], 1), 1);
        if (n < 0)
            return -1;
        total += n;
        if (c.done) {
            /* after the end nothing more is body */
            if (i + 1 < s.size())
                CHECK(http_chunked_scan(&c, gbuf().put(&s[i + 1], 1), 1) == 0);
            return n == 1 ? (ssize_t)total : -3;
        }
        if (n != 1)
            return -3;
    }
    return -2;
}

static ssize_t scan_split(const std::string &s, size_t at)
{
    http_chunked c = {};
    ssize_t a = http_chunked_scan(&c, gbuf().put(s.data(), at), at);
    if (a < 0)
        return -1;
    if (c.done)
        return a;
    if ((size_t)a != at)
        return -3;
    ssize_t b = http_chunked_scan(&c, gbuf().put(s.data() + at, s.size() - at), s.size() - at);
    if (b < 0)
        return -1;
    return c.done ? a + b : -2;
}

TEST_CASE("chunked scanner: every split gives the same end")
{
    static std::string big = big_chunks();
    const std::string bodies[] = {
        "0\r\n\r\n",
        "5\r\nhello\r\n0\r\n\r\n",
        "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "A\r\n0123456789\r\na\r\n0123456789\r\n0000\r\n\r\n",
        "00005\r\nhello\r\n0\r\n\r\n",
        "5;name=value;q=\"a b;c\"\r\nhello\r\n0;last\r\n\r\n",
        "5;\tx = y\r\nhello\r\n0\r\n\r\n",
        "4\r\n\r\n\r\n\r\n0\r\n\r\n",                             /* data that looks like framing */
        "3\r\n0\r\n\r\n0\r\n\r\n",
        "0\r\nX-Trailer: 1\r\nChecksum: abc def\r\n\r\n",
        "0\r\nX-Empty:\r\n\r\n",
        std::string("1\r\n\0\r\n0\r\n\r\n", 11),
        big,
    };
    for (const std::string &b : bodies) {
        for (const char *next : {"", "G", "GET / HTTP/1.1\r\n\r\n"}) {
            std::string s = b + next;
            INFO("body " << b.substr(0, 80) << " next " << next);
            CHECK(scan_whole(s) == (ssize_t)b.size());
            CHECK(scan_bytewise(s) == (ssize_t)b.size());
            if (s.size() < 2000)
                for (size_t at = 0; at <= s.size(); at++) {
                    INFO("split at " << at);
                    REQUIRE(scan_split(s, at) == (ssize_t)b.size());
                }
        }
    }
}

TEST_CASE("chunked scanner: invalid input")
{
    const char *bad[] = {
        "\r\n",                         /* no size */
        "g\r\nx\r\n0\r\n\r\n",
        "-1\r\n",
        "+1\r\n",
        "0x5\r\nhello\r\n0\r\n\r\n",
        " 5\r\nhello\r\n0\r\n\r\n",
        "5 \r\nhello\r\n0\r\n\r\n",     /* no BWS before a line end */
        "5 ;x\r\nhello\r\n0\r\n\r\n",
        "5\nhello\r\n0\r\n\r\n",        /* bare LF */
        "5\rhello\r\n0\r\n\r\n",        /* bare CR */
        "5\r\nhelloX\r\n0\r\n\r\n",     /* no CRLF after the data */
        "5\r\nhello\n0\r\n\r\n",
        "5\r\nhello\r0\r\n\r\n",
        "5;a\nb\r\nhello\r\n0\r\n\r\n", /* LF in an extension */
        "5;a\x01\r\nhello\r\n0\r\n\r\n",
        "5;a\x7f\r\nhello\r\n0\r\n\r\n",
        "4000000000000001\r\n",         /* 2^62 + 1 */
        "10000000000000000\r\n",
        "FFFFFFFFFFFFFFFFFFFF\r\n",
        "0\r\n X: y\r\n\r\n",           /* obs-fold in the trailers */
        "0\r\nX : y\r\n\r\n",
        "0\r\nX\r\n\r\n",
        "0\r\nX: y\ny\r\n\r\n",
        "0\r\nX: y\r\n\n",
        "0\r\n\n",
        "0\r\n\rX",
        "0\r\nX: \x01\r\n\r\n",
    };
    for (const char *b : bad) {
        std::string s = b;
        INFO(s);
        CHECK(scan_whole(s) == -1);
        CHECK(scan_bytewise(s) == -1);
    }
    /* the largest size is fine (the scanner never reads that far) */
    http_chunked c = {};
    const char *maxsz = "4000000000000000\r\nabc";
    CHECK(http_chunked_scan(&c, maxsz, strlen(maxsz)) == (ssize_t)strlen(maxsz));
    CHECK(c.size == HTTP_MAX_LENGTH - 3);
    CHECK_FALSE(c.done);
    /* trailer limit: exactly at it is fine, one byte more is not */
    std::string tr = "0\r\n";
    std::string fields;
    while (fields.size() + 100 < HTTP_MAX_TRAILER)
        fields += "X: " + std::string(95, 'v') + "\r\n";
    std::string last = "Y: " + std::string(HTTP_MAX_TRAILER - fields.size() - 2 - 5, 'w') + "\r\n";
    std::string ok = tr + fields + last + "\r\n";
    REQUIRE(ok.size() - 3 == HTTP_MAX_TRAILER);
    CHECK(scan_whole(ok) == (ssize_t)ok.size());
    CHECK(scan_bytewise(ok) == (ssize_t)ok.size());
    std::string over = tr + fields + "Y: w" + last.substr(3) + "\r\n";
    CHECK(scan_whole(over) == -1);
    CHECK(scan_bytewise(over) == -1);
    /* size line limit */
    std::string line = "5;" + std::string(HTTP_MAX_CHUNK_LINE - 2, 'e') + "\r\nhello\r\n0\r\n\r\n";
    CHECK(scan_whole(line) == -1);
    line = "5;" + std::string(HTTP_MAX_CHUNK_LINE - 3, 'e') + "\r\nhello\r\n0\r\n\r\n";
    CHECK(scan_whole(line) == (ssize_t)line.size());
}

/* ---- helpers ---- */

static int key(const char *v, std::string *out)
{
    char b[HTTP_HOST_MAX + 1];
    std::string s = v;
    int n = http_host_key(http_str{gbuf().put(s.data(), s.size()), s.size()}, b);
    *out = n >= 0 ? std::string(b, n) : "";
    if (n >= 0)
        CHECK(strlen(b) == (size_t)n);
    return n;
}

TEST_CASE("http_host_key")
{
    std::string k;
    CHECK(key("Example.COM", &k) == 11);
    CHECK(k == "example.com");
    CHECK(key("example.com:8080", &k) == 11);
    CHECK(k == "example.com");
    CHECK(key("example.com.", &k) == 11);
    CHECK(k == "example.com");
    CHECK(key("example.com.:80", &k) == 11);
    CHECK(key("example.com:", &k) == 11);
    CHECK(key("my_host-1.lan", &k) == 13);
    CHECK(key("10.0.0.1:80", &k) == 8);
    CHECK(k == "10.0.0.1");
    CHECK(key("[::1]:8080", &k) == 3);
    CHECK(k == "::1");
    CHECK(key("[FE80::A]", &k) == 7);
    CHECK(k == "fe80::a");
    CHECK(key(std::string(255, 'a').c_str(), &k) == 255);
    const char *bad[] = {
        "", ":80", "exa mple.com", "exa/mple", "a@b", "a:b", "a:80:80", "a:123456", "a:65536",
        "[::1", "[::1]x", "[]", "[abc]", "[::1%eth0]", "::1", "a\x01", "caf\xc3\xa9", "a\r\n",
        "a*", "[::1]:", nullptr,
    };
    for (const char **b = bad; *b; b++) {
        INFO(*b);
        if (!strcmp(*b, "[::1]:"))
            CHECK(key(*b, &k) == 3);     /* an empty port is allowed */
        else
            CHECK(key(*b, &k) == -1);
    }
    CHECK(key(std::string(256, 'a').c_str(), &k) == -1);
    CHECK(key("a:65535", &k) == 1);
}

TEST_CASE("http_token_list_has")
{
    auto has = [](const char *v, const char *t) {
        std::string s = v;
        return http_token_list_has(http_str{gbuf().put(s.data(), s.size()), s.size()}, t);
    };
    CHECK(has("close", "close"));
    CHECK(has("Keep-Alive, Upgrade", "upgrade"));
    CHECK(has("a,,  CLOSE \t,b", "close"));
    CHECK(has(",close", "close"));
    CHECK_FALSE(has("closed", "close"));
    CHECK_FALSE(has("x-close", "close"));
    CHECK_FALSE(has("", "close"));
    CHECK_FALSE(has("clos", "close"));
    CHECK_FALSE(has("close-ish, keep", "close"));
}

TEST_CASE("http_parse_authority")
{
    auto auth = [](const char *v, std::string *h, uint16_t *port) {
        std::string s = v;
        http_str hs;
        int r = http_parse_authority(http_str{gbuf().put(s.data(), s.size()), s.size()}, &hs, port);
        if (r == 0)
            *h = S(hs);
        return r;
    };
    std::string h;
    uint16_t port = 0;
    CHECK(auth("example.com:443", &h, &port) == 0);
    CHECK(h == "example.com");
    CHECK(port == 443);
    CHECK(auth("[2001:db8::1]:8443", &h, &port) == 0);
    CHECK(h == "2001:db8::1");
    CHECK(port == 8443);
    CHECK(auth("Host.Example:1", &h, &port) == 0);
    CHECK(h == "Host.Example");
    for (const char *b : {"example.com", "example.com:", "example.com:0", "example.com:65536",
                          ":443", "[::1]", "[::1]443", "a b:1", "u@h:1", "h:1/x", "h:+1", ""}) {
        INFO(b);
        CHECK(auth(b, &h, &port) == -1);
    }
}

TEST_CASE("http_parse_absolute_uri")
{
    struct {
        const char *uri;
        bool https;
        const char *host;
        uint16_t port;
        const char *path;
        const char *authority;
    } good[] = {
        {"http://example.com:8080/a?b", false, "example.com", 8080, "/a?b", "example.com:8080"},
        {"http://example.com", false, "example.com", 80, "/", "example.com"},
        {"http://example.com:/x", false, "example.com", 80, "/x", "example.com:"},
        {"HTTP://Example.com/", false, "Example.com", 80, "/", "Example.com"},
        {"https://secure.example/p", true, "secure.example", 443, "/p", "secure.example"},
        {"http://[::1]:81/x/y?z=1#", false, "::1", 81, "/x/y?z=1#", "[::1]:81"},
        {"http://10.1.2.3", false, "10.1.2.3", 80, "/", "10.1.2.3"},
        {"http://h?q=1", false, "h", 80, "?q=1", "h"},
    };
    for (auto &g : good) {
        INFO(g.uri);
        std::string s = g.uri;
        bool https = !g.https;
        http_str host, path, authority;
        uint16_t port = 0;
        REQUIRE(http_parse_absolute_uri(http_str{gbuf().put(s.data(), s.size()), s.size()}, &https,
                                        &host, &port, &path, &authority) == 0);
        CHECK(S(authority) == g.authority);
        CHECK(https == g.https);
        CHECK(S(host) == g.host);
        CHECK(port == g.port);
        CHECK(S(path) == g.path);
    }
    for (const char *b : {"/a", "ftp://x/", "http:/x", "http://", "http:///a", "http://u@h/",
                          "http://u:p@h/", "http://h:0/", "http://h:99999/",
                          "http://h#f", "http://h:8x/", "http://[::1/", "example.com:80", ""}) {
        INFO(b);
        std::string s = b;
        bool https;
        http_str host, path;
        uint16_t port;
        CHECK(http_parse_absolute_uri(http_str{gbuf().put(s.data(), s.size()), s.size()}, &https,
                                      &host, &port, &path) == -1);
    }
}

TEST_CASE("head writer: a field named by the 20th Connection option is dropped too")
{
    std::string msg = "GET / HTTP/1.1\r\nHost: a\r\nConnection: ";
    for (int i = 0; i < 19; i++)
        msg += "o" + std::to_string(i) + ", ";
    msg += "X-Last\r\nX-Last: 1\r\nO3: 2\r\nX-Kept: 3\r\n\r\n";
    http_request req;
    REQUIRE(parse(msg, &req) == (int)msg.size());
    std::string out;
    http_copy_fields(&out, req, 0, nullptr);
    CHECK(out == "Host: a\r\nX-Kept: 3\r\n");
}

TEST_CASE("head writer")
{
    std::string msg = "POST http://a.example/x HTTP/1.1\r\n"
                      "Host: a.example\r\n"
                      "Connection: keep-alive, X-Hop, Content-Length, host, Upgrade\r\n"
                      "Keep-Alive: timeout=5\r\n"
                      "Proxy-Connection: keep-alive\r\n"
                      "Proxy-Authorization: Basic dTpw\r\n"
                      "TE: trailers\r\n"
                      "Trailer: X-Sum\r\n"
                      "X-Hop: 1\r\n"
                      "Transfer-Encoding: chunked\r\n"
                      "Upgrade: websocket\r\n"
                      "X-Forwarded-For: 1.2.3.4\r\n"
                      "connection: x-other\r\n"
                      "X-Other: 2\r\n"
                      "Accept: */*\r\n\r\n";
    http_request req;
    REQUIRE(parse(msg, &req) == (int)msg.size());
    std::string out;
    http_write_request_line(&out, req.method, http_cstr("/x"), 1);
    static const char *const skip[] = {"proxy-authorization", "X-FORWARDED-FOR", nullptr};
    http_copy_fields(&out, req, HTTP_KEEP_TE, skip);
    http_write_field(&out, "X-Forwarded-For", "1.2.3.4, 5.6.7.8");
    http_write_end(&out);
    CHECK(out == "POST /x HTTP/1.1\r\n"
                    "Host: a.example\r\n"
                    "Trailer: X-Sum\r\n"
                    "Transfer-Encoding: chunked\r\n"
                    "Accept: */*\r\n"
                    "X-Forwarded-For: 1.2.3.4, 5.6.7.8\r\n\r\n");
    /* the rewritten head parses, with the same framing */
    http_request again;
    REQUIRE(parse(out, &again) == (int)out.size());
    http_msg_info info;
    REQUIRE(http_request_framing(again, &info) == 0);
    CHECK(info.body == HTTP_BODY_CHUNKED);

    /* (the parse above reused the buffer req points into) */
    REQUIRE(parse(msg, &req) == (int)msg.size());
    out.clear();
    http_copy_fields(&out, req, HTTP_KEEP_UPGRADE, nullptr);
    CHECK(out == "Host: a.example\r\n"
                 "Proxy-Authorization: Basic dTpw\r\n"
                 "Trailer: X-Sum\r\n"
                 "Upgrade: websocket\r\n"
                 "X-Forwarded-For: 1.2.3.4\r\n"
                 "Accept: */*\r\n");

    /* fields added in one call: the bytes of one call each */
    out.clear();
    const http_str nv[] = {http_cstr("X-A"), http_cstr("1"), http_cstr("X-Empty"), http_str{nullptr, 0},
                           http_cstr("Connection"), http_cstr("close")};
    http_write_fields(&out, nv, 3);
    http_write_fields(&out, nv, 0);
    std::string one = "GET / HTTP/1.1\r\n";
    for (size_t i = 0; i < 6; i += 2)
        http_write_field(&one, nv[i], nv[i + 1]);
    CHECK(out == "X-A: 1\r\nX-Empty: \r\nConnection: close\r\n");
    CHECK(one == "GET / HTTP/1.1\r\n" + out);

    out.clear();
    http_write_status_line(&out, 1, 502, http_str{nullptr, 0});
    http_write_status_line(&out, 0, 200, http_cstr("Connection Established"));
    http_write_status_line(&out, 1, 299, http_str{nullptr, 0});
    CHECK(out == "HTTP/1.1 502 Bad Gateway\r\nHTTP/1.0 200 Connection Established\r\nHTTP/1.1 299 \r\n");
    http_response resp;
    CHECK(parse(out.substr(0, 26) + "\r\n", &resp) == 28);
    CHECK(strcmp(http_reason(431), "Request Header Fields Too Large") == 0);
    CHECK(strcmp(http_reason(407), "Proxy Authentication Required") == 0);
    CHECK(strcmp(http_reason(299), "") == 0);
}

TEST_CASE("tokens and field values, as the parser judges them")
{
    CHECK(http_is_token(http_cstr("X-Forwarded-For")));
    CHECK(http_is_token(http_cstr("!#$%&'*+-.^_`|~09azAZ")));
    CHECK_FALSE(http_is_token(http_cstr("")));
    CHECK_FALSE(http_is_token(http_cstr("Bad Name")));
    CHECK_FALSE(http_is_token(http_cstr("a:b")));
    CHECK_FALSE(http_is_token(http_str{"a\0b", 3}));
    CHECK(http_is_field_value(http_cstr("")));
    CHECK(http_is_field_value(http_cstr("v, \tw \x80\xff")));
    CHECK_FALSE(http_is_field_value(http_cstr("v\rInjected: 1")));
    CHECK_FALSE(http_is_field_value(http_cstr("v\n")));
    CHECK_FALSE(http_is_field_value(http_cstr("\x7f")));
    CHECK_FALSE(http_is_field_value(http_str{"a\0b", 3}));
}

TEST_CASE("http_str comparisons")
{
    CHECK(http_str_eq(http_cstr("GET"), "GET"));
    CHECK_FALSE(http_str_eq(http_cstr("get"), "GET"));
    CHECK(http_str_ieq(http_cstr("get"), "GET"));
    CHECK_FALSE(http_str_ieq(http_cstr("GETS"), "GET"));
    CHECK(http_str_eq(http_str{nullptr, 0}, ""));
}

TEST_CASE("the parser tells the framing and hop-by-hop fields apart once, in any case")
{
    static const struct { const char *name; int id; } known[] = {
        {"tE", HTTP_F_TE}, {"HOST", HTTP_F_HOST}, {"Expect", HTTP_F_EXPECT}, {"upgradE", HTTP_F_UPGRADE},
        {"Connection", HTTP_F_CONNECTION}, {"KEEP-alive", HTTP_F_KEEP_ALIVE},
        {"content-LENGTH", HTTP_F_CONTENT_LENGTH}, {"Proxy-Connection", HTTP_F_PROXY_CONNECTION},
        {"Transfer-Encoding", HTTP_F_TRANSFER_ENCODING},
        /* same lengths, other names */
        {"Tx", HTTP_F_OTHER}, {"Date", HTTP_F_OTHER}, {"Server", HTTP_F_OTHER}, {"Referer", HTTP_F_OTHER},
        {"Connectiom", HTTP_F_OTHER}, {"Content-Lengtj", HTTP_F_OTHER}, {"X-Forwarded-For", HTTP_F_OTHER},
        {"Proxy-Connectiom", HTTP_F_OTHER}, {"Transfer-Encodinf", HTTP_F_OTHER}, {"X", HTTP_F_OTHER},
    };
    std::string msg = "GET / HTTP/1.1\r\n";
    for (auto &k : known) {
        CHECK_MESSAGE(http_header_id(http_cstr(k.name)) == k.id, k.name);
        msg += std::string(k.name) + ": v\r\n";
    }
    msg += "\r\n";
    http_request req;
    REQUIRE(parse(msg, &req) == (int)msg.size());
    REQUIRE(req.num_headers == sizeof known / sizeof known[0]);
    for (size_t i = 0; i < req.num_headers; i++)
        CHECK_MESSAGE(req.headers[i].id == known[i].id, known[i].name);
}

TEST_CASE("field names match in any case, and only whole")
{
    CHECK(http_ieq_lit(http_cstr("CONTENT-length"), "content-length"));
    CHECK_FALSE(http_ieq_lit(http_cstr("content-lengthy"), "content-length"));
    CHECK_FALSE(http_ieq_lit(http_cstr("content-lengt"), "content-length"));
    http_str none{nullptr, 0};
    CHECK_FALSE(http_ieq_lit(none, "te"));
    CHECK(http_ieq_lit(none, ""));

    /* framing from names in odd case; near-misses are ordinary fields */
    std::string msg = "POST /u HTTP/1.1\r\nhOST: a\r\nCONTENT-length: 5\r\nContent-Lengthy: 9\r\n"
                      "Hostx: b\r\ncONNECTION: CLOSE\r\n\r\n";
    http_request req;
    REQUIRE(parse(msg, &req) == (int)msg.size());
    http_msg_info info;
    REQUIRE(http_request_framing(req, &info) == 0);
    CHECK(info.body == HTTP_BODY_LENGTH);
    CHECK(info.length == 5);
    CHECK_FALSE(info.keep_alive);
    CHECK(std::string(info.host.p, info.host.n) == "a");

    /* hop-by-hop names in any case go, look-alikes stay */
    msg = "GET / HTTP/1.1\r\nHost: a\r\nKEEP-ALIVE: 1\r\nTe: trailers\r\nTee: 1\r\n"
          "proxy-CONNECTION: x\r\nKeep-Alives: 2\r\n\r\n";
    REQUIRE(parse(msg, &req) == (int)msg.size());
    std::string out;
    http_copy_fields(&out, req, 0, nullptr);
    CHECK(out == "Host: a\r\nTee: 1\r\nKeep-Alives: 2\r\n");
}

TEST_CASE("head writer: a Content-Length given more than once goes on once, as its first value")
{
    http_request req;
    http_msg_info info;
    std::string out;
    REQUIRE(parse("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 007\r\n\r\n", &req) > 0);
    http_copy_fields(&out, req, 0, nullptr);
    CHECK(out == "Host: a\r\nContent-Length: 007\r\n");
    for (const char *f : {"Content-Length: 7\r\ncontent-length: 007\r\n", "Content-Length: 7, 7\r\n"}) {
        INFO(f);
        REQUIRE(parse(std::string("POST / HTTP/1.1\r\nHost: a\r\n") + f + "X: y\r\n\r\n", &req) > 0);
        REQUIRE(http_request_framing(req, &info) == 0);
        CHECK(info.length == 7);
        out.clear();
        http_copy_fields(&out, req, 0, nullptr);
        CHECK(out == "Host: a\r\nContent-Length: 7\r\nX: y\r\n");
    }
    /* a HEAD's answer describes a GET's body: its length goes on once too */
    http_response resp;
    REQUIRE(parse("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n", &resp) > 0);
    REQUIRE(http_response_framing(200, true, resp, &info) == 0);
    out.clear();
    http_copy_fields(&out, resp, 0, nullptr);
    CHECK(out == "Content-Length: 12\r\n");
}
