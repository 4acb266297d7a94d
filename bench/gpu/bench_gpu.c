/* bench/gpu/bench_gpu.c — moerun-bench-gpu: the CUDA backend against the
 * device's own baselines, as nccl-tests-style tables (device first).
 *
 *   moerun-bench-gpu [--quick] [--precision fp32|bf16|both] [--experts N]
 *                    [--json FILE]
 *
 * (a) memory: D2D copy of 256 MiB, 1 GiB, 4 GiB through the table's copy;
 *     bandwidth = bytes read + written per second, the best is the baseline.
 *     MLA decode as decode steps run it: one mla_decode_paged call for
 *     `batch` sequences × one query each, straight from a paged pool of fp32
 *     or bf16 latent rows, DeepSeek-V3 heads (128 heads, kv_lora 512, rope
 *     64), context 1k/4k/16k. Metric: bytes the op must move (latent KV
 *     batch · ctx · 576 · sizeof(kv), each row counted once although the
 *     kernels re-read it per head group from L2, + fp32 q_lat/q_pe read and
 *     out_lat written) per second, as a ratio to the copy bandwidth. Target ≥ 0.70.
 * (b) experts: `experts` DeepSeek-V3 routed experts (7168 → 2048 → 7168),
 *     tokens per expert 16…1024, each expert one expert_ffn call (3 cuBLAS
 *     GEMMs + SwiGLU), and all of them as one experts_grouped call (two
 *     cuBLAS grouped GEMMs + one SwiGLU, what the engine uses; the ratio is
 *     graded on it); TFLOP/s = 6·tokens·7168·2048·experts / time, against
 *     one dense GEMM of the same FLOPs ((experts·tokens) × 7168 · (6144 ×
 *     7168)ᵀ). Target ≥ 0.60 at ≥ 64 tokens per expert.
 * Both run in each GEMM precision asked for (kernels_cuda.h). Timing: host
 * clock between syncs; one warm-up call, then samples of ≥ 20 ms, best of ≥ 3
 * samples and ≥ 0.2 s (--quick: fewer rows, 2 samples, 0.05 s).
 * Exit: 0 ran (targets missed are reported, not failures), 1 error, 2 usage,
 * 77 no usable GPU (1 with MOERUN_REQUIRE_GPU=1).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/args.h"
#include "common/bf16.h"
#include "common/timer.h"
#include "kernels/cuda/kernels_cuda.h"

#define EXIT_SKIP 77
#define MLA_HEADS 128
#define MLA_KV_LORA 512
#define MLA_ROPE 64
#define MLA_TARGET 0.70
#define EXP_DIM 7168
#define EXP_INTER 2048
#define EXP_TARGET 0.60
#define EXP_TARGET_FROM 64

typedef struct bench_opts {
    bool quick;
    int n_prec;
    mr_cuda_precision prec[2];
    int experts;
    const char *json_path;
    double min_total, sample_target;
    int min_samples;
} bench_opts;

typedef struct bench_gpu {
    const mr_kernels *k;
    const bench_opts *o;
    cJSON *json; /* NULL without --json */
} bench_gpu;

static const char *prec_name(mr_cuda_precision p)
{
    return p == MR_CUDA_PRECISION_BF16 ? "bf16" : "fp32";
}

/* ---- device memory and timing ------------------------------------------------ */

/* Device buffer of n floats filled with a small deterministic pattern
 * (uploaded once, then doubled by D2D copies). NULL on failure. */
/* n elements of type t in backend memory, a fixed pattern in [-0.5, 0.5)
 * (softmax and SwiGLU stay finite), filled by doubling D2D copies. */
static void *dev_filled_typed(const mr_kernels *k, size_t n, mr_wtype t)
{
    const size_t esz = mr_wtype_size(t);
    char *d = k->alloc(n * esz);
    if (d == NULL) return NULL;
    const size_t chunk = n < ((size_t)1 << 20) ? n : (size_t)1 << 20;
    char *h = malloc(chunk * esz);
    if (h == NULL) {
        k->free(d);
        return NULL;
    }
    for (size_t i = 0; i < chunk; i++) {
        const float v = (float)((int)((i * 2654435761u) >> 22 & 1023) - 512) / 1024.0f;
        if (t == MR_WT_BF16)
            ((uint16_t *)h)[i] = mr_bf16_round(v);
        else
            ((float *)h)[i] = v;
    }
    k->copy(d, h, chunk * esz, MR_COPY_H2D);
    free(h);
    for (size_t done = chunk; done < n;) {
        const size_t len = done < n - done ? done : n - done;
        k->copy(d + done * esz, d, len * esz, MR_COPY_D2D);
        done += len;
    }
    return d;
}

