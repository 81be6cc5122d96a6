/*
 * proxy.h - the forward proxy: HTTP proxy (absolute-form requests),
 * HTTPS CONNECT and SOCKS5 (RFC 1928/1929), served on one connection whose
 * protocol is recognised from its first bytes.
 *
 * The same session serves three places:
 *  - users on the server's bind_addr (after TLS when tc), told apart from
 *    tunnel clients by their first bytes;
 *  - a client's bind_addr: the client opens a stream, the server serves it;
 *  - a proxy mapping: the server's map_proxy_bind opens a stream, the
 *    client serves it inside its private network.
 * For the two stream cases the session runs on one end of a socketpair
 * whose other end is a relay joined to the stream (proxy_serve_stream).
 */
#ifndef WMPROXY_PROXY_H
#define WMPROXY_PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <string>
#include "mux.h"
#include "transport.h"

struct proxy_conf {
    unsigned flag = 0;              /* FLAG_HTTP | FLAG_HTTPS | FLAG_SOCKS5 */
    std::string username, password; /* empty username: no authentication */
    uint32_t connect_timeout_ms = 10000;
    uint32_t handshake_timeout_ms = 10000; /* until the proxy request is complete */
    uint64_t first_deadline = 0;    /* the first request's, when a sniffer started
                                       the clock already (now_ms() time); 0: none */
    std::string where;              /* for log lines: "bind_addr", "mapping NAME" */
};

enum proxy_kind { PK_PARTIAL = 0, PK_TUNNEL, PK_SOCKS5, PK_CONNECT, PK_HTTP, PK_UNKNOWN };

/* What the first bytes of a connection are. PK_PARTIAL: need more bytes
 * (at most 8 are ever needed). */
proxy_kind proxy_sniff(const uint8_t *p, size_t len);

/* Serve one proxy user on tr (owned from now on). initial/len: bytes
 * already read from tr by the sniffer, to be parsed first. peer: the user's
 * address, for logs. The session closes itself when done. */
void proxy_serve(transport *tr, const std::string &peer, const uint8_t *initial, size_t len,
                 const proxy_conf &pc);

/* Serve a proxy user whose bytes arrive on stream s (see above). */
void proxy_serve_stream(stream *s, const std::string &peer, const proxy_conf &pc);

/* Sessions alive (for the drain on QUIT). */
size_t proxy_sessions(void);

/* Stop: close every session now; or, with drain, close the idle ones (and
 * those only lingering) and let the others end their current exchange, an
 * HTTP user being closed after its response. */
void proxy_stop(bool drain);

/* Does a Proxy-Authorization value (v[0..n)) carry "Basic base64(user:pass)"
 * with these credentials? The scheme is case-insensitive; the decoded text
 * is split at its first ':' (passwords may hold ':'); both parts are
 * compared in constant time (cred_equal). Exposed for the tests. */
bool proxy_auth_basic(const char *v, size_t n, const std::string &user, const std::string &pass);

#endif
