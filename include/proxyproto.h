/*
 * proxyproto.h - PROXY protocol headers (haproxy doc/proxy-protocol.txt),
 * written by the client to local_addr before any data of a tcp mapping with
 * proxy_protocol = v1|v2, so the service sees who connected.
 *
 * Addresses are raw network-order bytes as open_msg carries them: family 4
 * (the first 4 bytes are used) or 6 (16 bytes); any other family, 0
 * included, means unknown. Ports are in host order.
 */
#ifndef WMPROXY_PROXYPROTO_H
#define WMPROXY_PROXYPROTO_H

#include <stddef.h>
#include <stdint.h>
#include <string>

#define PP_V1_MAX 107                   /* longest v1 line, CRLF included */
#define PP_V2_HDR 16                    /* signature, ver/cmd, fam, length */
#define PP_V2_SIG "\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A"
#define PP_V2_SIG_LEN 12

/*
 * Append "PROXY TCP4 src dst sport dport\r\n" (TCP6 for family 6, or
 * "PROXY UNKNOWN\r\n") to *out; returns the bytes appended. When family is 6
 * and both addresses are IPv4-mapped (a user reaching a dual-stack [::]
 * listener over IPv4) the header says TCP4 with the plain IPv4 addresses.
 */
size_t proxyproto_v1(int family, const uint8_t *src, const uint8_t *dst, uint16_t sport,
                     uint16_t dport, std::string *out);
/*
 * Append the binary header: signature, 0x21 (v2, PROXY), 0x11 (TCP over
 * IPv4) + 12 address bytes or 0x21 (TCP over IPv6) + 36, big-endian
 * length, then src, dst, sport, dport. Unknown family: 0x20 (LOCAL), 0x00,
 * length 0, so the service uses the connection's own addresses. IPv4-mapped
 * pairs become IPv4 as in v1. Returns the bytes appended (28, 52 or 16).
 */
size_t proxyproto_v2(int family, const uint8_t *src, const uint8_t *dst, uint16_t sport,
                     uint16_t dport, std::string *out);

struct proxyproto_hdr {
    uint8_t version;                    /* 1 or 2 */
    uint8_t local;                      /* v2 LOCAL: no addresses */
    uint8_t family;                     /* 0 (UNKNOWN, LOCAL, UNSPEC, UNIX), 4, 6 */
    uint8_t src[16], dst[16];
    uint16_t sport, dport;              /* host order */
};

/*
 * Decode a v1 or v2 header at the start of buf (for tests and for a peer
 * that sends one). Returns the bytes consumed (v2: TLVs included, skipped),
 * -2 while buf is a prefix of a header that may still be valid, -1 when it
 * is not one: no signature, a v1 line without CRLF within 107 bytes or not
 * of the form above, a v2 version other than 2, command other than LOCAL or
 * PROXY, unknown family/transport, or a length too short for the family.
 * A v1 line is checked once its CRLF is in; a v2 header byte by byte.
 */
int proxyproto_parse(const uint8_t *buf, size_t len, proxyproto_hdr *h);

#endif
