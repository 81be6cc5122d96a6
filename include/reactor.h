/*
 * reactor.h - the event loop: readiness of file descriptors, timers,
 * signals, deferred work and deferred deletion.
 *
 * Backends: epoll (Linux, reactor_epoll.cpp) and kqueue (BSD/macOS,
 * reactor_kqueue.cpp) behind the same interface.
 *
 * Readiness is EDGE-TRIGGERED: a descriptor is registered once for both
 * reading and writing and a handler hears only of changes. A handler keeps
 * its own "can read"/"can write" flags and clears them only on EAGAIN or a
 * short transfer (as nginx does); when it stops early for its own reasons
 * (backpressure, fairness) it keeps the flag and resumes through a task.
 */
#ifndef WMPROXY_REACTOR_H
#define WMPROXY_REACTOR_H

#include <stdint.h>
#include <vector>

/* EV_RDHUP: the peer closed its write side; keep reading to the EOF even
 * after a short read, no further edge will come. */
enum { EV_READ = 1, EV_WRITE = 2, EV_HUP = 4, EV_ERR = 8, EV_RDHUP = 16 };

struct io_handler {
    virtual void on_io(unsigned events) = 0;
protected:
    ~io_handler() {}
};

/* A one-shot timer on the monotonic millisecond clock. */
struct timer {
    void (*fn)(void *arg) = nullptr;
    void *arg = nullptr;
    uint64_t expire = 0;
    int idx = -1;               /* position in the heap, -1 when not armed */
    bool armed() const { return idx >= 0; }
};

/* Work to run once at the end of this loop pass (flushes, resumed reads). */
struct task {
    void (*fn)(void *arg) = nullptr;
    void *arg = nullptr;
    task *prev = nullptr, *next = nullptr;
    bool queued = false;
    uint64_t pass = 0;          /* the loop pass it was posted in */
};

/* Objects deleted after the current dispatch, never inside their callback. */
struct deferred {
    virtual ~deferred() {}
    deferred *dnext = nullptr;
    bool doomed = false;
};

/* Monotonic milliseconds; within a loop pass, the time the pass began. */
uint64_t now_ms(void);

struct reactor;
typedef void (*signal_fn)(int signo, void *arg);

/* Returns 0 or -1 with errno set. */
int reactor_init(void);
void reactor_free(void);
/* Register fd for edge-triggered read and write readiness. Returns 0 or -1. */
int reactor_add(int fd, io_handler *h);
/* Remove fd; events for h not yet dispatched in this pass are dropped.
 * Call before close(). */
void reactor_del(int fd, io_handler *h);

void timer_arm(timer *t, uint64_t ms_from_now);
void timer_arm_at(timer *t, uint64_t when);
void timer_cancel(timer *t);

void task_post(task *t);
/* Unqueue t; an owner being deleted must cancel its tasks. */
void task_cancel(task *t);
void defer_delete(deferred *d);

/* Deliver these signals into the loop (signalfd or EVFILT_SIGNAL). */
int reactor_signals(const int *signos, int n, signal_fn fn, void *arg);

/* Run until reactor_stop(). Returns 0. */
int reactor_run(void);
void reactor_stop(void);

#endif
