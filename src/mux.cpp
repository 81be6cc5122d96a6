/*
 * mux.cpp - the tunnel: handshake, frames, streams, flow control,
 * heartbeats. See mux.h for the model and PROTOCOL.md for the wire.
 */
#include "mux.h"
#include "conf.h"
#include "log.h"
#include "sock.h"
#include "version.h"

#include <stdarg.h>
#include <stdio.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <string.h>

#define RX_RING (256 * 1024)
#define TX_RING (512 * 1024)
#define CTL_RESERVE (16 * 1024)      /* tx room that only control frames may use */
#define OVERFLOW_MAX (1024 * 1024)   /* a peer that never reads our control frames */
#define PASS_MAX (256 * 1024)        /* bytes read from the tunnel per loop pass */
#define STREAM_RX_MIN (16 * 1024)    /* first buffer of a stream whose reader lags */
#define TURN_MIN (4 * 1024)          /* the least share of tx room a woken stream gets */
#define TX_RING_MS 10                /* DATA in tx: this long at the tunnel's rate, */
#define TX_RING_MIN (32 * 1024)      /* DATA in tx at least two frames (waiting
                                        streams wake at FRAME_MAX_DATA of room), */
#define TX_UNSENT_MIN (16 * 1024)    /* unsent at least this, */
#define TX_UNSENT_MAX (4096 * 1024)  /* and at most this (DATA: all of tx) */
#define TX_TUNE_MS 100               /* how often a busy tunnel rereads its rate */
#define CALL_FRAMES 16               /* DATA frames per readv() or writev(): 256 KiB */
#define RECLAIM_BATCH 1024           /* RECLAIMs an idle sweep sends at most, */
#define SWEEP_GAP_MS 250             /* and it runs at most this often */

static void tunnel_flush(void *arg);
static void top_up(stream *s);
static void idle_kick(tunnel *t);
static void tunnel_read(tunnel *t);
static void wake_stream(void *arg);

static uint32_t min32(uint64_t a, uint64_t b) { return (uint32_t)(a < b ? a : b); }

/* ---- sending ---- */

static void schedule_flush(tunnel *t)
{
    task_post(&t->flush_task);
}

/* Queue a control frame, in order with everything queued before it. */
static void send_ctl(tunnel *t, uint8_t type, uint8_t flags, uint32_t sid, const void *p, size_t len)
{
    uint8_t h[FRAME_HDR];
    if (t->state == TS_CLOSED || t->overflowed)
        return;
    frame_hdr_encode(h, (uint32_t)len, type, flags, sid);
    if (t->tx_overflow.empty() && ring_room(&t->txr) >= FRAME_HDR + len) {
        ring_put(&t->txr, h, FRAME_HDR);
        ring_put(&t->txr, p, len);
    } else {
        t->tx_overflow.append((const char *)h, FRAME_HDR);
        t->tx_overflow.append((const char *)p, len);
        if (t->tx_overflow.size() > OVERFLOW_MAX) {
            /* closed from a task, not here: the caller may be setting up
             * or draining a stream that the close would free under it */
            t->overflowed = true;
            task_post(&t->overflow_task);
            return;
        }
    }
    schedule_flush(t);
}

static void send_ctl_str(tunnel *t, uint8_t type, uint32_t sid, const std::string &p)
{
    send_ctl(t, type, 0, sid, p.data(), p.size());
}

/* WINDOW and RECLAIM: a u32. */
static void send_u32(tunnel *t, uint8_t type, uint8_t flags, uint32_t sid, uint32_t v)
{
    uint8_t b[4];
    put_u32(b, v);
    send_ctl(t, type, flags, sid, b, 4);
}

static void send_code(tunnel *t, uint8_t type, uint32_t sid, uint8_t code, const char *text)
{
    std::string p;
    code_encode(code, text, &p);
    send_ctl_str(t, type, sid, p);
}

/* Room for payload in tx, headers deducted, leaving the control reserve. */
static size_t tx_payload_room(const tunnel *t)
{
    if (!t->tx_overflow.empty())
        return 0;
    size_t room = ring_room(&t->txr);
    /* DATA fills the ring only up to tx_cap: what waits there, every
     * stream's next frame waits behind */
    if (t->txr.data + room > t->tx_cap + CTL_RESERVE)
        room = t->txr.data < t->tx_cap ? t->tx_cap + CTL_RESERVE - t->txr.data : CTL_RESERVE;
    if (room <= CTL_RESERVE + FRAME_HDR)
        return 0;
    room -= CTL_RESERVE;
    size_t frames = room / (FRAME_MAX_DATA + FRAME_HDR) + 1;
    return room > frames * FRAME_HDR ? room - frames * FRAME_HDR : 0;
}

static void wait_tx(stream *s)
{
    tunnel *t = s->t;
    if (s->waiting_tx)
        return;
    s->waiting_tx = true;
    s->wnext = nullptr;
    if (t->tx_waiters_tail)
        t->tx_waiters_tail->wnext = s;
    else
        t->tx_waiters = s;
    t->tx_waiters_tail = s;
}

static void unwait_tx(stream *s)
{
    tunnel *t = s->t;
    if (!s->waiting_tx)
        return;
    stream **pp = &t->tx_waiters, *prev = nullptr;
    while (*pp && *pp != s) {
        prev = *pp;
        pp = &(*pp)->wnext;
    }
    if (*pp)
        *pp = s->wnext;
    if (t->tx_waiters_tail == s)
        t->tx_waiters_tail = prev;
    s->waiting_tx = false;
    s->wnext = nullptr;
}

size_t stream_send_room(stream *s)
{
    tunnel *t = s->t;
    if (!t || t->state != TS_READY || s->fin_sent)
        return 0;
    if (s->send_credit <= 0) {
        s->want_credit = true;
        return 0;
    }
    size_t room = tx_payload_room(t);
    if (room == 0) {
        wait_tx(s);
        return 0;
    }
    /* a round of turns is on (streams woke for room): each gets its share
     * of it, so that the first woken does not take it all and leave the
     * others to wait again behind it, round after round */
    if (t->tx_share) {
        if (s->tx_round != t->tx_round) {
            s->tx_round = t->tx_round;
            s->tx_used = 0;
        }
        if (s->tx_used >= t->tx_share) {
            /* the next round starts at the next flush, which its own
             * bytes may have had already: one is due in any case */
            wait_tx(s);
            schedule_flush(t);
            return 0;
        }
        if (room > t->tx_share - s->tx_used)
            room = t->tx_share - s->tx_used;
    }
    return room < (uint64_t)s->send_credit ? room : (size_t)s->send_credit;
}

static void account_sent(stream *s, size_t n)
{
    if (s->tx_round == s->t->tx_round)
        s->tx_used += (uint32_t)n;
    s->send_credit -= (int64_t)n;
    s->bytes_out += n;
    s->t->bytes_out += n;
    schedule_flush(s->t);
}

