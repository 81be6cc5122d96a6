/*
 * proxy.cpp - the forward proxy session, see proxy.h.
 *
 * A session has two sides: e[0] the user (a transport, plain or TLS) and
 * e[1] the target (a TCP connection, one per request unless the next one
 * names the same host:port; or the UDP socket of a SOCKS5 association).
 * Each side has an input buffer of bounded size (PBUF, HTTP_MAX_HEAD while
 * a head is incomplete) and an output queue for what we generate (heads,
 * answers, SOCKS5 replies). The mode of a side says what its input is: a
 * head to parse, a body to count, raw bytes. The leading bytes it has
 * classified as pass-through ("pass") are written to the other side as
 * they are, after that side's queue. One loop (run) reads, interprets and
 * writes until nothing moves; it serves SOCKS5, CONNECT and the HTTP proxy
 * alike, and a full buffer simply stops reading its side (backpressure).
 *
 * Decisions an operator may want to know:
 *  - a protocol that flag does not allow gets an answer, not a silent
 *    close: HTTP proxying and CONNECT "403 Forbidden" (the request itself
 *    is fine, this proxy refuses it, as squid does), SOCKS5 REP 2
 *    "connection not allowed by ruleset";
 *  - bytes that are no proxy request get "400 Bad Request";
 *  - https:// URIs without CONNECT get "501 Not Implemented" (we do not
 *    originate TLS);
 *  - every answer we generate closes the connection (after lingering: we
 *    read and drop what the user still sends for LINGER_MS, so a body in
 *    flight does not turn our close into a reset that would eat the answer);
 *  - handshake_timeout also bounds an idle keep-alive connection between
 *    two requests; a request in progress has no timeout of its own;
 *  - a kept upstream connection is reused for a request to the same
 *    host:port; if the target closes it just as the request goes out, that
 *    request fails (no automatic retry);
 *  - SOCKS5 UDP: the client is the TCP user's IP address (or the address
 *    given in the request when non-zero), its port the first one it sends
 *    from (or the request's); datagrams from any other address are replies,
 *    sent back to the client with the SOCKS5 header. A destination name is
 *    resolved once and cached (one name); while it resolves, the latest
 *    datagram for it waits and others to other names are dropped.
 */
#include "proxy.h"
#include "http.h"
#include "log.h"
#include "relay.h"
#include "sock.h"
#include "socks5.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define PBUF (16 * 1024)        /* input buffer of a side */
#define PUMP_MAX (256 * 1024)   /* bytes read per session per loop pass */
#define LINGER_MS 2000          /* read and drop after our last byte */
#define USER_STALL_MS 60000     /* an HTTP request whose user neither sends its
                                   body nor reads its answer (nginx
                                   client_body_timeout, send_timeout) */
#define UDP_BURST 64            /* datagrams per session per loop pass */
#define UDP_DESTS 64            /* destinations of an association that may answer */

proxy_kind proxy_sniff(const uint8_t *p, size_t len)
{
    static const char magic[] = "WMPX", connect[] = "CONNECT ";
    if (len == 0)
        return PK_PARTIAL;
    if (p[0] == 0x05)
        return PK_SOCKS5;
    if (p[0] == 'W' && memcmp(p, magic, len < 4 ? len : 4) == 0)
        return len < 4 ? PK_PARTIAL : PK_TUNNEL;
    if (p[0] == 'C' && memcmp(p, connect, len < 8 ? len : 8) == 0)
        return len < 8 ? PK_PARTIAL : PK_CONNECT;
    /* an HTTP method: upper-case letters then a space */
    for (size_t i = 0; i < len && i < 16; i++) {
        if (p[i] == ' ')
            return i > 0 ? PK_HTTP : PK_UNKNOWN;
        if (p[i] < 'A' || p[i] > 'Z')
            return PK_UNKNOWN;
    }
    return len < 16 ? PK_PARTIAL : PK_UNKNOWN;
}

void proxy_serve_stream(stream *s, const std::string &peer, const proxy_conf &pc)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0) {
        log_warn("proxy for %s: socketpair: %s", peer.c_str(), strerror(errno));
        stream_reset(s, RST_RESET);
        return;
    }
    relay *r = relay_new(sp[0], s, peer);
    if (!r) {
        close(sp[1]);
        return;
    }
    r->what = pc.where;
    proxy_serve(plain_transport_new(sp[1]), peer, nullptr, 0, pc);
}

static bool creds_ok(const std::string &user, const std::string &pass, const void *u, size_t ul,
                     const void *p, size_t pl)
{
    /* both compared, always: the time says nothing about which one was wrong */
    int a = cred_equal(u, ul, user.data(), user.size());
    int b = cred_equal(p, pl, pass.data(), pass.size());
    return a & b;
}

bool proxy_auth_basic(const char *v, size_t n, const std::string &user, const std::string &pass)
{
    unsigned char out[384];
    if (n < 6 || strncasecmp(v, "basic ", 6) != 0)
        return false;
    v += 6;
    n -= 6;
    while (n && *v == ' ') {
        v++;
        n--;
    }
    if (n == 0 || n % 4 || n > 512)
        return false;
    int m = EVP_DecodeBlock(out, (const unsigned char *)v, (int)n);
    if (m < 0)
        return false;
    /* EVP_DecodeBlock counts the padding as zero bytes */
    m -= (v[n - 1] == '=') + (v[n - 2] == '=');
    const unsigned char *c = (const unsigned char *)memchr(out, ':', (size_t)m);
    if (!c)
        return false;
    /* user-ids have no ':', passwords may: split at the first */
    return creds_ok(user, pass, out, (size_t)(c - out), c + 1, (size_t)(out + m - c - 1));
}

/* ---- the session ---- */

enum { M_SNIFF, M_HEAD, M_SOCKS, M_BODY, M_HOLD, M_RAW, M_IDLE, M_DISCARD };
enum { S5_GREET, S5_AUTH, S5_REQ };

struct psess;

/* Linear buffer: bytes at p[off..off+len). */
struct pbuf {
    char *p = nullptr;
    size_t cap = 0, off = 0, len = 0;
    uint64_t used = 0;          /* bytes consumed, ever */
};