static float *dev_filled(const mr_kernels *k, size_t n)
{
    return dev_filled_typed(k, n, MR_WT_F32);
}

/* A measured function: one call of the thing (sync excluded). */
typedef void (*bench_fn)(const void *arg);

/* Best seconds per call: warm-up, then samples of ~sample_target seconds. */
static double measure(const mr_kernels *k, const bench_opts *o, bench_fn fn, const void *arg)
{
    k->sync();
    fn(arg); /* warm-up: lazy module load, cuBLAS heuristics, buffer growth */
    k->sync();
    double t0 = mr_now();
    fn(arg); /* calibration call */
    k->sync();
    const double first = mr_now() - t0;
    int calls = first > 0.0 ? (int)ceil(o->sample_target / first) : 1;
    if (calls < 1) calls = 1;
    if (calls > 100000) calls = 100000;
    double best = INFINITY, spent = 0.0;
    for (int s = 0; s < 1000 && (s < o->min_samples || spent < o->min_total); s++) {
        t0 = mr_now();
        for (int c = 0; c < calls; c++) fn(arg);
        k->sync();
        const double dt = mr_now() - t0;
        spent += dt;
        if (dt / calls < best) best = dt / calls;
    }
    return best;
}

/* false (after printing it) when the backend recorded an error */
static bool check_backend(const char *what)
{
    if (mr_kernels_cuda_check() == MR_OK) return true;
    fprintf(stderr, "moerun-bench-gpu: %s: %s\n", what, mr_last_error());
    return false;
}

/* ---- (a) copy bandwidth ------------------------------------------------------- */

typedef struct copy_arg {
    const mr_kernels *k;
    void *dst;
    const void *src;
    size_t bytes;
} copy_arg;

static void copy_call(const void *arg)
{
    const copy_arg *a = arg;
    a->k->copy(a->dst, a->src, a->bytes, MR_COPY_D2D);
}

/* Returns the best copy bandwidth (bytes read + written per second). */
static double bench_copy(bench_gpu *b)
{
    static const size_t sizes[] = { (size_t)256 << 20, (size_t)1 << 30, (size_t)4 << 30 };
    const int n_sizes = b->o->quick ? 2 : 3;
    cJSON *rows = b->json != NULL ? cJSON_AddArrayToObject(b->json, "copy") : NULL;
    printf("#\n# (a) device memory: D2D copy, bandwidth = (bytes read + bytes written) / time\n");
    printf("# %14s %12s %10s\n", "size(B)", "time(us)", "GB/s");
    double best = 0.0;
    for (int i = 0; i < n_sizes; i++) {
        copy_arg a = { b->k, b->k->alloc(sizes[i]), NULL, sizes[i] };
        void *src = b->k->alloc(sizes[i]);
        a.src = src;
        if (a.dst == NULL || src == NULL) {
            printf("# %14zu %12s %10s  (allocation failed: %s)\n", sizes[i], "-", "-",
                   mr_last_error());
            mr_kernels_cuda_clear_status();
        } else {
            const double s = measure(b->k, b->o, copy_call, &a);
            const double gbs = 2.0 * (double)sizes[i] / s / 1e9;
            printf("  %14zu %12.1f %10.1f\n", sizes[i], s * 1e6, gbs);
            if (gbs > best) best = gbs;
            if (rows != NULL) {
                cJSON *r = cJSON_CreateObject();
                cJSON_AddNumberToObject(r, "bytes", (double)sizes[i]);
                cJSON_AddNumberToObject(r, "us", s * 1e6);
                cJSON_AddNumberToObject(r, "gbs_read_plus_written", gbs);
                cJSON_AddItemToArray(rows, r);
            }
        }
        b->k->free(a.dst);
        b->k->free(src);
        if (!check_backend("copy")) return 0.0;
    }
    printf("# copy bandwidth (best): %.1f GB/s\n", best);
    if (b->json != NULL) cJSON_AddNumberToObject(b->json, "copy_gbs_best", best);
    return best;
}

