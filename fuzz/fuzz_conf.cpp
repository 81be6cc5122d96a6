/*
 * fuzz_conf.cpp - conf_load() on arbitrary files, and the value parsers on
 * arbitrary strings.
 *
 * The input is written to a memfd opened once per process; conf_load()
 * reads it back through /proc/self/fd/N. It must never crash, and what it
 * accepts must hold together: a role, windows in order, addresses that
 * print and parse back to themselves.
 */
#include "conf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "CHECK failed: %s (%s:%d)\n", #c, __FILE__, __LINE__); abort(); } } while (0)

static int memfd = -1;
static char path[64];

extern "C" int LLVMFuzzerInitialize(int *, char ***)
{
    memfd = memfd_create("fuzz_conf.ini", MFD_CLOEXEC);
    if (memfd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", memfd);
    return 0;
}

static void check_addr(const addr_conf &a)
{
    if (!a.set)
        return;
    CHECK(a.port >= 1);
    addr_conf b;
    std::string t = a.text();
    CHECK(conf_parse_addr(t.c_str(), &b) == 0);
    CHECK(b.host == a.host && b.port == a.port);
}

static void check_conf(const conf &c)
{
    CHECK(c.role_ == ROLE_SERVER || c.role_ == ROLE_CLIENT);
    CHECK(c.window <= c.max_window && c.max_window <= c.tunnel_buffer);
    CHECK(c.heartbeat_ms > 0 && c.max_streams > 0);
    check_addr(c.bind_addr);
    check_addr(c.server);
    check_addr(c.map_http_bind);
    check_addr(c.map_https_bind);
    check_addr(c.map_tcp_bind);
    check_addr(c.map_proxy_bind);
    check_addr(c.map_udp_bind);
    check_addr(c.status_addr);
    if (c.role_ == ROLE_SERVER)
        CHECK(c.bind_addr.set && c.mappings.empty());
    else
        CHECK(c.server.set && c.reconnect_min_ms <= c.reconnect_max_ms);
    CHECK(c.fingerprint.empty() || c.fingerprint.size() == 32);
    for (const mapping_conf &m : c.mappings) {
        CHECK(m.mode >= MODE_HTTP && m.mode <= MODE_PROXY);
        CHECK(m.mode == MODE_PROXY || m.local_addr.set);
        CHECK(!(m.mode == MODE_HTTP || m.mode == MODE_HTTPS) || !m.domains.empty());
        check_addr(m.local_addr);
        for (const std::string &d : m.domains)
            for (char ch : d)
                CHECK(!(ch >= 'A' && ch <= 'Z'));
        CHECK(m.username.size() <= 255 && m.password.size() <= 255);
    }
}

/* The value parsers directly, on a NUL-terminated copy. */
static void fuzz_values(const char *s)
{
    bool b;
    uint32_t ms;
    uint64_t sz;
    addr_conf a;
    unsigned fl;
    std::vector<std::pair<uint16_t, uint16_t>> ports;
    std::string fp;

    (void)conf_parse_bool(s, &b);
    if (conf_parse_duration_ms(s, &ms) == 0) {
        char t[32];
        snprintf(t, sizeof t, "%ums", ms);
        uint32_t ms2;
        CHECK(conf_parse_duration_ms(t, &ms2) == 0 && ms2 == ms);
    }
    if (conf_parse_size(s, &sz) == 0) {
        char t[32];
        snprintf(t, sizeof t, "%llu", (unsigned long long)sz);
        uint64_t sz2;
        CHECK(conf_parse_size(t, &sz2) == 0 && sz2 == sz);
    }
    if (conf_parse_addr(s, &a) == 0)
        check_addr(a);
    if (conf_parse_flag(s, &fl) == 0)
        CHECK(fl <= 7);
    if (conf_parse_ports(s, &ports) == 0) {
        CHECK(!ports.empty());
        for (auto &r : ports)
            CHECK(r.first >= 1 && r.first <= r.second);
    }
    if (conf_parse_fingerprint(s, &fp) == 0)
        CHECK(fp.size() == 32);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(memfd, 0) < 0 || (size && pwrite(memfd, data, size, 0) != (ssize_t)size))
        abort();
    conf c;
    std::string err;
    int r = conf_load(path, &c, &err);
    if (r == 0) {
        check_conf(c);
    } else {
        CHECK(r == -1 && !err.empty());
        for (char ch : err)
            CHECK((unsigned char)ch >= 0x20 && ch != 0x7f);
    }

    if (size <= 512) {
        std::string s((const char *)data, size);
        fuzz_values(s.c_str());
    }
    return 0;
}