struct pside : io_handler {
    psess *s = nullptr;
    int k = 0;                  /* 0 user, 1 target */
    transport *tr = nullptr;
    pbuf in;
    std::string out;            /* generated bytes, written before pass-through */
    size_t outoff = 0;
    size_t pass = 0;            /* leading bytes of in to forward as they are */
    size_t seen = 0;            /* bytes of an incomplete head already looked at */
    uint8_t mode = M_SNIFF;
    bool rd = false, wr = false, rdhup = false, eof = false, err = false, shut = false;
    uint8_t bkind = 0;          /* body being forwarded (M_BODY) */
    bool bdone = false;
    uint64_t bleft = 0;
    http_chunked ck = {};
    uint64_t sent = 0;          /* bytes written to this side, ever */
    void on_io(unsigned ev) override;
};

/* A SOCKS5 UDP association. */
struct pudp {
    int fd = -1, fam = 0;
    bool v4 = false, v6 = false;  /* what the socket can send to, from its address */
    socks5_addr cli;            /* the client: address always, port once known */
    bool cport = false;
    sockaddr_buf cli_sa;        /* where replies go, once the client has sent */
    std::string rhost;          /* the one name cached or being resolved */
    uint16_t rport = 0;
    bool rok = false;
    sockaddr_buf raddr;
    resolve_req *rq = nullptr;
    std::string held;           /* the payload waiting for rq */
    /* where the client sent to lately: only these may answer (RFC 1928
     * leaves it open; a NAT's address-and-port-dependent filter) */
    sockaddr_buf dest[UDP_DESTS];
    int ndest = 0, dnext = 0;
};

struct psess : deferred {
    pside e[2];
    proxy_conf pc;
    std::string peer;
    timer tmo;                  /* handshake/idle, connect, or linger */
    timer stall;                /* an HTTP request the user stopped moving */
    uint64_t user_io = 0;       /* last byte read from or written to the user */
    uint64_t in_base = 0, out_base = 0;   /* the user's bytes each way at the last access line */
    uint64_t udp_in = 0;        /* UDP ASSOCIATE: datagram bytes from the user */
    task resume;
    resolve_req *rq = nullptr;
    addr_list *ups = nullptr;   /* while connecting: the target's addresses */
    bool socks = false, connecting = false, closing = false, dead = false, draining = false;
    bool req_keep = false, req_head = false, req_upgrade = false, keep = false, up_keep = false;
    int req_minor = 1;
    uint8_t s5 = S5_GREET;
    unsigned nreq = 0;
    int status = 0;
    uint64_t t0 = 0;
    std::string what;           /* "GET http://..." for the access log; "" once logged */
    std::string upkey;          /* "host:port" of the target connection */
    pudp *u = nullptr;
    psess *prev = nullptr, *next = nullptr;    /* every live session, for proxy_stop */
    ~psess() override;
};

static size_t sessions;
static psess *all;
static uint8_t dgram[SOCKS5_UDP_HDR_MAX + 65536];

/* "host:port", "[v6]:port" */
static std::string hostport(const char *host, size_t n, uint16_t port)
{
    char b[300];
    bool v6 = memchr(host, ':', n) != nullptr;
    snprintf(b, sizeof b, "%s%.*s%s:%u", v6 ? "[" : "", (int)n, host, v6 ? "]" : "", port);
    return b;
}

static void run(psess *s);