ssize_t stream_send_from_fd(stream *s, int fd, size_t max)
{
    tunnel *t = s->t;
    iovec iov[2 * CALL_FRAMES];
    size_t plen[CALL_FRAMES];
    int niov = 0, nchunks = 0;
    size_t off = 0, want = max;

    /* header gaps between payload spans: one readv fills several frames */
    while (want > 0 && nchunks < CALL_FRAMES) {
        size_t l = want < FRAME_MAX_DATA ? want : FRAME_MAX_DATA;
        int c = ring_room_spans(&t->txr, off + FRAME_HDR, l, &iov[niov]);
        if (c == 0)
            break;
        size_t got = 0;
        for (int i = 0; i < c; i++)
            got += iov[niov + i].iov_len;
        niov += c;
        plen[nchunks++] = got;
        off += FRAME_HDR + got;
        want -= got;
    }
    if (niov == 0) {
        errno = EAGAIN;
        return -1;
    }
    ssize_t n = readv(fd, iov, niov);
    if (n <= 0)
        return n;
    size_t left = (size_t)n;
    /* all the credit taken by a read that filled what it asked for: the
     * source likely has more, and the window is what stops it */
    bool blocked = (size_t)n == max && (int64_t)n >= s->send_credit;
    off = 0;
    for (int i = 0; i < nchunks && left > 0; i++) {
        size_t l = left < plen[i] ? left : plen[i];
        uint8_t h[FRAME_HDR];
        frame_hdr_encode(h, (uint32_t)l, FT_DATA, blocked && l == left ? FL_BLOCKED : 0, s->sid);
        ring_poke(&t->txr, off, h, FRAME_HDR);
        off += FRAME_HDR + l;
        left -= l;
    }
    ring_produce(&t->txr, off);
    account_sent(s, (size_t)n);
    return n;
}

int stream_send(stream *s, const void *buf, size_t len)
{
    tunnel *t = s->t;
    const char *p = (const char *)buf;
    if (!t || s->fin_sent || len > tx_payload_room(t) || (int64_t)len > s->send_credit)
        return -1;
    while (len > 0) {
        size_t l = len < FRAME_MAX_DATA ? len : FRAME_MAX_DATA;
        uint8_t h[FRAME_HDR];
        frame_hdr_encode(h, (uint32_t)l, FT_DATA, 0, s->sid);
        ring_put(&t->txr, h, FRAME_HDR);
        ring_put(&t->txr, p, l);
        account_sent(s, l);
        p += l;
        len -= l;
    }
    return 0;
}

/* A stream's buffer goes: the last of its tunnel to hold data may leave
 * its area as ring.cpp's spare, for its next burst; one freed beside
 * others' goes back at once (the spare would only add to them). */
static void rx_release(stream *s)
{
    if (!s->t || s->t->rx_buffered)
        ring_free_beside(&s->rx);
    else
        ring_free(&s->rx);
}

static void orphan_forget(stream *s);

/* Streams drained below half of tunnel_buffer: a paused tunnel reads on. */
static void rx_resume(tunnel *t)
{
    if (t->rx_paused && t->rx_buffered <= t->cf.tunnel_buffer / 2) {
        t->rx_paused = false;
        task_post(&t->read_task);
    }
}

/* Take s out of its tunnel: no more waiting there, counted there, found
 * there. What it holds stays with it. */
static void stream_detach(stream *s)
{
    tunnel *t = s->t;
    unwait_tx(s);
    task_cancel(&s->wake);
    t->streams.erase(s->sid);
    t->rx_buffered -= s->rx.data;
    t->windows_sum -= s->rx_window;
}

static void stream_free(stream *s)
{
    tunnel *t = s->t;
    s->dead = true;
    if (t)
        stream_detach(s);
    else
        orphan_forget(s);
    rx_release(s);
    s->end = nullptr;
    defer_delete(s);
    if (t)
        rx_resume(t);
}

void stream_send_fin(stream *s)
{
    if (s->fin_sent)
        return;
    s->fin_sent = true;
    send_ctl(s->t, FT_DATA, FL_FIN, s->sid, nullptr, 0);
}

void stream_reset(stream *s, uint8_t code)
{
    if (s->t)
        send_code(s->t, FT_RESET, s->sid, code, "");
    stream_free(s);
}

void stream_close(stream *s)
{
    stream_free(s);
}

/* ---- receiving, per stream ---- */

/*
 * The window every stream starts with, as HELLO announces it: small enough
 * that the initial windows of max_streams streams take at most half of
 * tunnel_buffer. Windows grow (top_up, give_credit) into the rest, always
 * leaving room for the initial windows of the streams max_streams still
 * allows (up to half of tunnel_buffer). So the credit we hand out never
 * commits more than tunnel_buffer, and a tunnel full of slow readers stalls
 * only them. The protocol's 4 KiB minimum breaks that only where
 * tunnel_buffer is under 8 KiB x max_streams: there each stream may still
 * hold its 4 KiB.
 */
static uint32_t initial_window(const tunnel *t)
{
    uint64_t w = t->cf.tunnel_buffer / (2 * (uint64_t)(t->cf.max_streams ? t->cf.max_streams : 1));
    if (w < 4096)
        w = 4096;
    return w < t->cf.window ? (uint32_t)w : t->cf.window;
}

/* Whether the windows may grow by more bytes (see initial_window). */
static bool may_grow(const tunnel *t, uint64_t more)
{
    uint64_t n = t->streams.size(), reserve = 0;
    if (n < t->cf.max_streams)
        reserve = (t->cf.max_streams - n) * (uint64_t)initial_window(t);
    if (reserve > t->cf.tunnel_buffer / 2)
        reserve = t->cf.tunnel_buffer / 2;
    return t->windows_sum + more + reserve <= t->cf.tunnel_buffer;
}

/* Grow s's window by more bytes if the budget allows (may_grow); if not,
 * the budget is short, and quiet streams are asked for theirs (idle_sweep). */
static bool grow_window(stream *s, uint32_t more)
{
    tunnel *t = s->t;
    if (!may_grow(t, more)) {
        idle_kick(t);
        return false;
    }
    s->rx_window += more;
    t->windows_sum += more;
    return true;
}

/* Take n bytes off s's window (an orphan's counts in no tunnel). */
static void shrink_window(stream *s, uint32_t n)
{
    s->rx_window -= n;
    if (s->t)
        s->t->windows_sum -= n;
}

/* Return consumed credit to the sender; grow the window when the sender
 * starved while we were keeping up. */
static void give_credit(stream *s, bool force)
{
    tunnel *t = s->t;
    if (s->fin_recv || s->rx_consumed == 0)
        return;
    if (!force && s->rx_consumed < s->rx_window / 4)
        return;
    uint32_t inc = s->rx_consumed;
    if (s->rx_starved && s->rx.data < s->rx_window / 4 && s->rx_window < t->cf.max_window) {
        uint32_t grow = min32(s->rx_window, t->cf.max_window - s->rx_window);
        if (grow_window(s, grow))
            inc += grow;
    }
    s->rx_starved = false;
    s->rx_consumed = 0;
    s->rx_avail += inc;
    send_u32(t, FT_WINDOW, 0, s->sid, inc);
}

