/*
 * http.h - HTTP/1.0 and 1.1 message heads: parser, framing, chunked body
 * scanner, and the head writer the proxies rewrite with.
 *
 * Nothing here does I/O or keeps hidden state. The parsers hand out views
 * (pointer + length) into the caller's buffer, so a parsed message is only
 * valid while that buffer is unchanged. Parsing allocates nothing; only the
 * head writer appends to a std::string the caller owns (and can reuse).
 *
 * Strictness (RFC 9112). Rejected: a bare CR, obs-fold (a field line that
 * starts with SP or HTAB), whitespace between a field name and its colon,
 * non-token characters in a method or field name, CTLs in a field value,
 * more than one SP between the parts of a request line, any version but
 * HTTP/1.0 and HTTP/1.1. A bare LF is accepted as a line terminator in a
 * head (RFC 9112 2.2 allows it): heads are always re-serialised with CRLF
 * by the head writer, so no peer of ours ever sees our reading of them.
 * In chunked framing, which is forwarded byte for byte, only CRLF is
 * accepted, so that the next hop cannot read the body differently.
 */
#ifndef WMPROXY_HTTP_H
#define WMPROXY_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/types.h>
#include <string>

#define HTTP_MAX_HEAD (64 * 1024)   /* a longer head is answered with 431 */
#define HTTP_MAX_HEADERS 128        /* more fields: HTTP_TOO_MANY_HEADERS (431) */
#define HTTP_MAX_LENGTH (1ull << 62)/* largest Content-Length / chunk size */
#define HTTP_MAX_TRAILER 8192       /* trailer section of a chunked body */
#define HTTP_MAX_CHUNK_LINE 4096    /* chunk size line, extensions included */
#define HTTP_HOST_MAX 255           /* longest host http_host_key() returns */

/* parse results (besides a head length > 0) */
enum {
    HTTP_INVALID = -1,          /* malformed: 400 (a response: 502) */
    HTTP_PARTIAL = -2,          /* the head is not complete yet: read more */
    HTTP_TOO_MANY_HEADERS = -3, /* well-formed so far, over HTTP_MAX_HEADERS: 431 */
};

/* A view into a buffer; p may be NULL when n == 0. */
struct http_str {
    const char *p;
    size_t n;
};

static inline http_str http_cstr(const char *s) { return http_str{s, strlen(s)}; }
static inline http_str http_sstr(const std::string &s) { return http_str{s.data(), s.size()}; }
/* Exact, and ASCII case-insensitive, comparison with a C string. */
bool http_str_eq(http_str a, const char *s);
bool http_str_ieq(http_str a, const char *s);
/* ASCII case-insensitive comparison of n bytes. */
bool http_mem_ieq(const char *a, const char *b, size_t n);
/* http_str_ieq() with a string literal: the lengths and the first bytes
 * (bit 0x20 aside: a filter, exact for letters) are compared in place, so
 * most field names are told apart without a call. */
#define http_ieq_lit(a, lit)                                                              \
    ((a).n == sizeof(lit) - 1 && (sizeof(lit) == 1 || (((a).p[0] ^ (lit)[0]) & ~0x20) == 0) && \
     http_mem_ieq((a).p, lit, sizeof(lit) - 1))

/* Whether s is a token (a valid field name), and a valid field value
 * (no CTL but HTAB, no DEL), as the parser judges them. */
bool http_is_token(http_str s);
bool http_is_field_value(http_str s);
/* Whether s may be a mapping's Host rewrite (host[:port] or [v6]:port):
 * letters, digits and -._:[] only. The configuration and the server, when
 * a client registers the mapping, judge with these same three. */
bool http_is_host_rule(http_str s);
/* Whether a header rule may name this field: a token, and not one the
 * proxy frames or manages the connection with (Host - the host rule sets
 * it -, Content-Length, Transfer-Encoding, Connection, Keep-Alive,
 * Proxy-Connection, TE, Upgrade): a rule there would make the service
 * read another message than the one forwarded. */
