/*
 * frame.h - the tunnel wire format (PROTOCOL.md has the full description).
 *
 * After an 8-byte preface ("WMPX", 0, version, 0, 0) each side sends frames:
 *
 *   +--------+--------+--------+--------+--------+-----------------------+
 *   |       length (24, BE)    |  type  | flags  |   stream id (32, BE)  |
 *   +--------+--------+--------+--------+--------+-----------------------+
 *   |  payload (length bytes)                                          ...
 *
 * The 9-byte header is written in front of payload already in place (a
 * relay reads the socket straight into the ring behind a reserved header),
 * so encoding never copies payload.
 */
#ifndef WMPROXY_FRAME_H
#define WMPROXY_FRAME_H

#include <stddef.h>
#include <stdint.h>
#include <string>

#define WMPX_MAGIC "WMPX"
#define WMPX_VERSION 1
#define PREFACE_LEN 8
#define FRAME_HDR 9
#define FRAME_MAX_DATA (16 * 1024)          /* DATA payload: streams interleave */
#define FRAME_MAX_PAYLOAD (64 * 1024 + 256) /* DGRAM: a whole UDP datagram + address */
#define NONCE_LEN 32
#define MAC_LEN 32

enum frame_type {
    FT_DATA = 0,        /* sid: payload bytes; FL_FIN ends this direction */
    FT_OPEN = 1,        /* sid: new stream; open_msg */
    FT_WINDOW = 2,      /* sid: u32 credit increment */
    FT_RESET = 3,       /* sid: u8 code, text */
    FT_PING = 4,        /* sid 0: 8 opaque bytes; FL_ACK answers */
    FT_GOAWAY = 5,      /* sid 0: u8 code, text; the sender closes */
    FT_HELLO = 6,       /* sid 0: hello_msg, both directions */
    FT_AUTH = 7,        /* sid 0: MAC_LEN bytes HMAC-SHA256(token, nonce|label) */
    FT_READY = 8,       /* sid 0: authenticated, register now */
    FT_REGISTER = 9,    /* sid = mapping index: register_msg */
    FT_REGISTERED = 10, /* sid = mapping index: u8 status, text */
    FT_DGRAM = 11,      /* sid = flow id: u32 mapping index, then one UDP datagram */
    FT_UNREGISTER = 12, /* sid = mapping index: the client dropped it (reload) */
    FT_RECLAIM = 13,    /* sid: u32 credit a receiver asks back; FL_ACK: what the
                           sender gives back (only to a peer whose HELLO had FL_RECLAIM) */
    FT_MAX
};

/* FL_BLOCKED on DATA: this frame used the last of the sender's credit and
 * it had more to send (the receiver may grow the window; see PROTOCOL.md).
 * FL_RECLAIM on HELLO: the sender answers RECLAIM (older ones never get it). */
enum frame_flags { FL_FIN = 1, FL_ACK = 1, FL_BLOCKED = 2, FL_RECLAIM = 4 };

enum reset_code {
    RST_CANCEL = 0,     /* closed by the other end */
    RST_REFUSED = 1,    /* local_addr refused */
    RST_TIMEOUT = 2,    /* local_addr connect timed out */
    RST_UNREACHABLE = 3,
    RST_PROTOCOL = 4,
    RST_NOMAPPING = 5,
    RST_LIMIT = 6,      /* max_streams */
    RST_RESET = 7,      /* the socket was reset */
    RST_DNS = 8,
    RST_TUNNEL = 255,   /* never sent: the tunnel was lost under the stream */
};

enum goaway_code {
    GA_NORMAL = 0, GA_PROTOCOL = 1, GA_VERSION = 2, GA_AUTH = 3,
    GA_TIMEOUT = 4, GA_LIMIT = 5, GA_SHUTDOWN = 6, GA_REPLACED = 7,
};

struct frame_hdr {
    uint32_t len;
    uint8_t type;
    uint8_t flags;
    uint32_t sid;
};

void frame_hdr_encode(uint8_t out[FRAME_HDR], uint32_t len, uint8_t type, uint8_t flags, uint32_t sid);

/*
 * Decode and check a header. Return values:
 *   1  valid header in *h
 *   0  unknown type or a length over the limit for its type (protocol error)
 */
int frame_hdr_decode(const uint8_t in[FRAME_HDR], frame_hdr *h);

/* Preface: returns 1 valid magic (version in *version), 0 not our magic. */
void preface_encode(uint8_t out[PREFACE_LEN]);
int preface_decode(const uint8_t in[PREFACE_LEN], uint8_t *version);

/* ---- control payloads ----
 * Each encoder appends to out and returns its length; each decoder returns
 * 0 on success and -1 on a malformed payload (short, long or bad values). */

struct hello_msg {
    uint32_t heartbeat_ms = 0;
    uint32_t window = 0;            /* the sender's initial receive window */
    uint8_t auth_required = 0;      /* server: a token is required */
    uint8_t nonce[NONCE_LEN] = {};  /* server: the challenge */
    std::string name;               /* software name and version */
    /* client: random per process start; the server replaces an older
     * tunnel with the same id (the client's address changed, the old
     * connection is silently dead) instead of refusing its mappings */
    uint8_t client_id[16] = {};
};
int hello_encode(const hello_msg &m, std::string *out);
int hello_decode(const uint8_t *p, size_t len, hello_msg *m);

/* A mapping as the client registers it. */
struct register_msg {
    uint8_t mode = 0;               /* map_mode */
    uint16_t remote_port = 0;
    uint8_t proxy_protocol = 0;
    uint32_t udp_timeout_ms = 0;    /* udp: forget a silent flow after this */
    std::string name;
    std::string domains;            /* comma-separated */
    /* http/https rewriting, applied by the server: lines "H value" (Host),
     * "Q Name: value" (request header), "S Name: value" (response header) */
    std::string rules;
};
/* An encoded REGISTER is at most this long (PROTOCOL.md section 3). */
#define REGISTER_MAX (16 * 1024)
/* Appends m to out. Returns its length, or -1 when that is over
 * REGISTER_MAX (it is appended all the same, for the message). */
int register_encode(const register_msg &m, std::string *out);
int register_decode(const uint8_t *p, size_t len, register_msg *m);

/* A stream as the server opens it: which mapping, and for PROXY protocol
 * the public user's address and the address it connected to. */
struct open_msg {
    uint32_t mapping = 0;           /* index the client registered */
    uint8_t family = 0;             /* 0 unknown, 4, 6 */
    uint8_t src[16] = {}, dst[16] = {};
    uint16_t sport = 0, dport = 0;
    std::string target;             /* proxy streams: reserved */
};
int open_encode(const open_msg &m, std::string *out);
int open_decode(const uint8_t *p, size_t len, open_msg *m);

/* RESET, GOAWAY and REGISTERED: u8 code, then text (<= 200 bytes) */
int code_encode(uint8_t code, const char *text, std::string *out);
int code_decode(const uint8_t *p, size_t len, uint8_t *code, std::string *text);

/* HMAC-SHA256(token, nonce | "wmproxyd tunnel auth v1") */
void auth_mac(const std::string &token, const uint8_t nonce[NONCE_LEN], uint8_t out[MAC_LEN]);

const char *frame_type_name(uint8_t type);
const char *reset_code_name(uint8_t code);
const char *goaway_code_name(uint8_t code);

static inline void put_u16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; }
static inline void put_u32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
static inline uint16_t get_u16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t get_u32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

#endif
