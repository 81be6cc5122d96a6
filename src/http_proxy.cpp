/*
 * http_proxy.cpp - the HTTP reverse proxy of http and https mappings, see
 * http_proxy.h.
 *
 * One session per public connection. Requests are handled one at a time:
 * a pipelined request waits in the input ring until the response before it
 * is complete, which answers pipelined requests in order. Each request is
 * routed by its Host; the stream to the mapping's client is kept for the
 * next request when that one goes to the same mapping and both sides keep
 * the connection alive, else it is closed and another opened, possibly on
 * another client's tunnel.
 *
 * Memory per session is bounded: the input ring (4 KiB, grown to a head's
 * 64 KiB and a little more when needed), the output ring, and a staging
 * buffer for the response head; bodies flow through them in pieces under
 * the stream's flow control. Between requests the buffers are freed, so an
 * idle keep-alive connection costs a few KiB.
 *
 * Clocks (head_timer, stall_timer):
 *  - a new connection must complete its first head header_timeout (30 s)
 *    after the accept; on a keep-alive connection the next head is on the
 *    clock from its first byte (or from the end of the previous response
 *    when it was already buffered), and until then the connection is idle
 *    and lives keepalive_timeout. Late: 408 and close.
 *  - a user that takes no byte of its answer, or sends no byte of its
 *    request body, for USER_STALL_MS is closed.
 *  - when we close, our direction is shut first and the user's bytes are
 *    read and dropped until its EOF, LINGER_MS at most, so that the kernel
 *    does not reset the connection under an answer not yet read.
 * No clock runs while the service thinks: a slow service is the user's to
 * wait for (it may close).
 */
#include "http_proxy.h"
#include "http.h"
#include "log.h"
#include "sock.h"
#include "ring.h"
#include "tls.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <algorithm>
#include <memory>
#include <unordered_map>
#include <vector>

#define IN_RING (HTTP_MAX_HEAD + 16 * 1024)
#define OUT_RING (128 * 1024)
#define OUT_MIN (16 * 1024)       /* first size of out; a big response grows it to OUT_RING */

/* ---- routes ---- */

struct route {
    tunnel *t = nullptr;
    uint32_t idx = 0;
    std::string name;
    std::string host;                                           /* Host rewrite */
    std::vector<std::pair<std::string, std::string>> req_rules, resp_rules;
};

/* Shared: a session keeps the route of its request alive even when the
 * mapping is unregistered or its tunnel goes down meanwhile. */
typedef std::shared_ptr<route> route_ref;

static std::unordered_map<std::string, route_ref> exact[2];
static std::vector<std::pair<std::string, route_ref>> wild[2];   /* ".example.com", longest first */

static route_ref route_find(bool https, const char *key)
{
    auto it = exact[https].find(key);
    if (it != exact[https].end())
        return it->second;
    size_t kl = strlen(key);
    for (auto &w : wild[https]) {
        const std::string &suf = w.first;
        if (kl > suf.size() && memcmp(key + kl - suf.size(), suf.data(), suf.size()) == 0)
            return w.second;
    }
    return route_ref();
}

/* The client's rewriting rules, one a line: "H host", "Q Name: value",
 * "S Name: value". Its configuration checked them; a client that sends
 * what no configuration allows is refused: a rule is written into heads
 * as it is. Returns false with *why. */
static bool parse_rules(route *r, const std::string &rules, std::string *why)
{
    size_t pos = 0;
    while (pos < rules.size()) {
        size_t nl = rules.find('\n', pos);
        if (nl == std::string::npos)
            nl = rules.size();
        std::string line = rules.substr(pos, nl - pos);
        pos = nl + 1;
        if (line.size() < 2 || line[1] != ' ')
            continue;
        std::string rest = line.substr(2);
        if (line[0] == 'H') {
            if (!http_is_host_rule(http_sstr(rest))) {
                *why = "bad host rule";
                return false;
            }
            r->host = rest;
            continue;
        }
        if (line[0] != 'Q' && line[0] != 'S')
            continue;
        size_t colon = rest.find(':');
        if (colon == std::string::npos)
            continue;
        std::string name = rest.substr(0, colon), value = rest.substr(colon + 1);
        while (!value.empty() && (value[0] == ' ' || value[0] == '\t'))
            value.erase(0, 1);
        if (!http_is_rule_name(http_sstr(name)) || !http_is_field_value(http_sstr(value))) {
            *why = "bad header rule";
            return false;
        }
        (line[0] == 'Q' ? r->req_rules : r->resp_rules).push_back({name, value});
    }
    return true;
}

static std::vector<std::string> split_domains(const std::string &s)
{
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos <= s.size()) {
        size_t c = s.find(',', pos);
        if (c == std::string::npos)
            c = s.size();
        std::string d = s.substr(pos, c - pos);
        if (!d.empty())
            out.push_back(d);
        pos = c + 1;
    }
    return out;
}

static std::string holder(const route_ref &r)
{
    return r->t && r->t->peer.size() ? r->t->peer : "another client";
}

int http_routes_add(bool https, tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    std::vector<std::string> names = split_domains(m.domains);
    if (names.empty()) {
        *why = "no domain";
        return -1;
    }
    for (const std::string &d : names) {
        route_ref other;
        if (d.compare(0, 2, "*.") == 0) {
            for (auto &w : wild[https])
                if (w.first == d.substr(1))
                    other = w.second;
        } else {
            auto it = exact[https].find(d);
            if (it != exact[https].end())
                other = it->second;
        }
        if (other) {
            *why = "domain " + d + " is held by client " + holder(other);
            return -1;
        }
    }
    route_ref r = std::make_shared<route>();
    r->t = t;
    r->idx = idx;
    r->name = m.name;
    if (!parse_rules(r.get(), m.rules, why))
        return -1;
    for (const std::string &d : names) {
        if (d.compare(0, 2, "*.") == 0)
            wild[https].push_back({d.substr(1), r});
        else
            exact[https][d] = r;
    }
    std::stable_sort(wild[https].begin(), wild[https].end(),
                     [](const std::pair<std::string, route_ref> &a, const std::pair<std::string, route_ref> &b) {
                         return a.first.size() > b.first.size();
                     });
    return 0;
}

void http_routes_remove(tunnel *t)
{
    for (int h = 0; h < 2; h++) {
        for (auto it = exact[h].begin(); it != exact[h].end();) {
            if (it->second->t == t)
                it = exact[h].erase(it);
            else
                ++it;
        }
        for (auto it = wild[h].begin(); it != wild[h].end();) {
            if (it->second->t == t)
                it = wild[h].erase(it);
            else
                ++it;
        }
    }
}

/* ---- sessions ---- */

enum req_state { Q_HEAD, Q_BODY, Q_WAIT, Q_RAW, Q_DONE };
enum resp_state { R_IDLE, R_HEAD, R_BODY, R_RAW };

