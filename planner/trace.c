/* planner/trace.c — Azure CSV and Mooncake jsonl request traces. Contract
 * in trace.h. */
#include "trace.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "../common/fileio.h"

#define TRACE_MAX_BYTES ((size_t)1 << 30)
#define TRACE_MAX_TOKENS 100000000L

/* Growing request array. */
typedef struct trace_builder {
    mr_cap_request *reqs;
    int n, cap;
} trace_builder;

static mr_status push(trace_builder *b, const char *origin, double arrival_s, long in, long out)
{
    if (b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 1024;
        mr_cap_request *grown = realloc(b->reqs, sizeof *grown * (size_t)cap);
        if (!grown) return mr_fail(MR_ENOMEM, "%s: out of memory at %d requests", origin, b->n);
        b->reqs = grown;
        b->cap = cap;
    }
    b->reqs[b->n++] = (mr_cap_request){arrival_s, (int)in, (int)out};
    return MR_OK;
}

/* One line of the text: [start, end) without the line break. */
typedef struct trace_line {
    const char *start, *end;
    int number; /* 1-based */
} trace_line;

static bool next_line(const char **cursor, const char *limit, trace_line *line)
{
    if (*cursor >= limit) return false;
    const char *s = *cursor, *e = memchr(s, '\n', (size_t)(limit - s));
    *cursor = e ? e + 1 : limit;
    if (!e) e = limit;
    if (e > s && e[-1] == '\r') e--;
    line->start = s;
    line->end = e;
    line->number++;
    return true;
}

static bool line_blank(const trace_line *l)
{
    for (const char *p = l->start; p < l->end; p++)
        if (!isspace((unsigned char)*p)) return false;
    return true;
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static long days_from_civil(long y, long m, long d)
{
    y -= m <= 2;
    const long era = (y >= 0 ? y : y - 399) / 400;
    const long yoe = y - era * 400;
    const long doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const long doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* "YYYY-MM-DD HH:MM:SS[.frac]" or a plain number of seconds. */
static bool parse_timestamp(const char *text, double *seconds)
{
    char *end = NULL;
    errno = 0;
    double plain = strtod(text, &end);
    if (end != text && *end == '\0' && !errno && isfinite(plain)) {
        *seconds = plain;
        return true;
    }
    int y, mo, d, h, mi, used = -1;
    double s;
    if (sscanf(text, "%4d-%2d-%2d %2d:%2d:%lf%n", &y, &mo, &d, &h, &mi, &s, &used) != 6 ||
        used < 0 || text[used] != '\0')
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h < 0 || h > 23 || mi < 0 || mi > 59 || s < 0 ||
        s >= 61)
        return false;
    *seconds = (double)days_from_civil(y, mo, d) * 86400.0 + h * 3600.0 + mi * 60.0 + s;
    return true;
}

static bool parse_count(const char *text, long min, long *out)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end != '\0' || errno || v < min || v > TRACE_MAX_TOKENS) return false;
    *out = v;
    return true;
}

/* Copy [s, e) trimmed of blanks into buf (cap bytes); false when too long. */
static bool field_copy(const char *s, const char *e, char *buf, size_t cap)
{
    while (s < e && isspace((unsigned char)*s)) s++;
    while (e > s && isspace((unsigned char)e[-1])) e--;
    if ((size_t)(e - s) >= cap) return false;
    memcpy(buf, s, (size_t)(e - s));
    buf[e - s] = '\0';
    return true;
}

static mr_status parse_csv_row(const trace_line *l, const char *origin, trace_builder *b)
{
    const char *comma[2];
    int n_fields = 1;
    for (const char *p = l->start; p < l->end; p++)
        if (*p == ',') {
            if (n_fields <= 2) comma[n_fields - 1] = p;
            n_fields++;
        }
    if (n_fields != 3)
        return mr_fail(MR_EPROTO, "%s:%d: expected 3 comma-separated fields "
                       "(TIMESTAMP,ContextTokens,GeneratedTokens), got %d", origin, l->number,
                       n_fields);
    char ts[64], in[32], out[32];
    double t;
    long n_in, n_out;
    if (!field_copy(l->start, comma[0], ts, sizeof ts) || !parse_timestamp(ts, &t))
        return mr_fail(MR_EPROTO, "%s:%d: bad TIMESTAMP (expected YYYY-MM-DD HH:MM:SS[.frac] or "
                       "seconds)", origin, l->number);
    if (!field_copy(comma[0] + 1, comma[1], in, sizeof in) || !parse_count(in, 1, &n_in))
        return mr_fail(MR_EPROTO, "%s:%d: ContextTokens must be an integer in [1, %ld]", origin,
                       l->number, TRACE_MAX_TOKENS);
    if (!field_copy(comma[1] + 1, l->end, out, sizeof out) || !parse_count(out, 0, &n_out))
        return mr_fail(MR_EPROTO, "%s:%d: GeneratedTokens must be an integer in [0, %ld]", origin,
                       l->number, TRACE_MAX_TOKENS);
    return push(b, origin, t, n_in, n_out);
}

