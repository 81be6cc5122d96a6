/*
 * mux.h - the tunnel: one transport carrying many streams as frames.
 *
 * Shared by both roles. A tunnel owns two rings: rx (frames read from the
 * transport, parsed in place) and tx (frames waiting for the transport).
 * Stream payload goes from a socket straight into tx behind a reserved
 * header (stream_send_from_fd), and from rx straight to the destination
 * socket (stream_end::on_data); a stream copies into a buffer of its own
 * only what its destination could not take yet, at most its window.
 *
 * Flow control (per stream, per direction): the receiver grants credit equal
 * to the buffer space it will hold for the stream. The sender never sends
 * more than its credit. The receiver returns credit as its end consumes,
 * once a quarter of the window has been consumed, and grows the window
 * (doubling, up to max_window, while the tunnel's windows stay under
 * tunnel_buffer with room left for the first windows of the streams still
 * to come) when the sender ran out of credit while the stream's buffer
 * was nearly empty: then the window, not the reader, was the bottleneck.
 * A stalled reader therefore stops only its own stream, and holds at most
 * its window.
 *
 * Reasons to stop work are named flags: TX_FULL (no room in tx: streams
 * queue on tx_waiters), NO_CREDIT (stream_send_room() == 0: the end hears
 * on_writable()), RX_PAUSED (streams hold more than both tunnel_buffer
 * and the credit given, which only an accounting bug could cause: the
 * tunnel stops reading until they drain below half of tunnel_buffer).
 */
#ifndef WMPROXY_MUX_H
#define WMPROXY_MUX_H

#include <stdint.h>
#include <string>
#include <unordered_map>
#include "frame.h"
#include "reactor.h"
#include "ring.h"
#include "transport.h"

struct tunnel;
struct stream;

/* What a stream is connected to on this side: a socket relay, an HTTP
 * session, a proxy session. */
struct stream_end {
    /* Payload for the end. Deliver what you can now and return how many
     * bytes you took (0..len); the stream buffers the rest and calls
     * on_rx_ready() later, when the end should drain stream_rx_spans(). */
    virtual size_t on_data(const iovec *iov, int n, size_t len) = 0;
    /* Buffered data, or the peer's FIN, waits for the end. */
    virtual void on_rx_ready() = 0;
    /* Sending is possible again (credit or tx room came back). */
    virtual void on_writable() = 0;
    /* The stream is gone (peer reset, tunnel down): drop the pointer,
     * close, do not call any stream_* function on it again. */
    virtual void on_reset(uint8_t code, const char *why) = 0;
    /* The tunnel closed cleanly (the peer's GOAWAY for a stop or a reload,
     * our reload) while the stream still held bytes for the end, or the
     * end had bytes of its own still to deliver. Return true to go on
     * draining the stream, now an orphan: it has no tunnel, its peer's
     * direction is finished (FIN) after what it holds, nothing can be sent
     * on it, and it is closed with stream_close() or stream_reset(). One
     * still open after the tunnel's drain time (shutdown_timeout) hears
     * on_reset(RST_TUNNEL). false: on_reset(RST_CANCEL) follows at once. */
    virtual bool on_orphan() { return false; }
protected:
    ~stream_end() {}
};

struct stream : deferred {
    tunnel *t = nullptr;
    uint32_t sid = 0;
    stream_end *end = nullptr;

    int64_t send_credit = 0;     /* bytes we may send */
    uint32_t rx_window = 0;      /* current receive window */
    int64_t rx_avail = 0;        /* credit the peer still holds */
    uint32_t rx_consumed = 0;    /* consumed since the last WINDOW */
    bool rx_starved = false;     /* the peer ran out of credit since the last WINDOW */
    bool rx_topup = false;       /* top_up at its next DATA (given back, or short at its open) */
    uint32_t rx_at = 0;          /* (uint32_t)now_ms() of its last DATA, or its open */
    uint32_t rx_reclaim = 0;     /* credit asked back (RECLAIM), not answered yet */
    ring rx;                     /* what the end could not take yet; allocated on demand */
    size_t rx_last = 0;          /* the size rx had when it was last drained and freed */

    bool fin_sent = false, fin_recv = false;
    bool waiting_tx = false;     /* on t->tx_waiters */
    uint32_t tx_round = 0;       /* the round of turns tx_used counts in */
    uint32_t tx_used = 0;        /* bytes sent in that round */
    stream *wnext = nullptr;     /* tx_waiters link */
    bool want_credit = false;
    task wake;                   /* runs end->on_writable() */
    uint64_t bytes_in = 0, bytes_out = 0;
    uint32_t mapping = 0;
    bool dead = false;           /* freed: the end must not use it */
    uint64_t orphan_until = 0;   /* an orphan (t null, on_orphan()): reset at this time */
    stream *oprev = nullptr;     /* the orphans' list: oprev and wnext */
    uint32_t orphan_ms = 0;      /* the drain time, which names its list */
    ~stream() override;
};