struct hsess : io_handler, stream_end, deferred {
    hsess *prev = nullptr, *next = nullptr;   /* all sessions, for http_stop() */
    transport *tr = nullptr;
    std::string peer, peer_ip;
    bool https = false;
    bool tls_up = false;          /* https: the handshake is done */
    http_proxy_conf hc;
    ring in, out;                /* allocated while in use, see release_idle() */
    bool can_read = true, can_write = true, down_eof = false;
    bool rdhup = false;       /* the user's FIN was seen: read on to the EOF */
    bool close_after = false;    /* close once out is written */
    bool reset_after = false;    /* and with a reset, not a FIN (a cut answer ended by the close) */
    bool lingering = false;      /* our side is shut: reading to the user's EOF */
    bool draining = false;       /* QUIT: no keep-alive after this response */
    bool closed = false;
    req_state qs = Q_HEAD;
    resp_state rs = R_IDLE;
    size_t last_len = 0;         /* bytes of a partial head already scanned */

    /* the request in flight */
    http_body_kind qbody = HTTP_BODY_NONE;
    uint64_t qleft = 0;
    http_chunked qch = {};
    bool qkeep = false, qhead = false, qupgrade = false;
    int qminor = 1;                  /* the user's HTTP/1.minor */
    std::string qline;           /* "GET /x" for the access log */
    std::string qhost;
    std::string qmap = "-";      /* mapping name for the access log */
    std::string qout;            /* rewritten head waiting for stream room */
    uint64_t head_since = 0;     /* the head's clock started (0: idle, none begun) */
    uint64_t idle_since = 0;     /* the previous response ended */
    uint64_t qstart = 0, qbytes_in = 0, qbytes_out = 0;

    /* the upstream */
    stream *s = nullptr;
    route_ref rt;                /* route of s */
    tunnel *st = nullptr;        /* and its tunnel, to tell a stale route */
    uint32_t sidx = 0;
    std::string again;           /* the head of a request without a body sent on a
                                    kept stream: sent again on a new stream if the
                                    service closed the kept one as it came */

    /* the response in flight */
    std::string rbuf;            /* taken from the stream, not yet processed */
    size_t rlast = 0;
    http_body_kind rbody = HTTP_BODY_NONE;
    uint64_t rleft = 0;
    http_chunked rch = {};
    bool rkeep = false;          /* the service keeps the stream for another request */
    bool ukeep = false;          /* the user's connection carries another request */
    int status = 0;
    bool qlogged = true;         /* the access line of this request is written */

    timer head_timer;            /* head, keep-alive idle, and linger deadlines */
    timer stall_timer;           /* the user neither reads nor sends, see stall_check() */
    uint64_t user_io = 0;        /* last progress with the user */
    task run;
    void on_io(unsigned events) override;
    size_t on_data(const iovec *iov, int n, size_t len) override;
    void on_rx_ready() override;
    void on_writable() override;
    void on_reset(uint8_t code, const char *why) override;
    bool on_orphan() override;
    ~hsess() override;
};

#define IN_SMALL 4096             /* first size of the input ring */
#define ANSWER_ROOM 1024          /* out space our own answers need */
#define PASS_BUDGET (256 * 1024)  /* bytes moved per session per loop pass */
#define LINGER_MS 2000            /* reading to the user's EOF after our FIN */
#define USER_STALL_MS 60000       /* a user that takes no byte of its answer, or
                                     sends no byte of its body, for this long is
                                     closed (nginx send_timeout, client_body_timeout) */

static size_t nsessions;
static hsess *sessions;
static http_request req_scratch;    /* one thread: one parse at a time */
static http_response resp_scratch;
static char head_scratch[IN_RING];
static std::string head_out;        /* a rewritten head, before it is queued */
static std::vector<http_str> added; /* the fields we add to it */
static std::string xff_list;        /* an X-Forwarded-For list with the peer added */

/* These keep their capacity between heads (no allocation per request),
 * except the room a rare big head took. */
static void head_out_done(void)
{
    if (head_out.capacity() > 8192)
        std::string().swap(head_out);
    if (xff_list.capacity() > 8192)
        std::string().swap(xff_list);
    if (added.capacity() > 64)
        std::vector<http_str>().swap(added);
}

size_t http_sessions(void)
{
    return nsessions;
}

static void hs_run(void *arg);

hsess::~hsess()
{
    task_cancel(&run);
    timer_cancel(&head_timer);
    timer_cancel(&stall_timer);
    ring_free(&in);
    ring_free(&out);
    delete tr;
}

static void access_line(hsess *h);

static void hs_close(hsess *h)
{
    if (h->closed)
        return;
    h->closed = true;
    if (!h->qlogged)
        access_line(h);   /* a request cut short, or an upgraded connection */
    if (h->s) {
        stream *s = h->s;
        h->s = nullptr;
        stream_reset(s, RST_CANCEL);
    }
    reactor_del(h->tr->fd, h);
    task_cancel(&h->run);
    timer_cancel(&h->head_timer);
    timer_cancel(&h->stall_timer);
    if (h->prev)
        h->prev->next = h->next;
    else
        sessions = h->next;
    if (h->next)
        h->next->prev = h->prev;
    nsessions--;
    defer_delete(h);
}

/* Open a stream to route r for h. Returns 0, or -1 at max_streams. */
static int open_upstream(hsess *h, const route_ref &r)
{
    open_msg m;
    m.mapping = r->idx;
    /* the addresses are for PROXY protocol; http mappings do not use them */
    stream *s = tunnel_open(r->t, m, h);
    if (!s)
        return -1;
    h->s = s;
    h->rt = r;
    h->st = r->t;
    h->sidx = r->idx;
    return 0;
}

