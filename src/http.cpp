/*
 * http.cpp - HTTP/1.x head parser, framing, chunked scanner, head writer.
 *
 * A head is parsed in two steps: find its end (only in bytes not seen by an
 * earlier call), then parse it once, knowing it is complete. So no parsing
 * state needs to survive between calls, and no byte is parsed twice.
 */
#include "http.h"

#include <ctype.h>
#include <strings.h>

/* ---- character classes ---- */

enum { C_TCHAR = 1, C_VALUE = 2, C_TARGET = 4, C_NAME = 8, C_V6 = 16 };

struct ctab {
    uint8_t c[256];
    uint8_t lc[256];    /* ASCII lower case */
};

static constexpr ctab make_ctab()
{
    ctab t{};
    const char *tsym = "!#$%&'*+-.^_`|~";
    for (int i = 0; i < 256; i++) {
        bool alpha = (i >= 'a' && i <= 'z') || (i >= 'A' && i <= 'Z');
        bool digit = i >= '0' && i <= '9';
        bool hex = digit || (i >= 'a' && i <= 'f') || (i >= 'A' && i <= 'F');
        bool sym = false;
        for (const char *s = tsym; *s; s++)
            sym = sym || *s == i;
        uint8_t v = 0;
        if (alpha || digit || sym)
            v |= C_TCHAR;
        /* field-vchar, obs-text, SP, HTAB */
        if ((i > 0x20 && i < 0x7f) || i >= 0x80 || i == ' ' || i == '\t')
            v |= C_VALUE;
        if ((i > 0x20 && i < 0x7f) || i >= 0x80)
            v |= C_TARGET;
        if (alpha || digit || i == '-' || i == '.' || i == '_')
            v |= C_NAME;
        if (hex || i == ':' || i == '.')
            v |= C_V6;
        t.c[i] = v;
        t.lc[i] = (uint8_t)(i >= 'A' && i <= 'Z' ? i | 0x20 : i);
    }
    return t;
}

static constexpr ctab ct = make_ctab();

static inline bool is(unsigned char ch, int cls) { return ct.c[ch] & cls; }

static inline int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch |= 0x20;
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

static inline unsigned char lower(unsigned char ch) { return ct.lc[ch]; }

bool http_mem_ieq(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lower(a[i]) != lower(b[i]))
            return false;
    return true;
}

/* Both walk s only as far as a, and stop at the first difference: most
 * calls compare a field name against one it is not. */
bool http_str_eq(http_str a, const char *s)
{
    for (size_t i = 0; i < a.n; i++)
        if (!s[i] || a.p[i] != s[i])
            return false;
    return !s[a.n];
}

bool http_str_ieq(http_str a, const char *s)
{
    for (size_t i = 0; i < a.n; i++)
        if (!s[i] || lower(a.p[i]) != lower(s[i]))
            return false;
    return !s[a.n];
}

bool http_is_token(http_str s)
{
    for (size_t i = 0; i < s.n; i++)
        if (!is(s.p[i], C_TCHAR))
            return false;
    return s.n > 0;
}

bool http_is_field_value(http_str s)
{
    for (size_t i = 0; i < s.n; i++)
        if (!is(s.p[i], C_VALUE))
            return false;
    return true;
}

bool http_is_rule_name(http_str name)
{
    int id = http_header_id(name);
    return http_is_token(name) && (id == HTTP_F_OTHER || id == HTTP_F_EXPECT);
}

bool http_is_host_rule(http_str s)
{
    for (size_t i = 0; i < s.n; i++) {
        unsigned char ch = (unsigned char)s.p[i];
        if (!isalnum(ch) && !memchr("-._:[]", ch, 6))
            return false;
    }
    return true;
}

/* ---- head parser ---- */

/*
 * Length of the head (through its final empty line) if its end lies in
 * buf[0..len), looking for it only from offset from; else 0. A line ends
 * in LF (a CR before it is checked by the parser), so the end is an LF
 * followed by LF or by CRLF.
 */
