/*
 * server.cpp - the server role: accepts tunnels on bind_addr (and forward
 * proxy users there), registers the clients' mappings, and turns each
 * public connection into a stream on the tunnel of the client whose
 * mapping owns it. Also the status listener and reload.
 */
#include "roles.h"
#include "http.h"
#include "http_proxy.h"
#include "log.h"
#include "mux.h"
#include "proxy.h"
#include "relay.h"
#include "sock.h"
#include "tls.h"
#include "udp.h"
#include "version.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <map>
#include <set>
#include <vector>

#define PREAUTH_MIN 64        /* connections not yet authenticated: at least this many */

struct listener;

enum listener_kind { LK_TUNNEL, LK_TCP, LK_HTTP, LK_HTTPS, LK_STATUS };

struct listener : acceptor, deferred {
    listener_kind kind = LK_TUNNEL;
    uint16_t port = 0;
    void on_accept(int cfd, const sockaddr_buf &peer) override;
    bool accepting() const override { return !doomed; }
    ~listener() override { acceptor_stop(this); }
};

/* Who owns a public TCP port (map_tcp_bind, map_proxy_bind, a remote_port). */
struct port_owner {
    tunnel *t = nullptr;
    uint32_t idx = 0;          /* the client's mapping index */
    std::string name;
    uint8_t mode = MODE_TCP;   /* MODE_TCP or MODE_PROXY, for access lines */
    listener *l = nullptr;     /* opened for this mapping (remote_port), else shared */
};

struct udp_owner {
    tunnel *t = nullptr;
    udp_port *u = nullptr;
};

/* One mapping a client registered, and what it holds. */
struct reg {
    uint32_t idx = 0;
    register_msg m;
    uint16_t port = 0;         /* tcp/proxy: public TCP port; udp: UDP port */
};

/* Per tunnel: the peer and what it registered. */
struct client_info {
    std::string peer;
    std::vector<reg> regs;
};

struct counters {
    uint64_t accepted = 0, refused = 0;      /* public connections */
    uint64_t handshake_failures = 0;
    uint64_t reloads = 0;
    uint64_t bytes_in = 0, bytes_out = 0;    /* of tunnels that are gone */
    uint64_t tunnels_total = 0;
};

struct server : tunnel_owner {
    conf cf;
    tunnel_conf tcf;
    tls_ctx *tls = nullptr;
    tls_ctx *https_tls = nullptr;           /* map_cert/map_key, by SNI */
    bool draining = false;                  /* stopping (QUIT): no new connections or streams */
    listener *tunnel_l = nullptr;
    listener *tcp_l = nullptr;              /* map_tcp_bind */
    listener *proxy_l = nullptr;            /* map_proxy_bind */
    listener *http_l = nullptr, *https_l = nullptr;
    listener *status_l = nullptr;
    std::map<listener *, port_owner> owners; /* by public listener (two may share a port number) */
    std::map<uint16_t, udp_owner> uowners;  /* by public UDP port */
    std::set<tunnel *> tunnels;
    size_t preauth = 0;                     /* connections not authenticated yet */
    counters n;
    uint64_t started = 0;

    bool admit(tunnel *t, std::string *why) override;
    void on_ready(tunnel *t) override;
    int on_register(tunnel *t, uint32_t idx, const register_msg &m, std::string *why) override;
    void on_registered(tunnel *, uint32_t, uint8_t, const std::string &) override {}
    void on_unregister(tunnel *t, uint32_t idx) override;
    void on_open(tunnel *t, stream *s, const open_msg &m) override;
    void on_dgram(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len) override
    {
        udp_port_reply(t, flow, idx, p, len);
    }
    void on_down(tunnel *t, const char *why, bool auth_failure) override;
};

static server *srv;

static size_t preauth_max(void)
{
    return srv->cf.max_clients > PREAUTH_MIN ? srv->cf.max_clients : PREAUTH_MIN;
}

static listener *listen_on(const addr_conf &a, listener_kind kind, std::string *err)
{
    int fd = sock_listen(a, SOCK_STREAM, err);
    if (fd < 0)
        return nullptr;
    listener *l = new listener;
    l->kind = kind;
    l->port = a.port;
    acceptor_start(l, fd, a.text());
    return l;
}

static std::string holder(tunnel *t)
{
    return ((client_info *)t->user)->peer;
}

/* Fill the PROXY-protocol addresses of an open_msg from a connection. */
static void fill_addrs(int fd, const sockaddr_buf &peer, open_msg *m)
{
    sockaddr_buf local;
    local.len = sizeof local.ss;
    getsockname(fd, (sockaddr *)&local.ss, &local.len);
    const sockaddr *ps = peer.sa(), *ls = local.sa();
    if (ps->sa_family == AF_INET && ls->sa_family == AF_INET) {
        m->family = 4;
        memcpy(m->src, &((const sockaddr_in *)ps)->sin_addr, 4);
        memcpy(m->dst, &((const sockaddr_in *)ls)->sin_addr, 4);
    } else if (ps->sa_family == AF_INET6 && ls->sa_family == AF_INET6) {
        const in6_addr *pa = &((const sockaddr_in6 *)ps)->sin6_addr;
        const in6_addr *la = &((const sockaddr_in6 *)ls)->sin6_addr;
        if (IN6_IS_ADDR_V4MAPPED(pa) && IN6_IS_ADDR_V4MAPPED(la)) {
            m->family = 4;
            memcpy(m->src, pa->s6_addr + 12, 4);
            memcpy(m->dst, la->s6_addr + 12, 4);
        } else {
            m->family = 6;
            memcpy(m->src, pa, 16);
            memcpy(m->dst, la, 16);
        }
    }
    m->sport = sock_addr_port(ps);
    m->dport = sock_addr_port(ls);
}

/* r->what is "MODE MAPPING" */
static void public_done(relay *r)
{
    access_log("%s %s - %llu %llu %llums", r->peer.c_str(), r->what.c_str(), (unsigned long long)r->up,
               (unsigned long long)r->down, (unsigned long long)(now_ms() - r->started));
}

