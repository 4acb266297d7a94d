/* bench/bench_ops.c — `moerun bench ops`: the CPU expert FFN against OpenBLAS
 * and against the memory system, as one table (nccl-tests style).
 *
 *   moerun bench ops [--threads N] [--quick] [--json FILE]
 *
 * Rows: expert shapes DeepSeek-V3 (D=7168, inter=2048), small preset (1024,
 * 512), tiny preset (160, 48) × tokens per expert 1..1024 (--quick: 1 4 16 64
 * 256). Columns:
 *   ours    mr_cpu_expert_ffn (gate, up, SwiGLU, down): 6·n·D·inter flop / time
 *   sgemm   the same three GEMMs as plain cblas_sgemm (no SwiGLU), measured in
 *           this process (environment as is) and in child processes (this
 *           binary again, hidden --sgemm-only) with OPENBLAS_CORETYPE and
 *           OPENBLAS_L2_SIZE unset ("clean") and with OPENBLAS_CORETYPE forced
 *           to the best OpenBLAS kernel for this CPU's flags ("forced"); ours is
 *           compared with the best of them. Target ≥ 0.85 at ≥ 64 tokens.
 *   stream  (≤ 16 tokens) read-only bandwidth over the same weight copies with
 *           the same threads; ours as weight bytes / time. Target ≥ 0.80.
 * Weights are cold: consecutive calls use the next of several copies of the
 * expert, together ≥ 2× the last-level cache. Timing per row: one warm-up
 * call each, then samples of ≥ 25 ms (≥ 1 call) of ours, sgemm and stream
 * taken in turn (the host is shared; its speed drifts), best per-call time of
 * ≥ 3 samples and ≥ 0.2 s each (--quick: 2 samples, 0.05 s, 6 ms).
 * --threads N sets openblas_set_num_threads(N), which mr_cpu_matmul follows.
 * Exit status: 0 ok, 1 runtime error, 2 usage error.
 */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../cli/commands.h"
#include "../common/timer.h"
#include "../kernels/cpu/cpu_internal.h"
#include "bench_cluster.h"
#include "bench_decode.h"
#include "bench_layer.h"
#include "bench_sys.h"

typedef struct bench_shape {
    const char *name, *label;
    int dim, inter;
} bench_shape;

static const bench_shape shapes[] = {
    { "dsv3", "DeepSeek-V3 routed expert", 7168, 2048 },
    { "small", "small preset expert", 1024, 512 },
    { "tiny", "tiny preset expert", 160, 48 },
};
#define N_SHAPES ((int)(sizeof shapes / sizeof shapes[0]))
static const int tokens_full[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024 };
static const int tokens_quick[] = { 1, 4, 16, 64, 256 };
#define MAX_TOKENS_ROWS ((int)(sizeof tokens_full / sizeof tokens_full[0]))
#define STREAM_MAX_TOKENS 16
#define TARGET_SGEMM 0.85
#define TARGET_SGEMM_FROM 64
#define TARGET_STREAM 0.80

enum { BASE_ASIS, BASE_CLEAN, BASE_FORCED, N_BASES };
static const char *const base_names[N_BASES] = { "as-is", "clean", "forced" };

typedef struct bench_opts {
    int threads;
    bool quick, sgemm_only;
    const char *json_path;
    const int *tokens;
    int n_tokens;
    double min_total, sample_target;
    int min_samples;
} bench_opts;

typedef struct bench_baseline {
    bool ran;
    char corename[64];
    double gflops[N_SHAPES][MAX_TOKENS_ROWS]; /* 0: not measured */
} bench_baseline;

/* Several copies of one expert's weights, rotated so every call reads cold
 * memory. Copy c: gate (inter,D) | up (inter,D) | down (D,inter). */
typedef struct bench_pool {
    float *base;
    size_t expert_floats; /* per copy, a multiple of 16 */
    int copies, dim, inter;
} bench_pool;

