/*
 * proxy.cpp - the forward proxy session, see proxy.h.
 */
#include "proxy.h"
#include "log.h"
#include "relay.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

proxy_kind proxy_sniff(const uint8_t *p, size_t len)
{
    static const char magic[] = "WMPX", connect[] = "CONNECT ";
    if (len == 0)
        return PK_PARTIAL;
    if (p[0] == 0x05)
        return PK_SOCKS5;
    if (p[0] == 'W' && memcmp(p, magic, len < 4 ? len : 4) == 0)
        return len < 4 ? PK_PARTIAL : PK_TUNNEL;
    if (p[0] == 'C' && memcmp(p, connect, len < 8 ? len : 8) == 0)
        return len < 8 ? PK_PARTIAL : PK_CONNECT;
    /* an HTTP method: upper-case letters then a space */
    for (size_t i = 0; i < len && i < 16; i++) {
        if (p[i] == ' ')
            return i > 0 ? PK_HTTP : PK_UNKNOWN;
        if (p[i] < 'A' || p[i] > 'Z')
            return PK_UNKNOWN;
    }
    return len < 16 ? PK_PARTIAL : PK_UNKNOWN;
}

void proxy_serve_stream(stream *s, const std::string &peer, const proxy_conf &pc)
{
    int sp[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0) {
        log_warn("proxy for %s: socketpair: %s", peer.c_str(), strerror(errno));
        stream_reset(s, RST_RESET);
        return;
    }
    relay *r = relay_new(sp[0], s, peer);
    if (!r) {
        close(sp[1]);
        return;
    }
    r->what = pc.where;
    proxy_serve(plain_transport_new(sp[1]), peer, nullptr, 0, pc);
}

static size_t sessions;

void proxy_serve(transport *tr, const std::string &peer, const uint8_t *, size_t, const proxy_conf &pc)
{
    /* not implemented yet */
    log_info("proxy request from %s on %s: the forward proxy is not implemented yet", peer.c_str(),
             pc.where.c_str());
    delete tr;
    (void)sessions;
}

size_t proxy_sessions(void)
{
    return sessions;
}