static void accept_public(listener *l, int fd, const sockaddr_buf &peer)
{
    auto it = srv->owners.find(l);
    std::string who = sock_addr_text(peer.sa());
    if (it == srv->owners.end() || !it->second.t) {
        log_info("refused %s on port %u: no client serves it", who.c_str(), l->port);
        access_log("%s %s - refused 0 0 0ms", who.c_str(), l == srv->proxy_l ? "proxy" : "tcp");
        srv->n.refused++;
        close(fd);
        return;
    }
    port_owner &o = it->second;
    open_msg m;
    m.mapping = o.idx;
    fill_addrs(fd, peer, &m);
    stream *s = tunnel_open(o.t, m, nullptr);
    if (!s) {
        log_warn("refused %s on port %u: max_streams (%u) reached", who.c_str(), l->port, srv->cf.max_streams);
        access_log("%s %s %s refused 0 0 0ms", who.c_str(), conf_mode_name(o.mode), o.name.c_str());
        srv->n.refused++;
        close(fd);
        return;
    }
    srv->n.accepted++;
    log_debug("connection from %s on port %u: mapping %s of %s, stream %u", who.c_str(), l->port, o.name.c_str(),
              o.t->peer.c_str(), s->sid);
    relay *r = relay_new(fd, s, who);
    if (r) {
        r->what = std::string(conf_mode_name(o.mode)) + " " + o.name;
        r->done = public_done;
    }
}

static void accept_http(int fd, const sockaddr_buf &peer, bool https)
{
    sock_nodelay(fd);
    transport *tr = https ? tls_transport_new(srv->https_tls, fd, true, nullptr) : plain_transport_new(fd);
    if (!tr) {
        close(fd);
        return;
    }
    srv->n.accepted++;
    http_proxy_conf hc;
    hc.keepalive_timeout_ms = srv->cf.keepalive_timeout_ms;
    http_serve(tr, sock_addr_text(peer.sa()), https, hc);
}

static void accept_status(int fd, const sockaddr_buf &peer);

/*
 * A connection on bind_addr before we know what it is: TLS first when tc,
 * then its first bytes tell a tunnel client ("WMPX") from a forward-proxy
 * user (SOCKS5, CONNECT, an HTTP request).
 */
struct sniff_conn : io_handler, deferred {
    transport *tr = nullptr;
    std::string peer;
    uint8_t buf[4096];
    size_t len = 0;
    timer deadline;
    void on_io(unsigned events) override;
    ~sniff_conn() override
    {
        timer_cancel(&deadline);
        delete tr;
    }
};

static void sniff_done(sniff_conn *c)
{
    if (c->tr)
        reactor_del(c->tr->fd, c);
    timer_cancel(&c->deadline);
    srv->preauth--;
    defer_delete(c);
}

static void sniff_fail(sniff_conn *c, const char *why)
{
    srv->n.handshake_failures++;
    log_info("connection from %s on %s closed: %s", c->peer.c_str(), srv->cf.bind_addr.text().c_str(), why);
    sniff_done(c);
}

/* A client speaking the wrong transport is told in our own protocol before
 * the close: a plaintext tunnel client on a TLS port reads the GOAWAY and
 * logs why; a TLS client on a plaintext port sees bytes that are not TLS
 * and says so, instead of a bare "connection closed". */
static void tell_client(int fd, const char *why, uint8_t code = GA_PROTOCOL)
{
    uint8_t out[PREFACE_LEN + FRAME_HDR + 256];
    std::string p;
    code_encode(code, why, &p);
    preface_encode(out);
    frame_hdr_encode(out + PREFACE_LEN, (uint32_t)p.size(), FT_GOAWAY, 0, 0);
    memcpy(out + PREFACE_LEN + FRAME_HDR, p.data(), p.size());
    ssize_t n = write(fd, out, PREFACE_LEN + FRAME_HDR + p.size());
    (void)n;
}

static void sniff_decide(sniff_conn *c, proxy_kind k)
{
    if (k == PK_UNKNOWN) {
        char why[128];
        if (c->buf[0] == 0x16 && !srv->tls) {
            snprintf(why, sizeof why, "peer started a TLS handshake but this port is plaintext (tc = false)");
            tell_client(c->tr->fd, "this server does not speak TLS (set ts = false)");
        }
        else
            snprintf(why, sizeof why, "not a wmproxyd client nor a proxy request (first bytes %02x %02x %02x %02x)",
                     c->buf[0], c->len > 1 ? c->buf[1] : 0, c->len > 2 ? c->buf[2] : 0, c->len > 3 ? c->buf[3] : 0);
        return sniff_fail(c, why);
    }
    if (k == PK_TUNNEL) {
        /* max_clients is checked once the client authenticated (admit):
         * connections that never do cannot lock the clients out, and a
         * client that replaces its own dead tunnel is not refused */
        reactor_del(c->tr->fd, c);
        tunnel *t = tunnel_new(c->tr, srv->tcf, srv, c->peer, c->buf, c->len);
        c->tr = nullptr;
        if (!t) {
            log_error("tunnel from %s: out of memory", c->peer.c_str());
            return sniff_done(c);
        }
        /* the handshake deadline runs from the accept, not from here */
        timer_arm_at(&t->hs_timer, c->deadline.expire);
        client_info *ci = new client_info;
        ci->peer = c->peer;
        t->user = ci;
        srv->tunnels.insert(t);
        srv->n.tunnels_total++;
        srv->preauth++;   /* until on_ready or on_down */
        return sniff_done(c);
    }
    /* a protocol flag does not allow is answered by the proxy session
     * itself (403, SOCKS5 "not allowed"), so the user learns why */
    reactor_del(c->tr->fd, c);
    proxy_conf pc;
    pc.flag = srv->cf.flag;
    pc.username = srv->cf.username;
    pc.password = srv->cf.password;
    pc.connect_timeout_ms = srv->cf.connect_timeout_ms;
    pc.handshake_timeout_ms = srv->cf.handshake_timeout_ms;
    pc.where = "bind_addr";
    /* the user's handshake_timeout started at accept, not now */
    pc.first_deadline = c->deadline.armed() ? c->deadline.expire : now_ms();
    proxy_serve(c->tr, c->peer, c->buf, c->len, pc);
    c->tr = nullptr;
    sniff_done(c);
}

