/*
 * relay.cpp - a TCP socket joined to a stream, see relay.h.
 */
#include "relay.h"
#include "log.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define PUMP_MAX (256 * 1024)  /* bytes socket->tunnel per relay per pass */
#define ORPHAN_POLL_MS 50      /* an orphan waiting for its last bytes' acknowledgement */

static void relay_run(void *arg);

static void relay_init(relay *r)
{
    r->resume.fn = relay_run;
    r->resume.arg = r;
    r->started = now_ms();
}

relay *relay_new(int fd, stream *s, const std::string &peer)
{
    relay *r = new relay;
    relay_init(r);
    r->fd = fd;
    r->s = s;
    r->peer = peer;
    s->end = r;
    sock_nodelay(fd);
    if (reactor_add(fd, r) < 0) {
        r->fd = -1;
        close(fd);
        relay_close(r, RST_RESET);
        return nullptr;
    }
    return r;
}

relay::~relay()
{
    delete addrs;
    task_cancel(&resume);
    timer_cancel(&connect_timer);
}

void relay_close(relay *r, uint8_t code)
{
    if (r->closed)
        return;
    r->closed = true;
    if (r->s) {
        stream *s = r->s;
        r->s = nullptr;
        if (code == RST_CANCEL && s->fin_sent && stream_rx_done(s))
            stream_close(s);
        else
            stream_reset(s, code);
    }
    task_cancel(&r->resume);
    timer_cancel(&r->connect_timer);
    resolve_cancel(r->rq);
    r->rq = nullptr;
    if (r->fd >= 0) {
        reactor_del(r->fd, r);
        close(r->fd);
        r->fd = -1;
    }
    if (r->done)
        r->done(r);
    defer_delete(r);
}

/* tunnel -> socket */
static int pump_out(relay *r)
{
    stream *s = r->s;
    while (r->can_write && !r->prefix.empty()) {
        ssize_t w = write(r->fd, r->prefix.data(), r->prefix.size());
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                r->can_write = false;
            else
                return -1;
        } else {
            r->prefix.erase(0, (size_t)w);
        }
    }
    if (!r->prefix.empty())
        return 0;
    while (r->can_write && stream_rx_pending(s)) {
        iovec iov[2];
        int n = stream_rx_spans(s, iov);
        size_t want = iov[0].iov_len + (n > 1 ? iov[1].iov_len : 0);
        ssize_t w = writev(r->fd, iov, n);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                r->can_write = false;
                break;
            }
            return -1;
        }
        r->down += (size_t)w;
        stream_rx_consume(s, (size_t)w);
        if ((size_t)w < want)
            r->can_write = false;
    }
    if (stream_rx_done(s) && !r->shut) {
        r->shut = true;
        shutdown(r->fd, SHUT_WR);
    }
    return 0;
}

/* socket -> tunnel */
static int pump_in(relay *r)
{
    stream *s = r->s;
    size_t budget = PUMP_MAX;
    while (r->can_read && !r->eof) {
        size_t room = stream_send_room(s);
        if (room == 0)
            return 0;   /* on_writable() follows */
        if (room > budget)
            room = budget;
        ssize_t n = stream_send_from_fd(s, r->fd, room);
        if (n > 0) {
            r->up += (size_t)n;
            budget -= (size_t)n;
            if ((size_t)n < room && !r->rdhup)
                r->can_read = false;   /* drained; the next edge tells us more */
            if (budget == 0) {
                task_post(&r->resume);   /* fairness: the others get a turn */
                return 0;
            }
            continue;
        }
        if (n == 0) {
            r->eof = true;
            stream_send_fin(s);
            return 0;
        }
        if (errno == EAGAIN || errno == EINTR) {
            r->can_read = false;
            return 0;
        }
        return -1;
    }
    return 0;
}

/* What an orphan's socket sends can go nowhere: read and drop it up to
 * the EOF rather than leave it unread, which would stall a program that
 * writes before it reads, and make closing reset the connection and throw
 * away our last bytes not yet sent (a lingering close, as nginx does one).
 * Returns 0, or -1 on an error. */
static int linger(relay *r)
{
    if (r->eof)
        return 0;
    size_t dropped = 0;
    int k = sock_discard(r->fd, PUMP_MAX, &dropped);
    if (dropped)
        r->dropped = true;
    if (k == DISCARD_MORE)
        task_post(&r->resume);   /* fairness, as pump_in() */
    else if (k == DISCARD_EOF)
        r->eof = true;
    else if (k == DISCARD_AGAIN)
        r->can_read = false;
    return k < 0 ? -1 : 0;
}

static void relay_poll(void *arg)
{
    task_post(&((relay *)arg)->resume);
}

/* How an orphan ends once it delivered all: cleanly when its socket's
 * program finished too (EOF) and sent nothing we had to drop; with a
 * reset when we dropped its bytes, so that they do not look delivered,
 * but only once it has taken all of ours (nothing left unacknowledged),
 * which a reset would throw away. The stream's drain time bounds both. */
static void orphan_end(relay *r)
{
    /* from the start, not only once ours are out: a program that writes
     * before it reads would otherwise never read what we hold for it */
    if (linger(r) < 0) {
        log_debug("relay %s: %s", r->peer.c_str(), strerror(errno));
        return relay_close(r, RST_RESET);
    }
    if (!r->shut)
        return;   /* still writing out what the stream holds */
    if (r->dropped) {
        if (sock_unacked(r->fd) > 0) {
            r->connect_timer.fn = relay_poll;   /* long connected: free for this */
            r->connect_timer.arg = r;
            timer_arm(&r->connect_timer, ORPHAN_POLL_MS);
            return;
        }
        log_debug("relay %s: its bytes after the tunnel closed were dropped: reset", r->peer.c_str());
        sock_linger0(r->fd);
        return relay_close(r, RST_RESET);
    }
    if (r->eof)
        relay_close(r, RST_CANCEL);
}

