/*
 * test_ring.cpp - the byte ring: spans of data and room (0, 1 or 2), wrap,
 * poke/peek across the wrap, grow, consume-to-empty, and a randomized run
 * against a std::deque model. Ring and transfer sizes are boundary values
 * (0, 1, 2, size-1, size; 100, 5000, 200000), as dropbear's tests use.
 */
#include <doctest/doctest.h>

#include "ring.h"

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <deque>
#include <random>
#include <string>
#include <vector>

/* The byte stored at position i of a transfer: a pattern that a shifted or
 * reordered copy cannot reproduce. */
static char pat(size_t i)
{
    return (char)((i * 131 + (i >> 8) * 7 + 1) & 0xff);
}

static std::string pattern(size_t n, size_t from = 0)
{
    std::string s(n, '\0');
    for (size_t i = 0; i < n; i++)
        s[i] = pat(from + i);
    return s;
}

/* Everything stored, read through ring_data_spans. */
static std::string contents(const ring *r)
{
    iovec iov[2];
    std::string s;
    int n = ring_data_spans(r, 0, r->data, iov);
    for (int i = 0; i < n; i++)
        s.append((const char *)iov[i].iov_base, iov[i].iov_len);
    return s;
}

/* Bring an allocated empty ring to head == h holding payload (which must
 * be non-empty and fit): h filler bytes in, out again, payload in. */
static void place(ring *r, size_t h, const std::string &payload)
{
    REQUIRE(r->data == 0);
    REQUIRE(!payload.empty());
    REQUIRE(h < r->size);
    REQUIRE(payload.size() <= r->size);
    std::string filler(h, 'x');
    REQUIRE(ring_put(r, filler.data(), h) == 0);
    REQUIRE(ring_put(r, payload.data(), 1) == 0);
    ring_consume(r, h);
    REQUIRE(ring_put(r, payload.data() + 1, payload.size() - 1) == 0);
    REQUIRE(r->head == h);
    REQUIRE(r->data == payload.size());
}

TEST_CASE("ring: alloc and free")
{
    ring r;
    REQUIRE(ring_alloc(&r, 100) == 0);
    CHECK(r.size == 100);
    CHECK(r.data == 0);
    CHECK(r.head == 0);
    CHECK(r.area != nullptr);
    CHECK(ring_room(&r) == 100);
    CHECK(ring_empty(&r));
    ring_free(&r);
    CHECK(r.area == nullptr);
    CHECK(r.size == 0);
    CHECK(r.data == 0);
    CHECK(r.head == 0);
    ring_free(&r);   /* twice is harmless */
    CHECK(r.area == nullptr);
}

TEST_CASE("ring: areas of the common sizes are reused, within a bound")
{
    ring_give_back();   /* no spare left by another test (see below) */
    size_t base = ring_pooled();
    ring a;
    REQUIRE(ring_alloc(&a, 16 * 1024) == 0);
    char *area = a.area;
    ring_put(&a, "x", 1);
    ring_free(&a);
    CHECK(ring_pooled() == base + 16 * 1024);
    ring b;
    REQUIRE(ring_alloc(&b, 16 * 1024) == 0);
    CHECK(b.area == area);              /* the same area, from the pool */
    CHECK(b.data == 0);
    CHECK(ring_room(&b) == 16 * 1024);
    CHECK(ring_pooled() == base);
    ring_free(&b);

    /* freeing many never keeps more than RING_POOL_BYTES */
    ring rs[RING_POOL_BYTES / (16 * 1024) + 16];
    for (auto &r : rs)
        REQUIRE(ring_alloc(&r, 16 * 1024) == 0);
    for (auto &r : rs)
        ring_free(&r);
    CHECK(ring_pooled() <= RING_POOL_BYTES);
    CHECK(ring_pooled() >= RING_POOL_BYTES - 16 * 1024);

    /* other sizes go straight back to malloc */
    size_t before = ring_pooled();
    ring c;
    REQUIRE(ring_alloc(&c, 5000) == 0);
    ring_free(&c);
    CHECK(ring_pooled() == before);

    /* a quiet process gives the pool back; areas are allocated anew */
    ring_give_back();
    CHECK(ring_pooled() == 0);
    ring d;
    REQUIRE(ring_alloc(&d, 4096) == 0);
    ring_put(&d, "y", 1);
    ring_free(&d);
    CHECK(ring_pooled() == 4096);
    ring_give_back();
    CHECK(ring_pooled() == 0);
}

