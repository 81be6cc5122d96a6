/*
 * test_conf.cpp - value parsers and conf_load() on files written here.
 * Run from the repository root (the example configs are read from conf/).
 */
#include <doctest/doctest.h>

#include "conf.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <string>

/* A file in /tmp holding text, removed when the object goes. */
struct tmp_file {
    char path[64];

    explicit tmp_file(const char *text, size_t len = (size_t)-1)
    {
        strcpy(path, "/tmp/wmconf_XXXXXX");
        int fd = mkstemp(path);
        REQUIRE(fd >= 0);
        if (len == (size_t)-1)
            len = strlen(text);
        REQUIRE(write(fd, text, len) == (ssize_t)len);
        close(fd);
    }
    ~tmp_file() { unlink(path); }
};

/* conf_load() on text: "" on success, else the error with the temporary
 * file's name replaced by "x.ini". */
static std::string load(const std::string &text, conf *c = NULL)
{
    tmp_file f(text.data(), text.size());
    conf scratch;
    std::string err;

    if (conf_load(f.path, c ? c : &scratch, &err) == 0)
        return "";
    size_t plen = strlen(f.path);
    if (err.compare(0, plen, f.path) == 0)
        err = "x.ini" + err.substr(plen);
    return err;
}

static const char *const SERVER_MIN = "[server]\nbind_addr = :8091\n";
static const char *const CLIENT_MIN = "[client]\nserver = example.com:8091\n";

/* ------------------------------------------------------------------ values */

TEST_CASE("conf_parse_bool")
{
    const char *yes[] = { "true", "yes", "on", "1", "TRUE", "Yes", "ON" };
    const char *no[] = { "false", "no", "off", "0", "False", "NO", "Off" };
    const char *bad[] = { "", "2", "tru", "yess", "enabled", "true ", "-1", "00" };
    bool b;

    for (const char *s : yes) {
        b = false;
        CHECK_MESSAGE(conf_parse_bool(s, &b) == 0, s);
        CHECK(b);
    }
    for (const char *s : no) {
        b = true;
        CHECK_MESSAGE(conf_parse_bool(s, &b) == 0, s);
        CHECK(!b);
    }
    for (const char *s : bad)
        CHECK_MESSAGE(conf_parse_bool(s, &b) == -1, s);
}

TEST_CASE("conf_parse_duration_ms")
{
    struct { const char *s; uint32_t ms; } good[] = {
        { "500ms", 500 }, { "30s", 30000 }, { "5m", 300000 }, { "1h", 3600000 },
        { "30", 30000 }, { "0", 0 }, { "0ms", 0 }, { "1MS", 1 }, { "2S", 2000 },
        { "4294967295ms", 4294967295u }, { "4294967s", 4294967000u },
        { "1193h", 1193u * 3600000u }, { "007s", 7000 },
    };
    const char *bad[] = {
        "", "abc", "s", "5x", "5 s", " 5s", "5s ", "-1", "+1", "1.5s", "1e3",
        "4294967296ms", "4294968s", "1194h", "71583m", "99999999999999999999999",
        "5sec", "5mss",
    };
    uint32_t ms;

    for (auto &g : good) {
        ms = 1;
        CHECK_MESSAGE(conf_parse_duration_ms(g.s, &ms) == 0, g.s);
        CHECK_MESSAGE(ms == g.ms, g.s);
    }
    for (const char *s : bad) {
        ms = 12345;
        CHECK_MESSAGE(conf_parse_duration_ms(s, &ms) == -1, s);
        CHECK(ms == 12345);
    }
}

TEST_CASE("conf_parse_size")
{
    struct { const char *s; uint64_t n; } good[] = {
        { "4096", 4096 }, { "64k", 65536 }, { "64K", 65536 }, { "16m", 16u << 20 },
        { "16M", 16u << 20 }, { "1g", 1ull << 30 }, { "1G", 1ull << 30 }, { "0", 0 },
        { "17179869183g", 17179869183ull << 30 },
        { "18446744073709551615", 18446744073709551615ull },
    };
    const char *bad[] = {
        "", "k", "4x", "-1", "1kb", "1.5m", "1 k", " 1k", "1k ", "1t",
        "17179869184g", "18446744073709551616", "0x10",
    };
    uint64_t n;

    for (auto &g : good) {
        CHECK_MESSAGE(conf_parse_size(g.s, &n) == 0, g.s);
        CHECK_MESSAGE(n == g.n, g.s);
    }
    for (const char *s : bad)
        CHECK_MESSAGE(conf_parse_size(s, &n) == -1, s);
}

TEST_CASE("conf_parse_addr and addr_conf::text")
{
    struct { const char *s, *host; uint16_t port; const char *text; } good[] = {
        { "127.0.0.1:8091", "127.0.0.1", 8091, "127.0.0.1:8091" },
        { "example.com:1", "example.com", 1, "example.com:1" },
        { "my_host-1.lan:65535", "my_host-1.lan", 65535, "my_host-1.lan:65535" },
        { "*:80", "", 80, "*:80" },
        { ":80", "", 80, "*:80" },
        { "[::1]:443", "::1", 443, "[::1]:443" },
        { "[::]:443", "::", 443, "[::]:443" },
        { "[fe80::1%eth0]:22", "fe80::1%eth0", 22, "[fe80::1%eth0]:22" },
        { "[::ffff:10.0.0.1]:8080", "::ffff:10.0.0.1", 8080, "[::ffff:10.0.0.1]:8080" },
        { "host:080", "host", 80, "host:80" },
    };
    const char *bad[] = {
        "", "host", "host:", "host:0", "host:65536", "host:8a", "host:-1", "host: 80",
        ":", "*", "::1:80", "[::1]80", "[::1]", "[]:80", "[::1:80", "[zz::1]:80",
        "[fe80::1%]:22", "[10.0.0.1]:80", "a b:80", "h/x:80", "host:99999999999999999999",
        "**:80", "[:]:80", "[::::::::1]:1", "[1.2.3.4:]:1", "[1::2::3]:80", "[12345::1]:80",
    };
    addr_conf a;

    CHECK(!a.set);
    for (auto &g : good) {
        a = addr_conf();
        CHECK_MESSAGE(conf_parse_addr(g.s, &a) == 0, g.s);
        CHECK(a.set);
        CHECK(a.host == g.host);
        CHECK(a.port == g.port);
        CHECK(a.text() == g.text);
    }
    for (const char *s : bad) {
        a = addr_conf();
        CHECK_MESSAGE(conf_parse_addr(s, &a) == -1, s);
        CHECK(!a.set);
    }
}