static size_t head_end(const char *buf, size_t len, size_t from)
{
    const char *p = buf + from, *end = buf + len;
    while (p < end) {
        const char *lf = (const char *)memchr(p, '\n', end - p);
        if (!lf || lf + 1 >= end)
            return 0;
        if (lf[1] == '\n')
            return lf + 2 - buf;
        if (lf[1] == '\r') {
            if (lf + 2 >= end)
                return 0;
            if (lf[2] == '\n')
                return lf + 3 - buf;
        }
        p = lf + 1;
    }
    return 0;
}

/* Shared front of both parsers: clamp, skip, find the end. Returns the head
 * length, or 0 when it is not complete. */
static size_t locate(const char *buf, size_t len, size_t last_len, size_t skip)
{
    if (len > HTTP_MAX_HEAD)
        len = HTTP_MAX_HEAD;
    /* the end's first LF may be up to two bytes before the new ones */
    size_t from = last_len > 2 ? last_len - 2 : 0;
    if (from < skip)
        from = skip;
    /* the end of the first line cannot be the start of the empty line */
    return from < len ? head_end(buf, len, from) : 0;
}

/* At p: a line end (CRLF or LF)? Moves p past it. A CR not followed by LF
 * is never a line end, and never valid anywhere in a head. */
static inline bool eol(const char **pp, const char *end)
{
    const char *p = *pp;
    if (p < end && *p == '\r')
        p++;
    if (p < end && *p == '\n') {
        *pp = p + 1;
        return true;
    }
    return false;
}

/* "HTTP/1.0" or "HTTP/1.1" at p; sets *minor and moves p. */
static bool version(const char **pp, const char *end, int *minor)
{
    const char *p = *pp;
    if (end - p < 8 || memcmp(p, "HTTP/1.", 7) != 0 || (p[7] != '0' && p[7] != '1'))
        return false;
    *minor = p[7] - '0';
    *pp = p + 8;
    return true;
}

int http_header_id(http_str n)
{
    switch (n.n) {
    case 2: return http_ieq_lit(n, "te") ? HTTP_F_TE : HTTP_F_OTHER;
    case 4: return http_ieq_lit(n, "host") ? HTTP_F_HOST : HTTP_F_OTHER;
    case 6: return http_ieq_lit(n, "expect") ? HTTP_F_EXPECT : HTTP_F_OTHER;
    case 7: return http_ieq_lit(n, "upgrade") ? HTTP_F_UPGRADE : HTTP_F_OTHER;
    case 10:
        if (http_ieq_lit(n, "connection"))
            return HTTP_F_CONNECTION;
        return http_ieq_lit(n, "keep-alive") ? HTTP_F_KEEP_ALIVE : HTTP_F_OTHER;
    case 14: return http_ieq_lit(n, "content-length") ? HTTP_F_CONTENT_LENGTH : HTTP_F_OTHER;
    case 16: return http_ieq_lit(n, "proxy-connection") ? HTTP_F_PROXY_CONNECTION : HTTP_F_OTHER;
    case 17: return http_ieq_lit(n, "transfer-encoding") ? HTTP_F_TRANSFER_ENCODING : HTTP_F_OTHER;
    default: return HTTP_F_OTHER;
    }
}

/* Where the value bytes from p stop (at the line end, or a byte that is
 * not allowed). Eight at a time while none is a CTL or DEL: a word whose
 * bytes are all 0x20 or over (or obs-text) and none is 0x7f needs no
 * table; HTAB, the one CTL allowed, is left to the byte loop. */
static inline const char *value_end(const char *p, const char *end)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    while (end - p >= 8) {
        uint64_t x, y;
        memcpy(&x, p, 8);
        y = x ^ (0x7f * ones);
        if (((x - 0x20 * ones) & ~x & highs) | ((y - ones) & ~y & highs))
            break;
        p += 8;
    }
    while (is(*p, C_VALUE))
        p++;
    return p;
}

