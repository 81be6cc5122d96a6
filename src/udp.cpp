/*
 * udp.cpp - UDP mappings, both sides; see udp.h.
 */
#include "udp.h"
#include "log.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <string>
#include <unordered_map>

/* Datagrams read per socket at a time; after a full batch, or while the
 * tunnel has no room for datagrams, the socket rests UDP_PAUSE_MS outside
 * the poller, so a flood costs the loop neither reads nor wakeups beyond
 * UDP_BATCH datagrams a millisecond and the streams keep the rest (what
 * overflows the socket buffer meanwhile is dropped by the kernel, as
 * datagrams may be). */
#define UDP_BATCH 16
#define UDP_PAUSE_MS 1

static uint8_t dgram_buf[65536];

/* A UDP socket read in batches; read_batch() returns true when it stopped
 * with datagrams possibly left (full batch, or no room in the tunnel). */
struct dgram_sock : io_handler {
    int fd = -1;
    timer more;
    virtual bool read_batch() = 0;
    void on_io(unsigned events) override;
    void run();
protected:
    ~dgram_sock() {}
};

static void dgram_resume(void *arg)
{
    dgram_sock *d = (dgram_sock *)arg;
    reactor_add(d->fd, d);
    d->run();
}

void dgram_sock::run()
{
    if (!read_batch())
        return;
    /* out of the poller until the timer: under a flood every datagram
     * would otherwise be a wakeup */
    reactor_del(fd, this);
    timer_arm(&more, UDP_PAUSE_MS);
}

void dgram_sock::on_io(unsigned ev)
{
    if ((ev & EV_READ) && !more.armed())
        run();
}

static void dgram_sock_init(dgram_sock *d, int fd)
{
    d->fd = fd;
    d->more.fn = dgram_resume;
    d->more.arg = d;
    reactor_add(fd, d);
}

static void dgram_sock_close(dgram_sock *d)
{
    if (d->more.armed())
        timer_cancel(&d->more);
    else
        reactor_del(d->fd, d);
    close(d->fd);
}

/* Flows expire lazily: traffic only moves last_seen, the timer re-arms
 * itself when it finds it moved. */
struct flow_base {
    uint32_t id = 0;
    uint64_t last_seen = 0;
    uint32_t timeout_ms = 60000;
    timer t;
};

static bool flow_expired(flow_base *f)
{
    uint64_t due = f->last_seen + f->timeout_ms;
    if ((int64_t)(due - now_ms()) > 0) {
        timer_arm_at(&f->t, due);
        return false;
    }
    return true;
}

/* ---- server ---- */

struct sflow : flow_base {
    udp_port *port = nullptr;
    sockaddr_buf peer;
    std::string key;
    uint64_t started = 0, up = 0, down = 0;   /* for its access line */
};

struct udp_port : dgram_sock {
    tunnel *t = nullptr;
    uint32_t idx = 0;
    uint32_t timeout_ms = 60000;
    std::string name;           /* the mapping's, for access lines */
    std::unordered_map<std::string, sflow *> by_peer;
    bool read_batch() override;
    virtual ~udp_port() {}
};

static std::unordered_map<uint32_t, sflow *> sflows;
static uint32_t next_flow;

/* A flow ends (silence, or its port closed): one access line, as a
 * connection gets. */
static void sflow_free(sflow *f)
{
    access_log("%s udp %s - %llu %llu %llums", sock_addr_text(f->peer.sa()).c_str(), f->port->name.c_str(),
               (unsigned long long)f->up, (unsigned long long)f->down,
               (unsigned long long)(now_ms() - f->started));
    timer_cancel(&f->t);
    f->port->by_peer.erase(f->key);
    sflows.erase(f->id);
    delete f;
}

static void sflow_timeout(void *arg)
{
    sflow *f = (sflow *)arg;
    if (flow_expired(f)) {
        log_debug("udp flow %u from %s forgotten after %ums of silence", f->id,
                  sock_addr_text(f->peer.sa()).c_str(), f->timeout_ms);
        sflow_free(f);
    }
}

bool udp_port::read_batch()
{
    udp_port *u = this;
    for (int i = 0; i < UDP_BATCH; i++) {
        if (!tunnel_dgram_room(u->t))
            return true;
        sockaddr_buf peer;
        peer.len = sizeof peer.ss;
        ssize_t n = recvfrom(u->fd, dgram_buf, sizeof dgram_buf, 0, (sockaddr *)&peer.ss, &peer.len);
        if (n < 0)
            return false;
        std::string key((const char *)&peer.ss, peer.len);
        auto it = u->by_peer.find(key);
        sflow *f;
        if (it == u->by_peer.end()) {
            /* flows are bounded like streams: each costs a socket on the
             * client; beyond the bound a new sender's datagrams are dropped */
            if (u->by_peer.size() >= u->t->cf.max_streams) {
                u->t->dgrams_dropped++;
                continue;
            }
            f = new sflow;
            do
                f->id = ++next_flow;
            while (f->id == 0 || sflows.count(f->id));
            f->port = u;
            f->peer = peer;
            f->key = key;
            f->timeout_ms = u->timeout_ms;
            f->started = now_ms();
            f->t.fn = sflow_timeout;
            f->t.arg = f;
            u->by_peer[key] = f;
            sflows[f->id] = f;
            timer_arm(&f->t, f->timeout_ms);
            log_debug("udp flow %u from %s", f->id, sock_addr_text(peer.sa()).c_str());
        } else {
            f = it->second;
        }
        f->last_seen = now_ms();
        f->up += (uint64_t)n;
        tunnel_send_dgram(u->t, f->id, u->idx, dgram_buf, (size_t)n);
    }
    return true;
}