TEST_CASE("conf_parse_flag")
{
    struct { const char *s; unsigned f; } good[] = {
        { "http", FLAG_HTTP }, { "https", FLAG_HTTPS }, { "socks5", FLAG_SOCKS5 },
        { "http https socks5", 7 }, { "http,socks5", 5 }, { "http|https", 3 },
        { "HTTP  ,  Socks5", 5 }, { "https https", FLAG_HTTPS }, { "0", 0 }, { "7", 7 },
        { "5", 5 },
    };
    const char *bad[] = { "", " ", ",|", "8", "-1", "ftp", "http ftp", "http5", "1 2", "7x" };
    unsigned f;

    for (auto &g : good) {
        CHECK_MESSAGE(conf_parse_flag(g.s, &f) == 0, g.s);
        CHECK_MESSAGE(f == g.f, g.s);
    }
    for (const char *s : bad)
        CHECK_MESSAGE(conf_parse_flag(s, &f) == -1, s);
}

TEST_CASE("conf_parse_ports and conf::port_allowed")
{
    conf c;

    REQUIRE(conf_parse_ports("10000-10100,2222", &c.allow_ports) == 0);
    REQUIRE(c.allow_ports.size() == 2);
    CHECK(c.allow_ports[0] == std::make_pair<uint16_t, uint16_t>(10000, 10100));
    CHECK(c.allow_ports[1] == std::make_pair<uint16_t, uint16_t>(2222, 2222));
    CHECK(!c.port_allowed(9999));
    CHECK(c.port_allowed(10000));
    CHECK(c.port_allowed(10050));
    CHECK(c.port_allowed(10100));
    CHECK(!c.port_allowed(10101));
    CHECK(c.port_allowed(2222));
    CHECK(!c.port_allowed(2223));

    REQUIRE(conf_parse_ports(" 80 , 90 - 95 ", &c.allow_ports) == 0);
    CHECK(c.allow_ports.size() == 2);
    CHECK(c.port_allowed(93));
    REQUIRE(conf_parse_ports("1-65535", &c.allow_ports) == 0);
    CHECK(c.port_allowed(1));
    CHECK(c.port_allowed(65535));
    REQUIRE(conf_parse_ports("5-5", &c.allow_ports) == 0);
    CHECK(c.port_allowed(5));

    const char *bad[] = { "", "0", "65536", "10-5", "1-", "-5", "1,,2", "a", "1-2-3", "1,",
                          ",1", "0-10", "1-65536", "80 90" };
    for (const char *s : bad) {
        CHECK_MESSAGE(conf_parse_ports(s, &c.allow_ports) == -1, s);
        CHECK(c.allow_ports.size() == 1);    /* untouched */
    }

    conf none;
    CHECK(!none.port_allowed(80));
}

TEST_CASE("conf_parse_fingerprint")
{
    const char *hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";
    const char *colons = "00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:"
                         "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff";
    std::string a, b;

    REQUIRE(conf_parse_fingerprint(hex, &a) == 0);
    REQUIRE(conf_parse_fingerprint(colons, &b) == 0);
    CHECK(a.size() == 32);
    CHECK(a == b);
    CHECK((unsigned char)a[0] == 0x00);
    CHECK((unsigned char)a[1] == 0x11);
    CHECK((unsigned char)a[15] == 0xff);
    CHECK((unsigned char)a[31] == 0xff);

    std::string h = hex, c = colons;
    const std::string bad[] = {
        "", h.substr(1), h + "0", "zz" + h.substr(2), c.substr(1), c + ":", 
        c.substr(0, 2) + "-" + c.substr(3), h.substr(0, 2) + ":" + h.substr(2),
        c.substr(0, 3) + "g" + c.substr(4),
    };
    for (const std::string &s : bad) {
        std::string out = "same";
        CHECK_MESSAGE(conf_parse_fingerprint(s.c_str(), &out) == -1, s);
        CHECK(out == "same");
    }
}

/* ------------------------------------------------------------ valid files */

TEST_CASE("a full server file")
{
    conf c;
    std::string err = load(
        "; comment\n"
        "# another\n"
        "[server]\n"
        "bind_addr = 0.0.0.0:8091\n"
        "tc = yes\n"
        "cert = tls/server.pem\n"
        "key = /etc/wmproxy/server.key\n"
        "client_ca = ca.pem\n"
        "token = s3cret\n"
        "flag = http socks5\n"
        "username = alice\n"
        "password = p:w#d\n"
        "map_http_bind = :80\n"
        "map_https_bind = [::]:443\n"
        "map_tcp_bind = 127.0.0.1:8002\n"
        "map_proxy_bind = *:8003\n"
        "map_udp_bind = :8004\n"
        "map_cert = a.pem\n"
        "map_key = a.key\n"
        "map_cert = b.pem\n"
        "map_key = b.key\n"
        "allow_ports = 10000-10100,2222\n"
        "max_clients = 100000\n"
        "keepalive_timeout = 30s\n"
        "status_addr = 127.0.0.1:9000\n"
        "pid_file = run/wmproxyd.pid\n"
        "log_file = syslog\n"
        "log_level = DEBUG\n"
        "access_log = /var/log/wm.log\n"
        "heartbeat = 500ms\n"
        "window = 64k\n"
        "max_window = 64k\n"
        "tunnel_buffer = 1g\n"
        "max_streams = 1000000\n"
        "connect_timeout = 1m\n"
        "shutdown_timeout = 1h\n"
        "handshake_timeout = 5\n", &c);
    REQUIRE(err == "");

    char real[PATH_MAX];
    REQUIRE(realpath("/tmp", real));
    std::string dir = real;

    CHECK(c.role_ == ROLE_SERVER);
    CHECK(c.dir == dir);
    CHECK(c.path.compare(0, 12, "/tmp/wmconf_") == 0);
    CHECK(c.bind_addr.set);
    CHECK(c.bind_addr.text() == "0.0.0.0:8091");
    CHECK(c.tc);
    CHECK(c.cert == dir + "/tls/server.pem");
    CHECK(c.key == "/etc/wmproxy/server.key");
    CHECK(c.client_ca == dir + "/ca.pem");
    CHECK(c.token == "s3cret");
    CHECK(c.flag == (FLAG_HTTP | FLAG_SOCKS5));
    CHECK(c.username == "alice");
    CHECK(c.password == "p:w#d");
    CHECK(c.map_http_bind.text() == "*:80");
    CHECK(c.map_https_bind.text() == "[::]:443");
    CHECK(c.map_tcp_bind.text() == "127.0.0.1:8002");
    CHECK(c.map_proxy_bind.text() == "*:8003");
    CHECK(c.map_udp_bind.port == 8004);
    REQUIRE(c.map_certs.size() == 2);
    CHECK(c.map_certs[0].first == dir + "/a.pem");
    CHECK(c.map_certs[0].second == dir + "/a.key");
    CHECK(c.map_certs[1].first == dir + "/b.pem");
    CHECK(c.map_certs[1].second == dir + "/b.key");
    CHECK(c.port_allowed(2222));
    CHECK(c.max_clients == 100000);
    CHECK(c.keepalive_timeout_ms == 30000);
    CHECK(c.status_addr.text() == "127.0.0.1:9000");
    CHECK(c.pid_file == dir + "/run/wmproxyd.pid");
    CHECK(c.log_file == "syslog");
    CHECK(c.log_level == LOG_DEBUG);
    CHECK(c.access_log == "/var/log/wm.log");
    CHECK(c.heartbeat_ms == 500);
    CHECK(c.window == 65536);
    CHECK(c.max_window == 65536);
    CHECK(c.tunnel_buffer == (1ull << 30));
    CHECK(c.max_streams == 1000000);
    CHECK(c.connect_timeout_ms == 60000);
    CHECK(c.shutdown_timeout_ms == 3600000);
    CHECK(c.handshake_timeout_ms == 5000);
    CHECK(c.mappings.empty());
    CHECK(!c.server.set);
}

