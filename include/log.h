/*
 * log.h - one line per event: "2026-11-29T10:00:00.123Z LEVEL message k=v".
 */
#ifndef WMPROXY_LOG_H
#define WMPROXY_LOG_H

#include "conf.h"

/* target: "" (stderr), "syslog", or a path opened for append. Returns 0 or
 * -1 with errno set. May be called again (reload, USR1 reopen). */
int log_open(const char *target, log_level_t level);
void log_set_level(log_level_t level);
int log_reopen(void);            /* USR1: reopen the log file and the access log at
                                  * their paths; -1 with errno if either failed */
bool log_enabled(log_level_t level);
void log_msg(log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* access log: one line per public connection or HTTP request */
int access_log_open(const char *path);  /* "" closes it */
void access_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Append p[0..n) to out as one access-line field: '"', '\\', bytes under
 * 0x20 (and the space, unless in_quotes) and over 0x7e as \xHH, so that a
 * user's bytes never add or shift fields. */
void log_field(std::string *out, const char *p, size_t n, bool in_quotes);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