udp_port *udp_port_open(const addr_conf &a, tunnel *t, uint32_t idx, uint32_t timeout_ms, const std::string &name,
                        std::string *err)
{
    int fd = sock_listen(a, SOCK_DGRAM, err);
    if (fd < 0)
        return nullptr;
    udp_port *u = new udp_port;
    u->t = t;
    u->idx = idx;
    u->timeout_ms = timeout_ms ? timeout_ms : 60000;
    u->name = name;
    dgram_sock_init(u, fd);
    return u;
}

void udp_port_close(udp_port *u)
{
    while (!u->by_peer.empty())
        sflow_free(u->by_peer.begin()->second);
    dgram_sock_close(u);
    delete u;
}

void udp_port_reply(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len)
{
    auto it = sflows.find(flow);
    if (it == sflows.end())
        return;   /* forgotten already: the reply has no one to go to */
    sflow *f = it->second;
    if (f->port->t != t || f->port->idx != idx) {
        log_debug("udp flow %u: a reply from another tunnel or mapping dropped", flow);
        return;
    }
    f->last_seen = now_ms();
    /* a full socket buffer drops the datagram, as the network would */
    if (sendto(f->port->fd, p, len, 0, f->peer.sa(), f->peer.len) >= 0)
        f->down += len;
}

/* ---- client ---- */

struct cflow : flow_base, dgram_sock {
    tunnel *tn = nullptr;
    uint32_t idx = 0;
    bool read_batch() override;
    virtual ~cflow() {}
};

static std::unordered_map<uint32_t, cflow *> cflows;

static void cflow_free(cflow *f)
{
    timer_cancel(&f->t);
    dgram_sock_close(f);
    cflows.erase(f->id);
    delete f;
}

static void cflow_timeout(void *arg)
{
    cflow *f = (cflow *)arg;
    if (flow_expired(f)) {
        log_debug("udp flow %u closed after %ums of silence", f->id, f->timeout_ms);
        cflow_free(f);
    }
}

bool cflow::read_batch()
{
    for (int i = 0; i < UDP_BATCH; i++) {
        if (!tunnel_dgram_room(tn))
            return true;
        ssize_t n = recv(fd, dgram_buf, sizeof dgram_buf, 0);
        if (n < 0)
            return false;   /* EAGAIN, or ECONNREFUSED from an ICMP: nothing to send */
        last_seen = now_ms();
        tunnel_send_dgram(tn, id, idx, dgram_buf, (size_t)n);
    }
    return true;
}

void udp_flow_dgram(tunnel *t, uint32_t flow, uint32_t idx, const sockaddr_buf &local, uint32_t timeout_ms,
                    const uint8_t *p, size_t len)
{
    auto it = cflows.find(flow);
    cflow *f;
    if (it == cflows.end()) {
        if (cflows.size() >= t->cf.max_streams) {
            t->dgrams_dropped++;
            return;
        }
        int fd = socket(local.ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, local.sa(), local.len) < 0) {
            /* out of descriptors under a flood of senders: say so once a
             * second, not once a datagram */
            static uint64_t last_warn;
            if (now_ms() - last_warn >= 1000) {
                last_warn = now_ms();
                log_warn("udp flow %u: socket to %s: %s (datagrams dropped)", flow,
                         sock_addr_text(local.sa()).c_str(), strerror(errno));
            }
            if (fd >= 0)
                close(fd);
            return;
        }
        f = new cflow;
        f->id = flow;
        f->tn = t;
        f->idx = idx;
        f->timeout_ms = timeout_ms;
        f->t.fn = cflow_timeout;
        f->t.arg = f;
        cflows[flow] = f;
        dgram_sock_init(f, fd);
        timer_arm(&f->t, timeout_ms);
        log_debug("udp flow %u opened to %s", flow, sock_addr_text(local.sa()).c_str());
    } else {
        f = it->second;
    }
    f->last_seen = now_ms();
    send(f->fd, p, len, 0);
}

void udp_flows_close(void)
{
    while (!cflows.empty())
        cflow_free(cflows.begin()->second);
}

size_t udp_flow_count(void)
{
    return cflows.size();
}