void sniff_conn::on_io(unsigned)
{
    if (doomed)
        return;
    int r = tr->handshake();
    if (r == IO_ERR) {
        if (srv->tls && !strcmp(tr->error(), "peer is not speaking TLS"))
            tell_client(tr->fd, "this server requires TLS (set ts = true)");
        return sniff_fail(this, tr->error());
    }
    if (r == IO_AGAIN) {
        if (tr->buffered() && tr->flush() == IO_ERR)
            return sniff_fail(this, tr->error());
        return;
    }
    while (len < sizeof buf) {
        iovec iov = {buf + len, sizeof buf - len};
        ssize_t n = tr->readv(&iov, 1);
        if (n > 0) {
            len += (size_t)n;
            proxy_kind k = proxy_sniff(buf, len);
            if (k != PK_PARTIAL)
                return sniff_decide(this, k);
            continue;
        }
        if (n == 0)
            return sniff_fail(this, len ? "closed before saying what it is" : "closed without a word");
        if (n == IO_AGAIN) {
            if (tr->buffered())
                tr->flush();
            if (!tr->pending())
                return;
            continue;
        }
        return sniff_fail(this, tr->error());
    }
}

static void accept_tunnel(int fd, const sockaddr_buf &peer)
{
    /* connections that have not authenticated are bounded in number (and
     * in time, by handshake_timeout): a flood of them cannot crowd out
     * the memory and descriptors of real clients */
    if (srv->preauth >= preauth_max()) {
        log_warn("refused connection from %s: %zu connections are still handshaking", sock_addr_text(peer.sa()).c_str(),
                 srv->preauth);
        srv->n.handshake_failures++;
        close(fd);
        return;
    }
    sniff_conn *c = new sniff_conn;
    c->peer = sock_addr_text(peer.sa());
    sock_nodelay(fd);
    c->tr = srv->tls ? tls_transport_new(srv->tls, fd, true, nullptr) : plain_transport_new(fd);
    if (!c->tr) {
        close(fd);
        delete c;
        return;
    }
    c->deadline.fn = [](void *arg) { sniff_fail((sniff_conn *)arg, "handshake timed out"); };
    c->deadline.arg = c;
    timer_arm(&c->deadline, srv->cf.handshake_timeout_ms);
    srv->preauth++;
    reactor_add(fd, c);
    c->on_io(EV_READ | EV_WRITE);
}

void listener::on_accept(int cfd, const sockaddr_buf &peer)
{
    if (kind == LK_TUNNEL)
        accept_tunnel(cfd, peer);
    else if (kind == LK_TCP)
        accept_public(this, cfd, peer);
    else if (kind == LK_STATUS)
        accept_status(cfd, peer);
    else
        accept_http(cfd, peer, kind == LK_HTTPS);
}

static bool same_client(const tunnel *a, const tunnel *b)
{
    static const uint8_t zero[16] = {};
    return memcmp(a->peer_id, zero, sizeof zero) != 0 && memcmp(a->peer_id, b->peer_id, sizeof zero) == 0;
}

/* max_clients counts the tunnels up, not one on_ready() will replace */
bool server::admit(tunnel *t, std::string *why)
{
    size_t n = 0;
    for (tunnel *o : tunnels)
        n += o != t && o->state == TS_READY && !same_client(o, t);
    if (n < cf.max_clients)
        return true;
    *why = "max_clients (" + std::to_string(cf.max_clients) + ") reached";
    log_warn("refused tunnel from %s: %s", t->peer.c_str(), why->c_str());
    return false;
}

void server::on_ready(tunnel *t)
{
    preauth--;
    /* the same client (its id) on a new connection: its address changed
     * and the old connection is dead without a FIN; replace it now rather
     * than refuse the mappings it still holds for 3 heartbeats */
    std::vector<tunnel *> old;
    for (tunnel *o : tunnels)
        if (o != t && o->state == TS_READY && same_client(o, t))
            old.push_back(o);
    for (tunnel *o : old) {
        log_info("tunnel from %s replaces the one from %s (same client)", t->peer.c_str(), o->peer.c_str());
        tunnel_close(o, GA_REPLACED, "replaced by a new connection from the same client");
    }
    std::string how = t->tr->describe();
    log_info("tunnel up peer=%s%s%s", t->peer.c_str(), how.empty() ? "" : " ", how.c_str());
}

/* A udp mapping: its remote_port (in allow_ports) or map_udp_bind. */
static int claim_udp(tunnel *t, uint32_t idx, const register_msg &m, std::string *why, uint16_t *port)
{
    const conf &cf = srv->cf;
    addr_conf a;
    if (m.remote_port) {
        if (!cf.port_allowed(m.remote_port)) {
            *why = "udp port " + std::to_string(m.remote_port) + " is not in allow_ports";
            return 1;
        }
        a.set = true;
        a.host = cf.map_udp_bind.set ? cf.map_udp_bind.host : "";
        a.port = m.remote_port;
    } else if (cf.map_udp_bind.set) {
        a = cf.map_udp_bind;
    } else {
        *why = "the server has no map_udp_bind";
        return 1;
    }
    auto it = srv->uowners.find(a.port);
    if (it != srv->uowners.end()) {
        *why = "udp port " + std::to_string(a.port) + " is held by client " + holder(it->second.t);
        return 1;
    }
    udp_port *u = udp_port_open(a, t, idx, m.udp_timeout_ms, m.name, why);
    if (!u)
        return 1;
    srv->uowners[a.port] = udp_owner{t, u};
    *port = a.port;
    return 0;
}

/* Give the public port of listener l (map_tcp_bind, map_proxy_bind) to
 * mapping idx of t. Returns 0, or 1 with *why. */
static int claim(listener *l, const char *key, tunnel *t, uint32_t idx, const register_msg &m, std::string *why,
                 uint16_t *port)
{
    if (!l) {
        *why = std::string("the server has no ") + key;
        return 1;
    }
    auto it = srv->owners.find(l);
    if (it != srv->owners.end()) {
        *why = std::string(key) + " is held by client " + holder(it->second.t);
        return 1;
    }
    port_owner &o = srv->owners[l];
    o.t = t;
    o.idx = idx;
    o.name = m.name;
    o.mode = m.mode;
    *port = l->port;
    return 0;
}