TEST_CASE("defaults of a minimal server file")
{
    conf c;
    REQUIRE(load(SERVER_MIN, &c) == "");
    CHECK(c.role_ == ROLE_SERVER);
    CHECK(c.bind_addr.host == "");
    CHECK(c.bind_addr.port == 8091);
    CHECK(!c.tc);
    CHECK(c.flag == 0);
    CHECK(c.pid_file == "");
    CHECK(c.log_file == "");
    CHECK(c.log_level == LOG_INFO);
    CHECK(c.heartbeat_ms == 15000);
    CHECK(c.window == 256 * 1024);
    CHECK(c.max_window == 4 * 1024 * 1024);
    CHECK(c.tunnel_buffer == 32ull * 1024 * 1024);
    CHECK(c.max_streams == 4096);
    CHECK(c.max_clients == 256);
    CHECK(c.keepalive_timeout_ms == 75000);
    CHECK(c.allow_ports.empty());
    CHECK(!c.port_allowed(10000));
    CHECK(!c.map_tcp_bind.set);
}

TEST_CASE("a full client file")
{
    conf c;
    std::string err = load(
        "[client]\n"
        "server = Tunnel.Example.com:8091\n"
        "ts = on\n"
        "ca = ca.pem\n"
        "fingerprint = 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\n"
        "verify = false\n"
        "cert = c.pem\n"
        "key = c.key\n"
        "token = s3cret\n"
        "bind_addr = 127.0.0.1:1080\n"
        "reconnect_min = 2s\n"
        "reconnect_max = 2s\n"
        "window = 4k\n"
        "\n"
        "[mapping web]\n"
        "mode = http\n"
        "local_addr = 127.0.0.1:8080\n"
        "domain = WWW.Example.com, *.example.com,www.example.com\n"
        "host = intranet.lan:8080\n"
        "request_header = X-Real-Port: 80\n"
        "request_header = Cookie:\n"
        "response_header = Server : hidden  \n"
        "\n"
        "[mapping site-tls]\n"
        "mode = https\n"
        "local_addr = [::1]:8443\n"
        "domain = www.example.com\n"
        "\n"
        "[mapping ssh]\n"
        "mode = TCP\n"
        "local_addr = 10.0.0.2:22\n"
        "remote_port = 10022\n"
        "proxy_protocol = v2\n"
        "\n"
        "[mapping db]\n"
        "mode = tcp\n"
        "local_addr = 10.0.0.3:5432\n"
        "\n"
        "[mapping dns]\n"
        "mode = udp\n"
        "local_addr = 10.0.0.1:53\n"
        "udp_timeout = 30s\n"
        "remote_port = 10022\n"
        "\n"
        "[mapping lan]\n"
        "mode = proxy\n"
        "flag = socks5\n"
        "username = bob\n"
        "password = pw\n", &c);
    REQUIRE(err == "");

    char real[PATH_MAX];
    REQUIRE(realpath("/tmp", real));
    std::string dir = real;

    CHECK(c.role_ == ROLE_CLIENT);
    CHECK(c.server.host == "Tunnel.Example.com");
    CHECK(c.server.port == 8091);
    CHECK(c.server_name == "Tunnel.Example.com");
    CHECK(c.ts);
    CHECK(c.ca == dir + "/ca.pem");
    CHECK(c.fingerprint.size() == 32);
    CHECK((unsigned char)c.fingerprint[31] == 0xff);
    CHECK(!c.verify);
    CHECK(c.cert == dir + "/c.pem");
    CHECK(c.key == dir + "/c.key");
    CHECK(c.token == "s3cret");
    CHECK(c.bind_addr.text() == "127.0.0.1:1080");
    CHECK(c.reconnect_min_ms == 2000);
    CHECK(c.reconnect_max_ms == 2000);
    CHECK(c.window == 4096);
    REQUIRE(c.mappings.size() == 6);

    const mapping_conf &web = c.mappings[0];
    CHECK(web.name == "web");
    CHECK(web.line == 15);
    CHECK(web.mode == MODE_HTTP);
    CHECK(web.local_addr.text() == "127.0.0.1:8080");
    REQUIRE(web.domains.size() == 2);
    CHECK(web.domains[0] == "www.example.com");
    CHECK(web.domains[1] == "*.example.com");
    CHECK(web.host == "intranet.lan:8080");
    REQUIRE(web.request_headers.size() == 2);
    CHECK(web.request_headers[0] == header_rule("X-Real-Port", "80"));
    CHECK(web.request_headers[1] == header_rule("Cookie", ""));
    REQUIRE(web.response_headers.size() == 1);
    CHECK(web.response_headers[0] == header_rule("Server", "hidden"));
    CHECK(web.proxy_protocol == 0);
    CHECK(web.remote_port == 0);

    CHECK(c.mappings[1].name == "site-tls");
    CHECK(c.mappings[1].mode == MODE_HTTPS);
    CHECK(c.mappings[1].local_addr.text() == "[::1]:8443");

    const mapping_conf &ssh = c.mappings[2];
    CHECK(ssh.mode == MODE_TCP);
    CHECK(ssh.remote_port == 10022);
    CHECK(ssh.proxy_protocol == 2);
    CHECK(c.mappings[3].remote_port == 0);

    const mapping_conf &dns = c.mappings[4];
    CHECK(dns.mode == MODE_UDP);
    CHECK(dns.udp_timeout_ms == 30000);
    CHECK(dns.remote_port == 10022);     /* a UDP port may share a TCP port's number */

    const mapping_conf &lan = c.mappings[5];
    CHECK(lan.mode == MODE_PROXY);
    CHECK(!lan.local_addr.set);
    CHECK(lan.flag == FLAG_SOCKS5);
    CHECK(lan.username == "bob");
    CHECK(lan.password == "pw");
}