/* Field lines from p up to and including the empty line that ends at end.
 * The head ends in LF, which is neither a tchar nor a value byte: the scans
 * within a line stop on it without checking for end. */
static int fields(const char *p, const char *end, http_head *m)
{
    m->num_headers = 0;
    for (;;) {
        if (eol(&p, end))
            return p == end ? 0 : HTTP_INVALID;
        /* a name: SP/HTAB first is obs-fold, before ':' it is BWS */
        const char *name = p;
        while (is(*p, C_TCHAR))
            p++;
        if (p == name || *p != ':')
            return HTTP_INVALID;
        size_t nlen = p - name;
        p++;
        while (*p == ' ' || *p == '\t')
            p++;
        const char *val = p;
        p = value_end(p, end);
        const char *vend = p;
        if (!eol(&p, end))
            return HTTP_INVALID;
        while (vend > val && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        if (m->num_headers == HTTP_MAX_HEADERS)
            return HTTP_TOO_MANY_HEADERS;
        http_header *h = &m->headers[m->num_headers++];
        h->name = http_str{name, nlen};
        h->value = http_str{val, (size_t)(vend - val)};
        h->id = http_header_id(h->name);
    }
}

int http_parse_request(const char *buf, size_t len, http_request *req, size_t last_len)
{
    size_t skip = 0;
    while (skip < len && skip < HTTP_MAX_HEAD && (buf[skip] == '\n' ||
           (buf[skip] == '\r' && skip + 1 < len && buf[skip + 1] == '\n')))
        skip += buf[skip] == '\r' ? 2 : 1;
    size_t hlen = locate(buf, len, last_len, skip);
    if (!hlen)
        return HTTP_PARTIAL;

    const char *p = buf + skip, *end = buf + hlen;
    const char *s = p;
    while (p < end && is(*p, C_TCHAR))
        p++;
    if (p == s || p == end || *p != ' ')
        return HTTP_INVALID;
    req->method = http_str{s, (size_t)(p - s)};
    s = ++p;
    while (p < end && is(*p, C_TARGET))
        p++;
    if (p == s || p == end || *p != ' ')
        return HTTP_INVALID;
    req->target = http_str{s, (size_t)(p - s)};
    p++;
    if (!version(&p, end, &req->minor) || !eol(&p, end))
        return HTTP_INVALID;
    int r = fields(p, end, req);
    return r < 0 ? r : (int)hlen;
}

int http_parse_response(const char *buf, size_t len, http_response *resp, size_t last_len)
{
    size_t hlen = locate(buf, len, last_len, 0);
    if (!hlen)
        return HTTP_PARTIAL;

    const char *p = buf, *end = buf + hlen;
    if (!version(&p, end, &resp->minor) || end - p < 4 || *p != ' ')
        return HTTP_INVALID;
    int st = 0;
    for (int i = 1; i <= 3; i++) {
        if (p[i] < '0' || p[i] > '9')
            return HTTP_INVALID;
        st = st * 10 + (p[i] - '0');
    }
    if (st < 100)
        return HTTP_INVALID;
    resp->status = st;
    p += 4;
    const char *s = p;
    /* "HTTP/1.1 200\r\n" (no SP, no reason) is common enough to accept */
    if (p < end && *p == ' ') {
        s = ++p;
        while (p < end && is(*p, C_VALUE))
            p++;
    }
    resp->reason = http_str{s, (size_t)(p - s)};
    if (!eol(&p, end))
        return HTTP_INVALID;
    int r = fields(p, end, resp);
    return r < 0 ? r : (int)hlen;
}

/* ---- lists ---- */

/* Next element of a comma-separated list at *pos, OWS trimmed (may be
 * empty). Returns false when the list is exhausted. */
static bool list_next(http_str v, size_t *pos, http_str *el)
{
    size_t i = *pos;
    if (i > v.n)
        return false;
    size_t j = i;
    while (j < v.n && v.p[j] != ',')
        j++;
    *pos = j + 1;
    while (i < j && (v.p[i] == ' ' || v.p[i] == '\t'))
        i++;
    while (j > i && (v.p[j - 1] == ' ' || v.p[j - 1] == '\t'))
        j--;
    *el = http_str{v.p + i, j - i};
    return true;
}

bool http_token_list_has(http_str value, const char *token)
{
    size_t pos = 0;
    http_str el;
    while (list_next(value, &pos, &el))
        if (http_str_ieq(el, token))
            return true;
    return false;
}

int http_header_index(const http_head &m, const char *name, size_t from)
{
    for (size_t i = from; i < m.num_headers; i++)
        if (http_str_ieq(m.headers[i].name, name))
            return (int)i;
    return -1;
}

const http_str *http_find_header(const http_head &m, const char *name)
{
    int i = http_header_index(m, name);
    return i < 0 ? nullptr : &m.headers[i].value;
}

/* ---- framing ---- */

/* What the framing fields of a message say. */
struct framing {
    bool has_cl, has_te, te_chunked, conn_close, conn_keep, conn_upgrade, has_upgrade;
    bool expect_100;
    int hosts;
    uint64_t cl;
    http_str host;
};

static const char *const codings[] = {
    "chunked", "gzip", "x-gzip", "deflate", "compress", "x-compress", nullptr
};

/* Returns nullptr, or the first reason the framing is malformed; the other
 * fields are looked at all the same (a 304 still needs its Connection). */
static const char *scan_fields(const http_head &m, framing *f)
{
    const char *err = nullptr;
    memset(f, 0, sizeof *f);
    for (size_t i = 0; i < m.num_headers; i++) {
        http_str v = m.headers[i].value;
        size_t pos = 0;
        http_str el;
        switch (m.headers[i].id) {
        case HTTP_F_CONTENT_LENGTH:
            while (list_next(v, &pos, &el)) {
                uint64_t x = 0;
                bool ok = el.n > 0;
                for (size_t k = 0; k < el.n && ok; k++) {
                    int d = el.p[k] - '0';
                    ok = d >= 0 && d <= 9 && x <= (HTTP_MAX_LENGTH - d) / 10;
                    x = x * 10 + d;
                }
                if (!ok && !err)
                    err = "bad Content-Length";
                else if (ok && f->has_cl && x != f->cl && !err)
                    err = "conflicting Content-Length";
                f->has_cl = true;
                f->cl = x;
            }
            break;
        case HTTP_F_TRANSFER_ENCODING:
            f->has_te = true;
            while (list_next(v, &pos, &el)) {
                /* chunked must be the last coding, and only once */
                if (f->te_chunked && !err)
                    err = "coding after chunked";
                int k = 0;
                while (codings[k] && !http_str_ieq(el, codings[k]))
                    k++;
                if (!codings[k] && !err)
                    err = "unknown transfer coding";
                f->te_chunked = k == 0;
            }
            break;
        case HTTP_F_CONNECTION:
            while (list_next(v, &pos, &el)) {
                f->conn_close |= http_ieq_lit(el, "close");
                f->conn_keep |= http_ieq_lit(el, "keep-alive");
                f->conn_upgrade |= http_ieq_lit(el, "upgrade");
            }
            break;
        case HTTP_F_HOST:
            f->hosts++;
            f->host = v;
            break;
        case HTTP_F_UPGRADE:
            f->has_upgrade = true;
            break;
        case HTTP_F_EXPECT:
            f->expect_100 |= http_ieq_lit(v, "100-continue");
            break;
        }
    }
    return err;
}

static bool keep_alive(const http_head &m, const framing &f)
{
    return !f.conn_close && (m.minor == 1 || f.conn_keep);
}

int http_request_framing(const http_request &req, http_msg_info *info)
{
    framing f;
    memset(info, 0, sizeof *info);
    info->error = scan_fields(req, &f);
    if (!info->error) {
        if (f.has_cl && f.has_te)
            info->error = "Content-Length with Transfer-Encoding";
        else if (f.has_te && req.minor == 0)
            info->error = "Transfer-Encoding in HTTP/1.0";
        else if (f.has_te && !f.te_chunked)
            info->error = "Transfer-Encoding not ending in chunked";
        else if (f.hosts > 1)
            info->error = "several Host fields";
        else if (f.hosts == 0 && req.minor == 1)
            info->error = "no Host";
    }
    if (info->error)
        return -1;
    if (f.has_te)
        info->body = HTTP_BODY_CHUNKED;
    else if (f.has_cl && f.cl > 0) {
        info->body = HTTP_BODY_LENGTH;
        info->length = f.cl;
    }
    info->keep_alive = keep_alive(req, f);
    /* RFC 9110 7.8 and 10.1.1: HTTP/1.0 Upgrade and Expect are ignored */
    info->upgrade = req.minor == 1 && f.conn_upgrade && f.has_upgrade;
    info->expect_continue = req.minor == 1 && f.expect_100;
    if (f.hosts)
        info->host = f.host;
    return 0;
}

int http_response_framing(int status, bool request_was_head, const http_response &resp,
                          http_msg_info *info)
{
    framing f;
    memset(info, 0, sizeof *info);
    info->error = scan_fields(resp, &f);
    info->keep_alive = keep_alive(resp, f);
    if (status < 200 || status == 204 || status == 304 || request_was_head) {
        info->error = nullptr;      /* its framing fields describe no body here */
        info->upgrade = status == 101;
        return 0;
    }
    if (!info->error && f.has_cl && f.has_te)
        info->error = "Content-Length with Transfer-Encoding";
    if (info->error)
        return -1;
    if (f.has_te && f.te_chunked && resp.minor == 1) {
        info->body = HTTP_BODY_CHUNKED;
    } else if (!f.has_te && f.has_cl) {
        info->body = f.cl ? HTTP_BODY_LENGTH : HTTP_BODY_NONE;
        info->length = f.cl;
    } else {
        info->body = HTTP_BODY_CLOSE;
        info->keep_alive = false;
    }
    return 0;
}

/* ---- chunked scanner ---- */

enum {
    CK_SIZE0 = 0,   /* first hex digit of a size */
    CK_SIZE,        /* more digits, ';' or CR */
    CK_EXT,         /* extensions up to CR */
    CK_SIZE_LF,
    CK_DATA,
    CK_DATA_CR,
    CK_DATA_LF,
    CK_TRAILER0,    /* start of a trailer line, or CR of the last line */
    CK_TNAME,
    CK_TVALUE,
    CK_TLF,
    CK_END_LF,
};

ssize_t http_chunked_scan(http_chunked *c, const char *buf, size_t len)
{
    size_t i = 0;
    if (c->done)
        return 0;
    while (i < len) {
        unsigned char ch = buf[i];
        int d;
        if (c->state == CK_DATA) {
            uint64_t n = len - i;
            if (n > c->size)
                n = c->size;
            i += n;
            c->size -= n;
            if (c->size == 0)
                c->state = CK_DATA_CR;
            continue;
        }
        if (c->state >= CK_TRAILER0 && ++c->count > HTTP_MAX_TRAILER)
            return -1;
        switch (c->state) {
        case CK_SIZE0:
            if ((d = hexval(ch)) < 0)
                return -1;
            c->size = d;
            c->count = 1;
            c->state = CK_SIZE;
            break;
        case CK_SIZE:
            if ((d = hexval(ch)) >= 0) {
                if (c->size > (HTTP_MAX_LENGTH - d) >> 4)
                    return -1;
                c->size = c->size << 4 | d;
            } else if (ch == ';') {
                c->state = CK_EXT;
            } else if (ch == '\r') {
                c->state = CK_SIZE_LF;
            } else {
                /* no BWS before ';': a peer reading "5 x" differently
                 * would see another body */
                return -1;
            }
            if (++c->count > HTTP_MAX_CHUNK_LINE)
                return -1;
            break;
        case CK_EXT:
            if (ch == '\r')
                c->state = CK_SIZE_LF;
            else if (!is(ch, C_VALUE))
                return -1;
            if (++c->count > HTTP_MAX_CHUNK_LINE)
                return -1;
            break;
        case CK_SIZE_LF:
            if (ch != '\n')
                return -1;
            c->count = 0;
            c->state = c->size ? CK_DATA : CK_TRAILER0;
            break;
        case CK_DATA_CR:
            if (ch != '\r')
                return -1;
            c->state = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                return -1;
            c->state = CK_SIZE0;
            break;
        case CK_TRAILER0:
            if (ch == '\r')
                c->state = CK_END_LF;
            else if (is(ch, C_TCHAR))
                c->state = CK_TNAME;
            else
                return -1;
            break;
        case CK_TNAME:
            if (ch == ':')
                c->state = CK_TVALUE;
            else if (!is(ch, C_TCHAR))
                return -1;
            break;
        case CK_TVALUE:
            if (ch == '\r')
                c->state = CK_TLF;
            else if (!is(ch, C_VALUE))
                return -1;
            break;
        case CK_TLF:
            if (ch != '\n')
                return -1;
            c->state = CK_TRAILER0;
            break;
        case CK_END_LF:
            if (ch != '\n')
                return -1;
            c->done = true;
            return i + 1;
        default:
            return -1;
        }
        i++;
    }
    return i;
}

/* ---- hosts and URIs ---- */

/* Split "host[:port]" or "[v6][:port]" (the whole of s). *port is -1 when
 * absent or empty. Returns 0 or -1. */
static int split_host(http_str s, http_str *host, long *port)
{
    const char *p = s.p, *end = s.p + s.n;
    *port = -1;
    if (p < end && *p == '[') {
        const char *h = ++p;
        while (p < end && is(*p, C_V6))
            p++;
        if (p == end || *p != ']' || !memchr(h, ':', p - h))
            return -1;
        *host = http_str{h, (size_t)(p - h)};
        p++;
    } else {
        const char *h = p;
        while (p < end && is(*p, C_NAME))
            p++;
        if (p == h)
            return -1;
        *host = http_str{h, (size_t)(p - h)};
    }
    if (p == end)
        return 0;
    if (*p++ != ':' || end - p > 5)
        return -1;
    if (p == end)
        return 0;
    long v = 0;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        v = v * 10 + (*p - '0');
    }
    if (v > 65535)
        return -1;
    *port = v;
    return 0;
}