TEST_CASE("ring: the last larger area freed is kept for the next ring of its size, until another size is wanted")
{
    ring_give_back();
    ring a;
    REQUIRE(ring_alloc(&a, 256 * 1024) == 0);
    char *area = a.area;
    ring_put(&a, "x", 1);
    ring_free(&a);
    CHECK(ring_pooled() == 256 * 1024);
    ring b;
    REQUIRE(ring_alloc(&b, 256 * 1024) == 0);
    CHECK(b.area == area);              /* the very area: its pages are in place */
    CHECK(b.data == 0);
    CHECK(ring_room(&b) == 256 * 1024);
    CHECK(ring_pooled() == 0);
    ring_free(&b);
    /* only one is kept: the last freed */
    ring c, d;
    REQUIRE(ring_alloc(&c, 64 * 1024) == 0);
    CHECK(ring_pooled() == 0);          /* another size wanted: the spare went */
    REQUIRE(ring_alloc(&d, 128 * 1024) == 0);
    ring_free(&c);
    ring_free(&d);
    CHECK(ring_pooled() == 128 * 1024);
    /* a pool size or a small odd size leaves it alone */
    ring e, f;
    REQUIRE(ring_alloc(&e, 16 * 1024) == 0);
    REQUIRE(ring_alloc(&f, 5000) == 0);
    CHECK(ring_pooled() == 128 * 1024);
    ring_free(&e);
    ring_free(&f);
    /* over RING_SPARE_MAX: straight back to malloc */
    ring g;
    REQUIRE(ring_alloc(&g, RING_SPARE_MAX + 4096) == 0);
    CHECK(ring_pooled() == 16 * 1024);  /* the 128 KiB spare went for it; the pooled 16 KiB stays */
    ring_free(&g);
    CHECK(ring_pooled() == 16 * 1024);
    ring_give_back();
    CHECK(ring_pooled() == 0);
}

TEST_CASE("ring: a ring of size 0 holds nothing")
{
    ring r;
    REQUIRE(ring_alloc(&r, 0) == 0);
    iovec iov[2];
    char c = 'a';
    CHECK(ring_room(&r) == 0);
    CHECK(ring_data_spans(&r, 0, 10, iov) == 0);
    CHECK(ring_room_spans(&r, 0, 10, iov) == 0);
    CHECK(ring_put(&r, &c, 0) == 0);
    CHECK(ring_put(&r, &c, 1) == -1);
    CHECK(r.data == 0);
    ring_free(&r);
}

