/*
 * tls.h - OpenSSL driven as a state machine over memory BIOs.
 *
 * OpenSSL never sees a socket. tls_conn is the engine: ciphertext in
 * (tls_feed), ciphertext out (tls_drain), plaintext read/write, all without
 * blocking and without I/O of its own, so it can be tested through memory.
 * tls_transport_new() wraps an engine and a socket as a transport (see
 * transport.h) so the mux above cannot tell TLS from plain TCP.
 */
#ifndef WMPROXY_TLS_H
#define WMPROXY_TLS_H

#include <string>
#include <utility>
#include <vector>
#include "transport.h"

struct tls_ctx;      /* an SSL_CTX with our settings */
struct tls_conn;     /* one connection's engine */

struct tls_server_opts {
    /* PEM chain and key pairs; the first is the default, the others are
     * picked by SNI against their names. Empty: generate a self-signed EC
     * certificate in memory (never written to disk). */
    std::vector<std::pair<std::string, std::string>> certs;
    std::string client_ca;      /* non-empty: client certificates required */
    const char *alpn = nullptr; /* e.g. "http/1.1", or none */
    std::string self_signed_cn = "wmproxyd";
    /* Empty certs and this set: the certificate and key generated for this
     * context instead of new ones (a reload keeps clients' pins valid). */
    const tls_ctx *keep_generated = nullptr;
};

struct tls_client_opts {
    std::string ca;             /* PEM bundle; empty = system store */
    std::string cert, key;      /* client certificate for mutual TLS */
    std::string fingerprint;    /* 32 raw bytes: pin, then only it is checked */
    bool verify = true;
};

/* Returns a context, or nullptr with *err set ("cert /x.pem: no such file"). */
tls_ctx *tls_server_ctx_new(const tls_server_opts &o, std::string *err);
tls_ctx *tls_client_ctx_new(const tls_client_opts &o, std::string *err);
/* Let go of the owner's reference: the context goes once no connection made
 * from it is left (a reload retires a context while its sessions go on). */
void tls_ctx_free(tls_ctx *c);
/* "AB:CD:..." SHA-256 of the default certificate (server contexts). */
std::string tls_ctx_fingerprint(const tls_ctx *c);

/* A transport speaking TLS over fd (owned, closed on delete). server_name:
 * for a client, the SNI sent and the name verified; ignored for a server.
 * nullptr when out of memory (fd is then still the caller's).
 * For an edge-triggered loop: readv and handshake read until EAGAIN or
 * progress; after any call, buffered() > 0 means ciphertext (handshake,
 * alerts, key updates) waits for writability and flush(); pending() after
 * handshake() == 1 or a full readv means read again without an event.
 * writev before the handshake is done drives it (IO_AGAIN until then). */
transport *tls_transport_new(tls_ctx *c, int fd, bool is_server, const char *server_name);

/* SNI the client asked for (server side), or "". Takes only transports
 * made by tls_transport_new(). */
std::string tls_transport_sni(transport *t);

/* ---- the engine itself, memory only (used by the transport and tests) ---- */
tls_conn *tls_conn_new(tls_ctx *c, bool is_server, const char *server_name);
void tls_conn_free(tls_conn *t);
/* Give it ciphertext received from the peer. Returns bytes taken (all). */
size_t tls_feed(tls_conn *t, const void *buf, size_t len);
/* Ciphertext waiting to be sent to the peer. */
size_t tls_pending_out(const tls_conn *t);
/* Take up to len bytes of it. Returns bytes copied. */
size_t tls_drain(tls_conn *t, void *buf, size_t len);
/* 1 established, IO_AGAIN (needs more input / has output), IO_ERR. */
int tls_handshake(tls_conn *t);
/* Plaintext: bytes, 0 at close_notify, IO_AGAIN (need input), IO_ERR. */
ssize_t tls_read(tls_conn *t, void *buf, size_t len);
/* Encrypt: bytes taken, IO_AGAIN, IO_ERR. */
ssize_t tls_write(tls_conn *t, const void *buf, size_t len);
/* TLS 1.3: queue a KeyUpdate (new sending keys; ask_peer: the peer is to
 * change its keys too). 0, or IO_ERR (before the handshake, TLS 1.2).
 * tls_write does it by itself every 2^24 records (RFC 8446 5.5); tests
 * lower that with tls_ctx_set_rekey() and count with tls_key_updates(). */
int tls_key_update(tls_conn *t, bool ask_peer);
unsigned tls_key_updates(const tls_conn *t);
void tls_ctx_set_rekey(tls_ctx *c, uint64_t records);
/* Queue close_notify (nothing before the handshake ends). 0, IO_ERR. */
int tls_close_notify(tls_conn *t);
/* tls_read may give bytes without more input (true may mean a partial
 * record: tls_read then says IO_AGAIN). */
bool tls_has_pending_plain(const tls_conn *t);
/* The reason for the last IO_ERR, in words an operator understands:
 * "peer is not speaking TLS", "certificate verify failed: unknown CA",
 * "certificate fingerprint mismatch (got AB:CD..)", "peer sent no
 * certificate", "certificate has expired", "alert from peer: unknown ca" */
const char *tls_error(const tls_conn *t);

#endif