/* ---- (a) MLA decode straight from the paged pool ---------------------------------- */

typedef struct mla_arg {
    const mr_kernels *k;
    int batch, max_ctx;
    const float *q_lat, *q_pe;
    const void *kv;
    mr_wtype kv_type;
    const int32_t *seq, *rows;
    float *out;
} mla_arg;

static void mla_call(const void *arg)
{
    const mla_arg *a = arg;
    const float scale = 1.0f / sqrtf(192.0f);
    a->k->mla_decode_paged(a->q_lat, a->q_pe, MLA_HEADS * MLA_ROPE, MLA_ROPE, a->batch, a->seq,
                           MLA_HEADS, MLA_KV_LORA, MLA_ROPE, a->kv, a->kv_type, a->rows, 0, scale,
                           a->out, NULL, a->max_ctx);
}

static int bench_mla(bench_gpu *b, double copy_gbs)
{
    static const int batches[] = { 64, 128 }, ctxs[] = { 1024, 4096, 16384 };
    static const mr_wtype kv_types[] = { MR_WT_F32, MR_WT_BF16 };
    const int n_batches = b->o->quick ? 1 : 2, n_ctxs = b->o->quick ? 2 : 3;
    const int max_batch = batches[n_batches - 1], max_ctx = ctxs[n_ctxs - 1];
    const mr_kernels *k = b->k;
    const size_t row = MLA_KV_LORA + MLA_ROPE, pool_rows = (size_t)max_batch * max_ctx;
    void *kv[2] = { dev_filled_typed(k, pool_rows * row, MR_WT_F32),
                    dev_filled_typed(k, pool_rows * row, MR_WT_BF16) };
    float *q_lat = dev_filled(k, (size_t)max_batch * MLA_HEADS * MLA_KV_LORA);
    float *q_pe = dev_filled(k, (size_t)max_batch * MLA_HEADS * MLA_ROPE);
    float *out = k->alloc((size_t)max_batch * MLA_HEADS * MLA_KV_LORA * sizeof(float));
    int32_t *seq = k->alloc((size_t)max_batch * 3 * sizeof(int32_t));
    int32_t *rows_dev = k->alloc(pool_rows * sizeof(int32_t));
    int32_t *host = malloc(pool_rows * sizeof(int32_t));
    cJSON *rows = b->json != NULL ? cJSON_AddArrayToObject(b->json, "mla_decode") : NULL;
    int rc = 0;
    if (!kv[0] || !kv[1] || !q_lat || !q_pe || !out || !seq || !rows_dev || !host) {
        fprintf(stderr, "moerun-bench-gpu: MLA buffers: %s\n", mr_last_error());
        rc = 1;
        goto done;
    }
    /* pool row indices: sequence s owns rows [s*max_ctx, s*max_ctx + ctx) (as whole blocks) */
    for (size_t i = 0; i < pool_rows; i++) host[i] = (int32_t)i;
    k->copy(rows_dev, host, pool_rows * sizeof(int32_t), MR_COPY_H2D);
    printf("#\n# (a) MLA decode from the paged pool (mla_decode_paged, what decode steps run): "
           "batch sequences x 1 query, %d heads, kv_lora %d, rope %d; bytes = "
           "batch*ctx*%zu*sizeof(kv) (latent rows, counted once) + fp32 q read and out written; "
           "ratio = GB/s / copy GB/s (%.1f)\n",
           MLA_HEADS, MLA_KV_LORA, MLA_ROPE, row, copy_gbs);
    printf("# kernels: fp32 precision = CUDA-core kernel; bf16 precision = tensor-core kernel "
           "(BF16 q/KV tiles, fp32 accumulate)\n");
    printf("# %5s %5s %6s %6s %10s %14s %9s %6s %6s %4s\n", "prec", "kv", "batch", "ctx",
           "time(ms)", "bytes(B)", "GB/s", "ratio", "target", "ok");
    for (int p = 0; p < b->o->n_prec; p++) {
        if (mr_kernels_cuda_set_precision(b->o->prec[p]) != MR_OK) {
            fprintf(stderr, "moerun-bench-gpu: %s\n", mr_last_error());
            rc = 1;
            goto done;
        }
        for (int ti = 0; ti < 2; ti++) {
            for (int bi = 0; bi < n_batches; bi++) {
                for (int ci = 0; ci < n_ctxs; ci++) {
                    const int batch = batches[bi], n_ctx = ctxs[ci];
                    for (int s = 0; s < batch; s++) {
                        host[3 * s] = s;
                        host[3 * s + 1] = s * max_ctx;
                        host[3 * s + 2] = n_ctx;
                    }
                    k->copy(seq, host, (size_t)batch * 3 * sizeof(int32_t), MR_COPY_H2D);
                    mla_arg a = { k, batch, n_ctx, q_lat, q_pe, kv[ti], kv_types[ti], seq,
                                  rows_dev, out };
                    const double s = measure(k, b->o, mla_call, &a);
                    if (!check_backend("mla_decode_paged")) {
                        rc = 1;
                        goto done;
                    }
                    const double kv_bytes = (double)batch * n_ctx * (double)row *
                                            (double)mr_wtype_size(kv_types[ti]);
                    /* + q_lat, q_pe read and out_lat written once (fp32): 47 % of the
                     * kv bytes at bf16 ctx 1k, 3 % at 16k */
                    const double bytes = kv_bytes + (double)batch * MLA_HEADS *
                                         (double)(MLA_KV_LORA + MLA_ROPE + MLA_KV_LORA) * 4.0;
                    const double gbs = bytes / s / 1e9;
                    const double ratio = copy_gbs > 0 ? gbs / copy_gbs : 0;
                    printf("  %5s %5s %6d %6d %10.3f %14.0f %9.1f %6.2f %6.2f %4s\n",
                           prec_name(b->o->prec[p]), mr_wtype_name(kv_types[ti]), batch, n_ctx,
                           s * 1e3, bytes, gbs, ratio, MLA_TARGET,
                           ratio >= MLA_TARGET ? "yes" : "NO");
                    if (rows != NULL) {
                        cJSON *r = cJSON_CreateObject();
                        cJSON_AddStringToObject(r, "precision", prec_name(b->o->prec[p]));
                        cJSON_AddStringToObject(r, "kv_dtype", mr_wtype_name(kv_types[ti]));
                        cJSON_AddNumberToObject(r, "batch", batch);
                        cJSON_AddNumberToObject(r, "ctx", n_ctx);
                        cJSON_AddNumberToObject(r, "ms", s * 1e3);
                        cJSON_AddNumberToObject(r, "kv_bytes", kv_bytes);
                        cJSON_AddNumberToObject(r, "bytes_kv_q_out", bytes);
                        cJSON_AddNumberToObject(r, "kv_gbs", kv_bytes / s / 1e9);
                        cJSON_AddNumberToObject(r, "gbs", gbs);
                        cJSON_AddNumberToObject(r, "ratio_to_copy", ratio);
                        cJSON_AddNumberToObject(r, "target", MLA_TARGET);
                        cJSON_AddItemToArray(rows, r);
                    }
                }
            }
        }
    }
done:
    free(host);
    k->free(rows_dev);
    k->free(seq);
    k->free(out);
    k->free(q_pe);
    k->free(q_lat);
    k->free(kv[0]);
    k->free(kv[1]);
    return rc;
}

