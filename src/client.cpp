/*
 * client.cpp - the client role: keeps one tunnel to the server, registers
 * the [mapping]s, and connects each stream the server opens to the
 * mapping's local_addr. It never gives up: every failure (server down,
 * refused, token wrong, tunnel dead) leads to a reconnect after an
 * exponential back-off with jitter between reconnect_min and reconnect_max.
 */
#include "roles.h"
#include "log.h"
#include "mux.h"
#include "relay.h"
#include "sock.h"
#include "tls.h"
#include "udp.h"
#include "proxy.h"
#include "proxyproto.h"
#include <vector>
#include <algorithm>

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum client_state { CS_IDLE, CS_RESOLVING, CS_CONNECTING, CS_TUNNEL, CS_STOPPED };

struct client : tunnel_owner, io_handler {
    conf cf;
    tunnel_conf tcf;
    tls_ctx *tls = nullptr;
    client_state state = CS_IDLE;
    tunnel *t = nullptr;
    int fd = -1;                 /* while connecting */
    std::string peer;
    resolve_req *rq = nullptr;
    timer retry, connect_timer;
    unsigned attempts = 0;
    uint64_t ready_at = 0;       /* when the tunnel last came up */
    std::vector<sockaddr_buf> udp_local;   /* resolved local_addr of udp mappings */
    std::vector<uint64_t> udp_retry;       /* a lookup failed: the next may start then (0: one runs) */
    unsigned attempt_addr = 0;             /* which address of server this attempt takes */
    std::vector<uint32_t> rejected;        /* registrations to try again */
    timer reg_retry;

    void on_io(unsigned events) override;
    void on_ready(tunnel *t) override;
    int on_register(tunnel *, uint32_t, const register_msg &, std::string *) override { return 1; }
    void on_registered(tunnel *t, uint32_t idx, uint8_t status, const std::string &why) override;
    void on_open(tunnel *t, stream *s, const open_msg &m) override;
    void on_dgram(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len) override;
    void on_down(tunnel *t, const char *why, bool auth_failure) override;
};

static client *cl;
static void resolve_udp(size_t i);

/* The client's bind_addr: a local forward-proxy listener whose users go
 * through the tunnel; the server serves them under its own flag. */
struct local_proxy : acceptor {
    void on_accept(int cfd, const sockaddr_buf &peer) override;
    virtual ~local_proxy() {}
};

static local_proxy *lp;

void local_proxy::on_accept(int cfd, const sockaddr_buf &peer)
{
    std::string who = sock_addr_text(peer.sa());
    stream *s = nullptr;
    if (cl->t && cl->t->state == TS_READY) {
        open_msg m;
        m.mapping = 0xffffffffu;   /* not a mapping: a proxy user */
        s = tunnel_open(cl->t, m, nullptr);
    }
    if (!s) {
        log_info("proxy user %s refused: the tunnel is %s", who.c_str(), cl->t ? "full" : "down");
        close(cfd);
        return;
    }
    relay *r = relay_new(cfd, s, who);
    if (r)
        r->what = "bind_addr";
}

static void connect_server(void *);

/* Exponential back-off with jitter: a random delay in [d/2, d] where d
 * doubles from reconnect_min up to reconnect_max, so a fleet of clients
 * does not reconnect in lock-step after a server restart. */
static void schedule_retry(const char *why)
{
    uint64_t d = cl->cf.reconnect_min_ms;
    for (unsigned i = 0; i < cl->attempts && d < cl->cf.reconnect_max_ms; i++)
        d *= 2;
    if (d > cl->cf.reconnect_max_ms)
        d = cl->cf.reconnect_max_ms;
    uint32_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof r);
    uint64_t delay = d / 2 + (d / 2 ? r % (d / 2 + 1) : 0);
    cl->attempts++;
    cl->state = CS_IDLE;
    log_info("reconnecting to %s in %llums (attempt %u): %s", cl->cf.server.text().c_str(),
             (unsigned long long)delay, cl->attempts, why);
    timer_arm(&cl->retry, delay);
}

static void connect_abort(void)
{
    timer_cancel(&cl->connect_timer);
    if (cl->fd >= 0) {
        reactor_del(cl->fd, cl);
        close(cl->fd);
        cl->fd = -1;
    }
}

static void connect_failed(const char *why)
{
    connect_abort();
    schedule_retry(why);
}