/* Its tunnel closed and it drains what it holds (stream_end::on_orphan). */
static inline bool stream_orphaned(const stream *s) { return !s->t; }

/* The peer finished its direction and the end has taken every byte. */
static inline bool stream_rx_done(const stream *s) { return s->fin_recv && s->rx.data == 0; }

enum tunnel_state { TS_TLS, TS_PREFACE, TS_HELLO, TS_AUTH, TS_READY, TS_CLOSED };

/* The role's side of a tunnel (server.cpp, client.cpp). */
struct tunnel_owner {
    /* Server: t authenticated; false refuses it (GOAWAY limit, why) before
     * READY. */
    virtual bool admit(tunnel *, std::string *) { return true; }
    /* Authenticated: the client registers now; the server waits. */
    virtual void on_ready(tunnel *t) = 0;
    /* Server: a mapping to register; returns 0 accepted, else the reason in *why. */
    virtual int on_register(tunnel *t, uint32_t idx, const register_msg &m, std::string *why) = 0;
    /* Client: the answer to a registration. */
    virtual void on_registered(tunnel *t, uint32_t idx, uint8_t status, const std::string &why) = 0;
    /* The peer opened stream s: attach an end to it, or stream_reset it. */
    virtual void on_open(tunnel *t, stream *s, const open_msg &m) = 0;
    /* Server: the client dropped mapping idx (a reload). */
    virtual void on_unregister(tunnel *, uint32_t) {}
    /* A datagram of flow id for mapping idx (UDP mappings). */
    virtual void on_dgram(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len) = 0;
    /* The tunnel is closed; every stream was reset already. why is for the log. */
    virtual void on_down(tunnel *t, const char *why, bool auth_failure) = 0;
protected:
    ~tunnel_owner() {}
};

struct tunnel_conf {
    bool is_server = false;
    std::string token;
    uint32_t heartbeat_ms = 15000;
    uint32_t window = 256 * 1024, max_window = 4 * 1024 * 1024;
    uint64_t tunnel_buffer = 32ull << 20;
    uint32_t max_streams = 4096;
    uint32_t handshake_timeout_ms = 10000;
    uint32_t drain_ms = 10000;    /* shutdown_timeout: how long orphans may drain */
    uint32_t idle_ms = 1000;      /* a stream without DATA this long gives its grown window
                                     back when another cannot grow (idle_sweep) */
    bool reclaim = true;          /* announce and answer RECLAIM (false: as older versions) */
    uint8_t client_id[16] = {};  /* client: sent in HELLO */
};

struct tunnel : io_handler, deferred {
    tunnel_owner *owner = nullptr;
    tunnel_conf cf;
    transport *tr = nullptr;
    std::string peer;            /* address, for log lines */
    tunnel_state state = TS_PREFACE;
    bool can_read = true, can_write = true;
    bool rx_paused = false;      /* RX_PAUSED, see above */

    ring rxr, txr;
    std::string tx_overflow;     /* control frames that found tx full */
    stream *tx_waiters = nullptr, *tx_waiters_tail = nullptr;
    uint32_t tx_round = 0;       /* rounds of turns (tunnel_flush): each stream may */
    uint32_t tx_share = 0;       /* send tx_share in a round; 0: no limit */
    size_t tx_cap = 0;           /* bytes of DATA tx may hold (tx_tune) */
    uint64_t tuned_at = 0;       /* now_ms() of its last reading of the rate */
    task flush_task, read_task;
    task overflow_task;          /* closes the tunnel once control frames overflowed */
    bool overflowed = false;     /* tx_overflow passed its cap: no more frames, closing */