int stream_rx_spans(stream *s, iovec iov[2])
{
    return ring_data_spans(&s->rx, 0, s->rx.data, iov);
}

void stream_rx_consume(stream *s, size_t n)
{
    tunnel *t = s->t;
    ring_consume(&s->rx, n);
    if (t)
        t->rx_buffered -= n;
    if (!s->fin_recv) {
        s->rx_consumed += (uint32_t)n;
    } else {   /* nothing goes back after the FIN: the window shrinks to what is held */
        shrink_window(s, (uint32_t)n);
    }
    if (s->rx.data == 0 && s->rx.area) {
        s->rx_last = s->rx.size;
        rx_release(s);   /* idle streams hold no buffers */
    }
    if (!t)
        return;   /* an orphan: no credit to give */
    give_credit(s, false);
    rx_resume(t);
}

/* DATA for s, in one or two spans of the rx ring. Returns 0, or -1 when
 * the peer broke the protocol. */
static int stream_data(stream *s, iovec *iov, int n, size_t len, bool fin, bool blocked)
{
    tunnel *t = s->t;
    if (s->fin_recv || (int64_t)len > s->rx_avail)
        return -1;
    s->rx_avail -= (int64_t)len;
    s->bytes_in += len;
    t->bytes_in += len;
    s->rx_at = (uint32_t)now_ms();
    /* the first DATA since its window was given back (idle_sweep): it
     * starts again as a new stream's does */
    if (s->rx_topup) {
        s->rx_topup = false;
        if (!fin)
            top_up(s);
    }
    size_t took = 0;
    if (len > 0 && s->rx.data == 0 && s->end) {
        took = s->end->on_data(iov, n, len);
        if (s->dead)
            return 0;
    }
    if (took < len) {
        /* the buffer grows with what it holds, not with the window: a
         * large window costs memory only while its reader lags. A reader
         * that lags again gets the size its last lag reached at once
         * (likely the spare area ring.cpp kept): no copy per doubling. */
        size_t need = s->rx.data + (len - took);
        if (s->rx.size < need) {
            size_t first = s->rx_last > STREAM_RX_MIN ? s->rx_last : STREAM_RX_MIN;
            size_t sz = s->rx.size ? s->rx.size * 2 : first;
            while (sz < need)
                sz *= 2;
            if (sz > s->rx_window)
                sz = need > s->rx_window ? need : s->rx_window;
            if ((s->rx.area ? ring_grow(&s->rx, sz) : ring_alloc(&s->rx, sz)) < 0)
                return -1;
        }
        size_t skip = took;
        for (int i = 0; i < n; i++) {
            size_t l = iov[i].iov_len;
            if (skip >= l) {
                skip -= l;
                continue;
            }
            ring_put(&s->rx, (char *)iov[i].iov_base + skip, l - skip);
            skip = 0;
        }
        t->rx_buffered += len - took;
        /* credit bounds what streams hold (4 KiB a stream may pass
         * tunnel_buffer, see initial_window): more is an accounting bug,
         * and the tunnel stops reading rather than grow */
        if (t->rx_buffered > t->cf.tunnel_buffer && t->rx_buffered > t->windows_sum)
            t->rx_paused = true;
    }
    /* The peer used up its credit while we hold little of it: the credit
     * is in flight, the window (not the reader) limits the stream, and
     * give_credit() may grow it. Out of credit with a full buffer means a
     * slow reader: no growth. Over a long path the credit we return is
     * still on its way when the last credited byte arrives, so rx_avail
     * never reaches 0 here: the sender says so itself (FL_BLOCKED). */
    if ((s->rx_avail == 0 || blocked) && s->rx.data < s->rx_window / 4)
        s->rx_starved = true;
    if (took > 0) {
        s->rx_consumed += (uint32_t)took;
        if (!fin)   /* no credit goes back for a finished direction */
            give_credit(s, false);
    }
    if (fin) {
        /* no more DATA comes and no credit goes back: the window is what
         * is held (stream_rx_consume), the rest commits nothing */
        s->fin_recv = true;
        shrink_window(s, (uint32_t)s->rx_avail + s->rx_consumed);
        s->rx_avail = 0;
        s->rx_consumed = 0;
    }
    if ((fin || took < len) && s->end)
        s->end->on_rx_ready();
    return 0;
}

static void wake_stream(void *arg)
{
    stream *s = (stream *)arg;
    if (s->end)
        s->end->on_writable();
}

static void top_up(stream *s)
{
    tunnel *t = s->t;
    if (s->rx_window >= t->cf.window)
        return;
    uint32_t more = t->cf.window - s->rx_window;
    if (!grow_window(s, more)) {
        s->rx_topup = true;   /* short now: again at its next DATA */
        return;
    }
    s->rx_avail += more;
    send_u32(t, FT_WINDOW, 0, s->sid, more);
}

/*
 * Windows over the initial one (top_up, give_credit) commit part of
 * tunnel_buffer for as long as they last; streams that went quiet would
 * keep new ones at the initial window. So when a window cannot grow, a
 * sweep asks back (RECLAIM) what each quiet stream (no DATA for idle_ms,
 * nothing buffered) holds over the initial window. The peer answers with
 * the credit it gives up (RECLAIM ACK), and only then does the window
 * shrink, so no byte it may still send is ever over the window. While the
 * budget is not short, quiet streams keep their windows, and a burst after
 * a pause needs no round trip to get one back. Peers that do not answer
 * RECLAIM (their HELLO has no FL_RECLAIM) keep their windows, as before.
 */
static void idle_sweep(void *arg)
{
    tunnel *t = (tunnel *)arg;
    t->swept_at = now_ms();
    uint32_t base = initial_window(t), now = (uint32_t)t->swept_at, sent = 0;
    for (auto &it : t->streams) {
        stream *s = it.second;
        if (s->rx_window <= base || s->rx_reclaim || s->fin_recv || s->rx.data || now - s->rx_at < t->cf.idle_ms)
            continue;
        if (sent++ == RECLAIM_BATCH)
            return idle_kick(t);   /* the rest in the next sweep */
        s->rx_reclaim = s->rx_window - base;
        send_u32(t, FT_RECLAIM, 0, s->sid, s->rx_reclaim);
    }
}

static void idle_kick(tunnel *t)
{
    if (!t->peer_reclaims || t->idle_timer.armed())
        return;
    uint64_t next = t->swept_at + SWEEP_GAP_MS, now = now_ms();
    timer_arm(&t->idle_timer, next > now ? next - now : 0);
}

/* RECLAIM: the peer asks back credit it granted us (we give what we have
 * unused, up to that), or answers ours (FL_ACK: what it gave up). */