bool http_is_rule_name(http_str name);

/* The fields the framing and the hop-by-hop rules look at, told apart once
 * by the parser (http_header_id()) rather than by name at every use. */
enum http_field_id {
    HTTP_F_OTHER = 0,
    HTTP_F_HOST,
    HTTP_F_CONNECTION,
    HTTP_F_KEEP_ALIVE,
    HTTP_F_PROXY_CONNECTION,
    HTTP_F_TE,
    HTTP_F_TRANSFER_ENCODING,
    HTTP_F_UPGRADE,
    HTTP_F_CONTENT_LENGTH,
    HTTP_F_EXPECT,
};

struct http_header {
    http_str name;      /* a token, as received (any case) */
    http_str value;     /* leading and trailing SP/HTAB removed; may be empty */
    int id;             /* http_header_id(name): a header made by hand sets it */
};

/* The http_field_id of a field name (any case). */
int http_header_id(http_str name);

/* What requests and responses share. */
struct http_head {
    int minor;                  /* HTTP/1.minor: 0 or 1 */
    size_t num_headers;
    http_header headers[HTTP_MAX_HEADERS];
};

struct http_request : http_head {
    http_str method;            /* a token, case-sensitive ("GET") */
    http_str target;            /* origin-, absolute-, authority-form or "*" */
};

struct http_response : http_head {
    int status;                 /* 100..999 */
    http_str reason;            /* may be empty */
};

/*
 * Parse a request head at the start of buf[0..len).
 *
 * last_len is how many bytes of this same buffer an earlier call that
 * returned HTTP_PARTIAL has already seen (0 on the first call): the end of
 * the head is then looked for only in the new bytes, so feeding a head in
 * many small reads costs O(head) in all. Empty lines before the request
 * line are skipped (RFC 9112 2.2) and count in the head length. At most
 * HTTP_MAX_HEAD bytes are looked at.
 *
 * Return values:
 *   >0  length of the head, the final empty line included; *req is filled
 *   HTTP_PARTIAL  no end of head yet (see http_head_over_limit())
 *   HTTP_INVALID  malformed (answer 400)
 *   HTTP_TOO_MANY_HEADERS  more than HTTP_MAX_HEADERS fields (answer 431)
 * *req is meaningful only after a return > 0.
 */
int http_parse_request(const char *buf, size_t len, http_request *req, size_t last_len);

/* The same for a response head: "HTTP/1.x SP 3DIGIT [SP reason]". No empty
 * lines are skipped before the status line. */
int http_parse_response(const char *buf, size_t len, http_response *resp, size_t last_len);

/* After HTTP_PARTIAL with len buffered bytes: true when the head can no
 * longer fit in HTTP_MAX_HEAD (answer 431 and close). */
static inline bool http_head_over_limit(int result, size_t len)
{
    return result == HTTP_PARTIAL && len >= HTTP_MAX_HEAD;
}

/* ---- framing (RFC 9112 section 6) ---- */

enum http_body_kind {
    HTTP_BODY_NONE = 0,     /* no body (also Content-Length: 0) */
    HTTP_BODY_LENGTH,       /* exactly length bytes */
    HTTP_BODY_CHUNKED,      /* chunked: run http_chunked_scan() over it */
    HTTP_BODY_CLOSE,        /* response only: until the server closes */
};

struct http_msg_info {
    http_body_kind body;
    uint64_t length;        /* HTTP_BODY_LENGTH: bytes of content */
    bool keep_alive;        /* the connection may carry another message */
    bool upgrade;           /* request: asks to upgrade; response: 101 */
    bool expect_continue;   /* request: Expect: 100-continue (HTTP/1.1 only) */
    http_str host;          /* request: the Host value; p == NULL if absent */
    const char *error;      /* after -1: why, for the log line */
};