/* ---- (b) grouped experts vs one dense GEMM ------------------------------------------ */

typedef struct expert_arg {
    const mr_kernels *k;
    int experts, tokens;
    const void *weights;  /* experts × (gate | up | down), of type wt */
    mr_wtype wt;
    const float *x;       /* (experts·tokens, D) */
    float *out, *scratch;
} expert_arg;

static void experts_call(const void *arg)
{
    const expert_arg *a = arg;
    const size_t mat = (size_t)EXP_DIM * EXP_INTER;
    for (int e = 0; e < a->experts; e++) {
        const void *w = mr_wtype_at(a->weights, a->wt, (size_t)e * 3 * mat);
        const mr_expert_w ew = { w, mr_wtype_at(w, a->wt, mat), mr_wtype_at(w, a->wt, 2 * mat),
                                 EXP_DIM, EXP_INTER, a->wt };
        const size_t rows = (size_t)e * a->tokens * EXP_DIM;
        a->k->expert_ffn(&ew, a->x + rows, a->tokens, a->out + rows, false, a->scratch);
    }
}

/* The same experts as one experts_grouped call (two grouped GEMMs). */
static void grouped_call(const void *arg)
{
    const expert_arg *a = arg;
    const size_t mat = (size_t)EXP_DIM * EXP_INTER;
    mr_expert_w views[256];
    int32_t start[257];
    const int n = a->experts < 256 ? a->experts : 256;
    for (int e = 0; e < n; e++) {
        const void *w = mr_wtype_at(a->weights, a->wt, (size_t)e * 3 * mat);
        views[e] = (mr_expert_w){ w, mr_wtype_at(w, a->wt, mat), mr_wtype_at(w, a->wt, 2 * mat),
                                  EXP_DIM, EXP_INTER, a->wt };
        start[e] = e * a->tokens;
    }
    start[n] = n * a->tokens;
    a->k->experts_grouped(views, n, start, a->x, a->out, a->scratch);
}

