/*
 * socks5.h - SOCKS5 message codec (RFC 1928, RFC 1929 user/pass). No I/O.
 *
 * Parsers take the bytes received so far and keep no state between calls:
 * feed them the whole buffer again when more arrives. They return
 *   >0            bytes consumed (the message is complete and valid)
 *   S5_PARTIAL    a prefix of a message that may still be valid: read more
 *   S5_INVALID    not SOCKS5: close the connection
 *   S5_BADCMD     request with an unknown CMD: answer S5_REP_CMD_UNSUPPORTED
 *   S5_BADATYP    request with an unknown ATYP: answer S5_REP_ATYP_UNSUPPORTED
 *   S5_FRAG       UDP datagram with FRAG != 0: drop it (we do not reassemble)
 * The verdict is taken at the first byte that decides it, so a longer buffer
 * never changes a non-partial result: splitting the input anywhere gives the
 * same answer as receiving it whole. Parsers never read past len.
 * Encoders write into caller storage and return the length; nothing allocates.
 */
#ifndef WMPROXY_SOCKS5_H
#define WMPROXY_SOCKS5_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define SOCKS5_VER 5
#define SOCKS5_AUTH_VER 1               /* RFC 1929 sub-negotiation version */
#define SOCKS5_REPLY_MAX 22             /* request reply with an IPv6 address */
#define SOCKS5_UDP_HDR_MAX 262          /* RSV FRAG ATYP len 255-byte name port */

enum {
    S5_INVALID = -1,
    S5_PARTIAL = -2,
    S5_BADCMD = -3,
    S5_BADATYP = -4,
    S5_FRAG = -5,
};

enum socks5_method {
    S5_METHOD_NONE = 0x00,
    S5_METHOD_USERPASS = 0x02,
    S5_METHOD_NOACCEPT = 0xFF,
};

enum socks5_cmd { S5_CMD_CONNECT = 1, S5_CMD_BIND = 2, S5_CMD_UDP = 3 };

enum socks5_atyp { S5_ATYP_IPV4 = 1, S5_ATYP_DOMAIN = 3, S5_ATYP_IPV6 = 4 };

enum socks5_rep {
    S5_REP_SUCCEEDED = 0,
    S5_REP_FAILURE = 1,                 /* general SOCKS server failure */
    S5_REP_NOT_ALLOWED = 2,             /* connection not allowed by ruleset */
    S5_REP_NET_UNREACHABLE = 3,
    S5_REP_HOST_UNREACHABLE = 4,
    S5_REP_REFUSED = 5,
    S5_REP_TTL_EXPIRED = 6,
    S5_REP_CMD_UNSUPPORTED = 7,
    S5_REP_ATYP_UNSUPPORTED = 8,
};

/* Bytes inside the buffer that was parsed: valid only as long as it is. */
struct socks5_span {
    const uint8_t *p;
    size_t n;
};

/* An address as SOCKS5 carries it, copied out of the buffer so the caller
 * may consume the input right after parsing. */
struct socks5_addr {
    uint8_t atyp;                       /* S5_ATYP_* */
    uint8_t len;                        /* 4, 16, or the name's length 1..255 */
    uint16_t port;                      /* host order */
    uint8_t ip[16];                     /* IPV4: first 4 bytes; IPV6: all */
    char host[256];                     /* DOMAIN: the name, NUL-terminated */
};

struct socks5_req {
    uint8_t cmd;                        /* S5_CMD_* */
    socks5_addr dst;
};

struct socks5_udp_hdr {
    uint8_t frag;                       /* always 0 once parsed */
    socks5_addr addr;                   /* destination (to us) or source (from us) */
};

/* VER NMETHODS METHODS[NMETHODS]. *methods points into buf.
 * Invalid: VER != 5 or NMETHODS == 0. */
int socks5_parse_greeting(const uint8_t *buf, size_t len, socks5_span *methods);

