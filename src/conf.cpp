/*
 * conf.cpp - read and check one role's INI file (SPEC section 3).
 *
 * inih splits lines into key and value; everything else is ours. inih gets
 * its lines from our reader, which is how we know line numbers (inih does
 * not pass them to handlers), see section headers (inih reports none, and
 * cuts long ones to 50 bytes), and stop at the first error (the reader
 * pretends the file ended). Checks that need a whole section (required
 * keys, pairs, relations between keys) run when the next section starts or
 * the file ends, so the error reported is the first one met reading down.
 */
#include "conf.h"
#include "frame.h"
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <arpa/inet.h>
#include <ini.h>

#define WINDOW_MIN      (4ull << 10)
#define WINDOW_MAX      (1ull << 30)
#define TUNNEL_BUF_MAX  (1ull << 40)
#define MAX_STREAMS_MAX 1000000
#define MAX_CLIENTS_MAX 100000
#define MAP_NAME_MAX    64
#define CRED_MAX        255     /* SOCKS5 (RFC 1929) sends each in one length byte */

/* ------------------------------------------------------------------------
 * Value parsers. None of them keeps state or touches *out on failure.
 */

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

/*
 * The decimal digits at the start of s into *out, *end just past them.
 * Returns 0, or -1 when s does not start with a digit or the number does
 * not fit in 64 bits. Not strtoul(): it accepts blanks, '+' and '-' (and
 * wraps negatives), all of which are typos in a config file.
 */
static int parse_digits(const char *s, uint64_t *out, const char **end)
{
    uint64_t n = 0;
    const char *p = s;

    if (!isdigit((unsigned char)*p))
        return -1;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = *p - '0';
        if (n > (UINT64_MAX - d) / 10)
            return -1;
        n = n * 10 + d;
    }
    *out = n;
    *end = p;
    return 0;
}

/* A string of digits only, in [min, max]. */
static int parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    const char *end;
    uint64_t n;

    if (parse_digits(s, &n, &end) < 0 || *end != '\0' || n < min || n > max)
        return -1;
    *out = n;
    return 0;
}

int conf_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (!strcasecmp(s, yes[i])) {
            *out = true;
            return 0;
        }
        if (!strcasecmp(s, no[i])) {
            *out = false;
            return 0;
        }
    }
    return -1;
}

/* 0 is accepted here; the keys decide whether it means anything. */
int conf_parse_duration_ms(const char *s, uint32_t *out)
{
    uint64_t n, mult;
    const char *unit;

    if (parse_digits(s, &n, &unit) < 0)
        return -1;
    if (*unit == '\0' || !strcasecmp(unit, "s"))
        mult = 1000;
    else if (!strcasecmp(unit, "ms"))
        mult = 1;
    else if (!strcasecmp(unit, "m"))
        mult = 60 * 1000;
    else if (!strcasecmp(unit, "h"))
        mult = 60 * 60 * 1000;
    else
        return -1;
    if (n > UINT32_MAX / mult)
        return -1;
    *out = (uint32_t)(n * mult);
    return 0;
}

int conf_parse_size(const char *s, uint64_t *out)
{
    uint64_t n;
    const char *unit;
    unsigned shift;

    if (parse_digits(s, &n, &unit) < 0)
        return -1;
    switch (tolower((unsigned char)*unit)) {
    case '\0': shift = 0; break;
    case 'k': shift = 10; break;
    case 'm': shift = 20; break;
    case 'g': shift = 30; break;
    default: return -1;
    }
    if (shift && unit[1] != '\0')
        return -1;
    if (n > (UINT64_MAX >> shift))
        return -1;
    *out = n << shift;
    return 0;
}

/* A host name or IPv4 literal: letters, digits, '-', '_' and '.'. The
 * resolver judges the rest; this only keeps ':' and blanks out. */
static bool valid_host(const char *s, size_t len)
{
    if (len == 0 || len > 253)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return false;
    }
    return true;
}

/* An IPv6 literal as written inside brackets, with an optional %zone. */
static bool valid_v6(const char *s, size_t len)
{
    char a[INET6_ADDRSTRLEN + 1];
    unsigned char bin[16];
    size_t i;

    for (i = 0; i < len && s[i] != '%'; i++)
        ;
    if (i == 0 || i >= sizeof a)
        return false;
    memcpy(a, s, i);
    a[i] = '\0';
    if (inet_pton(AF_INET6, a, bin) != 1)
        return false;
    if (i < len) {
        /* a zone: an interface name or number */
        if (i + 1 == len || len - i > 64)
            return false;
        for (i++; i < len; i++) {
            unsigned char ch = s[i];
            if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
                return false;
        }
    }
    return true;
}

int conf_parse_addr(const char *s, addr_conf *out)
{
    const char *colon;
    std::string host;
    uint64_t port;

    if (*s == '[') {
        const char *rb = strchr(s, ']');
        if (!rb || rb[1] != ':' || !valid_v6(s + 1, rb - s - 1))
            return -1;
        host.assign(s + 1, rb - s - 1);
        colon = rb + 1;
    } else {
        /* the last ':' would split a bare IPv6 address anywhere; valid_host
         * rejects the ':' left in the host, which is what we want */
        colon = strrchr(s, ':');
        if (!colon)
            return -1;
        host.assign(s, colon - s);
        if (host == "*")
            host.clear();
        else if (!host.empty() && !valid_host(host.data(), host.size()))
            return -1;
    }
    if (parse_uint(colon + 1, 1, 65535, &port) < 0)
        return -1;
    out->set = true;
    out->host = host;
    out->port = (uint16_t)port;
    return 0;
}

std::string addr_conf::text() const
{
    char buf[300];

    if (host.empty())
        snprintf(buf, sizeof buf, "*:%u", port);
    else if (host.find(':') != std::string::npos)
        snprintf(buf, sizeof buf, "[%s]:%u", host.c_str(), port);
    else
        snprintf(buf, sizeof buf, "%s:%u", host.c_str(), port);
    return buf;
}

