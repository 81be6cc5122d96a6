/*
 * ring.cpp - byte ring buffer, see ring.h.
 */
#include "ring.h"

#include <stdlib.h>
#include <string.h>

int ring_alloc(ring *r, size_t size)
{
    char *a = (char *)malloc(size);
    if (!a)
        return -1;
    r->area = a;
    r->size = size;
    r->data = 0;
    r->head = 0;
    return 0;
}

void ring_free(ring *r)
{
    free(r->area);
    r->area = nullptr;
    r->size = r->data = r->head = 0;
}

int ring_grow(ring *r, size_t newsize)
{
    ring n;
    iovec iov[2];

    if (ring_alloc(&n, newsize) < 0)
        return -1;
    int cnt = ring_data_spans(r, 0, r->data, iov);
    for (int i = 0; i < cnt; i++)
        ring_put(&n, iov[i].iov_base, iov[i].iov_len);
    free(r->area);
    *r = n;
    return 0;
}

/* The two pieces of [start, start+len) in a ring of size bytes. */
static int spans(char *area, size_t size, size_t start, size_t len, iovec iov[2])
{
    if (len == 0)
        return 0;
    if (start >= size)
        start -= size;
    size_t first = size - start;
    iov[0].iov_base = area + start;
    if (len <= first) {
        iov[0].iov_len = len;
        return 1;
    }
    iov[0].iov_len = first;
    iov[1].iov_base = area;
    iov[1].iov_len = len - first;
    return 2;
}

int ring_data_spans(const ring *r, size_t off, size_t max, iovec iov[2])
{
    if (off >= r->data)
        return 0;
    size_t len = r->data - off;
    if (len > max)
        len = max;
    return spans(r->area, r->size, r->head + off, len, iov);
}

int ring_room_spans(const ring *r, size_t off, size_t max, iovec iov[2])
{
    size_t room = r->size - r->data;
    if (off >= room)
        return 0;
    size_t len = room - off;
    if (len > max)
        len = max;
    return spans(r->area, r->size, r->head + r->data + off, len, iov);
}

void ring_produce(ring *r, size_t len)
{
    r->data += len;
}

void ring_consume(ring *r, size_t len)
{
    r->data -= len;
    if (r->data == 0) {
        r->head = 0;
        return;
    }
    r->head += len;
    if (r->head >= r->size)
        r->head -= r->size;
}

void ring_poke(ring *r, size_t off, const void *buf, size_t len)
{
    iovec iov[2];
    const char *p = (const char *)buf;
    int n = ring_room_spans(r, off, len, iov);
    for (int i = 0; i < n; i++) {
        memcpy(iov[i].iov_base, p, iov[i].iov_len);
        p += iov[i].iov_len;
    }
}

int ring_put(ring *r, const void *buf, size_t len)
{
    if (len > ring_room(r))
        return -1;
    ring_poke(r, 0, buf, len);
    r->data += len;
    return 0;
}

void ring_peek(const ring *r, size_t off, void *buf, size_t len)
{
    iovec iov[2];
    char *p = (char *)buf;
    int n = ring_data_spans(r, off, len, iov);
    for (int i = 0; i < n; i++) {
        memcpy(p, iov[i].iov_base, iov[i].iov_len);
        p += iov[i].iov_len;
    }
}