TEST_CASE("ring: put, peek and consume every transfer size at every boundary head")
{
    const size_t sizes[] = {1, 2, 3, 100, 5000, 200000};
    for (size_t size : sizes) {
        std::vector<size_t> heads = {0, 1, size / 2, size - 1};
        std::vector<size_t> lens = {1, 2, size - 1, size};
        for (size_t h : heads) {
            for (size_t len : lens) {
                if (h >= size || len == 0 || len > size)
                    continue;
                CAPTURE(size);
                CAPTURE(h);
                CAPTURE(len);
                ring r;
                REQUIRE(ring_alloc(&r, size) == 0);
                std::string in = pattern(len);
                place(&r, h, in);
                CHECK(ring_room(&r) == size - len);
                CHECK(contents(&r) == in);

                /* data spans: exactly where the bytes are */
                iovec iov[2];
                int n = ring_data_spans(&r, 0, len, iov);
                if (h + len <= size) {
                    REQUIRE(n == 1);
                    CHECK(iov[0].iov_base == r.area + h);
                    CHECK(iov[0].iov_len == len);
                } else {
                    REQUIRE(n == 2);
                    CHECK(iov[0].iov_base == r.area + h);
                    CHECK(iov[0].iov_len == size - h);
                    CHECK(iov[1].iov_base == r.area);
                    CHECK(iov[1].iov_len == len - (size - h));
                }

                /* room spans: from the tail to the head */
                size_t room = size - len, tail = (h + len) % size;
                n = ring_room_spans(&r, 0, room, iov);
                if (room == 0) {
                    CHECK(n == 0);
                } else if (tail + room <= size) {
                    REQUIRE(n == 1);
                    CHECK(iov[0].iov_base == r.area + tail);
                    CHECK(iov[0].iov_len == room);
                } else {
                    REQUIRE(n == 2);
                    CHECK(iov[0].iov_base == r.area + tail);
                    CHECK(iov[0].iov_len == size - tail);
                    CHECK(iov[1].iov_base == r.area);
                    CHECK(iov[1].iov_len == room - (size - tail));
                }

                /* one more byte than the room is refused and changes nothing */
                std::string extra(room + 1, 'z');
                CHECK(ring_put(&r, extra.data(), extra.size()) == -1);
                CHECK(r.data == len);
                CHECK(contents(&r) == in);

                /* peek the middle, byte by byte at the ends */
                if (len >= 2) {
                    std::string mid(len - 1, '\0');
                    ring_peek(&r, 1, &mid[0], len - 1);
                    CHECK(mid == in.substr(1));
                }
                CHECK(ring_byte(&r, 0) == (uint8_t)in[0]);
                CHECK(ring_byte(&r, len - 1) == (uint8_t)in[len - 1]);

                /* consume in two steps: the head moves, then resets */
                size_t first = len / 2;
                ring_consume(&r, first);
                CHECK(r.data == len - first);
                if (first < len)
                    CHECK(r.head == (h + first) % size);
                CHECK(contents(&r) == in.substr(first));
                ring_consume(&r, len - first);
                CHECK(r.data == 0);
                CHECK(r.head == 0);
                CHECK(ring_empty(&r));
                ring_free(&r);
            }
        }
    }
}

TEST_CASE("ring: a fresh ring gives its whole room in one span, no data span")
{
    const size_t sizes[] = {1, 2, 100, 5000, 200000};
    for (size_t size : sizes) {
        CAPTURE(size);
        ring r;
        REQUIRE(ring_alloc(&r, size) == 0);
        iovec iov[2];
        CHECK(ring_data_spans(&r, 0, size, iov) == 0);
        REQUIRE(ring_room_spans(&r, 0, SIZE_MAX, iov) == 1);
        CHECK(iov[0].iov_base == r.area);
        CHECK(iov[0].iov_len == size);
        /* max limits, off skips */
        REQUIRE(ring_room_spans(&r, 0, 1, iov) == 1);
        CHECK(iov[0].iov_len == 1);
        CHECK(ring_room_spans(&r, 0, 0, iov) == 0);
        CHECK(ring_room_spans(&r, size, 10, iov) == 0);
        REQUIRE(ring_room_spans(&r, size - 1, 10, iov) == 1);
        CHECK(iov[0].iov_base == r.area + size - 1);
        CHECK(iov[0].iov_len == 1);
        ring_free(&r);
    }
}

