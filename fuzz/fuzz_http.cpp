/*
 * fuzz_http.cpp - HTTP heads, framing, the chunked scanner and the host
 * helpers on arbitrary bytes.
 *
 * Input: one selector byte, then the message bytes. Selector & 3: 0
 * request (& 0x0c == 0x0c: padded to within 256 bytes of HTTP_MAX_HEAD),
 * 1 response (& 4: to a HEAD request), 2 chunked body (after a request
 * head if one parses), 3 host helpers.
 * Properties:
 *  - a head fed in random splits (last_len = what the previous call saw)
 *    gives the same answer and the same fields as the whole buffer, and
 *    every call sees only an exact-size copy (ASan: no read past len);
 *  - a parsed head rewritten by the head writer parses again, to the same
 *    method/target/status and fields (hop-by-hop ones aside);
 *  - the chunked scanner fed in random splits agrees with one whole scan;
 *  - host key / authority / absolute-URI results are well-formed.
 */
#include "http.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); abort(); } } while (0)

static uint32_t rng_state;
static uint32_t rnd(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}

/* An exact-size heap copy of the first n bytes. */
struct exact {
    char *p;
    exact(const char *src, size_t n) : p((char *)malloc(n ? n : 1)) { if (n) memcpy(p, src, n); }
    ~exact() { free(p); }
};

/* Views are compared by offset into their buffer and length. */
static bool same_view(http_str a, const char *abuf, http_str b, const char *bbuf)
{
    if (a.n != b.n)
        return false;
    if (a.n == 0)
        return true;
    return a.p - abuf == b.p - bbuf;
}

static bool same_fields(const http_head &a, const char *abuf, const http_head &b, const char *bbuf)
{
    if (a.minor != b.minor || a.num_headers != b.num_headers)
        return false;
    for (size_t i = 0; i < a.num_headers; i++)
        if (!same_view(a.headers[i].name, abuf, b.headers[i].name, bbuf) ||
            !same_view(a.headers[i].value, abuf, b.headers[i].value, bbuf))
            return false;
    return true;
}

static bool str_equal(http_str a, http_str b)
{
    return a.n == b.n && (a.n == 0 || !memcmp(a.p, b.p, a.n));
}

static void check_views(const http_head &m, const char *buf, size_t hlen)
{
    for (size_t i = 0; i < m.num_headers; i++) {
        const http_header &h = m.headers[i];
        CHECK(h.name.n > 0 && h.name.p >= buf && h.name.p + h.name.n <= buf + hlen);
        CHECK(h.value.n == 0 || (h.value.p >= buf && h.value.p + h.value.n <= buf + hlen));
    }
}

/* Hop-by-hop fields as http_copy_fields() drops them, for comparing a
 * rewritten head with its original: the surviving ones, in order. */
static std::vector<std::pair<std::string, std::string>> kept_fields(const http_head &m, unsigned flags)
{
    std::string out;
    http_copy_fields(&out, m, flags, nullptr);
    std::vector<std::pair<std::string, std::string>> v;
    size_t pos = 0;
    while (pos < out.size()) {
        size_t e = out.find("\r\n", pos);
        CHECK(e != std::string::npos);
        std::string line = out.substr(pos, e - pos);
        size_t c = line.find(": ");
        CHECK(c != std::string::npos);
        v.push_back({line.substr(0, c), line.substr(c + 2)});
        pos = e + 2;
    }
    return v;
}

static void check_framing_info(const http_msg_info &info, int r)
{
    if (r < 0) {
        CHECK(info.error != nullptr);
        return;
    }
    CHECK(info.body <= HTTP_BODY_CLOSE);
    if (info.body == HTTP_BODY_LENGTH)
        CHECK(info.length > 0 && info.length <= HTTP_MAX_LENGTH);
    if (info.body == HTTP_BODY_CLOSE)
        CHECK(!info.keep_alive);
}

