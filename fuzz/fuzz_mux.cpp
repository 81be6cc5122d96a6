/*
 * fuzz_mux.cpp - the tunnel state machine fed whole frame sequences.
 *
 * Input: 3 control bytes, then what the peer sends.
 *   c0 bit0 server role (else client)     bit1 a token is configured
 *      bit2 prepend a valid preface       bit3 small windows / 4 streams
 *      bit4 handshake() says IO_AGAIN twice (the TLS state)
 *      bit5 hand the first bytes to tunnel_new() as already read (not
 *           with bit4: the server sniffs after the handshake)
 *      bit6 end of stream after the input (else IO_AGAIN forever)
 *      bit7 with c1 == 0xff: backend_add() fails (tunnel_new error path)
 *   c1, c2 seed the choices: read chunk sizes, short/refused writes,
 *      what the stream ends take, reset, close, send; and
 *   c2 bit7 "tame" ends that never reset or close (deterministic
 *           regressions)
 *      bit6 the peer reads nothing until it has sent all its input (the
 *           tx ring fills: streams wait for room)
 *      bit5 timers fire at random (heartbeat, dead peer, handshake)
 *      bit4 the transport fails at random (read, write, flush)
 *
 * A fake transport hands the input out; whatever the tunnel writes is
 * checked to be a preface and well-formed frames. The reactor runs on
 * fake_backend.cpp: one pass per fake_reactor_pass(). Each input ends with
 * tunnel_close() and a pass that reaps, so nothing outlives it.
 *
 * A server with a token gets an all-zero nonce, so a seed can carry the
 * right AUTH (token "fuzz-token").
 */
#include "mux.h"
#include "fake_backend.h"
#include "log.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <vector>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); abort(); } } while (0)

#define FUZZ_TOKEN "fuzz-token"

static uint32_t rng_state;
static uint32_t rnd(void)
{
    uint32_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    return rng_state = x;
}
static bool chance(unsigned one_in) { return rnd() % one_in == 0; }

/* FUZZ_MUX_TRACE=1: what each input does (frames written, how the
 * tunnel ended), to see how deep the seeds get */
static const bool trace = getenv("FUZZ_MUX_TRACE") != nullptr;

/* The byte every stub end sends on stream sid. */
static uint8_t pattern(uint32_t sid) { return (uint8_t)('a' + sid % 26); }

/* The read end of a pipe, for stream_send_from_fd(). */
static int pipe_rd = -1, pipe_wr = -1;

/* What the tunnel writes must parse as a preface and frames. */
struct out_check {
    std::string buf;
    bool preface = false;
    void feed(const iovec *iov, int n, size_t take)
    {
        for (int i = 0; i < n && take > 0; i++) {
            size_t l = iov[i].iov_len < take ? iov[i].iov_len : take;
            buf.append((const char *)iov[i].iov_base, l);
            take -= l;
        }
        for (;;) {
            if (!preface) {
                if (buf.size() < PREFACE_LEN)
                    return;
                uint8_t v;
                CHECK(preface_decode((const uint8_t *)buf.data(), &v) == 1 && v == WMPX_VERSION);
                buf.erase(0, PREFACE_LEN);
                preface = true;
                continue;
            }
            if (buf.size() < FRAME_HDR)
                return;
            frame_hdr h;
            int ok = frame_hdr_decode((const uint8_t *)buf.data(), &h);
            if (trace || !ok)
                fprintf(stderr, "mux: wrote %s flags %u sid %u len %u\n", frame_type_name(h.type), h.flags, h.sid,
                        h.len);
            CHECK(ok == 1);
            if (buf.size() < FRAME_HDR + h.len)
                return;
            const uint8_t *p = (const uint8_t *)buf.data() + FRAME_HDR;
            switch (h.type) {
            case FT_HELLO: { hello_msg m; CHECK(hello_decode(p, h.len, &m) == 0); break; }
            case FT_OPEN: { open_msg m; CHECK(open_decode(p, h.len, &m) == 0); break; }
            case FT_REGISTER: { register_msg m; CHECK(register_decode(p, h.len, &m) == 0); break; }
            case FT_RESET: case FT_GOAWAY: case FT_REGISTERED: {
                uint8_t c; std::string s; CHECK(code_decode(p, h.len, &c, &s) == 0); break; }
            case FT_WINDOW: CHECK(h.len == 4 && h.sid != 0); break;
            case FT_DATA:
                if (h.sid == 0 || h.len > FRAME_MAX_DATA)
                    fprintf(stderr, "mux: DATA frame with sid %u len %u\n", h.sid, h.len);
                CHECK(h.sid != 0 && h.len <= FRAME_MAX_DATA);
                /* the stub ends send their stream's pattern byte only: a
                 * header written over payload, or payload under the wrong
                 * id, shows here */
                for (uint32_t i = 0; i < h.len; i++)
                    CHECK(p[i] == pattern(h.sid));
                break;
            default: break;
            }
            buf.erase(0, FRAME_HDR + h.len);
        }
    }
};

