#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char log_tag[64] = "moerun";

void mr_log_set_tag(const char *tag)
{
    snprintf(log_tag, sizeof log_tag, "%s", tag);
}

static mr_log_level threshold(void)
{
    const char *env = getenv("MOERUN_LOG");
    if (!env) return MR_LOG_INFO;
    if (!strcmp(env, "debug")) return MR_LOG_DEBUG;
    if (!strcmp(env, "warn")) return MR_LOG_WARN;
    if (!strcmp(env, "error")) return MR_LOG_ERROR;
    return MR_LOG_INFO;
}

void mr_log(mr_log_level level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < threshold()) return;
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: %s: %s\n", log_tag, names[level], msg);
}