static void dense_call(const void *arg)
{
    const expert_arg *a = arg;
    /* (experts·tokens, D) · (3·inter, D)ᵀ: the same 6·n·D·inter FLOPs */
    a->k->matmul(a->x, a->weights, a->wt, a->out, a->experts * a->tokens, 3 * EXP_INTER,
                 EXP_DIM, false);
}

static int bench_experts(bench_gpu *b, double copy_gbs)
{
    static const int tokens_full[] = { 16, 32, 64, 128, 256, 512, 1024 };
    static const int tokens_quick[] = { 16, 64, 256 };
    const int *tokens = b->o->quick ? tokens_quick : tokens_full;
    const int n_tokens = b->o->quick ? 3 : 7, max_tok = tokens[n_tokens - 1];
    const int experts = b->o->experts;
    const mr_kernels *k = b->k;
    const size_t mat = (size_t)EXP_DIM * EXP_INTER;
    const size_t max_rows = (size_t)experts * max_tok;
    /* the weights as fp32 and as bf16: bf16 runs use BF16 weights, as served */
    void *w = dev_filled_typed(k, (size_t)experts * 3 * mat, MR_WT_F32);
    void *w16 = dev_filled_typed(k, (size_t)experts * 3 * mat, MR_WT_BF16);
    float *x = dev_filled(k, max_rows * EXP_DIM);
    /* out: (rows, D) for the experts, (rows, 3·inter) for the dense GEMM */
    const size_t out_cols = EXP_DIM > 3 * EXP_INTER ? EXP_DIM : 3 * EXP_INTER;
    float *out = k->alloc(max_rows * out_cols * sizeof(float));
    float *scratch = k->alloc(2 * max_rows * EXP_INTER * sizeof(float)); /* grouped: all rows */
    cJSON *rows = b->json != NULL ? cJSON_AddArrayToObject(b->json, "experts") : NULL;
    int rc = 0;
    if (!w || !w16 || !x || !out || !scratch) {
        fprintf(stderr, "moerun-bench-gpu: expert buffers: %s\n", mr_last_error());
        rc = 1;
        goto done;
    }
    printf("#\n# (b) %d experts %d -> %d -> %d: one expert_ffn each (each), one experts_grouped "
           "call (grouped: 2 cuBLAS grouped GEMMs), vs one dense GEMM of the same FLOPs; "
           "ratio = grouped TFLOP/s / dense TFLOP/s\n",
           experts, EXP_DIM, EXP_INTER, EXP_DIM);
    printf("# w-bound = the experts' weight bytes / copy GB/s: the dense GEMM reads 1/%d of "
           "them, so below ~300 tok/exp (bf16) grouped cannot reach the dense rate\n", experts);
    printf("# %5s %8s %10s %9s %10s %9s %10s %9s %6s %6s %4s %10s\n", "prec", "tok/exp",
           "each(ms)", "TFLOP/s", "grp(ms)", "TFLOP/s", "dense(ms)", "TFLOP/s", "ratio", "target",
           "ok", "w-bound(ms)");
    for (int p = 0; p < b->o->n_prec; p++) {
        if (mr_kernels_cuda_set_precision(b->o->prec[p]) != MR_OK) {
            fprintf(stderr, "moerun-bench-gpu: %s\n", mr_last_error());
            rc = 1;
            goto done;
        }
        for (int i = 0; i < n_tokens; i++) {
            const bool bf16 = b->o->prec[p] == MR_CUDA_PRECISION_BF16;
            expert_arg a = { k, experts, tokens[i], bf16 ? w16 : w, bf16 ? MR_WT_BF16 : MR_WT_F32,
                             x, out, scratch };
            const double s_exp = measure(k, b->o, experts_call, &a);
            const double s_grp = measure(k, b->o, grouped_call, &a);
            const double s_dense = measure(k, b->o, dense_call, &a);
            if (!check_backend("experts")) {
                rc = 1;
                goto done;
            }
            const double flops = 6.0 * tokens[i] * (double)EXP_DIM * EXP_INTER * experts;
            const double tf_exp = flops / s_exp / 1e12, tf_dense = flops / s_dense / 1e12;
            const double tf_grp = flops / s_grp / 1e12;
            const double ratio = tf_grp / tf_dense;
            const bool graded = tokens[i] >= EXP_TARGET_FROM;
            const double w_bound_ms = copy_gbs > 0 ? (double)experts * 3.0 * (double)mat *
                                                         (bf16 ? 2.0 : 4.0) / (copy_gbs * 1e9) * 1e3
                                                   : 0.0;
            printf("  %5s %8d %10.3f %9.2f %10.3f %9.2f %10.3f %9.2f %6.2f %6s %4s %10.3f\n",
                   prec_name(b->o->prec[p]), tokens[i], s_exp * 1e3, tf_exp, s_grp * 1e3, tf_grp,
                   s_dense * 1e3, tf_dense, ratio, graded ? "0.60" : "-",
                   !graded ? "-" : ratio >= EXP_TARGET ? "yes" : "NO", w_bound_ms);
            if (rows != NULL) {
                cJSON *r = cJSON_CreateObject();
                cJSON_AddStringToObject(r, "precision", prec_name(b->o->prec[p]));
                cJSON_AddNumberToObject(r, "tokens_per_expert", tokens[i]);
                cJSON_AddNumberToObject(r, "experts", experts);
                cJSON_AddNumberToObject(r, "ms_experts", s_exp * 1e3);
                cJSON_AddNumberToObject(r, "tflops_experts", tf_exp);
                cJSON_AddNumberToObject(r, "ms_grouped", s_grp * 1e3);
                cJSON_AddNumberToObject(r, "tflops_grouped", tf_grp);
                cJSON_AddNumberToObject(r, "ms_dense", s_dense * 1e3);
                cJSON_AddNumberToObject(r, "tflops_dense", tf_dense);
                cJSON_AddNumberToObject(r, "ratio", ratio);
                cJSON_AddNumberToObject(r, "ms_weight_bound", w_bound_ms);
                if (graded) cJSON_AddNumberToObject(r, "target", EXP_TARGET);
                cJSON_AddItemToArray(rows, r);
            }
        }
    }
done:
    k->free(scratch);
    k->free(out);
    k->free(x);
    k->free(w16);
    k->free(w);
    return rc;
}