static bool idempotent(http_str m)
{
    static const char *const ok[] = {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE", nullptr};
    for (int i = 0; ok[i]; i++)
        if (m.n == strlen(ok[i]) && memcmp(m.p, ok[i], m.n) == 0)
            return true;
    return false;
}

static void drop_stream(hsess *h)
{
    if (h->s) {
        stream *s = h->s;
        h->s = nullptr;
        stream_reset(s, RST_CANCEL);
    }
    h->rt = nullptr;
    h->st = nullptr;
}

/* Make room for n bytes in out, allocating it on first use. Returns false
 * when out of memory. Only our own short answers may grow it past
 * OUT_RING, and only while it is full of a previous response. */
static bool out_reserve(hsess *h, size_t n)
{
    if (!h->out.area && ring_alloc(&h->out, n > OUT_MIN ? n : OUT_MIN) < 0)
        return false;
    if (ring_room(&h->out) < n && ring_grow(&h->out, h->out.data + n) < 0)
        return false;
    return true;
}

/* Queue bytes for the user. The caller checked the room. */
static void out_put(hsess *h, const char *p, size_t n)
{
    ring_put(&h->out, p, n);
    h->qbytes_out += n;
}

/* The previous response still fills out: wait before starting the next
 * request, whose answer may be one of ours. */
static bool out_busy(const hsess *h)
{
    return h->out.data + ANSWER_ROOM > OUT_RING;
}

static void access_line(hsess *h)
{
    h->qlogged = true;
    access_log("%s %s %s \"%s\" %d %llu %llu %llums", h->peer.c_str(), h->https ? "https" : "http",
               h->qmap.c_str(), h->qline.c_str(), h->status, (unsigned long long)h->qbytes_in,
               (unsigned long long)h->qbytes_out, (unsigned long long)(now_ms() - h->qstart));
}

/* Arm head_timer for the state of the connection between requests: a
 * head begun (or a new connection) must be complete header_timeout after
 * it began; an idle keep-alive connection lives keepalive_timeout. */
static void arm_head_timer(hsess *h)
{
    if (h->head_since)
        timer_arm_at(&h->head_timer, h->head_since + h->hc.header_timeout_ms);
    else
        timer_arm_at(&h->head_timer, h->idle_since + h->hc.keepalive_timeout_ms);
}

static void request_finished(hsess *h);

/* A short plain-text answer of our own. keep: the connection stays open
 * (only when the request was read whole). */
static void answer(hsess *h, int status, const char *detail, bool keep)
{
    char body[512], head[512];
    int bl = snprintf(body, sizeof body, "%d %s%s%s\n", status, http_reason(status), detail ? ": " : "",
                      detail ? detail : "");
    if (bl >= (int)sizeof body)
        bl = sizeof body - 1;
    keep = keep && !h->draining;
    int hl = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nServer: wmproxy\r\nContent-Type: text/plain\r\n"
                      "Content-Length: %d\r\nConnection: %s\r\n\r\n",
                      status, http_reason(status), bl, keep ? "keep-alive" : "close");
    h->status = status;
    if (h->qhead)
        bl = 0;     /* RFC 9110 9.3.2: the head alone, Content-Length as for GET */
    if (out_reserve(h, (size_t)(hl + bl))) {
        out_put(h, head, (size_t)hl);
        out_put(h, body, (size_t)bl);
    } else {
        keep = false;
    }
    if (h->qline.empty())
        h->qline = "-";
    access_line(h);
    log_debug("http %s: %d %s", h->peer.c_str(), status, detail ? detail : "");
    h->rs = R_IDLE;
    if (keep) {
        request_finished(h);
    } else {
        h->close_after = true;
        h->qs = Q_DONE;
    }
}

/* Send what stream credit and tunnel room allow of a rewritten head;
 * returns the bytes sent. */
static size_t send_head(hsess *h, const char *p, size_t n)
{
    size_t room = stream_send_room(h->s);
    if (n > room)
        n = room;
    if (n)
        stream_send(h->s, p, n);
    return n;
}

/* The kept stream of a request in h->again ended before any answer: send
 * the request again on a new stream, once. Returns true when it went. */
static bool send_again(hsess *h, route_ref r)
{
    char key[HTTP_HOST_MAX + 1];
    if (h->again.empty() || !r || h->rs != R_HEAD || !h->rbuf.empty())
        return false;
    std::string head;
    head.swap(h->again);
    /* only to the mapping the Host still names (a reload may have taken
     * it away since) */
    if (http_host_key(http_sstr(h->qhost), key) < 0 || route_find(h->https, key) != r || r->t->state != TS_READY)
        return false;
    drop_stream(h);
    if (open_upstream(h, r) < 0)
        return false;
    log_info("http %s: mapping %s: the service closed a kept connection as the request came, sent again on a "
             "new one", h->peer.c_str(), r->name.c_str());
    h->qout.assign(head, send_head(h, head.data(), head.size()), std::string::npos);
    return true;
}

/* End the exchange in flight where it is: what of the answer is queued goes
 * out, then the connection closes (the user sees the answer cut short). */
static void cut_answer(hsess *h)
{
    /* an answer that ends where the connection does must not look whole:
     * the user gets a reset, not a FIN */
    if (h->rs == R_BODY && h->rbody == HTTP_BODY_CLOSE)
        h->reset_after = true;
    h->close_after = true;
    h->qs = Q_DONE;
    h->rs = R_IDLE;
    task_post(&h->run);
}

/* Forward request body bytes from in to the stream, as far as credit and
 * framing allow. */
static void forward_body(hsess *h)
{
    if (!h->qout.empty() && h->s) {
        h->qout.erase(0, send_head(h, h->qout.data(), h->qout.size()));
        if (!h->qout.empty())
            return;
    }
    while (h->qs == Q_BODY || h->qs == Q_RAW) {
        if (!h->s)
            return;
        size_t room = stream_send_room(h->s);
        if (room == 0 || h->in.data == 0)
            return;
        iovec iov[2];
        ring_data_spans(&h->in, 0, room, iov);
        size_t want = iov[0].iov_len, take;
        if (h->qs == Q_RAW) {
            take = want;
        } else if (h->qbody == HTTP_BODY_LENGTH) {
            take = want < h->qleft ? want : (size_t)h->qleft;
        } else {
            ssize_t sc = http_chunked_scan(&h->qch, (const char *)iov[0].iov_base, want);
            if (sc < 0) {
                log_info("http %s: bad chunked request body", h->peer.c_str());
                drop_stream(h);
                /* once the service's answer has begun (or ended) a 400
                 * would land inside it: cut it short and close */
                if (h->rs == R_HEAD)
                    answer(h, 400, "bad chunked body", false);
                else
                    cut_answer(h);
                return;
            }
            take = (size_t)sc;
        }
        if (take > 0) {
            stream_send(h->s, iov[0].iov_base, take);
            ring_consume(&h->in, take);
            h->qbytes_in += take;
        }
        if (h->qs == Q_BODY) {
            if (h->qbody == HTTP_BODY_LENGTH) {
                h->qleft -= take;
                if (h->qleft == 0)
                    h->qs = Q_WAIT;
            } else if (h->qch.done) {
                h->qs = Q_WAIT;
            }
        }
        if (take == 0)
            return;
    }
}

/* The fields a rewritten head gets besides the copied ones, as name/value
 * pairs for http_write_fields() */
static void add_field(http_str name, http_str value)
{
    added.push_back(name);
    added.push_back(value);
}

/* The rules' fields, but those that only remove one */
static void add_rules(const std::vector<std::pair<std::string, std::string>> &rules)
{
    for (auto &rule : rules)
        if (!rule.second.empty())
            add_field(http_sstr(rule.first), http_sstr(rule.second));
}

static bool has_rule(const std::vector<std::pair<std::string, std::string>> &rules, const char *name)
{
    for (auto &rule : rules)
        if (http_str_ieq(http_sstr(rule.first), name))
            return true;
    return false;
}