/* A tcp mapping with a remote_port of its own: a listener just for it. */
static int claim_port(tunnel *t, uint32_t idx, const register_msg &m, std::string *why, uint16_t *port)
{
    const conf &cf = srv->cf;
    uint16_t p = m.remote_port;
    if (!cf.port_allowed(p)) {
        *why = "port " + std::to_string(p) + " is not in allow_ports";
        return 1;
    }
    for (const auto &it : srv->owners)
        if (it.second.l && it.first->port == p) {
            *why = "port " + std::to_string(p) + " is held by client " + holder(it.second.t);
            return 1;
        }
    addr_conf a;
    a.set = true;
    a.host = cf.map_tcp_bind.set ? cf.map_tcp_bind.host : "";
    a.port = p;
    listener *l = listen_on(a, LK_TCP, why);
    if (!l)
        return 1;
    port_owner &o = srv->owners[l];
    o.t = t;
    o.idx = idx;
    o.name = m.name;
    o.mode = m.mode;
    o.l = l;
    *port = p;
    return 0;
}

int server::on_register(tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    client_info *ci = (client_info *)t->user;
    int st;
    uint16_t port = 0;
    std::string where;
    if (draining) {
        *why = "the server is stopping";   /* no new listeners during a drain */
        return 1;
    }
    /* what a client's file could not hold (its name and domains go into
     * logs and /status as they are) */
    bool name_ok = conf_valid_mapping_name(m.name);
    if (!name_ok || ((m.mode == MODE_HTTP || m.mode == MODE_HTTPS) && !conf_valid_domains(m.domains))) {
        *why = name_ok ? "bad domain name" : "bad mapping name";
        log_warn("mapping rejected index=%u peer=%s reason=\"%s\"", idx, t->peer.c_str(), why->c_str());
        return 1;
    }
    for (const reg &r : ci->regs)
        if (r.idx == idx) {
            *why = "mapping index " + std::to_string(idx) + " registered twice";
            log_warn("mapping rejected name=%s peer=%s reason=\"%s\"", m.name.c_str(), t->peer.c_str(), why->c_str());
            return 1;
        }
    switch (m.mode) {
    case MODE_UDP:
        st = claim_udp(t, idx, m, why, &port);
        where = "port=" + std::to_string(port);
        break;
    case MODE_TCP:
        st = m.remote_port ? claim_port(t, idx, m, why, &port) : claim(tcp_l, "map_tcp_bind", t, idx, m, why, &port);
        where = "port=" + std::to_string(port);
        break;
    case MODE_PROXY:
        st = claim(proxy_l, "map_proxy_bind", t, idx, m, why, &port);
        where = "port=" + std::to_string(port);
        if (st == 0 && m.rules.find("P open") != std::string::npos)
            log_warn("mapping %s of %s is an open proxy into the client's private network (no username)",
                     m.name.c_str(), t->peer.c_str());
        break;
    case MODE_HTTP:
    case MODE_HTTPS: {
        bool https = m.mode == MODE_HTTPS;
        if (!(https ? https_l : http_l)) {
            *why = std::string("the server has no ") + (https ? "map_https_bind" : "map_http_bind");
            st = 1;
        } else {
            st = http_routes_add(https, t, idx, m, why) < 0 ? 1 : 0;
        }
        where = "domain=" + m.domains;
        break;
    }
    default:
        *why = "unknown mode";
        st = 1;
    }
    if (st == 0) {
        ci->regs.push_back(reg{idx, m, port});
        log_info("mapping registered name=%s mode=%s %s peer=%s", m.name.c_str(), conf_mode_name(m.mode), where.c_str(),
                 t->peer.c_str());
    } else {
        log_warn("mapping rejected name=%s peer=%s reason=\"%s\"", m.name.c_str(), t->peer.c_str(), why->c_str());
    }
    return st;
}

/* Give back what registration r of t holds. */
static void release(tunnel *t, const reg &r)
{
    if (r.m.mode == MODE_UDP) {
        auto it = srv->uowners.find(r.port);
        if (it != srv->uowners.end() && it->second.t == t) {
            udp_port_close(it->second.u);
            srv->uowners.erase(it);
        }
    } else if (r.m.mode == MODE_TCP || r.m.mode == MODE_PROXY) {
        for (auto it = srv->owners.begin(); it != srv->owners.end(); ++it) {
            if (it->second.t != t || it->second.idx != r.idx)
                continue;
            if (it->second.l) {
                /* the port is free at once: a changed mapping registers it
                 * again in the same pass (UNREGISTER, then REGISTER) */
                acceptor_stop(it->second.l);
                defer_delete(it->second.l);
            }
            srv->owners.erase(it);
            return;
        }
    }
}

/* Forget registration idx of t and give back what it holds. Returns
 * false when t has none by that index. */
static bool take_reg(tunnel *t, uint32_t idx, reg *out)
{
    client_info *ci = (client_info *)t->user;
    for (size_t i = 0; i < ci->regs.size(); i++) {
        if (ci->regs[i].idx != idx)
            continue;
        *out = ci->regs[i];
        ci->regs.erase(ci->regs.begin() + (long)i);
        release(t, *out);
        return true;
    }
    return false;
}

/* Take back registration idx of t after a reload took its port away (its
 * listener is gone, its remote_port left allow_ports): the client is told
 * (REGISTERED, rejected) and asks again every 1.5 heartbeats, so the
 * mapping gets its port back when a later reload restores it. */
static void revoke(tunnel *t, uint32_t idx, const std::string &why)
{
    reg r;
    if (!take_reg(t, idx, &r))
        return;
    log_warn("mapping revoked name=%s peer=%s reason=\"%s\"", r.m.name.c_str(), t->peer.c_str(), why.c_str());
    tunnel_registered(t, idx, 1, why.c_str());
}

