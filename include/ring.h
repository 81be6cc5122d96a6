/*
 * ring.h - a byte ring buffer: {size, area, data, head}.
 *
 * The readable bytes start at head and may wrap once; the free space starts
 * at head + data and may wrap once. Accessors hand out one or two spans that
 * go straight to readv()/writev(), so nothing is ever moved inside the ring.
 * An empty ring resets head to 0 so small messages stay contiguous.
 */
#ifndef WMPROXY_RING_H
#define WMPROXY_RING_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct ring {
    size_t size = 0;     /* capacity of area */
    char *area = nullptr;
    size_t data = 0;     /* bytes stored */
    size_t head = 0;     /* offset of the first stored byte */
};

/* Allocate the area. Returns 0, or -1 when out of memory. */
int ring_alloc(ring *r, size_t size);
/* Release the area; the ring becomes empty with size 0. */
void ring_free(ring *r);
/* The same for a ring freed while others of its kind are in use: a larger
 * area goes straight back to malloc rather than stay as the spare below,
 * which would only add to them. */
void ring_free_beside(ring *r);
/* Freed areas of 4 KiB and 16 KiB are kept for reuse, up to this many
 * bytes in all. */
#define RING_POOL_BYTES (1024 * 1024)
/* And the last larger area freed, up to this size (the default
 * max_window): the next ring of exactly its size takes it, a ring of
 * another size frees it. */
#define RING_SPARE_MAX (4 * 1024 * 1024)
/* Bytes of freed areas kept for reuse now. */
size_t ring_pooled(void);
/* The process is quiet: free the pooled areas and give the heap's free
 * pages back to the system (glibc). */
void ring_give_back(void);
/* An empty ring keeps its area but gives the pages past the first back
 * to the system (they come back zeroed when next written): a long-lived
 * ring that once carried a burst costs one page while quiet. */
void ring_drop_pages(ring *r);
/* Grow to newsize (> size) keeping the content. Returns 0 or -1. */
int ring_grow(ring *r, size_t newsize);

static inline size_t ring_room(const ring *r) { return r->size - r->data; }
static inline bool ring_empty(const ring *r) { return r->data == 0; }

/*
 * Spans of stored bytes from offset off (relative to head), at most max
 * bytes. Return values: number of spans filled (0, 1 or 2).
 */
int ring_data_spans(const ring *r, size_t off, size_t max, iovec iov[2]);
/* Spans of free space from offset off past the stored bytes, at most max
 * bytes. Returns the number of spans filled (0, 1 or 2). */
int ring_room_spans(const ring *r, size_t off, size_t max, iovec iov[2]);

/* Count len bytes just written into the free space as stored. */
void ring_produce(ring *r, size_t len);
/* Drop len stored bytes from the head. len <= data. */
void ring_consume(ring *r, size_t len);

/* Copy len bytes in at the tail. Returns 0, or -1 when there is no room
 * (nothing is copied then). */
int ring_put(ring *r, const void *buf, size_t len);
/* Write len bytes into the free space at offset off past the stored bytes
 * without producing them (to fill a header reserved before the payload). */
void ring_poke(ring *r, size_t off, const void *buf, size_t len);
/* Copy len stored bytes starting at offset off into buf (no consume). */
void ring_peek(const ring *r, size_t off, void *buf, size_t len);
/* Byte at offset off of the stored bytes. off < data. */
static inline uint8_t ring_byte(const ring *r, size_t off)
{
    size_t p = r->head + off;
    if (p >= r->size)
        p -= r->size;
    return (uint8_t)r->area[p];
}

#endif
