/*
 * gen_seeds.cpp - writes the seed corpora in fuzz/corpus/<target>/.
 * Build and run from the repository root: scripts/fuzz --seeds. It also
 * writes the regression inputs of fuzz/regress/ that are frame sequences.
 * Frames are made with the real encoders (frame.cpp), so the seeds follow
 * the codec when it changes; the layout of each target's input is in the
 * comment at the top of its fuzz_<target>.cpp.
 */
#include "frame.h"
#include "proxyproto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <sys/stat.h>

static std::string dir, regress_dir;

static void put_in(const std::string &root, const char *target, const char *name, const std::string &bytes)
{
    std::string d = root + "/" + target;
    mkdir(d.c_str(), 0755);
    std::string path = d + "/" + name;
    FILE *f = fopen(path.c_str(), "wb");
    if (!f || fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || fclose(f) != 0) {
        perror(path.c_str());
        exit(1);
    }
}

/* A seed of fuzz/corpus/<target>/. */
static void put(const char *target, const char *name, const std::string &bytes)
{
    put_in(dir, target, name, bytes);
}

/* A regression input of fuzz/regress/<target>/ that depends on the frame
 * encoding, so it is rebuilt with the codec. */
static void put_regress(const char *target, const char *name, const std::string &bytes)
{
    put_in(regress_dir, target, name, bytes);
}

static std::string frame(uint8_t type, uint8_t flags, uint32_t sid, const std::string &payload)
{
    uint8_t h[FRAME_HDR];
    frame_hdr_encode(h, (uint32_t)payload.size(), type, flags, sid);
    return std::string((const char *)h, FRAME_HDR) + payload;
}

static std::string preface()
{
    uint8_t p[PREFACE_LEN];
    preface_encode(p);
    return std::string((const char *)p, PREFACE_LEN);
}

static std::string hello(bool auth)
{
    hello_msg m;
    m.heartbeat_ms = 15000;
    m.window = 256 * 1024;
    m.auth_required = auth;
    m.name = "wmproxyd seed";
    std::string p;
    hello_encode(m, &p);
    return frame(FT_HELLO, 0, 0, p);
}

static std::string hello_small()
{
    hello_msg m;
    m.heartbeat_ms = 1000;
    m.window = 4096;
    std::string p;
    hello_encode(m, &p);
    return frame(FT_HELLO, 0, 0, p);
}

static std::string reg(uint32_t idx, uint8_t mode, uint16_t port, const char *domains, const char *rules)
{
    register_msg m;
    m.mode = mode;
    m.remote_port = port;
    m.proxy_protocol = idx % 3;
    m.udp_timeout_ms = 60000;
    m.name = "map" + std::to_string(idx);
    m.domains = domains;
    m.rules = rules;
    std::string p;
    register_encode(m, &p);
    return frame(FT_REGISTER, 0, idx, p);
}

static std::string open_f(uint32_t sid, uint32_t mapping, uint8_t family)
{
    open_msg m;
    m.mapping = mapping;
    m.family = family;
    m.src[0] = 10, m.src[3] = 1, m.dst[0] = 10, m.dst[3] = 2;
    m.sport = 40000, m.dport = 80;
    std::string p;
    open_encode(m, &p);
    return frame(FT_OPEN, 0, sid, p);
}

static std::string code_f(uint8_t type, uint32_t sid, uint8_t code, const char *text)
{
    std::string p;
    code_encode(code, text, &p);
    return frame(type, 0, sid, p);
}

static std::string window_f(uint32_t sid, uint32_t inc)
{
    uint8_t b[4];
    put_u32(b, inc);
    return frame(FT_WINDOW, 0, sid, std::string((const char *)b, 4));
}

static std::string dgram_f(uint32_t flow, uint32_t idx, const std::string &d)
{
    uint8_t b[4];
    put_u32(b, idx);
    return frame(FT_DGRAM, 0, flow, std::string((const char *)b, 4) + d);
}

static std::string data_f(uint32_t sid, const std::string &d, bool fin = false)
{
    return frame(FT_DATA, fin ? FL_FIN : 0, sid, d);
}

/* The three control bytes of fuzz_mux (layout in fuzz_mux.cpp); c2's low
 * nibble only seeds choices, its high bits switch modes on. */
static std::string ctl(uint8_t c0, uint8_t c1, uint8_t c2)
{
    return std::string{(char)c0, (char)c1, (char)c2};
}

