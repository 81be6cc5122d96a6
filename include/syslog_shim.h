/*
 * syslog_shim.h - syslog(3) kept behind a wall.
 *
 * <syslog.h> defines LOG_INFO and LOG_DEBUG as macros, which would rewrite
 * our log_level_t names (conf.h) in any file that sees both. Only
 * syslog_shim.cpp includes it; this header includes nothing.
 */
#ifndef WMPROXY_SYSLOG_SHIM_H
#define WMPROXY_SYSLOG_SHIM_H

void sys_log_open(void);                    /* openlog("wmproxyd", LOG_PID, LOG_DAEMON) */
void sys_log_close(void);
void sys_log(int level, const char *msg);   /* level: a log_level_t value */

#endif