static void plog(psess *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void plog(psess *s, const char *fmt, ...)
{
    char b[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof b, fmt, ap);
    va_end(ap);
    log_info("proxy %s on %s: %s", s->peer.c_str(), s->pc.where.c_str(), b);
}

static void access_line(psess *s)
{
    if (s->what.empty())
        return;
    /* the user's bytes this request (or session) consumed, and ours to
     * it: an answer still queued counts as sent (and not again later) */
    uint64_t in = s->e[0].in.used + s->udp_in, out = s->e[0].sent + s->e[0].out.size() - s->e[0].outoff;
    access_log("%s proxy %s %d %llu %llu %llums", s->peer.c_str(), s->what.c_str(), s->status,
               (unsigned long long)(in - s->in_base), (unsigned long long)(out - s->out_base),
               (unsigned long long)(now_ms() - s->t0));
    s->in_base = in;
    s->out_base = out;
    s->what.clear();
}

psess::~psess()
{
    delete ups;
    for (pside &x : e) {
        delete x.tr;
        free(x.in.p);
    }
    if (u) {
        if (u->fd >= 0)
            close(u->fd);
        delete u;
    }
}

static void close_session(psess *s)
{
    if (s->dead)
        return;
    s->dead = true;
    access_line(s);
    /* descriptors close now, not when the session is reaped: after a
     * timer that may be only once some other event ends the next poll */
    for (pside &x : s->e) {
        if (x.tr)
            reactor_del(x.tr->fd, &x);
        delete x.tr;
        x.tr = nullptr;
    }
    if (s->u) {
        reactor_del(s->u->fd, &s->e[1]);
        close(s->u->fd);
        s->u->fd = -1;
        resolve_cancel(s->u->rq);
    }
    resolve_cancel(s->rq);
    timer_cancel(&s->tmo);
    timer_cancel(&s->stall);
    task_cancel(&s->resume);
    if (s->prev)
        s->prev->next = s->next;
    else
        all = s->next;
    if (s->next)
        s->next->prev = s->prev;
    sessions--;
    defer_delete(s);
}

static void pb_consume(pbuf *b, size_t n)
{
    b->used += n;
    b->off += n;
    b->len -= n;
    if (!b->len)
        b->off = 0;
}

/* Free space at the tail of b, grown to at least cap bytes and its data
 * moved to the front when the tail is under half (so a move costs at most
 * the bytes a read then brings). 0: full, or out of memory (reading this
 * side stops, as when full). */
static size_t pb_room(pbuf *b, size_t cap)
{
    if (b->cap < cap) {
        char *p = (char *)realloc(b->p, cap);
        if (!p)
            return 0;
        b->p = p;
        b->cap = cap;
    }
    if (b->off && b->cap - b->off - b->len < b->cap / 2) {
        memmove(b->p, b->p + b->off, b->len);
        b->off = 0;
    }
    return b->cap - b->off - b->len;
}

static inline const char *pb_data(const pbuf &b) { return b.p + b.off; }

/* Forget the target connection. */
static void close_up(psess *s)
{
    pside *e = &s->e[1];
    if (e->tr) {
        reactor_del(e->tr->fd, e);
        delete e->tr;
        e->tr = nullptr;
    }
    resolve_cancel(s->rq);
    s->rq = nullptr;
    s->connecting = false;
    delete s->ups;
    s->ups = nullptr;
    e->in.off = e->in.len = e->pass = e->seen = e->outoff = 0;
    e->out.clear();
    e->rd = e->wr = e->rdhup = e->eof = e->err = e->shut = false;
    e->mode = M_IDLE;
    s->upkey.clear();
}

/* Done with this user once what is queued is out (see side_write). */
static int closing(psess *s)
{
    access_line(s);
    close_up(s);
    s->closing = true;
    pside *e = &s->e[0];
    e->mode = M_DISCARD;
    e->pass = e->in.off = e->in.len = 0;
    timer_arm(&s->tmo, s->pc.handshake_timeout_ms);
    return 1;
}

/* Answer the HTTP user with a short page of our own, then close. why (may
 * be NULL when already logged) goes to the log. */
static int answer(psess *s, int status, const char *why)
{
    if (why)
        plog(s, "%d: %s", status, why);
    const char *r = http_reason(status);
    char b[320];
    int n = snprintf(b, sizeof b, "HTTP/1.1 %d %s\r\nServer: wmproxy\r\nContent-Type: text/plain\r\n"
                     "Connection: close\r\n%sContent-Length: %zu\r\n\r\n%d %s\n", status, r,
                     status == 407 ? "Proxy-Authenticate: Basic realm=\"wmproxy\"\r\n" : "",
                     strlen(r) + 5, status, r);
    s->e[0].out.append(b, (size_t)n);
    s->status = status;
    /* the connection ends (and the target's with it): what the user sent
     * is dropped, and counted */
    s->e[0].pass = 0;
    pb_consume(&s->e[0].in, s->e[0].in.len);
    return closing(s);
}

static void socks_reply(psess *s, int rep, const sockaddr *bound)
{
    uint8_t r[SOCKS5_REPLY_MAX];
    s->e[0].out.append((const char *)r, socks5_reply(r, (socks5_rep)rep, bound));
    s->status = rep;
}

/* ---- the target connection ---- */

static void up_failed(psess *s, int err, const char *dnserr)
{
    plog(s, "%s %s: %s", dnserr || s->rq ? "resolve" : "connect", s->upkey.c_str(),
         dnserr ? dnserr : err == ETIMEDOUT ? "timed out" : strerror(err));
    if (s->socks) {
        socks_reply(s, dnserr ? S5_REP_HOST_UNREACHABLE : socks5_rep_from_errno(err), nullptr);
        closing(s);
    } else {
        answer(s, err == ETIMEDOUT ? 504 : 502, nullptr);
    }
}

static void up_connected(psess *s)
{
    pside *e = &s->e[1];
    s->connecting = false;
    delete s->ups;
    s->ups = nullptr;
    timer_cancel(&s->tmo);
    log_debug("proxy %s: connected to %s", s->peer.c_str(), s->upkey.c_str());
    if (e->mode == M_HEAD)
        return;     /* an HTTP request: its head is queued */
    if (s->socks) {
        sockaddr_buf b;
        b.len = sizeof b.ss;
        getsockname(e->tr->fd, (sockaddr *)&b.ss, &b.len);
        socks_reply(s, S5_REP_SUCCEEDED, b.sa());
    } else {
        s->e[0].out += "HTTP/1.1 200 Connection Established\r\n\r\n";
        s->status = 200;
    }
    s->e[0].mode = e->mode = M_RAW;
}

static void up_skipped(void *arg, const std::string &addr, int err)
{
    psess *s = (psess *)arg;
    plog(s, "connect %s (%s): %s; trying its next address", s->upkey.c_str(), addr.c_str(), strerror(err));
}

/* Connect to the next address of the target after err (0: the first);
 * when none is left, up_failed(). */
static void up_next(psess *s, int err)
{
    pside *e = &s->e[1];
    if (e->tr) {
        reactor_del(e->tr->fd, e);
        delete e->tr;
        e->tr = nullptr;
        e->rd = e->wr = e->rdhup = false;
    }
    int fd = addr_list_connect(s->ups, err, up_skipped, s);
    if (fd >= 0) {
        sock_nodelay(fd);
        e->tr = plain_transport_new(fd);
        if (reactor_add(fd, e) == 0)
            return;
        err = errno;
        delete e->tr;
        e->tr = nullptr;
    } else {
        err = errno;
    }
    up_failed(s, err, nullptr);
}

static void up_resolved(void *arg, int st, const addr_list *l, const char *err)
{
    psess *s = (psess *)arg;
    s->rq = nullptr;
    if (st) {
        up_failed(s, 0, err);
    } else {
        s->ups = new addr_list(*l);
        up_next(s, 0);
    }
    run(s);
}

/* Connect the target side to host:port (resolved without blocking); the
 * outcome arrives through up_connected() or up_failed(). */
static void up_connect(psess *s, const std::string &host, uint16_t port)
{
    close_up(s);
    s->upkey = hostport(host.data(), host.size(), port);
    s->connecting = true;
    timer_arm(&s->tmo, s->pc.connect_timeout_ms);
    s->rq = resolve_start(host, port, up_resolved, s);
    if (!s->rq)
        up_failed(s, ENOMEM, nullptr);
}

/* ---- HTTP ---- */

static void body_init(pside *e, int kind, uint64_t len)
{
    e->bkind = (uint8_t)kind;
    e->bleft = len;
    e->bdone = kind == HTTP_BODY_NONE;
    e->ck = http_chunked{};
    e->mode = M_BODY;
}

static int req_head(psess *s)
{
    pside *e = &s->e[0];
    http_request q;
    int n = http_parse_request(pb_data(e->in), e->in.len, &q, e->seen);
    if (n == HTTP_PARTIAL && !http_head_over_limit(n, e->in.len)) {
        e->seen = e->in.len;
        if (!e->eof)
            return 0;
        if (e->in.len)
            plog(s, "closed in the middle of a request head");
        close_session(s);
        return -1;
    }
    e->seen = 0;
    s->nreq++;
    s->t0 = now_ms();

    s->status = 0;
    timer_cancel(&s->tmo);
    if (n < 0) {
        s->what = "- -";
        return answer(s, n == HTTP_INVALID ? 400 : 431, n == HTTP_INVALID ? "malformed request head" :
                      "request head too large");
    }
    s->what.assign(q.method.p, q.method.n).append(1, ' ');
    log_field(&s->what, q.target.p, q.target.n < 400 ? q.target.n : 400, false);
    log_debug("proxy %s: %s", s->peer.c_str(), s->what.c_str());
    bool conn = http_str_eq(q.method, "CONNECT");
    if (!(s->pc.flag & (conn ? FLAG_HTTPS : FLAG_HTTP)))
        return answer(s, 403, conn ? "CONNECT is not allowed by flag" : "HTTP proxying is not allowed by flag");
    if (!s->pc.username.empty()) {
        const http_str *v = http_find_header(q, "proxy-authorization");
        if (!v || !proxy_auth_basic(v->p, v->n, s->pc.username, s->pc.password))
            return answer(s, 407, v ? "wrong credentials" : "no credentials");
    }
    http_str host, path, auth;
    uint16_t port;
    bool https;
    if (conn) {
        if (http_parse_authority(q.target, &host, &port) < 0)
            return answer(s, 400, "bad CONNECT target");
        pb_consume(&e->in, (size_t)n);
        e->mode = M_HOLD;
        up_connect(s, std::string(host.p, host.n), port);
        return 1;
    }
    /* auth: the authority as the user wrote it, port included */
    if (http_parse_absolute_uri(q.target, &https, &host, &port, &path, &auth) < 0)
        return answer(s, 400, "not an absolute http:// URI");
    if (https)
        return answer(s, 501, "https:// URI without CONNECT");
    std::string origin;   /* "/?query" for a target with a query and no path */
    path = http_origin_form(path, &origin);
    /* RFC 9112 3.2.2: the target's authority replaces any Host (1.1
     * clients must send one; be lenient with those that do not) */
    if (http_header_index(q, "host") < 0 && q.num_headers < HTTP_MAX_HEADERS)
        q.headers[q.num_headers++] = http_header{http_cstr("Host"), auth, HTTP_F_HOST};
    http_msg_info f;
    if (http_request_framing(q, &f) < 0)
        return answer(s, 400, f.error);

    std::string h;
    http_write_request_line(&h, q.method, path, q.minor);
    http_write_field(&h, http_cstr("Host"), auth);
    size_t j = 0;
    for (size_t i = 0; i < q.num_headers; i++) {
        http_str nm = q.headers[i].name;
        if (!http_ieq_lit(nm, "host") && !(nm.n > 6 && strncasecmp(nm.p, "proxy-", 6) == 0))
            q.headers[j++] = q.headers[i];
    }
    q.num_headers = j;
    http_copy_fields(&h, q, HTTP_KEEP_TE | (f.upgrade ? HTTP_KEEP_UPGRADE : 0), nullptr);
    http_write_field(&h, "Connection", f.upgrade ? "upgrade" : f.keep_alive ? "keep-alive" : "close");
    http_write_end(&h);
    s->req_keep = f.keep_alive;
    s->req_head = http_str_eq(q.method, "HEAD");
    s->req_minor = q.minor;
    s->req_upgrade = f.upgrade;
    body_init(e, f.body, f.length);
    std::string hs(host.p, host.n);
    pb_consume(&e->in, (size_t)n);   /* q is stale from here */

    pside *t = &s->e[1];
    if (t->tr && t->mode == M_IDLE && !s->connecting && hostport(hs.data(), hs.size(), port) == s->upkey)
        log_debug("proxy %s: reusing the connection to %s", s->peer.c_str(), s->upkey.c_str());
    else
        up_connect(s, hs, port);
    if (s->closing)
        return 1;
    t->out.swap(h);
    t->mode = M_HEAD;
    t->seen = 0;
    return 1;
}

static int resp_head(psess *s)
{
    pside *e = &s->e[1];
    http_response r;
    int n = http_parse_response(pb_data(e->in), e->in.len, &r, e->seen);
    if (n == HTTP_PARTIAL && !http_head_over_limit(n, e->in.len)) {
        e->seen = e->in.len;
        if (!e->eof)
            return 0;
        char why[160];
        snprintf(why, sizeof why, "%s: %s", s->upkey.c_str(),
                 e->in.len ? "incomplete response head" : "closed without answering");
        return answer(s, 502, why);
    }
    e->seen = 0;
    http_msg_info f;
    if (n < 0 || http_response_framing(r.status, s->req_head, r, &f) < 0 ||
        (r.status == 101 && !s->req_upgrade)) {
        char why[160];
        snprintf(why, sizeof why, "%s: malformed response", s->upkey.c_str());
        return answer(s, 502, why);
    }
    std::string &o = s->e[0].out;
    bool up = r.status == 101;
    /* RFC 9110 15.2: no 1xx goes to an HTTP/1.0 user */
    if (r.status < 200 && !up && s->req_minor == 0) {
        pb_consume(&e->in, (size_t)n);
        return 1;
    }
    http_write_status_line(&o, 1, r.status, r.reason);
    http_copy_fields(&o, r, HTTP_KEEP_TE | (up ? HTTP_KEEP_UPGRADE : 0), nullptr);
    pb_consume(&e->in, (size_t)n);
    s->status = r.status;
    if (up) {
        o += "Connection: upgrade\r\n\r\n";
        e->mode = s->e[0].mode = M_RAW;
        return 1;
    }
    if (r.status < 200) {   /* 100 Continue and friends: the answer follows */
        http_write_end(&o);
        return 1;
    }
    s->up_keep = f.keep_alive;
    /* the user sent its last request (and its FIN): this answer ends it */
    s->keep = f.keep_alive && s->req_keep && !(s->e[0].eof && !s->e[0].in.len);
    http_write_field(&o, "Connection", s->keep ? "keep-alive" : "close");
    http_write_end(&o);
    body_init(e, f.body, f.length);
    return 1;
}

/* The message on side e has been forwarded whole. */
static int msg_done(psess *s, pside *e)
{
    if (!e->k) {
        e->mode = M_HOLD;   /* the next request waits for this response */
        return 1;
    }
    access_line(s);
    /* a response that ended before its request did leaves the user's
     * bytes unframed: close. A user who half-closed after pipelining
     * requests gets the answers to all of them. */
    if (!s->keep || s->e[0].mode != M_HOLD || (s->e[0].eof && !s->e[0].in.len) || s->draining)
        return closing(s);
    if (s->up_keep)
        e->mode = M_IDLE;
    else
        close_up(s);
    s->e[0].mode = M_HEAD;
    timer_arm(&s->tmo, s->pc.handshake_timeout_ms);
    return 1;
}

static int body_step(psess *s, pside *e)
{
    if (!e->bdone && e->in.len > e->pass) {
        const char *p = pb_data(e->in) + e->pass;
        size_t avail = e->in.len - e->pass;
        ssize_t n = (ssize_t)avail;
        if (e->bkind == HTTP_BODY_LENGTH) {
            if ((uint64_t)n > e->bleft)
                n = (ssize_t)e->bleft;
            e->bleft -= (uint64_t)n;
            e->bdone = e->bleft == 0;
        } else if (e->bkind == HTTP_BODY_CHUNKED) {
            n = http_chunked_scan(&e->ck, p, avail);
            e->bdone = e->ck.done;
        }
        if (n < 0) {
            plog(s, "malformed chunked %s body", e->k ? "response" : "request");
            close_session(s);
            return -1;
        }
        e->pass += (size_t)n;
    }
    if (!e->bdone && e->eof && !e->pass) {
        if (e->bkind != HTTP_BODY_CLOSE || e->err) {
            plog(s, "%s closed in the middle of the %s body", e->k ? s->upkey.c_str() : "user",
                 e->k ? "response" : "request");
            close_session(s);
            return -1;
        }
        e->bdone = true;    /* a response delimited by the close */
    }
    return e->bdone && !e->pass ? msg_done(s, e) : 0;
}

/* Did the client send to a lately? (a is as recvfrom() gives it, in the
 * socket's family, as udp_send() records it.) */
static bool udp_known(const pudp *u, const sockaddr *a)
{
    for (int i = 0; i < u->ndest; i++)
        if (sock_same_endpoint(u->dest[i].sa(), a))
            return true;
    return false;
}

/* ---- SOCKS5 ---- */

static std::string s5_host(const socks5_addr &a)
{
    char b[INET6_ADDRSTRLEN];
    if (a.atyp == S5_ATYP_DOMAIN)
        return a.host;
    inet_ntop(a.atyp == S5_ATYP_IPV4 ? AF_INET : AF_INET6, a.ip, b, sizeof b);
    return b;
}

static void udp_send(pudp *u, const sockaddr *sa, socklen_t len, const void *p, size_t n)
{
    sockaddr_in6 m;
    if (u->fam == AF_INET6 && sa->sa_family == AF_INET) {
        memset(&m, 0, sizeof m);
        m.sin6_family = AF_INET6;
        m.sin6_port = ((const sockaddr_in *)sa)->sin_port;
        m.sin6_addr.s6_addr[10] = m.sin6_addr.s6_addr[11] = 0xff;
        memcpy(m.sin6_addr.s6_addr + 12, &((const sockaddr_in *)sa)->sin_addr, 4);
        sa = (const sockaddr *)&m;
        len = sizeof m;
    }
    /* a datagram may be lost: errors (no route, no IPv6) drop it */
    if (sendto(u->fd, p, n, 0, sa, len) < 0) {
        log_debug("socks5 udp: sendto: %s", strerror(errno));
        return;
    }
    if (udp_known(u, sa))
        return;
    sockaddr_buf *d = &u->dest[u->dnext];
    memcpy(&d->ss, sa, len);
    d->len = len;
    u->dnext = (u->dnext + 1) % UDP_DESTS;
    if (u->ndest < UDP_DESTS)
        u->ndest++;
}

static void udp_resolved(void *arg, int st, const addr_list *l, const char *err)
{
    const sockaddr_buf *a = nullptr;
    psess *s = (psess *)arg;
    pudp *u = s->u;
    u->rq = nullptr;
    /* the first address this socket can reach (udp_start) */
    for (int i = 0; !st && i < l->n && !a; i++)
        if (l->a[i].ss.ss_family == AF_INET ? u->v4 : u->v6)
            a = &l->a[i];
    if (st) {
        plog(s, "socks5 udp: resolve %s: %s", u->rhost.c_str(), err);
    } else if (!a) {
        plog(s, "socks5 udp: %s has no IPv%c address", u->rhost.c_str(), u->v4 ? '4' : '6');
    } else {
        u->raddr = *a;
        u->rok = true;
        udp_send(u, a->sa(), a->len, u->held.data(), u->held.size());
    }
    u->held.clear();
}

/* A datagram from the client: header off, to its destination. */
static void udp_from_client(psess *s, const uint8_t *d, size_t n)
{
    pudp *u = s->u;
    socks5_udp_hdr h;
    int hl = socks5_udp_parse(d, n, &h);
    if (hl < 0)
        return;     /* fragments and garbage are dropped */
    s->udp_in += n - (size_t)hl;    /* the datagram from the user */
    d += hl;
    n -= (size_t)hl;
    if (h.addr.atyp != S5_ATYP_DOMAIN) {
        sockaddr_storage ss;
        socklen_t l;
        socks5_addr_to_sockaddr(&h.addr, &ss, &l);
        udp_send(u, (const sockaddr *)&ss, l, d, n);
    } else if (u->rok && u->rport == h.addr.port && u->rhost == h.addr.host) {
        udp_send(u, u->raddr.sa(), u->raddr.len, d, n);
    } else if (!u->rq || (u->rport == h.addr.port && u->rhost == h.addr.host)) {
        u->held.assign((const char *)d, n);
        if (u->rq)
            return;
        u->rhost = h.addr.host;
        u->rport = h.addr.port;
        u->rok = false;
        u->rq = resolve_start(u->rhost, u->rport, udp_resolved, s);
    }
}

static void udp_run(psess *s)
{
    pudp *u = s->u;
    pside *e = &s->e[1];
    uint8_t *d = dgram + SOCKS5_UDP_HDR_MAX;
    for (int i = 0; i < UDP_BURST && e->rd; i++) {
        sockaddr_buf from;
        from.len = sizeof from.ss;
        ssize_t n = recvfrom(u->fd, d, 65536, 0, (sockaddr *)&from.ss, &from.len);
        socks5_addr a;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                e->rd = false;
            continue;
        }
        if (socks5_addr_from_sockaddr(from.sa(), &a) < 0)
            continue;
        if (a.atyp == u->cli.atyp && !memcmp(a.ip, u->cli.ip, a.len) && (!u->cport || a.port == u->cli.port)) {
            u->cport = true;
            u->cli.port = a.port;
            u->cli_sa = from;
            udp_from_client(s, d, (size_t)n);
        } else if (u->cli_sa.len && udp_known(u, from.sa())) {
            socks5_udp_hdr h;
            h.frag = 0;
            h.addr = a;
            uint8_t hb[SOCKS5_UDP_HDR_MAX];
            size_t hl = socks5_udp_encode(&h, hb);
            memcpy(d - hl, hb, hl);
            s->e[0].sent += (size_t)n;
            if (sendto(u->fd, d - hl, hl + (size_t)n, 0, u->cli_sa.sa(), u->cli_sa.len) < 0)
                log_debug("socks5 udp: sendto client: %s", strerror(errno));
        }
    }
    if (e->rd)
        task_post(&s->resume);
}

