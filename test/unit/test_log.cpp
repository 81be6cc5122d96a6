/*
 * test_log.cpp - line format, levels, truncation, reopen, access log.
 */
#include <doctest/doctest.h>

#include "log.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <string>
#include <vector>

static std::string slurp(const char *path)
{
    std::string s;
    char buf[4096];
    size_t n;
    FILE *fp = fopen(path, "r");

    if (!fp)
        return "(missing)";
    while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
        s.append(buf, n);
    fclose(fp);
    return s;
}

/* "2026-11-29T10:00:00.123Z " */
static bool is_stamp(const std::string &s)
{
    const char *shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    if (s.size() < 25)
        return false;
    for (size_t i = 0; i < 25; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    }
    return true;
}

/* The lines of the file, each without its '\n'. */
static std::vector<std::string> lines_of(const std::string &text)
{
    std::vector<std::string> out;
    size_t start = 0, nl;

    while ((nl = text.find('\n', start)) != std::string::npos) {
        out.push_back(text.substr(start, nl - start));
        start = nl + 1;
    }
    CHECK(start == text.size());    /* every line ends in '\n' */
    return out;
}

struct tmp_path {
    char path[64];
    tmp_path()
    {
        strcpy(path, "/tmp/wmlog_XXXXXX");
        int fd = mkstemp(path);
        REQUIRE(fd >= 0);
        close(fd);
    }
    ~tmp_path() { unlink(path); }
};

TEST_CASE("log lines: format, levels, errno, control bytes, truncation")
{
    tmp_path f;

    REQUIRE(log_open(f.path, LOG_INFO) == 0);
    log_info("tunnel up peer=%s streams=%d", "10.0.0.1:5555", 3);
    log_error("bind %s: %s", ":80", "Address already in use");
    log_warn("w");
    log_debug("hidden %d", 1);
    CHECK(!log_enabled(LOG_DEBUG));
    CHECK(log_enabled(LOG_INFO));
    log_set_level(LOG_DEBUG);
    CHECK(log_enabled(LOG_DEBUG));
    log_debug("shown %d", 2);
    log_set_level(LOG_ERROR);
    log_warn("dropped");
    log_set_level(LOG_INFO);

    errno = EAGAIN;
    log_info("host=%s", "evil\r\nFAKE LINE\x7f");
    CHECK(errno == EAGAIN);

    std::string big(10000, 'x');
    log_info("%s", big.c_str());

    std::vector<std::string> l = lines_of(slurp(f.path));
    REQUIRE(l.size() == 6);
    for (size_t i = 0; i < l.size(); i++)
        CHECK(is_stamp(l[i]));
    CHECK(l[0].substr(25) == "INFO tunnel up peer=10.0.0.1:5555 streams=3");
    CHECK(l[1].substr(25) == "ERROR bind :80: Address already in use");
    CHECK(l[2].substr(25) == "WARN w");
    CHECK(l[3].substr(25) == "DEBUG shown 2");
    CHECK(l[4].substr(25) == "INFO host=evil??FAKE LINE?");
    CHECK(l[5].size() == 4095);                         /* 4096 with its '\n' */
    CHECK(l[5].compare(l[5].size() - 3, 3, "...") == 0);
    CHECK(l[5].compare(25, 6, "INFO x") == 0);

    REQUIRE(log_open("", LOG_INFO) == 0);
}

TEST_CASE("log_open failure keeps the old target; log_reopen after rotation")
{
    tmp_path f;
    std::string rotated = std::string(f.path) + ".1";

    REQUIRE(log_open(f.path, LOG_INFO) == 0);
    errno = 0;
    CHECK(log_open("/nonexistent/dir/wm.log", LOG_INFO) == -1);
    CHECK(errno == ENOENT);
    log_info("still here");

    REQUIRE(rename(f.path, rotated.c_str()) == 0);
    log_info("into the rotated file");
    REQUIRE(log_reopen() == 0);
    log_info("into the new file");

    std::vector<std::string> old = lines_of(slurp(rotated.c_str()));
    std::vector<std::string> cur = lines_of(slurp(f.path));
    REQUIRE(old.size() == 2);
    CHECK(old[0].substr(25) == "INFO still here");
    CHECK(old[1].substr(25) == "INFO into the rotated file");
    REQUIRE(cur.size() == 1);
    CHECK(cur[0].substr(25) == "INFO into the new file");

    unlink(rotated.c_str());
    REQUIRE(log_open("", LOG_INFO) == 0);
    CHECK(log_reopen() == 0);       /* stderr: nothing to reopen */
}

TEST_CASE("access log")
{
    tmp_path f;
    std::string rotated = std::string(f.path) + ".1";

    access_log("nowhere: no access log is open");
    REQUIRE(access_log_open(f.path) == 0);
    access_log("1.2.3.4:5 web 200 in=%d out=%d ms=%d", 10, 20, 30);
    REQUIRE(rename(f.path, rotated.c_str()) == 0);
    REQUIRE(log_reopen() == 0);
    access_log("second");
    REQUIRE(access_log_open("") == 0);
    access_log("dropped");

    std::vector<std::string> a = lines_of(slurp(rotated.c_str()));
    std::vector<std::string> b = lines_of(slurp(f.path));
    REQUIRE(a.size() == 1);
    CHECK(is_stamp(a[0]));
    CHECK(a[0].substr(25) == "1.2.3.4:5 web 200 in=10 out=20 ms=30");
    REQUIRE(b.size() == 1);
    CHECK(b[0].substr(25) == "second");
    unlink(rotated.c_str());

    CHECK(access_log_open("/nonexistent/dir/a.log") == -1);
}

TEST_CASE("syslog target")
{
    /* only that switching to and from it works; the lines go to the host's syslog */
    REQUIRE(log_open("syslog", LOG_INFO) == 0);
    log_debug("not sent");
    REQUIRE(log_open("syslog", LOG_WARN) == 0);
    REQUIRE(log_open("", LOG_INFO) == 0);
}