static void fuzz_request(const char *data, size_t len, size_t step = 512)
{
    static http_request whole, part, again;
    exact w(data, len);
    int r = http_parse_request(w.p, len, &whole, 0);
    CHECK(r > 0 || r == HTTP_PARTIAL || r == HTTP_INVALID || r == HTTP_TOO_MANY_HEADERS);
    CHECK(r <= 0 || (size_t)r <= len);

    /* the same bytes arriving in pieces */
    size_t seen = 0, upto = 0;
    int pr = HTTP_PARTIAL;
    while (upto < len && pr == HTTP_PARTIAL) {
        upto += 1 + rnd() % (rnd() % 2 ? 8 : step);
        if (upto > len)
            upto = len;
        exact p(data, upto);
        pr = http_parse_request(p.p, upto, &part, seen);
        if (pr > 0) {
            CHECK(pr == r);
            CHECK(same_view(part.method, p.p, whole.method, w.p) && same_view(part.target, p.p, whole.target, w.p));
            CHECK(same_fields(part, p.p, whole, w.p));
        }
        seen = upto;
    }
    CHECK(pr == r);
    if (r <= 0)
        return;

    check_views(whole, w.p, (size_t)r);
    http_msg_info info;
    int fr = http_request_framing(whole, &info);
    check_framing_info(info, fr);
    (void)http_find_header(whole, "host");
    if (info.host.p)
        CHECK(info.host.p >= w.p && info.host.p + info.host.n <= w.p + r);

    /* the head writer's output parses to the same request */
    unsigned flags = rnd() % 4;
    std::string out;
    http_write_request_line(&out, whole.method, whole.target, whole.minor);
    http_copy_fields(&out, whole, flags, nullptr);
    http_write_end(&out);
    exact o(out.data(), out.size());
    int r2 = http_parse_request(o.p, out.size(), &again, 0);
    /* CRLF for bare LF and ": " may lengthen a head past the limit */
    if (r2 == HTTP_TOO_MANY_HEADERS || out.size() > HTTP_MAX_HEAD)
        return;
    CHECK(r2 == (int)out.size());
    CHECK(str_equal(again.method, whole.method) && str_equal(again.target, whole.target) &&
          again.minor == whole.minor);
    auto a = kept_fields(whole, flags), b = kept_fields(again, flags);
    CHECK(a == b);
}

static void fuzz_response(const char *data, size_t len, bool head)
{
    static http_response whole, part, again;
    exact w(data, len);
    int r = http_parse_response(w.p, len, &whole, 0);
    CHECK(r > 0 || r == HTTP_PARTIAL || r == HTTP_INVALID || r == HTTP_TOO_MANY_HEADERS);

    size_t seen = 0, upto = 0;
    int pr = HTTP_PARTIAL;
    while (upto < len && pr == HTTP_PARTIAL) {
        upto += 1 + rnd() % (rnd() % 2 ? 8 : 512);
        if (upto > len)
            upto = len;
        exact p(data, upto);
        pr = http_parse_response(p.p, upto, &part, seen);
        if (pr > 0) {
            CHECK(pr == r && part.status == whole.status);
            CHECK(same_view(part.reason, p.p, whole.reason, w.p));
            CHECK(same_fields(part, p.p, whole, w.p));
        }
        seen = upto;
    }
    CHECK(pr == r);
    if (r <= 0)
        return;

    CHECK(whole.status >= 100 && whole.status <= 999);
    check_views(whole, w.p, (size_t)r);
    http_msg_info info;
    int fr = http_response_framing(whole.status, head, whole, &info);
    check_framing_info(info, fr);

    unsigned flags = rnd() % 4;
    std::string out;
    http_write_status_line(&out, whole.minor, whole.status, whole.reason);
    http_copy_fields(&out, whole, flags, nullptr);
    http_write_end(&out);
    exact o(out.data(), out.size());
    int r2 = http_parse_response(o.p, out.size(), &again, 0);
    if (r2 == HTTP_TOO_MANY_HEADERS || out.size() > HTTP_MAX_HEAD)
        return;
    CHECK(r2 == (int)out.size());
    CHECK(again.status == whole.status && again.minor == whole.minor);
    CHECK(whole.reason.n == 0 || str_equal(again.reason, whole.reason));
    auto a = kept_fields(whole, flags), b = kept_fields(again, flags);
    CHECK(a == b);
}

