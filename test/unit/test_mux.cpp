/*
 * test_mux.cpp - the mux through a real pair of tunnels (server and client
 * role) over a socketpair.
 *
 * DGRAM frames: the header limits for a whole UDP datagram, and the payload
 * layout (u32 mapping index, big-endian, then the datagram; sid = flow id):
 * round trips of every size up to FRAME_MAX_PAYLOAD - 4 both ways, the
 * over-size datagram refused, drops (never queueing) when tx is full,
 * hand-made frames decoded as documented, a short DGRAM and a DGRAM before
 * authentication are protocol errors. test_frame.cpp covers every type's
 * header limit generically; this file is about what rides in the payload.
 *
 * Stream buffers: what a lagging end does not take is held in a buffer that
 * grows with it, is freed once drained, and comes back at its last size.
 *
 * Orphans: after the peer's GOAWAY for a stop, a stream whose end asks
 * for it keeps what it holds and drains it without a tunnel, for the
 * drain time at most; an end that declines, or a lost tunnel, resets.
 *
 * A peer that stops reading: when our control frames overflow, the tunnel
 * closes at the end of the loop pass, never under a caller that is setting
 * up or draining a stream (tunnel_open, an OPEN's handler, a relay).
 *
 * Lingering close (sock.cpp, for a stop's tunnel connection): our last
 * bytes and a FIN reach the peer though input was unread and more came
 * after; it ends when the peer closes, or at its deadline; a plain close
 * of the same exchange is reset.
 *
 * The reactor is initialised once for the process here (as test_timer.cpp
 * does for itself); every test closes its tunnels and lets the loop reap
 * them, leaving no timer armed and no descriptor registered.
 */
#include <doctest/doctest.h>

#include "frame.h"
#include "mux.h"
#include "reactor.h"
#include "relay.h"
#include "sock.h"
#include "transport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>
#include <vector>

static void up()
{
    static bool done;
    if (!done) {
        REQUIRE(reactor_init() == 0);
        done = true;
    }
}

/* ---- header ---- */

TEST_CASE("dgram: the header takes a whole UDP datagram behind its 4-byte mapping index")
{
    CHECK(FRAME_MAX_PAYLOAD == 64 * 1024 + 256);
    const uint32_t lens[] = {4, 4 + 1, 4 + 1472, 4 + 65507 /* IPv4 max */, 4 + 65527 /* IPv6 max */,
                             4 + 65535, FRAME_MAX_PAYLOAD};
    for (uint32_t len : lens) {
        CAPTURE(len);
        uint8_t b[FRAME_HDR];
        frame_hdr_encode(b, len, FT_DGRAM, 0, 0xfedcba98u);
        frame_hdr h;
        REQUIRE(frame_hdr_decode(b, &h) == 1);
        CHECK(h.len == len);
        CHECK(h.type == FT_DGRAM);
        CHECK(h.sid == 0xfedcba98u);
        /* the length is 24-bit big-endian, the type byte 11 */
        CHECK(b[0] == (uint8_t)(len >> 16));
        CHECK(b[1] == (uint8_t)(len >> 8));
        CHECK(b[2] == (uint8_t)len);
        CHECK(b[3] == 11);
    }
    uint8_t b[FRAME_HDR];
    frame_hdr h;
    frame_hdr_encode(b, FRAME_MAX_PAYLOAD + 1, FT_DGRAM, 0, 1);
    CHECK(frame_hdr_decode(b, &h) == 0);
    CHECK(std::string(frame_type_name(FT_DGRAM)) == "DGRAM");
}

/* ---- a tunnel pair ---- */

struct dgram_rec {
    uint32_t flow, idx;
    std::string data;
};

struct test_owner : tunnel_owner {
    bool ready = false, down = false;
    std::string why;
    std::vector<dgram_rec> got;
    stream_end *accept = nullptr;   /* streams the peer opens get this end; else reset */
    stream *opened = nullptr;
    bool opened_live = false;       /* the stream and its tunnel were alive in on_open */
    void on_ready(tunnel *) override { ready = true; }
    int on_register(tunnel *, uint32_t, const register_msg &, std::string *) override { return 0; }
    void on_registered(tunnel *, uint32_t, uint8_t, const std::string &) override {}
    void on_open(tunnel *t, stream *s, const open_msg &) override
    {
        opened_live = !s->dead && t->state != TS_CLOSED;
        if (!accept)
            return stream_reset(s, RST_NOMAPPING);
        s->end = accept;
        opened = s;
    }
    void on_dgram(tunnel *, uint32_t flow, uint32_t idx, const uint8_t *p, size_t len) override
    {
        got.push_back({flow, idx, std::string((const char *)p, len)});
    }
    void on_down(tunnel *, const char *w, bool) override
    {
        down = true;
        why = w;
    }
};

/* Run the loop until cond() holds or ms pass; returns cond(). */
template <typename Cond>
static bool run_until(Cond cond, uint64_t ms = 5000)
{
    struct st {
        Cond *c;
        uint64_t end;
        timer t;
    } s{&cond, now_ms() + ms, {}};
    s.t.arg = &s;
    s.t.fn = [](void *a) {
        st *s = (st *)a;
        if ((*s->c)() || now_ms() >= s->end)
            reactor_stop();
        else
            timer_arm(&s->t, 1);
    };
    if (!cond()) {
        timer_arm(&s.t, 1);
        reactor_run();
        timer_cancel(&s.t);
    }
    return cond();
}

/* One loop pass: deferred deletions happen. */
static void one_pass()
{
    static task t;
    t.fn = [](void *) { reactor_stop(); };
    task_post(&t);
    reactor_run();
}

struct pair {
    int fds[2] = {-1, -1};
    test_owner so, co;
    tunnel *srv = nullptr, *cli = nullptr;

    /* cc_own: the client's settings, where they differ from the server's */
    explicit pair(const tunnel_conf &base = tunnel_conf(), const tunnel_conf *cc_own = nullptr)
    {
        up();
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
        int big = 4 << 20;
        setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
        tunnel_conf sc = base, cc = cc_own ? *cc_own : base;
        sc.is_server = true;
        srv = tunnel_new(plain_transport_new(fds[0]), sc, &so, "test-server");
        cli = tunnel_new(plain_transport_new(fds[1]), cc, &co, "test-client");
        REQUIRE(srv);
        REQUIRE(cli);
        REQUIRE(run_until([&] { return so.ready && co.ready; }));
    }
    ~pair()
    {
        if (!so.down)
            tunnel_close(srv, GA_NORMAL, "test over");
        if (!co.down)
            tunnel_close(cli, GA_NORMAL, "test over");
        one_pass();
    }
};