/* Rewrite and send the request head; open or reuse the stream. */
static void start_request(hsess *h, const http_request &q, const http_msg_info &mi, size_t headlen)
{
    char key[HTTP_HOST_MAX + 1];
    h->qstart = now_ms();
    h->qbytes_in = headlen;
    h->qbytes_out = 0;
    h->status = 0;
    h->qline.assign(q.method.p, q.method.n);
    h->qline += ' ';
    log_field(&h->qline, q.target.p, q.target.n < 200 ? q.target.n : 200, true);
    h->qmap = "-";
    h->qlogged = false;
    h->qkeep = mi.keep_alive;
    h->qhead = http_str_eq(q.method, "HEAD");
    h->qminor = q.minor;
    h->qupgrade = mi.upgrade;
    h->qbody = mi.body;
    h->qleft = mi.length;
    h->qch = http_chunked{};
    h->qs = mi.body == HTTP_BODY_NONE ? Q_WAIT : Q_BODY;
    bool has_body = mi.body != HTTP_BODY_NONE;

    if (http_str_eq(q.method, "CONNECT")) {
        drop_stream(h);
        answer(h, 501, "CONNECT is not served on mappings", false);
        return;
    }
    /* An absolute-form target (RFC 9112 3.2.2) must name the host its Host
     * field names: requests are routed by Host, and a target naming another
     * would reach a virtual host the mapping's domains do not cover. The
     * service gets the origin form. */
    http_str host = mi.host, target = q.target, authority = {};
    std::string origin;   /* "/?query" for a target with a query and no path */
    if (target.n && target.p[0] != '/' && !http_str_eq(target, "*")) {
        bool https;
        http_str name;
        uint16_t port;
        char akey[HTTP_HOST_MAX + 1];
        const char *bad = nullptr;
        if (http_parse_absolute_uri(q.target, &https, &name, &port, &target, &authority) < 0 ||
            http_host_key(authority, akey) < 0)
            bad = "bad absolute-form target";
        else if (host.p && (http_host_key(host, key) < 0 || strcmp(key, akey) != 0))
            bad = "the target names another host than Host";
        if (bad) {
            drop_stream(h);
            answer(h, 400, bad, false);
            return;
        }
        if (!host.p)
            host = authority;   /* HTTP/1.0 without Host */
        else
            authority = {};     /* Host goes on as it came */
        target = http_origin_form(target, &origin);
    }
    route_ref r;
    std::string sni;
    if (!host.p && h->https) {
        /* HTTP/1.0 without Host: the name the user's TLS asked for (a
         * domain is matched against Host or SNI) */
        sni = tls_transport_sni(h->tr);
        if (!sni.empty())
            host = http_sstr(sni);
    }
    if (host.p && host.n > 0 && http_host_key(host, key) < 0) {
        /* RFC 9112 3.2: an invalid Host value is a bad request */
        drop_stream(h);
        answer(h, 400, "bad Host", false);
        return;
    }
    if (host.p && host.n > 0)
        r = route_find(h->https, key);
    h->qhost = host.p ? std::string(host.p, host.n) : "";
    if (!r) {
        drop_stream(h);
        std::string d = "no mapping for host " + (h->qhost.empty() ? std::string("(none)") : h->qhost);
        /* a body we would have to skip: simpler and safe to close */
        answer(h, 404, d.c_str(), h->qkeep && !has_body);
        return;
    }
    h->qmap = r->name;
    /* a kept stream serves the next request only if it goes to the same
     * mapping and the service has neither closed nor sent anything since */
    if (h->s && (h->rt != r || h->st != r->t || h->sidx != r->idx || h->s->fin_recv || stream_rx_pending(h->s)))
        drop_stream(h);
    bool kept = h->s != nullptr;
    if (!h->s && open_upstream(h, r) < 0) {
        answer(h, 502, "the client's tunnel is full (max_streams)", false);
        return;
    }

    static const char *const skip[] = {"X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", nullptr};
    std::string &out = head_out;   /* kept: no allocation per request */
    out.clear();
    /* the user's version: an HTTP/1.0 user must not get a chunked answer */
    http_write_request_line(&out, q.method, target, q.minor);
    /* the mapping's rules replace fields: leave those out of the copy */
    static std::vector<const char *> sk;
    sk.assign(skip, skip + 3);
    if (!r->host.empty() || authority.p)
        sk.push_back("Host");
    for (auto &rule : r->req_rules)
        sk.push_back(rule.first.c_str());
    sk.push_back(nullptr);
    http_copy_fields(&out, q, (mi.body == HTTP_BODY_CHUNKED ? HTTP_KEEP_TE : 0) | (mi.upgrade ? HTTP_KEEP_UPGRADE : 0),
                     sk.data());
    added.clear();
    if (!r->host.empty())
        add_field(http_cstr("Host"), http_sstr(r->host));
    else if (authority.p)
        add_field(http_cstr("Host"), authority);
    /* a rule naming one of these (to set or remove it) wins over ours */
    if (!has_rule(r->req_rules, "X-Forwarded-For")) {
        /* every field line of the list, in order (RFC 9110 5.3), then us */
        xff_list.clear();
        for (size_t i = 0; i < q.num_headers; i++) {
            const http_header &f = q.headers[i];
            if (f.value.n && http_ieq_lit(f.name, "X-Forwarded-For"))
                xff_list.append(f.value.p, f.value.n).append(", ");
        }
        xff_list += h->peer_ip;
        add_field(http_cstr("X-Forwarded-For"), http_sstr(xff_list));
    }
    if (!has_rule(r->req_rules, "X-Forwarded-Proto"))
        add_field(http_cstr("X-Forwarded-Proto"), h->https ? http_cstr("https") : http_cstr("http"));
    if (!has_rule(r->req_rules, "X-Forwarded-Host"))
        add_field(http_cstr("X-Forwarded-Host"), host.p ? host : http_cstr(""));
    add_rules(r->req_rules);
    add_field(http_cstr("Connection"), mi.upgrade ? http_cstr("upgrade") : http_cstr("keep-alive"));
    http_write_fields(&out, added.data(), added.size() / 2);
    http_write_end(&out);
    /* what stream credit and tunnel room allow goes now; forward_body()
     * sends the rest */
    h->qout.assign(out, send_head(h, out.data(), out.size()), std::string::npos);
    /* a service may close a kept connection just as our request goes on
     * it (its keep-alive timeout): one without a body that asks for no
     * change (RFC 9110 9.2.2) is sent again, as nginx does */
    if (kept && !has_body && !mi.upgrade && idempotent(q.method))
        h->again = out;
    else
        h->again.clear();
    head_out_done();
    h->rs = R_HEAD;
    h->rbuf.clear();
    h->rlast = 0;
    log_debug("http %s: %s host=%s -> %s", h->peer.c_str(), h->qline.c_str(), h->qhost.c_str(),
              r->name.c_str());
}

/* Try to parse a request head from in; act on it. Returns true when
 * something happened (the caller loops). */
/* The access line of a request refused before it was parsed: nothing of
 * an earlier request on the connection in it. */
static void unparsed_request(hsess *h, size_t len)
{
    h->qline = "-";
    h->qmap = "-";
    h->qstart = h->head_since ? h->head_since : now_ms();
    h->qbytes_in = len;
    h->qbytes_out = 0;
}