void server::on_unregister(tunnel *t, uint32_t idx)
{
    reg r;
    if (!take_reg(t, idx, &r))
        return;
    if (r.m.mode == MODE_HTTP || r.m.mode == MODE_HTTPS) {
        /* routes go by tunnel: drop them all, put back the others */
        http_routes_remove(t);
        for (const reg &o : ((client_info *)t->user)->regs)
            if (o.m.mode == MODE_HTTP || o.m.mode == MODE_HTTPS) {
                std::string why;
                http_routes_add(o.m.mode == MODE_HTTPS, t, o.idx, o.m, &why);
            }
    }
    log_info("mapping unregistered name=%s peer=%s", r.m.name.c_str(), t->peer.c_str());
}

void server::on_open(tunnel *t, stream *s, const open_msg &)
{
    /* a stream the client opens carries a user of its local bind_addr:
     * serve it as a forward proxy, under this server's flag */
    if (draining) {
        log_info("proxy stream from %s refused: stopping gracefully", t->peer.c_str());
        return stream_reset(s, RST_REFUSED);
    }
    if (!cf.flag) {
        log_info("proxy stream from %s refused: flag allows no forward proxy", t->peer.c_str());
        return stream_reset(s, RST_NOMAPPING);
    }
    proxy_conf pc;
    pc.flag = cf.flag;
    pc.username = cf.username;
    pc.password = cf.password;
    pc.connect_timeout_ms = cf.connect_timeout_ms;
    pc.handshake_timeout_ms = cf.handshake_timeout_ms;
    pc.where = "client " + t->peer;
    proxy_serve_stream(s, "client:" + t->peer, pc);   /* one access-line field */
}

void server::on_down(tunnel *t, const char *why, bool auth_failure)
{
    client_info *ci = (client_info *)t->user;
    for (const reg &r : ci->regs)
        release(t, r);
    http_routes_remove(t);
    n.bytes_in += t->bytes_in;
    n.bytes_out += t->bytes_out;
    if (!t->was_ready) {
        preauth--;
        n.handshake_failures++;
        if (auth_failure)
            log_warn("tunnel refused peer=%s reason=\"%s\"", t->peer.c_str(), why);
        else
            log_info("tunnel from %s failed before authentication: %s", t->peer.c_str(), why);
    } else {
        log_info("tunnel down peer=%s reason=\"%s\"", t->peer.c_str(), why);
    }
    tunnels.erase(t);
    delete ci;
    t->user = nullptr;
}

/* ---- status_addr: GET /status (JSON) and GET /metrics (Prometheus) ---- */

static void json_str(std::string *o, const std::string &s)
{
    o->push_back('"');
    for (unsigned char c : s) {
        if (c == '"' || c == '\\') {
            o->push_back('\\');
            o->push_back((char)c);
        } else if (c < 0x20) {
            char b[8];
            snprintf(b, sizeof b, "\\u%04x", c);
            o->append(b);
        } else {
            o->push_back((char)c);
        }
    }
    o->push_back('"');
}

static void totals(uint64_t *streams, uint64_t *in, uint64_t *out)
{
    *streams = 0;
    *in = srv->n.bytes_in;
    *out = srv->n.bytes_out;
    for (tunnel *t : srv->tunnels) {
        *streams += tunnel_stream_count(t);
        *in += t->bytes_in;
        *out += t->bytes_out;
    }
}

static std::string status_json(void)
{
    std::string o = "{\"version\":\"" WMPROXY_VERSION "\",\"uptime_s\":";
    o += std::to_string((now_ms() - srv->started) / 1000);
    o += ",\"clients\":[";
    bool first = true;
    for (tunnel *t : srv->tunnels) {
        if (t->state != TS_READY)
            continue;
        client_info *ci = (client_info *)t->user;
        if (!first)
            o += ',';
        first = false;
        o += "{\"address\":";
        json_str(&o, ci->peer);
        o += ",\"mappings\":[";
        for (size_t i = 0; i < ci->regs.size(); i++) {
            const reg &r = ci->regs[i];
            if (i)
                o += ',';
            o += "{\"name\":";
            json_str(&o, r.m.name);
            o += ",\"mode\":\"";
            o += conf_mode_name(r.m.mode);
            o += '"';
            if (r.m.mode == MODE_HTTP || r.m.mode == MODE_HTTPS) {
                o += ",\"domains\":[";
                size_t pos = 0;
                bool firstd = true;
                while (pos <= r.m.domains.size()) {
                    size_t c = r.m.domains.find(',', pos);
                    if (c == std::string::npos)
                        c = r.m.domains.size();
                    if (c > pos) {
                        if (!firstd)
                            o += ',';
                        firstd = false;
                        json_str(&o, r.m.domains.substr(pos, c - pos));
                    }
                    pos = c + 1;
                }
                o += ']';
            } else {
                o += ",\"port\":" + std::to_string(r.port);
            }
            o += '}';
        }
        o += "],\"streams\":" + std::to_string(tunnel_stream_count(t));
        o += ",\"bytes_in\":" + std::to_string(t->bytes_in);
        o += ",\"bytes_out\":" + std::to_string(t->bytes_out);
        o += ",\"uptime_s\":" + std::to_string((now_ms() - t->started) / 1000);
        o += '}';
    }
    uint64_t streams, in, out;
    totals(&streams, &in, &out);
    o += "],\"streams\":" + std::to_string(streams);
    o += ",\"bytes_in\":" + std::to_string(in);
    o += ",\"bytes_out\":" + std::to_string(out);
    o += ",\"http_sessions\":" + std::to_string(http_sessions());
    o += ",\"proxy_sessions\":" + std::to_string(proxy_sessions());
    o += "}\n";
    return o;
}

static void metric(std::string *o, const char *name, const char *type, const char *help, const char *labels,
                   uint64_t v, bool header = true)
{
    if (header) {
        *o += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
    }
    *o += name;
    *o += labels;
    *o += " " + std::to_string(v) + "\n";
}

