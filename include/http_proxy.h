/*
 * http_proxy.h - the server's HTTP reverse proxy for http and https
 * mappings: public connections on map_http_bind / map_https_bind, every
 * request routed by its Host to the client whose mapping serves that name,
 * over a stream of that client's tunnel. The client side only relays the
 * stream to local_addr; all HTTP work (routing, rewriting, framing, error
 * answers) happens here.
 */
#ifndef WMPROXY_HTTP_PROXY_H
#define WMPROXY_HTTP_PROXY_H

#include <stdint.h>
#include <string>
#include "frame.h"
#include "mux.h"
#include "transport.h"

struct http_proxy_conf {
    uint32_t keepalive_timeout_ms = 75000;  /* idle between requests */
    uint32_t header_timeout_ms = 30000;     /* a head not complete by then: 408 */
};

/* Add the domains of mapping idx (register_msg.domains, comma-separated;
 * "*.example.com" wildcards) to the routes of http (https = false) or
 * https. Returns 0, or -1 with *why when a name is held by another client
 * (nothing is added then). */
int http_routes_add(bool https, tunnel *t, uint32_t idx, const register_msg &m, std::string *why);
/* Forget every route of tunnel t (it is down). */
void http_routes_remove(tunnel *t);

/* Serve one public connection (plain, or TLS for https). Owns tr. */
void http_serve(transport *tr, const std::string &peer, bool https, const http_proxy_conf &hc);
size_t http_sessions(void);
/* Server stopping: close every session (drain = false), or (QUIT) close the
 * idle ones and let the others finish the request in flight, answered with
 * Connection: close. */
void http_stop(bool drain);

#endif
