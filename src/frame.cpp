/*
 * frame.cpp - tunnel frame codec, see frame.h and PROTOCOL.md.
 */
#include "frame.h"

#include <string.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

void frame_hdr_encode(uint8_t out[FRAME_HDR], uint32_t len, uint8_t type, uint8_t flags, uint32_t sid)
{
    out[0] = len >> 16;
    out[1] = len >> 8;
    out[2] = len;
    out[3] = type;
    out[4] = flags;
    put_u32(out + 5, sid);
}

/* Largest payload per type: data is small so streams interleave, control
 * frames are smaller still. */
static uint32_t max_payload(uint8_t type)
{
    switch (type) {
    case FT_DATA: return FRAME_MAX_DATA;
    case FT_WINDOW: return 4;
    case FT_RECLAIM: return 4;
    case FT_PING: return 8;
    case FT_AUTH: return MAC_LEN;
    case FT_READY: return 0;
    case FT_UNREGISTER: return 0;
    case FT_DGRAM: return FRAME_MAX_PAYLOAD;
    case FT_REGISTER: return 16 * 1024;   /* domains and header rules */
    default: return 1024;   /* OPEN HELLO REGISTER REGISTERED RESET GOAWAY */
    }
}

int frame_hdr_decode(const uint8_t in[FRAME_HDR], frame_hdr *h)
{
    h->len = (uint32_t)in[0] << 16 | (uint32_t)in[1] << 8 | in[2];
    h->type = in[3];
    h->flags = in[4];
    h->sid = get_u32(in + 5);
    if (h->type >= FT_MAX || h->len > max_payload(h->type))
        return 0;
    return 1;
}

void preface_encode(uint8_t out[PREFACE_LEN])
{
    memcpy(out, WMPX_MAGIC, 4);
    out[4] = 0;
    out[5] = WMPX_VERSION;
    out[6] = out[7] = 0;
}

int preface_decode(const uint8_t in[PREFACE_LEN], uint8_t *version)
{
    if (memcmp(in, WMPX_MAGIC, 4) != 0 || in[4] != 0)
        return 0;
    *version = in[5];
    return 1;
}

/* Strings travel as u8 length + bytes. */
static void put_str(std::string *out, const std::string &s)
{
    size_t n = s.size() > 255 ? 255 : s.size();
    out->push_back((char)n);
    out->append(s, 0, n);
}

struct reader {
    const uint8_t *p;
    size_t left;
    bool bad = false;
    const uint8_t *take(size_t n)
    {
        if (bad || n > left) {
            bad = true;
            return nullptr;
        }
        const uint8_t *r = p;
        p += n;
        left -= n;
        return r;
    }
    uint8_t u8() { const uint8_t *q = take(1); return q ? q[0] : 0; }
    uint16_t u16() { const uint8_t *q = take(2); return q ? get_u16(q) : 0; }
    uint32_t u32() { const uint8_t *q = take(4); return q ? get_u32(q) : 0; }
    void str(std::string *s)
    {
        size_t n = u8();
        const uint8_t *q = take(n);
        if (q)
            s->assign((const char *)q, n);
    }
    /* a decoder succeeds only when it used every byte */
    int done() const { return bad || left ? -1 : 0; }
};

static void put32(std::string *out, uint32_t v)
{
    uint8_t b[4];
    put_u32(b, v);
    out->append((const char *)b, 4);
}

static void put16(std::string *out, uint16_t v)
{
    uint8_t b[2];
    put_u16(b, v);
    out->append((const char *)b, 2);
}

int hello_encode(const hello_msg &m, std::string *out)
{
    size_t start = out->size();
    put32(out, m.heartbeat_ms);
    put32(out, m.window);
    out->push_back((char)m.auth_required);
    out->append((const char *)m.nonce, NONCE_LEN);
    put_str(out, m.name);
    out->append((const char *)m.client_id, sizeof m.client_id);
    return (int)(out->size() - start);
}

int hello_decode(const uint8_t *p, size_t len, hello_msg *m)
{
    reader r{p, len};
    m->heartbeat_ms = r.u32();
    m->window = r.u32();
    m->auth_required = r.u8();
    const uint8_t *n = r.take(NONCE_LEN);
    if (n)
        memcpy(m->nonce, n, NONCE_LEN);
    r.str(&m->name);
    const uint8_t *id = r.take(sizeof m->client_id);
    if (id)
        memcpy(m->client_id, id, sizeof m->client_id);
    if (r.done() < 0 || m->heartbeat_ms == 0 || m->window < 4096 || m->window > 0x7fffffff || m->auth_required > 1)
        return -1;
    return 0;
}