static void mux_seeds()
{
    const std::string ping = frame(FT_PING, 0, 0, std::string(8, 'p'));
    const std::string pong = frame(FT_PING, FL_ACK, 0, std::string(8, 'p'));
    uint8_t zero[NONCE_LEN] = {}, mac[MAC_LEN];
    auth_mac("fuzz-token", zero, mac);
    const std::string auth = frame(FT_AUTH, 0, 0, std::string((const char *)mac, MAC_LEN));

    /* server role: the fuzz input is a client */
    std::string regs = reg(0, 1, 0, "a.example,b.example", "H backend\nQ X-A: 1\nS X-B: 2\n") +
                       reg(1, 3, 8022, "", "") + reg(2, 4, 5353, "", "") + reg(3, 5, 0, "", "");
    std::string srv_tail = ping + pong + frame(FT_UNREGISTER, 0, 1, "") + window_f(2, 65536) + data_f(2, "hello from the client") +
                           dgram_f(7, 2, "udp payload") + data_f(2, "", true) + code_f(FT_RESET, 2, RST_CANCEL, "bye");
    put("mux", "server-notoken", ctl(0x05, 1, 2) + hello(false) + regs + srv_tail);
    put("mux", "server-token", ctl(0x07, 3, 4) + hello(false) + auth + regs + srv_tail);
    put("mux", "server-token-bad", ctl(0x07, 5, 6) + hello(false) + frame(FT_AUTH, 0, 0, std::string(32, 'x')));
    put("mux", "server-nopreface", ctl(0x01, 7, 8) + preface() + hello(false) + regs + ping);
    put("mux", "server-small-eof", ctl(0x4d, 9, 10) + hello_small() + regs + window_f(2, 4096) +
                                       data_f(2, std::string(4096, 'd')) + srv_tail);
    put("mux", "server-initial", ctl(0x25, 11, 12) + hello(false) + regs + srv_tail);
    put("mux", "server-goaway", ctl(0x05, 13, 14) + hello(false) + code_f(FT_GOAWAY, 0, GA_SHUTDOWN, "shutting down"));
    put("mux", "server-badversion", ctl(0x01, 15, 0) + std::string("WMPX\0\2\0\0", 8) + hello(false));
    put("mux", "server-tls", ctl(0x15, 17, 2) + hello(false) + regs + srv_tail);

    /* client role: the fuzz input is a server */
    std::string cli = frame(FT_READY, 0, 0, "") + code_f(FT_REGISTERED, 0, 0, "") +
                      code_f(FT_REGISTERED, 1, 1, "port in use") + open_f(2, 0, 4) + data_f(2, "GET / HTTP/1.1\r\n\r\n") +
                      window_f(2, 1000) + open_f(4, 1, 6) + data_f(4, "x") + data_f(4, "y") + data_f(4, "", true) +
                      code_f(FT_RESET, 2, RST_RESET, "peer reset") + open_f(6, 0, 0) + dgram_f(9, 1, "dns?") +
                      ping + window_f(1, 100) + data_f(1, "to our stream");
    put("mux", "client-noauth", ctl(0x04, 21, 6) + hello(false) + cli);
    put("mux", "client-auth", ctl(0x06, 23, 8) + hello(true) + cli);
    put("mux", "client-small", ctl(0x0c, 25, 10) + hello_small() + frame(FT_READY, 0, 0, "") + open_f(2, 0, 4) +
                                   data_f(2, std::string(4096, 'a')) + data_f(2, "over the window"));
    std::string many;
    for (uint32_t sid = 2; sid <= 12; sid += 2)
        many += open_f(sid, 0, 4) + data_f(sid, std::string(100, 'm'));
    put("mux", "client-streams", ctl(0x0c, 27, 12) + hello(false) + frame(FT_READY, 0, 0, "") + many);
    /* stream ids far apart: the serial-number comparison of ids */
    std::string wrap;
    for (uint32_t sid : {2u, 0x70000000u, 0xe0000000u, 0x50000000u, 0xc0000000u})
        wrap += open_f(sid, 0, 4) + data_f(sid, "w") + window_f(sid, 10);
    put("mux", "client-sid-wrap", ctl(0x04, 33, 2) + hello(false) + frame(FT_READY, 0, 0, "") + wrap +
                                      code_f(FT_RESET, 0x70000000, RST_CANCEL, "") + data_f(0x70000000, "late"));
    /* regression: the server reuses stream id 2 after walking the id space
     * round (sid_after() accepts it) while stream 2 is still open */
    std::string reuse;
    for (uint32_t sid : {2u, 0x70000000u, 0xe0000000u, 0x50000000u, 0xc0000000u, 0x30000000u, 0xa0000000u,
                         0x10000000u, 0x80000000u, 0xf0000000u, 2u})
        reuse += open_f(sid, 0, 4);
    put_regress("mux", "open-sid-reuse-after-wrap",
        ctl(0x04, 0, 0x80) + hello(false) + frame(FT_READY, 0, 0, "") + reuse + data_f(2, "hello"));
    /* regression: the server walks its ids round to 0 (sid_after(0,
     * 0xe0000000) holds) and opens stream 0, the connection's id */
    std::string zero_sid;
    for (uint32_t sid : {0x70000000u, 0xe0000000u, 0u})
        zero_sid += open_f(sid, 0, 4);
    put_regress("mux", "open-sid-zero", ctl(0x04, 0, 0x80) + hello(false) + frame(FT_READY, 0, 0, "") + zero_sid);
    /* flow control: a peer window of 4 KiB runs out at once; WINDOW
     * frames bring it back */
    std::string credit = hello_small() + frame(FT_READY, 0, 0, "") + open_f(2, 0, 4);
    for (int i = 0; i < 6; i++)
        credit += window_f(2, 4096) + data_f(2, std::string(512, 'c'));
    put("mux", "client-credit", ctl(0x04, 35, 4) + credit);
    put("mux", "client-stall", ctl(0x04, 37, 0x40 | 38) + hello(false) + cli);
    put("mux", "client-timers", ctl(0x04, 39, 0x20 | 40) + hello(false) + cli);
    put("mux", "client-errors", ctl(0x04, 41, 0x10 | 42) + hello(false) + cli);
    put("mux", "server-stall-timers", ctl(0x05, 43, 0x60 | 44) + hello(false) + regs + srv_tail);
    put("mux", "server-hs-timer", ctl(0x15, 45, 0x20 | 46) + hello(false));
    /* four streams whose ends (if any) are slow: over tunnel_buffer, the
     * tunnel stops reading until they drain */
    std::string full = hello(false) + frame(FT_READY, 0, 0, "");
    for (uint32_t sid = 2; sid <= 8; sid += 2)
        full += open_f(sid, 0, 4) + data_f(sid, std::string(4096, 'f'));
    full += code_f(FT_RESET, 4, RST_CANCEL, "") + ping;
    put("mux", "client-pause", ctl(0x0c, 47, 0) + full);
    put("mux", "client-eof", ctl(0x44, 29, 14) + hello(false) + frame(FT_READY, 0, 0, "") + open_f(2, 0, 4));
    put("mux", "client-goaway-auth", ctl(0x06, 31, 0) + hello(true) + code_f(FT_GOAWAY, 0, GA_AUTH, "wrong token"));
}