static void relay_run(void *arg)
{
    relay *r = (relay *)arg;
    if (r->closed || !r->s || r->connecting)
        return;
    bool orphan = stream_orphaned(r->s);
    if (r->write_error || pump_out(r) < 0 || (!orphan && pump_in(r) < 0)) {
        log_debug("relay %s: %s", r->peer.c_str(), strerror(errno));
        return relay_close(r, RST_RESET);
    }
    if (orphan)
        orphan_end(r);
    else if (r->eof && r->shut)
        relay_close(r, RST_CANCEL);   /* both directions finished cleanly */
}

static void relay_skipped(void *arg, const std::string &addr, int err)
{
    relay *r = (relay *)arg;
    log_info("connect %s (%s): %s; trying its next address", r->peer.c_str(), addr.c_str(), strerror(err));
}

/* Connect to the next address of local_addr after err (0: the first); when
 * none is left the relay is closed. */
static void connect_next(relay *r, int err)
{
    if (r->fd >= 0) {
        reactor_del(r->fd, r);
        close(r->fd);
    }
    r->fd = addr_list_connect(r->addrs, err, relay_skipped, r);
    if (r->fd >= 0 && reactor_add(r->fd, r) == 0)
        return;
    err = errno;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    log_info("connect %s: %s", r->peer.c_str(), strerror(err));
    relay_close(r, err == ECONNREFUSED ? RST_REFUSED : RST_UNREACHABLE);
}

static void connected(relay *r)
{
    int err = sock_connect_result(r->fd);
    if (err == EINPROGRESS || err == EALREADY)
        return;
    if (err && addr_list_more(r->addrs)) {
        connect_next(r, err);
        return;
    }
    timer_cancel(&r->connect_timer);
    r->connecting = false;
    delete r->addrs;
    r->addrs = nullptr;
    if (err) {
        log_info("connect %s: %s", r->peer.c_str(), strerror(err));
        return relay_close(r, err == ECONNREFUSED ? RST_REFUSED : RST_UNREACHABLE);
    }
    sock_nodelay(r->fd);
    r->can_write = true;
    relay_run(r);
}

void relay::on_io(unsigned ev)
{
    if (closed)
        return;
    if (ev & EV_RDHUP)
        rdhup = true;
    if (ev & EV_READ)
        can_read = true;
    if (ev & EV_WRITE)
        can_write = true;
    if (connecting) {
        if (ev & (EV_WRITE | EV_ERR | EV_HUP))
            connected(this);
        return;
    }
    relay_run(this);
}

size_t relay::on_data(const iovec *iov, int n, size_t len)
{
    if (connecting || !can_write || !prefix.empty() || write_error)
        return 0;
    ssize_t w = writev(fd, iov, n);
    if (w < 0) {
        can_write = false;
        if (errno != EAGAIN && errno != EINTR) {
            write_error = true;
            task_post(&resume);
        }
        return 0;
    }
    if ((size_t)w < len)
        can_write = false;
    down += (size_t)w;
    return (size_t)w;
}

void relay::on_rx_ready()
{
    task_post(&resume);
}

void relay::on_writable()
{
    task_post(&resume);
}

void relay::on_reset(uint8_t code, const char *why)
{
    s = nullptr;
    log_debug("stream of %s reset: %s", peer.c_str(), why);
    /* carry a reset (and a lost tunnel) as a reset; a peer's or our own
     * stop just closes, and so does an orphan that delivered it all and
     * only waited for the socket's EOF */
    if (code != RST_CANCEL && fd >= 0 && !(orphaned && shut && !dropped))
        sock_linger0(fd);
    relay_close(this, RST_CANCEL);
}

bool relay::on_orphan()
{
    /* nothing to deliver: closed at once, as before orphans */
    if (connecting || fd < 0 || write_error || (!stream_rx_pending(s) && prefix.empty()))
        return false;
    orphaned = true;
    task_post(&resume);
    return true;
}

static void connect_timeout(void *arg)
{
    relay *r = (relay *)arg;
    log_info("connect %s: timed out", r->peer.c_str());
    relay_close(r, RST_TIMEOUT);
}

static void resolved(void *arg, int status, const addr_list *l, const char *err)
{
    relay *r = (relay *)arg;
    r->rq = nullptr;
    if (status != 0) {
        log_info("resolve %s: %s", r->peer.c_str(), err);
        return relay_close(r, RST_DNS);
    }
    r->addrs = new addr_list(*l);
    connect_next(r, 0);
}

relay *relay_connect(const std::string &host, uint16_t port, stream *s, uint32_t timeout_ms)
{
    relay *r = new relay;
    relay_init(r);
    r->s = s;
    s->end = r;
    r->connecting = true;
    r->peer = (host.find(':') != std::string::npos ? "[" + host + "]" : host) + ":" + std::to_string(port);
    r->connect_timer.fn = connect_timeout;
    r->connect_timer.arg = r;
    timer_arm(&r->connect_timer, timeout_ms);
    r->rq = resolve_start(host, port, resolved, r);
    if (!r->rq) {
        relay_close(r, RST_DNS);
        return nullptr;
    }
    return r;
}