TEST_CASE("client defaults, server_name, mapping defaults")
{
    conf c;
    REQUIRE(load(std::string(CLIENT_MIN) + "ts = true\nserver_name = other.example.com\n"
                 "[mapping p]\nmode = proxy\n[mapping u]\nmode = udp\nlocal_addr = h:53\n",
                 &c) == "");
    CHECK(c.server_name == "other.example.com");
    CHECK(c.ts);
    CHECK(c.verify);
    CHECK(c.fingerprint.empty());
    CHECK(c.reconnect_min_ms == 1000);
    CHECK(c.reconnect_max_ms == 60000);
    CHECK(!c.bind_addr.set);
    REQUIRE(c.mappings.size() == 2);
    CHECK(c.mappings[0].flag == (FLAG_HTTP | FLAG_HTTPS | FLAG_SOCKS5));
    CHECK(c.mappings[1].udp_timeout_ms == 60000);

    REQUIRE(load("[client]\nserver = [::1]:8091\n", &c) == "");
    CHECK(c.server_name == "::1");
    CHECK(c.mappings.empty());
}

TEST_CASE("the example configs load")
{
    conf s, c;
    std::string err;

    REQUIRE_MESSAGE(conf_load("conf/server.ini", &s, &err) == 0, err);
    CHECK(s.role_ == ROLE_SERVER);
    CHECK(s.bind_addr.text() == "127.0.0.1:8091");
    CHECK(s.map_tcp_bind.text() == "127.0.0.1:8002");
    CHECK(s.token.empty());

    REQUIRE_MESSAGE(conf_load("conf/client.ini", &c, &err) == 0, err);
    CHECK(c.role_ == ROLE_CLIENT);
    CHECK(c.server.text() == "127.0.0.1:8091");
    REQUIRE(c.mappings.size() == 1);
    CHECK(c.mappings[0].name == "web");
    CHECK(c.mappings[0].mode == MODE_TCP);
    CHECK(c.mappings[0].local_addr.text() == "127.0.0.1:8080");
    CHECK(c.mappings[0].remote_port == 0);
}

/* ----------------------------------------------------------------- syntax */

TEST_CASE("syntax: comments, blanks, indentation, BOM, CRLF, name: value")
{
    conf c;
    REQUIRE(load("\xEF\xBB\xBF; leading BOM\n"
                 "\n"
                 "   # indented comment\n"
                 "[ server ]   ; trailing comment\n"
                 "    bind_addr = :8091   ; inline comment\r\n"
                 "\ttoken = a;b#c\n"
                 "  tc: true\n"
                 "password = x # a comment too\n"
                 "username = u\t#\n", &c) == "");
    CHECK(c.bind_addr.port == 8091);
    CHECK(c.token == "a;b#c");
    CHECK(c.tc);
    CHECK(c.password == "x");
    CHECK(c.username == "u");

    /* an indented key is a key, not the continuation of the value above */
    REQUIRE(load("[server]\nbind_addr = :1\n  token = t\n", &c) == "");
    CHECK(c.bind_addr.port == 1);
    CHECK(c.token == "t");

    /* the last line may lack its newline */
    REQUIRE(load("[server]\nbind_addr = :2", &c) == "");
    CHECK(c.bind_addr.port == 2);
}

TEST_CASE("syntax errors")
{
    CHECK(load("[server]\nbind_addr = :1\njunk\n") ==
          "x.ini:3: expected 'key = value' or '[section]'");
    CHECK(load("[server]\nbind_addr ; = :1\n") ==
          "x.ini:2: expected 'key = value' or '[section]'");
    CHECK(load("[server\nbind_addr = :1\n") == "x.ini:1: missing ']' in section header");
    CHECK(load("[server] x\nbind_addr = :1\n") ==
          "x.ini:1: unexpected text after section header: 'x'");
    CHECK(load("bind_addr = :1\n[server]\n") == "x.ini:1: key 'bind_addr' outside any section");

    /* inih's buffer is 200 bytes: a longer line is refused, not split;
     * 199 characters fit, whether the line ends in LF or CRLF */
    std::string longline = std::string(SERVER_MIN) + "token = " + std::string(300, 'a') + "\n";
    CHECK(load(longline) == "x.ini:3: line too long (at most 199 characters)");
    std::string fits = std::string(SERVER_MIN) + "token = " + std::string(191, 'a');
    CHECK(load(fits + "\n") == "");
    CHECK(load(fits + "\r\n") == "");
    CHECK(load(fits + "a\n") == "x.ini:3: line too long (at most 199 characters)");
    CHECK(load(fits + "a\r\n") == "x.ini:3: line too long (at most 199 characters)");
    CHECK(load(fits + "a") == "x.ini:3: line too long (at most 199 characters)");

    /* a NUL byte does not end the line: it is refused */
    CHECK(load(std::string(SERVER_MIN) + std::string("token = secret\0junk\n", 20)) ==
          "x.ini:3: NUL byte in line");
    CHECK(load(std::string(SERVER_MIN) + std::string("token = a\0", 10) + std::string(250, 'b') + "\n") ==
          "x.ini:3: NUL byte in line");

    /* ' #' and ' ;' start a comment, also in the key */
    CHECK(load("[server]\nbind_addr #= :1\n") == "x.ini:2: expected 'key = value' or '[section]'");
}