static void bench_usage(FILE *out)
{
    fprintf(out, "usage: moerun bench ops|decode|layer|cluster|transport [options]\n"
                 "  ops        CPU expert FFN vs cblas_sgemm and vs memory bandwidth\n"
                 "             [--threads N] [--quick] [--json FILE]\n"
                 "  decode     batch-1 decode tok/s and weight bytes/s vs a read-only stream\n"
                 "             [--model DIR] [--tokens N] [--threads T] [--json FILE]\n"
                 "  layer      decode step time per dense/MoE layer at real shapes vs roofline\n"
                 "             [--config FILE|--preset P] [--batches ..] [--context C]\n"
                 "             [--backend cpu|cuda] [--json FILE]   (--help for all)\n"
                 "  cluster    CPU-seconds per generated token, cluster vs single process\n"
                 "             [--model DIR] [--layout P,D,E] [--requests N] [--prompt-len L]\n"
                 "             [--new-tokens G] [--json FILE]\n"
                 "  transport  KV put / token dispatch bandwidth vs ucx_perftest (2 MPI ranks)\n"
                 "             [--staged cuda|devsim] adds GPU->host->UCX->host->GPU rows\n");
}

/* ---- weights and timing ---------------------------------------------------- */

static int pool_create(bench_pool *p, const bench_shape *s, size_t llc_bytes)
{
    size_t target = llc_bytes > 0 ? 2 * llc_bytes : (size_t)512 << 20;
    if (target < ((size_t)256 << 20)) target = (size_t)256 << 20;
    if (target > ((size_t)1 << 30)) target = (size_t)1 << 30;
    p->dim = s->dim;
    p->inter = s->inter;
    p->expert_floats = (3 * (size_t)s->dim * (size_t)s->inter + 15) & ~(size_t)15;
    size_t bytes = p->expert_floats * sizeof(float);
    p->copies = (int)((target + bytes - 1) / bytes);
    if (p->copies < 2) p->copies = 2;
    p->base = aligned_alloc(64, bytes * (size_t)p->copies);
    if (p->base == NULL) return -1;
    const size_t total = p->expert_floats * (size_t)p->copies;
    for (size_t i = 0; i < total; i++) /* small values: no overflow in SwiGLU */
        p->base[i] = (float)((int)((i * 2654435761u) >> 22 & 1023) - 512) * (0.05f / 512.0f);
    return 0;
}

static mr_expert_w pool_expert(const bench_pool *p, int copy)
{
    const float *gate = p->base + (size_t)copy * p->expert_floats;
    const size_t mat = (size_t)p->dim * (size_t)p->inter;
    return (mr_expert_w){ .gate = gate, .up = gate + mat, .down = gate + 2 * mat,
                          .dim = p->dim, .inter = p->inter };
}

typedef struct bench_ctx {
    const bench_pool *pool;
    int n_tokens;
    const float *x; /* (n_tokens, D) */
    float *out;     /* (n_tokens, D) */
    float *scratch; /* 2 * n_tokens * inter */
} bench_ctx;

typedef void (*bench_call)(const bench_ctx *c, int copy);

static void call_ours(const bench_ctx *c, int copy)
{
    mr_expert_w e = pool_expert(c->pool, copy);
    mr_cpu_expert_ffn(&e, c->x, c->n_tokens, c->out, false, c->scratch);
}

static void call_sgemm(const bench_ctx *c, int copy)
{
    mr_expert_w e = pool_expert(c->pool, copy);
    const int n = c->n_tokens, d = e.dim, in = e.inter;
    float *g = c->scratch, *u = c->scratch + (size_t)n * (size_t)in;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in, d, 1.0f, c->x, d, e.gate, d,
                0.0f, g, in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, in, d, 1.0f, c->x, d, e.up, d,
                0.0f, u, in);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, d, in, 1.0f, g, in, e.down, in,
                0.0f, c->out, d);
}

/* One contender of a row: repeated calls of fn (one expert per call, the
 * copies rotating), or with fn NULL a read-only pass over whole copies. */
typedef struct bench_timer {
    bench_call fn;
    const bench_ctx *ctx;
    int threads;    /* read passes only */
    int per_sample; /* calls (copies) per sample */
    int next_copy;
    double best;    /* seconds per call (per copy read) */
    double spent;
} bench_timer;