int conf_parse_flag(const char *s, unsigned *out)
{
    static const char *const seps = " \t,|";
    unsigned flag = 0;
    int words = 0;
    uint64_t n;

    if (isdigit((unsigned char)*s)) {
        if (parse_uint(s, 0, FLAG_HTTP | FLAG_HTTPS | FLAG_SOCKS5, &n) < 0)
            return -1;
        *out = (unsigned)n;
        return 0;
    }
    for (const char *p = s;; words++) {
        p += strspn(p, seps);
        if (*p == '\0')
            break;
        size_t len = strcspn(p, seps);
        if (len == 4 && !strncasecmp(p, "http", 4))
            flag |= FLAG_HTTP;
        else if (len == 5 && !strncasecmp(p, "https", 5))
            flag |= FLAG_HTTPS;
        else if (len == 6 && !strncasecmp(p, "socks5", 6))
            flag |= FLAG_SOCKS5;
        else
            return -1;
        p += len;
    }
    if (words == 0)
        return -1;
    *out = flag;
    return 0;
}

static const char *skip_blank(const char *p)
{
    while (*p == ' ' || *p == '\t')
        p++;
    return p;
}

/* A port in 1..65535 at *pp, which is moved past it and any blanks. */
static int take_port(const char **pp, uint16_t *out)
{
    uint64_t n;
    const char *end;

    if (parse_digits(skip_blank(*pp), &n, &end) < 0 || n < 1 || n > 65535)
        return -1;
    *out = (uint16_t)n;
    *pp = skip_blank(end);
    return 0;
}

int conf_parse_ports(const char *s, std::vector<std::pair<uint16_t, uint16_t>> *out)
{
    std::vector<std::pair<uint16_t, uint16_t>> ranges;
    const char *p = s;

    for (;;) {
        uint16_t lo, hi;
        if (take_port(&p, &lo) < 0)
            return -1;
        hi = lo;
        if (*p == '-') {
            p++;
            if (take_port(&p, &hi) < 0 || hi < lo)
                return -1;
        }
        ranges.push_back(std::make_pair(lo, hi));
        if (*p == '\0')
            break;
        if (*p++ != ',')
            return -1;
    }
    *out = ranges;
    return 0;
}

/* 64 hex digits, or 32 pairs joined by ':' as "openssl x509 -fingerprint"
 * prints them; nothing in between. */
int conf_parse_fingerprint(const char *s, std::string *out)
{
    size_t len = strlen(s);
    bool colons = len == 32 * 3 - 1;
    std::string raw;

    if (len != 64 && !colons)
        return -1;
    for (size_t i = 0; i < 32; i++) {
        const char *p = s + (colons ? i * 3 : i * 2);
        if (colons && i > 0 && p[-1] != ':')
            return -1;
        int hi = hexval((unsigned char)p[0]), lo = hexval((unsigned char)p[1]);
        if (hi < 0 || lo < 0)
            return -1;
        raw.push_back((char)(hi << 4 | lo));
    }
    *out = raw;
    return 0;
}

bool conf::port_allowed(uint16_t port) const
{
    for (size_t i = 0; i < allow_ports.size(); i++)
        if (port >= allow_ports[i].first && port <= allow_ports[i].second)
            return true;
    return false;
}

/* ------------------------------------------------------------------------
 * The parse.
 */

enum sect_kind { SEC_NONE, SEC_SERVER, SEC_CLIENT, SEC_MAPPING };
enum { SET_OK = 0, SET_ERR = -1, SET_UNKNOWN = 1 };

struct key_seen {
    std::string name;
    int line;
};

struct parse_state {
    const char *path;
    FILE *fp;
    conf *c;
    int line = 0;                   /* of the line inih is working on */
    std::string err;                /* the first error; the parse stops at it */

    sect_kind sect = SEC_NONE;
    int sect_line = 0;
    std::string sect_text;          /* "[server]", "[mapping web]" */
    std::vector<key_seen> seen;     /* keys of the current section, in order */
    int role_line = 0;
    int first_mapping_line = 0;
    std::vector<std::string> map_cert, map_key;    /* paired when [server] ends */
};

static const char *const mode_names[] = { "", "http", "https", "tcp", "udp", "proxy" };

/*
 * Record the first error as "PATH:LINE: message", or "PATH: message" for
 * line 0. Returns SET_ERR so that callers can return fail(...).
 */