TEST_CASE("file errors")
{
    conf c;
    std::string err;

    CHECK(conf_load("/nonexistent/wm.ini", &c, &err) == -1);
    CHECK(err == "/nonexistent/wm.ini: cannot open: No such file or directory");
    CHECK(conf_load("/tmp", &c, &err) == -1);
    CHECK(err == "/tmp: read: Is a directory");
}

/* ----------------------------------------------------------------- roles */

TEST_CASE("exactly one role per file")
{
    CHECK(load("") == "x.ini:1: no [server] or [client] section");
    CHECK(load("; only a comment\n\n") == "x.ini:1: no [server] or [client] section");
    CHECK(load(std::string(SERVER_MIN) + "\n[client]\nserver = h:1\n") ==
          "x.ini:4: [client] in a file that already has [server] (line 1): one role per file");
    CHECK(load(std::string(CLIENT_MIN) + "[server]\nbind_addr = :1\n") ==
          "x.ini:3: [server] in a file that already has [client] (line 1): one role per file");
    CHECK(load(std::string(SERVER_MIN) + "[server]\n") ==
          "x.ini:3: duplicate section [server] (first at line 1)");
    CHECK(load("[mapping a]\nmode = proxy\n") == "x.ini:1: no [server] or [client] section");
}

TEST_CASE("sections")
{
    CHECK(load(std::string(SERVER_MIN) + "[servers]\n") == "x.ini:3: unknown section [servers]");
    CHECK(load(std::string(SERVER_MIN) + "[]\n") == "x.ini:3: unknown section []");
    CHECK(load(std::string(CLIENT_MIN) + "[mappingweb]\n") ==
          "x.ini:3: unknown section [mappingweb]");
    CHECK(load(std::string(SERVER_MIN) + "[mapping web]\nmode = proxy\n") ==
          "x.ini:3: [mapping web] in a server file: mappings belong in a client file");
    CHECK(load("[mapping web]\nmode = proxy\n[server]\nbind_addr = :1\n") ==
          "x.ini:3: [server] in a file with [mapping] sections (line 1): mappings belong in "
          "a client file");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping]\n") ==
          "x.ini:3: missing name in [mapping NAME]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping   ]\n") ==
          "x.ini:3: missing name in [mapping NAME]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a b]\n") ==
          "x.ini:3: bad mapping name 'a b': use letters, digits, '-', '_' and '.', at most 64");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping " + std::string(65, 'n') + "]\n")
          .find("x.ini:3: bad mapping name") == 0);
    CHECK(load(std::string(CLIENT_MIN) + "[mapping " + std::string(64, 'n') +
               "]\nmode = proxy\n") == "");
    CHECK(load(std::string(CLIENT_MIN) +
               "[mapping p]\nmode = proxy\n\n[mapping q]\nmode = udp\nlocal_addr = h:1\n"
               "[mapping p]\nmode = proxy\n") ==
          "x.ini:9: duplicate [mapping p] (first at line 3)");
    /* a mapping may come before [client] */
    CHECK(load("[mapping p]\nmode = proxy\n" + std::string(CLIENT_MIN)) == "");
}

/* ------------------------------------------------------------------ keys */

TEST_CASE("unknown and repeated keys")
{
    CHECK(load("[server]\n\n\n\n\n\nbnd_addr = :1\n") ==
          "x.ini:7: unknown key 'bnd_addr' in [server]");
    /* a key of the other role, or of a mapping, is unknown here */
    CHECK(load(std::string(SERVER_MIN) + "ts = true\n") == "x.ini:3: unknown key 'ts' in [server]");
    CHECK(load(std::string(SERVER_MIN) + "server = h:1\n") ==
          "x.ini:3: unknown key 'server' in [server]");
    CHECK(load(std::string(CLIENT_MIN) + "flag = http\n") ==
          "x.ini:3: unknown key 'flag' in [client]");
    CHECK(load(std::string(CLIENT_MIN) + "map_tcp_bind = :1\n") ==
          "x.ini:3: unknown key 'map_tcp_bind' in [client]");
    CHECK(load(std::string(CLIENT_MIN) + "local_addr = h:1\n") ==
          "x.ini:3: unknown key 'local_addr' in [client]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = tcp\nheartbeat = 1s\n") ==
          "x.ini:5: unknown key 'heartbeat' in [mapping a]");
    CHECK(load(std::string(SERVER_MIN) + "Token = x\n") ==
          "x.ini:3: unknown key 'Token' in [server]");

    CHECK(load(std::string(SERVER_MIN) + "tc = on\nbind_addr = :2\n") ==
          "x.ini:4: duplicate key 'bind_addr' in [server] (first at line 2)");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = tcp\nmode = udp\n") ==
          "x.ini:5: duplicate key 'mode' in [mapping a] (first at line 4)");
    CHECK(load(std::string(SERVER_MIN) + "map_cert = a\nmap_key = a\nmap_cert = b\nmap_key = b\n")
          == "");
    CHECK(load(std::string(CLIENT_MIN) +
               "[mapping a]\nmode = http\nlocal_addr = h:1\ndomain = a\n"
               "request_header = A: 1\nrequest_header = B: 2\n"
               "response_header = C: 3\nresponse_header = D: 4\n") == "");
    /* repeatable only where SPEC says so */
    CHECK(load(std::string(CLIENT_MIN) + "token = a\ntoken = b\n") ==
          "x.ini:4: duplicate key 'token' in [client] (first at line 3)");

    CHECK(load(std::string(SERVER_MIN) + "token =\n") == "x.ini:3: empty value for token");
    CHECK(load(std::string(SERVER_MIN) + "pid_file = \n") == "x.ini:3: empty value for pid_file");
}

/* ---------------------------------------------------------------- values */