static int on_reclaim(tunnel *t, stream *s, uint8_t flags, uint32_t n)
{
    if (!(flags & FL_ACK)) {
        uint32_t give = s->send_credit <= 0 ? 0 : n < s->send_credit ? n : (uint32_t)s->send_credit;
        s->send_credit -= give;
        send_u32(t, FT_RECLAIM, FL_ACK, s->sid, give);
        return 0;
    }
    if (s->rx_reclaim == 0 || n > s->rx_reclaim)
        return -1;
    s->rx_reclaim = 0;
    if (!s->fin_recv) {   /* after the FIN, the unused credit went already */
        shrink_window(s, n);
        s->rx_avail -= n;
        s->rx_topup = true;
        /* what the end consumed and we have not returned yet may now be
         * all the window holds: without it the peer could never send again
         * (and no growth: a starved mark from before is no reason) */
        s->rx_starved = false;
        give_credit(s, false);
    }
    return 0;
}

stream::~stream()
{
    task_cancel(&wake);
    ring_free(&rx);
}

static stream *stream_new(tunnel *t, uint32_t sid)
{
    stream *s = new stream;
    s->t = t;
    s->sid = sid;
    s->rx_at = (uint32_t)now_ms();
    s->send_credit = t->peer_window;
    s->rx_window = initial_window(t);
    s->rx_avail = s->rx_window;
    s->wake.fn = wake_stream;
    s->wake.arg = s;
    t->windows_sum += s->rx_window;
    t->streams[sid] = s;
    return s;
}

size_t tunnel_stream_count(const tunnel *t)
{
    return t->streams.size();
}

size_t tunnel_unsent(const tunnel *t)
{
    return t->state == TS_CLOSED ? 0 : t->txr.data + t->tx_overflow.size() + t->tr->buffered();
}

stream *tunnel_open(tunnel *t, const open_msg &m, stream_end *end)
{
    if (t->state != TS_READY || t->streams.size() >= t->cf.max_streams)
        return nullptr;
    /* ids are never reused while alive: skip any still in use after a wrap */
    do {
        t->next_sid += 2;
        if (t->next_sid < 2)
            t->next_sid = t->cf.is_server ? 2 : 1;
    } while (t->streams.count(t->next_sid));
    stream *s = stream_new(t, t->next_sid);
    s->end = end;
    s->mapping = m.mapping;
    std::string p;
    open_encode(m, &p);
    send_ctl_str(t, FT_OPEN, s->sid, p);
    top_up(s);
    return s;
}

/* ---- the tunnel ---- */

/* ---- orphans: streams draining after their tunnel closed cleanly ----
 * One list per drain time (a reload can give tunnels different ones), so
 * that appending keeps each in order of deadline; each list has a timer
 * for its first. Doubly linked through wnext (they wait for no tx) and
 * oprev: adding, forgetting and arming cost the same for one orphan or
 * 30,000. */

struct orphan_list {
    uint32_t ms;
    stream *head = nullptr, *tail = nullptr;
    timer t;
    orphan_list *next;           /* the lists: a few, kept for the process's life */
};

static orphan_list *orphan_lists;
static size_t orphans_n;

size_t stream_orphans(void)
{
    return orphans_n;
}

static orphan_list *orphan_list_of(uint32_t ms)
{
    for (orphan_list *l = orphan_lists; l; l = l->next)
        if (l->ms == ms)
            return l;
    return nullptr;
}

static void orphan_arm(orphan_list *l)
{
    if (l->head)
        timer_arm_at(&l->t, l->head->orphan_until);
    else
        timer_cancel(&l->t);
}

static void orphans_expire(void *arg);

static void orphan_add(stream *s, uint32_t ms)
{
    orphan_list *l = orphan_list_of(ms);
    if (!l) {
        l = new orphan_list;
        l->ms = ms;
        l->t.fn = orphans_expire;
        l->t.arg = l;
        l->next = orphan_lists;
        orphan_lists = l;
    }
    s->orphan_ms = ms;
    s->oprev = l->tail;
    s->wnext = nullptr;
    if (l->tail)
        l->tail->wnext = s;
    else
        l->head = s;
    l->tail = s;
    orphans_n++;
    if (l->head == s)
        orphan_arm(l);
}

static void orphan_forget(stream *s)
{
    orphan_list *l = orphan_list_of(s->orphan_ms);
    bool first = l->head == s;
    if (s->oprev)
        s->oprev->wnext = s->wnext;
    else
        l->head = s->wnext;
    if (s->wnext)
        s->wnext->oprev = s->oprev;
    else
        l->tail = s->oprev;
    s->wnext = s->oprev = nullptr;
    orphans_n--;
    if (first)
        orphan_arm(l);
}

/* The drain time is over: what is left is cut, as a lost tunnel cuts it. */
static void orphans_expire_until(orphan_list *l, uint64_t until)
{
    while (l->head && l->head->orphan_until <= until) {
        stream *o = l->head;
        stream_end *e = o->end;
        stream_free(o);
        if (e)
            e->on_reset(RST_TUNNEL, "the tunnel closed and shutdown_timeout passed");
    }
}

static void orphans_expire(void *arg)
{
    orphans_expire_until((orphan_list *)arg, now_ms());
}

void stream_orphans_cut(void)
{
    for (orphan_list *l = orphan_lists; l; l = l->next)
        orphans_expire_until(l, UINT64_MAX);
}

/* Detach s from its closing tunnel, keeping what it holds for its end;
 * true when the end goes on draining it. */
static bool orphan(stream *s)
{
    tunnel *t = s->t;
    stream_detach(s);
    s->t = nullptr;
    s->fin_recv = s->fin_sent = true;
    s->want_credit = false;
    s->orphan_until = now_ms() + t->cf.drain_ms;
    orphan_add(s, t->cf.drain_ms);
    return s->end->on_orphan();
}

static void reset_all(tunnel *t, uint8_t code, const char *why)
{
    while (!t->streams.empty()) {
        stream *s = t->streams.begin()->second;
        stream_end *e = s->end;
        /* a stop or a reload: ends with bytes still to deliver go on */
        if (code == RST_CANCEL && e && orphan(s))
            continue;
        stream_free(s);
        if (e)
            e->on_reset(code, why);
    }
}