struct fake_transport : transport {
    const uint8_t *in;
    size_t len, pos = 0;
    bool eof_at_end;
    int hs_again;
    out_check *out;
    bool stall = false;     /* writes wait until all input is read */
    bool errors = false;    /* rare IO_ERR and flush() IO_AGAIN */
    fake_transport(const uint8_t *p, size_t n, bool eof, int again, out_check *o)
        : transport(1000), in(p), len(n), eof_at_end(eof), hs_again(again), out(o) {}
    int handshake() override { return hs_again-- > 0 ? IO_AGAIN : 1; }
    ssize_t readv(const iovec *iov, int n) override
    {
        if (errors && chance(64))
            return IO_ERR;
        if (pos == len)
            return eof_at_end ? 0 : IO_AGAIN;
        if (chance(8))
            return IO_AGAIN;
        size_t want;
        switch (rnd() % 4) {
        case 0: want = 1 + rnd() % 16; break;
        case 1: want = 1 + rnd() % 1024; break;
        default: want = len - pos; break;
        }
        if (want > len - pos)
            want = len - pos;
        size_t got = 0;
        for (int i = 0; i < n && got < want; i++) {
            size_t l = iov[i].iov_len < want - got ? iov[i].iov_len : want - got;
            memcpy(iov[i].iov_base, in + pos + got, l);
            got += l;
        }
        pos += got;
        return (ssize_t)got;
    }
    ssize_t writev(const iovec *iov, int n) override
    {
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        CHECK(total > 0);
        if (errors && chance(64))
            return IO_ERR;
        if (chance(8) || (stall && pos < len))
            return IO_AGAIN;
        size_t take = chance(4) ? 1 + rnd() % total : total;
        out->feed(iov, n, take);
        return (ssize_t)take;
    }
    int flush() override
    {
        if (errors && chance(16))
            return chance(4) ? IO_ERR : IO_AGAIN;
        return 1;
    }
    int shutdown_write() override { return 0; }
    const char *error() const override { return "fake transport error"; }
};

static out_check *cur_out;

/* What the tunnel has not written yet continues what it has: out.buf (a
 * partial frame) then the tx ring must read as whole frame headers,
 * checked right after each send so a bad frame is caught where it is
 * made. Headers only: payload is checked when written. */
static void check_tx(const tunnel *t)
{
    const out_check &o = *cur_out;
    if (!o.preface)
        return;
    size_t total = o.buf.size() + t->txr.data, pos = 0;
    auto byte = [&](size_t i) -> uint8_t {
        return i < o.buf.size() ? (uint8_t)o.buf[i] : ring_byte(&t->txr, i - o.buf.size());
    };
    while (pos + FRAME_HDR <= total) {
        uint8_t hb[FRAME_HDR];
        for (size_t i = 0; i < FRAME_HDR; i++)
            hb[i] = byte(pos + i);
        frame_hdr h;
        int ok = frame_hdr_decode(hb, &h);
        if (!ok || (h.type == FT_DATA && h.sid == 0)) {
            fprintf(stderr, "mux: tx ring holds a bad header at %zu of %zu: type %u sid %u len %u\n", pos, total,
                    h.type, h.sid, h.len);
            abort();
        }
        pos += FRAME_HDR + h.len;
    }
}