static void start_tunnel(void)
{
    timer_cancel(&cl->connect_timer);
    reactor_del(cl->fd, cl);
    int fd = cl->fd;
    cl->fd = -1;
    sock_nodelay(fd);
    if (cl->tls && !cl->cf.verify)
        log_warn("tls verification is off (verify = false): the server at %s is not authenticated",
                 cl->peer.c_str());
    transport *tr = cl->tls ? tls_transport_new(cl->tls, fd, false, cl->cf.server_name.c_str())
                            : plain_transport_new(fd);
    cl->t = tunnel_new(tr, cl->tcf, cl, cl->peer);
    if (!cl->t)
        return schedule_retry("out of memory");
    cl->state = CS_TUNNEL;
}

void client::on_io(unsigned)
{
    if (state != CS_CONNECTING || fd < 0)
        return;
    int err = sock_connect_result(fd);
    if (err == EINPROGRESS || err == EALREADY)
        return;
    if (err) {
        char why[160];
        snprintf(why, sizeof why, "connect %s: %s", peer.c_str(), strerror(err));
        return connect_failed(why);
    }
    start_tunnel();
}

static void resolved(void *, int status, const addr_list *l, const char *err)
{
    cl->rq = nullptr;
    if (status != 0) {
        char why[200];
        snprintf(why, sizeof why, "resolve %s: %s", cl->cf.server.host.c_str(), err);
        return schedule_retry(why);
    }
    /* each attempt takes the next address of the name: a server with a
     * dead address is reached on the next attempt, not never */
    const sockaddr_buf *a = &l->a[cl->attempt_addr++ % l->n];
    cl->peer = sock_addr_text(a->sa());
    cl->fd = sock_connect(a->sa(), a->len);
    if (cl->fd < 0) {
        char why[160];
        snprintf(why, sizeof why, "connect %s: %s", cl->peer.c_str(), strerror(errno));
        return schedule_retry(why);
    }
    cl->state = CS_CONNECTING;
    reactor_add(cl->fd, cl);
    timer_arm(&cl->connect_timer, cl->cf.connect_timeout_ms);
}

static void connect_server(void *)
{
    if (cl->state == CS_STOPPED)
        return;
    cl->state = CS_RESOLVING;
    cl->rq = resolve_start(cl->cf.server.host, cl->cf.server.port, resolved, nullptr);
    if (!cl->rq)
        schedule_retry("out of memory");
}

/* Register mapping i over tunnel tn. */
static void register_mapping(tunnel *tn, size_t i)
{
    const mapping_conf &mc = cl->cf.mappings[i];
    register_msg m;
    conf_register_msg(mc, &m);
    if (tunnel_register(tn, (uint32_t)i, m) < 0)
        log_error("mapping %s not registered: its domains and header rules exceed 16 KiB", mc.name.c_str());
}

static void retry_registrations(void *)
{
    std::vector<uint32_t> again;
    again.swap(cl->rejected);
    if (!cl->t || cl->t->state != TS_READY)
        return;
    for (uint32_t idx : again)
        if (idx < cl->cf.mappings.size() && !cl->cf.mappings[idx].removed) {
            log_info("mapping %s: asking the server again", cl->cf.mappings[idx].name.c_str());
            register_mapping(cl->t, idx);
        }
}

void client::on_ready(tunnel *tn)
{
    std::string how = tn->tr->describe();
    log_info("tunnel up peer=%s%s%s", tn->peer.c_str(), how.empty() ? "" : " ", how.c_str());
    ready_at = now_ms();         /* the back-off resets once it has lasted (on_down) */
    attempt_addr--;     /* the address that worked is tried first next time */
    rejected.clear();
    reg_retry.fn = retry_registrations;
    for (size_t i = 0; i < cf.mappings.size(); i++)
        if (!cf.mappings[i].removed)
            register_mapping(tn, i);
}

void client::on_registered(tunnel *, uint32_t idx, uint8_t status, const std::string &why)
{
    if (idx >= cf.mappings.size() || cf.mappings[idx].removed)
        return;
    const mapping_conf &mc = cf.mappings[idx];
    if (status == 0) {
        log_info("mapping registered name=%s mode=%s", mc.name.c_str(), conf_mode_name(mc.mode));
        return;
    }
    log_warn("mapping rejected name=%s reason=\"%s\"", mc.name.c_str(), why.c_str());
    /* what another tunnel holds may be ours from before a restart, still
     * held by a connection the server has not found dead yet (it will
     * within 3 heartbeats): ask again every 1.5 heartbeats */
    rejected.push_back(idx);
    if (t && !reg_retry.armed())
        timer_arm(&reg_retry, t->hb_ms * 3 / 2);
}