TEST_CASE("bad values name key, value and line")
{
    std::string s = SERVER_MIN, c = CLIENT_MIN;

    CHECK(load(s + "heartbeat = abc\n") ==
          "x.ini:3: bad duration 'abc' for heartbeat: use e.g. 500ms, 30s, 5m or 1h");
    CHECK(load(s + "heartbeat = 0\n") ==
          "x.ini:3: bad duration '0' for heartbeat: must be greater than 0");
    CHECK(load(s + "connect_timeout = 0ms\n") ==
          "x.ini:3: bad duration '0ms' for connect_timeout: must be greater than 0");
    CHECK(load(s + "shutdown_timeout = 0s\n").find("x.ini:3: bad duration") == 0);
    CHECK(load(s + "handshake_timeout = 0\n").find("x.ini:3: bad duration") == 0);
    CHECK(load(s + "keepalive_timeout = 0\n").find("x.ini:3: bad duration") == 0);
    CHECK(load(c + "reconnect_min = 0\n").find("x.ini:3: bad duration") == 0);
    CHECK(load(s + "tc = maybe\n") ==
          "x.ini:3: bad boolean 'maybe' for tc: use true/false, yes/no, on/off or 1/0");
    CHECK(load(s + "log_level = verbose\n") ==
          "x.ini:3: bad log level 'verbose' for log_level: use error, warn, info or debug");
    CHECK(load(s + "window = 4k\nwindow = 1\n").find("x.ini:4: duplicate key") == 0);

    CHECK(load(s + "window = 1m2\n") ==
          "x.ini:3: bad size '1m2' for window: use e.g. 4096, 64k, 16m or 1g");
    CHECK(load(s + "window = 4095\n") == "x.ini:3: bad size '4095' for window: must be at least 4k");
    CHECK(load(s + "window = 4096\nmax_window = 4096\n") == "");
    CHECK(load(s + "max_window = 2g\n") ==
          "x.ini:3: bad size '2g' for max_window: must be at most 1g");
    CHECK(load(s + "tunnel_buffer = 3k\n").find("x.ini:3: bad size '3k'") == 0);

    CHECK(load(s + "max_streams = 0\n") ==
          "x.ini:3: bad number '0' for max_streams: must be a whole number from 1 to 1000000");
    CHECK(load(s + "max_streams = 1000001\n").find("x.ini:3: bad number") == 0);
    CHECK(load(s + "max_streams = 1000000\n") == "");
    CHECK(load(s + "max_streams = 1\n") == "");
    CHECK(load(s + "max_streams = 10k\n").find("x.ini:3: bad number") == 0);
    CHECK(load(s + "max_clients = 100001\n") ==
          "x.ini:3: bad number '100001' for max_clients: must be a whole number from 1 to 100000");
    CHECK(load(s + "max_clients = 100000\n") == "");

    CHECK(load("[server]\nbind_addr = 8091\n") ==
          "x.ini:2: bad address '8091' for bind_addr: use host:port, [v6]:port, *:port or "
          ":port, port 1-65535");
    CHECK(load(s + "map_tcp_bind = :0\n").find("x.ini:3: bad address ':0' for map_tcp_bind") == 0);
    CHECK(load("[client]\nserver = :8091\n") ==
          "x.ini:2: bad address ':8091' for server: a host is required");
    CHECK(load("[client]\nserver = *:8091\n") ==
          "x.ini:2: bad address '*:8091' for server: a host is required");
    CHECK(load(c + "[mapping a]\nmode = tcp\nlocal_addr = *:80\n") ==
          "x.ini:5: bad address '*:80' for local_addr: a host is required");

    CHECK(load(s + "flag = http ftp\n") ==
          "x.ini:3: bad flag 'http ftp' for flag: use words http, https, socks5 or a number 0-7");
    CHECK(load(s + "flag = 8\n").find("x.ini:3: bad flag '8'") == 0);
    CHECK(load(s + "allow_ports = 100-10\n") ==
          "x.ini:3: bad port list '100-10' for allow_ports: use ports 1-65535 and ranges lo-hi, "
          "e.g. 10000-10100,2222");
    CHECK(load(s + "username = a:b\npassword = x\n") ==
          "x.ini:3: bad value 'a:b' for username: a user name cannot contain ':'");
    CHECK(load(s + "password = " + std::string(180, 'p') + "\nusername = u\n") == "");

    CHECK(load(c + "fingerprint = abcd\n") ==
          "x.ini:3: bad fingerprint 'abcd' for fingerprint: use the SHA-256 as 64 hex digits, "
          "optionally AB:CD:...");
    CHECK(load(c + "verify = nope\n").find("x.ini:3: bad boolean 'nope' for verify") == 0);
    CHECK(load(c + "server_name = a b\n") == "x.ini:3: bad host name 'a b' for server_name");
}

TEST_CASE("bad mapping values")
{
    std::string c = std::string(CLIENT_MIN) + "[mapping m]\n";   /* header on line 3 */
    std::string tcp = c + "mode = tcp\nlocal_addr = h:1\n";      /* next line is 6 */
    std::string http = c + "mode = http\nlocal_addr = h:1\n";

    CHECK(load(c + "mode = ftp\n") ==
          "x.ini:4: bad mode 'ftp' for mode: use http, https, tcp, udp or proxy");
    CHECK(load(tcp + "remote_port = 0\n") ==
          "x.ini:6: bad number '0' for remote_port: must be a whole number from 1 to 65535");
    CHECK(load(tcp + "remote_port = 65536\n").find("x.ini:6: bad number") == 0);
    CHECK(load(tcp + "remote_port = 65535\n") == "");
    CHECK(load(tcp + "proxy_protocol = v3\n") ==
          "x.ini:6: bad PROXY protocol version 'v3' for proxy_protocol: use v1 or v2");
    CHECK(load(tcp + "proxy_protocol = V1\n") == "");
    CHECK(load(http + "domain = a..b\n") == "x.ini:6: bad domain name 'a..b' for domain");
    CHECK(load(http + "domain = a.com,\n") == "x.ini:6: bad domain name '' for domain");
    CHECK(load(http + "domain = a.*.com\n") == "x.ini:6: bad domain name 'a.*.com' for domain");
    CHECK(load(http + "domain = *\n") == "x.ini:6: bad domain name '*' for domain");
    CHECK(load(http + "domain = a.com:80\n") == "x.ini:6: bad domain name 'a.com:80' for domain");
    CHECK(load(http + "domain = .a.com\n") == "x.ini:6: bad domain name '.a.com' for domain");
    CHECK(load(http + "domain = a.com.\n") == "x.ini:6: bad domain name 'a.com.' for domain");
    CHECK(load(http + "domain = " + std::string(64, 'a') + ".com\n")
          .find("x.ini:6: bad domain name") == 0);
    CHECK(load(http + "domain = " + std::string(63, 'a') + ".com\n") == "");
    CHECK(load(http + "domain = a\nrequest_header = NoColon\n") ==
          "x.ini:7: bad header 'NoColon' for request_header: use 'Name: value'");
    CHECK(load(http + "domain = a\nresponse_header = Bad Name: x\n") ==
          "x.ini:7: bad header 'Bad Name: x' for response_header: a header name is letters, "
          "digits and !#$%&'*+-.^_`|~");
    CHECK(load(http + "domain = a\nrequest_header = : x\n").find("x.ini:7: bad header") == 0);
    for (const char *f : {"Host: x", "content-length: 0", "Transfer-Encoding:", "Connection: close",
                          "Keep-Alive: 1", "Proxy-Connection: x", "TE: trailers", "Upgrade: h2c"}) {
        INFO(f);
        CHECK(load(http + "domain = a\nresponse_header = " + f + "\n") ==
              std::string("x.ini:7: bad header '") + f + "' for response_header: Host (set it with host), "
              "Content-Length, Transfer-Encoding, Connection, Keep-Alive, Proxy-Connection, TE and Upgrade "
              "are the proxy's own");
    }
    CHECK(load(http + "domain = a\nrequest_header = Expect:\n") == "");
    CHECK(load(http + "domain = a\nrequest_header = X: a\x01" "b\n") ==
          "x.ini:7: bad header 'X: a?b' for request_header: control characters are not "
          "allowed");
    CHECK(load(http + "domain = a\nhost = a b\n") == "x.ini:7: bad host 'a b' for host");
    CHECK(load(c + "mode = udp\nlocal_addr = h:1\nudp_timeout = 0\n")
          .find("x.ini:6: bad duration '0' for udp_timeout") == 0);
}

