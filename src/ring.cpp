/*
 * ring.cpp - byte ring buffer, see ring.h.
 */
#include "ring.h"

#include <stdlib.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#define POISON(p, n) ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n) ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

/*
 * Areas of the sizes most rings start with are kept on free lists, up to
 * RING_POOL_BYTES in all: a busy HTTP mapping takes and gives back a few of them
 * per request, and malloc() would otherwise move the top of the heap up
 * and down (brk, page faults) with the number of requests in flight. The
 * bound keeps an idle daemon small. Single-threaded, like the loop. Under
 * ASan a pooled area is poisoned, so a use after ring_free() still shows.
 */

struct pool_area { pool_area *next; };
static const size_t pool_sizes[] = {4096, 16 * 1024};
static pool_area *pool_free[2];
static size_t pool_bytes;

/*
 * One larger area is kept too, the last one freed (up to RING_SPARE_MAX),
 * until a ring of another size is allocated: a stream whose reader lags in
 * bursts takes a buffer of the same size again and again, and a freshly
 * mapped area costs a page fault on the first write of each of its pages
 * (a one-stream transfer through a client whose local reader lagged: 22,000
 * faults a second). A ring freed while others of its kind hold data goes
 * back at once (ring_free_beside), so the spare never adds to several
 * buffers in use.
 */
static char *spare;
static size_t spare_size;
#define SPARE_MIN (16 * 1024)   /* larger than the pool's sizes */

static void spare_drop(void)
{
    if (!spare)
        return;
    UNPOISON(spare, spare_size);
    free(spare);
    spare = nullptr;
    spare_size = 0;
}

static int pool_class(size_t size)
{
    for (int i = 0; i < 2; i++)
        if (size == pool_sizes[i])
            return i;
    return -1;
}

int ring_alloc(ring *r, size_t size)
{
    char *a;
    int c = pool_class(size);
    if (c >= 0 && pool_free[c]) {
        a = (char *)pool_free[c];
        UNPOISON(a, size);
        pool_free[c] = pool_free[c]->next;
        pool_bytes -= size;
    } else if (spare && size == spare_size) {
        a = spare;
        UNPOISON(a, size);
        spare = nullptr;
        spare_size = 0;
    } else {
        /* another size is wanted now: several buffers are in use, and
         * the spare would only add to them */
        if (size > SPARE_MIN)
            spare_drop();
        if (!(a = (char *)malloc(size)))
            return -1;
    }
    r->area = a;
    r->size = size;
    r->data = 0;
    r->head = 0;
    return 0;
}

static void area_free(char *a, size_t size)
{
    int c = pool_class(size);
    if (a && c >= 0 && pool_bytes + size <= RING_POOL_BYTES) {
        pool_area *p = (pool_area *)a;
        p->next = pool_free[c];
        pool_free[c] = p;
        pool_bytes += size;
        POISON(a + sizeof *p, size - sizeof *p);
        return;
    }
    if (a && size > SPARE_MIN && size <= RING_SPARE_MAX) {
        spare_drop();
        spare = a;
        spare_size = size;
        POISON(a, size);
        return;
    }
    free(a);
}

size_t ring_pooled(void)
{
    return pool_bytes + spare_size;
}

void ring_give_back(void)
{
    for (int c = 0; c < 2; c++)
        while (pool_free[c]) {
            pool_area *p = pool_free[c];
            UNPOISON(p, pool_sizes[c]);
            pool_free[c] = p->next;
            free(p);
        }
    pool_bytes = 0;
    spare_drop();
#ifdef __GLIBC__
    /* free()d memory below the top of the heap stays in the process until
     * trimmed: give back its whole pages too */
    malloc_trim(0);
#endif
}

void ring_drop_pages(ring *r)
{
    static uintptr_t page;
    if (r->data != 0 || !r->area)
        return;
    if (!page)
        page = (uintptr_t)sysconf(_SC_PAGESIZE);
    /* whole pages inside the area, past the one small frames use */
    uintptr_t lo = ((uintptr_t)r->area + page + page - 1) & ~(page - 1);
    uintptr_t hi = ((uintptr_t)r->area + r->size) & ~(page - 1);
    if (hi > lo) {
#ifdef MADV_DONTNEED
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
#endif
    }
}

void ring_free(ring *r)
{
    area_free(r->area, r->size);
    r->area = nullptr;
    r->size = r->data = r->head = 0;
}

void ring_free_beside(ring *r)
{
    if (r->size > SPARE_MIN) {
        free(r->area);
        r->area = nullptr;
    }
    ring_free(r);
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
    area_free(r->area, r->size);
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
