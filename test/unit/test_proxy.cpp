/*
 * test_proxy.cpp - the forward proxy's pure helpers: protocol sniffing from
 * the first bytes at every length, and Basic proxy credentials.
 */
#include <doctest/doctest.h>

#include "proxy.h"

#include <string.h>

#include <string>

static proxy_kind sniff(const std::string &s, size_t len)
{
    /* a heap copy of exactly len bytes: ASan flags any read past it */
    uint8_t *p = new uint8_t[len ? len : 1];
    memcpy(p, s.data(), len);
    proxy_kind k = proxy_sniff(p, len);
    delete[] p;
    return k;
}

/* every prefix shorter than decide is partial, then kind for good */
static void prefixes(const std::string &s, size_t decide, proxy_kind kind)
{
    for (size_t n = 0; n <= s.size(); n++) {
        INFO("prefix " << n << " of " << s);
        CHECK(sniff(s, n) == (n < decide ? PK_PARTIAL : kind));
    }
}

TEST_CASE("proxy_sniff: each protocol from its first bytes")
{
    prefixes(std::string("\x05\x01\x00", 3), 1, PK_SOCKS5);
    prefixes("WMPX\x01", 4, PK_TUNNEL);
    prefixes("CONNECT example.com:443 HTTP/1.1\r\n", 8, PK_CONNECT);
    prefixes("GET http://example.com/ HTTP/1.1\r\n", 4, PK_HTTP);
    prefixes("OPTIONS * HTTP/1.1\r\n", 8, PK_HTTP);
    /* "C" could still become CONNECT, then it is just another method */
    prefixes("COPY http://h/ HTTP/1.1\r\n", 5, PK_HTTP);
    prefixes("CONNECTX h HTTP/1.1\r\n", 9, PK_HTTP);
}

TEST_CASE("proxy_sniff: garbage is told at the first byte that shows it")
{
    prefixes(std::string("\x16\x03\x01\x02\x00", 5), 1, PK_UNKNOWN);    /* a TLS ClientHello */
    prefixes("get http://h/ HTTP/1.1", 1, PK_UNKNOWN);                  /* methods are upper case */
    prefixes(" GET", 1, PK_UNKNOWN);
    prefixes("GE\tT", 3, PK_UNKNOWN);
    prefixes("WMPQ ", 5, PK_HTTP);                                      /* could be a method */
    prefixes(std::string("WMP\x01", 4), 4, PK_UNKNOWN);
    prefixes("ABCDEFGHIJKLMNOPQRST", 16, PK_UNKNOWN);                   /* no method is that long */
}

static bool basic(const char *v, const char *user, const char *pass)
{
    return proxy_auth_basic(v, strlen(v), user, pass);
}

TEST_CASE("proxy_auth_basic")
{
    /* base64("user:pa:ss") = dXNlcjpwYTpzcw== ; base64("user:pass") = dXNlcjpwYXNz */
    CHECK(basic("Basic dXNlcjpwYTpzcw==", "user", "pa:ss"));
    CHECK(basic("basic   dXNlcjpwYTpzcw==", "user", "pa:ss"));
    CHECK(basic("BASIC dXNlcjpwYXNz", "user", "pass"));
    CHECK_FALSE(basic("Basic dXNlcjpwYXNz", "user", "pas"));
    CHECK_FALSE(basic("Basic dXNlcjpwYXNz", "use", "rpass"));
    CHECK_FALSE(basic("Basic dXNlcjpwYXNz", "user", "passs"));
    CHECK_FALSE(basic("Basic dXNlcjpwYTpzcw==", "user:pa", "ss"));   /* split at the first ':' */
    CHECK_FALSE(basic("Bearer dXNlcjpwYXNz", "user", "pass"));
    CHECK_FALSE(basic("Basic", "user", "pass"));
    CHECK_FALSE(basic("Basic ", "user", "pass"));
    CHECK_FALSE(basic("Basic dXNlcjpwYXN", "user", "pass"));          /* not a multiple of 4 */
    CHECK_FALSE(basic("Basic dXNl*jpwYXNz", "user", "pass"));         /* not base64 */
    CHECK_FALSE(basic("Basic dXNlcnBhc3M=", "user", "pass"));         /* "userpass": no ':' */
    /* base64("user:") = dXNlcjo= : an empty password */
    CHECK(basic("Basic dXNlcjo=", "user", ""));
    CHECK_FALSE(basic("Basic dXNlcjo=", "user", "x"));
    /* over 512 characters of base64 is refused before decoding */
    std::string big = "Basic " + std::string(516, 'A');
    CHECK_FALSE(proxy_auth_basic(big.data(), big.size(), "user", "pass"));
}