struct stub_end;
static std::vector<stub_end *> ends;
static bool tame;   /* c2 bit 7: ends never quit, every OPEN gets one */


/* A stream end that takes some bytes, sometimes sends, sometimes quits. */
struct stub_end : stream_end {
    stream *s;
    explicit stub_end(stream *st) : s(st) {}
    virtual ~stub_end() {}

    void maybe_quit()
    {
        if (!s || tame)
            return;
        if (chance(16)) {
            stream *x = s;
            s = nullptr;
            stream_reset(x, RST_CANCEL);
        } else if (stream_rx_done(s) && chance(2)) {
            stream_send_fin(s);
            if (chance(2)) {
                stream *x = s;
                s = nullptr;
                stream_close(x);
            }
        }
    }
    void maybe_send()
    {
        if (!s)
            return;
        /* a burst runs the credit or the tx ring out */
        bool burst = chance(4);
        for (int rounds = burst ? 64 : 1; rounds > 0 && s; rounds--) {
            size_t room = stream_send_room(s);
            if (room == 0 || (!burst && chance(2)))
                return;
            send_some(room);
        }
    }
    void send_some(size_t room)
    {
        size_t n = 1 + rnd() % (room < 40000 ? room : 40000);
        std::vector<char> b(n, (char)pattern(s->sid));
        if (chance(2)) {
            CHECK(stream_send(s, b.data(), n) == 0);
        } else {
            /* straight from a descriptor into the tx ring, headers
             * poked in between */
            if (n > 65536)
                n = 65536;
            CHECK(write(pipe_wr, b.data(), n) == (ssize_t)n);
            ssize_t r = stream_send_from_fd(s, pipe_rd, rnd() % 2 ? room : n);
            CHECK(r > 0 && (size_t)r <= n);
            char sink[4096];
            while (read(pipe_rd, sink, sizeof sink) > 0)
                ;
        }
        CHECK(s->send_credit >= 0);
        check_tx(s->t);
        if (chance(16))
            stream_send_fin(s);
    }
    size_t on_data(const iovec *iov, int n, size_t len) override
    {
        CHECK(s && !s->dead);
        size_t total = 0;
        unsigned sum = 0;
        for (int i = 0; i < n; i++) {
            for (size_t k = 0; k < iov[i].iov_len; k++)
                sum += ((const uint8_t *)iov[i].iov_base)[k];
            total += iov[i].iov_len;
        }
        CHECK(total == len);
        (void)sum;
        size_t took;
        switch (rnd() % 3) {
        case 0: took = 0; break;
        case 1: took = rnd() % (len + 1); break;
        default: took = len; break;
        }
        maybe_send();
        maybe_quit();
        return took;
    }
    void on_rx_ready() override
    {
        CHECK(s && !s->dead);
        iovec iov[2];
        int n = stream_rx_spans(s, iov);
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        CHECK(total == stream_rx_pending(s));
        if (total && !chance(4))
            stream_rx_consume(s, chance(2) ? total : rnd() % (total + 1));
        maybe_quit();
    }
    void on_writable() override
    {
        CHECK(s && !s->dead);
        maybe_send();
        maybe_quit();
    }
    void on_reset(uint8_t, const char *) override
    {
        /* s may be nullptr already: the tunnel can close inside a
         * stream_reset() of ours (control frame overflow) */
        s = nullptr;
    }
};

/* What run_timers() does when one of the tunnel's timers is due: the
 * clock is real, so the harness decides when. */