/* UDP ASSOCIATE: a socket on the address the user reached us at. */
static int udp_start(psess *s, const socks5_addr &want)
{
    sockaddr_buf l;
    l.len = sizeof l.ss;
    int fd = -1, fam = -1;
    if (getsockname(s->e[0].tr->fd, (sockaddr *)&l.ss, &l.len) == 0)
        fam = l.ss.ss_family;
    if (fam == AF_INET || fam == AF_INET6) {
        if (fam == AF_INET)
            ((sockaddr_in *)&l.ss)->sin_port = 0;
        else
            ((sockaddr_in6 *)&l.ss)->sin6_port = 0;
        fd = socket(fam, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd >= 0 && (bind(fd, l.sa(), l.len) < 0 || reactor_add(fd, &s->e[1]) < 0)) {
            close(fd);
            fd = -1;
        }
    }
    if (fd < 0) {
        /* through a tunnel the user is on the far side: no UDP path */
        plog(s, "socks5 UDP ASSOCIATE: %s", fam == AF_INET || fam == AF_INET6 ? strerror(errno) :
             "not available through a tunnel");
        socks_reply(s, fam == AF_INET || fam == AF_INET6 ? S5_REP_FAILURE : S5_REP_CMD_UNSUPPORTED, nullptr);
        return closing(s);
    }
    pudp *u = s->u = new pudp;
    u->fd = fd;
    u->fam = fam;
    /* bound to the address the user reached: an IPv4 one (or IPv4-mapped,
     * on a dual-stack listener) sends to IPv4 only, a specific IPv6 one
     * to IPv6 only, the unspecified :: to both */
    const in6_addr *a6 = &((const sockaddr_in6 *)&l.ss)->sin6_addr;
    u->v4 = fam == AF_INET || IN6_IS_ADDR_V4MAPPED(a6) || IN6_IS_ADDR_UNSPECIFIED(a6);
    u->v6 = fam == AF_INET6 && !IN6_IS_ADDR_V4MAPPED(a6);
    sockaddr_buf p;
    p.len = sizeof p.ss;
    getpeername(s->e[0].tr->fd, (sockaddr *)&p.ss, &p.len);
    socks5_addr_from_sockaddr(p.sa(), &u->cli);
    u->cli.len = u->cli.atyp == S5_ATYP_IPV4 ? 4 : 16;
    /* datagrams come only from the user's own address (RFC 1928 7): the
     * address it names counts only if it is that one, its port then too
     * (another address is a client behind NAT guessing: ignored) */
    static const uint8_t zero[16] = {0};
    bool same = want.atyp == u->cli.atyp && !memcmp(want.ip, u->cli.ip, u->cli.len);
    if (want.atyp != S5_ATYP_DOMAIN && memcmp(want.ip, zero, want.len) && !same)
        log_debug("proxy %s: socks5 udp: the client names another address than its own: ignored",
                  s->peer.c_str());
    else if (want.port) {
        u->cport = true;
        u->cli.port = want.port;
    }
    l.len = sizeof l.ss;
    getsockname(fd, (sockaddr *)&l.ss, &l.len);
    socks_reply(s, S5_REP_SUCCEEDED, l.sa());
    s->e[0].mode = M_DISCARD;    /* the control connection: its end ends us */
    s->e[1].rd = true;
    timer_cancel(&s->tmo);
    return 1;
}