static volatile float bench_sink;

static double timer_run(bench_timer *t, int units)
{
    const bench_pool *p = t->ctx->pool;
    double t0 = mr_now();
    if (t->fn != NULL) {
        for (int i = 0; i < units; i++) {
            t->fn(t->ctx, t->next_copy);
            t->next_copy = (t->next_copy + 1) % p->copies;
        }
    } else {
        if (t->next_copy + units > p->copies) t->next_copy = 0;
        bench_sink = bench_read_pass(p->base + (size_t)t->next_copy * p->expert_floats,
                                     p->expert_floats * (size_t)units, t->threads);
        t->next_copy += units;
    }
    return mr_now() - t0;
}

/* Warm-up unit, then samples of ~sample_target seconds taken round-robin over
 * all timers, so every contender sees the same machine (this host is shared
 * and its speed drifts); until each has min_samples and min_total seconds.
 * Leaves each timer's best seconds per unit in ->best. */
static void measure_interleaved(bench_timer *ts, int n, const bench_opts *o)
{
    for (int i = 0; i < n; i++) {
        const double first = timer_run(&ts[i], 1);
        const int cap = ts[i].fn != NULL ? 1000000 : ts[i].ctx->pool->copies;
        const double per = first > 0.0 ? ceil(o->sample_target / first) : 1.0;
        ts[i].per_sample = per < 1.0 ? 1 : per > cap ? cap : (int)per;
        ts[i].best = INFINITY;
        ts[i].spent = 0.0;
    }
    for (int samples = 0; samples < 10000; samples++) {
        bool done = samples >= o->min_samples;
        for (int i = 0; i < n; i++) done = done && ts[i].spent >= o->min_total;
        if (done) break;
        for (int i = 0; i < n; i++) {
            const double dt = timer_run(&ts[i], ts[i].per_sample);
            ts[i].spent += dt;
            if (dt / ts[i].per_sample < ts[i].best) ts[i].best = dt / ts[i].per_sample;
        }
    }
}

static double expert_flop(const bench_shape *s, int n_tokens)
{
    return 6.0 * n_tokens * (double)s->dim * (double)s->inter;
}

/* ---- one shape ------------------------------------------------------------- */

typedef struct row_result {
    double us_ours, gf_ours, gf_sgemm[N_BASES], gf_best, ratio_sgemm;
    double gbs_stream, gbs_ours, ratio_stream; /* ≤ STREAM_MAX_TOKENS only, else 0 */
} row_result;

static void print_shape_header(const bench_shape *s, const bench_pool *p, int threads)
{
    const double mib = (double)p->expert_floats * sizeof(float) / (1 << 20);
    printf("#\n# expert_ffn %s: %s  D=%d inter=%d  (gate+up [%d,%d], down [%d,%d])\n", s->name,
           s->label, s->dim, s->inter, s->inter, s->dim, s->dim, s->inter);
    printf("#   weights %.3f MiB per expert; %d copies = %.1f MiB rotated (cold)\n", mib, p->copies,
           mib * p->copies);
    printf("#   ours, sgemm as-is and stream (read-only sum over the same copies, %d thread%s)\n"
           "#   are sampled in turn within each row\n",
           threads, threads == 1 ? "" : "s");
    printf("#%17s %-44s %15s   %s\n", "", "------------------ GFLOP/s -----------------",
           "ours/best sgemm", "---- weight GB/s (<= 16 tokens) ----");
    printf("#%7s %9s %8s %8s %8s %8s %8s %7s %7s %9s %8s %7s %7s\n", "tokens", "us/call", "ours",
           "as-is", "clean", "forced", "best", "ratio", ">=0.85", "stream", "ours", "ratio",
           ">=0.80");
}

static void fmt_gf(char *buf, size_t cap, double v)
{
    if (v > 0.0)
        snprintf(buf, cap, "%8.2f", v);
    else
        snprintf(buf, cap, "%8s", "-");
}