/*
 * Decide how a request's body is framed and what it asks of the connection.
 * Returns 0 with *info filled, or -1 (answer 400) with info->error set, for:
 * Content-Length together with Transfer-Encoding; Transfer-Encoding in an
 * HTTP/1.0 request; a Transfer-Encoding that is not a list of known codings
 * (chunked, gzip, x-gzip, deflate, compress, x-compress; no parameters, no
 * empty elements) ending in chunked, or names chunked twice; a
 * Content-Length that is not all digits or is over HTTP_MAX_LENGTH; several
 * Content-Length values that differ (identical repeats, as fields or as a
 * list, are accepted as one, per RFC 9110 8.6); no Host or several Host
 * fields in HTTP/1.1, several in HTTP/1.0.
 * keep_alive: HTTP/1.1 unless Connection has "close"; HTTP/1.0 only with
 * "keep-alive" and without "close". upgrade: HTTP/1.1, Connection has
 * "upgrade" and an Upgrade field is present.
 */
int http_request_framing(const http_request &req, http_msg_info *info);

/*
 * The same for a response. status is normally resp.status; request_was_head
 * says the request was HEAD. 1xx, 204, 304 and answers to HEAD have no body
 * (their Content-Length and Transfer-Encoding are not looked at); 101 sets
 * upgrade. Otherwise a Transfer-Encoding ending in chunked is CHUNKED, any
 * other Transfer-Encoding (or one in HTTP/1.0) is CLOSE, a Content-Length is
 * LENGTH, and nothing is CLOSE; CLOSE never keeps the connection alive.
 * Returns 0, or -1 (answer 502) for Content-Length with Transfer-Encoding,
 * a bad or conflicting Content-Length, or a Transfer-Encoding that breaks
 * the request rules above (unknown coding, chunked twice or not last).
 */
int http_response_framing(int status, bool request_was_head, const http_response &resp,
                          http_msg_info *info);

/* ---- chunked body scanner ---- */

/*
 * State of one chunked body being passed through unchanged. Value-initialise
 * it (http_chunked c = {}) before the body's first byte.
 */
struct http_chunked {
    uint64_t size;          /* size being read, then data bytes left */
    uint32_t count;         /* bytes of the size line or of the trailers */
    uint8_t state;
    bool done;              /* the body's last byte has been scanned */
};

/*
 * Scan the next len bytes of a chunked body; buf may end anywhere, even in
 * a CRLF or a trailer. Chunk extensions are skipped (checked for CTLs only),
 * trailer fields are checked and bounded by HTTP_MAX_TRAILER.
 * Return values:
 *   n >= 0  the first n bytes of buf are body (framing included). When the
 *           body ends in buf, c->done is set and buf[n-1] is its last byte,
 *           so n < len exactly when bytes of the next message follow. Once
 *           done, further calls return 0.
 *   -1      invalid: bad hex size, size over HTTP_MAX_LENGTH, size line over
 *           HTTP_MAX_CHUNK_LINE, a CTL in an extension, no CRLF after the
 *           data, a bare LF, a malformed trailer field or trailers over
 *           HTTP_MAX_TRAILER. The state is then undefined.
 */
ssize_t http_chunked_scan(http_chunked *c, const char *buf, size_t len);

/* ---- helpers ---- */

/* Index of the first field at or after from named name (ASCII
 * case-insensitive), or -1. */
int http_header_index(const http_head &m, const char *name, size_t from = 0);
/* Value of the first field named name, or NULL. */
const http_str *http_find_header(const http_head &m, const char *name);

/* True when the comma-separated list value (e.g. of Connection) has an
 * element equal to token, ASCII case-insensitive; OWS around elements and
 * empty elements are ignored. */
bool http_token_list_has(http_str value, const char *token);

/*
 * Routing key of a Host value: lower case, port removed, one trailing dot
 * of a name removed, brackets of an IPv6 literal removed ("[::1]:80" ->
 * "::1"). A name may hold letters, digits, '-', '.' and '_'; a literal hex
 * digits, ':' and '.'; a port up to 5 digits <= 65535 (may be empty).
 * Returns the key's length with out NUL-terminated, or -1 for an empty,
 * too long or malformed value.
 */