static int socks_step(psess *s)
{
    pside *e = &s->e[0];
    const uint8_t *p = (const uint8_t *)pb_data(e->in);
    uint8_t r[2];
    bool need = !s->pc.username.empty();
    int n;
    if (s->s5 == S5_GREET) {
        socks5_span m;
        if ((n = socks5_parse_greeting(p, e->in.len, &m)) > 0) {
            uint8_t meth = socks5_choose_method(&m, need);
            e->out.append((const char *)r, socks5_method_reply(r, meth));
            pb_consume(&e->in, (size_t)n);
            if (meth == S5_METHOD_NOACCEPT) {
                plog(s, "socks5: %s", need ? "the client offers no username/password authentication"
                                           : "no acceptable authentication method");
                s->what = "socks5 -";
                s->status = S5_METHOD_NOACCEPT;
                return closing(s);
            }
            s->s5 = meth == S5_METHOD_USERPASS ? S5_AUTH : S5_REQ;
            return 1;
        }
    } else if (s->s5 == S5_AUTH) {
        socks5_span us, pw;
        if ((n = socks5_parse_userpass(p, e->in.len, &us, &pw)) > 0) {
            /* without username, a client that offered only user/pass gets in */
            bool ok = !need || creds_ok(s->pc.username, s->pc.password, us.p, us.n, pw.p, pw.n);
            e->out.append((const char *)r, socks5_userpass_reply(r, ok));
            pb_consume(&e->in, (size_t)n);
            if (!ok) {
                plog(s, "socks5: wrong username or password");
                s->what = "socks5 -";
                s->status = 1;
                return closing(s);
            }
            s->s5 = S5_REQ;
            return 1;
        }
    } else {
        socks5_req q;
        n = socks5_parse_request(p, e->in.len, &q);
        if (n == S5_BADCMD || n == S5_BADATYP) {
            plog(s, "socks5: unsupported %s", n == S5_BADCMD ? "command" : "address type");
            s->what = "socks5 -";
            socks_reply(s, n == S5_BADCMD ? S5_REP_CMD_UNSUPPORTED : S5_REP_ATYP_UNSUPPORTED, nullptr);
            return closing(s);
        }
        if (n > 0) {
            pb_consume(&e->in, (size_t)n);
            std::string host = s5_host(q.dst);
            s->t0 = now_ms();
            s->what = q.cmd == S5_CMD_CONNECT ? "socks5 " : q.cmd == S5_CMD_UDP ? "socks5-udp " : "socks5-bind ";
            std::string hp = hostport(host.data(), host.size(), q.dst.port);
            log_field(&s->what, hp.data(), hp.size(), false);
            log_debug("proxy %s: %s", s->peer.c_str(), s->what.c_str());
            int rep = !(s->pc.flag & FLAG_SOCKS5) ? S5_REP_NOT_ALLOWED :
                      q.cmd == S5_CMD_BIND ? S5_REP_CMD_UNSUPPORTED : 0;
            if (rep) {
                plog(s, "%s: %s", s->what.c_str(), rep == S5_REP_NOT_ALLOWED ? "socks5 is not allowed by flag" :
                     "BIND is not supported");
                socks_reply(s, rep, nullptr);
                return closing(s);
            }
            if (q.cmd == S5_CMD_UDP)
                return udp_start(s, q.dst);
            e->mode = M_HOLD;
            up_connect(s, host, q.dst.port);
            return 1;
        }
    }
    if (n != S5_PARTIAL)
        plog(s, "socks5: malformed message");
    else if (!e->eof)
        return 0;
    close_session(s);
    return -1;
}