static void fire_timer(tunnel *t)
{
    timer *all[] = {&t->hb_timer, &t->dead_timer, &t->hs_timer};
    timer *tm = all[rnd() % 3];
    if (!tm->armed())
        return;
    /* sometimes the peer has been silent for three heartbeats */
    if (tm == &t->dead_timer && chance(2))
        t->last_rx = now_ms() - 3ull * t->hb_ms - 1;
    timer_cancel(tm);
    tm->fn(tm->arg);
}

/* Every stream an end holds is the one its tunnel knows by that id. */
static void check_ends(const tunnel *t)
{
    for (const stub_end *e : ends) {
        if (!e->s)
            continue;
        CHECK(!e->s->dead && e->s->t == t);
        auto it = t->streams.find(e->s->sid);
        CHECK(it != t->streams.end() && it->second == e->s);
    }
}

static stub_end *new_end(stream *s)
{
    stub_end *e = new stub_end(s);
    ends.push_back(e);
    return e;
}

/* Drain every end that holds buffered data, as a relay would later. */
static void drain_ends(void)
{
    for (size_t i = 0; i < ends.size(); i++) {
        stub_end *e = ends[i];
        if (e->s && stream_rx_pending(e->s) && chance(2))
            e->on_rx_ready();
        if (e->s && chance(4))
            e->on_writable();
    }
}

struct stub_owner : tunnel_owner {
    bool down = false;
    void open_one(tunnel *t)
    {
        open_msg m;
        m.mapping = rnd() % 3;
        m.family = 4;
        stub_end *e = new_end(nullptr);
        stream *s = tunnel_open(t, m, e);
        e->s = s && !s->dead ? s : nullptr;
        if (s)
            e->maybe_send();
    }
    void on_ready(tunnel *t) override
    {
        if (!t->cf.is_server) {
            register_msg m;
            m.mode = MODE_HTTP;
            m.name = "web";
            m.domains = "a.example,b.example";
            m.rules = "H backend\nQ X-A: 1\n";
            CHECK(tunnel_register(t, 0, m) == 0);
            m.mode = MODE_UDP;
            m.remote_port = 5353;
            CHECK(tunnel_register(t, 1, m) == 0);
        }
        if (chance(2))
            open_one(t);
    }
    int on_register(tunnel *t, uint32_t, const register_msg &, std::string *why) override
    {
        CHECK(t->cf.is_server);
        if (chance(4)) {
            *why = "refused by the fuzzer";
            return 1;
        }
        if (chance(4))
            open_one(t);
        return 0;
    }
    void on_registered(tunnel *t, uint32_t idx, uint8_t, const std::string &) override
    {
        CHECK(!t->cf.is_server);
        if (chance(4))
            open_one(t);
        if (chance(8))
            tunnel_unregister(t, idx);
    }
    void on_unregister(tunnel *t, uint32_t) override
    {
        CHECK(t->cf.is_server);
        if (chance(4))
            open_one(t);
    }
    void on_open(tunnel *, stream *s, const open_msg &) override
    {
        /* id 0 is the connection's, never a stream's */
        CHECK(s->sid != 0);
        /* a new stream never takes the id of one still alive */
        for (stub_end *e : ends)
            CHECK(!e->s || e->s->sid != s->sid);
        switch (tame ? 7 : rnd() % 8) {
        case 0:
            stream_reset(s, RST_REFUSED);
            return;
        case 1:
            return;     /* no end: the stream buffers */
        default:
            s->end = new_end(s);
            ((stub_end *)s->end)->maybe_send();
        }
    }
    void on_dgram(tunnel *t, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len) override
    {
        if (chance(2))
            tunnel_send_dgram(t, flow, idx, p, len);
    }
    void on_down(tunnel *t, const char *why, bool) override
    {
        CHECK(!down);
        down = true;
        if (trace)
            fprintf(stderr, "mux: %s down: %s (%zu ends)\n", t->cf.is_server ? "server" : "client", why,
                    ends.size());
    }
};

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
    log_open("/dev/null", LOG_ERROR);
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)   /* 64 KiB: enough, see maybe_send() */
        abort();
    pipe_rd = fds[0];
    pipe_wr = fds[1];
    reactor_init();
    return 0;
}