static mr_status parse_csv(const char *text, size_t len, const char *origin, trace_builder *b)
{
    const char *cursor = text, *limit = text + len;
    trace_line l = {0};
    bool header = false;
    while (next_line(&cursor, limit, &l)) {
        if (line_blank(&l)) continue;
        if (!header) {
            char head[64];
            if (!field_copy(l.start, l.end, head, sizeof head) ||
                strcasecmp(head, "TIMESTAMP,ContextTokens,GeneratedTokens"))
                return mr_fail(MR_EPROTO, "%s:%d: expected the header "
                               "TIMESTAMP,ContextTokens,GeneratedTokens (Azure LLM inference "
                               "trace) or a jsonl line starting with '{'", origin, l.number);
            header = true;
            continue;
        }
        MR_TRY(parse_csv_row(&l, origin, b));
    }
    return MR_OK;
}

static mr_status json_count(const cJSON *o, const char *key, long min, const char *origin,
                            int line, long *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) return mr_fail(MR_EPROTO, "%s:%d: missing key \"%s\"", origin, line, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= min && d <= TRACE_MAX_TOKENS) || d != floor(d))
        return mr_fail(MR_EPROTO, "%s:%d: \"%s\" must be an integer in [%ld, %ld]", origin, line,
                       key, min, TRACE_MAX_TOKENS);
    *out = (long)d;
    return MR_OK;
}

static mr_status parse_jsonl_row(const trace_line *l, const char *origin, trace_builder *b)
{
    cJSON *o = cJSON_ParseWithLength(l->start, (size_t)(l->end - l->start));
    mr_status st = MR_OK;
    long n_in = 0, n_out = 0;
    if (!cJSON_IsObject(o)) {
        st = mr_fail(MR_EPROTO, "%s:%d: expected a JSON object per line", origin, l->number);
        goto done;
    }
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(o, "timestamp");
    if (!cJSON_IsNumber(ts) || !isfinite(ts->valuedouble) || ts->valuedouble < 0) {
        st = mr_fail(MR_EPROTO, "%s:%d: \"timestamp\" must be a number of milliseconds >= 0",
                     origin, l->number);
        goto done;
    }
    st = json_count(o, "input_length", 1, origin, l->number, &n_in);
    if (st == MR_OK) st = json_count(o, "output_length", 0, origin, l->number, &n_out);
    if (st == MR_OK) st = push(b, origin, ts->valuedouble / 1e3, n_in, n_out);
done:
    cJSON_Delete(o);
    return st;
}

static mr_status parse_jsonl(const char *text, size_t len, const char *origin, trace_builder *b)
{
    const char *cursor = text, *limit = text + len;
    trace_line l = {0};
    while (next_line(&cursor, limit, &l))
        if (!line_blank(&l)) MR_TRY(parse_jsonl_row(&l, origin, b));
    return MR_OK;
}

typedef struct ordered_req {
    mr_cap_request r;
    int index;
} ordered_req;

static int cmp_arrival(const void *a, const void *b)
{
    const ordered_req *x = a, *y = b;
    if (x->r.arrival_s != y->r.arrival_s) return x->r.arrival_s < y->r.arrival_s ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

/* Stable sort by arrival (only when needed), then arrivals from the first. */
static mr_status order_by_arrival(trace_builder *b, const char *origin)
{
    bool sorted = true;
    for (int i = 1; i < b->n && sorted; i++)
        sorted = b->reqs[i].arrival_s >= b->reqs[i - 1].arrival_s;
    if (!sorted) {
        ordered_req *tmp = malloc(sizeof *tmp * (size_t)b->n);
        if (!tmp) return mr_fail(MR_ENOMEM, "%s: out of memory sorting %d requests", origin, b->n);
        for (int i = 0; i < b->n; i++) tmp[i] = (ordered_req){b->reqs[i], i};
        qsort(tmp, (size_t)b->n, sizeof *tmp, cmp_arrival);
        for (int i = 0; i < b->n; i++) b->reqs[i] = tmp[i].r;
        free(tmp);
    }
    const double t0 = b->reqs[0].arrival_s;
    for (int i = 0; i < b->n; i++) b->reqs[i].arrival_s -= t0;
    return MR_OK;
}

mr_status mr_trace_parse(const char *text, size_t len, const char *origin, mr_trace *out)
{
    memset(out, 0, sizeof *out);
    size_t first = 0;
    while (first < len && isspace((unsigned char)text[first])) first++;
    const bool jsonl = first < len && text[first] == '{';
    trace_builder b = {0};
    mr_status st = jsonl ? parse_jsonl(text, len, origin, &b) : parse_csv(text, len, origin, &b);
    if (st == MR_OK && b.n == 0) st = mr_fail(MR_EPROTO, "%s: no requests in the trace", origin);
    if (st == MR_OK) st = order_by_arrival(&b, origin);
    if (st != MR_OK) {
        free(b.reqs);
        return st;
    }
    out->reqs = b.reqs;
    out->n = b.n;
    out->format = jsonl ? "mooncake-jsonl" : "azure-csv";
    return MR_OK;
}

mr_status mr_trace_load(const char *path, mr_trace *out)
{
    char *text = NULL;
    size_t len = 0;
    MR_TRY(mr_read_small_file(path, TRACE_MAX_BYTES, &text, &len));
    mr_status st = mr_trace_parse(text, len, path, out);
    free(text);
    return st;
}

void mr_trace_free(mr_trace *t)
{
    if (!t) return;
    free(t->reqs);
    t->reqs = NULL;
    t->n = 0;
}