void tunnel_close(tunnel *t, uint8_t code, const char *why_)
{
    if (t->state == TS_CLOSED)
        return;
    /* why may be the transport's error text, which the GOAWAY's write
     * below can replace (a TLS peer that reset the connection) */
    std::string reason = why_;
    const char *why = reason.c_str();
    bool auth = code == GA_AUTH;
    bool said = false;   /* the GOAWAY and all before it went to the kernel */
    if (t->state != TS_TLS && code != GA_NORMAL) {
        /* a last word for the peer, if the socket takes it right now */
        std::string p;
        uint8_t h[FRAME_HDR];
        code_encode(code, why, &p);
        frame_hdr_encode(h, (uint32_t)p.size(), FT_GOAWAY, 0, 0);
        p.insert(0, (const char *)h, FRAME_HDR);
        /* behind what is queued (our own preface and HELLO, maybe), in
         * one write that does not wait */
        if (t->tx_overflow.empty() && ring_put(&t->txr, p.data(), p.size()) == 0) {
            iovec iov[2];
            int n = ring_data_spans(&t->txr, 0, t->txr.data, iov);
            said = t->tr->writev(iov, n) == (ssize_t)t->txr.data && t->tr->flush() == 1;
        }
    }
    t->state = TS_CLOSED;
    timer_cancel(&t->hb_timer);
    timer_cancel(&t->hs_timer);
    timer_cancel(&t->dead_timer);
    timer_cancel(&t->idle_timer);
    /* a stop or a GOAWAY closes the streams; a tunnel lost under them
     * resets them, so a truncated transfer does not look complete */
    if (code != GA_NORMAL && code != GA_SHUTDOWN)
        t->lost = true;
    reset_all(t, t->lost ? RST_TUNNEL : RST_CANCEL, why);
    reactor_del(t->tr->fd, t);
    /* a stop's connection lingers, so that frames the peer sends before
     * it reads the GOAWAY do not make our kernel reset the connection and
     * throw away what it has not sent yet (the end of a QUIT's drain) */
    if (said && code == GA_SHUTDOWN) {
        sock_close_lingering(t->tr->fd, t->cf.drain_ms);
        t->tr->fd = -1;
    }
    t->owner->on_down(t, why, auth);
    defer_delete(t);
}

tunnel::~tunnel()
{
    timer_cancel(&hb_timer);
    timer_cancel(&hs_timer);
    timer_cancel(&dead_timer);
    timer_cancel(&idle_timer);
    task_cancel(&flush_task);
    task_cancel(&read_task);
    task_cancel(&overflow_task);
    delete tr;
    ring_free(&rxr);
    ring_free(&txr);
}

/* v within [lo, hi]; hi where the rate is unknown (0) */
static uint64_t tx_bound(uint64_t rate, uint64_t v, uint64_t lo, uint64_t hi)
{
    return rate == 0 || v > hi ? hi : v < lo ? lo : v;
}

/* The tunnel's connection is what limits it (tx filled up): size the two
 * queues every stream's next frame waits behind to the connection as it is
 * now: DATA in tx (tx_cap) to TX_RING_MS of the rate it sends at, and the
 * bytes the kernel holds unsent (TCP_NOTSENT_LOWAT) to half its congestion
 * window, which is what TCP needs at hand to keep a long path full, and no
 * more than half a round trip's worth on a short one; but never less than
 * TX_RING_MS of the rate (on loopback half a window is a few hundred KiB,
 * a wakeup for every few hundred KiB moved, where the rate gives 4 MiB).
 * A fixed size is seconds on a slow link, or too little to keep a fast one
 * busy; where the system does not tell the rate, both are as large as they
 * go. */
static void tx_tune(tunnel *t)
{
    uint64_t now = now_ms();
    if (now - t->tuned_at < TX_TUNE_MS)
        return;
    t->tuned_at = now;
    uint64_t window;
    uint64_t rate = sock_send_rate(t->tr->fd, &window);
    uint64_t ring = rate * TX_RING_MS / 1000, unsent = window / 2 > ring ? window / 2 : ring;
    t->tx_cap = (size_t)tx_bound(rate, ring, TX_RING_MIN, TX_RING - CTL_RESERVE);
    sock_notsent_lowat(t->tr->fd, (int)tx_bound(rate, unsent, TX_UNSENT_MIN, TX_UNSENT_MAX));
}

static void tunnel_flush(void *arg)
{
    tunnel *t = (tunnel *)arg;
    if (t->state == TS_CLOSED)
        return;
    while (t->can_write) {
        if (!t->tx_overflow.empty()) {
            size_t l = t->tx_overflow.size() < ring_room(&t->txr) ? t->tx_overflow.size() : ring_room(&t->txr);
            ring_put(&t->txr, t->tx_overflow.data(), l);
            t->tx_overflow.erase(0, l);
        }
        if (t->txr.data == 0) {
            int r = t->tr->flush();
            if (r == IO_AGAIN)
                t->can_write = false;
            else if (r == IO_ERR)
                return tunnel_close(t, GA_PROTOCOL, t->tr->error());
            break;
        }
        iovec iov[2];
        int n = ring_data_spans(&t->txr, 0, t->txr.data, iov);
        ssize_t w = t->tr->writev(iov, n);
        if (w > 0) {
            ring_consume(&t->txr, (size_t)w);
            continue;
        }
        if (w == IO_AGAIN) {
            t->can_write = false;
            break;
        }
        return tunnel_close(t, GA_PROTOCOL, t->tr->error());
    }
    if (!t->can_write)
        tx_tune(t);
    /* a new round of turns: wake the streams that waited for room, each
     * with an equal share of it (several wait) or all of it (one); those
     * that got nothing in the last round go first, then the others, each
     * group in the order it waited */
    size_t room = tx_payload_room(t);
    if (t->tx_waiters && room >= FRAME_MAX_DATA) {
        stream *list = t->tx_waiters;
        uint32_t n = 0, last = t->tx_round++;
        for (stream *s = list; s; s = s->wnext)
            n++;
        t->tx_share = n < 2 ? 0 : (uint32_t)(room / n > TURN_MIN ? room / n : TURN_MIN);
        t->tx_waiters = t->tx_waiters_tail = nullptr;
        for (int served = 0; served < 2; served++)
            for (stream *s = list; s; s = s->wnext)
                if ((s->tx_round == last && s->tx_used > 0) == (served == 1))
                    task_post(&s->wake);
        for (stream *s = list, *next; s; s = next) {
            next = s->wnext;
            s->wnext = nullptr;
            s->waiting_tx = false;
        }
    }
}

static void send_hello(tunnel *t)
{
    hello_msg m;
    m.heartbeat_ms = t->cf.heartbeat_ms;
    m.window = initial_window(t);
    m.name = "wmproxyd " WMPROXY_VERSION;
    memcpy(m.client_id, t->cf.client_id, sizeof m.client_id);
    if (t->cf.is_server) {
        m.auth_required = t->cf.token.empty() ? 0 : 1;
        memcpy(m.nonce, t->nonce, NONCE_LEN);
    }
    std::string p;
    hello_encode(m, &p);
    send_ctl(t, FT_HELLO, t->cf.reclaim ? FL_RECLAIM : 0, 0, p.data(), p.size());
}

static void heartbeat(void *arg)
{
    tunnel *t = (tunnel *)arg;
    uint8_t b[8] = {};
    /* no stream data for a whole interval: the transport's buffers go,
     * and the memory a burst left free goes back to the system (at most
     * once an interval, however many tunnels are quiet) */
    if (t->bytes_in + t->bytes_out == t->hb_bytes) {
        static uint64_t last_give_back;
        uint64_t now = now_ms();
        t->tr->release();
        ring_drop_pages(&t->rxr);
        ring_drop_pages(&t->txr);
        if (now - last_give_back >= t->hb_ms) {
            last_give_back = now;
            ring_give_back();
        }
    }
    t->hb_bytes = t->bytes_in + t->bytes_out;
    send_ctl(t, FT_PING, 0, 0, b, 8);
    timer_arm(&t->hb_timer, t->hb_ms);
}