void client::on_open(tunnel *, stream *s, const open_msg &m)
{
    if (state == CS_STOPPED) {
        log_info("stream %u refused: stopping gracefully", s->sid);
        return stream_reset(s, RST_REFUSED);
    }
    if (m.mapping >= cf.mappings.size() || cf.mappings[m.mapping].mode == MODE_UDP ||
        cf.mappings[m.mapping].removed) {
        log_warn("stream %u for unknown mapping %u", s->sid, m.mapping);
        return stream_reset(s, RST_NOMAPPING);
    }
    const mapping_conf &mc = cf.mappings[m.mapping];
    if (mc.mode == MODE_PROXY) {
        proxy_conf pc;
        pc.flag = mc.flag;
        pc.username = mc.username;
        pc.password = mc.password;
        pc.connect_timeout_ms = cf.connect_timeout_ms;
        pc.handshake_timeout_ms = cf.handshake_timeout_ms;
        pc.where = "mapping " + mc.name;
        /* the user's own address, for the log and access log */
        char who[64] = "?";
        if (m.family == 4 || m.family == 6) {
            char ip[INET6_ADDRSTRLEN];
            inet_ntop(m.family == 4 ? AF_INET : AF_INET6, m.src, ip, sizeof ip);
            snprintf(who, sizeof who, m.family == 4 ? "%s:%u" : "[%s]:%u", ip, m.sport);
        }
        return proxy_serve_stream(s, who, pc);
    }
    relay *r = relay_connect(mc.local_addr.host, mc.local_addr.port, s, cf.connect_timeout_ms);
    if (!r)
        return;
    r->what = mc.name;
    /* PROXY protocol: the header goes to local_addr before any stream data */
    if (mc.mode == MODE_TCP && mc.proxy_protocol == 1)
        proxyproto_v1(m.family, m.src, m.dst, m.sport, m.dport, &r->prefix);
    else if (mc.mode == MODE_TCP && mc.proxy_protocol == 2)
        proxyproto_v2(m.family, m.src, m.dst, m.sport, m.dport, &r->prefix);
}

void client::on_dgram(tunnel *tn, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len)
{
    if (idx >= cf.mappings.size() || cf.mappings[idx].mode != MODE_UDP || cf.mappings[idx].removed ||
        idx >= udp_local.size())
        return;
    if (udp_local[idx].len == 0) {
        /* not (yet) resolved: dropped, as a datagram may be */
        if (udp_retry[idx] && now_ms() >= udp_retry[idx])
            resolve_udp(idx);
        return;
    }
    udp_flow_dgram(tn, flow, idx, udp_local[idx], cf.mappings[idx].udp_timeout_ms, p, len);
}

void client::on_down(tunnel *tn, const char *why, bool auth_failure)
{
    t = nullptr;
    timer_cancel(&reg_retry);
    rejected.clear();
    udp_flows_close();
    if (state == CS_STOPPED)
        return;
    if (auth_failure)
        log_error("server %s refused the tunnel: %s", peer.c_str(), why);
    else if (!tn->was_ready)
        log_warn("tunnel to %s failed: %s", peer.c_str(), why);
    else
        log_info("tunnel down peer=%s reason=\"%s\"", peer.c_str(), why);
    /* a tunnel that lasted two heartbeats was a good one: start the
     * back-off again; one that went down sooner (a twin client replacing
     * it, a server that drops it) goes on growing it, so flapping is
     * damped */
    if (tn->was_ready && now_ms() - ready_at >= 2ull * cf.heartbeat_ms)
        attempts = 0;
    schedule_retry(why);
}


tls_ctx *client_tls(const conf &cf, std::string *err)
{
    tls_client_opts o;
    o.ca = cf.ca;
    o.cert = cf.cert;
    o.key = cf.key;
    o.fingerprint = cf.fingerprint;
    o.verify = cf.verify;
    return tls_client_ctx_new(o, err);
}

/* udp mappings need their local_addr before the first datagram; a lookup
 * that failed (DNS not up yet at boot) is tried again when a datagram
 * comes, at most once per UDP_RESOLVE_RETRY_MS */
#define UDP_RESOLVE_RETRY_MS 5000