int http_host_key(http_str value, char out[HTTP_HOST_MAX + 1]);

/*
 * Authority-form "host:port" or "[v6]:port" (the target of CONNECT).
 * *host is a view without brackets; the port is required, 1..65535.
 * Returns 0, or -1 when malformed.
 */
int http_parse_authority(http_str s, http_str *host, uint16_t *port);

/*
 * Absolute-form target "http://host[:port][/path][?query]" (scheme
 * case-insensitive; "https" is accepted too and sets *https). *host has no
 * brackets, *port defaults to 80 (443), *path is the origin-form target to
 * forward: a view from the first '/', or "/" when the path is empty; with
 * a query and no path it is the query ("?q"): http_origin_form() puts a
 * '/' first.
 * *authority (when not NULL) is host[:port] as written, for a Host field.
 * Returns 0, or -1 for another scheme, userinfo ("user@"), a bad host or
 * port, or a fragment.
 */
int http_parse_absolute_uri(http_str target, bool *https, http_str *host, uint16_t *port,
                            http_str *path, http_str *authority = nullptr);

/* The request target to forward for a path of http_parse_absolute_uri():
 * the path itself, or "/?q" for a bare query, kept in *buf. */
static inline http_str http_origin_form(http_str path, std::string *buf)
{
    if (path.n == 0 || path.p[0] != '?')
        return path;
    buf->assign(1, '/').append(path.p, path.n);
    return http_sstr(*buf);
}

/* Standard reason phrase of status for the codes the proxies use, else "". */
const char *http_reason(int status);

/* ---- head writer ----
 * A head is written as: a request or status line, http_copy_fields() of a
 * parsed message, any http_write_field() the caller adds, http_write_end().
 * Each function appends to *out. */

/* "METHOD SP target SP HTTP/1.minor CRLF"; method and target as parsed. */
void http_write_request_line(std::string *out, http_str method, http_str target, int minor);
/* "HTTP/1.minor SP status SP reason CRLF"; an empty reason is replaced by
 * http_reason(status). status must be 100..999. */
void http_write_status_line(std::string *out, int minor, int status, http_str reason);
/* "name: value CRLF". Name and value must not hold CR or LF (values from a
 * parsed message or the configuration never do). */
void http_write_field(std::string *out, http_str name, http_str value);
/* n fields "name: value CRLF" from the pairs nv[0], nv[1], ... nv[2n-1],
 * with one resize of *out (a head gets its added fields in one call). */
void http_write_fields(std::string *out, const http_str *nv, size_t n);
static inline void http_write_field(std::string *out, const char *name, const char *value)
{
    http_write_field(out, http_cstr(name), http_cstr(value));
}
/* The final CRLF. */
static inline void http_write_end(std::string *out) { out->append("\r\n", 2); }

/* flags of http_copy_fields */
enum {
    HTTP_KEEP_TE = 1,       /* keep Transfer-Encoding: the chunked body is
                               forwarded unchanged */
    HTTP_KEEP_UPGRADE = 2,  /* keep Upgrade: the caller writes
                               "Connection: upgrade" itself */
};

/*
 * Copy the fields of m in order, leaving out the hop-by-hop ones (RFC 9110
 * 7.6.1): Connection, every field Connection names, Keep-Alive,
 * Proxy-Connection, TE, and Transfer-Encoding and Upgrade unless flags keep
 * them; and every field whose name is in skip (a NULL-terminated array of
 * names, any case; NULL for none) - the caller's way to replace a field:
 * skip it here, then http_write_field() the new value. Host,
 * Content-Length and a kept Transfer-Encoding are never dropped because
 * Connection names them (that would change the framing the next hop sees).
 * Content-Length goes on once, as its first value: the framing accepts
 * several only when they are equal, and RFC 9110 8.6 has a proxy send one.
 * Trailer is kept: trailers travel inside the chunked bytes we forward.
 * Connection is never written: the caller adds the one it means.
 */
void http_copy_fields(std::string *out, const http_head &m, unsigned flags,
                      const char *const *skip);

#endif