/* ---- the loop ---- */

static int sniff(psess *s, pside *e)
{
    proxy_kind k = proxy_sniff((const uint8_t *)pb_data(e->in), e->in.len);
    if (k == PK_PARTIAL) {
        if (!e->eof)
            return 0;
        if (e->in.len)
            plog(s, "closed before a complete request");
        close_session(s);
        return -1;
    }
    if (k == PK_SOCKS5) {
        s->socks = true;
        e->mode = M_SOCKS;
    } else if (k == PK_CONNECT || k == PK_HTTP) {
        e->mode = M_HEAD;
    } else {
        s->what = "- -";
        return answer(s, 400, "not a proxy request");
    }
    return 1;
}

/* What the bytes read on side e mean. 1 progress, 0 nothing, -1 closed. */
static int interp(psess *s, pside *e)
{
    switch (e->mode) {
    case M_SNIFF:
        return sniff(s, e);
    case M_SOCKS:
        return socks_step(s);
    case M_HEAD:
        /* one head at a time in the other side's queue: bounded */
        if (!s->e[!e->k].out.empty())
            return 0;
        return e->k ? resp_head(s) : req_head(s);
    case M_BODY:
        return body_step(s, e);
    case M_RAW:
        if (e->err) {
            close_session(s);
            return -1;
        }
        e->pass = e->in.len;
        return 0;
    case M_IDLE:
        /* a kept target that talks or closes out of turn is dropped */
        if (e->tr && (e->in.len || e->eof)) {
            close_up(s);
            return 1;
        }
        return 0;
    case M_DISCARD:
        e->in.off = e->in.len = 0;
        if (e->eof && (e->shut || !s->closing)) {
            close_session(s);
            return -1;
        }
        return 0;
    default:    /* M_HOLD */
        return 0;
    }
}