/* -------------------------------------------------------- required keys */

TEST_CASE("missing required keys name the section's line")
{
    CHECK(load("; server\n[server]\ntc = true\n") ==
          "x.ini:2: missing required key 'bind_addr' in [server]");
    CHECK(load("[client]\nts = true\n") == "x.ini:1: missing required key 'server' in [client]");
    /* a section is checked when it ends, before the next one starts */
    CHECK(load("[server]\ntc = true\n[nope]\n") ==
          "x.ini:1: missing required key 'bind_addr' in [server]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nlocal_addr = h:1\n") ==
          "x.ini:3: missing required key 'mode' in [mapping a]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = tcp\n[mapping b]\nmode = proxy\n") ==
          "x.ini:3: missing required key 'local_addr' in [mapping a]");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = udp\n")
          .find("x.ini:3: missing required key 'local_addr'") == 0);
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = http\nlocal_addr = h:1\n") ==
          "x.ini:3: missing required key 'domain' in [mapping a] (http mappings are routed by "
          "it)");
    CHECK(load(std::string(CLIENT_MIN) + "[mapping a]\nmode = https\nlocal_addr = h:1\n")
          .find("x.ini:3: missing required key 'domain' in [mapping a]") == 0);
}

TEST_CASE("keys that go together")
{
    std::string s = SERVER_MIN, c = CLIENT_MIN;

    std::string stls = s + "tc = true\n", ctls = c + "ts = true\n";
    CHECK(load(stls + "cert = a.pem\n") == "x.ini:4: cert set without key");
    CHECK(load(stls + "key = a.key\n") == "x.ini:4: key set without cert");
    CHECK(load(ctls + "cert = a.pem\n") == "x.ini:4: cert set without key");
    CHECK(load(c + "tc = 1\n").find("unknown key 'tc'") != std::string::npos);
    CHECK(load(ctls + "key = a.key\ncert = a.pem\n") == "");
    /* TLS keys where TLS is off would check nothing: refused */
    CHECK(load(s + "client_ca = ca.pem\n") == "x.ini:3: client_ca needs tc = true (it configures TLS, which is off)");
    CHECK(load(s + "cert = a.pem\nkey = a.key\n") == "x.ini:3: cert needs tc = true (it configures TLS, which is off)");
    CHECK(load(s + "tc = false\nkey = a.key\n") == "x.ini:4: key needs tc = true (it configures TLS, which is off)");
    CHECK(load(c + "fingerprint = " + std::string(64, 'a') + "\n") ==
          "x.ini:3: fingerprint needs ts = true (it configures TLS, which is off)");
    CHECK(load(c + "ca = ca.pem\n") == "x.ini:3: ca needs ts = true (it configures TLS, which is off)");
    CHECK(load(c + "verify = false\n") == "x.ini:3: verify needs ts = true (it configures TLS, which is off)");
    CHECK(load(c + "server_name = x\n") == "x.ini:3: server_name needs ts = true (it configures TLS, which is off)");
    CHECK(load(s + "map_cert = a.pem\nmap_key = a.key\n") == "");   /* map_https_bind TLS, not tc */
    CHECK(load(s + "username = u\n") == "x.ini:3: username set without password");
    CHECK(load(s + "password = p\n") == "x.ini:3: password set without username");
    CHECK(load(c + "[mapping p]\nmode = proxy\nusername = u\n") ==
          "x.ini:5: username set without password");

    CHECK(load(s + "map_cert = a.pem\nmap_key = a.key\nmap_cert = b.pem\n") ==
          "x.ini:5: map_cert without a matching map_key (map_cert and map_key go in pairs)");
    CHECK(load(s + "map_key = a.key\n") ==
          "x.ini:3: map_key without a matching map_cert (map_cert and map_key go in pairs)");
    CHECK(load(s + "map_cert = a\nmap_cert = b\nmap_key = a\nmap_cert = c\nmap_key = b\n") ==
          "x.ini:6: map_cert without a matching map_key (map_cert and map_key go in pairs)");
}

TEST_CASE("sizes and durations that bound each other")
{
    std::string s = SERVER_MIN, c = CLIENT_MIN;

    CHECK(load(s + "window = 8m\n") == "x.ini:3: max_window 4m is smaller than window 8m");
    CHECK(load(s + "max_window = 64k\nwindow = 128k\n") ==
          "x.ini:3: max_window 64k is smaller than window 128k");
    CHECK(load(s + "max_window = 64m\n") ==
          "x.ini:3: tunnel_buffer 32m is smaller than max_window 64m");
    CHECK(load(s + "tunnel_buffer = 1m\n") ==
          "x.ini:3: tunnel_buffer 1m is smaller than max_window 4m");
    CHECK(load(s + "window = 1m\nmax_window = 1m\ntunnel_buffer = 1m\n") == "");
    CHECK(load(c + "window = 5000\nmax_window = 4999\n") ==
          "x.ini:4: max_window 4999 is smaller than window 5000");
    CHECK(load(c + "reconnect_min = 2m\n") ==
          "x.ini:3: reconnect_max 1m is smaller than reconnect_min 2m");
    CHECK(load(c + "reconnect_max = 500ms\n") ==
          "x.ini:3: reconnect_max 500ms is smaller than reconnect_min 1s");
}