TEST_CASE("ring: data spans honour off and max across the wrap")
{
    /* size 10, head 7, 6 bytes: positions 7 8 9 | 0 1 2 */
    ring r;
    REQUIRE(ring_alloc(&r, 10) == 0);
    place(&r, 7, "abcdef");
    iovec iov[2];

    REQUIRE(ring_data_spans(&r, 0, 6, iov) == 2);
    CHECK(iov[0].iov_base == r.area + 7);
    CHECK(iov[0].iov_len == 3);
    CHECK(iov[1].iov_base == r.area);
    CHECK(iov[1].iov_len == 3);

    REQUIRE(ring_data_spans(&r, 0, 3, iov) == 1);   /* max stops at the wrap */
    CHECK(iov[0].iov_len == 3);
    REQUIRE(ring_data_spans(&r, 0, 4, iov) == 2);
    CHECK(iov[1].iov_len == 1);
    REQUIRE(ring_data_spans(&r, 2, 100, iov) == 2);  /* from position 9 */
    CHECK(iov[0].iov_base == r.area + 9);
    CHECK(iov[0].iov_len == 1);
    CHECK(iov[1].iov_base == r.area);
    CHECK(iov[1].iov_len == 3);
    REQUIRE(ring_data_spans(&r, 3, 100, iov) == 1);  /* exactly at the wrap */
    CHECK(iov[0].iov_base == r.area);
    CHECK(iov[0].iov_len == 3);
    REQUIRE(ring_data_spans(&r, 5, 100, iov) == 1);
    CHECK(iov[0].iov_base == r.area + 2);
    CHECK(iov[0].iov_len == 1);
    CHECK(ring_data_spans(&r, 6, 100, iov) == 0);
    CHECK(ring_data_spans(&r, 0, 0, iov) == 0);

    /* room: positions 3..6 in one span */
    REQUIRE(ring_room_spans(&r, 0, 100, iov) == 1);
    CHECK(iov[0].iov_base == r.area + 3);
    CHECK(iov[0].iov_len == 4);
    CHECK(ring_room_spans(&r, 4, 100, iov) == 0);

    CHECK(ring_byte(&r, 2) == 'c');
    CHECK(ring_byte(&r, 3) == 'd');
    CHECK(ring_byte(&r, 5) == 'f');
    ring_free(&r);
}

TEST_CASE("ring: room spans wrap when the data does not")
{
    /* size 10, head 3, 4 bytes at 3..6: room is 7 8 9 | 0 1 2 */
    ring r;
    REQUIRE(ring_alloc(&r, 10) == 0);
    place(&r, 3, "wxyz");
    iovec iov[2];
    REQUIRE(ring_room_spans(&r, 0, 100, iov) == 2);
    CHECK(iov[0].iov_base == r.area + 7);
    CHECK(iov[0].iov_len == 3);
    CHECK(iov[1].iov_base == r.area);
    CHECK(iov[1].iov_len == 3);
    REQUIRE(ring_room_spans(&r, 3, 100, iov) == 1);
    CHECK(iov[0].iov_base == r.area);
    CHECK(iov[0].iov_len == 3);
    REQUIRE(ring_room_spans(&r, 1, 3, iov) == 2);
    CHECK(iov[0].iov_len == 2);
    CHECK(iov[1].iov_len == 1);

    /* a put across the wrap lands in both pieces */
    REQUIRE(ring_put(&r, "ABCDE", 5) == 0);
    CHECK(contents(&r) == "wxyzABCDE");
    CHECK(memcmp(r.area + 7, "ABC", 3) == 0);
    CHECK(memcmp(r.area, "DE", 2) == 0);
    REQUIRE(ring_put(&r, "F", 1) == 0);
    CHECK(ring_room(&r) == 0);
    CHECK(ring_room_spans(&r, 0, 100, iov) == 0);
    CHECK(ring_put(&r, "G", 1) == -1);
    CHECK(contents(&r) == "wxyzABCDEF");
    ring_free(&r);
}

TEST_CASE("ring: produce what was written into the room spans")
{
    const size_t sizes[] = {1, 2, 100, 5000};
    for (size_t size : sizes) {
        for (size_t h : {(size_t)0, size / 2, size - 1}) {
            CAPTURE(size);
            CAPTURE(h);
            ring r;
            REQUIRE(ring_alloc(&r, size) == 0);
            place(&r, h, "q");
            size_t room = size - 1;
            iovec iov[2];
            int n = ring_room_spans(&r, 0, room, iov);
            std::string in = pattern(room, 9);
            size_t k = 0;
            for (int i = 0; i < n; i++) {
                memcpy(iov[i].iov_base, in.data() + k, iov[i].iov_len);
                k += iov[i].iov_len;
            }
            CHECK(k == room);
            ring_produce(&r, k);
            CHECK(r.data == size);
            CHECK(contents(&r) == "q" + in);
            ring_free(&r);
        }
    }
}

