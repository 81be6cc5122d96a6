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
/* Wait up to timeout ms (-1 forever) and dispatch; returns events seen or -1. */
int backend_poll(int timeout);
int backend_signals(const int *signos, int n, signal_fn fn, void *arg);

#endif
