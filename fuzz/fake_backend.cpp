/*
 * fake_backend.cpp - a reactor backend for the fuzzers: no descriptors,
 * no waiting. backend_poll() returns at once and stops the loop, so
 * reactor_run() runs exactly one pass (timers, poll, tasks, reaping) and
 * the harness drives readiness itself by calling on_io().
 */
#include "reactor-backend.h"
#include "fake_backend.h"
#include "sock.h"

int fake_backend_fail_add;  /* next backend_add() calls that fail */
int fake_backend_handlers;  /* registered, for leak checks */
uint64_t fake_send_rate;    /* what sock_send_rate() says, bytes a second */

/* The tunnel's TCP, as mux.cpp asks it (sock.cpp needs the whole daemon). */
uint64_t sock_send_rate(int, uint64_t *window)
{
    *window = fake_send_rate / 10;
    return fake_send_rate;
}
void sock_notsent_lowat(int, int) {}
void sock_close_lingering(int, uint32_t) {}    /* the fake transports' fds are not open */

int backend_init(void) { return 0; }
void backend_free(void) {}

int backend_add(int, io_handler *)
{
    if (fake_backend_fail_add > 0) {
        fake_backend_fail_add--;
        return -1;
    }
    fake_backend_handlers++;
    return 0;
}

void backend_del(int, io_handler *)
{
    fake_backend_handlers--;
}

int backend_poll(int)
{
    reactor_stop();
    return 0;
}

int backend_signals(const int *, int, signal_fn, void *) { return 0; }

/* One pass of the loop without blocking. */
void fake_reactor_pass(void)
{
    reactor_run();
}