static void print_row(int tokens, const row_result *r)
{
    char b[N_BASES][16];
    for (int i = 0; i < N_BASES; i++) fmt_gf(b[i], sizeof b[i], r->gf_sgemm[i]);
    const char *sg_mark = tokens < TARGET_SGEMM_FROM           ? "-"
                          : r->ratio_sgemm >= TARGET_SGEMM ? "ok"
                                                           : "MISS";
    printf(" %7d %9.1f %8.2f %s %s %s %8.2f %7.2f %7s", tokens, r->us_ours, r->gf_ours, b[0], b[1],
           b[2], r->gf_best, r->ratio_sgemm, sg_mark);
    if (tokens <= STREAM_MAX_TOKENS)
        printf(" %9.2f %8.2f %7.2f %7s\n", r->gbs_stream, r->gbs_ours, r->ratio_stream,
               r->ratio_stream >= TARGET_STREAM ? "ok" : "MISS");
    else
        printf(" %9s %8s %7s %7s\n", "-", "-", "-", "-");
    fflush(stdout);
}

static cJSON *row_json(const bench_shape *s, int tokens, const row_result *r)
{
    cJSON *row = cJSON_CreateObject();
    cJSON_AddStringToObject(row, "shape", s->name);
    cJSON_AddNumberToObject(row, "tokens", tokens);
    cJSON_AddNumberToObject(row, "us_per_call_ours", r->us_ours);
    cJSON_AddNumberToObject(row, "gflops_ours", r->gf_ours);
    cJSON *sg = cJSON_AddObjectToObject(row, "gflops_sgemm");
    for (int i = 0; i < N_BASES; i++)
        if (r->gf_sgemm[i] > 0.0) cJSON_AddNumberToObject(sg, base_names[i], r->gf_sgemm[i]);
    cJSON_AddNumberToObject(row, "gflops_sgemm_best", r->gf_best);
    cJSON_AddNumberToObject(row, "ratio_sgemm", r->ratio_sgemm);
    if (tokens <= STREAM_MAX_TOKENS) {
        cJSON_AddNumberToObject(row, "stream_gbs", r->gbs_stream);
        cJSON_AddNumberToObject(row, "gbs_ours", r->gbs_ours);
        cJSON_AddNumberToObject(row, "ratio_stream", r->ratio_stream);
    }
    return row;
}

/* Measures every token count of shape si. Parent mode fills rows[] (and
 * prints them); --sgemm-only mode prints "sgemm SHAPE TOKENS GFLOPS" lines.
 * Returns 0, or -1 when memory ran out. */