/* Armed for last_rx + 3 heartbeats and pushed back lazily: traffic only
 * updates last_rx, the timer re-arms itself when it finds it moved. */
static void dead_check(void *arg)
{
    tunnel *t = (tunnel *)arg;
    uint64_t now = now_ms(), limit = 3ull * t->hb_ms;
    if (now - t->last_rx < limit) {
        timer_arm_at(&t->dead_timer, t->last_rx + limit);
        return;
    }
    char why[96];
    snprintf(why, sizeof why, "peer silent for %llums (heartbeat %ums)", (unsigned long long)(now - t->last_rx),
             t->hb_ms);
    tunnel_close(t, GA_TIMEOUT, why);
}

static void become_ready(tunnel *t)
{
    t->state = TS_READY;
    t->was_ready = true;
    timer_cancel(&t->hs_timer);
    t->owner->on_ready(t);
}

/* Server: the client authenticated; READY unless the owner refuses it. */
static void admit(tunnel *t)
{
    std::string why;
    if (!t->owner->admit(t, &why))
        return tunnel_close(t, GA_LIMIT, why.c_str());
    send_ctl(t, FT_READY, 0, 0, nullptr, 0);
    become_ready(t);
}

static int on_hello(tunnel *t, uint8_t flags, const uint8_t *p, size_t len)
{
    hello_msg m;
    if (t->state != TS_HELLO || hello_decode(p, len, &m) < 0)
        return -1;
    t->peer_window = m.window;
    t->peer_reclaims = t->cf.reclaim && (flags & FL_RECLAIM);
    memcpy(t->peer_id, m.client_id, sizeof t->peer_id);
    t->hb_ms = m.heartbeat_ms > t->cf.heartbeat_ms ? m.heartbeat_ms : t->cf.heartbeat_ms;
    timer_arm(&t->hb_timer, t->hb_ms);
    timer_arm_at(&t->dead_timer, t->last_rx + 3ull * t->hb_ms);
    if (t->cf.is_server) {
        t->state = TS_AUTH;
        if (t->cf.token.empty())
            admit(t);
        return 0;
    }
    if (m.auth_required) {
        uint8_t mac[MAC_LEN];
        auth_mac(t->cf.token, m.nonce, mac);
        send_ctl(t, FT_AUTH, 0, 0, mac, MAC_LEN);
    }
    t->state = TS_AUTH;
    return 0;
}

static int on_auth(tunnel *t, const uint8_t *p, size_t len)
{
    if (!t->cf.is_server || t->state != TS_AUTH || len != MAC_LEN || t->cf.token.empty())
        return -1;
    uint8_t mac[MAC_LEN];
    auth_mac(t->cf.token, t->nonce, mac);
    if (CRYPTO_memcmp(mac, p, MAC_LEN) != 0) {
        tunnel_close(t, GA_AUTH, "wrong token");
        return 1;
    }
    admit(t);
    return 0;
}

static int protocol_error(tunnel *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int protocol_error(tunnel *t, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof why, fmt, ap);
    va_end(ap);
    tunnel_close(t, GA_PROTOCOL, why);
    return 1;
}

/* Serial-number order: is a after b (ids wrap after 2^32)? */
static bool sid_after(uint32_t a, uint32_t b)
{
    return (int32_t)(a - b) > 0;
}

/* A frame on an existing stream id: the stream, nullptr for a stream
 * closed already (late frames are normal), or a protocol error for an id
 * that was never opened. */
static int find_stream(tunnel *t, uint32_t sid, stream **out)
{
    auto it = t->streams.find(sid);
    if (it != t->streams.end()) {
        *out = it->second;
        return 0;
    }
    *out = nullptr;
    bool ours = (sid & 1) == (t->cf.is_server ? 0u : 1u);
    if (sid == 0 || (ours && sid_after(sid, t->next_sid)) || (!ours && sid_after(sid, t->peer_max_sid)))
        return -1;
    return 0;
}

/* Handle one whole frame whose payload sits at offset FRAME_HDR of rx.
 * Returns 0 to go on, 1 when the tunnel was closed. */