/*
 * The method to answer: with need_auth, 0x02 if offered, else 0xFF. Without
 * it, 0x00 if offered, else 0x02 if offered (a client configured with
 * credentials may offer only that: the caller then accepts any user/pass),
 * else 0xFF. GSSAPI (0x01) is never chosen.
 */
uint8_t socks5_choose_method(const socks5_span *methods, bool need_auth);

/* RFC 1929: VER(1) ULEN UNAME PLEN PASSWD, lengths 1..255; views into buf.
 * Invalid: VER != 1 or a zero length. */
int socks5_parse_userpass(const uint8_t *buf, size_t len, socks5_span *user, socks5_span *pass);

/*
 * VER CMD RSV ATYP DST.ADDR DST.PORT. Invalid: VER != 5, RSV != 0, a domain
 * of length 0 or containing a NUL byte. CMD is checked before RSV and ATYP
 * (byte order), so "05 09 ..." is S5_BADCMD as soon as two bytes are in.
 */
int socks5_parse_request(const uint8_t *buf, size_t len, socks5_req *req);

/*
 * UDP ASSOCIATE datagram: RSV(2)=0 FRAG ATYP DST.ADDR DST.PORT DATA.
 * A datagram arrives whole, so a short one is invalid, never partial.
 * Returns the header length (data starts there; it may be empty),
 * S5_FRAG when FRAG != 0, else S5_INVALID (RSV, ATYP, domain, truncation).
 */
int socks5_udp_parse(const uint8_t *buf, size_t len, socks5_udp_hdr *hdr);
/* Writes the header (FRAG from hdr, normally 0) into out, which must hold
 * SOCKS5_UDP_HDR_MAX bytes; returns its length. */
size_t socks5_udp_encode(const socks5_udp_hdr *hdr, uint8_t *out);

/* VER METHOD -> 2 */
size_t socks5_method_reply(uint8_t out[2], uint8_t method);
/* RFC 1929 reply: 01 00 (success) or 01 01 -> 2 */
size_t socks5_userpass_reply(uint8_t out[2], bool ok);
/*
 * VER REP RSV ATYP BND.ADDR BND.PORT into out (SOCKS5_REPLY_MAX bytes);
 * returns 10 (IPv4) or 22 (IPv6). bound may be NULL or of another family:
 * then 0.0.0.0:0, which is what failure replies carry. An IPv4-mapped IPv6
 * address is written as IPv4 (a UDP ASSOCIATE client must reach it).
 */
size_t socks5_reply(uint8_t *out, socks5_rep rep, const sockaddr *bound);

/* AF_INET / AF_INET6 (v4-mapped becomes IPv4) -> 0; other families -> -1. */
int socks5_addr_from_sockaddr(const sockaddr *sa, socks5_addr *a);
/* IPV4 / IPV6 -> 0 with *len set; DOMAIN -> -1 (resolve a->host instead). */
int socks5_addr_to_sockaddr(const socks5_addr *a, sockaddr_storage *ss, socklen_t *len);

/*
 * REP for a failed outbound connect or socket(): ECONNREFUSED 5,
 * ENETUNREACH/ENETDOWN 3, EHOSTUNREACH/EHOSTDOWN 4, EACCES/EPERM 2
 * (a local firewall rule), EAFNOSUPPORT 8 (no IPv6 here), ETIMEDOUT 6:
 * RFC 1928 has no timeout code; "TTL expired" is the only one that tells a
 * timeout apart from an unreachable host, as 504 does from 502 in HTTP.
 * Anything else 1. A failed name lookup is the caller's: answer 4.
 */
socks5_rep socks5_rep_from_errno(int err);

/*
 * 1 when a[0..alen) equals b[0..blen), else 0, in time that depends on blen
 * only: pass the configured secret as b, the user's input as a. Where the
 * inputs differ, and alen, never change the work done; blen (the secret's
 * length) may leak through timing. Used for SOCKS5 and HTTP proxy auth.
 */
int cred_equal(const void *a, size_t alen, const void *b, size_t blen);

#endif