/* ---- main --------------------------------------------------------------------------- */

static int usage(FILE *f)
{
    fprintf(f, "usage: moerun-bench-gpu [--quick] [--precision fp32|bf16|both] [--experts N] "
               "[--json FILE]\n");
    return 2;
}

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    memset(o, 0, sizeof *o);
    o->n_prec = 2;
    o->prec[0] = MR_CUDA_PRECISION_FP32;
    o->prec[1] = MR_CUDA_PRECISION_BF16;
    o->experts = 8;
    for (int i = 1; i < argc; i++) {
        const bool has_value = i + 1 < argc;
        if (strcmp(argv[i], "--quick") == 0) {
            o->quick = true;
        } else if (strcmp(argv[i], "--precision") == 0 && has_value) {
            const char *v = argv[++i];
            if (strcmp(v, "fp32") == 0 || strcmp(v, "bf16") == 0) {
                o->n_prec = 1;
                o->prec[0] = v[0] == 'b' ? MR_CUDA_PRECISION_BF16 : MR_CUDA_PRECISION_FP32;
            } else if (strcmp(v, "both") != 0) {
                fprintf(stderr, "--precision: expected fp32, bf16 or both, got '%s'\n", v);
                return usage(stderr);
            }
        } else if (strcmp(argv[i], "--experts") == 0 && has_value) {
            if (mr_parse_int("--experts", argv[++i], 1, 256, &o->experts) != MR_OK) {
                fprintf(stderr, "%s\n", mr_last_error());
                return usage(stderr);
            }
        } else if (strcmp(argv[i], "--json") == 0 && has_value) {
            o->json_path = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return -1;
        } else {
            fprintf(stderr, "moerun-bench-gpu: unknown or incomplete argument '%s'\n", argv[i]);
            return usage(stderr);
        }
    }
    o->min_samples = o->quick ? 2 : 3;
    o->min_total = o->quick ? 0.05 : 0.2;
    o->sample_target = o->quick ? 0.01 : 0.02;
    return 0;
}

