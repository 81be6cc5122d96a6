/*
 * reactor_kqueue.cpp - BSD/macOS backend: kqueue with EV_CLEAR (edge
 * semantics, as the epoll backend) and EVFILT_SIGNAL for signals.
 * Compiled on those systems only; not exercised by the Linux test suite.
 */
#if defined(__APPLE__) || defined(__FreeBSD__) || defined(__OpenBSD__) || defined(__NetBSD__) || defined(__DragonFly__)
#include "reactor-backend.h"

#include <errno.h>
#include <signal.h>
#include <sys/event.h>
#include <sys/time.h>
#include <unistd.h>

#define MAX_EVENTS 256

static int kq = -1;
static struct kevent events[MAX_EVENTS];
static int nevents, cur;
static signal_fn sig_fn;
static void *sig_arg;
static io_handler *const SIGNAL_MARK = (io_handler *)1;

int backend_init(void)
{
    kq = kqueue();
    return kq < 0 ? -1 : 0;
}

void backend_free(void)
{
    if (kq >= 0)
        close(kq);
    kq = -1;
}

int backend_add(int fd, io_handler *h)
{
    struct kevent ch[2];
    EV_SET(&ch[0], fd, EVFILT_READ, EV_ADD | EV_CLEAR, 0, 0, h);
    EV_SET(&ch[1], fd, EVFILT_WRITE, EV_ADD | EV_CLEAR, 0, 0, h);
    return kevent(kq, ch, 2, nullptr, 0, nullptr);
}

void backend_del(int fd, io_handler *h)
{
    struct kevent ch[2];
    EV_SET(&ch[0], fd, EVFILT_READ, EV_DELETE, 0, 0, nullptr);
    EV_SET(&ch[1], fd, EVFILT_WRITE, EV_DELETE, 0, 0, nullptr);
    kevent(kq, ch, 2, nullptr, 0, nullptr);
    for (int i = cur + 1; i < nevents; i++)
        if (events[i].udata == h)
            events[i].udata = nullptr;
}

int backend_poll(int timeout)
{
    struct timespec ts, *tp = nullptr;
    if (timeout >= 0) {
        ts.tv_sec = timeout / 1000;
        ts.tv_nsec = (long)(timeout % 1000) * 1000000;
        tp = &ts;
    }
    nevents = kevent(kq, nullptr, 0, events, MAX_EVENTS, tp);
    reactor_woke();
    if (nevents < 0)
        return errno == EINTR ? 0 : -1;
    for (cur = 0; cur < nevents; cur++) {
        struct kevent *e = &events[cur];
        if (!e->udata)
            continue;
        if (e->filter == EVFILT_SIGNAL) {
            sig_fn((int)e->ident, sig_arg);
            continue;
        }
        unsigned ev = e->filter == EVFILT_READ ? EV_READ : EV_WRITE;
        if (e->flags & EV_EOF)
            ev |= EV_RDHUP | EV_READ;
        if (e->flags & EV_ERROR)
            ev |= EV_ERR | EV_READ | EV_WRITE;
        ((io_handler *)e->udata)->on_io(ev);
    }
    int n = nevents;
    nevents = cur = 0;
    return n;
}

int backend_signals(const int *signos, int n, signal_fn fn, void *arg)
{
    sig_fn = fn;
    sig_arg = arg;
    for (int i = 0; i < n; i++) {
        struct kevent ch;
        signal(signos[i], SIG_IGN);   /* kqueue still reports ignored signals */
        EV_SET(&ch, signos[i], EVFILT_SIGNAL, EV_ADD, 0, 0, SIGNAL_MARK);
        if (kevent(kq, &ch, 1, nullptr, 0, nullptr) < 0)
            return -1;
    }
    return 0;
}
#endif
