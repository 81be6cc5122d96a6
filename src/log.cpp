/*
 * log.cpp - event lines and access lines (SPEC section 5).
 *
 * A line is built whole in a stack buffer and written with one write(2)
 * on an O_APPEND descriptor, so lines from this process and from another
 * writer of the same file (the old process during a restart, say) never
 * interleave mid-line, and a crash loses at most the line being built.
 */
#include "log.h"
#include "syslog_shim.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <string>

/* Longer lines are cut and end in "...". 4096 is PIPE_BUF on Linux: a
 * line up to that size is also written atomically to a pipe. */
#define LOG_LINE_MAX 4096

enum { TARGET_STDERR, TARGET_FILE, TARGET_SYSLOG };

static int log_target = TARGET_STDERR;
static int log_fd = STDERR_FILENO;
static std::string log_path;            /* for log_reopen() */
static log_level_t log_level = LOG_INFO;

static int access_fd = -1;
static std::string access_path;

static const char *const level_words[] = { "ERROR", "WARN", "INFO", "DEBUG" };

/* 0640: the lines carry users' addresses, which are not for everyone. */
static int open_append(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | O_NOCTTY, 0640);
}

/* "2026-11-29T10:00:00.123Z " into buf, which has room for 32 bytes.
 * Returns its length. The date part is redone only when the second turns. */
static size_t put_time(char *buf)
{
    static time_t cached_sec = -1;
    static char cached[24];
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    if (ts.tv_sec != cached_sec) {
        struct tm tm;
        gmtime_r(&ts.tv_sec, &tm);
        strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
        cached_sec = ts.tv_sec;
    }
    return (size_t)snprintf(buf, 32, "%s.%03dZ ", cached, (int)(ts.tv_nsec / 1000000));
}

/*
 * Format into buf (LOG_LINE_MAX bytes): the time unless with_time is false,
 * the level word if given, the message, '\n'. Returns the length.
 *
 * Control bytes in the message become '?': messages quote what peers sent
 * (Host headers, SNI names, user names), and a '\n' among them would let a
 * peer forge a log line.
 */
static size_t format_line(char *buf, bool with_time, const char *word, const char *fmt,
                          va_list ap)
{
    size_t n = 0, room;
    int len;

    if (with_time)
        n = put_time(buf);
    if (word)
        n += (size_t)snprintf(buf + n, LOG_LINE_MAX - n, "%s ", word);
    room = LOG_LINE_MAX - n;            /* the '\n' goes where vsnprintf puts its NUL */
    len = vsnprintf(buf + n, room, fmt, ap);
    if (len < 0)
        len = 0;
    if ((size_t)len >= room) {
        len = (int)room - 1;
        memcpy(buf + n + len - 3, "...", 3);
    }
    for (char *p = buf + n, *end = p + len; p < end; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    n += (size_t)len;
    buf[n++] = '\n';
    return n;
}

/* One write per line. A short write is left short: a second write could
 * land after another writer's line. Errors are dropped: there is nowhere
 * left to report them. */
static void write_line(int fd, const char *buf, size_t len)
{
    while (write(fd, buf, len) < 0 && errno == EINTR)
        ;
}

/* Close what the current target holds, if anything. */
static void close_target(void)
{
    if (log_target == TARGET_FILE)
        close(log_fd);
    else if (log_target == TARGET_SYSLOG)
        sys_log_close();
    log_target = TARGET_STDERR;
    log_fd = STDERR_FILENO;
    log_path.clear();
}

/*
 * The new file is opened before the old one is closed: on failure the
 * previous target stays in use and -1 is returned with errno set.
 */
int log_open(const char *target, log_level_t level)
{
    log_level = level;
    if (!target || !*target) {
        close_target();
        return 0;
    }
    if (!strcmp(target, "syslog")) {
        if (log_target != TARGET_SYSLOG) {
            close_target();
            sys_log_open();
            log_target = TARGET_SYSLOG;
        }
        return 0;
    }
    int fd = open_append(target);
    if (fd < 0)
        return -1;
    close_target();
    log_target = TARGET_FILE;
    log_fd = fd;
    log_path = target;
    return 0;
}

void log_set_level(log_level_t level)
{
    log_level = level;
}

/* Swap *fd for a fresh descriptor of path; keeps the old one on failure,
 * so lines go on into the rotated file rather than nowhere. */
static int reopen(const std::string &path, int *fd)
{
    int nfd = open_append(path.c_str());

    if (nfd < 0)
        return -1;
    close(*fd);
    *fd = nfd;
    return 0;
}

/* Reopens the log file and the access log (SIGUSR1, after logrotate moved
 * them). Returns 0, or -1 with errno set when either failed. */
int log_reopen(void)
{
    int rc = 0, err = 0;

    if (log_target == TARGET_FILE && reopen(log_path, &log_fd) < 0) {
        rc = -1;
        err = errno;
    }
    if (access_fd >= 0 && reopen(access_path, &access_fd) < 0) {
        rc = -1;
        err = errno;
    }
    if (rc < 0)
        errno = err;
    return rc;
}

bool log_enabled(log_level_t level)
{
    return level <= log_level;
}

/* Keeps errno, so a caller may log and then still look at it. */
void log_msg(log_level_t level, const char *fmt, ...)
{
    char buf[LOG_LINE_MAX];
    int saved = errno;
    size_t len;
    va_list ap;

    if (level > log_level)
        return;
    if (level < LOG_ERROR || level > LOG_DEBUG)
        level = LOG_ERROR;
    va_start(ap, fmt);
    /* syslog stamps lines itself */
    len = format_line(buf, log_target != TARGET_SYSLOG, level_words[level], fmt, ap);
    va_end(ap);
    if (log_target == TARGET_SYSLOG) {
        buf[len - 1] = '\0';
        sys_log(level, buf);
    } else {
        write_line(log_fd, buf, len);
    }
    errno = saved;
}

int access_log_open(const char *path)
{
    if (!path || !*path) {
        if (access_fd >= 0)
            close(access_fd);
        access_fd = -1;
        access_path.clear();
        return 0;
    }
    int fd = open_append(path);
    if (fd < 0)
        return -1;
    if (access_fd >= 0)
        close(access_fd);
    access_fd = fd;
    access_path = path;
    return 0;
}

void access_log(const char *fmt, ...)
{
    char buf[LOG_LINE_MAX];
    int saved = errno;
    size_t len;
    va_list ap;

    if (access_fd < 0)
        return;
    va_start(ap, fmt);
    len = format_line(buf, true, NULL, fmt, ap);
    va_end(ap);
    write_line(access_fd, buf, len);
    errno = saved;
}

void log_field(std::string *out, const char *p, size_t n, bool in_quotes)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (ch == '"' || ch == '\\' || ch < 0x20 || ch > 0x7e || (ch == ' ' && !in_quotes)) {
            char e[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
            out->append(e, 4);
        } else {
            out->push_back((char)ch);
        }
    }
}