static bool read_head(hsess *h)
{
    if (h->in.data == 0 || out_busy(h))
        return false;
    iovec iov[2];
    int n = ring_data_spans(&h->in, 0, h->in.data, iov);
    const char *buf;
    size_t len = h->in.data < HTTP_MAX_HEAD ? h->in.data : HTTP_MAX_HEAD;
    if (n == 1) {
        buf = (const char *)iov[0].iov_base;
    } else {
        ring_peek(&h->in, 0, head_scratch, len);
        buf = head_scratch;
    }
    int r = http_parse_request(buf, len, &req_scratch, h->last_len < len ? h->last_len : 0);
    if (r == HTTP_PARTIAL) {
        h->last_len = len;
        if (http_head_over_limit(r, len)) {
            unparsed_request(h, len);
            answer(h, 431, "request head over 64 KiB", false);
            return true;
        }
        return false;
    }
    h->last_len = 0;
    if (r == HTTP_TOO_MANY_HEADERS) {
        unparsed_request(h, len);
        answer(h, 431, "too many header fields", false);
        return true;
    }
    http_msg_info mi;
    if (r < 0 || http_request_framing(req_scratch, &mi) < 0) {
        log_info("http %s: malformed request: %s", h->peer.c_str(), r < 0 ? "bad head" : mi.error);
        unparsed_request(h, r < 0 ? len : (size_t)r);
        answer(h, 400, r < 0 ? "malformed request" : mi.error, false);
        return true;
    }
    timer_cancel(&h->head_timer);
    start_request(h, req_scratch, mi, (size_t)r);
    /* the head's views point into buf: consume only after the rewrite */
    ring_consume(&h->in, (size_t)r);
    if (h->qs == Q_HEAD) {
        /* answered already (404, keep-alive): idle unless more follows */
        h->head_since = h->in.data ? h->idle_since : 0;
        arm_head_timer(h);
    }
    forward_body(h);
    return true;
}

/* Response bytes: the head (staged in rbuf until whole), then the body
 * under its framing. Returns bytes of p taken. */
static size_t resp_body(hsess *h, const char *p, size_t n)
{
    /* most answers fit the first size; a big one grows out once (a
     * failure only means smaller steps) */
    if (ring_room(&h->out) < n && h->out.size < OUT_RING)
        ring_grow(&h->out, OUT_RING);
    size_t room = ring_room(&h->out), take;
    if (h->rs == R_RAW || h->rbody == HTTP_BODY_CLOSE) {
        take = n < room ? n : room;
    } else if (h->rbody == HTTP_BODY_LENGTH) {
        take = n < room ? n : room;
        if (take > h->rleft)
            take = (size_t)h->rleft;
        h->rleft -= take;
    } else if (h->rbody == HTTP_BODY_CHUNKED) {
        ssize_t sc = http_chunked_scan(&h->rch, p, n < room ? n : room);
        if (sc < 0) {
            log_info("http %s: bad chunked response from mapping %s", h->peer.c_str(), h->qmap.c_str());
            drop_stream(h);
            h->close_after = true;
            h->qs = Q_DONE;
            h->rs = R_IDLE;
            return n;
        }
        take = (size_t)sc;
    } else {
        take = 0;
    }
    out_put(h, p, take);
    return take;
}

static bool response_complete(const hsess *h)
{
    if (h->rs != R_BODY)
        return false;
    switch (h->rbody) {
    case HTTP_BODY_NONE: return true;
    case HTTP_BODY_LENGTH: return h->rleft == 0;
    case HTTP_BODY_CHUNKED: return h->rch.done;
    default: return false;   /* CLOSE: ends with the stream */
    }
}

static void response_finished(hsess *h, bool by_fin)
{
    access_line(h);
    h->rs = R_IDLE;
    /* anything the service sent past its response makes the stream unfit */
    bool reuse = !by_fin && h->rkeep && h->qs == Q_WAIT && h->qout.empty() && h->rbuf.empty() && h->s &&
                 stream_rx_pending(h->s) == 0 && !h->s->fin_recv;
    if (!reuse)
        drop_stream(h);
    /* a service closing its connection does not close the user's: the
     * next request gets a new stream */
    if (!h->ukeep || h->qs != Q_WAIT || by_fin) {
        h->close_after = true;
        h->qs = Q_DONE;
        return;
    }
    request_finished(h);
}

/* The first max bytes of b for a log line: printable ASCII as it is,
 * the rest as \xHH. */
/* resp_head() results besides a head length */
#define RH_PARTIAL 0      /* no end of head in buf yet */
#define RH_NO_ROOM (-1)   /* out has no room for the head yet */
#define RH_ANSWERED (-2)  /* the response was refused: our own answer went out */

/* Parse the response head at buf[0..len) (the first last bytes of it were
 * scanned before); write it rewritten. Returns the head's length once it
 * is queued for the user, or one of the RH_ codes. */
static ssize_t resp_head(hsess *h, const char *buf, size_t len, size_t last)
{
    int r = http_parse_response(buf, len, &resp_scratch, last);
    if (r == HTTP_PARTIAL) {
        if (http_head_over_limit(r, len)) {
            drop_stream(h);
            answer(h, 502, "response head over 64 KiB", false);
            return RH_ANSWERED;
        }
        return RH_PARTIAL;
    }
    http_msg_info mi;
    if (r < 0 || http_response_framing(resp_scratch.status, h->qhead, resp_scratch, &mi) < 0) {
        std::string begins;
        log_field(&begins, buf, len < 48 ? len : 48, true);
        log_info("http %s: malformed response from mapping %s: %s; it begins \"%s\"", h->peer.c_str(),
                 h->qmap.c_str(), r < 0 ? "bad head" : mi.error, begins.c_str());
        drop_stream(h);
        answer(h, 502, "malformed response from the service", false);
        return RH_ANSWERED;
    }
    /* the stream (and with it the route) may be gone already while its
     * whole answer waits here: send it, without rules then */
    static const std::vector<std::pair<std::string, std::string>> none;
    const std::vector<std::pair<std::string, std::string>> &rules = h->rt ? h->rt->resp_rules : none;
    bool interim = resp_scratch.status >= 100 && resp_scratch.status < 200 && resp_scratch.status != 101;
    bool upgrade = resp_scratch.status == 101 && h->qupgrade;
    if (resp_scratch.status == 101 && !h->qupgrade) {
        log_info("http %s: mapping %s switched protocols unasked", h->peer.c_str(), h->qmap.c_str());
        drop_stream(h);
        answer(h, 502, "the service switched protocols unasked", false);
        return RH_ANSWERED;
    }
    /* RFC 9110 15.2: no 1xx goes to an HTTP/1.0 user */
    if (interim && h->qminor == 0) {
        h->rs = R_HEAD;
        return r;
    }
    /* the body goes as the service coded it: Transfer-Encoding stays (for
     * HEAD and 304 it describes the body a GET would get) */
    std::string &out = head_out;
    out.clear();
    http_write_status_line(&out, 1, resp_scratch.status, resp_scratch.reason);
    static std::vector<const char *> sk;   /* kept: no allocation per response */
    sk.clear();
    sk.push_back("Server");
    for (auto &rule : rules)
        sk.push_back(rule.first.c_str());
    sk.push_back(nullptr);
    http_copy_fields(&out, resp_scratch, HTTP_KEEP_TE | (upgrade ? HTTP_KEEP_UPGRADE : 0), sk.data());
    added.clear();
    if (!has_rule(rules, "Server"))
        add_field(http_cstr("Server"), http_cstr("wmproxy"));
    add_rules(rules);
    /* a body ended by the close can only end the user's connection too */
    bool keep = h->qkeep && mi.body != HTTP_BODY_CLOSE && !h->draining;
    if (upgrade)
        add_field(http_cstr("Connection"), http_cstr("upgrade"));
    else if (!interim)
        add_field(http_cstr("Connection"), keep ? http_cstr("keep-alive") : http_cstr("close"));
    http_write_fields(&out, added.data(), added.size() / 2);
    http_write_end(&out);
    if (out.size() > ring_room(&h->out) && h->out.size < OUT_RING)
        ring_grow(&h->out, OUT_RING);   /* a head of over OUT_MIN */
    if (out.size() > ring_room(&h->out)) {
        head_out_done();
        return RH_NO_ROOM;   /* wait for the user to read */
    }
    out_put(h, out.data(), out.size());
    head_out_done();
    if (interim) {
        h->rs = R_HEAD;   /* 100 Continue and friends: the real answer follows */
        return r;
    }
    h->status = resp_scratch.status;
    h->ukeep = keep;
    h->rkeep = mi.keep_alive;
    if (upgrade) {
        h->rs = R_RAW;
        h->qs = Q_RAW;
        return r;
    }
    h->rbody = mi.body;
    h->rleft = mi.length;
    h->rch = http_chunked{};
    h->rs = R_BODY;
    return r;
}