static int run_shape(int si, const bench_opts *o, const bench_machine *m,
                     const bench_baseline bases[N_BASES], cJSON *json_rows, int *n_miss,
                     int *n_checked)
{
    const bench_shape *s = &shapes[si];
    const int max_tokens = o->tokens[o->n_tokens - 1];
    bench_pool pool;
    float *x = malloc((size_t)max_tokens * (size_t)s->dim * sizeof(float));
    float *out = malloc((size_t)max_tokens * (size_t)s->dim * sizeof(float));
    float *scratch = malloc(2 * (size_t)max_tokens * (size_t)s->inter * sizeof(float));
    if (x == NULL || out == NULL || scratch == NULL || pool_create(&pool, s, m->llc_bytes) != 0) {
        fprintf(stderr, "moerun bench: out of memory for shape %s\n", s->name);
        free(x);
        free(out);
        free(scratch);
        return -1;
    }
    for (size_t i = 0; i < (size_t)max_tokens * (size_t)s->dim; i++)
        x[i] = (float)((int)((i * 40503u) >> 6 & 255) - 128) / 128.0f;
    if (!o->sgemm_only) print_shape_header(s, &pool, o->threads);
    const double weight_bytes = 3.0 * s->dim * (double)s->inter * sizeof(float);
    for (int ti = 0; ti < o->n_tokens; ti++) {
        const int tokens = o->tokens[ti];
        bench_ctx ctx = { .pool = &pool, .n_tokens = tokens, .x = x, .out = out,
                          .scratch = scratch };
        enum { T_SGEMM, T_OURS, T_STREAM };
        bench_timer ts[3] = {
            [T_SGEMM] = { .fn = call_sgemm, .ctx = &ctx },
            [T_OURS] = { .fn = call_ours, .ctx = &ctx },
            [T_STREAM] = { .fn = NULL, .ctx = &ctx, .threads = o->threads },
        };
        const int n_timers = o->sgemm_only ? 1 : tokens <= STREAM_MAX_TOKENS ? 3 : 2;
        measure_interleaved(ts, n_timers, o);
        const double gf_sgemm = expert_flop(s, tokens) / ts[T_SGEMM].best * 1e-9;
        if (o->sgemm_only) {
            printf("sgemm %s %d %.6g\n", s->name, tokens, gf_sgemm);
            fflush(stdout);
            continue;
        }
        row_result r = { 0 };
        const double sec = ts[T_OURS].best;
        r.us_ours = sec * 1e6;
        r.gf_ours = expert_flop(s, tokens) / sec * 1e-9;
        r.gf_sgemm[BASE_ASIS] = gf_sgemm;
        for (int b = BASE_CLEAN; b < N_BASES; b++)
            if (bases[b].ran) r.gf_sgemm[b] = bases[b].gflops[si][ti];
        for (int b = 0; b < N_BASES; b++)
            if (r.gf_sgemm[b] > r.gf_best) r.gf_best = r.gf_sgemm[b];
        r.ratio_sgemm = r.gf_ours / r.gf_best;
        if (tokens <= STREAM_MAX_TOKENS) {
            r.gbs_stream = (double)pool.expert_floats * sizeof(float) / ts[T_STREAM].best * 1e-9;
            r.gbs_ours = weight_bytes / sec * 1e-9;
            r.ratio_stream = r.gbs_ours / r.gbs_stream;
            n_checked[1]++;
            if (r.ratio_stream < TARGET_STREAM) n_miss[1]++;
        }
        if (tokens >= TARGET_SGEMM_FROM) {
            n_checked[0]++;
            if (r.ratio_sgemm < TARGET_SGEMM) n_miss[0]++;
        }
        print_row(tokens, &r);
        if (json_rows != NULL) cJSON_AddItemToArray(json_rows, row_json(s, tokens, &r));
    }
    free(pool.base);
    free(x);
    free(out);
    free(scratch);
    return 0;
}

/* ---- baselines in child processes ------------------------------------------ */

static void parse_child(const char *text, const bench_opts *o, bench_baseline *b)
{
    const char *line = text;
    while (line != NULL && *line != '\0') {
        char name[32];
        int tokens = 0;
        double gf = 0.0;
        if (sscanf(line, "corename %63s", b->corename) == 1) {
            /* recorded */
        } else if (sscanf(line, "sgemm %31s %d %lf", name, &tokens, &gf) == 3) {
            for (int si = 0; si < N_SHAPES; si++)
                for (int ti = 0; ti < o->n_tokens; ti++)
                    if (strcmp(shapes[si].name, name) == 0 && o->tokens[ti] == tokens)
                        b->gflops[si][ti] = gf;
        }
        line = strchr(line, '\n');
        if (line != NULL) line++;
    }
}

static void run_baseline(bench_baseline *b, const char *coretype, const bench_opts *o)
{
    char threads[16];
    snprintf(threads, sizeof threads, "%d", o->threads);
    char *args[] = { "--sgemm-only", "--threads", threads, o->quick ? "--quick" : NULL, NULL };
    char *text = NULL;
    fprintf(stderr, "moerun bench: sgemm baseline child, OPENBLAS_CORETYPE=%s ...\n",
            coretype ? coretype : "(unset)");
    if (bench_run_child(coretype, args, &text) != 0) return;
    parse_child(text, o, b);
    free(text);
    b->ran = true;
}

