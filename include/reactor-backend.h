/*
 * reactor-backend.h - what reactor.cpp needs from an OS backend
 * (reactor_epoll.cpp on Linux, reactor_kqueue.cpp on the BSDs and macOS).
 */
#ifndef WMPROXY_REACTOR_BACKEND_H
#define WMPROXY_REACTOR_BACKEND_H

#include "reactor.h"

int backend_init(void);
void backend_free(void);
int backend_add(int fd, io_handler *h);
void backend_del(int fd, io_handler *h);
/* Wait up to timeout ms (-1 forever) and dispatch; returns events seen or -1.
 * It calls reactor_woke() as soon as the wait returns, before dispatching. */
int backend_poll(int timeout);
/* The wait is over: now_ms() reads the clock again (the wait may have been
 * long, and the handlers arm timers from now_ms()). */
void reactor_woke(void);
int backend_signals(const int *signos, int n, signal_fn fn, void *arg);

#endif