/* Move what the stream delivered (staged, then buffered in the stream)
 * through the response state machine into out. */
static void pump_response(hsess *h)
{
    if (h->rs == R_IDLE) {
        /* a stream kept between requests: the service closed it, or sent
         * what nobody asked for */
        if (h->s && (h->s->fin_recv || stream_rx_pending(h->s)))
            drop_stream(h);
        return;
    }
    if (!out_reserve(h, 0))
        return hs_close(h);
    bool head_partial = false;   /* the staged head, scanned last, is incomplete */
    for (;;) {
        if (h->rs == R_IDLE || h->closed)
            return;
        if (h->rs == R_HEAD) {
            if (!h->rbuf.empty()) {
                ssize_t r = resp_head(h, h->rbuf.data(), h->rbuf.size(), h->rlast);
                head_partial = r == RH_PARTIAL;
                if (r > 0) {
                    h->rbuf.erase(0, (size_t)r);
                    h->rlast = 0;
                }
                if (r == RH_NO_ROOM)
                    break;   /* again once the user read */
                if (r != RH_PARTIAL)
                    continue;
                h->rlast = h->rbuf.size();
            }
            if (!h->s || stream_rx_pending(h->s) == 0 || h->rbuf.size() >= HTTP_MAX_HEAD)
                break;
            h->again.clear();   /* the service answers: never sent twice */
            iovec iov[2];
            int n = stream_rx_spans(h->s, iov);
            size_t scanned = 0;
            if (h->rbuf.empty()) {
                /* most heads arrive whole: read them where the stream
                 * keeps them, and stage only one that is split */
                ssize_t r = resp_head(h, (const char *)iov[0].iov_base, iov[0].iov_len, 0);
                if (r > 0)
                    stream_rx_consume(h->s, (size_t)r);
                if (r == RH_NO_ROOM)
                    break;
                if (r != RH_PARTIAL)
                    continue;
                scanned = iov[0].iov_len;
            }
            /* stage more of the head */
            size_t took = 0;
            for (int i = 0; i < n && h->rbuf.size() < HTTP_MAX_HEAD; i++) {
                size_t l = iov[i].iov_len;
                if (l > HTTP_MAX_HEAD - h->rbuf.size())
                    l = HTTP_MAX_HEAD - h->rbuf.size();
                h->rbuf.append((const char *)iov[i].iov_base, l);
                took += l;
            }
            stream_rx_consume(h->s, took);
            if (scanned)
                h->rlast = scanned < h->rbuf.size() ? scanned : h->rbuf.size();
            continue;
        }
        /* body or raw: a response without a body (204, 304, HEAD,
         * Content-Length: 0) is complete as soon as its head is out */
        if (response_complete(h)) {
            response_finished(h, false);
            continue;
        }
        /* staged bytes first */
        if (!h->rbuf.empty()) {
            size_t t = resp_body(h, h->rbuf.data(), h->rbuf.size());
            h->rbuf.erase(0, t);
            if (response_complete(h))
                continue;
            if (!h->rbuf.empty())
                break;
            continue;
        }
        if (!h->s || stream_rx_pending(h->s) == 0)
            break;
        iovec iov[2];
        stream_rx_spans(h->s, iov);
        size_t t = resp_body(h, (const char *)iov[0].iov_base, iov[0].iov_len);
        if (!h->s)
            break;
        stream_rx_consume(h->s, t);
        if (response_complete(h))
            continue;
        if (t < iov[0].iov_len)
            break;
    }
    /* the stream ended: a close-delimited body is complete, others are cut.
     * An orphan's end is only its tunnel's closing (a stop): the service
     * did not close, so a close-delimited body is cut too. */
    if (!h->s || !stream_rx_done(h->s) || h->closed)
        return;
    bool orphan = stream_orphaned(h->s);
    if (h->rs == R_HEAD && !h->rbuf.empty() && head_partial) {
        /* part of a head, and nothing more will come */
        drop_stream(h);
        h->rbuf.clear();
        answer(h, 502, orphan ? "the tunnel to the service closed in the middle of the answer's head"
                              : "the service closed the connection in the middle of its answer's head", false);
        return;
    }
    if (h->rbuf.empty()) {
        if (h->rs == R_BODY && h->rbody == HTTP_BODY_CLOSE && !orphan) {
            response_finished(h, true);
        } else if (h->rs == R_RAW) {
            h->close_after = true;
        } else if (h->rs == R_HEAD) {
            if (!orphan && send_again(h, h->rt))
                return;
            drop_stream(h);
            answer(h, 502, orphan ? "the tunnel to the service closed before it answered"
                                  : "the service closed the connection without answering", false);
        } else if (h->rs == R_BODY) {
            log_info("http %s: response from mapping %s cut short%s", h->peer.c_str(), h->qmap.c_str(),
                     orphan ? " by the tunnel's closing" : "");
            drop_stream(h);
            cut_answer(h);   /* one ended by the close with a reset */
        }
    }
}