int register_encode(const register_msg &m, std::string *out)
{
    size_t start = out->size();
    out->push_back((char)m.mode);
    put16(out, m.remote_port);
    out->push_back((char)m.proxy_protocol);
    put32(out, m.udp_timeout_ms);
    put_str(out, m.name);
    put16(out, (uint16_t)m.domains.size());
    out->append(m.domains);
    put16(out, (uint16_t)m.rules.size());
    out->append(m.rules);
    /* domains or rules over 65535 bytes, whose length field wrapped, are
     * over the limit too */
    size_t n = out->size() - start;
    return n > REGISTER_MAX ? -1 : (int)n;
}

int register_decode(const uint8_t *p, size_t len, register_msg *m)
{
    reader r{p, len};
    m->mode = r.u8();
    m->remote_port = r.u16();
    m->proxy_protocol = r.u8();
    m->udp_timeout_ms = r.u32();
    r.str(&m->name);
    size_t dl = r.u16();
    const uint8_t *d = r.take(dl);
    if (d)
        m->domains.assign((const char *)d, dl);
    size_t rl = r.u16();
    const uint8_t *q = r.take(rl);
    if (q)
        m->rules.assign((const char *)q, rl);
    if (r.done() < 0 || m->mode < 1 || m->mode > 5 || m->proxy_protocol > 2)
        return -1;
    return 0;
}

int open_encode(const open_msg &m, std::string *out)
{
    size_t start = out->size();
    put32(out, m.mapping);
    out->push_back((char)m.family);
    out->append((const char *)m.src, 16);
    out->append((const char *)m.dst, 16);
    put16(out, m.sport);
    put16(out, m.dport);
    put_str(out, m.target);
    return (int)(out->size() - start);
}

int open_decode(const uint8_t *p, size_t len, open_msg *m)
{
    reader r{p, len};
    m->mapping = r.u32();
    m->family = r.u8();
    const uint8_t *s = r.take(16), *d = r.take(16);
    if (s && d) {
        memcpy(m->src, s, 16);
        memcpy(m->dst, d, 16);
    }
    m->sport = r.u16();
    m->dport = r.u16();
    r.str(&m->target);
    if (r.done() < 0 || (m->family != 0 && m->family != 4 && m->family != 6))
        return -1;
    return 0;
}

int code_encode(uint8_t code, const char *text, std::string *out)
{
    size_t n = strlen(text);
    if (n > 200)
        n = 200;
    out->push_back((char)code);
    out->append(text, n);
    return (int)n + 1;
}

int code_decode(const uint8_t *p, size_t len, uint8_t *code, std::string *text)
{
    if (len < 1 || len > 201)
        return -1;
    *code = p[0];
    text->clear();
    /* the text goes into log lines: keep it printable */
    for (size_t i = 1; i < len; i++)
        text->push_back(p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?');
    return 0;
}

void auth_mac(const std::string &token, const uint8_t nonce[NONCE_LEN], uint8_t out[MAC_LEN])
{
    static const char label[] = "wmproxyd tunnel auth v1";
    uint8_t msg[NONCE_LEN + sizeof label];
    unsigned int outlen = MAC_LEN;

    memcpy(msg, nonce, NONCE_LEN);
    memcpy(msg + NONCE_LEN, label, sizeof label);
    HMAC(EVP_sha256(), token.data(), (int)token.size(), msg, sizeof msg, out, &outlen);
}

const char *frame_type_name(uint8_t type)
{
    static const char *const names[] = {"DATA", "OPEN", "WINDOW", "RESET", "PING", "GOAWAY",
                                        "HELLO", "AUTH", "READY", "REGISTER", "REGISTERED", "DGRAM",
                                        "UNREGISTER", "RECLAIM"};
    return type < FT_MAX ? names[type] : "UNKNOWN";
}

const char *reset_code_name(uint8_t code)
{
    static const char *const names[] = {"cancel", "refused", "timeout", "unreachable", "protocol",
                                        "no mapping", "limit", "reset", "dns"};
    return code <= RST_DNS ? names[code] : "unknown";
}

const char *goaway_code_name(uint8_t code)
{
    static const char *const names[] = {"normal", "protocol error", "version mismatch", "authentication failed",
                                        "timeout", "limit", "shutdown", "replaced"};
    return code <= GA_REPLACED ? names[code] : "unknown";
}