/* ---- command --------------------------------------------------------------- */

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    *o = (bench_opts){ .threads = openblas_get_num_threads() };
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--quick") == 0) {
            o->quick = true;
        } else if (strcmp(argv[i], "--sgemm-only") == 0) {
            o->sgemm_only = true;
        } else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            long v = strtol(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || v < 1 || v > 64) {
                fprintf(stderr, "moerun bench ops: --threads wants 1..64, got '%s'\n", argv[i]);
                return -1;
            }
            o->threads = (int)v;
        } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
            o->json_path = argv[++i];
        } else {
            fprintf(stderr, "moerun bench ops: unknown option or missing value '%s'\n", argv[i]);
            return -1;
        }
    }
    o->tokens = o->quick ? tokens_quick : tokens_full;
    o->n_tokens = o->quick ? (int)(sizeof tokens_quick / sizeof tokens_quick[0]) : MAX_TOKENS_ROWS;
    o->min_total = o->quick ? 0.05 : 0.2;
    o->sample_target = o->quick ? 0.006 : 0.025;
    o->min_samples = o->quick ? 2 : 3;
    return 0;
}

static void print_machine(const bench_machine *m, const bench_opts *o,
                          const bench_baseline bases[N_BASES], int argc, char **argv)
{
    char date[64];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S %Z", localtime(&now));
    printf("# moerun bench ops — %s\n# command: moerun", date);
    for (int i = 0; i < argc; i++) printf(" %s", argv[i]);
    printf("\n# cpu: %s (%d online CPUs; %s; LLC %.0f MiB)\n", m->cpu, m->n_cpus, m->isa,
           (double)m->llc_bytes / (1 << 20));
    printf("# openblas: corename %s | %s\n", m->corename, m->blas_config);
    printf("# env: OPENBLAS_CORETYPE=%s OPENBLAS_L2_SIZE=%s MOERUN_CPU_ISA=%s\n", m->coretype_env,
           m->l2_env, getenv("MOERUN_CPU_ISA") ? getenv("MOERUN_CPU_ISA") : "(unset)");
    printf("# threads: %d (openblas_set_num_threads; mr_cpu_matmul follows it)\n", o->threads);
    printf("# sgemm baselines: as-is = %s (this process)", m->corename);
    for (int b = BASE_CLEAN; b < N_BASES; b++) {
        if (bases[b].ran)
            printf("; %s = %s (child%s%s)", base_names[b], bases[b].corename,
                   b == BASE_FORCED ? ", OPENBLAS_CORETYPE=" : ", variables unset",
                   b == BASE_FORCED ? m->forced_core : "");
        else
            printf("; %s = not run (%s)", base_names[b],
                   b == BASE_CLEAN ? "environment already clean" : "no better kernel to force");
    }
    printf("\n# ours = mr_cpu_expert_ffn incl. SwiGLU; sgemm = 3 x cblas_sgemm;"
           " GFLOP/s = 6*n*D*inter/t\n# targets: ours >= %.2f x best sgemm at >= %d tokens,"
           " ours >= %.2f x stream at <= %d tokens\n",
           TARGET_SGEMM, TARGET_SGEMM_FROM, TARGET_STREAM, STREAM_MAX_TOKENS);
    fflush(stdout);
}

static cJSON *machine_json(const bench_machine *m, const bench_opts *o,
                           const bench_baseline bases[N_BASES], int argc, char **argv)
{
    cJSON *root = cJSON_CreateObject();
    char cmd[1024] = "moerun";
    for (int i = 0; i < argc; i++) {
        size_t len = strlen(cmd);
        snprintf(cmd + len, sizeof cmd - len, " %s", argv[i]);
    }
    cJSON_AddStringToObject(root, "command", cmd);
    cJSON_AddNumberToObject(root, "unix_time", (double)time(NULL));
    cJSON *mj = cJSON_AddObjectToObject(root, "machine");
    cJSON_AddStringToObject(mj, "cpu", m->cpu);
    cJSON_AddNumberToObject(mj, "online_cpus", m->n_cpus);
    cJSON_AddNumberToObject(mj, "llc_bytes", (double)m->llc_bytes);
    cJSON_AddStringToObject(mj, "isa", m->isa);
    cJSON_AddStringToObject(mj, "openblas_corename", m->corename);
    cJSON_AddStringToObject(mj, "openblas_config", m->blas_config);
    cJSON_AddStringToObject(mj, "OPENBLAS_CORETYPE", m->coretype_env);
    cJSON_AddStringToObject(mj, "OPENBLAS_L2_SIZE", m->l2_env);
    cJSON_AddNumberToObject(root, "threads", o->threads);
    cJSON_AddBoolToObject(root, "quick", o->quick);
    cJSON *bj = cJSON_AddObjectToObject(root, "sgemm_baselines");
    cJSON_AddStringToObject(bj, "as-is", m->corename);
    for (int b = BASE_CLEAN; b < N_BASES; b++)
        if (bases[b].ran) cJSON_AddStringToObject(bj, base_names[b], bases[b].corename);
    return root;
}