/* Ready for the next request on this connection. */
static void request_finished(hsess *h)
{
    if (h->draining) {
        h->close_after = true;
        h->qs = Q_DONE;
        return;
    }
    h->qs = Q_HEAD;
    h->qhead = false;
    h->qline.clear();
    h->qout.clear();
    h->idle_since = now_ms();
    /* a pipelined head already begun is on the clock from now; otherwise
     * the connection is idle until its next byte (read_head() says again
     * once it consumed the head it answered) */
    h->head_since = h->in.data ? h->idle_since : 0;
    arm_head_timer(h);
}

static void head_timeout(void *arg)
{
    hsess *h = (hsess *)arg;
    if (h->closed)
        return;
    if (h->lingering)
        return hs_close(h);
    if (h->qs != Q_HEAD)
        return;
    if (h->tr->handshake() != 1) {
        log_info("https %s: TLS handshake not complete in time", h->peer.c_str());
        return hs_close(h);
    }
    uint64_t due = h->head_since ? h->head_since + h->hc.header_timeout_ms
                                 : h->idle_since + h->hc.keepalive_timeout_ms;
    if ((int64_t)(due - now_ms()) > 0) {
        arm_head_timer(h);
        return;
    }
    if (h->head_since == 0) {
        log_debug("http %s: keep-alive connection idle, closing", h->peer.c_str());
        h->close_after = true;
        h->qs = Q_DONE;
    } else {
        unparsed_request(h, h->in.data);
        answer(h, 408, "request head not received in time", false);
    }
    task_post(&h->run);
}

/* Our side is done: shut our direction and read (and drop) what the user
 * still sends until its EOF, for LINGER_MS at most. Closing with unread
 * bytes would make the kernel send a reset, which can destroy the answer
 * we just wrote before the user read it (the 400, 413 and 431 cases). */
static void linger(hsess *h)
{
    size_t got = 0;
    while ((h->can_read || h->tr->pending()) && got < PASS_BUDGET) {
        iovec iov = {head_scratch, sizeof head_scratch};
        ssize_t r = h->tr->readv(&iov, 1);
        if (r > 0) {
            got += (size_t)r;
        } else if (r == IO_AGAIN) {
            h->can_read = false;
        } else {
            return hs_close(h);   /* the user's EOF, or an error */
        }
    }
    if (h->tr->buffered() && h->tr->flush() == IO_ERR)
        return hs_close(h);
    if (got >= PASS_BUDGET)
        task_post(&h->run);
}

static void start_linger(hsess *h)
{
    drop_stream(h);
    /* our close_notify (https) and FIN go out even to a user who finished
     * sending: it still reads to the end of ours */
    if (h->tr->shutdown_write() == IO_ERR || h->down_eof)
        return hs_close(h);
    h->lingering = true;
    ring_free(&h->in);
    ring_free(&h->out);
    timer_arm(&h->head_timer, LINGER_MS);
    linger(h);
}

/* Between requests nothing is buffered: give the memory back, so an idle
 * keep-alive connection costs a few hundred bytes. */
static void release_idle(hsess *h)
{
    if (h->qs != Q_HEAD || h->rs != R_IDLE)
        return;
    if (h->out.area && h->out.data == 0)
        ring_free(&h->out);
    if (h->in.area && h->in.data == 0)
        ring_free(&h->in);
    if (h->rbuf.capacity() > 64 && h->rbuf.empty())
        std::string().swap(h->rbuf);
    if (h->qout.capacity() > 64 && h->qout.empty())
        std::string().swap(h->qout);
    h->tr->release();
}

/* Waiting for the user to read what we wrote, or to send the rest of its
 * body? */
static bool waits_on_user(const hsess *h)
{
    return (!h->can_write && (h->out.data || h->tr->buffered())) ||
           (h->qs == Q_BODY && h->in.data == 0 && !h->can_read && !h->tr->pending());
}

static void stall_timeout(void *arg)
{
    hsess *h = (hsess *)arg;
    if (h->closed || h->lingering || !waits_on_user(h))
        return;   /* stall_check() arms it again when needed */
    uint64_t due = h->user_io + USER_STALL_MS;
    if ((int64_t)(due - now_ms()) > 0) {
        timer_arm_at(&h->stall_timer, due);
        return;
    }
    log_info("http %s: no progress with the user for %ds, closing", h->peer.c_str(), USER_STALL_MS / 1000);
    hs_close(h);
}

/* Armed lazily: only while the session waits on the user, re-checked
 * when it fires rather than pushed back at every byte. */
static void stall_check(hsess *h)
{
    if (!h->closed && !h->lingering && !h->stall_timer.armed() && waits_on_user(h))
        timer_arm_at(&h->stall_timer, h->user_io + USER_STALL_MS);
}

/* A failed TLS handshake is worth an operator's notice however it was
 * found (by readv when its bytes came with the accept); after it, an error
 * is only a user who went away. */
static void log_io_error(hsess *h)
{
    if (h->https && !h->tls_up)
        log_info("https %s: %s", h->peer.c_str(), h->tr->error());
    else
        log_debug("http %s: %s", h->peer.c_str(), h->tr->error());
}

