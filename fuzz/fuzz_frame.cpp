/*
 * fuzz_frame.cpp - the tunnel frame codec on arbitrary bytes.
 *
 * Input: one selector byte, then the bytes handed to the decoder(s).
 * Property: whatever a decoder accepts, its encoder writes back byte for
 * byte (code_decode maps unprintable text to '?', so for it the property
 * is decode(encode(decode(x))) == decode(x)); a decoded header encodes to
 * the same 9 bytes.
 */
#include "frame.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); abort(); } } while (0)

#include <stdio.h>

/* A copy of exactly len bytes, so ASan sees any read past the end. */
static uint8_t *dup_exact(const uint8_t *p, size_t len)
{
    uint8_t *q = (uint8_t *)malloc(len ? len : 1);
    if (len)
        memcpy(q, p, len);
    return q;
}

static void check_hdr(const uint8_t *p, size_t len)
{
    if (len < FRAME_HDR)
        return;
    frame_hdr h;
    int r = frame_hdr_decode(p, &h);
    CHECK(r == 0 || r == 1);
    (void)frame_type_name(h.type);
    if (r == 1) {
        CHECK(h.type < FT_MAX && h.len <= FRAME_MAX_PAYLOAD);
        uint8_t out[FRAME_HDR];
        frame_hdr_encode(out, h.len, h.type, h.flags, h.sid);
        CHECK(memcmp(out, p, FRAME_HDR) == 0);
    }
    uint8_t v;
    if (len >= PREFACE_LEN && preface_decode(p, &v)) {
        uint8_t out[PREFACE_LEN];
        preface_encode(out);
        CHECK(memcmp(out, p, 5) == 0);
    }
}

static void check_hello(const uint8_t *p, size_t len)
{
    hello_msg m;
    if (hello_decode(p, len, &m) < 0)
        return;
    std::string out;
    CHECK(hello_encode(m, &out) == (int)out.size());
    CHECK(out.size() == len && memcmp(out.data(), p, len) == 0);
    hello_msg m2;
    CHECK(hello_decode((const uint8_t *)out.data(), out.size(), &m2) == 0);
    CHECK(m2.heartbeat_ms == m.heartbeat_ms && m2.window == m.window &&
          m2.auth_required == m.auth_required && !memcmp(m2.nonce, m.nonce, NONCE_LEN) &&
          m2.name == m.name && !memcmp(m2.client_id, m.client_id, sizeof m.client_id));
}

static void check_register(const uint8_t *p, size_t len)
{
    register_msg m;
    if (register_decode(p, len, &m) < 0)
        return;
    CHECK(m.mode >= 1 && m.mode <= 5 && m.proxy_protocol <= 2);
    std::string out;
    CHECK(register_encode(m, &out) == (int)out.size());
    CHECK(out.size() == len && memcmp(out.data(), p, len) == 0);
    register_msg m2;
    CHECK(register_decode((const uint8_t *)out.data(), out.size(), &m2) == 0);
    CHECK(m2.mode == m.mode && m2.remote_port == m.remote_port && m2.proxy_protocol == m.proxy_protocol &&
          m2.udp_timeout_ms == m.udp_timeout_ms && m2.name == m.name && m2.domains == m.domains &&
          m2.rules == m.rules);
}

static void check_open(const uint8_t *p, size_t len)
{
    open_msg m;
    if (open_decode(p, len, &m) < 0)
        return;
    CHECK(m.family == 0 || m.family == 4 || m.family == 6);
    std::string out;
    CHECK(open_encode(m, &out) == (int)out.size());
    CHECK(out.size() == len && memcmp(out.data(), p, len) == 0);
    open_msg m2;
    CHECK(open_decode((const uint8_t *)out.data(), out.size(), &m2) == 0);
    CHECK(m2.mapping == m.mapping && m2.family == m.family && !memcmp(m2.src, m.src, 16) &&
          !memcmp(m2.dst, m.dst, 16) && m2.sport == m.sport && m2.dport == m.dport && m2.target == m.target);
}

static void check_code(const uint8_t *p, size_t len)
{
    uint8_t code = 0;
    std::string text;
    if (code_decode(p, len, &code, &text) < 0) {
        CHECK(len < 1 || len > 201);
        return;
    }
    (void)reset_code_name(code);
    (void)goaway_code_name(code);
    CHECK(text.size() == len - 1);
    for (char ch : text)
        CHECK(ch >= 0x20 && ch < 0x7f);
    std::string out;
    CHECK(code_encode(code, text.c_str(), &out) == (int)out.size());
    uint8_t code2;
    std::string text2;
    CHECK(code_decode((const uint8_t *)out.data(), out.size(), &code2, &text2) == 0);
    CHECK(code2 == code && text2 == text);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    uint8_t *p = dup_exact(data + 1, size - 1);
    size_t len = size - 1;

    /* every decoder sees every input; the selector only adds a header
     * split: the first 9 bytes as a frame header, the rest as its payload
     * handed to the decoder its type names, as mux.cpp does */
    check_hdr(p, len);
    check_hello(p, len);
    check_register(p, len);
    check_open(p, len);
    check_code(p, len);
    if ((sel & 1) && len >= FRAME_HDR) {
        frame_hdr h;
        if (frame_hdr_decode(p, &h) && h.len <= len - FRAME_HDR) {
            uint8_t *q = dup_exact(p + FRAME_HDR, h.len);
            switch (h.type) {
            case FT_HELLO: check_hello(q, h.len); break;
            case FT_REGISTER: check_register(q, h.len); break;
            case FT_OPEN: check_open(q, h.len); break;
            case FT_RESET: case FT_GOAWAY: case FT_REGISTERED: check_code(q, h.len); break;
            default: break;
            }
            free(q);
        }
    }
    free(p);
    return 0;
}