static int write_json(cJSON *json, const char *path)
{
    char *text = cJSON_Print(json);
    FILE *f = text != NULL ? fopen(path, "w") : NULL;
    int rc = f != NULL && fputs(text, f) >= 0 && fputc('\n', f) != EOF ? 0 : 1;
    if (f != NULL && fclose(f) != 0) rc = 1;
    if (rc != 0) fprintf(stderr, "moerun-bench-gpu: cannot write %s\n", path);
    free(text);
    return rc;
}

int main(int argc, char **argv)
{
    bench_opts o;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a step killed by its timeout keeps its rows */
    const int parsed = parse_opts(argc, argv, &o);
    if (parsed != 0) return parsed < 0 ? 0 : parsed;

    const int n_devices = mr_cuda_device_count();
    if (n_devices <= 0) {
        const char *why = n_devices < 0 ? mr_last_error() : "0 CUDA devices";
        const char *req = getenv("MOERUN_REQUIRE_GPU");
        const bool required = req != NULL && strcmp(req, "1") == 0;
        printf("# moerun-bench-gpu: no usable GPU (%s): %s\n", why, required ? "FAIL" : "skip");
        return required ? 1 : EXIT_SKIP;
    }
    bench_gpu b = { mr_kernels_cuda(), &o, NULL };
    if (b.k == NULL) {
        fprintf(stderr, "moerun-bench-gpu: %s\n", mr_last_error());
        return 1;
    }
    char device[256];
    if (mr_cuda_device_describe(device, sizeof device) != MR_OK) {
        fprintf(stderr, "moerun-bench-gpu: %s\n", mr_last_error());
        return 1;
    }
    char cmd[512] = "";
    for (int i = 0; i < argc; i++) {
        const size_t used = strlen(cmd);
        snprintf(cmd + used, sizeof cmd - used, "%s%s", i ? " " : "", argv[i]);
    }
    printf("# device: %s\n# command: %s\n", device, cmd);
    printf("# GEMM precision: fp32 = COMPUTE_32F (no TF32); bf16 = BF16 weights and BF16 "
           "activations, fp32 accumulate (experts, dense), COMPUTE_32F_FAST_16BF on fp32 arrays "
           "(MLA)\n");
    if (o.json_path != NULL) {
        b.json = cJSON_CreateObject();
        cJSON_AddStringToObject(b.json, "device", device);
        cJSON_AddStringToObject(b.json, "command", cmd);
        cJSON_AddNumberToObject(b.json, "unix_time", (double)time(NULL));
    }
    int rc = 0;
    const double copy_gbs = bench_copy(&b);
    if (copy_gbs <= 0.0) rc = 1;
    /* cuBLAS-only experts first: a fault in an MLA kernel (sticky) then loses only MLA rows */
    if (rc == 0) rc = bench_experts(&b, copy_gbs);
    if (rc == 0) rc = bench_mla(&b, copy_gbs);
    if (b.json != NULL && write_json(b.json, o.json_path) != 0) rc = 1; /* what ran, also on failure */
    cJSON_Delete(b.json);
    mr_kernels_cuda_release();
    return rc;
}