static std::string pattern(size_t n, uint32_t seed)
{
    std::string s(n, '\0');
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1103515245u + 12345u;
        s[i] = (char)(x >> 16);
    }
    return s;
}

TEST_CASE("dgram: flow id, mapping index and every byte cross a tunnel, both ways, up to the maximum")
{
    pair p;
    const size_t sizes[] = {0, 1, 4, 512, 1472, 9000, 60000, 65507, 65527, 65535, FRAME_MAX_PAYLOAD - 4};
    const uint32_t flows[] = {1, 0x01020304u, 0x7fffffffu, 0x80000000u, 0xffffffffu};
    const uint32_t idxs[] = {0, 1, 7, 0x00010000u, 0xfffffffeu};
    int k = 0;
    for (size_t n : sizes) {
        for (int dir = 0; dir < 2; dir++) {
            CAPTURE(n);
            CAPTURE(dir);
            uint32_t flow = flows[k % 5], idx = idxs[(k / 2) % 5];
            k++;
            std::string d = pattern(n, (uint32_t)k);
            tunnel *from = dir ? p.srv : p.cli;
            test_owner &to = dir ? p.co : p.so;
            to.got.clear();
            REQUIRE(tunnel_send_dgram(from, flow, idx, d.data(), d.size()) == 0);
            REQUIRE(run_until([&] { return !to.got.empty(); }));
            REQUIRE(to.got.size() == 1);
            CHECK(to.got[0].flow == flow);
            CHECK(to.got[0].idx == idx);
            CHECK(to.got[0].data.size() == n);
            CHECK(to.got[0].data == d);
        }
    }
    CHECK(p.cli->dgrams_dropped == 0);
    CHECK(p.srv->dgrams_dropped == 0);
    CHECK(!p.so.down);
    CHECK(!p.co.down);
}

TEST_CASE("dgram: a datagram over FRAME_MAX_PAYLOAD - 4 is dropped and counted, nothing is sent")
{
    pair p;
    std::string d(FRAME_MAX_PAYLOAD - 3, 'x');
    CHECK(tunnel_send_dgram(p.cli, 5, 0, d.data(), d.size()) == -1);
    CHECK(p.cli->dgrams_dropped == 1);
    CHECK(p.cli->txr.data == 0);
    /* the tunnel is fine: the next one goes */
    CHECK(tunnel_send_dgram(p.cli, 5, 0, "ok", 2) == 0);
    REQUIRE(run_until([&] { return !p.so.got.empty(); }));
    CHECK(p.so.got.size() == 1);
    CHECK(p.so.got[0].data == "ok");
    CHECK(!p.so.down);
}

TEST_CASE("dgram: when tx is full datagrams are dropped, never queued; control frames keep their room")
{
    pair p;
    std::string d = pattern(60000, 3);
    size_t sent = 0, dropped = 0;
    /* without running the loop nothing leaves tx */
    for (int i = 0; i < 100; i++) {
        d[0] = (char)i;
        if (tunnel_send_dgram(p.cli, 9, (uint32_t)i, d.data(), d.size()) == 0) {
            CHECK(dropped == 0);   /* once full, stays full */
            sent++;
        } else {
            dropped++;
        }
    }
    CHECK(sent >= 1);
    CHECK(dropped == 100 - sent);
    CHECK(p.cli->dgrams_dropped == dropped);
    CHECK(p.cli->tx_overflow.empty());
    /* room is left for control frames (16 KiB reserve) */
    CHECK(ring_room(&p.cli->txr) >= 16 * 1024);
    REQUIRE(run_until([&] { return p.so.got.size() == sent; }));
    for (size_t i = 0; i < sent; i++) {
        CAPTURE(i);
        CHECK(p.so.got[i].idx == i);
        CHECK(p.so.got[i].data.size() == d.size());
        CHECK((uint8_t)p.so.got[i].data[0] == i);
    }
    /* drained: datagrams go again */
    CHECK(tunnel_send_dgram(p.cli, 9, 0, "x", 1) == 0);
    CHECK(!p.so.down);
}

/* Write raw bytes on the client's socket, as if the client tunnel sent them
 * (it is idle: nothing of its own interleaves). */
static void raw(pair &p, const std::string &bytes)
{
    REQUIRE(write(p.fds[1], bytes.data(), bytes.size()) == (ssize_t)bytes.size());
}

static std::string dgram_frame(uint32_t flow, uint32_t len_field, const std::string &payload)
{
    uint8_t h[FRAME_HDR];
    frame_hdr_encode(h, len_field, FT_DGRAM, 0, flow);
    return std::string((const char *)h, FRAME_HDR) + payload;
}

TEST_CASE("dgram: a hand-made frame decodes as documented: sid = flow, u32 BE index, then the datagram")
{
    pair p;
    std::string payload = std::string("\x00\x00\x00\x09", 4) + "hello";
    std::string f = dgram_frame(0xa1b2c3d4u, (uint32_t)payload.size(), payload);
    const uint8_t want[] = {0x00, 0x00, 0x09, 0x0b, 0x00, 0xa1, 0xb2, 0xc3, 0xd4,
                            0x00, 0x00, 0x00, 0x09, 'h', 'e', 'l', 'l', 'o'};
    REQUIRE(f.size() == sizeof want);
    CHECK(memcmp(f.data(), want, sizeof want) == 0);
    /* an empty datagram: the index alone; an index with high bits set */
    std::string f2 = dgram_frame(2, 4, std::string("\x80\x00\x00\x01", 4));
    raw(p, f + f2);
    REQUIRE(run_until([&] { return p.so.got.size() == 2; }));
    CHECK(p.so.got[0].flow == 0xa1b2c3d4u);
    CHECK(p.so.got[0].idx == 9);
    CHECK(p.so.got[0].data == "hello");
    CHECK(p.so.got[1].flow == 2);
    CHECK(p.so.got[1].idx == 0x80000001u);
    CHECK(p.so.got[1].data.empty());
    CHECK(!p.so.down);
}

TEST_CASE("dgram: a DGRAM shorter than its mapping index is a protocol error")
{
    for (uint32_t len = 0; len < 4; len++) {
        CAPTURE(len);
        pair p;
        raw(p, dgram_frame(3, len, std::string(len, '\x01')));
        REQUIRE(run_until([&] { return p.so.down; }));
        CHECK(p.so.why.find("short DGRAM") != std::string::npos);
        CHECK(p.so.got.empty());
        /* the client hears the GOAWAY or the close */
        REQUIRE(run_until([&] { return p.co.down; }));
    }
}