static int dispatch(tunnel *t, const frame_hdr &h)
{
    static uint8_t buf[FRAME_MAX_PAYLOAD];
    stream *s;

    if (t->state != TS_READY && h.type != FT_HELLO && h.type != FT_AUTH && h.type != FT_READY &&
        h.type != FT_GOAWAY && h.type != FT_PING)
        return protocol_error(t, "%s frame before authentication", frame_type_name(h.type));

    /* control frames are small: make them contiguous */
    ring_peek(&t->rxr, FRAME_HDR, buf, h.len);
    switch (h.type) {
    case FT_HELLO:
        if (on_hello(t, h.flags, buf, h.len) < 0)
            return protocol_error(t, "bad HELLO");
        return t->state == TS_CLOSED;
    case FT_AUTH: {
        int r = on_auth(t, buf, h.len);
        if (r < 0)
            return protocol_error(t, "unexpected AUTH");
        return t->state == TS_CLOSED;
    }
    case FT_READY:
        if (t->cf.is_server || t->state != TS_AUTH)
            return protocol_error(t, "unexpected READY");
        become_ready(t);
        return t->state == TS_CLOSED;
    case FT_PING:
        if (!(h.flags & FL_ACK))
            send_ctl(t, FT_PING, FL_ACK, 0, buf, h.len);
        return 0;
    case FT_GOAWAY: {
        uint8_t code = GA_PROTOCOL;
        std::string text;
        if (code_decode(buf, h.len, &code, &text) < 0)
            return protocol_error(t, "bad GOAWAY");
        std::string why = std::string("peer closed the tunnel: ") + goaway_code_name(code);
        if (!text.empty())
            why += ": " + text;
        /* the peer's stop or reload closes the streams; its error
         * (a protocol error, a timeout) resets them */
        t->lost = code != GA_NORMAL && code != GA_SHUTDOWN;
        tunnel_close(t, code == GA_AUTH ? GA_AUTH : GA_NORMAL, why.c_str());
        return 1;
    }
    case FT_WINDOW: {
        if (h.len != 4 || find_stream(t, h.sid, &s) < 0)
            return protocol_error(t, "bad WINDOW for stream %u", h.sid);
        if (!s)
            return 0;
        uint32_t inc = get_u32(buf);
        s->send_credit += inc;
        if (s->send_credit > 0x7fffffff)
            return protocol_error(t, "stream %u: window overflow (+%u)", h.sid, inc);
        if (s->want_credit && s->send_credit > 0) {
            s->want_credit = false;
            task_post(&s->wake);
        }
        return 0;
    }
    case FT_RESET: {
        if (find_stream(t, h.sid, &s) < 0)
            return protocol_error(t, "RESET for stream %u that was never opened", h.sid);
        if (!s)
            return 0;
        uint8_t code = 0;
        std::string text;
        if (code_decode(buf, h.len, &code, &text) < 0)
            return protocol_error(t, "bad RESET for stream %u", h.sid);
        stream_end *e = s->end;
        stream_free(s);
        if (e)
            e->on_reset(code, reset_code_name(code));
        return 0;
    }
    case FT_OPEN: {
        open_msg m;
        bool theirs = (h.sid & 1) == (t->cf.is_server ? 1u : 0u);
        /* id 0 is the connection's, and an id still open may not be
         * opened again even after the ids wrapped around */
        if (h.sid == 0 || !theirs || !sid_after(h.sid, t->peer_max_sid) || t->streams.count(h.sid) ||
            open_decode(buf, h.len, &m) < 0)
            return protocol_error(t, "bad OPEN for stream %u", h.sid);
        t->peer_max_sid = h.sid;
        if (t->streams.size() >= t->cf.max_streams) {
            log_warn("tunnel %s: stream %u refused: max_streams (%u) reached", t->peer.c_str(), h.sid,
                     t->cf.max_streams);
            send_code(t, FT_RESET, h.sid, RST_LIMIT, "max_streams");
            return 0;
        }
        s = stream_new(t, h.sid);
        s->mapping = m.mapping;
        top_up(s);
        t->owner->on_open(t, s, m);
        return t->state == TS_CLOSED;
    }
    case FT_REGISTER: {
        register_msg m;
        std::string why;
        if (!t->cf.is_server || register_decode(buf, h.len, &m) < 0)
            return protocol_error(t, "bad REGISTER");
        int st = t->owner->on_register(t, h.sid, m, &why);
        send_code(t, FT_REGISTERED, h.sid, (uint8_t)st, why.c_str());
        return t->state == TS_CLOSED;
    }
    case FT_REGISTERED: {
        uint8_t code;
        std::string text;
        if (t->cf.is_server || code_decode(buf, h.len, &code, &text) < 0)
            return protocol_error(t, "bad REGISTERED");
        t->owner->on_registered(t, h.sid, code, text);
        return t->state == TS_CLOSED;
    }
    case FT_RECLAIM:
        /* a request only from a peer we told we answer them */
        if (h.len != 4 || (!(h.flags & FL_ACK) && !t->cf.reclaim) || find_stream(t, h.sid, &s) < 0)
            return protocol_error(t, "bad RECLAIM for stream %u", h.sid);
        if (s && on_reclaim(t, s, h.flags, get_u32(buf)) < 0)
            return protocol_error(t, "stream %u: RECLAIM answer over what was asked", h.sid);
        return 0;
    case FT_UNREGISTER:
        if (!t->cf.is_server)
            return protocol_error(t, "unexpected UNREGISTER");
        t->owner->on_unregister(t, h.sid);
        return t->state == TS_CLOSED;
    case FT_DGRAM:
        if (h.len < 4)
            return protocol_error(t, "short DGRAM");
        t->bytes_in += h.len - 4;   /* datagrams count as payload, as DATA does */
        t->owner->on_dgram(t, h.sid, get_u32(buf), buf + 4, h.len - 4);
        return t->state == TS_CLOSED;
    default:
        return protocol_error(t, "unexpected %s frame", frame_type_name(h.type));
    }
}

/* Consecutive DATA frames of one stream already in rx reach its end in
 * one call, so a relay writes up to CALL_FRAMES frames with one writev(). Returns
 * 1 when the tunnel closed; *used is what the frames took of rx. */
static int data_frames(tunnel *t, const frame_hdr &h, size_t *used)
{
    iovec iov[2 * CALL_FRAMES];
    int n = ring_data_spans(&t->rxr, FRAME_HDR, h.len, iov);
    size_t total = h.len, off = FRAME_HDR + h.len;
    bool fin = h.flags & FL_FIN;
    bool blocked = h.flags & FL_BLOCKED;
    stream *s;

    for (int frames = 1; !fin && frames < CALL_FRAMES; frames++) {
        uint8_t hb[FRAME_HDR];
        frame_hdr nh;
        if (t->rxr.data < off + FRAME_HDR)
            break;
        ring_peek(&t->rxr, off, hb, FRAME_HDR);
        if (!frame_hdr_decode(hb, &nh) || nh.type != FT_DATA || nh.sid != h.sid ||
            t->rxr.data < off + FRAME_HDR + nh.len)
            break;
        n += ring_data_spans(&t->rxr, off + FRAME_HDR, nh.len, iov + n);
        total += nh.len;
        off += FRAME_HDR + nh.len;
        fin = nh.flags & FL_FIN;
        blocked |= (nh.flags & FL_BLOCKED) != 0;
    }
    *used = off;
    if (t->state != TS_READY)
        return protocol_error(t, "DATA frame before authentication");
    if (find_stream(t, h.sid, &s) < 0)
        return protocol_error(t, "DATA for stream %u that was never opened", h.sid);
    if (!s)
        return 0;
    if (stream_data(s, iov, n, total, fin, blocked) < 0)
        return protocol_error(t, "stream %u: %zu bytes over its window", h.sid, total);
    return t->state == TS_CLOSED;
}

/* Parse every whole frame in rx. Returns 1 when the tunnel closed. */
static int parse(tunnel *t)
{
    while (t->state != TS_CLOSED) {
        if (t->state == TS_PREFACE) {
            if (t->rxr.data < PREFACE_LEN)
                return 0;
            uint8_t p[PREFACE_LEN], version;
            ring_peek(&t->rxr, 0, p, PREFACE_LEN);
            if (!preface_decode(p, &version)) {
                tunnel_close(t, GA_PROTOCOL, "not a wmproxyd tunnel (bad magic)");
                return 1;
            }
            if (version != WMPX_VERSION) {
                char why[96];
                snprintf(why, sizeof why, "protocol version mismatch: peer speaks %u, we speak %u", version,
                         WMPX_VERSION);
                tunnel_close(t, GA_VERSION, why);
                return 1;
            }
            ring_consume(&t->rxr, PREFACE_LEN);
            t->state = TS_HELLO;
            continue;
        }
        if (t->rxr.data < FRAME_HDR)
            return 0;
        uint8_t hb[FRAME_HDR];
        frame_hdr h;
        ring_peek(&t->rxr, 0, hb, FRAME_HDR);
        if (!frame_hdr_decode(hb, &h))
            return protocol_error(t, "bad frame header (type %u, length %u)", hb[3], h.len);
        if (t->rxr.data < FRAME_HDR + h.len)
            return 0;
        size_t used = FRAME_HDR + h.len;
        if (h.type == FT_DATA ? data_frames(t, h, &used) : dispatch(t, h))
            return 1;
        ring_consume(&t->rxr, used);
        if (t->rx_paused)
            return 0;
    }
    return 1;
}