static std::string status_metrics(void)
{
    std::string o;
    uint64_t streams, in, out;
    size_t ready = 0;
    for (tunnel *t : srv->tunnels)
        ready += t->state == TS_READY;
    totals(&streams, &in, &out);
    metric(&o, "wmproxy_tunnels", "gauge", "Tunnels up (authenticated clients).", "", ready);
    metric(&o, "wmproxy_streams", "gauge", "Streams open across all tunnels.", "", streams);
    metric(&o, "wmproxy_bytes_total", "counter", "Stream payload bytes through tunnels.", "{direction=\"in\"}", in);
    metric(&o, "wmproxy_bytes_total", "", "", "{direction=\"out\"}", out, false);
    metric(&o, "wmproxy_connections_total", "counter", "Public connections accepted or refused.",
           "{result=\"accepted\"}", srv->n.accepted);
    metric(&o, "wmproxy_connections_total", "", "", "{result=\"refused\"}", srv->n.refused, false);
    metric(&o, "wmproxy_handshake_failures_total", "counter",
           "Connections on bind_addr that failed TLS, the tunnel handshake or authentication.", "",
           srv->n.handshake_failures);
    metric(&o, "wmproxy_reloads_total", "counter", "Successful configuration reloads.", "", srv->n.reloads);
    metric(&o, "wmproxy_uptime_seconds", "gauge", "Seconds since start-up.", "", (now_ms() - srv->started) / 1000);
    return o;
}

/* One request, one answer, close: this listener is for a local scraper. */
struct status_conn : io_handler, deferred {
    int fd = -1;
    char buf[4096];
    size_t len = 0;
    std::string out;
    size_t sent = 0;
    timer deadline;
    void on_io(unsigned events) override;
    ~status_conn() override
    {
        timer_cancel(&deadline);
        if (fd >= 0) {
            reactor_del(fd, this);
            close(fd);
        }
    }
};

static void status_answer(status_conn *c, int code, const char *type, const std::string &body,
                          const char *extra = "")
{
    char head[256];
    snprintf(head, sizeof head,
             "HTTP/1.1 %d %s\r\nServer: wmproxy\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
             "%sConnection: close\r\n\r\n",
             code, http_reason(code), type, body.size(), extra);
    c->out = head;
    c->out += body;
}

void status_conn::on_io(unsigned)
{
    if (doomed)
        return;
    if (out.empty()) {
        bool eof = false;
        for (;;) {
            ssize_t n = read(fd, buf + len, sizeof buf - len);
            if (n > 0) {
                len += (size_t)n;
                if (len < sizeof buf)
                    continue;
            } else if (n < 0 && errno == EAGAIN) {
                /* wait for more */
            } else if (n == 0 && len) {
                eof = true;     /* a request, then the user's FIN: answer it */
            } else {
                return defer_delete(this);
            }
            break;
        }
        static http_request q;
        int r = http_parse_request(buf, len, &q, 0);
        if (r == HTTP_PARTIAL && len < sizeof buf)
            return eof ? defer_delete(this) : (void)0;
        if (r <= 0) {
            status_answer(this, 400, "text/plain", "400 Bad Request\n");
        } else if (!http_str_eq(q.method, "GET") && !http_str_eq(q.method, "HEAD")) {
            status_answer(this, 405, "text/plain", "405 Method Not Allowed\n", "Allow: GET, HEAD\r\n");
        } else {
            bool head = http_str_eq(q.method, "HEAD");
            if (http_str_eq(q.target, "/status"))
                status_answer(this, 200, "application/json", status_json());
            else if (http_str_eq(q.target, "/metrics"))
                status_answer(this, 200, "text/plain; version=0.0.4", status_metrics());
            else
                status_answer(this, 404, "text/plain", "404 Not Found: try /status or /metrics\n");
            if (head)
                out.resize(out.find("\r\n\r\n") + 4);   /* RFC 9110 9.3.2: the head alone */
        }
    }
    while (sent < out.size()) {
        ssize_t w = write(fd, out.data() + sent, out.size() - sent);
        if (w < 0) {
            if (errno == EAGAIN)
                return;
            break;
        }
        sent += (size_t)w;
    }
    defer_delete(this);
}

static void accept_status(int fd, const sockaddr_buf &)
{
    status_conn *c = new status_conn;
    c->fd = fd;
    c->deadline.fn = [](void *arg) { defer_delete((status_conn *)arg); };
    c->deadline.arg = c;
    timer_arm(&c->deadline, 10000);
    reactor_add(fd, c);
    c->on_io(EV_READ);
}

/* ---- start, reload, stop ---- */


static bool loopback(const addr_conf &a)
{
    return a.host == "localhost" || a.host == "::1" || a.host.compare(0, 4, "127.") == 0;
}

/* The listeners and TLS contexts a configuration needs. Built completely
 * before anything is swapped in, so a reload that cannot bind changes
 * nothing. */
struct server_parts {
    tls_ctx *tls = nullptr, *https_tls = nullptr;
    listener *tunnel_l = nullptr, *tcp_l = nullptr, *proxy_l = nullptr, *http_l = nullptr, *https_l = nullptr,
             *status_l = nullptr;
    bool new_tls = false, new_https_tls = false;
};

static void parts_discard(server_parts *p, const server *old)
{
    if (p->new_tls && p->tls)
        tls_ctx_free(p->tls);
    if (p->new_https_tls && p->https_tls)
        tls_ctx_free(p->https_tls);
    listener *mine[] = {p->tunnel_l, p->tcp_l, p->proxy_l, p->http_l, p->https_l, p->status_l};
    listener *theirs[] = {old ? old->tunnel_l : nullptr, old ? old->tcp_l : nullptr, old ? old->proxy_l : nullptr,
                          old ? old->http_l : nullptr,   old ? old->https_l : nullptr, old ? old->status_l : nullptr};
    for (int i = 0; i < 6; i++)
        if (mine[i] && mine[i] != theirs[i])
            delete mine[i];
}

static bool same_addr(const addr_conf &a, const addr_conf &b)
{
    return a.set == b.set && a.host == b.host && a.port == b.port;
}

/* A listener for a (kept when the address did not change). */
static int part_listener(const addr_conf &a, const addr_conf *olda, listener *oldl, listener_kind kind,
                         listener **out, std::string *err)
{
    *out = nullptr;
    if (!a.set)
        return 0;
    if (oldl && olda && same_addr(a, *olda)) {
        *out = oldl;
        return 0;
    }
    *out = listen_on(a, kind, err);
    return *out ? 0 : -1;
}

