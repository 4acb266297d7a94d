/* cli/cmd_report.c — `moerun report`: a cluster run's results as a table and
 * as plots people already know how to read.
 *
 *   moerun report --results OUT.jsonl [--summary SUMMARY.json] [--svg FILE.svg]
 *
 * OUT.jsonl is what `launch/moerun-cluster --out` wrote (one result per
 * request: finish_reason, ttft_ms, tpot_ms, e2e_ms, output_ids); SUMMARY.json
 * what `--summary` wrote. Prints request counts and TTFT / TPOT / E2E
 * percentiles (p50/p90/p99, numpy's interpolation) of the completed requests;
 * with --svg also writes an SVG with the CDFs of TTFT, TPOT and E2E, and,
 * when the summary has a live re-placement section, the measured expert-rank
 * imbalance per window with the epochs marked. A malformed results line is an
 * error naming the file and line.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/fileio.h"
#include "../common/stats.h"
#include "../common/svg_chart.h"
#include "commands.h"

typedef struct latencies {
    double *ttft, *tpot, *e2e;
    int n_ttft, n_tpot, n_e2e;
    int n_requests, n_completed, n_failed;
} latencies;

static void usage(FILE *out)
{
    fprintf(out, "usage: moerun report --results OUT.jsonl [--summary SUMMARY.json] [--svg FILE.svg]\n"
                 "Latency percentiles of a cluster run (launch/moerun-cluster --out/--summary);\n"
                 "--svg writes TTFT/TPOT/E2E CDFs and the expert re-placement windows.\n");
}

static void free_latencies(latencies *l)
{
    free(l->ttft);
    free(l->tpot);
    free(l->e2e);
}

/* Parse every line of the results file; only completed requests count. */
static mr_status read_results(const char *path, latencies *l)
{
    char *text = NULL;
    size_t len = 0;
    MR_TRY(mr_read_small_file(path, 1u << 30, &text, &len));
    size_t cap = 1;
    for (size_t i = 0; i < len; i++) cap += text[i] == '\n';
    l->ttft = malloc(sizeof(double) * cap);
    l->tpot = malloc(sizeof(double) * cap);
    l->e2e = malloc(sizeof(double) * cap);
    mr_status st = l->ttft && l->tpot && l->e2e ? MR_OK : mr_fail(MR_ENOMEM, "report: out of memory");
    int line_no = 0;
    for (char *line = text, *next; st == MR_OK && line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        line_no++;
        if (strspn(line, " \t\r") == strlen(line)) continue;
        cJSON *j = cJSON_Parse(line);
        const cJSON *fr = j ? cJSON_GetObjectItemCaseSensitive(j, "finish_reason") : NULL;
        if (!j || !cJSON_IsString(fr)) {
            st = mr_fail(MR_EINVAL, "%s:%d: not a result line (JSON with \"finish_reason\")", path,
                         line_no);
            cJSON_Delete(j);
            break;
        }
        l->n_requests++;
        if (!strcmp(fr->valuestring, "error")) {
            l->n_failed++;
        } else {
            l->n_completed++;
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "ttft_ms");
            const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "tpot_ms");
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "e2e_ms");
            const cJSON *ids = cJSON_GetObjectItemCaseSensitive(j, "output_ids");
            if (cJSON_IsNumber(t)) l->ttft[l->n_ttft++] = t->valuedouble;
            if (cJSON_IsNumber(p) && cJSON_GetArraySize(ids) >= 2) l->tpot[l->n_tpot++] = p->valuedouble;
            if (cJSON_IsNumber(e)) l->e2e[l->n_e2e++] = e->valuedouble;
        }
        cJSON_Delete(j);
    }
    free(text);
    return st;
}

static void print_row(const char *name, const double *v, int n)
{
    printf("  %-10s %8d %12.2f %12.2f %12.2f\n", name, n, mr_percentile(v, n, 50),
           mr_percentile(v, n, 90), mr_percentile(v, n, 99));
}

/* The empirical CDF of v as a curve (x sorted, y = rank / n). */
static mr_status add_cdf(mr_svg_panel *p, const char *name, const double *v, int n)
{
    double *x = malloc(sizeof(double) * (size_t)(n + 1)), *y = malloc(sizeof(double) * (size_t)(n + 1));
    if (!x || !y) {
        free(x);
        free(y);
        return mr_fail(MR_ENOMEM, "report: out of memory");
    }
    memcpy(x, v, sizeof(double) * (size_t)n);
    mr_sort_doubles(x, (size_t)n);
    for (int i = 0; i < n; i++) y[i] = (double)(i + 1) / n;
    mr_status st = mr_svg_add_series(p, name, x, y, (size_t)n);
    free(x);
    free(y);
    return st;
}

