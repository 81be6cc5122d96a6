/*
 * proxyproto.cpp - PROXY protocol v1/v2 encoder and decoder, see proxyproto.h.
 */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};

/* Reduce the address pair to family 4, 6 or 0; *s and *d point at the
 * bytes to write. */
static int normalise(int family, const uint8_t **s, const uint8_t **d)
{
    if (family == 6 && !memcmp(*s, v4mapped, 12) && !memcmp(*d, v4mapped, 12)) {
        *s += 12;
        *d += 12;
        return 4;
    }
    return family == 4 || family == 6 ? family : 0;
}

size_t proxyproto_v1(int family, const uint8_t *src, const uint8_t *dst, uint16_t sport,
                     uint16_t dport, std::string *out)
{
    family = normalise(family, &src, &dst);
    if (family == 0) {
        out->append("PROXY UNKNOWN\r\n");
        return 15;
    }
    int af = family == 4 ? AF_INET : AF_INET6;
    char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN], line[128];  /* 104 used at most */
    inet_ntop(af, src, s, sizeof s);
    inet_ntop(af, dst, d, sizeof d);
    int n = snprintf(line, sizeof line, "PROXY TCP%d %s %s %u %u\r\n", family, s, d,
                     (unsigned)sport, (unsigned)dport);
    out->append(line, (size_t)n);
    return (size_t)n;
}

size_t proxyproto_v2(int family, const uint8_t *src, const uint8_t *dst, uint16_t sport,
                     uint16_t dport, std::string *out)
{
    family = normalise(family, &src, &dst);
    uint8_t h[PP_V2_HDR + 36];
    size_t alen = family == 4 ? 4 : family == 6 ? 16 : 0;
    size_t body = alen ? 2 * alen + 4 : 0;
    memcpy(h, PP_V2_SIG, PP_V2_SIG_LEN);
    h[12] = alen ? 0x21 : 0x20;
    h[13] = family == 4 ? 0x11 : family == 6 ? 0x21 : 0x00;
    h[14] = 0;
    h[15] = (uint8_t)body;
    if (alen) {
        uint8_t *p = h + PP_V2_HDR;
        memcpy(p, src, alen);
        memcpy(p + alen, dst, alen);
        p += 2 * alen;
        p[0] = (uint8_t)(sport >> 8);
        p[1] = (uint8_t)sport;
        p[2] = (uint8_t)(dport >> 8);
        p[3] = (uint8_t)dport;
    }
    out->append((const char *)h, PP_V2_HDR + body);
    return PP_V2_HDR + body;
}

/* One space-terminated token of the v1 line from *p, at most cap-1 bytes,
 * copied NUL-terminated into tok. */
static bool token(const char **p, const char *end, char *tok, size_t cap)
{
    size_t n = 0;
    while (*p < end && **p != ' ') {
        if (n + 1 >= cap)
            return false;
        tok[n++] = *(*p)++;
    }
    tok[n] = 0;
    if (*p < end)
        (*p)++;                         /* the space */
    return n > 0;
}

/* Decimal 0..65535; the specification forbids leading zeros. */
static bool port(const char *t, uint16_t *v)
{
    size_t n = strlen(t);
    if (n == 0 || n > 5 || (t[0] == '0' && n > 1))
        return false;
    unsigned x = 0;
    for (size_t i = 0; i < n; i++) {
        if (t[i] < '0' || t[i] > '9')
            return false;
        x = x * 10 + (unsigned)(t[i] - '0');
    }
    if (x > 65535)
        return false;
    *v = (uint16_t)x;
    return true;
}

static int parse_v1(const uint8_t *buf, size_t len, proxyproto_hdr *h)
{
    size_t lim = len < PP_V1_MAX ? len : PP_V1_MAX, eol = 0;
    for (size_t i = 6; i < lim; i++) {
        if (buf[i] == '\r') {
            if (i + 1 >= PP_V1_MAX)
                return -1;              /* its LF would be byte 108 */
            if (i + 1 == len)
                return -2;
            if (buf[i + 1] != '\n')
                return -1;
            eol = i;
            break;
        }
        if (buf[i] == '\n' || buf[i] == 0)
            return -1;
    }
    if (!eol)
        return len < PP_V1_MAX ? -2 : -1;

    const char *p = (const char *)buf + 6, *end = (const char *)buf + eol;
    char proto[8], s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN], sp[8], dp[8];
    memset(h, 0, sizeof *h);
    h->version = 1;
    if (!token(&p, end, proto, sizeof proto))
        return -1;
    if (!strcmp(proto, "UNKNOWN"))
        return (int)eol + 2;            /* the rest of the line is ignored */
    int af;
    if (!strcmp(proto, "TCP4"))
        af = AF_INET, h->family = 4;
    else if (!strcmp(proto, "TCP6"))
        af = AF_INET6, h->family = 6;
    else
        return -1;
    if (!token(&p, end, s, sizeof s) || !token(&p, end, d, sizeof d) ||
        !token(&p, end, sp, sizeof sp) || !token(&p, end, dp, sizeof dp) || p != end ||
        end[-1] == ' ')
        return -1;
    if (inet_pton(af, s, h->src) != 1 || inet_pton(af, d, h->dst) != 1 ||
        !port(sp, &h->sport) || !port(dp, &h->dport))
        return -1;
    return (int)eol + 2;
}

static int parse_v2(const uint8_t *buf, size_t len, proxyproto_hdr *h)
{
    if (len < 13)
        return -2;
    uint8_t ver = buf[12] >> 4, cmd = buf[12] & 0x0f;
    if (ver != 2 || cmd > 1)
        return -1;
    if (len < 14)
        return -2;
    /* LOCAL: the receiver ignores the family and whatever follows it */
    uint8_t fam = buf[13] >> 4, proto = buf[13] & 0x0f;
    if (cmd == 1 && (fam > 3 || proto > 2 || (fam == 0) != (proto == 0)))
        return -1;
    if (len < PP_V2_HDR)
        return -2;
    size_t body = (size_t)buf[14] << 8 | buf[15];
    static const size_t need[4] = {0, 12, 36, 216};
    if (cmd == 1 && body < need[fam])
        return -1;
    if (len < PP_V2_HDR + body)
        return -2;
    memset(h, 0, sizeof *h);
    h->version = 2;
    h->local = cmd == 0;
    if (cmd == 1 && (fam == 1 || fam == 2)) {
        size_t alen = fam == 1 ? 4 : 16;
        const uint8_t *p = buf + PP_V2_HDR;
        h->family = fam == 1 ? 4 : 6;
        memcpy(h->src, p, alen);
        memcpy(h->dst, p + alen, alen);
        p += 2 * alen;
        h->sport = (uint16_t)(p[0] << 8 | p[1]);
        h->dport = (uint16_t)(p[2] << 8 | p[3]);
    }
    return (int)(PP_V2_HDR + body);
}

int proxyproto_parse(const uint8_t *buf, size_t len, proxyproto_hdr *h)
{
    if (len == 0)
        return -2;
    if (buf[0] == 'P') {
        size_t n = len < 6 ? len : 6;
        if (memcmp(buf, "PROXY ", n))
            return -1;
        return len < 6 ? -2 : parse_v1(buf, len, h);
    }
    size_t n = len < PP_V2_SIG_LEN ? len : PP_V2_SIG_LEN;
    if (memcmp(buf, PP_V2_SIG, n))
        return -1;
    return parse_v2(buf, len, h);
}