static void hs_pump(hsess *h)
{
    size_t moved = 0;
    for (int round = 0; !h->closed; round++) {
        bool progress = false;

        /* to the user */
        pump_response(h);
        if (h->closed)
            return;
        while (h->can_write && h->out.data) {
            iovec iov[2];
            int n = ring_data_spans(&h->out, 0, h->out.data, iov);
            ssize_t w = h->tr->writev(iov, n);
            if (w > 0) {
                ring_consume(&h->out, (size_t)w);
                moved += (size_t)w;
                h->user_io = now_ms();
                progress = true;
            } else if (w == IO_AGAIN) {
                h->can_write = false;
            } else {
                log_io_error(h);
                return hs_close(h);
            }
        }
        if (h->tr->buffered() && h->tr->flush() == IO_AGAIN)
            h->can_write = false;
        if (h->out.data == 0 && h->close_after && !h->tr->buffered()) {
            if (!h->reset_after)
                return start_linger(h);
            sock_linger0(h->tr->fd);
            return hs_close(h);
        }

        /* from the user: a request's head and body; while a response is
         * on its way, pipelined requests up to a head's worth */
        bool want_in = h->qs == Q_HEAD || h->qs == Q_BODY || h->qs == Q_RAW;
        if ((h->can_read || h->tr->pending()) && h->qs != Q_DONE && !h->down_eof && !h->in.area &&
            ring_alloc(&h->in, IN_SMALL) < 0) {
            log_error("http %s: out of memory", h->peer.c_str());
            return hs_close(h);
        }
        while ((h->can_read || h->tr->pending()) && !h->down_eof && h->qs != Q_DONE &&
               (want_in || h->in.data < HTTP_MAX_HEAD)) {
            if (ring_room(&h->in) == 0) {
                if (h->in.size >= IN_RING || ring_grow(&h->in, IN_RING) < 0)
                    break;
            }
            iovec iov[2];
            size_t room = ring_room(&h->in);
            int n = ring_room_spans(&h->in, 0, room, iov);
            ssize_t r = h->tr->readv(iov, n);
            if (r > 0) {
                /* a short read drained the socket: wait for the next edge
                 * rather than pay a read that says EAGAIN */
                if ((size_t)r < room && !h->rdhup && h->tr->short_read_drains())
                    h->can_read = false;
                ring_produce(&h->in, (size_t)r);
                moved += (size_t)r;
                h->tls_up = true;
                h->user_io = now_ms();
                progress = true;
                if (h->qs == Q_HEAD && h->head_since == 0) {
                    h->head_since = now_ms();   /* a new head begins: on the clock */
                    arm_head_timer(h);
                }
                if (!want_in)
                    break;
            } else if (r == 0) {
                h->down_eof = true;
                progress = true;
            } else if (r == IO_AGAIN) {
                h->can_read = false;
            } else {
                log_io_error(h);
                return hs_close(h);
            }
        }
        bool head_done = h->qs == Q_HEAD && read_head(h);
        if (head_done)
            progress = true;
        if (h->qs == Q_BODY || h->qs == Q_RAW || !h->qout.empty()) {
            size_t before = h->in.data + h->qout.size();
            forward_body(h);
            if (h->in.data + h->qout.size() != before)
                progress = true;
        }
        if (h->down_eof && !h->closed) {
            if ((h->qs == Q_HEAD && !head_done && !out_busy(h)) || h->qs == Q_DONE) {
                /* no head can complete now: answer what was asked, close */
                if (h->out.data == 0 && !h->tr->buffered())
                    return hs_close(h);
                h->close_after = true;
                h->qs = Q_DONE;
            } else if (h->qs == Q_RAW && h->in.data == 0) {
                if (!h->s)
                    h->close_after = true;
                else if (!h->s->fin_sent)
                    stream_send_fin(h->s);
            } else if (h->qs == Q_BODY && h->in.data == 0) {
                log_info("http %s: request body cut short", h->peer.c_str());
                return hs_close(h);
            }
            /* Q_WAIT: the user half-closed after its request; answer it */
        }
        if (!progress)
            break;
        if (moved >= PASS_BUDGET || round == 64) {
            task_post(&h->run);   /* fairness: the rest in the next pass */
            return;
        }
    }
    if (!h->closed)
        release_idle(h);
}

static void hs_run(void *arg)
{
    hsess *h = (hsess *)arg;
    if (h->closed)
        return;
    if (h->lingering)
        return linger(h);
    hs_pump(h);
    stall_check(h);
}

void hsess::on_io(unsigned ev)
{
    if (closed)
        return;
    if (ev & (EV_READ | EV_HUP | EV_ERR | EV_RDHUP))
        can_read = true;
    if (ev & (EV_RDHUP | EV_HUP | EV_ERR))
        rdhup = true;
    if (ev & (EV_WRITE | EV_HUP | EV_ERR))
        can_write = true;
    int hr = tr->handshake();
    if (hr == IO_ERR) {
        log_io_error(this);
        return hs_close(this);
    }
    if (hr == 1)
        tls_up = true;
    hs_run(this);
}

size_t hsess::on_data(const iovec *, int, size_t)
{
    /* take nothing directly: the response is parsed from the stream's
     * buffer in pump_response(), which also writes to the user */
    task_post(&run);
    return 0;
}

void hsess::on_rx_ready()
{
    task_post(&run);
}

void hsess::on_writable()
{
    task_post(&run);
}

void hsess::on_reset(uint8_t code, const char *why)
{
    route_ref r;
    r.swap(rt);
    s = nullptr;
    st = nullptr;
    if (closed)
        return;
    log_debug("http %s: stream reset: %s", peer.c_str(), why);
    /* the service reset a kept connection as the request came */
    if (code == RST_RESET && send_again(this, r))
        return;
    if (rs == R_HEAD) {
        /* no answer began yet (a 100 Continue at most): answer ourselves */
        int st = code == RST_TIMEOUT ? 504 : 502;
        std::string d = code == RST_TIMEOUT ? "the service did not accept the connection in time"
                        : code == RST_CANCEL || code == RST_TUNNEL ? std::string("the tunnel to the service was lost (") + why + ")"
                                             : std::string("the service is unreachable (") + why + ")";
        log_info("http %s: mapping %s: %d %s", peer.c_str(), qmap.c_str(), st, d.c_str());
        answer(this, st, d.c_str(), false);
    } else if (rs != R_IDLE) {
        cut_answer(this);
    }
    task_post(&run);
}

/* The tunnel closed cleanly (the client's stop or reload): an answer under
 * way, or whose first bytes came, goes on from what the stream holds, then
 * ends as the stream's end (FIN) makes it end; anything else is as a
 * reset. */
bool hsess::on_orphan()
{
    /* an answer under way, or one whose head arrived with the GOAWAY */
    if (closed || !(rs == R_BODY || rs == R_RAW || (rs == R_HEAD && stream_rx_pending(s))))
        return false;
    st = nullptr;
    task_post(&run);
    return true;
}

void http_serve(transport *tr, const std::string &peer, bool https, const http_proxy_conf &hc)
{
    hsess *h = new hsess;
    h->tr = tr;
    h->peer = peer;
    size_t colon = peer.rfind(':');
    h->peer_ip = peer.substr(0, colon);
    if (h->peer_ip.size() > 2 && h->peer_ip[0] == '[')
        h->peer_ip = h->peer_ip.substr(1, h->peer_ip.size() - 2);
    h->https = https;
    h->hc = hc;
    h->run.fn = hs_run;
    h->run.arg = h;
    h->head_timer.fn = head_timeout;
    h->head_timer.arg = h;
    h->stall_timer.fn = stall_timeout;
    h->stall_timer.arg = h;
    h->user_io = now_ms();
    if (reactor_add(tr->fd, h) < 0) {
        log_error("http %s: reactor_add: %s", peer.c_str(), strerror(errno));
        delete h;
        return;
    }
    h->next = sessions;
    if (sessions)
        sessions->prev = h;
    sessions = h;
    nsessions++;
    /* a new connection's first head is on the clock from the accept */
    h->head_since = now_ms();
    arm_head_timer(h);
    task_post(&h->run);
}

void http_stop(bool drain)
{
    hsess *next;
    for (hsess *h = sessions; h; h = next) {
        next = h->next;
        if (!drain) {
            hs_close(h);
        } else if (h->qs == Q_HEAD && h->rs == R_IDLE) {
            /* no request in flight (a head may have begun: it would only
             * be answered with a close) */
            if (h->out.data == 0 && !h->tr->buffered()) {
                hs_close(h);
            } else {
                h->close_after = true;
                h->qs = Q_DONE;
                task_post(&h->run);
            }
        } else {
            /* finish the request in flight, answered with Connection: close */
            h->draining = true;
        }
    }
}