TEST_CASE("ring: poke at every offset across the wrap fills a reserved header")
{
    /* size 16, head 12, 2 bytes stored: tail at 14, room 14 bytes = 14 15 | 0..11 */
    for (size_t off = 0; off <= 14; off++) {
        for (size_t len = 0; off + len <= 14; len++) {
            CAPTURE(off);
            CAPTURE(len);
            ring r;
            REQUIRE(ring_alloc(&r, 16) == 0);
            place(&r, 12, "AB");
            for (size_t i = 0; i < 14; i++)
                r.area[(14 + i) % 16] = '.';   /* mark the room */
            std::string in = pattern(len, off);
            ring_poke(&r, off, in.data(), len);
            CHECK(r.data == 2);   /* poke does not produce */
            /* fill the gap before off, then produce all and read it back */
            std::string gap(off, '-');
            ring_poke(&r, 0, gap.data(), off);
            ring_produce(&r, off + len);
            CHECK(contents(&r) == "AB" + gap + in);
            /* stored bytes and the rest of the room were not touched */
            CHECK(r.area[12] == 'A');
            CHECK(r.area[13] == 'B');
            size_t untouched = 14 - off - len;
            for (size_t i = 0; i < untouched; i++)
                CHECK(r.area[(14 + off + len + i) % 16] == '.');
            ring_free(&r);
        }
    }
}

TEST_CASE("ring: poke is cut at the room, the stored bytes survive")
{
    ring r;
    REQUIRE(ring_alloc(&r, 8) == 0);
    place(&r, 5, "abcde");   /* 5 6 7 | 0 1, room 2..4 */
    ring_poke(&r, 1, "XYZW", 4);   /* room from off 1: positions 3, 4 */
    CHECK(memcmp(r.area + 3, "XY", 2) == 0);
    CHECK(contents(&r) == "abcde");
    ring_poke(&r, 3, "Q", 1);      /* off == room: nothing */
    CHECK(contents(&r) == "abcde");
    ring_free(&r);
}

TEST_CASE("ring: peek across the wrap at every offset and length")
{
    ring r;
    REQUIRE(ring_alloc(&r, 12) == 0);
    std::string in = pattern(10, 3);
    place(&r, 7, in);   /* 7..11 | 0..4 */
    for (size_t off = 0; off < 10; off++) {
        for (size_t len = 0; off + len <= 10; len++) {
            CAPTURE(off);
            CAPTURE(len);
            std::string out(len + 1, '#');
            ring_peek(&r, off, &out[0], len);
            CHECK(out.substr(0, len) == in.substr(off, len));
            CHECK(out[len] == '#');   /* nothing past len */
        }
    }
    CHECK(r.data == 10);   /* peek does not consume */
    CHECK(r.head == 7);
    ring_free(&r);
}

TEST_CASE("ring: consume moves the head across the end and resets it when empty")
{
    ring r;
    REQUIRE(ring_alloc(&r, 10) == 0);
    place(&r, 8, "123456");   /* 8 9 | 0..3 */
    ring_consume(&r, 1);
    CHECK(r.head == 9);
    ring_consume(&r, 1);
    CHECK(r.head == 0);       /* exactly at the end */
    CHECK(contents(&r) == "3456");
    ring_consume(&r, 3);
    CHECK(r.head == 3);
    ring_consume(&r, 1);
    CHECK(r.data == 0);
    CHECK(r.head == 0);
    /* an empty ring then takes a full-size message in one span */
    std::string in = pattern(10);
    REQUIRE(ring_put(&r, in.data(), 10) == 0);
    iovec iov[2];
    CHECK(ring_data_spans(&r, 0, 10, iov) == 1);
    ring_consume(&r, 0);      /* consuming nothing keeps everything */
    CHECK(r.head == 0);
    CHECK(contents(&r) == in);
    ring_free(&r);
}

