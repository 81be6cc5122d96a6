/* fake_backend.h - see fake_backend.cpp. */
#ifndef WMPROXY_FUZZ_FAKE_BACKEND_H
#define WMPROXY_FUZZ_FAKE_BACKEND_H

extern int fake_backend_fail_add;
extern int fake_backend_handlers;
extern uint64_t fake_send_rate;
void fake_reactor_pass(void);

#endif