static void resolve_udp(size_t i)
{
    const mapping_conf &mc = cl->cf.mappings[i];
    if (cl->udp_local.size() < cl->cf.mappings.size()) {
        cl->udp_local.resize(cl->cf.mappings.size());
        cl->udp_retry.resize(cl->cf.mappings.size());
    }
    if (mc.mode != MODE_UDP || mc.removed)
        return;
    cl->udp_retry[i] = 0;
    resolve_req *q = resolve_start(mc.local_addr.host, mc.local_addr.port,
                  [](void *arg, int status, const addr_list *l, const char *e) {
                      size_t idx = (size_t)(uintptr_t)arg;
                      if (status == 0) {
                          cl->udp_local[idx] = l->a[0];
                          return;
                      }
                      cl->udp_retry[idx] = now_ms() + UDP_RESOLVE_RETRY_MS;
                      log_error("mapping %s: resolve %s: %s (again on a datagram after %ds)",
                                cl->cf.mappings[idx].name.c_str(), cl->cf.mappings[idx].local_addr.text().c_str(),
                                e, UDP_RESOLVE_RETRY_MS / 1000);
                  },
                  (void *)(uintptr_t)i);
    if (!q)
        cl->udp_retry[i] = now_ms() + UDP_RESOLVE_RETRY_MS;   /* not started: no callback will come */
}

static void warn_open_proxy(const mapping_conf &mc)
{
    if (mc.mode == MODE_PROXY && mc.username.empty())
        log_warn("mapping %s is an open proxy into this private network: set username and password",
                 mc.name.c_str());
}

static int open_local_proxy(const conf &cf, std::string *err)
{
    int fd = sock_listen(cf.bind_addr, SOCK_STREAM, err);
    if (fd < 0)
        return -1;
    lp = new local_proxy;
    acceptor_start(lp, fd, cf.bind_addr.text());
    log_info("listening for proxy users on %s (served through the tunnel)", cf.bind_addr.text().c_str());
    return 0;
}

static void close_local_proxy(void)
{
    if (!lp)
        return;
    acceptor_stop(lp);
    delete lp;
    lp = nullptr;
}

/*
 * The id the server knows this client by: the same for the same host,
 * token and set of mapping names, so a client restarted after its address
 * changed replaces its old tunnel (dead, not yet timed out) instead of
 * finding its own ports taken. The token goes into it so the id cannot be
 * derived without the secret.
 */
static void client_id(const conf &cf, uint8_t out[16])
{
    char host[256] = "";
    gethostname(host, sizeof host - 1);
    std::vector<std::string> names;
    for (const mapping_conf &m : cf.mappings)
        names.push_back(m.name);
    std::sort(names.begin(), names.end());
    std::string in = std::string("wmproxyd client id\n") + host + "\n" + cf.token + "\n";
    for (const std::string &n : names)
        in += n + "\n";
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256((const uint8_t *)in.data(), in.size(), md);
    memcpy(out, md, 16);
}

int client_start(const conf &cf, std::string *err)
{
    cl = new client;
    cl->cf = cf;
    cl->tcf = tunnel_conf_of(cf, false);
    client_id(cf, cl->tcf.client_id);
    cl->retry.fn = connect_server;
    cl->connect_timer.fn = [](void *) {
        char why[160];
        snprintf(why, sizeof why, "connect %s: timed out", cl->peer.c_str());
        connect_failed(why);
    };
    if (cf.ts && !(cl->tls = client_tls(cf, err)))
        return -1;
    for (size_t i = 0; i < cf.mappings.size(); i++) {
        resolve_udp(i);
        warn_open_proxy(cf.mappings[i]);
    }
    if (cf.bind_addr.set && open_local_proxy(cf, err) < 0)
        return -1;
    log_info("client starting: server %s%s, %zu mapping(s)", cf.server.text().c_str(), cf.ts ? " (tls)" : "",
             cf.mappings.size());
    connect_server(nullptr);
    return 0;
}

static bool same_mapping(const mapping_conf &a, const mapping_conf &b)
{
    return a.mode == b.mode && a.local_addr.host == b.local_addr.host && a.local_addr.port == b.local_addr.port &&
           a.domains == b.domains && a.remote_port == b.remote_port && a.udp_timeout_ms == b.udp_timeout_ms &&
           a.host == b.host && a.request_headers == b.request_headers && a.response_headers == b.response_headers &&
           a.proxy_protocol == b.proxy_protocol && a.flag == b.flag && a.username == b.username &&
           a.password == b.password;
}

/*
 * HUP. Mappings are compared by name: an unchanged one keeps its index and
 * registration; a changed one is unregistered and registered anew under a
 * new index; a dropped one is unregistered and left behind as removed (the
 * streams it carries finish); a new one is registered. Established streams
 * are never dropped. What defines the tunnel itself (server, TLS settings)
 * takes effect by reconnecting; the rest (token, timeouts, windows) at the
 * next connect.
 */