TEST_CASE("ring: grow keeps content stored across the wrap")
{
    const size_t sizes[] = {2, 8, 100, 5000};
    for (size_t size : sizes) {
        for (size_t h : {(size_t)1, size / 2, size - 1}) {
            for (size_t len : {(size_t)1, (size_t)2, size - 1, size}) {
                if (len > size || h >= size)
                    continue;
                CAPTURE(size);
                CAPTURE(h);
                CAPTURE(len);
                ring r;
                REQUIRE(ring_alloc(&r, size) == 0);
                std::string in = pattern(len, 77);
                place(&r, h, in);
                REQUIRE(ring_grow(&r, size * 2 + 1) == 0);
                CHECK(r.size == size * 2 + 1);
                CHECK(r.head == 0);
                CHECK(r.data == len);
                CHECK(contents(&r) == in);
                iovec iov[2];
                CHECK(ring_data_spans(&r, 0, len, iov) == 1);
                CHECK(ring_room(&r) == size * 2 + 1 - len);
                std::string more = pattern(size + 1, 5);
                REQUIRE(ring_put(&r, more.data(), more.size()) == 0);
                CHECK(contents(&r) == in + more);
                ring_free(&r);
            }
        }
    }
}

TEST_CASE("ring: grow an empty ring")
{
    ring r;
    REQUIRE(ring_alloc(&r, 4) == 0);
    REQUIRE(ring_grow(&r, 200000) == 0);
    CHECK(r.size == 200000);
    CHECK(r.data == 0);
    CHECK(ring_room(&r) == 200000);
    ring_free(&r);
}

TEST_CASE("ring: 200000 bytes through a 5000-byte ring in uneven chunks")
{
    ring r;
    REQUIRE(ring_alloc(&r, 5000) == 0);
    const size_t total = 200000;
    std::string out;
    size_t in = 0;
    size_t chunk = 1;
    while (out.size() < total) {
        size_t n = chunk;
        if (n > ring_room(&r))
            n = ring_room(&r);
        if (n > total - in)
            n = total - in;
        std::string p = pattern(n, in);
        REQUIRE(ring_put(&r, p.data(), n) == 0);
        in += n;
        /* drain a different amount than was put, through the spans */
        size_t take = (chunk * 3) % 4999 + 1;
        iovec iov[2];
        int c = ring_data_spans(&r, 0, take, iov);
        size_t got = 0;
        for (int i = 0; i < c; i++) {
            out.append((const char *)iov[i].iov_base, iov[i].iov_len);
            got += iov[i].iov_len;
        }
        ring_consume(&r, got);
        chunk = chunk * 7 % 5003 + 1;
    }
    CHECK(in == total);
    CHECK(out.size() == total);
    CHECK(out == pattern(total));
    CHECK(r.data == 0);
    CHECK(r.head == 0);
    ring_free(&r);
}

TEST_CASE("ring: randomized operations match a std::deque model")
{
    const size_t sizes[] = {1, 2, 37, 4096};
    for (size_t size : sizes) {
        CAPTURE(size);
        std::mt19937 rng(20261129u + (unsigned)size);
        ring r;
        REQUIRE(ring_alloc(&r, size) == 0);
        std::deque<char> model;
        size_t cap = size;
        unsigned counter = 0;
        auto rnd = [&](size_t n) { return n ? (size_t)(rng() % n) : 0; };

        for (int step = 0; step < 20000; step++) {
            CAPTURE(step);
            unsigned op = (unsigned)rnd(100);
            if (op < 35) {
                /* put, sometimes more than the room */
                size_t n = rnd(cap - model.size() + 3);
                std::string p;
                for (size_t i = 0; i < n; i++)
                    p.push_back((char)(counter++ & 0xff));
                int rc = ring_put(&r, p.data(), n);
                if (n <= cap - model.size()) {
                    REQUIRE(rc == 0);
                    model.insert(model.end(), p.begin(), p.end());
                } else {
                    REQUIRE(rc == -1);
                }
            } else if (op < 55) {
                /* write into the room spans, produce part of it */
                iovec iov[2];
                size_t want = rnd(cap - model.size() + 1);
                int n = ring_room_spans(&r, 0, want, iov);
                size_t got = 0;
                for (int i = 0; i < n; i++) {
                    for (size_t k = 0; k < iov[i].iov_len; k++)
                        ((char *)iov[i].iov_base)[k] = (char)(counter + got + k);
                    got += iov[i].iov_len;
                }
                REQUIRE(got == want);
                size_t keep = rnd(got + 1);
                ring_produce(&r, keep);
                for (size_t k = 0; k < keep; k++)
                    model.push_back((char)(counter + k));
                counter += (unsigned)got;
            } else if (op < 85) {
                size_t n = rnd(model.size() + 1);
                ring_consume(&r, n);
                model.erase(model.begin(), model.begin() + (long)n);
            } else if (op < 95) {
                if (!model.empty()) {
                    size_t off = rnd(model.size());
                    size_t len = rnd(model.size() - off + 1);
                    std::string got(len, '\0');
                    ring_peek(&r, off, &got[0], len);
                    REQUIRE(got == std::string(model.begin() + (long)off, model.begin() + (long)(off + len)));
                    REQUIRE(ring_byte(&r, off) == (uint8_t)model[off]);
                }
            } else if (op < 97 && cap < 8192) {
                size_t ncap = cap + 1 + rnd(cap + 1);
                REQUIRE(ring_grow(&r, ncap) == 0);
                cap = ncap;
            }
            REQUIRE(r.size == cap);
            REQUIRE(r.data == model.size());
            REQUIRE(ring_room(&r) == cap - model.size());
            if (model.empty())
                REQUIRE(r.head == 0);
            REQUIRE(r.head < cap);
            if ((step & 63) == 0)
                REQUIRE(contents(&r) == std::string(model.begin(), model.end()));
        }
        CHECK(contents(&r) == std::string(model.begin(), model.end()));
        ring_free(&r);
    }
}

