#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

mr_status mr_parse_long(const char *flag, const char *text, long min, long max, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = text ? strtol(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || v < min || v > max)
        return mr_fail(MR_EINVAL, "%s: expected an integer in [%ld, %ld], got '%s'", flag, min,
                       max, text ? text : "(missing)");
    *out = v;
    return MR_OK;
}

mr_status mr_parse_int(const char *flag, const char *text, int min, int max, int *out)
{
    long v;
    MR_TRY(mr_parse_long(flag, text, min, max, &v));
    *out = (int)v;
    return MR_OK;
}

mr_status mr_parse_u64(const char *flag, const char *text, uint64_t *out)
{
    char *end = NULL;
    errno = 0;
    unsigned long long v = text ? strtoull(text, &end, 10) : 0;
    if (!text || !*text || *end || errno || text[0] == '-')
        return mr_fail(MR_EINVAL, "%s: expected a non-negative integer, got '%s'", flag,
                       text ? text : "(missing)");
    *out = (uint64_t)v;
    return MR_OK;
}

mr_status mr_parse_float(const char *flag, const char *text, double min, double max, float *out)
{
    char *end = NULL;
    errno = 0;
    double v = text ? strtod(text, &end) : 0;
    if (!text || !*text || *end || errno || !isfinite(v) || v < min || v > max)
        return mr_fail(MR_EINVAL, "%s: expected a number in [%g, %g], got '%s'", flag, min, max,
                       text ? text : "(missing)");
    *out = (float)v;
    return MR_OK;
}

mr_status mr_parse_id_list(const char *flag, const char *text, int32_t **ids, int *n_ids)
{
    *ids = NULL;
    *n_ids = 0;
    if (!text || !*text) return mr_fail(MR_EINVAL, "%s: expected comma-separated token ids", flag);
    int cap = 1;
    for (const char *p = text; *p; p++) cap += *p == ',';
    int32_t *v = malloc(sizeof(int32_t) * (size_t)cap);
    if (!v) return mr_fail(MR_ENOMEM, "out of memory");
    int n = 0;
    const char *p = text;
    while (1) {
        char *end = NULL;
        errno = 0;
        long id = strtol(p, &end, 10);
        if (end == p || errno || id < 0 || id > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(v);
            return mr_fail(MR_EINVAL, "%s: bad token id at position %d in '%s' (ids are "
                           "non-negative integers separated by commas)", flag, n + 1, text);
        }
        v[n++] = (int32_t)id;
        if (*end == '\0') break;
        p = end + 1;
    }
    *ids = v;
    *n_ids = n;
    return MR_OK;
}