int client_reload(const conf &nc, std::string *err)
{
    if (nc.role_ != ROLE_CLIENT) {
        *err = nc.path + ": the file now configures a server; the role cannot change on reload";
        return -1;
    }
    const conf &oc = cl->cf;
    bool retunnel = oc.server.host != nc.server.host || oc.server.port != nc.server.port || oc.ts != nc.ts ||
                    oc.server_name != nc.server_name || oc.ca != nc.ca || oc.fingerprint != nc.fingerprint ||
                    oc.verify != nc.verify || oc.cert != nc.cert || oc.key != nc.key;
    /* the files are read again on every reload: rewritten in place (a
     * renewed certificate, a new CA) they serve the next connection */
    tls_ctx *ntls = nullptr;
    if (nc.ts && !(ntls = client_tls(nc, err)))
        return -1;
    bool rebind = oc.bind_addr.set != nc.bind_addr.set || oc.bind_addr.host != nc.bind_addr.host ||
                  oc.bind_addr.port != nc.bind_addr.port;
    if (rebind) {
        local_proxy *old = lp;
        lp = nullptr;
        if (nc.bind_addr.set && open_local_proxy(nc, err) < 0) {
            lp = old;
            if (ntls)
                tls_ctx_free(ntls);
            return -1;
        }
        std::swap(old, lp);
        close_local_proxy();
        lp = old;
    }

    std::vector<mapping_conf> next = oc.mappings;   /* indices stay */
    std::vector<size_t> to_register, to_unregister;
    for (size_t i = 0; i < next.size(); i++) {
        if (next[i].removed)
            continue;
        const mapping_conf *n = nullptr;
        for (const mapping_conf &m : nc.mappings)
            if (m.name == next[i].name)
                n = &m;
        if (!n || !same_mapping(*n, next[i])) {
            next[i].removed = true;
            to_unregister.push_back(i);
        }
    }
    for (const mapping_conf &m : nc.mappings) {
        bool kept = false;
        for (const mapping_conf &o : next)
            if (!o.removed && o.name == m.name)
                kept = true;
        if (!kept) {
            next.push_back(m);
            to_register.push_back(next.size() - 1);
        }
    }
    uint8_t id[16];
    memcpy(id, cl->tcf.client_id, sizeof id);
    cl->cf = nc;
    cl->cf.mappings = next;
    cl->tcf = tunnel_conf_of(nc, false);
    memcpy(cl->tcf.client_id, id, sizeof id);
    /* before a reconnect too: a udp mapping is registered on the new tunnel */
    for (size_t i : to_register) {
        resolve_udp(i);
        warn_open_proxy(next[i]);
    }
    if (retunnel || ntls) {
        /* the old context lives on while the live tunnel uses it */
        tls_ctx_free(cl->tls);
        cl->tls = ntls;
    }
    if (retunnel) {
        log_info("reload: the server or its TLS settings changed, reconnecting");
        cl->attempts = 0;
        cl->attempt_addr = 0;
        if (cl->t) {
            /* a clean close, as a stop: the server ends the old
             * tunnel's streams with a FIN, not as lost */
            tunnel_close(cl->t, GA_SHUTDOWN, "reconnecting after a reload");
        } else if (cl->state != CS_STOPPED) {
            /* an attempt under way goes to the old address: drop it */
            if (cl->state == CS_CONNECTING)
                connect_abort();
            resolve_cancel(cl->rq);
            cl->rq = nullptr;
            timer_cancel(&cl->retry);
            connect_server(nullptr);
        }
        return 0;
    }
    for (size_t i : to_unregister)
        log_info("mapping %s dropped by the reload", next[i].name.c_str());
    if (cl->t && cl->t->state == TS_READY) {
        for (size_t i : to_unregister)
            tunnel_unregister(cl->t, (uint32_t)i);
        for (size_t i : to_register)
            register_mapping(cl->t, i);
    }
    return 0;
}

size_t client_streams(void)
{
    return cl && cl->t ? tunnel_stream_count(cl->t) : 0;
}

size_t client_unsent(void)
{
    return cl && cl->t ? tunnel_unsent(cl->t) : 0;
}

void client_stop(bool drain)
{
    if (!cl)
        return;
    cl->state = CS_STOPPED;
    timer_cancel(&cl->retry);
    close_local_proxy();
    proxy_stop(drain);
    if (!drain && cl->t)
        tunnel_close(cl->t, GA_SHUTDOWN, "client is stopping");
}