TEST_CASE("dgram: a DGRAM before the handshake completed is a protocol error")
{
    up();
    int fds[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    test_owner so;
    tunnel_conf sc;
    sc.is_server = true;
    tunnel *srv = tunnel_new(plain_transport_new(fds[0]), sc, &so, "test-server");
    REQUIRE(srv);
    uint8_t pre[PREFACE_LEN];
    preface_encode(pre);
    std::string bytes = std::string((const char *)pre, PREFACE_LEN) +
                        dgram_frame(1, 9, std::string("\x00\x00\x00\x00", 4) + "hello");
    REQUIRE(write(fds[1], bytes.data(), bytes.size()) == (ssize_t)bytes.size());
    REQUIRE(run_until([&] { return so.down; }));
    CHECK(so.why.find("DGRAM frame before authentication") != std::string::npos);
    CHECK(so.got.empty());
    one_pass();
    close(fds[1]);
}

/* ---- stream buffers ---- */

/* An end that takes nothing while it lags: the stream holds the bytes. */
struct lagging_end : stream_end {
    bool reset = false;
    size_t on_data(const iovec *, int, size_t) override { return 0; }
    void on_rx_ready() override {}
    void on_writable() override {}
    void on_reset(uint8_t, const char *) override { reset = true; }
};

/* Send n pattern bytes on s as credit allows, until the peer's stream
 * holds `held` bytes in all. */
static void send_until_held(stream *s, stream *peer, size_t n, size_t held)
{
    std::string d = pattern(n, 7);
    size_t off = 0;
    while (off < n) {
        size_t room = stream_send_room(s);
        if (room == 0) {
            REQUIRE(run_until([&] { return stream_send_room(s) > 0; }));
            continue;
        }
        size_t k = n - off < room ? n - off : room;
        REQUIRE(stream_send(s, d.data() + off, k) == 0);
        off += k;
    }
    REQUIRE(run_until([&] { return peer->rx.data == held; }));
}

/* A tunnel pair whose client gives every stream the server opens an end
 * that lags. */
struct lag_pair : pair {
    lagging_end sink, src;
    explicit lag_pair(const tunnel_conf &base = tunnel_conf(), const tunnel_conf *cc_own = nullptr)
        : pair(base, cc_own)
    {
        co.accept = &sink;
    }
    /* Open a stream and send n bytes its lagging end leaves in the client's
     * stream (*c). Returns the server's side. */
    stream *open(size_t n, stream **c)
    {
        stream *before = co.opened;
        open_msg m;
        stream *s = tunnel_open(srv, m, &src);
        REQUIRE(s);
        REQUIRE(run_until([&] { return co.opened != before; }));
        *c = co.opened;
        send_until_held(s, *c, n, n);
        return s;
    }
};

TEST_CASE("mux: a lagging end's buffer grows with what it holds, is freed when drained, and comes back at its last size")
{
    lag_pair p;
    stream *c;
    /* the first lag: the buffer doubles from 16 KiB with what it holds */
    stream *s = p.open(20 * 1024, &c);
    CHECK(c->rx.size == 32 * 1024);
    send_until_held(s, c, 150 * 1024, 170 * 1024);
    CHECK(c->rx.size == 256 * 1024);
    /* drained: no buffer while idle; its area is kept aside for reuse */
    char *area = c->rx.area;
    ring_give_back();   /* the areas the doublings left */
    stream_rx_consume(c, c->rx.data);
    CHECK(c->rx.area == nullptr);
    CHECK(c->rx.size == 0);
    CHECK(ring_pooled() == 256 * 1024);
    stream_rx_consume(c, 0);   /* an end that took nothing more: the size is remembered still */
    /* the next lag, of 20 KiB, gets 256 KiB at once (no copy per doubling),
     * and the very area (no page faults on fresh memory) */
    send_until_held(s, c, 20 * 1024, 20 * 1024);
    CHECK(c->rx.size == 256 * 1024);
    CHECK(c->rx.area == area);
    CHECK(ring_pooled() == 0);
    /* every byte is there, in order */
    std::string want = pattern(20 * 1024, 7), got(want.size(), '\0');
    ring_peek(&c->rx, 0, &got[0], got.size());
    CHECK(got == want);
    stream_rx_consume(c, c->rx.data);
    CHECK(!p.sink.reset);
    CHECK(!p.src.reset);
    stream_reset(s, RST_CANCEL);
    REQUIRE(run_until([&] { return p.sink.reset; }));
    ring_give_back();
    CHECK(ring_pooled() == 0);
}

TEST_CASE("mux: a buffer drained while another stream's holds data leaves no spare beside it")
{
    lag_pair p;
    stream *c1, *c2;
    stream *s1 = p.open(100 * 1024, &c1);
    stream *s2 = p.open(100 * 1024, &c2);
    CHECK(c1->rx.size == 128 * 1024);
    CHECK(c2->rx.size == 128 * 1024);
    ring_give_back();
    /* c2 still holds data: c1's area goes back to the system */
    stream_rx_consume(c1, c1->rx.data);
    CHECK(c1->rx.area == nullptr);
    CHECK(ring_pooled() == 0);
    /* the last to drain keeps its area as the spare */
    char *area = c2->rx.area;
    stream_rx_consume(c2, c2->rx.data);
    CHECK(ring_pooled() == 128 * 1024);
    /* and c1's next lag, of the same size, takes it */
    send_until_held(s1, c1, 20 * 1024, 20 * 1024);
    CHECK(c1->rx.size == 128 * 1024);
    CHECK(c1->rx.area == area);
    CHECK(ring_pooled() == 0);
    stream_rx_consume(c1, c1->rx.data);
    stream_reset(s1, RST_CANCEL);
    stream_reset(s2, RST_CANCEL);
    REQUIRE(run_until([&] { return tunnel_stream_count(p.cli) == 0; }));
    ring_give_back();
}

/* ---- a peer that never reads ---- */

/* ---- orphans: a stream outlives its tunnel's clean close to drain ---- */

struct orphan_end : lagging_end {
    bool take = true;
    int orphaned = 0;
    uint8_t code = 0xee;
    bool on_orphan() override
    {
        orphaned++;
        return take;
    }
    void on_reset(uint8_t c, const char *) override
    {
        reset = true;
        code = c;
    }
};

/* A lag_pair whose client streams get an orphan_end, the drain time short. */
struct orphan_pair : lag_pair {
    orphan_end end;
    explicit orphan_pair(uint32_t drain_ms = 300) : lag_pair(conf(drain_ms)) { co.accept = &end; }
    static tunnel_conf conf(uint32_t drain_ms)
    {
        tunnel_conf c;
        c.drain_ms = drain_ms;
        return c;
    }
};

TEST_CASE("mux: after the peer's GOAWAY for a stop, a stream holding bytes drains them as an orphan, then closes")
{
    orphan_pair p;
    stream *c;
    p.open(20 * 1024, &c);
    tunnel_close(p.srv, GA_SHUTDOWN, "server is stopping");
    REQUIRE(run_until([&] { return p.co.down; }));
    /* the end was asked, and the stream it keeps has no tunnel, sends
     * nothing, and holds every byte, then the FIN */
    CHECK(p.end.orphaned == 1);
    CHECK(!p.end.reset);
    CHECK(!c->dead);
    CHECK(stream_orphaned(c));
    CHECK(stream_orphans() == 1);
    CHECK(stream_send_room(c) == 0);
    CHECK(stream_send(c, "x", 1) == -1);
    REQUIRE(c->rx.data == 20 * 1024);
    std::string want = pattern(20 * 1024, 7), got(want.size(), '\0');
    ring_peek(&c->rx, 0, &got[0], got.size());
    CHECK(got == want);
    CHECK(!stream_rx_done(c));
    stream_rx_consume(c, 8 * 1024);
    stream_rx_consume(c, 12 * 1024);
    CHECK(stream_rx_done(c));
    CHECK(c->rx.area == nullptr);
    stream_close(c);
    CHECK(stream_orphans() == 0);
    one_pass();
    CHECK(!p.end.reset);
    ring_give_back();
}

TEST_CASE("mux: an orphan still open after the drain time hears a lost tunnel's reset")
{
    orphan_pair p;
    stream *c;
    p.open(20 * 1024, &c);
    uint64_t t0 = now_ms();
    tunnel_close(p.srv, GA_SHUTDOWN, "server is stopping");
    REQUIRE(run_until([&] { return p.co.down; }));
    REQUIRE(p.end.orphaned == 1);
    REQUIRE(run_until([&] { return p.end.reset; }, 3000));
    CHECK(p.end.code == RST_TUNNEL);
    CHECK(now_ms() - t0 >= 300);
    CHECK(stream_orphans() == 0);
    one_pass();
    ring_give_back();
}

TEST_CASE("mux: orphans of tunnels with different drain times (a reload between) each end at their own")
{
    orphan_pair slow(5000), fast(300);
    stream *a, *b;
    slow.open(4096, &a);
    fast.open(4096, &b);
    uint64_t t0 = now_ms();
    tunnel_close(slow.srv, GA_SHUTDOWN, "stop");
    tunnel_close(fast.srv, GA_SHUTDOWN, "stop");
    REQUIRE(run_until([&] { return slow.co.down && fast.co.down; }));
    CHECK(stream_orphans() == 2);
    /* the later-closed tunnel's orphan, with the shorter time, goes first */
    REQUIRE(run_until([&] { return fast.end.reset; }, 3000));
    CHECK(now_ms() - t0 < 5000);
    CHECK(!slow.end.reset);
    CHECK(stream_orphans() == 1);
    /* the process stops: the rest are cut at once */
    stream_orphans_cut();
    CHECK(slow.end.reset);
    CHECK(slow.end.code == RST_TUNNEL);
    CHECK(stream_orphans() == 0);
    one_pass();
    ring_give_back();
}

TEST_CASE("mux: an end that declines, and any tunnel that is lost rather than closed, reset at once")
{
    SUBCASE("declined") {
        orphan_pair p;
        p.end.take = false;
        stream *c;
        p.open(20 * 1024, &c);
        tunnel_close(p.srv, GA_SHUTDOWN, "server is stopping");
        REQUIRE(run_until([&] { return p.co.down; }));
        CHECK(p.end.orphaned == 1);
        CHECK(p.end.reset);
        CHECK(p.end.code == RST_CANCEL);
        CHECK(stream_orphans() == 0);
    }
    SUBCASE("lost") {
        orphan_pair p;
        stream *c;
        p.open(20 * 1024, &c);
        tunnel_close(p.srv, GA_TIMEOUT, "peer silent");
        REQUIRE(run_until([&] { return p.co.down; }));
        CHECK(p.end.orphaned == 0);
        CHECK(p.end.reset);
        CHECK(p.end.code == RST_TUNNEL);
        CHECK(stream_orphans() == 0);
    }
    one_pass();
    ring_give_back();
}

static std::string frame(uint8_t type, uint8_t flags, uint32_t sid, const std::string &p)
{
    uint8_t h[FRAME_HDR];
    frame_hdr_encode(h, (uint32_t)p.size(), type, flags, sid);
    return std::string((const char *)h, FRAME_HDR) + p;
}

static void settle(uint64_t ms)
{
    run_until([] { return false; }, ms);
}

static void write_all(int fd, const std::string &b)
{
    for (size_t off = 0; off < b.size();) {
        ssize_t w = write(fd, b.data() + off, b.size() - off);
        if (w > 0)
            off += (size_t)w;
        else
            settle(2);
    }
}

struct null_end : stream_end {
    int resets = 0;
    size_t on_data(const iovec *, int, size_t len) override { return len; }
    void on_rx_ready() override {}
    void on_writable() override {}
    void on_reset(uint8_t, const char *) override { resets++; }
};

/* Our tunnel (server or client role) against a raw socket that sends a
 * preface and HELLO, then only what a test writes, and never reads. */
struct deaf_peer {
    int fds[2] = {-1, -1};
    test_owner o;
    tunnel *t = nullptr;
    explicit deaf_peer(bool server)
    {
        up();
        REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
        int small = 4096;
        setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
        tunnel_conf c;
        c.is_server = server;
        t = tunnel_new(plain_transport_new(fds[0]), c, &o, "deaf");
        REQUIRE(t);
        uint8_t pre[PREFACE_LEN];
        preface_encode(pre);
        hello_msg h;
        h.heartbeat_ms = 15000;
        h.window = 1u << 30;
        h.name = "deaf";
        std::string hp;
        hello_encode(h, &hp);
        write_all(fds[1], std::string((const char *)pre, PREFACE_LEN) + frame(FT_HELLO, 0, 0, hp) +
                              (server ? std::string() : frame(FT_READY, 0, 0, "")));
        REQUIRE(run_until([&] { return o.ready; }));
    }
    ~deaf_peer()
    {
        if (!o.down)
            tunnel_close(t, GA_NORMAL, "test over");
        one_pass();
        close(fds[1]);
    }
    /* Fill tx with stream data (s sends, nobody reads). */
    void fill_tx(stream *s)
    {
        static char buf[512 * 1024];
        for (int i = 0; i < 200 && ring_room(&t->txr) >= FRAME_HDR + 8; i++) {
            size_t room = stream_send_room(s);
            if (room)
                REQUIRE(stream_send(s, buf, room) == 0);
            settle(2);
        }
    }
    /* PINGs we answer until the control overflow holds at least target
     * bytes (at most target + 8). */
    void pad_overflow(size_t target)
    {
        while (t->tx_overflow.size() + 20000 < target) {
            std::string b;
            for (int i = 0; i < 500; i++)
                b += frame(FT_PING, 0, 0, std::string(8, '\0'));
            write_all(fds[1], b);
            settle(3);
            REQUIRE(!o.down);
        }
        while (t->tx_overflow.size() < target) {
            size_t gap = target - t->tx_overflow.size();
            size_t l = gap >= 17 ? 8 : gap >= 9 ? gap - 9 : 0;
            size_t before = t->tx_overflow.size();
            write_all(fds[1], frame(FT_PING, 0, 0, std::string(l, '\0')));
            REQUIRE(run_until([&] { return t->tx_overflow.size() != before || o.down; }));
            REQUIRE(!o.down);
        }
    }
};

TEST_CASE("mux: an OPEN that overflows the control frames returns a live stream; the tunnel closes after")
{
    deaf_peer p(true);
    null_end e0, e;
    open_msg m;
    stream *s0 = tunnel_open(p.t, m, &e0);
    REQUIRE(s0);
    p.fill_tx(s0);
    p.pad_overflow(1024 * 1024 - 50);
    stream *s = tunnel_open(p.t, m, &e);
    REQUIRE(s);
    CHECK_FALSE(s->dead);       /* a caller (accept_public, http) may use it now */
    CHECK_FALSE(p.o.down);
    REQUIRE(run_until([&] { return p.o.down; }));
    CHECK(p.o.why == "peer does not read: control frames overflow");
    CHECK(e.resets == 1);
    CHECK(e0.resets == 1);
}

TEST_CASE("mux: an OPEN from the peer whose WINDOW overflows reaches the owner live; the tunnel closes after")
{
    deaf_peer p(false);
    null_end e0;
    open_msg m;
    stream *s0 = tunnel_open(p.t, m, &e0);   /* the client opens odd ids */
    REQUIRE(s0);
    p.fill_tx(s0);
    p.pad_overflow(1024 * 1024 - 12);
    null_end e;
    std::string om;
    open_encode(m, &om);
    p.o.accept = &e;
    write_all(p.fds[1], frame(FT_OPEN, 0, 2, om));
    REQUIRE(run_until([&] { return p.o.down; }));
    REQUIRE(p.o.opened);
    CHECK(p.o.opened_live);
    CHECK(e.resets == 1);
}

TEST_CASE("mux: a relay whose drain sends the WINDOW that overflows goes on, then hears the reset")
{
    deaf_peer p(true);
    open_msg m;
    stream *s = tunnel_open(p.t, m, nullptr);
    REQUIRE(s);
    uint32_t sid = s->sid;
    int u[2];
    REQUIRE(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, u) == 0);
    int small = 4096;
    setsockopt(u[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof small);
    REQUIRE(relay_new(u[0], s, "user"));
    settle(5);
    /* the peer sends what the user does not read yet: the stream holds it */
    std::string b;
    for (int i = 0; i < 12; i++)
        b += frame(FT_DATA, 0, sid, std::string(16384, 'd'));
    write_all(p.fds[1], b);
    REQUIRE(run_until([&] { return s->rx.data > 150 * 1024; }));
    /* the user sends: the relay fills tx (the peer never reads) */
    std::string up_bytes(64 * 1024, 'u');
    for (int i = 0; i < 100 && ring_room(&p.t->txr) > FRAME_HDR + 8 + 16 * 1024; i++) {
        ssize_t w = write(u[1], up_bytes.data(), up_bytes.size());
        (void)w;
        settle(3);
    }
    p.pad_overflow(1024 * 1024 - 12);
    /* the user reads: the relay drains the stream and returns credit; that
     * WINDOW overflows inside the relay's pass (it crashed on a stream the
     * close had taken from under it) */
    char rb[65536];
    for (int i = 0; i < 200 && !p.o.down; i++) {
        while (read(u[1], rb, sizeof rb) > 0) {
        }
        settle(2);
    }
    CHECK(p.o.down);
    CHECK(p.o.why == "peer does not read: control frames overflow");
    /* the relay closed its socket: the user sees the end */
    REQUIRE(run_until([&] { return read(u[1], rb, sizeof rb) == 0; }));
    close(u[1]);
}

/* Open k streams whose client ends lag and fill each to its window. */
static std::vector<stream *> fill_lagging(lag_pair &p, int k)
{
    std::vector<stream *> cs;
    for (int i = 0; i < k; i++) {
        stream *c;
        stream *s = p.open(0, &c);
        send_until_held(s, c, c->rx_window, c->rx_window);
        cs.push_back(c);
    }
    return cs;
}

TEST_CASE("mux: streams that lag hold at most tunnel_buffer in all, grown windows included, and stop only themselves")
{
    /* 16 streams of 8 KiB take half of 256 KiB; the first grow to 64 KiB
     * into the rest, keeping room for the streams still to come (before,
     * the first four took all of it and twelve more 16 KiB went on top:
     * 448 KiB held, and the whole tunnel paused) */
    tunnel_conf c;
    c.tunnel_buffer = 256 * 1024;
    c.max_streams = 16;
    c.window = 64 * 1024;
    c.max_window = 128 * 1024;
    lag_pair p(c);
    std::vector<stream *> cs = fill_lagging(p, 16);
    CHECK(cs[0]->rx_window == 64 * 1024);
    CHECK(cs[15]->rx_window == 8 * 1024);
    CHECK(p.cli->windows_sum <= c.tunnel_buffer);
    CHECK(p.cli->rx_buffered == p.cli->windows_sum);
    CHECK_FALSE(p.cli->rx_paused);
}

TEST_CASE("mux: where max_streams x 8 KiB passes tunnel_buffer, streams at the 4 KiB minimum window still stop only themselves")
{
    tunnel_conf c;
    c.tunnel_buffer = 64 * 1024;
    c.max_streams = 64;
    c.window = c.max_window = 64 * 1024;
    lag_pair p(c);
    std::vector<stream *> cs = fill_lagging(p, 40);
    CHECK(p.cli->rx_buffered == 40 * 4096);   /* over tunnel_buffer: the protocol's floor */
    CHECK_FALSE(p.cli->rx_paused);
    /* the tunnel still reads: one more stream gets its bytes through */
    stream *cl;
    p.open(4096, &cl);
    CHECK(cl->rx.data == 4096);
    CHECK_FALSE(p.cli->rx_paused);
}

TEST_CASE("mux: a stream that used its turn when the transmit buffer has drained gets the next turn")
{
    /* a round of turns was on (several streams waited), and this stream
     * used its share of it; its bytes left long ago, and it has credit
     * again: the next round must come without anyone else sending (it
     * waited for the heartbeat before) */
    lag_pair p;
    stream *cl;
    stream *s = p.open(4096, &cl);
    REQUIRE(run_until([&] { return p.srv->txr.data == 0; }));
    p.srv->tx_share = 4096;
    s->tx_round = p.srv->tx_round;
    s->tx_used = 4096;
    CHECK(stream_send_room(s) == 0);
    REQUIRE(run_until([&] { return stream_send_room(s) > 0; }, 1000));
    CHECK_FALSE(p.so.down);
}

/* ---- windows given back ---- */

/* 16 streams x 8 KiB initial windows in 256 KiB; a stream is topped up to
 * window (64 KiB) at its open; quiet for idle_ms, it gives that back. */
static tunnel_conf reclaim_conf()
{
    tunnel_conf c;
    c.tunnel_buffer = 256 * 1024;
    c.max_streams = 16;
    c.window = 64 * 1024;
    c.max_window = 128 * 1024;
    c.idle_ms = 20;
    return c;
}

/* The receiver's books: each window is the credit the peer holds, what
 * the stream holds and what was consumed and not returned yet; the tunnel's
 * sum is theirs. */
static void check_windows(tunnel *t)
{
    uint64_t sum = 0;
    for (auto &it : t->streams) {
        stream *s = it.second;
        CAPTURE(s->sid);
        CHECK(s->rx_avail >= 0);
        CHECK((int64_t)s->rx_window == s->rx_avail + (int64_t)s->rx.data + (int64_t)s->rx_consumed);
        sum += s->rx_window;
    }
    CHECK(t->windows_sum == sum);
}

/* The lag_pair's server side of the client's stream cl. */
static stream *sender_of(lag_pair &p, stream *cl)
{
    auto it = p.srv->streams.find(cl->sid);
    REQUIRE(it != p.srv->streams.end());
    return it->second;
}

/* Let idle_ms (20 ms) pass with nothing sent: the streams are quiet then. */
static void pause_quiet(lag_pair &p)
{
    REQUIRE_FALSE(run_until([&] { return p.so.down || p.co.down; }, 50));
}

TEST_CASE("mux: a quiet stream keeps its window until the budget is short, then gives back what it was topped up to")
{
    lag_pair p(reclaim_conf());
    stream *ca;
    stream *a = p.open(0, &ca);
    CHECK(ca->rx_window == 64 * 1024);
    CHECK(a->send_credit == 64 * 1024);
    /* quiet for ten times idle_ms, with budget to spare: its next burst
     * needs no round trip to get its window back */
    REQUIRE_FALSE(run_until([&] { return ca->rx_window < 64 * 1024; }, 200));
    /* two more streams: the first gets 64 KiB; the second cannot (room is
     * kept for 13 initial windows still to come): the quiet one is asked,
     * down to the initial window, and the sender gave up its credit before
     * the window shrank */
    stream *cb, *cc;
    p.open(0, &cb);
    p.open(0, &cc);
    CHECK(cb->rx_window == 64 * 1024);
    CHECK(cc->rx_window == 8 * 1024);
    REQUIRE(run_until([&] { return ca->rx_window == 8 * 1024; }, 2000));
    CHECK(a->send_credit == 8 * 1024);
    CHECK(ca->rx_avail == 8 * 1024);
    CHECK(ca->rx_reclaim == 0);
    CHECK(cb->rx_window == 64 * 1024);   /* not quiet yet */
    CHECK(p.cli->windows_sum == (64 + 2 * 8) * 1024);
    /* it speaks again: the first DATA tops it up as at its open, and all
     * of 40 KiB goes through in order */
    send_until_held(a, ca, 40 * 1024, 40 * 1024);
    CHECK(ca->rx_window == 64 * 1024);
    std::string want = pattern(40 * 1024, 7), got(want.size(), '\0');
    ring_peek(&ca->rx, 0, &got[0], got.size());
    CHECK(got == want);
    /* short again: the quiet one gives its window back; the one holding
     * bytes is not quiet */
    pause_quiet(p);
    stream *ce;
    p.open(0, &ce);
    CHECK(ce->rx_window == 8 * 1024);
    REQUIRE(run_until([&] { return cb->rx_window == 8 * 1024; }, 2000));
    CHECK(ca->rx_window == 64 * 1024);
    CHECK(p.cli->windows_sum == (64 + 3 * 8) * 1024);
    check_windows(p.cli);
    stream_rx_consume(ca, ca->rx.data);
    check_windows(p.cli);
    CHECK_FALSE(p.so.down);
    CHECK_FALSE(p.co.down);
}

TEST_CASE("mux: a quiet stream whose consumed bytes were not returned yet gets them back as credit after giving its window back")
{
    lag_pair p(reclaim_conf());
    stream *ca;
    stream *a = p.open(10 * 1024, &ca);
    /* 10 KiB consumed, under a quarter of the window: not returned yet */
    stream_rx_consume(ca, ca->rx.data);
    CHECK(a->send_credit == 54 * 1024);
    pause_quiet(p);
    for (int i = 0; i < 2; i++) {   /* the budget runs short */
        stream *cl;
        p.open(0, &cl);
    }
    /* it is asked 56 KiB and gives all it has, 54 KiB: the window keeps the
     * 10 KiB consumed, and they must come back as credit, or the sender
     * could never send again */
    REQUIRE(run_until([&] { return ca->rx_window == 10 * 1024; }, 2000));
    REQUIRE(run_until([&] { return a->send_credit == 10 * 1024; }));
    check_windows(p.cli);
    send_until_held(a, ca, 30 * 1024, 30 * 1024);
    check_windows(p.cli);
    CHECK_FALSE(p.co.down);
}

/* Three streams: two get 64 KiB, the third cannot (the budget is short)
 * and asks when the two are not quiet yet; once they are, its first bytes
 * ask again. Returns the client's sides. */
static std::vector<stream *> short_then_ask(lag_pair &p)
{
    std::vector<stream *> cs;
    for (int i = 0; i < 3; i++) {
        stream *cl;
        p.open(0, &cl);
        cs.push_back(cl);
    }
    CHECK(cs[1]->rx_window == 64 * 1024);
    CHECK(cs[2]->rx_window == 8 * 1024);
    pause_quiet(p);
    send_until_held(sender_of(p, cs[2]), cs[2], 1024, 1024);
    return cs;
}

TEST_CASE("mux: windows given back let a stream that wants to grow grow where quiet ones had taken the budget")
{
    lag_pair p(reclaim_conf());
    /* the quiet two give theirs back */
    std::vector<stream *> cs = short_then_ask(p);
    stream *s2 = sender_of(p, cs[2]);
    REQUIRE(run_until([&] { return cs[0]->rx_window == 8 * 1024 && cs[1]->rx_window == 8 * 1024; }, 2000));
    /* now a new stream is topped up at its open, and the third at its next
     * bytes */
    stream *cl4;
    p.open(0, &cl4);
    CHECK(cl4->rx_window == 64 * 1024);
    send_until_held(s2, cs[2], 1024, 2048);
    CHECK(cs[2]->rx_window == 64 * 1024);
}

TEST_CASE("mux: credit in flight is not given back: the sender gives what it has, and every byte stays within the window")
{
    lag_pair p(reclaim_conf());
    stream *cl;
    /* 10 KiB on their way (here: arrived) when the sender hears a RECLAIM
     * of 60 KiB, which the client asked (as its sweep would) */
    stream *s = p.open(10 * 1024, &cl);
    REQUIRE(s->send_credit == 54 * 1024);
    cl->rx_reclaim = 60 * 1024;
    uint8_t b[4];
    put_u32(b, 60 * 1024);
    write_all(p.fds[1], frame(FT_RECLAIM, 0, s->sid, std::string((const char *)b, 4)));
    /* it gives all it has, 54 KiB; the client's window keeps the 10 KiB */
    REQUIRE(run_until([&] { return cl->rx_reclaim == 0; }));
    CHECK(s->send_credit == 0);
    CHECK(cl->rx_window == 10 * 1024);
    CHECK(cl->rx_avail == 0);
    CHECK(p.cli->windows_sum == 10 * 1024);
    check_windows(p.cli);
    /* consumed, they come back as credit, and more goes through */
    stream_rx_consume(cl, cl->rx.data);
    send_until_held(s, cl, 10 * 1024, 10 * 1024);
    CHECK_FALSE(p.co.down);
    CHECK_FALSE(p.so.down);
}

TEST_CASE("mux: a RECLAIM answered after the sender's DATA and FIN crossed it leaves the books right")
{
    lag_pair p(reclaim_conf());
    stream *cl;
    stream *s = p.open(0, &cl);
    /* the sender sends 10 KiB and its FIN before it reads the request */
    REQUIRE(stream_send(s, pattern(10 * 1024, 1).data(), 10 * 1024) == 0);
    stream_send_fin(s);
    cl->rx_reclaim = 56 * 1024;
    uint8_t b[4];
    put_u32(b, 56 * 1024);
    write_all(p.fds[1], frame(FT_RECLAIM, 0, s->sid, std::string((const char *)b, 4)));
    REQUIRE(run_until([&] { return cl->fin_recv && cl->rx_reclaim == 0; }));
    CHECK(cl->rx_window == 10 * 1024);
    check_windows(p.cli);
    CHECK_FALSE(p.co.down);
}

TEST_CASE("mux: an answer to RECLAIM that gives back more than was asked is a protocol error")
{
    lag_pair p(reclaim_conf());
    stream *cl;
    stream *s = p.open(0, &cl);
    cl->rx_reclaim = 1000;
    uint8_t b[4];
    put_u32(b, 60 * 1024);
    write_all(p.fds[1], frame(FT_RECLAIM, 0, s->sid, std::string((const char *)b, 4)));
    REQUIRE(run_until([&] { return p.co.down; }));
    CHECK(p.co.why == "stream 2: RECLAIM answer over what was asked");
}

TEST_CASE("mux: a peer whose HELLO does not offer RECLAIM keeps its windows, and one that was not offered it refuses it")
{
    tunnel_conf c = reclaim_conf(), old = c;
    old.reclaim = false;
    /* an older server sends to a newer client: with the budget short and a
     * stream that wants to grow, the client still never asks (the server
     * would take RECLAIM for garbage) */
    {
        lag_pair p(old, &c);
        short_then_ask(p);
        REQUIRE_FALSE(run_until([&] { return p.cli->windows_sum != (2 * 64 + 8) * 1024 || p.so.down; }, 300));
        CHECK_FALSE(p.cli->idle_timer.armed());
    }
    /* a newer server, an older client: a RECLAIM that reaches the client
     * anyway breaks the protocol */
    {
        lag_pair p(c, &old);
        stream *cl;
        stream *s = p.open(0, &cl);
        uint8_t b[4];
        put_u32(b, 1);
        write_all(p.fds[0], frame(FT_RECLAIM, 0, s->sid, std::string((const char *)b, 4)));
        REQUIRE(run_until([&] { return p.co.down; }));
        CHECK(p.co.why == "bad RECLAIM for stream 2");
    }
}

TEST_CASE("mux: after the peer's FIN a stream's window is what it holds: unused and consumed credit commit nothing")
{
    lag_pair p(reclaim_conf());
    stream *cl;
    stream *s = p.open(10 * 1024, &cl);
    stream_send_fin(s);
    REQUIRE(run_until([&] { return cl->fin_recv; }));
    /* what is held stays counted; the 54 KiB it can never use does not */
    CHECK(cl->rx_window == 10 * 1024);
    CHECK(p.cli->windows_sum == 10 * 1024);
    stream_rx_consume(cl, 4 * 1024);
    CHECK(cl->rx_window == 6 * 1024);
    stream_rx_consume(cl, cl->rx.data);
    CHECK(p.cli->windows_sum == 0);
    CHECK(p.cli->rx_buffered == 0);
    /* bytes consumed and not returned yet (under a quarter of the window)
     * when the FIN comes: no credit goes back for them, so nothing stays */
    stream *cl2;
    stream *s2 = p.open(12 * 1024, &cl2);
    stream_rx_consume(cl2, cl2->rx.data);
    CHECK(cl2->rx_consumed == 12 * 1024);
    stream_send_fin(s2);
    REQUIRE(run_until([&] { return cl2->fin_recv; }));
    CHECK(cl2->rx_window == 0);
    CHECK(p.cli->windows_sum == 0);
}

TEST_CASE("mux: no credit goes back for bytes that came with the peer's FIN, though the end took them at once")
{
    lag_pair p(reclaim_conf());
    null_end taker;   /* takes all as it comes */
    stream *cl;
    stream *s = p.open(0, &cl);
    cl->end = &taker;
    REQUIRE(stream_send(s, pattern(20 * 1024, 3).data(), 20 * 1024) == 0);
    stream_send_fin(s);
    REQUIRE(run_until([&] { return cl->fin_recv; }));
    /* a WINDOW would be on its way now: give it time to arrive */
    REQUIRE_FALSE(run_until([&] { return s->send_credit != 44 * 1024 || p.so.down; }, 100));
    CHECK(cl->rx_window == 0);
    CHECK(p.cli->windows_sum == 0);
    stream_reset(s, RST_CANCEL);
}

/* ---- resolver ---- */

struct resolved_got {
    int n = 0, status = -1;
    uint16_t port = 0;
};

static void resolved_cb(void *arg, int status, const addr_list *a, const char *)
{
    resolved_got *g = (resolved_got *)arg;
    g->n++;
    g->status = status;
    if (a && a->n) {
        uint16_t p;
        memcpy(&p, (const char *)&a->a[0].ss + 2, 2);   /* sin_port and sin6_port alike */
        g->port = ntohs(p);
    }
}

TEST_CASE("resolver: one lookup per name, each request its own port; a cancelled request is never answered")
{
    up();
    resolved_got g[40];
    resolve_req *r[40];
    for (int i = 0; i < 40; i++)
        REQUIRE((r[i] = resolve_start("localhost", (uint16_t)(1000 + i), resolved_cb, &g[i])));
    CHECK(resolve_pending() == 1);          /* one name, one lookup */
    for (int i = 1; i < 40; i += 2)
        resolve_cancel(r[i]);               /* freed at once (ASan would see a leak) */
    REQUIRE(run_until([] { return resolve_pending() == 0; }));
    for (int i = 0; i < 40; i++) {
        CAPTURE(i);
        CHECK(g[i].n == (i % 2 ? 0 : 1));
        if (i % 2 == 0) {
            CHECK(g[i].status == g[0].status);
            if (g[i].status == 0)
                CHECK(g[i].port == 1000 + i);
        }
    }

    /* a numeric host is answered from the loop, never inside the call */
    resolved_got a, b;
    resolve_req *ra = resolve_start("127.0.0.1", 7, resolved_cb, &a);
    resolve_req *rb = resolve_start("::1", 8, resolved_cb, &b);
    REQUIRE(ra);
    REQUIRE(rb);
    CHECK(a.n == 0);
    resolve_cancel(rb);
    REQUIRE(run_until([] { return resolve_pending() == 0; }));
    CHECK(a.n == 1);
    CHECK(a.status == 0);
    CHECK(a.port == 7);
    CHECK(b.n == 0);
}

/* ---- lingering close ---- */

/* A TCP connection on loopback: *ours nonblocking, *theirs blocking with
 * a 2 s receive timeout. */
static void tcp_pair(int *ours, int *theirs)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    REQUIRE(bind(l, (sockaddr *)&a, sizeof a) == 0);
    REQUIRE(listen(l, 1) == 0);
    REQUIRE(getsockname(l, (sockaddr *)&a, &len) == 0);
    *theirs = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(connect(*theirs, (sockaddr *)&a, sizeof a) == 0);
    *ours = accept4(l, nullptr, nullptr, SOCK_NONBLOCK);
    REQUIRE(*ours >= 0);
    close(l);
    timeval tv = {2, 0};
    setsockopt(*theirs, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

/* What the peer reads to the end: the bytes, then "eof" or "reset". */
static std::string read_end(int fd, std::string *got)
{
    char buf[4096];
    for (;;) {
        ssize_t n = recv(fd, buf, sizeof buf, 0);
        if (n > 0) {
            got->append(buf, (size_t)n);
            continue;
        }
        return n == 0 ? "eof" : errno == ECONNRESET ? "reset" : strerror(errno);
    }
}

/* A connection whose peer sent bytes we never read, and our last word. */
static void unread_then_bye(int *ours, int *theirs)
{
    up();
    tcp_pair(ours, theirs);
    REQUIRE(send(*theirs, "unread", 6, 0) == 6);
    REQUIRE(run_until([&] {
        char c;
        return recv(*ours, &c, 1, MSG_PEEK) == 1;
    }));
    REQUIRE(write(*ours, "bye", 3) == 3);
}

TEST_CASE("sock: a lingering close ends with our bytes and a FIN though input is unread and more comes")
{
    int ours, theirs;
    unread_then_bye(&ours, &theirs);
    sock_close_lingering(ours, 2000);
    CHECK(sock_lingering() == 1);
    one_pass();
    /* more comes after the close: a closed socket would answer it with a
     * reset, which can take back what it has not sent yet */
    REQUIRE(send(theirs, "late", 4, 0) == 4);
    one_pass();
    std::string got;
    CHECK(read_end(theirs, &got) == "eof");
    CHECK(got == "bye");
    CHECK(sock_lingering() == 1);   /* until the peer closes too */
    close(theirs);
    CHECK(run_until([&] { return sock_lingering() == 0; }));
    one_pass();
}

TEST_CASE("sock: a lingering close gives up at its deadline")
{
    up();
    int ours, theirs;
    tcp_pair(&ours, &theirs);
    uint64_t t0 = now_ms();
    sock_close_lingering(ours, 150);
    CHECK(run_until([&] { return sock_lingering() == 0; }, 3000));
    CHECK(now_ms() - t0 >= 150);
    one_pass();
    close(theirs);
}

TEST_CASE("sock: without the lingering close the same exchange is reset (the case it exists for)")
{
    int ours, theirs;
    unread_then_bye(&ours, &theirs);
    close(ours);
    std::string got;
    CHECK(read_end(theirs, &got) == "reset");
    close(theirs);
}
