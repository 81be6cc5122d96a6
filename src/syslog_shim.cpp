/*
 * syslog_shim.cpp - the one file that includes <syslog.h> (see syslog_shim.h).
 */
#include "syslog_shim.h"

#include <syslog.h>

void sys_log_open(void)
{
    openlog("wmproxyd", LOG_PID, LOG_DAEMON);
}

void sys_log_close(void)
{
    closelog();
}

/* level is log_level_t: ERROR, WARN, INFO, DEBUG in that order */
void sys_log(int level, const char *msg)
{
    static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };

    if (level < 0 || level > 3)
        level = 3;
    syslog(prio[level], "%s", msg);
}