static int fail(parse_state *ps, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(parse_state *ps, int line, const char *fmt, ...)
{
    char msg[640], where[24] = "";
    va_list ap;

    if (!ps->err.empty())
        return SET_ERR;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* values are quoted as found; a stray '\r' must not garble a terminal */
    for (char *p = msg; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    if (line > 0)
        snprintf(where, sizeof where, ":%d", line);
    ps->err = ps->path;
    ps->err += where;
    ps->err += ": ";
    ps->err += msg;
    return SET_ERR;
}

static int bad_value(parse_state *ps, const char *kind, const char *key, const char *v,
                     const char *why)
{
    return fail(ps, ps->line, "bad %s '%s' for %s%s%s", kind, v, key,
                why ? ": " : "", why ? why : "");
}

/* Line of the last key of that name in the current section, 0 if none. */
static int key_line(const parse_state *ps, const char *name)
{
    int line = 0;
    for (size_t i = 0; i < ps->seen.size(); i++)
        if (ps->seen[i].name == name)
            line = ps->seen[i].line;
    return line;
}

/* Line of the n-th (from 0) key of that name in the current section. */
static int nth_key_line(const parse_state *ps, const char *name, size_t n)
{
    for (size_t i = 0; i < ps->seen.size(); i++)
        if (ps->seen[i].name == name && n-- == 0)
            return ps->seen[i].line;
    return ps->sect_line;
}

/* 4194304 -> "4m": sizes in messages as an operator would write them. */
static std::string size_text(uint64_t n)
{
    char buf[32];

    if (n != 0 && n % (1ull << 30) == 0)
        snprintf(buf, sizeof buf, "%llug", (unsigned long long)(n >> 30));
    else if (n != 0 && n % (1ull << 20) == 0)
        snprintf(buf, sizeof buf, "%llum", (unsigned long long)(n >> 20));
    else if (n != 0 && n % (1ull << 10) == 0)
        snprintf(buf, sizeof buf, "%lluk", (unsigned long long)(n >> 10));
    else
        snprintf(buf, sizeof buf, "%llu", (unsigned long long)n);
    return buf;
}

static std::string duration_text(uint32_t ms)
{
    char buf[32];

    if (ms != 0 && ms % 3600000 == 0)
        snprintf(buf, sizeof buf, "%uh", ms / 3600000);
    else if (ms != 0 && ms % 60000 == 0)
        snprintf(buf, sizeof buf, "%um", ms / 60000);
    else if (ms % 1000 == 0)
        snprintf(buf, sizeof buf, "%us", ms / 1000);
    else
        snprintf(buf, sizeof buf, "%ums", ms);
    return buf;
}

/* ---- typed setters: SET_OK, or SET_ERR with the error recorded ---- */

static int set_bool(parse_state *ps, const char *k, const char *v, bool *out)
{
    if (conf_parse_bool(v, out) < 0)
        return bad_value(ps, "boolean", k, v, "use true/false, yes/no, on/off or 1/0");
    return SET_OK;
}

/* Every duration key is a timeout or an interval, where 0 would mean a
 * busy loop or an instant failure rather than "off". */
static int set_duration(parse_state *ps, const char *k, const char *v, uint32_t *out)
{
    uint32_t ms;

    if (conf_parse_duration_ms(v, &ms) < 0)
        return bad_value(ps, "duration", k, v, "use e.g. 500ms, 30s, 5m or 1h");
    if (ms == 0)
        return bad_value(ps, "duration", k, v, "must be greater than 0");
    *out = ms;
    return SET_OK;
}

static int set_size(parse_state *ps, const char *k, const char *v, uint64_t min, uint64_t max,
                    uint64_t *out)
{
    char why[64];
    uint64_t n;

    if (conf_parse_size(v, &n) < 0)
        return bad_value(ps, "size", k, v, "use e.g. 4096, 64k, 16m or 1g");
    if (n < min || n > max) {
        snprintf(why, sizeof why, "must be %s %s", n < min ? "at least" : "at most",
                 size_text(n < min ? min : max).c_str());
        return bad_value(ps, "size", k, v, why);
    }
    *out = n;
    return SET_OK;
}

static int set_size32(parse_state *ps, const char *k, const char *v, uint64_t min,
                      uint64_t max, uint32_t *out)
{
    uint64_t n;

    if (set_size(ps, k, v, min, max, &n) < 0)
        return SET_ERR;
    *out = (uint32_t)n;
    return SET_OK;
}

static int set_number(parse_state *ps, const char *k, const char *v, uint32_t min,
                      uint32_t max, uint32_t *out)
{
    char why[64];
    uint64_t n;

    if (parse_uint(v, min, max, &n) < 0) {
        snprintf(why, sizeof why, "must be a whole number from %u to %u", min, max);
        return bad_value(ps, "number", k, v, why);
    }
    *out = (uint32_t)n;
    return SET_OK;
}

/* need_host: a destination we connect to, so "any address" makes no sense. */
static int set_addr(parse_state *ps, const char *k, const char *v, bool need_host,
                    addr_conf *out)
{
    addr_conf a;

    if (conf_parse_addr(v, &a) < 0)
        return bad_value(ps, "address", k, v,
                         "use host:port, [v6]:port, *:port or :port, port 1-65535");
    if (need_host && a.host.empty())
        return bad_value(ps, "address", k, v, "a host is required");
    *out = a;
    return SET_OK;
}

/* Relative paths are taken from the configuration file's directory, so the
 * daemon finds them whatever its working directory (it chdirs to / with -d). */
static void set_path(const parse_state *ps, const char *v, std::string *out)
{
    if (v[0] == '/')
        *out = v;
    else if (ps->c->dir == "/")
        *out = "/" + std::string(v);
    else
        *out = ps->c->dir + "/" + v;
}

static int set_flag(parse_state *ps, const char *k, const char *v, unsigned *out)
{
    if (conf_parse_flag(v, out) < 0)
        return bad_value(ps, "flag", k, v, "use words http, https, socks5 or a number 0-7");
    return SET_OK;
}

/* Proxy credentials. A ':' in a user name cannot survive Basic auth,
 * which splits "user:password" at the first one. */
static int set_cred(parse_state *ps, const char *k, const char *v, bool is_user,
                    std::string *out)
{
    if (strlen(v) > CRED_MAX)
        return bad_value(ps, "value", k, v, "at most 255 bytes");
    if (is_user && strchr(v, ':'))
        return bad_value(ps, "value", k, v, "a user name cannot contain ':'");
    *out = v;
    return SET_OK;
}

static std::string trim(const char *s, const char *end)
{
    while (s < end && isspace((unsigned char)*s))
        s++;
    while (end > s && isspace((unsigned char)end[-1]))
        end--;
    return std::string(s, end - s);
}

/* One name of a domain list, lowered in place: labels of letters, digits,
 * '-' and '_', with "*." allowed in front only. */
static bool valid_domain(std::string *d)
{
    size_t i = 0, label = 0;

    for (size_t j = 0; j < d->size(); j++)
        (*d)[j] = (char)tolower((unsigned char)(*d)[j]);
    if (d->compare(0, 2, "*.") == 0)
        i = 2;
    if (d->size() > 253)
        return false;
    for (; i < d->size(); i++) {
        unsigned char ch = (*d)[i];
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
            continue;
        }
        if (!isalnum(ch) && ch != '-' && ch != '_')
            return false;
        if (++label > 63)
            return false;
    }
    return label > 0;
}

static int set_domains(parse_state *ps, const char *k, const char *v,
                       std::vector<std::string> *out)
{
    std::vector<std::string> names;
    const char *p = v;

    for (;;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        std::string d = trim(p, end);
        if (!valid_domain(&d))
            return fail(ps, ps->line, "bad domain name '%s' for %s", d.c_str(), k);
        bool dup = false;
        for (size_t i = 0; i < names.size(); i++)
            dup = dup || names[i] == d;
        if (!dup)
            names.push_back(d);
        if (!comma)
            break;
        p = comma + 1;
    }
    *out = names;
    return SET_OK;
}

/* "Name: value", value possibly empty (the rule then removes the header). */
static int set_header_rule(parse_state *ps, const char *k, const char *v,
                           std::vector<header_rule> *out)
{
    const char *colon = strchr(v, ':');
    const char *why = "use 'Name: value'";

    if (colon) {
        std::string name = trim(v, colon), value = trim(colon + 1, colon + strlen(colon));
        bool ok = http_is_token(http_sstr(name));
        if (!ok)
            why = "a header name is letters, digits and !#$%&'*+-.^_`|~";
        else if (!(ok = http_is_rule_name(http_sstr(name))))
            why = "Host (set it with host), Content-Length, Transfer-Encoding, Connection, Keep-Alive, "
                  "Proxy-Connection, TE and Upgrade are the proxy's own";
        /* a control byte in a value could split the header in two */
        if (ok && !http_is_field_value(http_sstr(value))) {
            why = "control characters are not allowed";
            ok = false;
        }
        if (ok) {
            out->push_back(header_rule(name, value));
            return SET_OK;
        }
    }
    return bad_value(ps, "header", k, v, why);
}

/* ---- keys, per section: SET_OK, SET_ERR or SET_UNKNOWN ---- */

#define KEY(name) (strcmp(k, name) == 0)

static int set_common(parse_state *ps, const char *k, const char *v)
{
    conf *c = ps->c;

    if (KEY("pid_file")) {
        set_path(ps, v, &c->pid_file);
    } else if (KEY("log_file")) {
        if (!strcmp(v, "syslog"))
            c->log_file = v;
        else
            set_path(ps, v, &c->log_file);
    } else if (KEY("access_log")) {
        set_path(ps, v, &c->access_log);
    } else if (KEY("log_level")) {
        static const char *const names[] = { "error", "warn", "info", "debug" };
        for (int i = 0; i < 4; i++) {
            if (!strcasecmp(v, names[i])) {
                c->log_level = (log_level_t)i;
                return SET_OK;
            }
        }
        return bad_value(ps, "log level", k, v, "use error, warn, info or debug");
    } else if (KEY("heartbeat")) {
        return set_duration(ps, k, v, &c->heartbeat_ms);
    } else if (KEY("window")) {
        return set_size32(ps, k, v, WINDOW_MIN, WINDOW_MAX, &c->window);
    } else if (KEY("max_window")) {
        return set_size32(ps, k, v, WINDOW_MIN, WINDOW_MAX, &c->max_window);
    } else if (KEY("tunnel_buffer")) {
        return set_size(ps, k, v, WINDOW_MIN, TUNNEL_BUF_MAX, &c->tunnel_buffer);
    } else if (KEY("max_streams")) {
        return set_number(ps, k, v, 1, MAX_STREAMS_MAX, &c->max_streams);
    } else if (KEY("connect_timeout")) {
        return set_duration(ps, k, v, &c->connect_timeout_ms);
    } else if (KEY("shutdown_timeout")) {
        return set_duration(ps, k, v, &c->shutdown_timeout_ms);
    } else if (KEY("handshake_timeout")) {
        return set_duration(ps, k, v, &c->handshake_timeout_ms);
    } else {
        return SET_UNKNOWN;
    }
    return SET_OK;
}

static int set_server(parse_state *ps, const char *k, const char *v)
{
    conf *c = ps->c;

    if (KEY("bind_addr"))
        return set_addr(ps, k, v, false, &c->bind_addr);
    if (KEY("tc"))
        return set_bool(ps, k, v, &c->tc);
    if (KEY("flag"))
        return set_flag(ps, k, v, &c->flag);
    if (KEY("username"))
        return set_cred(ps, k, v, true, &c->username);
    if (KEY("password"))
        return set_cred(ps, k, v, false, &c->password);
    if (KEY("map_http_bind"))
        return set_addr(ps, k, v, false, &c->map_http_bind);
    if (KEY("map_https_bind"))
        return set_addr(ps, k, v, false, &c->map_https_bind);
    if (KEY("map_tcp_bind"))
        return set_addr(ps, k, v, false, &c->map_tcp_bind);
    if (KEY("map_proxy_bind"))
        return set_addr(ps, k, v, false, &c->map_proxy_bind);
    if (KEY("map_udp_bind"))
        return set_addr(ps, k, v, false, &c->map_udp_bind);
    if (KEY("status_addr"))
        return set_addr(ps, k, v, false, &c->status_addr);
    if (KEY("max_clients"))
        return set_number(ps, k, v, 1, MAX_CLIENTS_MAX, &c->max_clients);
    if (KEY("keepalive_timeout"))
        return set_duration(ps, k, v, &c->keepalive_timeout_ms);
    if (KEY("allow_ports")) {
        if (conf_parse_ports(v, &c->allow_ports) < 0)
            return bad_value(ps, "port list", k, v,
                             "use ports 1-65535 and ranges lo-hi, e.g. 10000-10100,2222");
        return SET_OK;
    }
    if (KEY("cert")) {
        set_path(ps, v, &c->cert);
    } else if (KEY("key")) {
        set_path(ps, v, &c->key);
    } else if (KEY("client_ca")) {
        set_path(ps, v, &c->client_ca);
    } else if (KEY("token")) {
        c->token = v;
    } else if (KEY("map_cert")) {
        ps->map_cert.push_back(std::string());
        set_path(ps, v, &ps->map_cert.back());
    } else if (KEY("map_key")) {
        ps->map_key.push_back(std::string());
        set_path(ps, v, &ps->map_key.back());
    } else {
        return SET_UNKNOWN;
    }
    return SET_OK;
}

static int set_client(parse_state *ps, const char *k, const char *v)
{
    conf *c = ps->c;

    if (KEY("server"))
        return set_addr(ps, k, v, true, &c->server);
    if (KEY("bind_addr"))
        return set_addr(ps, k, v, false, &c->bind_addr);
    if (KEY("ts"))
        return set_bool(ps, k, v, &c->ts);
    if (KEY("verify"))
        return set_bool(ps, k, v, &c->verify);
    if (KEY("reconnect_min"))
        return set_duration(ps, k, v, &c->reconnect_min_ms);
    if (KEY("reconnect_max"))
        return set_duration(ps, k, v, &c->reconnect_max_ms);
    if (KEY("fingerprint")) {
        if (conf_parse_fingerprint(v, &c->fingerprint) < 0)
            return bad_value(ps, "fingerprint", k, v,
                             "use the SHA-256 as 64 hex digits, optionally AB:CD:...");
        return SET_OK;
    }
    if (KEY("server_name")) {
        if (!valid_host(v, strlen(v)))
            return bad_value(ps, "host name", k, v, NULL);
        c->server_name = v;
    } else if (KEY("ca")) {
        set_path(ps, v, &c->ca);
    } else if (KEY("cert")) {
        set_path(ps, v, &c->cert);
    } else if (KEY("key")) {
        set_path(ps, v, &c->key);
    } else if (KEY("token")) {
        c->token = v;
    } else {
        return SET_UNKNOWN;
    }
    return SET_OK;
}

static int set_mapping(parse_state *ps, const char *k, const char *v)
{
    mapping_conf *m = &ps->c->mappings.back();

    if (KEY("mode")) {
        for (int i = MODE_HTTP; i <= MODE_PROXY; i++) {
            if (!strcasecmp(v, mode_names[i])) {
                m->mode = (map_mode)i;
                return SET_OK;
            }
        }
        return bad_value(ps, "mode", k, v, "use http, https, tcp, udp or proxy");
    }
    if (KEY("local_addr"))
        return set_addr(ps, k, v, true, &m->local_addr);
    if (KEY("domain"))
        return set_domains(ps, k, v, &m->domains);
    if (KEY("remote_port")) {
        uint32_t port;
        if (set_number(ps, k, v, 1, 65535, &port) < 0)
            return SET_ERR;
        m->remote_port = (uint16_t)port;
        return SET_OK;
    }
    if (KEY("udp_timeout"))
        return set_duration(ps, k, v, &m->udp_timeout_ms);
    if (KEY("host")) {
        /* goes out verbatim as the Host header */
        if (!http_is_host_rule(http_cstr(v)))
            return bad_value(ps, "host", k, v, NULL);
        m->host = v;
        return SET_OK;
    }
    if (KEY("request_header"))
        return set_header_rule(ps, k, v, &m->request_headers);
    if (KEY("response_header"))
        return set_header_rule(ps, k, v, &m->response_headers);
    if (KEY("proxy_protocol")) {
        if (!strcasecmp(v, "v1"))
            m->proxy_protocol = 1;
        else if (!strcasecmp(v, "v2"))
            m->proxy_protocol = 2;
        else
            return bad_value(ps, "PROXY protocol version", k, v, "use v1 or v2");
        return SET_OK;
    }
    if (KEY("flag"))
        return set_flag(ps, k, v, &m->flag);
    if (KEY("username"))
        return set_cred(ps, k, v, true, &m->username);
    if (KEY("password"))
        return set_cred(ps, k, v, false, &m->password);
    return SET_UNKNOWN;
}

#undef KEY

static bool repeatable(sect_kind sect, const char *k)
{
    if (sect == SEC_SERVER)
        return !strcmp(k, "map_cert") || !strcmp(k, "map_key");
    if (sect == SEC_MAPPING)
        return !strcmp(k, "request_header") || !strcmp(k, "response_header");
    return false;
}

#define M(mode) (1u << (mode))

/* The mapping keys that only some modes use. */
static const struct {
    const char *key;
    unsigned modes;
    const char *which;
} mapping_fit[] = {
    { "local_addr", M(MODE_HTTP) | M(MODE_HTTPS) | M(MODE_TCP) | M(MODE_UDP),
      "all modes but proxy" },
    { "domain", M(MODE_HTTP) | M(MODE_HTTPS), "http and https only" },
    { "host", M(MODE_HTTP) | M(MODE_HTTPS), "http and https only" },
    { "request_header", M(MODE_HTTP) | M(MODE_HTTPS), "http and https only" },
    { "response_header", M(MODE_HTTP) | M(MODE_HTTPS), "http and https only" },
    { "remote_port", M(MODE_TCP) | M(MODE_UDP), "tcp and udp only" },
    { "proxy_protocol", M(MODE_TCP), "tcp only" },
    { "udp_timeout", M(MODE_UDP), "udp only" },
    { "flag", M(MODE_PROXY), "proxy only" },
    { "username", M(MODE_PROXY), "proxy only" },
    { "password", M(MODE_PROXY), "proxy only" },
};

/*
 * Once the mapping's mode is known, every key given so far must suit it.
 * Called after each key, so a misfit is reported at its own line whether
 * it came before or after "mode".
 */
static int check_fit(parse_state *ps)
{
    const mapping_conf *m = &ps->c->mappings.back();

    if (!key_line(ps, "mode"))
        return 0;
    for (size_t i = 0; i < ps->seen.size(); i++) {
        for (size_t j = 0; j < sizeof mapping_fit / sizeof mapping_fit[0]; j++) {
            if (ps->seen[i].name != mapping_fit[j].key || (mapping_fit[j].modes & M(m->mode)))
                continue;
            return fail(ps, ps->seen[i].line, "%s does not apply to a %s mapping (%s)",
                        mapping_fit[j].key, mode_names[m->mode], mapping_fit[j].which);
        }
    }
    return 0;
}

#undef M

/* inih calls this for every "key = value" line. Returns 1 to go on, 0 on
 * error (the reader then ends the parse). */
static int on_key(void *user, const char *section, const char *k, const char *value)
{
    parse_state *ps = (parse_state *)user;
    const char *v = value ? value : "";     /* NULL if inih allows bare keys */
    int rc;

    (void)section;      /* ours is in ps: inih truncates long section names */
    if (!ps->err.empty())
        return 0;
    if (!k)             /* inih built to announce sections: ours does that */
        return 1;
    if (ps->sect == SEC_NONE) {
        fail(ps, ps->line, "key '%s' outside any section", k);
        return 0;
    }
    for (size_t i = 0; i < ps->seen.size(); i++) {
        if (ps->seen[i].name == k && !repeatable(ps->sect, k)) {
            fail(ps, ps->line, "duplicate key '%s' in %s (first at line %d)", k,
                 ps->sect_text.c_str(), ps->seen[i].line);
            return 0;
        }
    }

    switch (ps->sect) {
    case SEC_SERVER:
        rc = set_common(ps, k, v);
        if (rc == SET_UNKNOWN)
            rc = set_server(ps, k, v);
        break;
    case SEC_CLIENT:
        rc = set_common(ps, k, v);
        if (rc == SET_UNKNOWN)
            rc = set_client(ps, k, v);
        break;
    default:
        rc = set_mapping(ps, k, v);
        break;
    }
    if (rc == SET_UNKNOWN) {
        fail(ps, ps->line, "unknown key '%s' in %s", k, ps->sect_text.c_str());
        return 0;
    }
    /* An empty value is refused after the name check, so a typo is still
     * called a typo. Refused at all because "token =" reads as "no token"
     * to one operator and as a mistake to the next. */
    if (rc == SET_OK && *v == '\0')
        rc = fail(ps, ps->line, "empty value for %s", k);
    if (rc != SET_OK)
        return 0;
    ps->seen.push_back(key_seen{ k, ps->line });
    if (ps->sect == SEC_MAPPING && check_fit(ps) < 0)
        return 0;
    return 1;
}

/* ---- checks when a section ends ---- */

/* Keys that go together: name the line of the one given alone. */
static int check_pair(parse_state *ps, const char *a, const char *b)
{
    int la = key_line(ps, a), lb = key_line(ps, b);

    if (la && !lb)
        return fail(ps, la, "%s set without %s", a, b);
    if (lb && !la)
        return fail(ps, lb, "%s set without %s", b, a);
    return 0;
}

static int missing(parse_state *ps, const char *key, const char *why)
{
    return fail(ps, ps->sect_line, "missing required key '%s' in %s%s", key,
                ps->sect_text.c_str(), why ? why : "");
}

/* Keys of both roles that constrain each other. The role section's key
 * lines are kept for what is checked later (-t loading TLS files). */
static int end_common(parse_state *ps)
{
    conf *c = ps->c;
    int line;

    for (const key_seen &k : ps->seen)
        c->key_lines.push_back(std::make_pair(k.name, k.line));

    if (c->max_window < c->window) {
        line = key_line(ps, "max_window");
        return fail(ps, line ? line : key_line(ps, "window"),
                    "max_window %s is smaller than window %s",
                    size_text(c->max_window).c_str(), size_text(c->window).c_str());
    }
    if (c->tunnel_buffer < c->max_window) {
        line = key_line(ps, "tunnel_buffer");
        return fail(ps, line ? line : key_line(ps, "max_window"),
                    "tunnel_buffer %s is smaller than max_window %s",
                    size_text(c->tunnel_buffer).c_str(), size_text(c->max_window).c_str());
    }
    return 0;
}

/* Keys that only configure TLS, given where TLS is off: refused rather
 * than ignored, since a pin or a CA that checks nothing would leave the
 * operator believing the tunnel is checked. */
static int tls_only(parse_state *ps, bool on, const char *onkey, const char *const *keys)
{
    for (; !on && *keys; keys++)
        if (int line = key_line(ps, *keys))
            return fail(ps, line, "%s needs %s = true (it configures TLS, which is off)", *keys, onkey);
    return 0;
}

static int end_server(parse_state *ps)
{
    conf *c = ps->c;
    size_t nc = ps->map_cert.size(), nk = ps->map_key.size();

    if (!c->bind_addr.set)
        return missing(ps, "bind_addr", NULL);
    static const char *const tls_keys[] = {"cert", "key", "client_ca", nullptr};
    if (tls_only(ps, c->tc, "tc", tls_keys) < 0)
        return -1;
    if (check_pair(ps, "cert", "key") < 0 || check_pair(ps, "username", "password") < 0)
        return -1;
    if (nc != nk) {
        const char *more = nc > nk ? "map_cert" : "map_key";
        return fail(ps, nth_key_line(ps, more, nc < nk ? nc : nk),
                    "%s without a matching %s (map_cert and map_key go in pairs)", more,
                    nc > nk ? "map_key" : "map_cert");
    }
    for (size_t i = 0; i < nc; i++)
        c->map_certs.push_back(std::make_pair(ps->map_cert[i], ps->map_key[i]));
    return end_common(ps);
}

static int end_client(parse_state *ps)
{
    conf *c = ps->c;

    if (!c->server.set)
        return missing(ps, "server", NULL);
    static const char *const tls_keys[] = {"server_name", "ca", "fingerprint", "verify", "cert", "key", nullptr};
    if (tls_only(ps, c->ts, "ts", tls_keys) < 0)
        return -1;
    if (check_pair(ps, "cert", "key") < 0)
        return -1;
    if (c->reconnect_min_ms > c->reconnect_max_ms) {
        int line = key_line(ps, "reconnect_max");
        return fail(ps, line ? line : key_line(ps, "reconnect_min"),
                    "reconnect_max %s is smaller than reconnect_min %s",
                    duration_text(c->reconnect_max_ms).c_str(),
                    duration_text(c->reconnect_min_ms).c_str());
    }
    if (c->server_name.empty())
        c->server_name = c->server.host;
    return end_common(ps);
}

void conf_register_msg(const mapping_conf &mc, register_msg *m)
{
    m->mode = (uint8_t)mc.mode;
    m->remote_port = mc.remote_port;
    m->proxy_protocol = (uint8_t)mc.proxy_protocol;
    m->udp_timeout_ms = mc.udp_timeout_ms;
    m->name = mc.name;
    for (size_t d = 0; d < mc.domains.size(); d++)
        m->domains += (d ? "," : "") + mc.domains[d];
    /* http rewriting is done by the server: it gets the rules */
    if (!mc.host.empty())
        m->rules += "H " + mc.host + "\n";
    for (auto &r : mc.request_headers)
        m->rules += "Q " + r.first + ": " + r.second + "\n";
    for (auto &r : mc.response_headers)
        m->rules += "S " + r.first + ": " + r.second + "\n";
    if (mc.mode == MODE_PROXY && mc.username.empty())
        m->rules += "P open\n";
}

/*
 * Required keys, then clashes with the mappings before it: the server
 * would refuse the second of two mappings wanting the same domain or port
 * from one client, and the operator is better told now than in a log.
 */
static int end_mapping(parse_state *ps)
{
    std::vector<mapping_conf> &all = ps->c->mappings;
    const mapping_conf &m = all.back();

    if (!key_line(ps, "mode"))
        return missing(ps, "mode", NULL);
    if (m.mode != MODE_PROXY && !m.local_addr.set)
        return missing(ps, "local_addr", NULL);
    if ((m.mode == MODE_HTTP || m.mode == MODE_HTTPS) && m.domains.empty())
        return missing(ps, "domain", m.mode == MODE_HTTP ? " (http mappings are routed by it)"
                                                         : " (https mappings are routed by it)");
    if (check_pair(ps, "username", "password") < 0)
        return -1;
    register_msg reg;
    std::string enc;
    conf_register_msg(m, &reg);
    if (register_encode(reg, &enc) < 0)
        return fail(ps, ps->sect_line, "[mapping %s]: its domains and header rules take %zu bytes, over "
                    "the %d a registration may carry", m.name.c_str(), enc.size(), REGISTER_MAX);

    for (size_t i = 0; i + 1 < all.size(); i++) {
        const mapping_conf &o = all[i];
        if (o.mode != m.mode)
            continue;
        if (m.mode == MODE_HTTP || m.mode == MODE_HTTPS) {
            for (size_t j = 0; j < m.domains.size(); j++)
                for (size_t n = 0; n < o.domains.size(); n++)
                    if (m.domains[j] == o.domains[n])
                        return fail(ps, key_line(ps, "domain"),
                                    "domain '%s' is already served by [mapping %s] (line %d)",
                                    m.domains[j].c_str(), o.name.c_str(), o.line);
        } else if (m.mode == MODE_PROXY) {
            return fail(ps, ps->sect_line,
                        "a second proxy mapping: [mapping %s] (line %d) already takes "
                        "map_proxy_bind", o.name.c_str(), o.line);
        } else if (m.remote_port == o.remote_port && m.remote_port) {
            return fail(ps, key_line(ps, "remote_port"),
                        "remote_port %u is already used by [mapping %s] (line %d)",
                        m.remote_port, o.name.c_str(), o.line);
        } else if (m.remote_port == o.remote_port) {
            return fail(ps, ps->sect_line,
                        "a second %s mapping without remote_port: [mapping %s] (line %d) "
                        "already takes map_%s_bind", mode_names[m.mode], o.name.c_str(),
                        o.line, mode_names[m.mode]);
        }
    }
    return 0;
}

static int end_section(parse_state *ps)
{
    switch (ps->sect) {
    case SEC_SERVER: return end_server(ps);
    case SEC_CLIENT: return end_client(ps);
    case SEC_MAPPING: return end_mapping(ps);
    default: return 0;
    }
}

static bool valid_mapping_name(const std::string &name)
{
    if (name.empty() || name.size() > MAP_NAME_MAX)
        return false;
    for (size_t i = 0; i < name.size(); i++) {
        unsigned char ch = name[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.')
            return false;
    }
    return true;
}

/* A "[...]" line: end the section before it, then start this one.
 * Returns 0, or -1 with the error recorded. */
static int begin_section(parse_state *ps, const char *line)
{
    conf *c = ps->c;
    const char *close = strchr(line, ']');

    if (!close)
        return fail(ps, ps->line, "missing ']' in section header");
    const char *rest = close + 1;
    while (isspace((unsigned char)*rest))
        rest++;
    if (*rest != '\0' && *rest != ';' && *rest != '#')
        return fail(ps, ps->line, "unexpected text after section header: '%s'",
                    trim(rest, rest + strlen(rest)).c_str());
    std::string name = trim(line + 1, close);

    if (end_section(ps) < 0)
        return -1;
    ps->seen.clear();
    ps->sect_line = ps->line;
    ps->sect_text = "[" + name + "]";

    if (name == "server" || name == "client") {
        role r = name == "server" ? ROLE_SERVER : ROLE_CLIENT;
        if (c->role_ == r)
            return fail(ps, ps->line, "duplicate section [%s] (first at line %d)",
                        name.c_str(), ps->role_line);
        if (c->role_ != ROLE_NONE)
            return fail(ps, ps->line,
                        "[%s] in a file that already has [%s] (line %d): one role per file",
                        name.c_str(), c->role_ == ROLE_SERVER ? "server" : "client",
                        ps->role_line);
        if (r == ROLE_SERVER && ps->first_mapping_line)
            return fail(ps, ps->line,
                        "[server] in a file with [mapping] sections (line %d): mappings "
                        "belong in a client file", ps->first_mapping_line);
        c->role_ = r;
        ps->role_line = ps->line;
        ps->sect = r == ROLE_SERVER ? SEC_SERVER : SEC_CLIENT;
        return 0;
    }

    if (name.compare(0, 7, "mapping") == 0
        && (name.size() == 7 || isspace((unsigned char)name[7]))) {
        std::string mname = trim(name.c_str() + 7, name.c_str() + name.size());
        if (mname.empty())
            return fail(ps, ps->line, "missing name in [mapping NAME]");
        if (!valid_mapping_name(mname))
            return fail(ps, ps->line, "bad mapping name '%s': use letters, digits, '-', '_' "
                        "and '.', at most %d", mname.c_str(), MAP_NAME_MAX);
        if (c->role_ == ROLE_SERVER)
            return fail(ps, ps->line, "[mapping %s] in a server file: mappings belong in a "
                        "client file", mname.c_str());
        for (size_t i = 0; i < c->mappings.size(); i++)
            if (c->mappings[i].name == mname)
                return fail(ps, ps->line, "duplicate [mapping %s] (first at line %d)",
                            mname.c_str(), c->mappings[i].line);
        c->mappings.push_back(mapping_conf());
        c->mappings.back().name = mname;
        c->mappings.back().line = ps->line;
        if (!ps->first_mapping_line)
            ps->first_mapping_line = ps->line;
        ps->sect = SEC_MAPPING;
        ps->sect_text = "[mapping " + mname + "]";
        return 0;
    }
    return fail(ps, ps->line, "unknown section [%s]", name.c_str());
}

/*
 * inih's fgets: hands over one line at a time, numbered, after a look of
 * our own. Returns buf, or NULL at the end of the file or after an error,
 * which makes inih stop. A line holds at most size - 1 characters besides
 * its end (LF or CRLF); a NUL byte in it is an error, never its end.
 */
static char *conf_reader(char *buf, int size, void *stream)
{
    parse_state *ps = (parse_state *)stream;
    size_t len = 0, max = (size_t)size - 1;
    bool nul = false;
    int ch, last = EOF;
    char *p;

    if (!ps->err.empty())
        return NULL;
    /* the whole line, so that its length and its bytes are known */
    while ((ch = getc(ps->fp)) != EOF && ch != '\n') {
        nul |= ch == '\0';
        if (len < max)
            buf[len] = (char)ch;
        len++;
        last = ch;
    }
    if (ch == EOF && ferror(ps->fp)) {
        fail(ps, 0, "read: %s", strerror(errno));
        return NULL;
    }
    if (ch == EOF && len == 0)
        return NULL;
    ps->line++;
    if (last == '\r')
        len--;
    if (nul) {
        fail(ps, ps->line, "NUL byte in line");
        return NULL;
    }
    if (len > max) {
        fail(ps, ps->line, "line too long (at most %zu characters)", max);
        return NULL;
    }
    buf[len] = '\0';
    if (ps->line == 1 && !strncmp(buf, "\xEF\xBB\xBF", 3))
        memmove(buf, buf + 3, len - 2);   /* the rest and its NUL */
    /* inih takes an indented line for the continuation of the previous
     * value; we allow indented keys instead, as most INI readers do */
    for (p = buf; isspace((unsigned char)*p); p++)
        ;
    if (p != buf)
        memmove(buf, p, strlen(p) + 1);
    /* a ';' or '#' after a blank starts a comment (inih knows only ';') */
    for (p = buf; *p; p++)
        if ((*p == ';' || *p == '#') && p > buf && (p[-1] == ' ' || p[-1] == '\t')) {
            *p = '\0';
            break;
        }

    if (buf[0] == '[') {
        if (begin_section(ps, buf) < 0)
            return NULL;
    } else if (buf[0] != '\0' && buf[0] != ';' && buf[0] != '#') {
        /* inih would skip this line and tell us only at the end; say it now
         * so that this error, if first, is the one reported */
        if (!strchr(buf, '=') && !strchr(buf, ':')) {
            fail(ps, ps->line, "expected 'key = value' or '[section]'");
            return NULL;
        }
    }
    return buf;
}

/* Absolute directory of path, for relative paths in the file. realpath()
 * fails only if the directory vanished since we opened the file; the
 * relative name is then the best we have. */
static std::string dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    std::string dir = slash ? std::string(path, slash == path ? 1 : slash - path) : ".";
    char *real = realpath(dir.c_str(), NULL);

    if (real) {
        dir = real;
        free(real);
    }
    return dir;
}

/*
 * *out is replaced only on success, so a reload can load over a copy and
 * keep the old configuration when the new file is wrong.
 */
int conf_load(const char *path, conf *out, std::string *err)
{
    parse_state ps;
    conf c;
    int rc;

    ps.path = path;
    ps.c = &c;
    ps.fp = fopen(path, "r");
    if (!ps.fp) {
        *err = std::string(path) + ": cannot open: " + strerror(errno);
        return -1;
    }
    c.path = path;
    c.dir = dir_of(path);

    rc = ini_parse_stream(conf_reader, &ps, on_key, &ps);
    fclose(ps.fp);
    if (rc > 0)
        fail(&ps, rc, "syntax error");      /* only if we missed what inih saw */
    else if (rc < 0)
        fail(&ps, 0, "parse: %s", strerror(ENOMEM));
    if (ps.err.empty())
        end_section(&ps);
    if (ps.err.empty() && c.role_ == ROLE_NONE)
        fail(&ps, 1, "no [server] or [client] section");
    if (!ps.err.empty()) {
        *err = ps.err;
        return -1;
    }
    *out = std::move(c);
    return 0;
}

const char *conf_mode_name(unsigned mode)
{
    return mode >= MODE_HTTP && mode <= MODE_PROXY ? mode_names[mode] : "?";
}

bool conf_valid_mapping_name(const std::string &name)
{
    return valid_mapping_name(name);
}

bool conf_valid_domains(const std::string &list)
{
    size_t a = 0;
    for (;;) {
        size_t b = list.find(',', a);
        std::string d = list.substr(a, b == std::string::npos ? std::string::npos : b - a);
        if (!valid_domain(&d))
            return false;
        if (b == std::string::npos)
            return true;
        a = b + 1;
    }
}