TEST_CASE("mapping keys must fit the mode, given before or after it")
{
    std::string c = std::string(CLIENT_MIN) + "[mapping m]\n";

    CHECK(load(c + "mode = http\nlocal_addr = h:1\ndomain = a\nproxy_protocol = v1\n") ==
          "x.ini:7: proxy_protocol does not apply to a http mapping (tcp only)");
    CHECK(load(c + "proxy_protocol = v1\nlocal_addr = h:1\nmode = http\ndomain = a\n") ==
          "x.ini:4: proxy_protocol does not apply to a http mapping (tcp only)");
    CHECK(load(c + "mode = tcp\nlocal_addr = h:1\ndomain = a\n") ==
          "x.ini:6: domain does not apply to a tcp mapping (http and https only)");
    CHECK(load(c + "mode = udp\nlocal_addr = h:1\nproxy_protocol = v2\n")
          .find("x.ini:6: proxy_protocol does not apply to a udp mapping") == 0);
    CHECK(load(c + "mode = https\nlocal_addr = h:1\ndomain = a\nremote_port = 1\n") ==
          "x.ini:7: remote_port does not apply to a https mapping (tcp and udp only)");
    CHECK(load(c + "mode = tcp\nlocal_addr = h:1\nudp_timeout = 5s\n") ==
          "x.ini:6: udp_timeout does not apply to a tcp mapping (udp only)");
    CHECK(load(c + "mode = tcp\nlocal_addr = h:1\nhost = x\n").find("x.ini:6: host does") == 0);
    CHECK(load(c + "mode = tcp\nlocal_addr = h:1\nrequest_header = A: b\n")
          .find("x.ini:6: request_header does") == 0);
    CHECK(load(c + "mode = tcp\nlocal_addr = h:1\nflag = http\n") ==
          "x.ini:6: flag does not apply to a tcp mapping (proxy only)");
    CHECK(load(c + "username = u\npassword = p\nmode = http\n") ==
          "x.ini:4: username does not apply to a http mapping (proxy only)");
    CHECK(load(c + "mode = proxy\nlocal_addr = h:1\n") ==
          "x.ini:5: local_addr does not apply to a proxy mapping (all modes but proxy)");
}

TEST_CASE("mappings of one client must not clash")
{
    std::string c = std::string(CLIENT_MIN);

    CHECK(load(c + "[mapping a]\nmode = http\nlocal_addr = h:1\ndomain = x.com\n"
                   "[mapping b]\nmode = http\nlocal_addr = h:2\ndomain = y.com, X.com\n") ==
          "x.ini:10: domain 'x.com' is already served by [mapping a] (line 3)");
    /* the same name for http and https is two services */
    CHECK(load(c + "[mapping a]\nmode = http\nlocal_addr = h:1\ndomain = x.com\n"
                   "[mapping b]\nmode = https\nlocal_addr = h:2\ndomain = x.com\n") == "");
    CHECK(load(c + "[mapping a]\nmode = tcp\nlocal_addr = h:1\n"
                   "[mapping b]\nmode = tcp\nlocal_addr = h:2\n") ==
          "x.ini:6: a second tcp mapping without remote_port: [mapping a] (line 3) already "
          "takes map_tcp_bind");
    CHECK(load(c + "[mapping a]\nmode = udp\nlocal_addr = h:1\n"
                   "[mapping b]\nmode = udp\nlocal_addr = h:2\n")
          .find("x.ini:6: a second udp mapping without remote_port") == 0);
    CHECK(load(c + "[mapping a]\nmode = tcp\nlocal_addr = h:1\nremote_port = 10000\n"
                   "[mapping b]\nmode = tcp\nlocal_addr = h:2\nremote_port = 10000\n") ==
          "x.ini:10: remote_port 10000 is already used by [mapping a] (line 3)");
    CHECK(load(c + "[mapping a]\nmode = tcp\nlocal_addr = h:1\n"
                   "[mapping b]\nmode = udp\nlocal_addr = h:2\n") == "");
    CHECK(load(c + "[mapping a]\nmode = proxy\n[mapping b]\nmode = proxy\n") ==
          "x.ini:5: a second proxy mapping: [mapping a] (line 3) already takes map_proxy_bind");
}

TEST_CASE("a failed load leaves *out alone")
{
    conf c;
    REQUIRE(load("[server]\nbind_addr = :7\n", &c) == "");
    CHECK(load("[server]\nbind_addr = :8\nbogus = 1\n", &c) != "");
    CHECK(c.bind_addr.port == 7);
    CHECK(c.role_ == ROLE_SERVER);
}

TEST_CASE("the first error is the one reported")
{
    CHECK(load("[server]\nbind_addr = x\nbogus = 1\n[client]\n").find("x.ini:2: ") == 0);
    CHECK(load("[server]\njunk\nbogus = 1\n") ==
          "x.ini:2: expected 'key = value' or '[section]'");
}


TEST_CASE("a mapping whose registration would not fit is refused")
{
    std::string many = std::string(CLIENT_MIN) + "[mapping web]\nmode = http\nlocal_addr = h:80\ndomain = a.example\n";
    char line[32];
    for (int i = 0; i < 100; i++) {
        snprintf(line, sizeof line, "X-H%03d: ", i);
        many += "request_header = " + std::string(line) + std::string(160, 'v') + "\n";
    }
    std::string err = load(many);
    CHECK(err.find("x.ini:3: [mapping web]: its domains and header rules take ") == 0);
    CHECK(err.find("over the 16384 a registration may carry") != std::string::npos);
    /* 90 such rules fit */
    size_t cut = 0;
    for (int i = 0; i < 90 + 7; i++)
        cut = many.find('\n', cut) + 1;
    CHECK(load(many.substr(0, cut)) == "");
}
