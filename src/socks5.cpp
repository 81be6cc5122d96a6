/*
 * socks5.cpp - SOCKS5 codec, see socks5.h.
 */
#include "socks5.h"

#include <errno.h>
#include <netinet/in.h>
#include <string.h>

int socks5_parse_greeting(const uint8_t *buf, size_t len, socks5_span *methods)
{
    if (len < 1)
        return S5_PARTIAL;
    if (buf[0] != SOCKS5_VER)
        return S5_INVALID;
    if (len < 2)
        return S5_PARTIAL;
    size_t n = buf[1];
    if (n == 0)
        return S5_INVALID;
    if (len < 2 + n)
        return S5_PARTIAL;
    methods->p = buf + 2;
    methods->n = n;
    return (int)(2 + n);
}

uint8_t socks5_choose_method(const socks5_span *methods, bool need_auth)
{
    bool none = false, userpass = false;
    for (size_t i = 0; i < methods->n; i++) {
        none |= methods->p[i] == S5_METHOD_NONE;
        userpass |= methods->p[i] == S5_METHOD_USERPASS;
    }
    if (!need_auth && none)
        return S5_METHOD_NONE;
    return userpass ? S5_METHOD_USERPASS : S5_METHOD_NOACCEPT;
}

int socks5_parse_userpass(const uint8_t *buf, size_t len, socks5_span *user, socks5_span *pass)
{
    if (len < 1)
        return S5_PARTIAL;
    if (buf[0] != SOCKS5_AUTH_VER)
        return S5_INVALID;
    if (len < 2)
        return S5_PARTIAL;
    size_t ulen = buf[1];
    if (ulen == 0)
        return S5_INVALID;
    if (len < 3 + ulen)
        return S5_PARTIAL;
    size_t plen = buf[2 + ulen];
    if (plen == 0)
        return S5_INVALID;
    if (len < 3 + ulen + plen)
        return S5_PARTIAL;
    user->p = buf + 2;
    user->n = ulen;
    pass->p = buf + 3 + ulen;
    pass->n = plen;
    return (int)(3 + ulen + plen);
}

/* ATYP ADDR PORT at p: bytes used, S5_PARTIAL, S5_INVALID or S5_BADATYP. */
static int parse_addr(const uint8_t *p, size_t len, socks5_addr *a)
{
    if (len < 1)
        return S5_PARTIAL;
    size_t alen, off = 1;
    switch (p[0]) {
    case S5_ATYP_IPV4: alen = 4; break;
    case S5_ATYP_IPV6: alen = 16; break;
    case S5_ATYP_DOMAIN:
        if (len < 2)
            return S5_PARTIAL;
        alen = p[1];
        off = 2;
        if (alen == 0)
            return S5_INVALID;
        /* a NUL would cut the name short for the resolver: refuse it as soon
         * as it arrives rather than when the message completes */
        if (memchr(p + 2, 0, (len - 2 < alen ? len - 2 : alen)))
            return S5_INVALID;
        break;
    default:
        return S5_BADATYP;
    }
    if (len < off + alen + 2)
        return S5_PARTIAL;
    a->atyp = p[0];
    a->len = (uint8_t)alen;
    if (p[0] == S5_ATYP_DOMAIN) {
        memcpy(a->host, p + off, alen);
        a->host[alen] = 0;
    } else {
        memcpy(a->ip, p + off, alen);
        a->host[0] = 0;
    }
    a->port = (uint16_t)(p[off + alen] << 8 | p[off + alen + 1]);
    return (int)(off + alen + 2);
}

int socks5_parse_request(const uint8_t *buf, size_t len, socks5_req *req)
{
    if (len < 1)
        return S5_PARTIAL;
    if (buf[0] != SOCKS5_VER)
        return S5_INVALID;
    if (len < 2)
        return S5_PARTIAL;
    if (buf[1] < S5_CMD_CONNECT || buf[1] > S5_CMD_UDP)
        return S5_BADCMD;
    if (len < 3)
        return S5_PARTIAL;
    if (buf[2] != 0)
        return S5_INVALID;
    int n = parse_addr(buf + 3, len - 3, &req->dst);
    if (n < 0)
        return n;
    req->cmd = buf[1];
    return 3 + n;
}

int socks5_udp_parse(const uint8_t *buf, size_t len, socks5_udp_hdr *hdr)
{
    if (len < 3 || buf[0] != 0 || buf[1] != 0)
        return S5_INVALID;
    if (buf[2] != 0)
        return S5_FRAG;
    int n = parse_addr(buf + 3, len - 3, &hdr->addr);
    if (n < 0)
        return S5_INVALID;
    hdr->frag = 0;
    return 3 + n;
}