int http_host_key(http_str value, char out[HTTP_HOST_MAX + 1])
{
    http_str h;
    long port;
    if (split_host(value, &h, &port) < 0)
        return -1;
    /* "example.com." is the same name */
    if (h.n > 1 && h.p[h.n - 1] == '.' && !memchr(h.p, ':', h.n))
        h.n--;
    if (h.n > HTTP_HOST_MAX)
        return -1;
    for (size_t i = 0; i < h.n; i++)
        out[i] = lower(h.p[i]);
    out[h.n] = 0;
    return (int)h.n;
}

int http_parse_authority(http_str s, http_str *host, uint16_t *port)
{
    long v;
    if (split_host(s, host, &v) < 0 || v <= 0)
        return -1;
    *port = (uint16_t)v;
    return 0;
}

int http_parse_absolute_uri(http_str target, bool *https, http_str *host, uint16_t *port,
                            http_str *path, http_str *authority)
{
    size_t i;
    if (target.n >= 7 && http_mem_ieq(target.p, "http://", 7)) {
        *https = false;
        i = 7;
    } else if (target.n >= 8 && http_mem_ieq(target.p, "https://", 8)) {
        *https = true;
        i = 8;
    } else {
        return -1;
    }
    size_t a = i;
    while (i < target.n && target.p[i] != '/' && target.p[i] != '?' && target.p[i] != '#')
        i++;
    long v;
    if (split_host(http_str{target.p + a, i - a}, host, &v) < 0 || v == 0)
        return -1;
    *port = v < 0 ? (*https ? 443 : 80) : (uint16_t)v;
    if (authority)
        *authority = http_str{target.p + a, i - a};
    if (i == target.n)
        *path = http_str{"/", 1};
    else if (target.p[i] == '/' || target.p[i] == '?')
        *path = http_str{target.p + i, target.n - i};
    else
        return -1;
    return 0;
}

