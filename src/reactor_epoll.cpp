/*
 * reactor_epoll.cpp - Linux backend: epoll, edge-triggered, and signalfd.
 *
 * Every descriptor is added once with EPOLLIN|EPOLLOUT|EPOLLRDHUP|EPOLLET,
 * so there is no epoll_ctl(MOD) on the hot path: a handler is told when a
 * direction becomes ready and keeps that state itself (see reactor.h).
 *
 * Stale events: a handler that closes during dispatch marks itself and is
 * deleted only after the whole batch (defer_delete), and reactor_del()
 * clears the pointer from the events not yet dispatched in this batch, so
 * an event never reaches freed or reused memory.
 */
#ifdef __linux__
#include "reactor-backend.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#define MAX_EVENTS 256

static int epfd = -1;
static epoll_event events[MAX_EVENTS];
static int nevents, cur;

int backend_init(void)
{
    epfd = epoll_create1(EPOLL_CLOEXEC);
    return epfd < 0 ? -1 : 0;
}

void backend_free(void)
{
    if (epfd >= 0)
        close(epfd);
    epfd = -1;
}

int backend_add(int fd, io_handler *h)
{
    epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = h;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
}

void backend_del(int fd, io_handler *h)
{
    epoll_event ev = {};
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, &ev);
    /* the handler may be freed and its memory reused by a new connection
     * in this very batch: drop what is left of its events */
    for (int i = cur + 1; i < nevents; i++)
        if (events[i].data.ptr == h)
            events[i].data.ptr = nullptr;
}

int backend_poll(int timeout)
{
    nevents = epoll_wait(epfd, events, MAX_EVENTS, timeout);
    reactor_woke();
    if (nevents < 0)
        return errno == EINTR ? 0 : -1;
    for (cur = 0; cur < nevents; cur++) {
        io_handler *h = (io_handler *)events[cur].data.ptr;
        if (!h)
            continue;
        uint32_t e = events[cur].events;
        unsigned ev = 0;
        if (e & (EPOLLIN | EPOLLRDHUP))
            ev |= EV_READ;
        if (e & EPOLLOUT)
            ev |= EV_WRITE;
        if (e & EPOLLRDHUP)
            ev |= EV_RDHUP;
        if (e & EPOLLHUP)
            ev |= EV_HUP | EV_READ | EV_WRITE;
        if (e & EPOLLERR)
            ev |= EV_ERR | EV_READ | EV_WRITE;
        h->on_io(ev);
    }
    int n = nevents;
    nevents = cur = 0;
    return n;
}

struct sig_handler : io_handler {
    int fd = -1;
    signal_fn fn = nullptr;
    void *arg = nullptr;
    void on_io(unsigned) override
    {
        signalfd_siginfo si;
        while (read(fd, &si, sizeof si) == (ssize_t)sizeof si)
            fn((int)si.ssi_signo, arg);
    }
};

static sig_handler sigh;

int backend_signals(const int *signos, int n, signal_fn fn, void *arg)
{
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++)
        sigaddset(&set, signos[i]);
    if (sigprocmask(SIG_BLOCK, &set, nullptr) < 0)
        return -1;
    int fd = signalfd(sigh.fd, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0)
        return -1;
    bool fresh = sigh.fd < 0;
    sigh.fd = fd;
    sigh.fn = fn;
    sigh.arg = arg;
    return fresh ? backend_add(fd, &sigh) : 0;
}
#endif