/* Measured imbalance per window and the epochs, from the summary. */
static mr_status add_rebalance(mr_svg_panel *p, const char *summary_path)
{
    cJSON *root = NULL;
    MR_TRY(mr_read_json_file(summary_path, 256u << 20, &root));
    const cJSON *rb = cJSON_GetObjectItemCaseSensitive(root, "rebalance");
    const cJSON *windows = cJSON_GetObjectItemCaseSensitive(rb, "windows");
    int n = cJSON_GetArraySize(windows);
    mr_svg_set_labels(p, "expert-rank imbalance per window (re-placement)", "time since start (s)",
                      "max / mean rank load");
    mr_status st = MR_OK;
    double *x = malloc(sizeof(double) * (size_t)(n + 1)), *y = malloc(sizeof(double) * (size_t)(n + 1));
    if (!x || !y) st = mr_fail(MR_ENOMEM, "report: out of memory");
    int k = 0;
    for (int i = 0; st == MR_OK && i < n; i++) {
        const cJSON *w = cJSON_GetArrayItem(windows, i);
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(w, "end_s");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(w, "measured_imbalance");
        if (cJSON_IsNumber(t) && cJSON_IsNumber(m) && m->valuedouble > 0) {
            x[k] = t->valuedouble;
            y[k++] = m->valuedouble;
        }
    }
    if (st == MR_OK) st = mr_svg_add_series(p, "measured", x, y, (size_t)k);
    const cJSON *epochs = cJSON_GetObjectItemCaseSensitive(rb, "epochs"), *e;
    cJSON_ArrayForEach(e, epochs) {
        const cJSON *done = cJSON_GetObjectItemCaseSensitive(e, "done_s");
        if (cJSON_IsNumber(done) && done->valuedouble >= 0)
            mr_svg_add_mark(p, done->valuedouble, "re-placement epochs done");
    }
    free(x);
    free(y);
    cJSON_Delete(root);
    return st;
}

static mr_status write_svg(const char *path, const latencies *l, const char *summary_path)
{
    mr_svg_chart c;
    mr_svg_init(&c, "moerun cluster run: latency CDFs", summary_path ? 2 : 3, summary_path ? 2 : 1);
    struct { const char *title; const double *v; int n; } rows[3] = {
        {"TTFT (time to first token)", l->ttft, l->n_ttft},
        {"TPOT (time per output token)", l->tpot, l->n_tpot},
        {"E2E (request latency)", l->e2e, l->n_e2e},
    };
    mr_status st = MR_OK;
    for (int i = 0; i < 3 && st == MR_OK; i++) {
        mr_svg_panel *p = mr_svg_panel_at(&c, i);
        mr_svg_set_labels(p, rows[i].title, "ms", "fraction of completed requests");
        st = add_cdf(p, "completed", rows[i].v, rows[i].n);
    }
    if (st == MR_OK && summary_path) st = add_rebalance(mr_svg_panel_at(&c, 3), summary_path);
    if (st == MR_OK) st = mr_svg_write(&c, path);
    mr_svg_free(&c);
    return st;
}

int mr_cmd_report(int argc, char **argv)
{
    const char *results = NULL, *summary = NULL, *svg = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            fprintf(stderr, "moerun report: %s: missing value (or unknown flag)\n", argv[i]);
            usage(stderr);
            return 2;
        }
        if (!strcmp(argv[i], "--results")) results = v;
        else if (!strcmp(argv[i], "--summary")) summary = v;
        else if (!strcmp(argv[i], "--svg")) svg = v;
        else {
            fprintf(stderr, "moerun report: unknown flag '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        }
        i++;
    }
    if (!results) {
        fprintf(stderr, "moerun report: --results is required\n");
        usage(stderr);
        return 2;
    }
    latencies l = {0};
    mr_status st = read_results(results, &l);
    if (st == MR_OK) {
        printf("# %s: %d requests, %d completed, %d failed\n", results, l.n_requests,
               l.n_completed, l.n_failed);
        printf("# %-10s %8s %12s %12s %12s\n", "metric", "n", "p50 (ms)", "p90 (ms)", "p99 (ms)");
        print_row("TTFT", l.ttft, l.n_ttft);
        print_row("TPOT", l.tpot, l.n_tpot);
        print_row("E2E", l.e2e, l.n_e2e);
        if (svg) st = write_svg(svg, &l, summary);
        if (st == MR_OK && svg) printf("# plots: %s\n", svg);
    }
    free_latencies(&l);
    if (st != MR_OK) {
        fprintf(stderr, "moerun report: error: %s\n", mr_last_error());
        return 1;
    }
    return 0;
}
