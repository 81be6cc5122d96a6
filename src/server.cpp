/*
 * server.cpp - the server role: accepts tunnels on bind_addr, registers
 * their mappings, and turns each public connection into a stream on the
 * tunnel of the client whose mapping owns it.
 */
#include "roles.h"
#include "log.h"
#include "mux.h"
#include "relay.h"
#include "sock.h"
#include "tls.h"
#include "udp.h"
#include "proxy.h"
#include "http_proxy.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <unistd.h>
#include <map>
#include <set>

#define ACCEPT_RETRY_MS 100   /* out of descriptors: accept again after this */

struct listener;

/* Who owns a public TCP port. */
struct port_owner {
    tunnel *t = nullptr;
    uint32_t idx = 0;          /* the client's mapping index */
    std::string name;
    listener *l = nullptr;     /* opened for this mapping (remote_port), else shared */
};

enum listener_kind { LK_TUNNEL, LK_TCP, LK_HTTP, LK_HTTPS };

struct listener : io_handler, deferred {
    int fd = -1;
    listener_kind kind = LK_TUNNEL;
    uint16_t port = 0;
    std::string addr;
    timer retry;
    bool paused = false;
    void on_io(unsigned events) override;
    ~listener() override
    {
        timer_cancel(&retry);
        if (fd >= 0) {
            reactor_del(fd, this);
            close(fd);
        }
    }
};

/* Per tunnel: the peer and what it registered. */
struct client_info {
    std::string peer;
    std::vector<uint16_t> ports;   /* TCP ports it owns (map_tcp_bind's included) */
    std::vector<uint16_t> uports;  /* UDP ports it owns */
};

struct udp_owner {
    tunnel *t = nullptr;
    udp_port *u = nullptr;
};

struct server : tunnel_owner {
    conf cf;
    tunnel_conf tcf;
    tls_ctx *tls = nullptr;
    listener *tunnel_l = nullptr;
    listener *tcp_l = nullptr;              /* map_tcp_bind */
    listener *proxy_l = nullptr;            /* map_proxy_bind */
    listener *http_l = nullptr, *https_l = nullptr;
    tls_ctx *https_tls = nullptr;           /* map_cert/map_key, by SNI */
    std::map<uint16_t, port_owner> owners;  /* by public port */
    std::map<uint16_t, udp_owner> uowners;  /* by public UDP port */
    std::set<tunnel *> tunnels;
    bool stopping = false;

    void on_ready(tunnel *t) override;
    int on_register(tunnel *t, uint32_t idx, const register_msg &m, std::string *why) override;
    void on_registered(tunnel *, uint32_t, uint8_t, const std::string &) override {}
    void on_open(tunnel *t, stream *s, const open_msg &m) override;
    void on_dgram(tunnel *, uint32_t flow, uint32_t, const uint8_t *p, size_t len) override
    {
        udp_port_reply(flow, p, len);
    }
    void on_down(tunnel *t, const char *why, bool auth_failure) override;
};

static server *srv;