static void frame_seeds()
{
    hello_msg h;
    h.heartbeat_ms = 15000;
    h.window = 1 << 20;
    h.auth_required = 1;
    memset(h.nonce, 0xab, NONCE_LEN);
    h.name = "wmproxyd 1.0";
    std::string p;
    hello_encode(h, &p);
    put("frame", "hello", std::string(1, 0) + p);
    put("frame", "hello-frame", std::string(1, 1) + frame(FT_HELLO, 0, 0, p));
    p.clear();
    register_msg r;
    r.mode = 2;
    r.remote_port = 443;
    r.proxy_protocol = 1;
    r.name = "web";
    r.domains = "*.example.com,example.org";
    r.rules = "H internal\nQ X-Forwarded-Proto: https\n";
    register_encode(r, &p);
    put("frame", "register", std::string(1, 0) + p);
    put("frame", "register-frame", std::string(1, 1) + frame(FT_REGISTER, 0, 3, p));
    p.clear();
    open_msg o;
    o.mapping = 1;
    o.family = 6;
    memset(o.src, 0x20, 16);
    memset(o.dst, 0x30, 16);
    o.sport = 1234;
    o.dport = 443;
    o.target = "example.com:443";
    open_encode(o, &p);
    put("frame", "open", std::string(1, 0) + p);
    put("frame", "open-frame", std::string(1, 1) + frame(FT_OPEN, 0, 2, p));
    put("frame", "reset-frame", std::string(1, 1) + code_f(FT_RESET, 2, RST_REFUSED, "connection refused"));
    put("frame", "goaway-frame", std::string(1, 1) + code_f(FT_GOAWAY, 0, GA_VERSION, "version"));
    put("frame", "registered-frame", std::string(1, 1) + code_f(FT_REGISTERED, 0, 0, ""));
    put("frame", "preface", std::string(1, 0) + preface() + std::string(1, 0));
    put("frame", "window-frame", std::string(1, 1) + window_f(5, 1 << 16));
}