static int write_json(const char *path, cJSON *root)
{
    char *text = cJSON_Print(root);
    FILE *fp = text != NULL ? fopen(path, "w") : NULL;
    bool ok = fp != NULL && fputs(text, fp) >= 0 && fputc('\n', fp) != EOF;
    if (fp != NULL && fclose(fp) != 0) ok = false;
    free(text);
    if (!ok) fprintf(stderr, "moerun bench: cannot write %s: %s\n", path, strerror(errno));
    return ok ? 0 : -1;
}

int mr_cmd_bench(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        bench_usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "decode") == 0) return mr_bench_decode(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "layer") == 0) return mr_bench_layer(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "cluster") == 0) return mr_bench_cluster(argc, argv);
    if (argc >= 2 && strcmp(argv[1], "transport") == 0) return bench_exec_transport(argc, argv);
    if (argc < 2 || strcmp(argv[1], "ops") != 0) {
        if (argc >= 2) fprintf(stderr, "moerun bench: unknown benchmark '%s'\n", argv[1]);
        bench_usage(stderr);
        return 2;
    }
    bench_opts o;
    if (parse_opts(argc, argv, &o) != 0) {
        bench_usage(stderr);
        return 2;
    }
    openblas_set_num_threads(o.threads);
    bench_machine m;
    bench_machine_get(&m);
    bench_baseline bases[N_BASES];
    memset(bases, 0, sizeof bases);
    int n_miss[2] = { 0, 0 }, n_checked[2] = { 0, 0 };
    if (o.sgemm_only) {
        printf("corename %s\n", m.corename);
        for (int si = 0; si < N_SHAPES; si++)
            if (run_shape(si, &o, &m, bases, NULL, n_miss, n_checked) != 0) return 1;
        return 0;
    }
    /* children first: they need the memory the parent's weight pools take */
    if (getenv("OPENBLAS_CORETYPE") != NULL || getenv("OPENBLAS_L2_SIZE") != NULL)
        run_baseline(&bases[BASE_CLEAN], NULL, &o);
    if (m.forced_core[0] != '\0' && strcmp(m.forced_core, m.corename) != 0)
        run_baseline(&bases[BASE_FORCED], m.forced_core, &o);
    print_machine(&m, &o, bases, argc, argv);
    cJSON *root = o.json_path ? machine_json(&m, &o, bases, argc, argv) : NULL;
    cJSON *rows = root ? cJSON_AddArrayToObject(root, "rows") : NULL;
    int status = 0;
    for (int si = 0; si < N_SHAPES && status == 0; si++)
        if (run_shape(si, &o, &m, bases, rows, n_miss, n_checked) != 0) status = 1;
    if (status == 0) {
        printf("#\n# targets: ours >= %.2f x best sgemm at >= %d tokens: %d of %d rows met\n",
               TARGET_SGEMM, TARGET_SGEMM_FROM, n_checked[0] - n_miss[0], n_checked[0]);
        printf("#          ours >= %.2f x stream at <= %d tokens: %d of %d rows met\n",
               TARGET_STREAM, STREAM_MAX_TOKENS, n_checked[1] - n_miss[1], n_checked[1]);
    }
    if (root != NULL) {
        if (status == 0 && write_json(o.json_path, root) != 0) status = 1;
        cJSON_Delete(root);
    }
    return status;
}
