/*
 * conf.h - the configuration of one role, as read from its INI file.
 *
 * conf_load() parses the file with inih and validates every key of SPEC
 * section 3. Nothing here touches the network: addresses are kept as text
 * (host and port) and resolved by whoever binds or connects.
 */
#ifndef WMPROXY_CONF_H
#define WMPROXY_CONF_H

#include <stdint.h>
#include <string>
#include <utility>
#include <vector>

enum role { ROLE_NONE = 0, ROLE_SERVER, ROLE_CLIENT };
enum map_mode { MODE_HTTP = 1, MODE_HTTPS, MODE_TCP, MODE_UDP, MODE_PROXY };
enum log_level_t { LOG_ERROR = 0, LOG_WARN, LOG_INFO, LOG_DEBUG };

/* forward-proxy protocol bits, the wmproxy numbers */
enum { FLAG_HTTP = 1, FLAG_HTTPS = 2, FLAG_SOCKS5 = 4 };

/* "host:port", "[v6]:port", "*:port" or ":port". An empty host (or "*")
 * means every address, IPv4 and IPv6. set is false when the key is absent. */
struct addr_conf {
    bool set = false;
    std::string host;           /* without brackets; empty = any */
    uint16_t port = 0;
    std::string text() const;   /* as an operator wrote it, for log lines */
};

typedef std::pair<std::string, std::string> header_rule; /* name, value ("" = remove) */

struct mapping_conf {
    std::string name;
    int line = 0;                       /* of the [mapping NAME] header */
    map_mode mode = MODE_TCP;
    addr_conf local_addr;
    std::vector<std::string> domains;   /* lower case */
    uint16_t remote_port = 0;           /* 0: use map_tcp_bind/map_udp_bind */
    uint32_t udp_timeout_ms = 60000;
    std::string host;
    std::vector<header_rule> request_headers, response_headers;
    int proxy_protocol = 0;             /* 0 none, 1 v1, 2 v2 */
    unsigned flag = FLAG_HTTP | FLAG_HTTPS | FLAG_SOCKS5;
    std::string username, password;
    /* a client's reload keeps each mapping at its index (streams in flight
     * refer to it): one the new file drops stays behind, marked removed */
    bool removed = false;
};

struct conf {
    std::string path;                   /* as given with -f */
    std::string dir;                    /* directory of path, for relative paths */
    role role_ = ROLE_NONE;
    std::vector<std::pair<std::string, int>> key_lines;   /* the role section's keys and lines, in order */

    /* both roles */
    std::string pid_file, log_file, access_log;   /* absolute or empty; log_file may be "syslog" */
    log_level_t log_level = LOG_INFO;
    uint32_t heartbeat_ms = 15000;
    uint32_t window = 256 * 1024;
    uint32_t max_window = 4 * 1024 * 1024;
    uint64_t tunnel_buffer = 32ull * 1024 * 1024;
    uint32_t max_streams = 4096;
    uint32_t connect_timeout_ms = 10000;
    uint32_t shutdown_timeout_ms = 10000;
    uint32_t handshake_timeout_ms = 10000;

    /* [server]; bind_addr, cert, key, token, flag, username, password are
     * shared with [client] where SPEC gives the client the same key */
    addr_conf bind_addr;
    bool tc = false;
    std::string cert, key, client_ca, token;
    unsigned flag = 0;
    std::string username, password;
    addr_conf map_http_bind, map_https_bind, map_tcp_bind, map_proxy_bind, map_udp_bind;
    std::vector<std::pair<std::string, std::string>> map_certs;   /* cert, key */
    std::vector<std::pair<uint16_t, uint16_t>> allow_ports;       /* inclusive ranges */
    uint32_t max_clients = 256;
    uint32_t keepalive_timeout_ms = 75000;
    addr_conf status_addr;

    /* [client] */
    addr_conf server;
    bool ts = false;
    std::string server_name;            /* defaults to server.host */
    std::string ca;
    std::string fingerprint;            /* 32 raw bytes, or empty */
    bool verify = true;
    uint32_t reconnect_min_ms = 1000, reconnect_max_ms = 60000;
    std::vector<mapping_conf> mappings;

    bool port_allowed(uint16_t port) const;
};

/*
 * Read and validate the file at path into *out.
 * Returns 0 on success; -1 with *err set to "FILE:LINE: message" (or
 * "FILE: message" when no line applies, e.g. the file cannot be opened).
 * *out is left untouched on failure, so a reload can keep the old one.
 */
int conf_load(const char *path, conf *out, std::string *err);
/* The REGISTER a client sends for mapping mc (its domains and the http
 * rules the server applies). conf_load() refuses a mapping whose encoded
 * REGISTER would exceed the protocol's REGISTER_MAX. */
struct register_msg;
void conf_register_msg(const mapping_conf &mc, register_msg *m);
/* What a client's file may hold, for the server to check what a client
 * registers: a mapping name, and a list of domains ("a.example,*.b"). */
bool conf_valid_mapping_name(const std::string &name);
/* "http", "https", "tcp", "udp", "proxy"; "?" for anything else. */
const char *conf_mode_name(unsigned mode);
bool conf_valid_domains(const std::string &list);

/* Value parsers, exposed for the tests. Each returns 0 or -1 on bad input. */
int conf_parse_bool(const char *s, bool *out);
int conf_parse_duration_ms(const char *s, uint32_t *out);   /* 500ms 30s 5m 1h, bare = s */
int conf_parse_size(const char *s, uint64_t *out);          /* 4096 64k 16m 1g */
int conf_parse_addr(const char *s, addr_conf *out);
int conf_parse_flag(const char *s, unsigned *out);          /* "http https socks5" or 0..7 */
int conf_parse_ports(const char *s, std::vector<std::pair<uint16_t, uint16_t>> *out);
int conf_parse_fingerprint(const char *s, std::string *out); /* AB:CD.. or hex -> 32 bytes */

#endif