static int build_parts(const conf &cf, const server *old, server_parts *p, std::string *err)
{
    const conf *oc = old ? &old->cf : nullptr;
    if (cf.tc) {
        /* a generated certificate lives as long as the process; files are
         * read again on every reload (they may have been rewritten in place) */
        if (old && old->tls && oc->cert == cf.cert && oc->key == cf.key && cf.client_ca.empty() &&
            oc->client_ca.empty() && cf.cert.empty()) {
            p->tls = old->tls;
        } else {
            tls_server_opts o;
            if (!cf.cert.empty())
                o.certs.push_back({cf.cert, cf.key});
            else if (old && old->tls && oc->cert.empty())
                o.keep_generated = old->tls;   /* only client_ca changed */
            o.client_ca = cf.client_ca;
            p->tls = tls_server_ctx_new(o, err);
            if (!p->tls)
                return -1;
            p->new_tls = true;
        }
    }
    if (cf.map_https_bind.set) {
        if (old && old->https_tls && cf.map_certs.empty() && oc->map_certs.empty()) {
            p->https_tls = old->https_tls;
        } else {
            tls_server_opts o;
            o.certs = cf.map_certs;
            o.alpn = "http/1.1";
            p->https_tls = tls_server_ctx_new(o, err);
            if (!p->https_tls)
                return -1;
            p->new_https_tls = true;
        }
    }
    if (part_listener(cf.bind_addr, oc ? &oc->bind_addr : nullptr, old ? old->tunnel_l : nullptr, LK_TUNNEL,
                      &p->tunnel_l, err) < 0 ||
        part_listener(cf.map_tcp_bind, oc ? &oc->map_tcp_bind : nullptr, old ? old->tcp_l : nullptr, LK_TCP,
                      &p->tcp_l, err) < 0 ||
        part_listener(cf.map_proxy_bind, oc ? &oc->map_proxy_bind : nullptr, old ? old->proxy_l : nullptr, LK_TCP,
                      &p->proxy_l, err) < 0 ||
        part_listener(cf.map_http_bind, oc ? &oc->map_http_bind : nullptr, old ? old->http_l : nullptr, LK_HTTP,
                      &p->http_l, err) < 0 ||
        part_listener(cf.map_https_bind, oc ? &oc->map_https_bind : nullptr, old ? old->https_l : nullptr,
                      LK_HTTPS, &p->https_l, err) < 0 ||
        part_listener(cf.status_addr, oc ? &oc->status_addr : nullptr, old ? old->status_l : nullptr, LK_STATUS,
                      &p->status_l, err) < 0)
        return -1;
    return 0;
}

static void log_listeners(const server_parts &p, const server *old, const conf &cf)
{
    /* the fingerprint first: who waits for "listening" can pin it */
    if (p.new_tls)
        log_info("tls on %s certificate sha256=%s%s", cf.bind_addr.text().c_str(), tls_ctx_fingerprint(p.tls).c_str(),
                 cf.cert.empty() ? " (generated, self-signed)" : "");
    if (p.tunnel_l && (!old || p.tunnel_l != old->tunnel_l))
        log_info("listening for tunnels on %s%s", cf.bind_addr.text().c_str(), cf.tc ? " (tls)" : "");
    if (p.tcp_l && (!old || p.tcp_l != old->tcp_l))
        log_info("listening for tcp mappings on %s", cf.map_tcp_bind.text().c_str());
    if (p.proxy_l && (!old || p.proxy_l != old->proxy_l))
        log_info("listening for proxy mappings on %s", cf.map_proxy_bind.text().c_str());
    if (p.http_l && (!old || p.http_l != old->http_l))
        log_info("listening for http mappings on %s", cf.map_http_bind.text().c_str());
    if (p.https_l && (!old || p.https_l != old->https_l || p.new_https_tls))
        log_info("listening for https mappings on %s certificate sha256=%s%s", cf.map_https_bind.text().c_str(),
                 tls_ctx_fingerprint(p.https_tls).c_str(), cf.map_certs.empty() ? " (generated, self-signed)" : "");
    if (p.status_l && (!old || p.status_l != old->status_l)) {
        log_info("status on http://%s/status and /metrics", cf.status_addr.text().c_str());
        if (!loopback(cf.status_addr))
            log_warn("status_addr %s is not a loopback address: anyone who reaches it sees your clients and "
                     "traffic figures", cf.status_addr.text().c_str());
    }
}

/* Move the owner of a shared listener that a reload replaced. */
static void move_owner(listener *from, listener *to)
{
    if (!from || !to || from == to)
        return;
    auto it = srv->owners.find(from);
    if (it == srv->owners.end())
        return;
    port_owner o = it->second;
    srv->owners.erase(it);
    srv->owners[to] = o;
    client_info *ci = (client_info *)o.t->user;
    for (reg &r : ci->regs)
        if (r.idx == o.idx)
            r.port = to->port;
}

static void apply_parts(const server_parts &p)
{
    /* a replaced context lives on while its sessions do (tls_ctx_free) */
    if ((p.new_tls || !p.tls) && srv->tls)
        tls_ctx_free(srv->tls);
    if ((p.new_https_tls || !p.https_tls) && srv->https_tls)
        tls_ctx_free(srv->https_tls);
    srv->tls = p.tls;
    srv->https_tls = p.https_tls;
    move_owner(srv->tcp_l, p.tcp_l);
    move_owner(srv->proxy_l, p.proxy_l);
    listener *olds[] = {srv->tunnel_l, srv->tcp_l, srv->proxy_l, srv->http_l, srv->https_l, srv->status_l};
    listener *news[] = {p.tunnel_l, p.tcp_l, p.proxy_l, p.http_l, p.https_l, p.status_l};
    for (int i = 0; i < 6; i++) {
        if (!olds[i] || olds[i] == news[i])
            continue;
        /* the mapping on a shared listener that is gone loses its port */
        if ((i == 1 || i == 2) && !news[i]) {
            auto it = srv->owners.find(olds[i]);
            if (it != srv->owners.end())
                revoke(it->second.t, it->second.idx,
                       std::string(i == 1 ? "map_tcp_bind" : "map_proxy_bind") + " was removed by a reload");
        }
        defer_delete(olds[i]);
    }
    srv->tunnel_l = p.tunnel_l;
    srv->tcp_l = p.tcp_l;
    srv->proxy_l = p.proxy_l;
    srv->http_l = p.http_l;
    srv->https_l = p.https_l;
    srv->status_l = p.status_l;
}