/* ATYP ADDR PORT into out; returns its length. */
static size_t put_addr(uint8_t *out, const socks5_addr *a)
{
    size_t n;
    out[0] = a->atyp;
    switch (a->atyp) {
    case S5_ATYP_IPV6: memcpy(out + 1, a->ip, 16); n = 17; break;
    case S5_ATYP_DOMAIN:
        out[1] = a->len;
        memcpy(out + 2, a->host, a->len);
        n = 2 + a->len;
        break;
    default:
        out[0] = S5_ATYP_IPV4;
        memcpy(out + 1, a->ip, 4);
        n = 5;
    }
    out[n] = (uint8_t)(a->port >> 8);
    out[n + 1] = (uint8_t)a->port;
    return n + 2;
}

size_t socks5_udp_encode(const socks5_udp_hdr *hdr, uint8_t *out)
{
    out[0] = out[1] = 0;
    out[2] = hdr->frag;
    return 3 + put_addr(out + 3, &hdr->addr);
}

size_t socks5_method_reply(uint8_t out[2], uint8_t method)
{
    out[0] = SOCKS5_VER;
    out[1] = method;
    return 2;
}

size_t socks5_userpass_reply(uint8_t out[2], bool ok)
{
    out[0] = SOCKS5_AUTH_VER;
    out[1] = ok ? 0 : 1;
    return 2;
}

size_t socks5_reply(uint8_t *out, socks5_rep rep, const sockaddr *bound)
{
    socks5_addr a;
    if (!bound || socks5_addr_from_sockaddr(bound, &a) < 0) {
        memset(&a, 0, sizeof a);
        a.atyp = S5_ATYP_IPV4;
    }
    out[0] = SOCKS5_VER;
    out[1] = (uint8_t)rep;
    out[2] = 0;
    return 3 + put_addr(out + 3, &a);
}

int socks5_addr_from_sockaddr(const sockaddr *sa, socks5_addr *a)
{
    a->host[0] = 0;
    if (sa->sa_family == AF_INET) {
        const sockaddr_in *s4 = (const sockaddr_in *)sa;
        a->atyp = S5_ATYP_IPV4;
        a->len = 4;
        memcpy(a->ip, &s4->sin_addr, 4);
        a->port = ntohs(s4->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const sockaddr_in6 *s6 = (const sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            a->atyp = S5_ATYP_IPV4;
            a->len = 4;
            memcpy(a->ip, s6->sin6_addr.s6_addr + 12, 4);
        } else {
            a->atyp = S5_ATYP_IPV6;
            a->len = 16;
            memcpy(a->ip, &s6->sin6_addr, 16);
        }
        a->port = ntohs(s6->sin6_port);
        return 0;
    }
    return -1;
}

int socks5_addr_to_sockaddr(const socks5_addr *a, sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (a->atyp == S5_ATYP_IPV4) {
        sockaddr_in *s4 = (sockaddr_in *)ss;
        s4->sin_family = AF_INET;
        memcpy(&s4->sin_addr, a->ip, 4);
        s4->sin_port = htons(a->port);
        *len = sizeof *s4;
        return 0;
    }
    if (a->atyp == S5_ATYP_IPV6) {
        sockaddr_in6 *s6 = (sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        memcpy(&s6->sin6_addr, a->ip, 16);
        s6->sin6_port = htons(a->port);
        *len = sizeof *s6;
        return 0;
    }
    return -1;
}

socks5_rep socks5_rep_from_errno(int err)
{
    switch (err) {
    case ECONNREFUSED: return S5_REP_REFUSED;
    case ENETUNREACH:
    case ENETDOWN: return S5_REP_NET_UNREACHABLE;
    case EHOSTUNREACH:
    case EHOSTDOWN: return S5_REP_HOST_UNREACHABLE;
    case ETIMEDOUT: return S5_REP_TTL_EXPIRED;
    case EACCES:
    case EPERM: return S5_REP_NOT_ALLOWED;
    case EAFNOSUPPORT: return S5_REP_ATYP_UNSUPPORTED;
    default: return S5_REP_FAILURE;
    }
}

int cred_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    const uint8_t *x = (const uint8_t *)a, *y = (const uint8_t *)b;
    /* fold every difference in, never stop early; the loop runs blen times
     * whatever the input, and the length check joins the same accumulator */
    size_t d = alen ^ blen;
    for (size_t i = 0; i < blen; i++)
        d |= (size_t)((i < alen ? x[i] : 0) ^ y[i]);
    return d == 0;
}