#ifdef __linux__
/* Pages of [p, p+len) in memory now, by mincore(2). */
static size_t resident_pages(const char *p, size_t len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = ((uintptr_t)p + pg - 1) & ~(uintptr_t)(pg - 1);
    uintptr_t hi = ((uintptr_t)p + len) & ~(uintptr_t)(pg - 1);
    std::vector<unsigned char> v((hi - lo) / pg);
    REQUIRE(mincore((void *)lo, hi - lo, v.data()) == 0);
    size_t n = 0;
    for (unsigned char c : v)
        n += c & 1;
    return n;
}

/* Whether madvise(MADV_DONTNEED) takes pages out of memory here: not
 * under qemu-user, which keeps the guest's pages. */
static bool dontneed_works(void)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    char *p = (char *)mmap(nullptr, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(p != MAP_FAILED);
    memset(p, 1, 4 * pg);
    madvise(p, 4 * pg, MADV_DONTNEED);
    bool works = resident_pages(p, 4 * pg) == 0;
    munmap(p, 4 * pg);
    return works;
}

TEST_CASE("ring: an empty ring drops its pages past the first and stays usable")
{
    ring r;
    bool measurable = dontneed_works();
    if (!measurable)
        MESSAGE("madvise(MADV_DONTNEED) keeps pages here (an emulator?): residency not checked");
    const size_t size = 512 * 1024;
    REQUIRE(ring_alloc(&r, size) == 0);
    std::string fill(size, 'x');
    REQUIRE(ring_put(&r, fill.data(), size) == 0);
    size_t before = resident_pages(r.area, size);
    CHECK(before >= size / 4096 - 2);

    ring_drop_pages(&r);            /* holding data: nothing is dropped */
    CHECK(resident_pages(r.area, size) == before);
    CHECK(contents(&r) == fill);

    ring_consume(&r, size);
    ring_drop_pages(&r);
    if (measurable)
        CHECK(resident_pages(r.area, size) <= 2);

    /* and it carries bytes again, across the dropped pages and the wrap */
    for (int round = 0; round < 3; round++) {
        std::string msg(300 * 1024, (char)('a' + round));
        REQUIRE(ring_put(&r, msg.data(), msg.size()) == 0);
        CHECK(contents(&r) == msg);
        ring_consume(&r, 100 * 1024);
        REQUIRE(ring_put(&r, msg.data(), 250 * 1024) == 0);
        CHECK(contents(&r) == msg.substr(100 * 1024) + msg.substr(0, 250 * 1024));
        ring_consume(&r, r.data);
        ring_drop_pages(&r);
    }
    ring_free(&r);
}
#endif