int server_start(const conf &cf, std::string *err)
{
    srv = new server;
    srv->cf = cf;
    srv->tcf = tunnel_conf_of(cf, true);
    srv->started = now_ms();
    server_parts p;
    if (build_parts(cf, nullptr, &p, err) < 0) {
        parts_discard(&p, nullptr);
        return -1;
    }
    log_listeners(p, nullptr, cf);
    apply_parts(p);
    return 0;
}

/* Close the UDP port registration r holds. */
static void udp_unbind(reg *r)
{
    auto it = srv->uowners.find(r->port);
    if (it != srv->uowners.end()) {
        udp_port_close(it->second.u);
        srv->uowners.erase(it);
    }
    r->port = 0;
}

/* Open a again for registration r of t (a failed reload puts it back). */
static void udp_rebind(tunnel *t, reg *r, const addr_conf &a)
{
    std::string why;
    udp_port *u = udp_port_open(a, t, r->idx, r->m.udp_timeout_ms, r->m.name, &why);
    if (!u) {
        log_warn("udp mapping of client %s lost its port: %s", holder(t).c_str(), why.c_str());
        return;
    }
    r->port = a.port;
    srv->uowners[a.port] = udp_owner{t, u};
}

/* The registration holding map_udp_bind (a udp mapping without
 * remote_port), or nullptr. */
static reg *udp_bind_holder(tunnel **owner)
{
    if (!srv->cf.map_udp_bind.set)
        return nullptr;
    auto it = srv->uowners.find(srv->cf.map_udp_bind.port);
    if (it == srv->uowners.end())
        return nullptr;
    client_info *ci = (client_info *)it->second.t->user;
    for (reg &r : ci->regs)
        if (r.m.mode == MODE_UDP && !r.m.remote_port && r.port == it->first) {
            *owner = it->second.t;
            return &r;
        }
    return nullptr;
}

int server_reload(const conf &cf, std::string *err)
{
    if (cf.role_ != ROLE_SERVER) {
        *err = cf.path + ": the file now configures a client; the role cannot change on reload";
        return -1;
    }
    server_parts p;
    if (build_parts(cf, srv, &p, err) < 0) {
        parts_discard(&p, srv);
        return -1;
    }
    /* map_udp_bind moved: its mapping moves with it (opened before anything
     * is applied, so a port that cannot be had fails the reload and changes
     * nothing) */
    tunnel *ut = nullptr;
    reg *ur = udp_bind_holder(&ut);
    bool udp_moves = ur && !same_addr(cf.map_udp_bind, srv->cf.map_udp_bind);
    udp_port *nu = nullptr;
    if (udp_moves && cf.map_udp_bind.set) {
        bool same_port = cf.map_udp_bind.port == ur->port;
        auto held = srv->uowners.find(cf.map_udp_bind.port);
        if (!same_port && held != srv->uowners.end()) {
            *err = "map_udp_bind: udp port " + std::to_string(cf.map_udp_bind.port) + " is held by client " +
                   holder(held->second.t);
            parts_discard(&p, srv);
            return -1;
        }
        /* on the same port (another address) the old socket goes first */
        if (same_port)
            udp_unbind(ur);
        nu = udp_port_open(cf.map_udp_bind, ut, ur->idx, ur->m.udp_timeout_ms, ur->m.name, err);
        if (!nu) {
            if (same_port)
                udp_rebind(ut, ur, srv->cf.map_udp_bind);
            parts_discard(&p, srv);
            return -1;
        }
    }
    log_listeners(p, srv, cf);
    apply_parts(p);
    if (udp_moves) {
        if (ur->port)
            udp_unbind(ur);
        if (nu) {
            ur->port = cf.map_udp_bind.port;
            srv->uowners[ur->port] = udp_owner{ut, nu};
            log_info("udp mapping of client %s moved to %s", holder(ut).c_str(), cf.map_udp_bind.text().c_str());
        } else {
            revoke(ut, ur->idx, "map_udp_bind was removed by a reload");
        }
    }
    /* a remote_port that left allow_ports is closed */
    for (tunnel *t : srv->tunnels) {
        std::vector<std::pair<uint32_t, uint16_t>> out;
        for (const reg &r : ((client_info *)t->user)->regs)
            if ((r.m.mode == MODE_TCP || r.m.mode == MODE_UDP) && r.m.remote_port && !cf.port_allowed(r.m.remote_port))
                out.push_back({r.idx, r.m.remote_port});
        for (auto &o : out)
            revoke(t, o.first, "port " + std::to_string(o.second) + " is no longer in allow_ports");
    }
    srv->cf = cf;
    srv->tcf = tunnel_conf_of(cf, true);   /* new tunnels; established ones keep theirs */
    srv->n.reloads++;
    return 0;
}

size_t server_streams(void)
{
    size_t n = 0;
    if (srv)
        for (tunnel *t : srv->tunnels)
            n += tunnel_stream_count(t);
    return n + http_sessions() + proxy_sessions();
}

size_t server_unsent(void)
{
    size_t n = 0;
    if (srv)
        for (tunnel *t : srv->tunnels)
            n += tunnel_unsent(t);
    return n;
}

void server_stop(bool drain)
{
    if (!srv)
        return;
    listener *ls[] = {srv->tunnel_l, srv->tcp_l, srv->proxy_l, srv->http_l, srv->https_l, srv->status_l};
    for (listener *l : ls)
        if (l)
            defer_delete(l);
    srv->tunnel_l = srv->tcp_l = srv->proxy_l = srv->http_l = srv->https_l = srv->status_l = nullptr;
    for (auto &o : srv->owners)
        if (o.second.l)
            defer_delete(o.second.l);
    srv->owners.clear();
    for (auto &o : srv->uowners)
        udp_port_close(o.second.u);
    srv->uowners.clear();
    http_stop(drain);
    proxy_stop(drain);
    srv->draining = true;   /* no new streams either */
    if (drain)
        return;
    std::set<tunnel *> ts = srv->tunnels;
    for (tunnel *t : ts)
        tunnel_close(t, GA_SHUTDOWN, "server is stopping");
}
