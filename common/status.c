#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char last_error[1024];

const char *mr_status_name(mr_status code)
{
    switch (code) {
    case MR_OK: return "OK";
    case MR_EINVAL: return "EINVAL";
    case MR_ENOMEM: return "ENOMEM";
    case MR_EIO: return "EIO";
    case MR_EPROTO: return "EPROTO";
    case MR_ETIMEDOUT: return "ETIMEDOUT";
    case MR_EPEER: return "EPEER";
    case MR_ERANGE: return "ERANGE";
    case MR_EUNSUPPORTED: return "EUNSUPPORTED";
    case MR_EINTERNAL: return "EINTERNAL";
    }
    return "E?";
}

mr_status mr_fail(mr_status code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

mr_status mr_fail_prefix(mr_status code, const char *fmt, ...)
{
    char prefix[512];
    char old[sizeof last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, last_error, sizeof old);
    /* prefix then as much of the old message as fits */
    size_t p = strlen(prefix), o = strlen(old);
    if (p > sizeof last_error - 1) p = sizeof last_error - 1;
    if (o > sizeof last_error - 1 - p) o = sizeof last_error - 1 - p;
    memcpy(last_error, prefix, p);
    memcpy(last_error + p, old, o);
    last_error[p + o] = '\0';
    return code;
}

const char *mr_last_error(void)
{
    return last_error;
}