    std::unordered_map<uint32_t, stream *> streams;
    uint32_t next_sid = 0;       /* ours: server even, client odd */
    uint32_t peer_max_sid = 0;   /* highest the peer opened */
    uint32_t peer_window = 0;    /* the peer's initial window */
    uint64_t rx_buffered = 0;    /* bytes held in stream rx rings */
    uint64_t windows_sum = 0;    /* sum of rx windows, capped by tunnel_buffer */
    bool peer_reclaims = false;  /* its HELLO had FL_RECLAIM: idle windows shrink */
    timer idle_timer;            /* idle_sweep, armed when a window could not grow */
    uint64_t swept_at = 0;       /* now_ms() of the last idle_sweep */
    uint8_t nonce[NONCE_LEN];
    uint32_t hb_ms = 0;          /* agreed heartbeat */
    uint64_t last_rx = 0;
    timer hb_timer, hs_timer, dead_timer;
    uint64_t bytes_in = 0, bytes_out = 0, started = 0;
    uint64_t hb_bytes = 0;      /* bytes_in + bytes_out at the last heartbeat */
    uint64_t dgrams_dropped = 0;
    bool closing = false;
    bool lost = false;           /* closed by a failure, not by a GOAWAY or a stop */
    bool was_ready = false;      /* authenticated once: a close is "down", else "refused" */
    uint8_t peer_id[16] = {};    /* server: the client's id from its HELLO */
    void *user = nullptr;        /* the owner's per-tunnel data */

    void on_io(unsigned events) override;
    ~tunnel() override;
};

struct conf;
/* The tunnel settings of a role's configuration. */
tunnel_conf tunnel_conf_of(const conf &cf, bool is_server);

/* Start a tunnel on an established (or TLS-handshaking) transport.
 * initial/len: bytes already read from it (the server sniffs the first
 * bytes to tell tunnel clients from proxy users). */
tunnel *tunnel_new(transport *tr, const tunnel_conf &cf, tunnel_owner *owner, const std::string &peer,
                   const uint8_t *initial = nullptr, size_t len = 0);
/* Close: reset every stream, tell the owner, free later. code/why go in a
 * GOAWAY to the peer when the transport can still take it. GA_NORMAL and
 * GA_SHUTDOWN end the streams as closed (a FIN to their sockets); any other
 * code, or a connection that failed, as reset (RST_TUNNEL). */
void tunnel_close(tunnel *t, uint8_t code, const char *why);
/* Client: register mapping idx. Returns 0, or -1 when its domains and
 * rules do not fit in a REGISTER frame (16 KiB). */
int tunnel_register(tunnel *t, uint32_t idx, const register_msg &m);
/* Client: drop mapping idx (reload). */
void tunnel_unregister(tunnel *t, uint32_t idx);
/* Server: answer (or, later, take back) mapping idx: status 0 accepted,
 * else rejected for the reason why. */
void tunnel_registered(tunnel *t, uint32_t idx, uint8_t status, const char *why);
/* Open a stream from this side. Returns nullptr at max_streams. */
stream *tunnel_open(tunnel *t, const open_msg &m, stream_end *end);
size_t tunnel_stream_count(const tunnel *t);
/* Streams still draining after their tunnel closed (on_orphan()). */
size_t stream_orphans(void);
/* The process stops: every orphan's time is up now (on_reset(RST_TUNNEL)). */
void stream_orphans_cut(void);
/* Bytes queued for the peer that the kernel does not have yet: a stream
 * gone after its last bytes were read may still have them here. */
size_t tunnel_unsent(const tunnel *t);
/* Send one datagram of flow for mapping idx, or drop it when the tunnel
 * cannot take it right now: datagrams never wait and never hold back
 * streams. Returns 0 sent, -1 dropped (counted in t->dgrams_dropped). */
int tunnel_send_dgram(tunnel *t, uint32_t flow, uint32_t idx, const void *p, size_t len);
/* Whether a datagram would be taken now (readers wait rather than drop). */
bool tunnel_dgram_room(const tunnel *t);

/* Payload bytes s may send now. 0: wait, end->on_writable() will follow. */
size_t stream_send_room(stream *s);
/* Read from fd straight into the tunnel, at most max (<= send room).
 * Returns bytes (>0), 0 at end of file, -1 with errno (EAGAIN included). */
ssize_t stream_send_from_fd(stream *s, int fd, size_t max);
/* Copy len bytes in as DATA. Returns 0, or -1 if it does not fit in the
 * send room (nothing sent then). */
int stream_send(stream *s, const void *buf, size_t len);
/* Our direction is finished: DATA with FIN. */
void stream_send_fin(stream *s);
/* Abort: RESET to the peer; the stream is freed (no callback to the end). */
void stream_reset(stream *s, uint8_t code);
/* Bytes waiting for the end: spans, then stream_rx_consume(). */
int stream_rx_spans(stream *s, iovec iov[2]);
void stream_rx_consume(stream *s, size_t n);
static inline size_t stream_rx_pending(const stream *s) { return s->rx.data; }
/* Both directions are finished: free the stream (no frame is sent). */
void stream_close(stream *s);

#endif
