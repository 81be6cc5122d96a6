/*
 * roles.h - the two roles of the daemon (server.cpp, client.cpp).
 */
#ifndef WMPROXY_ROLES_H
#define WMPROXY_ROLES_H

#include <string>
#include "conf.h"

/* Bind every listener and start serving. Returns 0, or -1 with *err
 * ("bind 0.0.0.0:8001: Address already in use"): a start-up failure. */
int server_start(const conf &cf, std::string *err);
/* Apply a new, validated configuration (HUP). Returns 0 or -1 with *err;
 * on failure the old configuration stays in force. */
int server_reload(const conf &cf, std::string *err);
/* Close every listener; with drain, let streams finish (QUIT). */
void server_stop(bool drain);
/* Streams still open, and bytes not yet handed to the kernel (for the
 * QUIT drain: a stream that is done may have its last bytes queued). */
size_t server_streams(void);
size_t server_unsent(void);

int client_start(const conf &cf, std::string *err);
/* The client's TLS context for cf (ca, cert, key, fingerprint, verify), or
 * nullptr with *err; also what -t loads. */
struct tls_ctx *client_tls(const conf &cf, std::string *err);
int client_reload(const conf &cf, std::string *err);
void client_stop(bool drain);
size_t client_streams(void);
size_t client_unsent(void);

#endif
