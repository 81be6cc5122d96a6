/*
 * reactor.cpp - the loop itself: timers (a binary heap on the monotonic
 * millisecond clock), tasks run at the end of a pass, deferred deletion.
 * Readiness comes from the backend (epoll or kqueue).
 */
#include "reactor.h"
#include "reactor-backend.h"

#include <time.h>
#include <vector>

static std::vector<timer *> heap;
static task *tasks_head, *tasks_tail;
static deferred *doomed_list;
static bool stopping;
static uint64_t pass_no;

/*
 * Inside reactor_run() the clock is read before the timers run and when
 * the backend's wait returns, before it dispatches (reactor_woke()), as
 * nginx does: a busy HTTP mapping asks for the time several times per
 * request, and every answer within one pass may be the same. Outside the
 * loop (start-up, tests) each call reads the clock.
 */
static uint64_t clock_now;
static bool clock_cached;

static uint64_t clock_read(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

uint64_t now_ms(void)
{
    return clock_cached ? clock_now : clock_read();
}

void reactor_woke(void)
{
    clock_now = clock_read();
}

/* Timers compare by signed difference so a wrapped clock still orders. */
static bool before(const timer *a, const timer *b)
{
    return (int64_t)(a->expire - b->expire) < 0;
}

static void heap_set(size_t i, timer *t)
{
    heap[i] = t;
    t->idx = (int)i;
}

static void sift_up(size_t i)
{
    timer *t = heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(t, heap[parent]))
            break;
        heap_set(i, heap[parent]);
        i = parent;
    }
    heap_set(i, t);
}

static void sift_down(size_t i)
{
    timer *t = heap[i];
    size_t n = heap.size();
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && before(heap[c + 1], heap[c]))
            c++;
        if (!before(heap[c], t))
            break;
        heap_set(i, heap[c]);
        i = c;
    }
    heap_set(i, t);
}

void timer_cancel(timer *t)
{
    if (t->idx < 0)
        return;
    size_t i = (size_t)t->idx;
    timer *last = heap.back();
    heap.pop_back();
    t->idx = -1;
    if (last == t)
        return;
    heap_set(i, last);
    sift_up(i);
    sift_down((size_t)last->idx);
}

void timer_arm_at(timer *t, uint64_t when)
{
    if (t->idx >= 0) {
        /* re-arming later is the common case (an idle timeout pushed back
         * by traffic): adjust in place instead of remove + insert */
        t->expire = when;
        sift_up((size_t)t->idx);
        sift_down((size_t)t->idx);
        return;
    }
    t->expire = when;
    heap.push_back(t);
    sift_up(heap.size() - 1);
}

void timer_arm(timer *t, uint64_t ms_from_now)
{
    timer_arm_at(t, now_ms() + ms_from_now);
}

/* Fire expired timers; returns ms until the next one, or -1 when none. */
static int run_timers(void)
{
    uint64_t now = now_ms();
    while (!heap.empty()) {
        timer *t = heap[0];
        int64_t d = (int64_t)(t->expire - now);
        if (d > 0)
            return d > 3600000 ? 3600000 : (int)d;
        timer_cancel(t);
        t->fn(t->arg);
    }
    return -1;
}

void task_post(task *t)
{
    if (t->queued)
        return;
    t->queued = true;
    t->pass = pass_no;
    t->next = nullptr;
    t->prev = tasks_tail;
    if (tasks_tail)
        tasks_tail->next = t;
    else
        tasks_head = t;
    tasks_tail = t;
}

void task_cancel(task *t)
{
    if (!t->queued)
        return;
    if (t->prev)
        t->prev->next = t->next;
    else
        tasks_head = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        tasks_tail = t->prev;
    t->prev = t->next = nullptr;
    t->queued = false;
}

/* Run the tasks queued so far; tasks they post run in the next pass so a
 * task that keeps re-posting itself cannot starve the poller. A task may
 * cancel another of this batch, so each is taken off the list before it
 * runs. */
static void run_tasks(void)
{
    uint64_t batch = pass_no++;
    while (tasks_head && tasks_head->pass <= batch) {
        task *t = tasks_head;
        task_cancel(t);
        t->fn(t->arg);
    }
}

void defer_delete(deferred *d)
{
    if (d->doomed)
        return;
    d->doomed = true;
    d->dnext = doomed_list;
    doomed_list = d;
}

static void reap(void)
{
    while (doomed_list) {
        deferred *d = doomed_list;
        doomed_list = nullptr;
        while (d) {
            deferred *next = d->dnext;
            delete d;
            d = next;
        }
    }
}

int reactor_init(void)
{
    return backend_init();
}

void reactor_free(void)
{
    reap();
    backend_free();
}

int reactor_add(int fd, io_handler *h)
{
    return backend_add(fd, h);
}

void reactor_del(int fd, io_handler *h)
{
    backend_del(fd, h);
}

int reactor_signals(const int *signos, int n, signal_fn fn, void *arg)
{
    return backend_signals(signos, n, fn, arg);
}

void reactor_stop(void)
{
    stopping = true;
}

int reactor_run(void)
{
    stopping = false;
    clock_cached = true;
    while (!stopping) {
        reactor_woke();   /* the timers run at the time the pass begins */
        int timeout = run_timers();
        reap();   /* what a timer closed goes now, not after the next event */
        if (stopping)
            break;   /* a timer asked to stop: do not wait for the next one */
        if (tasks_head)
            timeout = 0;
        backend_poll(timeout);
        reap();
        run_tasks();
        reap();
    }
    clock_cached = false;
    return 0;
}