const char *http_reason(int status)
{
    static const struct { short code; const char *text; } t[] = {
        {100, "Continue"}, {101, "Switching Protocols"}, {200, "OK"},
        {201, "Created"}, {204, "No Content"}, {206, "Partial Content"},
        {301, "Moved Permanently"}, {302, "Found"}, {304, "Not Modified"},
        {400, "Bad Request"}, {401, "Unauthorized"}, {403, "Forbidden"},
        {404, "Not Found"}, {405, "Method Not Allowed"},
        {407, "Proxy Authentication Required"}, {408, "Request Timeout"},
        {411, "Length Required"}, {413, "Content Too Large"}, {414, "URI Too Long"},
        {417, "Expectation Failed"}, {431, "Request Header Fields Too Large"},
        {500, "Internal Server Error"}, {501, "Not Implemented"}, {502, "Bad Gateway"},
        {503, "Service Unavailable"}, {504, "Gateway Timeout"},
        {505, "HTTP Version Not Supported"},
    };
    for (const auto &e : t)
        if (e.code == status)
            return e.text;
    return "";
}

/* ---- head writer ---- */

/* One resize per line or group of fields rather than an append per piece:
 * a rewritten head is written for every request. */
static char *grow(std::string *out, size_t n)
{
    size_t at = out->size();
    out->resize(at + n);
    return &(*out)[at];
}