static void fuzz_chunked(const char *data, size_t len)
{
    exact w(data, len);
    http_chunked c = {};
    ssize_t whole = http_chunked_scan(&c, w.p, len);
    CHECK(whole >= -1 && whole <= (ssize_t)len);
    bool done = whole >= 0 && c.done;
    if (done)
        CHECK(whole > 0 && w.p[whole - 1] == '\n');
    if (whole >= 0 && !c.done)
        CHECK(whole == (ssize_t)len);

    http_chunked s = {};
    size_t off = 0;
    ssize_t res = 0;
    while (off < len) {
        size_t n = 1 + rnd() % (rnd() % 2 ? 4 : 300);
        if (n > len - off)
            n = len - off;
        exact p(data + off, n);
        ssize_t k = http_chunked_scan(&s, p.p, n);
        if (k < 0) {
            res = -1;
            break;
        }
        CHECK((size_t)k <= n);
        off += (size_t)k;
        res = (ssize_t)off;
        if (s.done)
            break;
        CHECK((size_t)k == n);
    }
    CHECK(res == whole);
    if (res >= 0) {
        CHECK(s.done == c.done);
        if (s.done) {
            exact p(data, len);
            CHECK(http_chunked_scan(&s, p.p, len) == 0);
        }
    }
}

static void fuzz_hosts(const char *data, size_t len)
{
    exact w(data, len);
    http_str v = {w.p, len};
    char key[HTTP_HOST_MAX + 1];
    int k = http_host_key(v, key);
    if (k >= 0) {
        CHECK(k > 0 && k <= HTTP_HOST_MAX && key[k] == 0 && strlen(key) == (size_t)k);
        for (int i = 0; i < k; i++)
            CHECK(!(key[i] >= 'A' && key[i] <= 'Z'));
        /* a name's key is its own key */
        if (!memchr(key, ':', k) && key[k - 1] != '.') {
            char key2[HTTP_HOST_MAX + 1];
            int k2 = http_host_key(http_str{key, (size_t)k}, key2);
            CHECK(k2 == k && !memcmp(key, key2, k));
        }
    }
    http_str host;
    uint16_t port;
    if (http_parse_authority(v, &host, &port) == 0) {
        CHECK(port > 0 && host.n > 0 && host.p >= w.p && host.p + host.n <= w.p + len);
    }
    bool https;
    http_str path;
    if (http_parse_absolute_uri(v, &https, &host, &port, &path) == 0) {
        CHECK(port > 0 && host.n > 0 && host.p >= w.p && host.p + host.n <= w.p + len);
        CHECK(path.n > 0 && (path.p[0] == '/' || path.p[0] == '?'));
        std::string buf;
        http_str target = http_origin_form(path, &buf);
        CHECK(target.n > 0 && target.p[0] == '/');
    }
    (void)http_token_list_has(v, "close");
    (void)http_token_list_has(v, "");
    if (len < 4) {
        int st = 0;
        for (size_t i = 0; i < len; i++)
            st = st * 10 + (unsigned char)data[i] % 10;
        (void)http_reason(st);
    }
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *p = (const char *)data + 1;
    size_t len = size - 1;
    rng_state = 0x2545f491u ^ (uint32_t)size * 2654435761u ^ data[0];
    if (!rng_state)
        rng_state = 1;
    switch (data[0] & 3) {
    case 0:
        if ((data[0] & 0x0c) == 0x0c) {
            /* near HTTP_MAX_HEAD: a padding field puts the input's end
             * within 256 bytes either side of the limit */
            std::string big = "GET / HTTP/1.1\r\nX-Pad: ";
            size_t want = HTTP_MAX_HEAD - 256 + (len ? (uint8_t)p[0] : 0) * 2;
            size_t pad = want > big.size() + len + 2 ? want - big.size() - len - 2 : 0;
            big.append(pad, 'a');
            big += "\r\n";
            big.append(p, len);
            fuzz_request(big.data(), big.size(), 1 << 15);
        } else {
            fuzz_request(p, len);
        }
        break;
    case 1:
        fuzz_response(p, len, data[0] & 4);
        break;
    case 2: {
        /* a head and the chunked body after it, as the proxies see them */
        static http_request req;
        int r = http_parse_request(p, len, &req, 0);
        if (r > 0)
            fuzz_chunked(p + r, len - (size_t)r);
        else
            fuzz_chunked(p, len);
        break;
    }
    default:
        fuzz_hosts(p, len);
        break;
    }
    return 0;
}