static const bool skip_add_fail = getenv("FUZZ_MUX_NO_ADD_FAIL") != nullptr;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    uint8_t c0 = data[0], c1 = data[1], c2 = data[2];
    tame = c2 & 0x80;
    rng_state = 0x9e3779b9u ^ ((uint32_t)c1 << 8 | c2) ^ ((uint32_t)c0 << 16);
    if (!rng_state)
        rng_state = 1;

    /* the rate the tunnel's TCP tells: unknown, or one that caps DATA in
     * tx anywhere from 64 KiB to the whole ring */
    fake_send_rate = chance(4) ? 0 : (uint64_t)(rnd() % 64) << 20;

    std::vector<uint8_t> in;
    if (c0 & 4) {
        uint8_t p[PREFACE_LEN];
        preface_encode(p);
        in.assign(p, p + PREFACE_LEN);
    }
    in.insert(in.end(), data + 3, data + size);

    tunnel_conf cf;
    cf.is_server = c0 & 1;
    if (c0 & 2)
        cf.token = FUZZ_TOKEN;
    if (c0 & 8) {
        /* four full windows are over tunnel_buffer: reading pauses */
        cf.window = 4096;
        cf.max_window = 8192;
        cf.tunnel_buffer = 8192;
        cf.max_streams = 4;
    }

    size_t initial = 0;
    /* the server sniffs the first bytes after the TLS handshake, into a
     * 4 KiB buffer */
    if ((c0 & 0x20) && !(c0 & 0x10) && !in.empty())
        initial = 1 + rnd() % (in.size() < 4096 ? in.size() : 4096);
    if ((c0 & 0x80) && c1 == 0xff && !skip_add_fail)
        fake_backend_fail_add = 1;

    out_check out;
    cur_out = &out;
    stub_owner owner;
    fake_transport *tr = new fake_transport(in.data() + initial, in.size() - initial, c0 & 0x40,
                                            (c0 & 0x10) ? 2 : 0, &out);
    tr->stall = c2 & 0x40;
    tr->errors = c2 & 0x10;
    tunnel *t = tunnel_new(tr, cf, &owner, "fuzz", initial ? in.data() : nullptr, initial);
    fake_backend_fail_add = 0;
    if (t) {
        if (cf.is_server)
            memset(t->nonce, 0, NONCE_LEN);
        for (int pass = 0, idle = 0; pass < 10000 && !owner.down && idle < 4; pass++) {
            bool had_input = tr->pos < tr->len;
            unsigned ev = EV_READ;
            if (!chance(4))
                ev |= EV_WRITE;
            t->on_io(ev);
            if (!owner.down && (c2 & 0x20) && chance(8))
                fire_timer(t);
            if (!owner.down) {
                check_tx(t);
                check_ends(t);
                drain_ends();
            }
            fake_reactor_pass();
            idle = had_input ? 0 : idle + 1;
        }
        if (trace && !owner.down)
            fprintf(stderr, "mux: %s up in state %d, %zu streams, %zu ends, read %zu/%zu, sent %llu payload bytes\n",
                    cf.is_server ? "server" : "client", (int)t->state, t->streams.size(), ends.size(), tr->pos,
                    tr->len, (unsigned long long)t->bytes_out);
        if (!owner.down)
            tunnel_close(t, GA_SHUTDOWN, "end of fuzz input");
        CHECK(owner.down);
    }
    fake_reactor_pass();   /* reap the tunnel and its streams */
    for (stub_end *e : ends) {
        CHECK(e->s == nullptr);
        delete e;
    }
    ends.clear();
    CHECK(fake_backend_handlers == 0);
    return 0;
}