/* Read what side e has. 1 progress, 0 nothing, -1 closed. */
static int side_read(psess *s, pside *e, size_t *budget)
{
    if (!e->tr || e->eof || (e->k && s->connecting) || !*budget || (!e->rd && !e->tr->pending()))
        return 0;
    size_t room = pb_room(&e->in, e->mode == M_HEAD && e->in.len >= PBUF / 2 ? HTTP_MAX_HEAD : PBUF);
    if (!room)
        return 0;
    iovec iov = {e->in.p + e->in.off + e->in.len, room};
    ssize_t n = e->tr->readv(&iov, 1);
    if (n > 0) {
        e->in.len += (size_t)n;
        *budget -= (size_t)n < *budget ? (size_t)n : *budget;
        if (!e->k)
            s->user_io = now_ms();
        if ((size_t)n < room && !e->rdhup)
            e->rd = false;
        return 1;
    }
    if (n == IO_AGAIN) {
        e->rd = false;
        return 0;
    }
    if (n < 0) {
        log_debug("proxy %s: %s: %s", s->peer.c_str(), e->k ? s->upkey.c_str() : "user", e->tr->error());
        if (!e->k) {
            close_session(s);
            return -1;
        }
        e->err = true;
    }
    e->eof = true;
    return 1;
}

/* Write to side e its queue, then the other side's pass-through bytes;
 * finish its write direction when nothing more will come. 1 progress,
 * 0 nothing, -1 closed. */
static int side_write(psess *s, pside *e)
{
    pside *o = &s->e[!e->k];
    int prog = 0;
    if (!e->tr || (e->k && s->connecting))
        return 0;
    if (e->wr && e->tr->buffered()) {
        int r = e->tr->flush();
        if (r == IO_AGAIN)
            e->wr = false;
        else if (r == IO_ERR)
            goto fail;
    }
    if (e->shut)
        return 0;
    while (e->wr) {
        iovec iov[2];
        int n = 0;
        size_t q = e->out.size() - e->outoff;
        if (q)
            iov[n++] = {&e->out[e->outoff], q};
        if (o->pass)
            iov[n++] = {o->in.p + o->in.off, o->pass};
        if (!n)
            break;
        ssize_t w = e->tr->writev(iov, n);
        if (w == IO_AGAIN) {
            e->wr = false;
            break;
        }
        if (w < 0)
            goto fail;
        prog = 1;
        e->sent += (size_t)w;
        if (!e->k)
            s->user_io = now_ms();
        size_t a = (size_t)w < q ? (size_t)w : q;
        e->outoff += a;
        if (e->outoff == e->out.size()) {
            e->out.clear();
            e->outoff = 0;
        }
        o->pass -= (size_t)w - a;
        pb_consume(&o->in, (size_t)w - a);
    }
    if (e->out.empty() && !o->pass &&
        ((o->mode == M_RAW && o->eof && !o->in.len) || (!e->k && s->closing))) {
        e->shut = true;
        if (e->tr->shutdown_write() == IO_ERR)
            goto fail;
        if (s->closing)
            timer_arm(&s->tmo, LINGER_MS);
        prog = 1;
    }
    return prog;
fail:
    log_debug("proxy %s: write to %s: %s", s->peer.c_str(), e->k ? s->upkey.c_str() : "user", e->tr->error());
    close_session(s);
    return -1;
}