static void tunnel_read(tunnel *t)
{
    size_t pass = 0;
    while (t->state != TS_CLOSED && (t->can_read || t->tr->pending()) && !t->rx_paused) {
        if (pass >= PASS_MAX) {
            /* fairness: others get a turn, we resume at the end of the pass */
            task_post(&t->read_task);
            return;
        }
        iovec iov[2];
        int n = ring_room_spans(&t->rxr, 0, ring_room(&t->rxr), iov);
        if (n == 0)
            return; /* a whole frame always fits: parse() consumed what it could */
        ssize_t r = t->tr->readv(iov, n);
        if (r > 0) {
            ring_produce(&t->rxr, (size_t)r);
            t->last_rx = now_ms();
            pass += (size_t)r;
            if (parse(t))
                return;
            continue;
        }
        if (r == 0) {
            t->lost = true;     /* no GOAWAY: the peer died or was cut off */
            return tunnel_close(t, GA_NORMAL, "peer closed the connection");
        }
        if (r == IO_AGAIN) {
            t->can_read = false;
            break;
        }
        return tunnel_close(t, GA_PROTOCOL, t->tr->error());
    }
    /* TLS may have produced output while reading (handshake, key update) */
    if (t->state != TS_CLOSED && t->tr->buffered())
        schedule_flush(t);
}

static void read_task_fn(void *arg)
{
    tunnel *t = (tunnel *)arg;
    if (t->state != TS_CLOSED) {
        if (!t->rx_paused && t->rxr.data)
            if (parse(t))
                return;
        tunnel_read(t);
    }
}

static void start_protocol(tunnel *t)
{
    uint8_t p[PREFACE_LEN];
    preface_encode(p);
    ring_put(&t->txr, p, PREFACE_LEN);
    t->state = TS_PREFACE;
    send_hello(t);
}

void tunnel::on_io(unsigned ev)
{
    tunnel *t = this;
    if (t->state == TS_CLOSED)
        return;
    if (ev & EV_READ)
        t->can_read = true;
    if (ev & EV_WRITE)
        t->can_write = true;
    if (t->state == TS_TLS) {
        int r = t->tr->handshake();
        if (r == IO_AGAIN)
            return;
        if (r == IO_ERR)
            return tunnel_close(t, GA_PROTOCOL, t->tr->error());
        start_protocol(t);
        t->can_read = t->can_write = true;
    }
    if (ev & EV_WRITE)
        tunnel_flush(t);
    if (t->state != TS_CLOSED && (t->can_read || t->tr->pending()))
        tunnel_read(t);
}

static void hs_timeout(void *arg)
{
    tunnel *t = (tunnel *)arg;
    tunnel_close(t, GA_TIMEOUT, "handshake timed out");
}

static void read_task_cb(void *arg) { read_task_fn(arg); }

static void overflow_close(void *arg)
{
    tunnel_close((tunnel *)arg, GA_PROTOCOL, "peer does not read: control frames overflow");
}

tunnel *tunnel_new(transport *tr, const tunnel_conf &cf, tunnel_owner *owner, const std::string &peer,
                   const uint8_t *initial, size_t len)
{
    tunnel *t = new tunnel;
    t->tr = tr;
    t->cf = cf;
    t->owner = owner;
    t->peer = peer;
    t->next_sid = cf.is_server ? 0 : 0xffffffffu;   /* first: 2 or 1 */
    t->flush_task.fn = tunnel_flush;
    t->flush_task.arg = t;
    t->read_task.fn = read_task_cb;
    t->overflow_task.fn = overflow_close;
    t->overflow_task.arg = t;
    t->read_task.arg = t;
    t->hb_timer.fn = heartbeat;
    t->hb_timer.arg = t;
    t->idle_timer.fn = idle_sweep;
    t->idle_timer.arg = t;
    t->dead_timer.fn = dead_check;
    t->dead_timer.arg = t;
    t->hs_timer.fn = hs_timeout;
    t->hs_timer.arg = t;
    t->started = t->last_rx = now_ms();
    if (cf.is_server)
        RAND_bytes(t->nonce, NONCE_LEN);
    /* until tx_tune() knows the rate, the queues every stream waits
     * behind start short */
    t->tx_cap = TX_RING_MIN;
    sock_notsent_lowat(tr->fd, TX_UNSENT_MIN);
    if (ring_alloc(&t->rxr, RX_RING) < 0 || ring_alloc(&t->txr, TX_RING) < 0) {
        delete t;
        return nullptr;
    }
    if (len > 0) {
        ring_put(&t->rxr, initial, len);
        task_post(&t->read_task);
    }
    timer_arm(&t->hs_timer, cf.handshake_timeout_ms);
    if (reactor_add(tr->fd, t) < 0) {
        delete t;
        return nullptr;
    }
    int r = tr->handshake();
    if (r == IO_AGAIN)
        t->state = TS_TLS;
    else
        start_protocol(t);
    return t;
}

void tunnel_registered(tunnel *t, uint32_t idx, uint8_t status, const char *why)
{
    send_code(t, FT_REGISTERED, idx, status, why);
}

void tunnel_unregister(tunnel *t, uint32_t idx)
{
    send_ctl(t, FT_UNREGISTER, 0, idx, nullptr, 0);
}

tunnel_conf tunnel_conf_of(const conf &cf, bool is_server)
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
    t.drain_ms = cf.shutdown_timeout_ms;
    return t;
}

bool tunnel_dgram_room(const tunnel *t)
{
    /* datagrams only while the ring holds under a quarter of what DATA may
     * fill it with: a busy tunnel is busy with streams, and they come first
     * (at 3/4 of tx_cap and more, datagrams would keep the ring above the
     * level where waiting streams are woken); the ring's room beyond that
     * always holds a datagram of the largest size */
    return t->state == TS_READY && t->tx_overflow.empty() && t->txr.data <= t->tx_cap / 4;
}

int tunnel_send_dgram(tunnel *t, uint32_t flow, uint32_t idx, const void *p, size_t len)
{
    uint8_t h[FRAME_HDR + 4];
    if (!tunnel_dgram_room(t) || len + 4 > FRAME_MAX_PAYLOAD ||
        ring_room(&t->txr) < CTL_RESERVE + sizeof h + len) {
        t->dgrams_dropped++;
        return -1;
    }
    frame_hdr_encode(h, (uint32_t)(len + 4), FT_DGRAM, 0, flow);
    put_u32(h + FRAME_HDR, idx);
    ring_put(&t->txr, h, sizeof h);
    ring_put(&t->txr, p, len);
    t->bytes_out += len;
    schedule_flush(t);
    return 0;
}

int tunnel_register(tunnel *t, uint32_t idx, const register_msg &m)
{
    std::string p;
    if (register_encode(m, &p) < 0)
        return -1;
    send_ctl_str(t, FT_REGISTER, idx, p);
    return 0;
}