static char *copy(char *d, http_str s)
{
    if (s.n)
        memcpy(d, s.p, s.n);
    return d + s.n;
}

void http_write_request_line(std::string *out, http_str method, http_str target, int minor)
{
    char *d = grow(out, method.n + target.n + 12);
    d = copy(d, method);
    *d++ = ' ';
    d = copy(d, target);
    memcpy(d, minor ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n", 11);
}

void http_write_status_line(std::string *out, int minor, int status, http_str reason)
{
    if (!reason.n)
        reason = http_cstr(http_reason(status));
    char *d = grow(out, 13 + reason.n + 2);
    memcpy(d, "HTTP/1.x 000 ", 13);
    d[7] = minor ? '1' : '0';
    d[9] = (char)('0' + status / 100 % 10);
    d[10] = (char)('0' + status / 10 % 10);
    d[11] = (char)('0' + status % 10);
    d = copy(d + 13, reason);
    memcpy(d, "\r\n", 2);
}

/* "name: " at d; returns where the value goes */
static char *field_open(char *d, http_str name)
{
    d = copy(d, name);
    *d++ = ':';
    *d++ = ' ';
    return d;
}

static char *field_close(char *d)
{
    d[0] = '\r';
    d[1] = '\n';
    return d + 2;
}

void http_write_fields(std::string *out, const http_str *nv, size_t n)
{
    size_t bytes = 0;
    for (size_t i = 0; i < 2 * n; i += 2)
        bytes += nv[i].n + nv[i + 1].n + 4;
    char *d = grow(out, bytes);
    for (size_t i = 0; i < 2 * n; i += 2) {
        d = copy(field_open(d, nv[i]), nv[i + 1]);
        d = field_close(d);
    }
}

void http_write_field(std::string *out, http_str name, http_str value)
{
    const http_str nv[2] = {name, value};
    http_write_fields(out, nv, 1);
}

/* Does a Connection field of m name n? */
/* The options of every Connection field of m, gathered once per head
 * (a field named by one of them is hop-by-hop). More than CONN_MAX of them
 * are looked up in the head itself. */
#define CONN_MAX 16

struct conn_opts {
    http_str opt[CONN_MAX];
    size_t n = 0;
    bool many = false;
};

static void conn_gather(const http_head &m, conn_opts *c)
{
    for (size_t i = 0; i < m.num_headers; i++) {
        if (m.headers[i].id != HTTP_F_CONNECTION)
            continue;
        size_t pos = 0;
        http_str el;
        while (list_next(m.headers[i].value, &pos, &el)) {
            if (c->n < CONN_MAX)
                c->opt[c->n++] = el;
            else
                c->many = true;
        }
    }
}

static bool named_by_connection(const http_head &m, const conn_opts &c, http_str n)
{
    for (size_t k = 0; k < c.n; k++)
        if (c.opt[k].n == n.n && http_mem_ieq(c.opt[k].p, n.p, n.n))
            return true;
    if (!c.many)
        return false;
    for (size_t i = 0; i < m.num_headers; i++) {
        if (m.headers[i].id != HTTP_F_CONNECTION)
            continue;
        size_t pos = 0;
        http_str el;
        while (list_next(m.headers[i].value, &pos, &el))
            if (el.n == n.n && http_mem_ieq(el.p, n.p, n.n))
                return true;
    }
    return false;
}

void http_copy_fields(std::string *out, const http_head &m, unsigned flags,
                      const char *const *skip)
{
    conn_opts conn;
    conn_gather(m, &conn);
    bool has_conn = conn.n > 0;
    uint16_t keep[HTTP_MAX_HEADERS];
    size_t nkeep = 0, bytes = 0;
    http_str cl = {};   /* the Content-Length value that goes on */
    for (size_t i = 0; i < m.num_headers; i++) {
        http_str n = m.headers[i].name;
        int id = m.headers[i].id;
        bool drop = id == HTTP_F_CONNECTION || id == HTTP_F_KEEP_ALIVE || id == HTTP_F_PROXY_CONNECTION ||
                    id == HTTP_F_TE;
        for (const char *const *s = skip; s && *s && !drop; s++)
            drop = http_str_ieq(n, *s);
        bool te = id == HTTP_F_TRANSFER_ENCODING;
        bool up = id == HTTP_F_UPGRADE;
        if (te)
            drop |= !(flags & HTTP_KEEP_TE);
        else if (up)
            drop |= !(flags & HTTP_KEEP_UPGRADE);
        /* never let Connection change the framing or the routing */
        bool protect = (te && (flags & HTTP_KEEP_TE)) || (up && (flags & HTTP_KEEP_UPGRADE)) ||
                       id == HTTP_F_HOST || id == HTTP_F_CONTENT_LENGTH;
        if (!drop && has_conn && !protect)
            drop = named_by_connection(m, conn, n);
        /* RFC 9110 8.6: equal values, as fields or as a list (the framing
         * refused differing ones), go on as one */
        if (!drop && id == HTTP_F_CONTENT_LENGTH) {
            size_t pos = 0;
            drop = cl.p != nullptr;
            if (!drop)
                list_next(m.headers[i].value, &pos, &cl);
        }
        if (!drop) {
            keep[nkeep++] = (uint16_t)i;
            bytes += n.n + (id == HTTP_F_CONTENT_LENGTH ? cl.n : m.headers[i].value.n) + 4;
        }
    }
    /* the kept fields in one piece: one resize, not one per field */
    char *d = grow(out, bytes);
    for (size_t k = 0; k < nkeep; k++) {
        const http_header &h = m.headers[keep[k]];
        d = field_close(copy(field_open(d, h.name), h.id == HTTP_F_CONTENT_LENGTH ? cl : h.value));
    }
}