/* An HTTP request in progress waits on its user: to read the answer we
 * have for it, or to send more of its body. (A CONNECT or SOCKS5 relay has
 * no such rule, as a tcp mapping has none.) */
static bool waits_on_user(const psess *s)
{
    const pside *u = &s->e[0];
    if (s->socks || s->closing || !u->tr || u->mode == M_RAW || u->mode == M_SNIFF)
        return false;
    bool unread = u->out.size() > u->outoff || s->e[1].pass || u->tr->buffered();
    return (unread && !u->wr) || (u->mode == M_BODY && !u->in.len && !u->rd && !u->eof);
}

static void stall_fire(void *arg)
{
    psess *s = (psess *)arg;
    if (s->dead || !waits_on_user(s))
        return;     /* run() arms it again when needed */
    uint64_t due = s->user_io + USER_STALL_MS;
    if ((int64_t)(due - now_ms()) > 0)
        return timer_arm_at(&s->stall, due);
    plog(s, "no progress with the user for %ds, closing", USER_STALL_MS / 1000);
    close_session(s);
}

static void run(psess *s)
{
    size_t budget = PUMP_MAX;
    int i, p = 1;
    for (i = 0; i < 64 && p && !s->dead; i++) {
        p = 0;
        for (pside &x : s->e) {
            int r = side_read(s, &x, &budget);
            if (r < 0 || (r |= interp(s, &x)) < 0)
                return;
            p |= r;
        }
        for (pside &x : s->e) {
            int r = side_write(s, &x);
            if (r < 0)
                return;
            p |= r;
        }
    }
    if (s->dead)
        return;
    if (!s->stall.armed() && waits_on_user(s))
        timer_arm_at(&s->stall, s->user_io + USER_STALL_MS);
    /* both directions finished (CONNECT, SOCKS5, upgrade) */
    if (s->e[0].mode == M_RAW && s->e[0].shut && s->e[1].shut && !s->e[0].tr->buffered())
        return close_session(s);
    if (p || !budget)
        task_post(&s->resume);  /* fairness: the others get a turn */
}

static void resume(void *arg)
{
    psess *s = (psess *)arg;
    if (s->u && s->e[1].rd)
        udp_run(s);
    run(s);
}

void pside::on_io(unsigned ev)
{
    if (s->dead)
        return;
    if (ev & EV_RDHUP)
        rdhup = true;
    if (ev & EV_READ)
        rd = true;
    if (ev & EV_WRITE)
        wr = true;
    if (k && s->u)
        return udp_run(s);
    if (k && s->connecting) {
        if (!(ev & (EV_WRITE | EV_ERR | EV_HUP)))
            return;
        int err = sock_connect_result(tr->fd);
        if (err == EINPROGRESS || err == EALREADY)
            return;
        if (err && addr_list_more(s->ups)) {
            up_next(s, err);
        } else if (err) {
            up_failed(s, err, nullptr);
        } else {
            up_connected(s);
        }
    }
    run(s);
}

static void tmo_fire(void *arg)
{
    psess *s = (psess *)arg;
    if (s->connecting) {
        up_failed(s, ETIMEDOUT, nullptr);
        return run(s);
    }
    if (!s->closing) {
        if (s->nreq && s->e[0].mode == M_HEAD && !s->e[0].in.len)
            log_debug("proxy %s: idle keep-alive connection closed", s->peer.c_str());
        else
            plog(s, "no complete proxy request within handshake_timeout");
    }
    close_session(s);
}

void proxy_serve(transport *tr, const std::string &peer, const uint8_t *initial, size_t len,
                 const proxy_conf &pc)
{
    psess *s = new psess;
    s->pc = pc;
    s->peer = peer;
    s->t0 = now_ms();
    for (int k = 0; k < 2; k++) {
        s->e[k].s = s;
        s->e[k].k = k;
    }
    s->e[0].tr = tr;
    s->e[0].rd = s->e[0].wr = true;
    s->tmo.fn = tmo_fire;
    s->tmo.arg = s;
    s->stall.fn = stall_fire;
    s->stall.arg = s;
    s->user_io = now_ms();
    s->resume.fn = resume;
    s->resume.arg = s;
    sessions++;
    s->next = all;
    if (all)
        all->prev = s;
    all = s;
    if (len && pb_room(&s->e[0].in, len > PBUF ? len : PBUF) >= len) {
        memcpy(s->e[0].in.p, initial, len);
        s->e[0].in.len = len;
    }
    if (reactor_add(tr->fd, &s->e[0]) < 0) {
        plog(s, "reactor_add: %s", strerror(errno));
        s->e[0].tr = nullptr;
        close_session(s);
        delete tr;
        return;
    }
    if (pc.first_deadline)
        timer_arm_at(&s->tmo, pc.first_deadline);
    else
        timer_arm(&s->tmo, pc.handshake_timeout_ms);
    task_post(&s->resume);
}

size_t proxy_sessions(void)
{
    return sessions;
}

void proxy_stop(bool drain)
{
    for (psess *s = all, *next; s; s = next) {
        next = s->next;
        s->draining = true;
        /* a drain waits for exchanges in progress, not for idle users */
        if (!drain || s->closing || (s->e[0].mode == M_HEAD && !s->e[0].in.len && s->nreq) ||
            (s->e[0].mode == M_SNIFF && !s->e[0].in.len))
            close_session(s);
    }
}