static void http_seeds()
{
    const char *req[] = {
        "GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        "POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: keep-alive, X-Drop\r\nX-Drop: 1\r\n\r\nhello",
        "PUT /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nProxy-Authorization: Basic dTpw\r\n\r\n",
        "GET http://example.com:8080/p?q=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Connection: keep-alive\r\n\r\n",
        "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nTE: trailers\r\n\r\n",
        "\r\n\nGET / HTTP/1.1\nHost: bare-lf\n\n",
        "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
    };
    int i = 0;
    for (const char *s : req)
        put("http", ("req" + std::to_string(i++)).c_str(), std::string(1, 0) + s);
    const char *resp[] = {
        "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
        "HTTP/1.1 204 No Content\r\n\r\n",
        "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 10\r\n\r\n",
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",
        "HTTP/1.0 200\r\nServer: x\r\n\r\n",
        "HTTP/1.1 502 Bad Gateway\r\nConnection: close\r\n\r\n",
    };
    i = 0;
    for (const char *s : resp)
        put("http", ("resp" + std::to_string(i++)).c_str(), std::string(1, 1) + s);
    put("http", "resp-head", std::string(1, 5) + "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
    const char *chunked[] = {
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
        "5;name=val\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\nY: 2\r\n\r\n",
        "ffffffff\r\n",
        "0\r\n\r\n",
    };
    i = 0;
    for (const char *s : chunked)
        put("http", ("chunked" + std::to_string(i++)).c_str(), std::string(1, 2) + s);
    const char *hosts[] = {"Example.COM:8080", "[::1]:80", "[2001:db8::1]", "http://h:81/p?q", "https://[2001:db8::1]/x",
                           "www.example.com.", "h:65535", "HTTP://UP.example/", "a_b-c.d:"};
    i = 0;
    for (const char *s : hosts)
        put("http", ("host" + std::to_string(i++)).c_str(), std::string(1, 3) + s);
}

static void socks5_seeds()
{
    put("socks5", "greeting", std::string("\x00\x05\x02\x00\x02", 5));
    put("socks5", "greeting-gssapi", std::string("\x00\x05\x01\x01", 4));
    put("socks5", "userpass", std::string("\x01\x01\x04user\x06secret", 13));
    put("socks5", "connect-v4", std::string("\x02\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50", 11));
    put("socks5", "connect-domain", std::string("\x02\x05\x01\x00\x03\x0b""example.com\x01\xbb", 19));
    put("socks5", "connect-v6", std::string("\x02\x05\x01\x00\x04", 5) + std::string(15, 0) + "\x01" + "\x00\x16");
    put("socks5", "udp-assoc", std::string("\x02\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00", 11));
    put("socks5", "badcmd", std::string("\x02\x05\x09\x00\x01", 5));
    put("socks5", "udp-v4", std::string("\x03\x00\x00\x00\x01\x08\x08\x08\x08\x00\x35payload", 18));
    put("socks5", "udp-domain", std::string("\x03\x00\x00\x00\x03\x03""dns\x00\x35q", 12));
    put("socks5", "udp-v6-mapped", std::string("\x03\x00\x00\x00\x04", 5) + std::string(10, 0) + "\xff\xff\x01\x02\x03\x04" + "\x00\x35");
    put("socks5", "udp-frag", std::string("\x03\x00\x00\x01\x01\x01\x01\x01\x01\x00\x35", 11));
    put("socks5", "pp-v1-tcp4", std::string(1, 4) + "PROXY TCP4 192.0.2.1 198.51.100.2 40000 80\r\nGET /");
    put("socks5", "pp-v1-tcp6", std::string(1, 4) + "PROXY TCP6 2001:db8::1 ::ffff:1.2.3.4 1 65535\r\n");
    put("socks5", "pp-v1-unknown", std::string(1, 4) + "PROXY UNKNOWN ignored stuff\r\n");
    std::string sig(PP_V2_SIG, PP_V2_SIG_LEN);
    put("socks5", "pp-v2-tcp4", std::string(1, 4) + sig + std::string("\x21\x11\x00\x0c\x0a\x00\x00\x01\x0a\x00\x00\x02\x9c\x40\x00\x50", 16));
    put("socks5", "pp-v2-tcp6", std::string(1, 4) + sig + std::string("\x21\x21\x00\x24", 4) + std::string(32, '\x20') + "\x01\x02\x03\x04");
    put("socks5", "pp-v2-local", std::string(1, 4) + sig + std::string("\x20\x00\x00\x03\x01\x00\x00", 7));
    put("socks5", "pp-v2-tlv", std::string(1, 4) + sig + std::string("\x21\x12\x00\x10\x01\x02\x03\x04\x05\x06\x07\x08\x00\x01\x00\x02\x04\x00\x01\x00", 20));
}

static void conf_seeds()
{
    put("conf", "server-full",
        "[server]\nbind_addr = :8091\ntc = true\ncert = cert.pem\nkey = key.pem\nclient_ca = ca.pem\n"
        "token = s3cret\nflag = http https socks5\nusername = u\npassword = p\n"
        "map_http_bind = 0.0.0.0:8001\nmap_https_bind = [::]:8443\nmap_tcp_bind = *:8002\n"
        "map_proxy_bind = 127.0.0.1:8090\nmap_udp_bind = :8053\nmap_cert = a.pem\nmap_key = a.key\n"
        "allow_ports = 8000-9000, 10022\nmax_clients = 100\nkeepalive_timeout = 75s\nstatus_addr = 127.0.0.1:9999\n"
        "heartbeat = 15s\nwindow = 256k\nmax_window = 4m\ntunnel_buffer = 32m\nmax_streams = 4096\n"
        "connect_timeout = 10s\nshutdown_timeout = 500ms\nhandshake_timeout = 1m\nlog_level = debug\n"
        "log_file = syslog\naccess_log = access.log\npid_file = /run/wmproxyd.pid\n");
    put("conf", "client-full",
        "\xEF\xBB\xBF; comment\n[client]\nserver = example.com:8091\nts = yes\nserver_name = example.com\nca = ca.pem\n"
        "fingerprint = " "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89\n"
        "verify = off\nreconnect_min = 1s\nreconnect_max = 1h\ntoken = s3cret\n"
        "  [mapping web]\nmode = http\nlocal_addr = 127.0.0.1:8080\ndomain = Example.com, *.example.org\nhost = backend:80\n"
        "request_header = X-Real-IP: 1\nrequest_header = X-Drop:\nresponse_header = Server: x\n"
        "[mapping ssh]\nmode = tcp\nlocal_addr = [::1]:22\nremote_port = 10022\nproxy_protocol = v2\n"
        "[mapping dns]\nmode = udp\nlocal_addr = 10.0.0.53:53\nudp_timeout = 30s\n"
        "[mapping px]\nmode = proxy\nflag = socks5\nusername = a\npassword = b\n"
        "[mapping tls]\nmode = https\nlocal_addr = 127.0.0.1:443 ; inline\ndomain = secure.example\n");
    put("conf", "bad-dup", "[server]\nbind_addr = :1\nbind_addr = :2\n");
    put("conf", "bad-roles", "[client]\nserver = a:1\n[server]\nbind_addr = :1\n");
    put("conf", "bad-window", "[client]\nserver = a:1\nwindow = 8m\nmax_window = 4m\n");
    put("conf", "bad-mapping", "[client]\nserver = a:1\n[mapping a]\nmode = http\nlocal_addr = b:2\n"
                               "[mapping b]\nmode = http\nlocal_addr = c:3\ndomain = x.y\n[mapping c]\nmode = tcp\n");
    put("conf", "bad-line", "[server\nbind_addr\n");
    put("conf", "long-line", "[server]\nbind_addr = " + std::string(300, 'a') + ":1\n");
    put("conf", "values", "5m");
    put("conf", "ports", "1-100, 200 ,65535");
}

int main(int argc, char **argv)
{
    dir = argc > 1 ? argv[1] : "fuzz/corpus";
    regress_dir = argc > 2 ? argv[2] : "fuzz/regress";
    mkdir(dir.c_str(), 0755);
    mkdir(regress_dir.c_str(), 0755);
    mux_seeds();
    frame_seeds();
    http_seeds();
    socks5_seeds();
    conf_seeds();
    return 0;
}
