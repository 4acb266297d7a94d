/* coordinator/requests.c — jsonl request parsing and validation. Contract in requests.h. */
#include "requests.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/args.h"

/* Largest integer a JSON number (an IEEE double) holds exactly. */
#define JSON_INT_MAX 9007199254740992.0

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* Record "line N: <problem>" on the spec and as the thread's error. */
static mr_status bad_line(mr_req_spec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static mr_status bad_line(mr_req_spec *r, const char *fmt, ...)
{
    char problem[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(problem, sizeof problem, fmt, ap);
    va_end(ap);
    char msg[600];
    snprintf(msg, sizeof msg, "line %d: %s", r->line, problem);
    free(r->error);
    r->error = dup_str(msg);
    if (!r->error) return mr_fail(MR_ENOMEM, "requests: out of memory");
    return mr_fail(MR_EINVAL, "%s", msg);
}

static bool is_integral(const cJSON *item, double min, double max)
{
    if (!cJSON_IsNumber(item)) return false;
    double v = item->valuedouble;
    return isfinite(v) && v == floor(v) && v >= min && v <= max;
}

static mr_status parse_id(const cJSON *root, mr_req_spec *r)
{
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    if (!id) return bad_line(r, "missing \"id\"");
    if (!cJSON_IsString(id) || !id->valuestring) return bad_line(r, "\"id\" must be a string");
    if (!id->valuestring[0]) return bad_line(r, "\"id\" is empty");
    if (strlen(id->valuestring) > MR_REQ_ID_MAX)
        return bad_line(r, "\"id\" is longer than %d bytes", MR_REQ_ID_MAX);
    char *copy = dup_str(id->valuestring);
    if (!copy) return mr_fail(MR_ENOMEM, "requests: out of memory");
    free(r->id);
    r->id = copy;
    return MR_OK;
}

static mr_status parse_prompt(const cJSON *root, const mr_config *cfg, mr_req_spec *r)
{
    const cJSON *ids = cJSON_GetObjectItemCaseSensitive(root, "prompt_ids");
    if (!ids) return bad_line(r, "missing \"prompt_ids\"");
    if (!cJSON_IsArray(ids)) return bad_line(r, "\"prompt_ids\" must be an array of token ids");
    int n = cJSON_GetArraySize(ids);
    if (n == 0) return bad_line(r, "\"prompt_ids\" is empty");
    if (n > cfg->max_position_embeddings)
        return bad_line(r, "prompt of %d tokens is longer than max_position_embeddings %d", n,
                        cfg->max_position_embeddings);
    r->prompt_ids = malloc(sizeof(int32_t) * (size_t)n);
    if (!r->prompt_ids) return mr_fail(MR_ENOMEM, "requests: out of memory");
    int i = 0;
    const cJSON *item;
    cJSON_ArrayForEach(item, ids) {
        if (!is_integral(item, -JSON_INT_MAX, JSON_INT_MAX))
            return bad_line(r, "prompt_ids[%d] is not an integer token id", i);
        double v = item->valuedouble;
        if (v < 0) return bad_line(r, "prompt_ids[%d] = %.0f is negative", i, v);
        if (v >= cfg->vocab_size)
            return bad_line(r, "prompt_ids[%d] = %.0f is >= vocab_size %d", i, v, cfg->vocab_size);
        r->prompt_ids[i++] = (int32_t)v;
    }
    r->n_prompt = n;
    return MR_OK;
}

static mr_status parse_max_new(const cJSON *root, const mr_config *cfg, mr_req_spec *r)
{
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(root, "max_new_tokens");
    if (!m) return bad_line(r, "missing \"max_new_tokens\"");
    if (!is_integral(m, -JSON_INT_MAX, JSON_INT_MAX))
        return bad_line(r, "\"max_new_tokens\" must be an integer");
    if (m->valuedouble < 1)
        return bad_line(r, "\"max_new_tokens\" must be >= 1 (got %.0f)", m->valuedouble);
    if (m->valuedouble > 100000000)
        return bad_line(r, "\"max_new_tokens\" must be <= 100000000 (got %.0f)", m->valuedouble);
    r->requested_new_tokens = (int)m->valuedouble;
    /* positions 0 .. S+N-2 are fed; all must be < max_position_embeddings */
    int room = cfg->max_position_embeddings - r->n_prompt + 1;
    r->max_new_tokens = r->requested_new_tokens < room ? r->requested_new_tokens : room;
    return MR_OK;
}

/* Optional number field: absent → default; present → finite number. */
static mr_status opt_number(const cJSON *root, const char *key, double dflt, mr_req_spec *r,
                            double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v) {
        *out = dflt;
        return MR_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return bad_line(r, "\"%s\" must be a number", key);
    *out = v->valuedouble;
    return MR_OK;
}

static mr_status parse_sampling(const cJSON *root, mr_req_spec *r)
{
    double temperature = 0.0, top_p = 1.0;
    MR_TRY(opt_number(root, "temperature", 0.0, r, &temperature));
    MR_TRY(opt_number(root, "top_p", 1.0, r, &top_p));
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(root, "top_k");
    int top_k = 0;
    if (k) {
        if (!is_integral(k, -2147483648.0, 2147483647.0))
            return bad_line(r, "\"top_k\" must be an integer");
        top_k = (int)k->valuedouble;
    }
    uint64_t seed = 0;
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (s) {
        if (cJSON_IsString(s)) {
            if (mr_parse_u64("seed", s->valuestring, &seed) != MR_OK)
                return bad_line(r, "\"seed\" must be a non-negative integer (got '%s')",
                                s->valuestring);
        } else if (is_integral(s, 0, JSON_INT_MAX)) {
            seed = (uint64_t)s->valuedouble;
        } else {
            return bad_line(r, "\"seed\" must be a non-negative integer (up to 2^53 as a "
                               "number, or a decimal string)");
        }
    }
    mr_sampling_params p = {(float)temperature, (float)top_p, top_k, seed};
    mr_sampler probe;
    if (mr_sampler_init(&probe, &p) != MR_OK) return bad_line(r, "%s", mr_last_error());
    r->sampling = p;
    return MR_OK;
}

static mr_status parse_extras(const cJSON *root, mr_req_spec *r)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos");
    if (e) {
        if (!cJSON_IsBool(e)) return bad_line(r, "\"ignore_eos\" must be true or false");
        r->ignore_eos = cJSON_IsTrue(e);
    }
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(root, "arrival_ms");
    if (a) {
        if (!cJSON_IsNumber(a) || !isfinite(a->valuedouble) || a->valuedouble < 0)
            return bad_line(r, "\"arrival_ms\" must be a number >= 0");
        r->arrival_ms = a->valuedouble;
    }
    return MR_OK;
}

mr_status mr_requests_parse_line(const char *text, size_t len, int line_no, const mr_config *cfg,
                                 mr_req_spec *out)
{
    memset(out, 0, sizeof *out);
    out->line = line_no;
    out->arrival_ms = -1.0;
    out->sampling.top_p = 1.0f;
    out->id = dup_str("");
    if (!out->id) return mr_fail(MR_ENOMEM, "requests: out of memory");
    cJSON *root = cJSON_ParseWithLength(text, len);
    mr_status st;
    if (!root) {
        st = bad_line(out, "unparsable JSON");
    } else if (!cJSON_IsObject(root)) {
        st = bad_line(out, "not a JSON object");
    } else {
        st = parse_id(root, out);
        if (st == MR_OK) st = parse_prompt(root, cfg, out);
        if (st == MR_OK) st = parse_max_new(root, cfg, out);
        if (st == MR_OK) st = parse_sampling(root, out);
        if (st == MR_OK) st = parse_extras(root, out);
    }
    cJSON_Delete(root);
    if (st == MR_ENOMEM && !out->error) {
        /* keep the item usable: an error string is what callers rely on */
        free(out->prompt_ids);
        out->prompt_ids = NULL;
        free(out->id);
        out->id = NULL;
    }
    return st;
}

/* ------------------------------------------------------------------ id set */

/* Open-addressing table id → first line, so duplicates are found in O(1). */
typedef struct id_table {
    const char **ids;
    int *lines;
    size_t cap; /* power of two */
} id_table;

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* Returns the first line of `id`, or 0 after inserting it at `line`; -1 on OOM. */
static int id_table_check(id_table *t, const char *id, int line, size_t n_used)
{
    if ((n_used + 1) * 2 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        const char **ids = calloc(cap, sizeof *ids);
        int *lines = calloc(cap, sizeof *lines);
        if (!ids || !lines) {
            free(ids);
            free(lines);
            return -1;
        }
        for (size_t i = 0; i < t->cap; i++) {
            if (!t->ids[i]) continue;
            size_t j = hash_str(t->ids[i]) & (cap - 1);
            while (ids[j]) j = (j + 1) & (cap - 1);
            ids[j] = t->ids[i];
            lines[j] = t->lines[i];
        }
        free(t->ids);
        free(t->lines);
        t->ids = ids;
        t->lines = lines;
        t->cap = cap;
    }
    size_t j = hash_str(id) & (t->cap - 1);
    while (t->ids[j]) {
        if (!strcmp(t->ids[j], id)) return t->lines[j];
        j = (j + 1) & (t->cap - 1);
    }
    t->ids[j] = id;
    t->lines[j] = line;
    return 0;
}

/* ------------------------------------------------------------------ sets */

static mr_status push_item(mr_req_set *set, int *cap, const mr_req_spec *item)
{
    if (set->n == *cap) {
        int new_cap = *cap ? *cap * 2 : 16;
        mr_req_spec *items = realloc(set->items, sizeof *items * (size_t)new_cap);
        if (!items) return mr_fail(MR_ENOMEM, "requests: out of memory");
        set->items = items;
        *cap = new_cap;
    }
    set->items[set->n++] = *item;
    if (item->error) set->n_invalid++;
    if (!item->error && item->arrival_ms >= 0) set->has_arrivals = true;
    return MR_OK;
}

static bool is_blank(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n') return false;
    return true;
}

mr_status mr_requests_parse_text(const char *text, size_t len, const mr_config *cfg,
                                 mr_req_set *out)
{
    memset(out, 0, sizeof *out);
    id_table seen = {0};
    size_t n_seen = 0;
    int cap = 0, line_no = 0;
    mr_status st = MR_OK;
    size_t pos = 0;
    while (pos < len) {
        const char *start = text + pos;
        const char *nl = memchr(start, '\n', len - pos);
        size_t line_len = nl ? (size_t)(nl - start) : len - pos;
        pos += line_len + (nl ? 1 : 0);
        line_no++;
        if (is_blank(start, line_len)) continue;
        mr_req_spec item;
        st = mr_requests_parse_line(start, line_len, line_no, cfg, &item);
        if (st == MR_ENOMEM && !item.id) goto fail;
        if (item.id[0]) {
            int first = id_table_check(&seen, item.id, line_no, n_seen);
            if (first < 0) {
                st = mr_fail(MR_ENOMEM, "requests: out of memory");
            } else if (first > 0) {
                st = bad_line(&item, "duplicate id '%s' (first on line %d)", item.id, first);
            } else {
                n_seen++;
                st = MR_OK;
            }
        }
        if (st == MR_ENOMEM || push_item(out, &cap, &item) != MR_OK) {
            /* item was not stored: free it here */
            free(item.id);
            free(item.prompt_ids);
            free(item.error);
            st = MR_ENOMEM;
            goto fail;
        }
    }
    free(seen.ids);
    free(seen.lines);
    return MR_OK;
fail:
    free(seen.ids);
    free(seen.lines);
    mr_req_set_free(out);
    return st == MR_OK ? MR_ENOMEM : st;
}

mr_status mr_requests_load(const char *path, const mr_config *cfg, mr_req_set *out)
{
    memset(out, 0, sizeof *out);
    FILE *fp = fopen(path, "rb");
    if (!fp) return mr_fail(MR_EIO, "requests %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    char chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, fp)) > 0) {
        if (len + got + 1 > cap) {
            size_t new_cap = cap ? cap * 2 : sizeof chunk * 2;
            while (new_cap < len + got + 1) new_cap *= 2;
            char *grown = realloc(text, new_cap);
            if (!grown) {
                free(text);
                fclose(fp);
                return mr_fail(MR_ENOMEM, "requests %s: out of memory", path);
            }
            text = grown;
            cap = new_cap;
        }
        memcpy(text + len, chunk, got);
        len += got;
    }
    bool read_error = ferror(fp);
    fclose(fp);
    if (read_error) {
        free(text);
        return mr_fail(MR_EIO, "requests %s: read error", path);
    }
    mr_status st = mr_requests_parse_text(text ? text : "", len, cfg, out);
    free(text);
    if (st != MR_OK) return mr_fail_prefix(st, "requests %s: ", path);
    return MR_OK;
}

mr_status mr_requests_demo(const mr_config *cfg, mr_req_set *out)
{
    /* prompt length, new tokens, temperature, top_p, top_k, seed */
    static const struct {
        int n_prompt, n_new;
        float temperature, top_p;
        int top_k;
        uint64_t seed;
    } demo[] = {
        {5, 8, 0.0f, 1.0f, 0, 0},   {1, 4, 0.0f, 1.0f, 0, 0},    {12, 16, 0.8f, 0.9f, 0, 1},
        {40, 6, 0.0f, 1.0f, 0, 0},  {7, 24, 1.0f, 1.0f, 20, 7},  {23, 12, 0.0f, 1.0f, 0, 0},
        {3, 20, 0.7f, 0.95f, 50, 3}, {31, 10, 0.0f, 1.0f, 0, 0},
    };
    const int n = (int)(sizeof demo / sizeof demo[0]);
    memset(out, 0, sizeof *out);
    out->items = calloc((size_t)n, sizeof *out->items);
    if (!out->items) return mr_fail(MR_ENOMEM, "demo requests: out of memory");
    for (int i = 0; i < n; i++) {
        mr_req_spec *r = &out->items[i];
        out->n = i + 1;
        r->line = i + 1;
        r->arrival_ms = -1.0;
        char id[32];
        snprintf(id, sizeof id, "demo-%d", i);
        r->id = dup_str(id);
        int n_prompt = demo[i].n_prompt < cfg->max_position_embeddings
                           ? demo[i].n_prompt
                           : cfg->max_position_embeddings;
        r->prompt_ids = malloc(sizeof(int32_t) * (size_t)n_prompt);
        if (!r->id || !r->prompt_ids) {
            mr_req_set_free(out);
            return mr_fail(MR_ENOMEM, "demo requests: out of memory");
        }
        for (int t = 0; t < n_prompt; t++)
            r->prompt_ids[t] = (int32_t)((1 + 37 * i + 11 * t + (t * t) % 13) % cfg->vocab_size);
        r->n_prompt = n_prompt;
        r->requested_new_tokens = demo[i].n_new;
        int room = cfg->max_position_embeddings - n_prompt + 1;
        r->max_new_tokens = demo[i].n_new < room ? demo[i].n_new : room;
        r->sampling = (mr_sampling_params){demo[i].temperature, demo[i].top_p, demo[i].top_k,
                                           demo[i].seed};
    }
    return MR_OK;
}

void mr_req_set_free(mr_req_set *set)
{
    if (!set) return;
    for (int i = 0; i < set->n; i++) {
        free(set->items[i].id);
        free(set->items[i].prompt_ids);
        free(set->items[i].error);
    }
    free(set->items);
    memset(set, 0, sizeof *set);
}