static listener *listen_on(const addr_conf &a, listener_kind kind, std::string *err)
{
    int fd = sock_listen(a, SOCK_STREAM, err);
    if (fd < 0)
        return nullptr;
    listener *l = new listener;
    l->fd = fd;
    l->kind = kind;
    l->port = a.port;
    l->addr = a.text();
    l->retry.fn = [](void *arg) {
        listener *l = (listener *)arg;
        l->paused = false;
        l->on_io(EV_READ);
    };
    l->retry.arg = l;
    reactor_add(fd, l);
    return l;
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

static void public_done(relay *r)
{
    access_log("%s tcp %s - %llu %llu %llums", r->peer.c_str(), r->what.c_str(), (unsigned long long)r->up,
               (unsigned long long)r->down, (unsigned long long)(now_ms() - r->started));
}

static void accept_public(listener *l, int fd, const sockaddr_buf &peer)
{
    auto it = srv->owners.find(l->port);
    std::string who = sock_addr_text(peer.sa());
    if (it == srv->owners.end() || !it->second.t) {
        log_info("refused %s on port %u: no client serves it", who.c_str(), l->port);
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
        close(fd);
        return;
    }
    relay *r = relay_new(fd, s, who);
    if (r) {
        r->what = o.name;
        r->done = public_done;
    }
}

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

static size_t sniffing;

static void sniff_done(sniff_conn *c)
{
    if (c->tr)
        reactor_del(c->tr->fd, c);
    timer_cancel(&c->deadline);
    sniffing--;
    defer_delete(c);
}

static void sniff_fail(sniff_conn *c, const char *why)
{
    log_info("connection from %s on %s closed: %s", c->peer.c_str(), srv->cf.bind_addr.text().c_str(), why);
    sniff_done(c);
}

/* A plaintext tunnel client on a TLS port cannot read a TLS alert: tell it
 * in its own protocol before closing. */
static void tell_plaintext_client(int fd)
{
    uint8_t out[PREFACE_LEN + FRAME_HDR + 64];
    std::string p;
    code_encode(GA_PROTOCOL, "this server requires TLS (set ts = true)", &p);
    preface_encode(out);
    frame_hdr_encode(out + PREFACE_LEN, (uint32_t)p.size(), FT_GOAWAY, 0, 0);
    memcpy(out + PREFACE_LEN + FRAME_HDR, p.data(), p.size());
    ssize_t n = write(fd, out, PREFACE_LEN + FRAME_HDR + p.size());
    (void)n;
}

static const char *kind_name(proxy_kind k)
{
    return k == PK_SOCKS5 ? "socks5" : k == PK_CONNECT ? "https" : "http";
}

static void sniff_decide(sniff_conn *c, proxy_kind k)
{
    if (k == PK_UNKNOWN) {
        char why[128];
        if (c->buf[0] == 0x16 && !srv->tls)
            snprintf(why, sizeof why, "peer started a TLS handshake but this port is plaintext (tc = false)");
        else
            snprintf(why, sizeof why, "not a wmproxyd client nor a proxy request (first bytes %02x %02x %02x %02x)",
                     c->buf[0], c->len > 1 ? c->buf[1] : 0, c->len > 2 ? c->buf[2] : 0, c->len > 3 ? c->buf[3] : 0);
        return sniff_fail(c, why);
    }
    if (k == PK_TUNNEL) {
        if (srv->tunnels.size() >= srv->cf.max_clients) {
            log_warn("refused tunnel from %s: max_clients (%u) reached", c->peer.c_str(), srv->cf.max_clients);
            return sniff_done(c);
        }
        reactor_del(c->tr->fd, c);
        tunnel *t = tunnel_new(c->tr, srv->tcf, srv, c->peer, c->buf, c->len);
        c->tr = nullptr;
        if (!t) {
            log_error("tunnel from %s: out of memory", c->peer.c_str());
            return sniff_done(c);
        }
        client_info *ci = new client_info;
        ci->peer = c->peer;
        t->user = ci;
        srv->tunnels.insert(t);
        return sniff_done(c);
    }
    unsigned need = k == PK_SOCKS5 ? FLAG_SOCKS5 : k == PK_CONNECT ? FLAG_HTTPS : FLAG_HTTP;
    if (!(srv->cf.flag & need)) {
        char why[96];
        snprintf(why, sizeof why, "%s proxy request, but flag does not allow %s", kind_name(k), kind_name(k));
        return sniff_fail(c, why);
    }
    reactor_del(c->tr->fd, c);
    proxy_conf pc;
    pc.flag = srv->cf.flag;
    pc.username = srv->cf.username;
    pc.password = srv->cf.password;
    pc.connect_timeout_ms = srv->cf.connect_timeout_ms;
    pc.handshake_timeout_ms = srv->cf.handshake_timeout_ms;
    pc.where = "bind_addr";
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
            tell_plaintext_client(tr->fd);
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
    sniffing++;
    reactor_add(fd, c);
    c->on_io(EV_READ | EV_WRITE);
}

static void accept_http(int fd, const sockaddr_buf &peer, bool https)
{
    sock_nodelay(fd);
    transport *tr = https ? tls_transport_new(srv->https_tls, fd, true, nullptr) : plain_transport_new(fd);
    if (!tr) {
        close(fd);
        return;
    }
    http_proxy_conf hc;
    hc.keepalive_timeout_ms = srv->cf.keepalive_timeout_ms;
    http_serve(tr, sock_addr_text(peer.sa()), https, hc);
}

void listener::on_io(unsigned)
{
    if (paused || doomed)
        return;
    /* accept everything pending: the edge will not come again */
    for (;;) {
        sockaddr_buf peer;
        int cfd = sock_accept(fd, &peer);
        if (cfd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            /* EMFILE/ENFILE/ENOBUFS: retrying now would spin; pause */
            log_warn("accept on %s: %s (pausing %dms)", addr.c_str(), strerror(errno), ACCEPT_RETRY_MS);
            paused = true;
            timer_arm(&retry, ACCEPT_RETRY_MS);
            return;
        }
        if (kind == LK_TUNNEL)
            accept_tunnel(cfd, peer);
        else if (kind == LK_TCP)
            accept_public(this, cfd, peer);
        else
            accept_http(cfd, peer, kind == LK_HTTPS);
    }
}

void server::on_ready(tunnel *t)
{
    log_info("tunnel up peer=%s", t->peer.c_str());
}

static const char *mode_name(uint8_t mode)
{
    static const char *const names[] = {"?", "http", "https", "tcp", "udp", "proxy"};
    return mode <= MODE_PROXY ? names[mode] : "?";
}

static const char *mode_name(uint8_t mode);

/* A udp mapping: its remote_port (in allow_ports) or map_udp_bind. */
static int register_udp(tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    client_info *ci = (client_info *)t->user;
    const conf &cf = srv->cf;
    addr_conf a;
    if (m.remote_port) {
        if (!cf.port_allowed(m.remote_port)) {
            *why = "udp port " + std::to_string(m.remote_port) + " is not in allow_ports";
            goto rejected;
        }
        a.set = true;
        a.host = cf.map_udp_bind.set ? cf.map_udp_bind.host : "";
        a.port = m.remote_port;
    } else if (cf.map_udp_bind.set) {
        a = cf.map_udp_bind;
    } else {
        *why = "the server has no map_udp_bind";
        goto rejected;
    }
    {
        auto it = srv->uowners.find(a.port);
        if (it != srv->uowners.end()) {
            *why = "udp port " + std::to_string(a.port) + " is held by client " +
                   ((client_info *)it->second.t->user)->peer;
            goto rejected;
        }
        udp_port *u = udp_port_open(a, t, idx, m.udp_timeout_ms, why);
        if (!u)
            goto rejected;
        srv->uowners[a.port] = udp_owner{t, u};
        ci->uports.push_back(a.port);
        log_info("mapping registered name=%s mode=udp port=%u peer=%s", m.name.c_str(), a.port, t->peer.c_str());
        return 0;
    }
rejected:
    log_warn("mapping rejected name=%s peer=%s reason=\"%s\"", m.name.c_str(), t->peer.c_str(), why->c_str());
    return 1;
}

/* Give the public port of listener l (map_tcp_bind, map_proxy_bind) to
 * mapping idx of t. Returns 0, or 1 with *why. */
static int claim(listener *l, const char *key, tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    if (!l) {
        *why = std::string("the server has no ") + key;
        return 1;
    }
    auto it = srv->owners.find(l->port);
    if (it != srv->owners.end()) {
        *why = std::string(key) + " is held by client " + ((client_info *)it->second.t->user)->peer;
        return 1;
    }
    port_owner &o = srv->owners[l->port];
    o.t = t;
    o.idx = idx;
    o.name = m.name;
    ((client_info *)t->user)->ports.push_back(l->port);
    return 0;
}

/* A tcp mapping with a remote_port of its own: a listener just for it. */
static int claim_port(tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    const conf &cf = srv->cf;
    uint16_t port = m.remote_port;
    auto it = srv->owners.find(port);
    if (!cf.port_allowed(port)) {
        *why = "port " + std::to_string(port) + " is not in allow_ports";
        return 1;
    }
    if (it != srv->owners.end()) {
        *why = "port " + std::to_string(port) + " is held by client " + ((client_info *)it->second.t->user)->peer;
        return 1;
    }
    addr_conf a;
    a.set = true;
    a.host = cf.map_tcp_bind.set ? cf.map_tcp_bind.host : "";
    a.port = port;
    listener *l = listen_on(a, LK_TCP, why);
    if (!l)
        return 1;
    port_owner &o = srv->owners[port];
    o.t = t;
    o.idx = idx;
    o.name = m.name;
    o.l = l;
    ((client_info *)t->user)->ports.push_back(port);
    return 0;
}

int server::on_register(tunnel *t, uint32_t idx, const register_msg &m, std::string *why)
{
    int st;
    std::string where;
    switch (m.mode) {
    case MODE_UDP:
        return register_udp(t, idx, m, why);
    case MODE_TCP:
        st = m.remote_port ? claim_port(t, idx, m, why) : claim(tcp_l, "map_tcp_bind", t, idx, m, why);
        where = "port=" + std::to_string(m.remote_port ? m.remote_port : tcp_l ? tcp_l->port : 0);
        break;
    case MODE_PROXY:
        st = claim(proxy_l, "map_proxy_bind", t, idx, m, why);
        where = "port=" + std::to_string(proxy_l ? proxy_l->port : 0);
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
    if (st == 0)
        log_info("mapping registered name=%s mode=%s %s peer=%s", m.name.c_str(), mode_name(m.mode), where.c_str(),
                 t->peer.c_str());
    else
        log_warn("mapping rejected name=%s peer=%s reason=\"%s\"", m.name.c_str(), t->peer.c_str(), why->c_str());
    return st;
}

void server::on_open(tunnel *t, stream *s, const open_msg &)
{
    /* a stream the client opens carries a user of its local bind_addr:
     * serve it as a forward proxy, under this server's flag */
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
    proxy_serve_stream(s, "client " + t->peer, pc);
}

void server::on_down(tunnel *t, const char *why, bool auth_failure)
{
    client_info *ci = (client_info *)t->user;
    for (uint16_t p : ci->ports) {
        auto it = owners.find(p);
        if (it == owners.end() || it->second.t != t)
            continue;
        if (it->second.l)
            defer_delete(it->second.l);   /* its port is free again */
        owners.erase(it);
    }
    for (uint16_t p : ci->uports) {
        auto it = uowners.find(p);
        if (it == uowners.end() || it->second.t != t)
            continue;
        udp_port_close(it->second.u);
        uowners.erase(it);
    }
    http_routes_remove(t);
    if (auth_failure)
        log_warn("tunnel refused peer=%s reason=\"%s\"", t->peer.c_str(), why);
    else if (t->started && t->state != TS_PREFACE)
        log_info("tunnel down peer=%s reason=\"%s\"", t->peer.c_str(), why);
    else
        log_info("connection from %s closed: %s", t->peer.c_str(), why);
    tunnels.erase(t);
    delete ci;
    t->user = nullptr;
}

static tunnel_conf tunnel_conf_of(const conf &cf, bool is_server)
{
    tunnel_conf t;
    t.is_server = is_server;
    t.token = cf.token;
    t.heartbeat_ms = cf.heartbeat_ms;
    t.window = cf.window;
    t.max_window = cf.max_window;
    t.tunnel_buffer = cf.tunnel_buffer;
    t.max_streams = cf.max_streams;
    t.handshake_timeout_ms = cf.handshake_timeout_ms;
    return t;
}

int server_start(const conf &cf, std::string *err)
{
    srv = new server;
    srv->cf = cf;
    srv->tcf = tunnel_conf_of(cf, true);
    if (cf.tc) {
        tls_server_opts o;
        if (!cf.cert.empty())
            o.certs.push_back({cf.cert, cf.key});
        o.client_ca = cf.client_ca;
        srv->tls = tls_server_ctx_new(o, err);
        if (!srv->tls)
            return -1;
        log_info("tls on %s certificate sha256=%s%s", cf.bind_addr.text().c_str(),
                 tls_ctx_fingerprint(srv->tls).c_str(), cf.cert.empty() ? " (generated, self-signed)" : "");
    }
    srv->tunnel_l = listen_on(cf.bind_addr, LK_TUNNEL, err);
    if (!srv->tunnel_l)
        return -1;
    log_info("listening for tunnels on %s%s", cf.bind_addr.text().c_str(), cf.tc ? " (tls)" : "");
    if (cf.map_tcp_bind.set) {
        srv->tcp_l = listen_on(cf.map_tcp_bind, LK_TCP, err);
        if (!srv->tcp_l)
            return -1;
        log_info("listening for tcp mappings on %s", cf.map_tcp_bind.text().c_str());
    }
    if (cf.map_proxy_bind.set) {
        srv->proxy_l = listen_on(cf.map_proxy_bind, LK_TCP, err);
        if (!srv->proxy_l)
            return -1;
        log_info("listening for proxy mappings on %s", cf.map_proxy_bind.text().c_str());
    }
    if (cf.map_http_bind.set) {
        srv->http_l = listen_on(cf.map_http_bind, LK_HTTP, err);
        if (!srv->http_l)
            return -1;
        log_info("listening for http mappings on %s", cf.map_http_bind.text().c_str());
    }
    if (cf.map_https_bind.set) {
        tls_server_opts o;
        o.certs = cf.map_certs;
        o.alpn = "http/1.1";
        srv->https_tls = tls_server_ctx_new(o, err);
        if (!srv->https_tls)
            return -1;
        srv->https_l = listen_on(cf.map_https_bind, LK_HTTPS, err);
        if (!srv->https_l)
            return -1;
        log_info("listening for https mappings on %s certificate sha256=%s%s", cf.map_https_bind.text().c_str(),
                 tls_ctx_fingerprint(srv->https_tls).c_str(), cf.map_certs.empty() ? " (generated, self-signed)" : "");
    }
    return 0;
}

int server_reload(const conf &, std::string *err)
{
    *err = "reload is not supported yet";
    return -1;
}

size_t server_streams(void)
{
    size_t n = 0;
    if (srv)
        for (tunnel *t : srv->tunnels)
            n += tunnel_stream_count(t);
    return n;
}

void server_stop(bool drain)
{
    if (!srv)
        return;
    if (srv->tunnel_l)
        defer_delete(srv->tunnel_l);
    for (listener *l : {srv->tcp_l, srv->proxy_l, srv->http_l, srv->https_l})
        if (l)
            defer_delete(l);
    srv->tunnel_l = srv->tcp_l = srv->proxy_l = srv->http_l = srv->https_l = nullptr;
    for (auto &o : srv->owners)
        if (o.second.l)
            defer_delete(o.second.l);
    srv->owners.clear();
    for (auto &o : srv->uowners)
        udp_port_close(o.second.u);
    srv->uowners.clear();
    if (drain)
        return;
    std::set<tunnel *> ts = srv->tunnels;
    for (tunnel *t : ts)
        tunnel_close(t, GA_SHUTDOWN, "server is stopping");
}
