/* bench/bench_layer.c — `moerun bench layer`: decode step time per layer at
 * real layer shapes, against the roofline of the same backend measured in the
 * same run (the input a capacity planner needs).
 *
 *   moerun bench layer [--config FILE | --preset NAME] [--dense-layers N]
 *                      [--moe-layers N] [--batches 1,8,...] [--context C]
 *                      [--steps N] [--backend cpu|cuda|devsim]
 *                      [--precision fp32|bf16] [--kv-dtype fp32|bf16] [--json FILE]
 *
 * The model is the config's layer shapes (hidden, MLA heads and ranks,
 * experts, vocab) with only N dense + M MoE layers (default 1 + 1 when the
 * config has dense layers), random weights built in memory (no checkpoint:
 * one DeepSeek-V3 MoE layer is 46 GB of fp32; --precision bf16 stores the
 * matrices on the backend as bf16, 23 GB, and counts 2 bytes per weight;
 * --kv-dtype bf16 likewise for the latent KV). Each batch size B decodes one
 * token for B sequences whose KV already holds `context` positions (the
 * latent rows are zero: attention reads and computes the same either way),
 * greedy routing from random router weights. A sync after every layer
 * (between_layers) gives per-layer times; head = embedding + final norm +
 * lm_head + logits copy.
 *
 * Roofline of a layer at batch B: max(bytes / bandwidth, FLOPs / matmul
 * peak), with both ceilings measured here on the same backend (bandwidth:
 * on cuda a 256 MiB D2D copy, bytes read + written, the usual HBM figure; on
 * the CPU backends a read-only pass with every CPU, as decode streams weights;
 * matmul: 2048³ through the table).
 * Bytes: attention weights + router + shared experts + E·(1 − (1 − K/E)^B)
 * routed experts (the expected number touched under uniform routing) + B ·
 * context latent rows. FLOPs: 2·B·(active parameters) + MLA absorbed
 * attention (2·B·H·ctx·(C+R) scores + 2·B·H·ctx·C values + the two per-head
 * absorptions). ratio = roofline / measured (1.0 = at the ceiling).
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../common/args.h"
#include "../common/bf16.h"
#include "../common/log.h"
#include "../common/timer.h"
#include "../kernels/backend.h"
#include "../kernels/cuda/kernels_cuda.h"
#include "../model/engine.h"
#include "../model/kv_store.h"
#include "../model/synth.h"
#include "bench_layer.h"
#include "bench_sys.h"

#define BL_MAX_BATCHES 16
#define BL_BLOCK_TOKENS 64

typedef struct bl_opts {
    const char *config_path, *preset, *backend, *json_path;
    bool bf16;
    mr_wtype kv_dtype;
    int dense_layers, moe_layers; /* -1: default */
    int batches[BL_MAX_BATCHES], n_batches;
    int context, steps;
} bl_opts;

typedef struct bl_row {
    int batch;
    double step_ms, dense_ms, moe_ms, head_ms;
    double moe_bytes, moe_flops, experts_touched, moe_roof_ms;
    double dense_bytes, dense_flops, dense_roof_ms;
} bl_row;

/* per-layer timestamps through between_layers */
typedef struct bl_clock {
    const mr_kernels *k;
    double *t;
    int n, cap;
} bl_clock;

static void bl_tick(void *ctx)
{
    bl_clock *c = ctx;
    c->k->sync();
    if (c->n < c->cap) c->t[c->n++] = mr_now();
}

static int usage(FILE *f, int code)
{
    fprintf(f,
            "usage: moerun bench layer [--config FILE | --preset NAME] [--dense-layers N]\n"
            "                          [--moe-layers N] [--batches 1,8,32,64,128,256]\n"
            "                          [--context 1024] [--steps 5] [--backend cpu|cuda|devsim]\n"
            "                          [--precision fp32|bf16] [--kv-dtype fp32|bf16]\n"
            "                          [--json FILE]\n"
            "Decode step time per dense / MoE layer at the config's shapes (random weights)\n"
            "against the backend's own copy bandwidth and matmul peak measured in the run.\n"
            "Default: --preset small on cpu; DeepSeek-V3 on a GPU:\n"
            "  moerun bench layer --config ../shared/models/deepseek-ai--DeepSeek-V3.config.json "
            "--backend cuda\n");
    return code;
}

static mr_status parse(int argc, char **argv, bl_opts *o)
{
    *o = (bl_opts){.preset = "small", .backend = "cpu", .dense_layers = -1, .moe_layers = 1,
                   .batches = {1, 8, 32, 64, 128, 256}, .n_batches = 6, .context = 1024,
                   .steps = 5};
    for (int i = 2; i < argc; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        if (!strcmp(f, "--config")) o->config_path = v;
        else if (!strcmp(f, "--preset")) o->preset = v;
        else if (!strcmp(f, "--json")) o->json_path = v;
        else if (!strcmp(f, "--backend")) {
            if (!mr_backend_name_valid(v))
                return mr_fail(MR_EINVAL, "--backend: expected cpu, cuda or devsim, got '%s'", v);
            o->backend = v;
        } else if (!strcmp(f, "--precision")) {
            mr_wtype t;
            MR_TRY(mr_parse_dtype(f, v, &t));
            o->bf16 = t == MR_WT_BF16;
        } else if (!strcmp(f, "--kv-dtype")) {
            MR_TRY(mr_parse_dtype(f, v, &o->kv_dtype));
        } else if (!strcmp(f, "--dense-layers")) MR_TRY(mr_parse_int(f, v, 0, 64, &o->dense_layers));
        else if (!strcmp(f, "--moe-layers")) MR_TRY(mr_parse_int(f, v, 0, 64, &o->moe_layers));
        else if (!strcmp(f, "--context")) MR_TRY(mr_parse_int(f, v, 1, 1 << 20, &o->context));
        else if (!strcmp(f, "--steps")) MR_TRY(mr_parse_int(f, v, 1, 10000, &o->steps));
        else if (!strcmp(f, "--batches")) {
            int32_t *b = NULL;
            int n = 0;
            MR_TRY(mr_parse_id_list(f, v, &b, &n));
            if (n < 1 || n > BL_MAX_BATCHES) {
                free(b);
                return mr_fail(MR_EINVAL, "--batches: 1 to %d sizes", BL_MAX_BATCHES);
            }
            for (int j = 0; j < n; j++) {
                if (b[j] < 1 || b[j] > 65536) {
                    free(b);
                    return mr_fail(MR_EINVAL, "--batches: sizes in [1, 65536], got %d", b[j]);
                }
                o->batches[j] = b[j];
            }
            o->n_batches = n;
            free(b);
        } else {
            return mr_fail(MR_EINVAL, "unknown flag '%s'", f);
        }
    }
    return MR_OK;
}

/* ---- ceilings of the backend ------------------------------------------------ */

/* CPU backends: a read-only pass over 256 MiB with every CPU (bytes read per
 * second): decode streams weights, it does not copy them. */
static double host_read_bandwidth(void)
{
    const size_t n = (size_t)64 << 20;
    float *buf = malloc(n * sizeof(float));
    if (!buf) return 0;
    for (size_t i = 0; i < n; i++) buf[i] = (float)(i & 1023);
    int threads = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double best = 1e30;
    volatile float sink = 0;
    for (int r = 0; r < 5; r++) {
        double t0 = mr_now();
        sink += bench_read_pass(buf, n, threads > 0 ? threads : 1);
        double dt = mr_now() - t0;
        if (dt < best) best = dt;
    }
    (void)sink;
    free(buf);
    return (double)n * sizeof(float) / best;
}

/* Best of `reps` timed calls of a D2D copy: bytes read + written per second. */
static double copy_bandwidth(const mr_kernels *k, size_t bytes)
{
    void *a = k->alloc(bytes), *b = k->alloc(bytes);
    if (!a || !b) return 0;
    k->copy(b, a, bytes, MR_COPY_D2D); /* touch both */
    k->sync();
    double best = 1e30;
    for (int r = 0; r < 5; r++) {
        double t0 = mr_now();
        k->copy(b, a, bytes, MR_COPY_D2D);
        k->sync();
        double dt = mr_now() - t0;
        if (dt < best) best = dt;
    }
    k->free(a);
    k->free(b);
    return 2.0 * (double)bytes / best;
}

/* n³ GEMM through the table with a weight of type wt (bf16: what the
 * engine's bf16 GEMMs run, x rounded included). */
static double matmul_peak(const mr_kernels *k, int n, mr_wtype wt)
{
    const size_t nn = (size_t)n * n, bytes = sizeof(float) * nn;
    float *x = k->alloc(bytes), *y = k->alloc(bytes);
    void *w = k->alloc(nn * mr_wtype_size(wt));
    if (!x || !w || !y) return 0;
    float *h = calloc(nn, sizeof(float));
    uint16_t *h16 = calloc(nn, sizeof(uint16_t));
    for (size_t i = 0; h && h16 && i < nn; i++) {
        h[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
        h16[i] = mr_bf16_round(h[i]);
    }
    if (h && h16) {
        k->copy(x, h, bytes, MR_COPY_H2D);
        k->copy(w, wt == MR_WT_BF16 ? (void *)h16 : (void *)h, nn * mr_wtype_size(wt),
                MR_COPY_H2D);
    }
    free(h);
    free(h16);
    k->matmul(x, w, wt, y, n, n, n, false);
    k->sync();
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        double t0 = mr_now();
        k->matmul(x, w, wt, y, n, n, n, false);
        k->sync();
        double dt = mr_now() - t0;
        if (dt < best) best = dt;
    }
    k->free(x);
    k->free(w);
    k->free(y);
    return 2.0 * n * (double)n * n / best;
}

/* ---- the model's arithmetic ---------------------------------------------------- */

static double attn_params(const mr_config *c)
{
    const double D = c->hidden_size, H = c->num_attention_heads, C = c->kv_lora_rank;
    const double R = c->qk_rope_head_dim, nope = c->qk_nope_head_dim, vd = c->v_head_dim;
    double q = c->q_lora_rank > 0 ? D * c->q_lora_rank + c->q_lora_rank * H * (nope + R)
                                  : D * H * (nope + R);
    return q + D * (C + R) + C * H * (nope + vd) + H * vd * D;
}

/* FLOPs of absorbed MLA decode for B queries over ctx positions (besides
 * the projections counted in attn_params). */
static double attn_flops(const mr_config *c, double B, double ctx)
{
    const double H = c->num_attention_heads, C = c->kv_lora_rank, R = c->qk_rope_head_dim;
    const double nope = c->qk_nope_head_dim, vd = c->v_head_dim;
    return B * H * (2 * ctx * (C + R) + 2 * ctx * C + 2 * nope * C + 2 * C * vd);
}

/* wbytes / kvbytes: bytes per weight / per KV value (4 fp32, 2 bf16) */
static void layer_model(const mr_config *c, bool moe, int B, int ctx, double wbytes,
                        double kvbytes, bl_row *r)
{
    const double D = c->hidden_size, E = c->n_routed_experts, K = c->num_experts_per_tok;
    const double expert = 3.0 * D * c->moe_intermediate_size;
    const double kv = kvbytes * B * (ctx + 1.0) * mr_config_latent_dim(c);
    const double attn = attn_params(c);
    if (moe) {
        r->experts_touched = E * (1.0 - pow(1.0 - K / E, B));
        double shared = c->n_shared_experts * expert, gate = E * D;
        r->moe_bytes = wbytes * (attn + gate + shared + r->experts_touched * expert) + kv;
        r->moe_flops = 2.0 * B * (attn + gate + shared + K * expert) + attn_flops(c, B, ctx + 1.0);
    } else {
        double dense = 3.0 * D * c->intermediate_size;
        r->dense_bytes = wbytes * (attn + dense) + kv;
        r->dense_flops = 2.0 * B * (attn + dense) + attn_flops(c, B, ctx + 1.0);
    }
}

/* ---- the run --------------------------------------------------------------------- */

static mr_status run_batch(const mr_config *cfg, const mr_kernels *k, mr_engine *engine,
                           mr_kv_store *kv, bl_clock *clock, const bl_opts *o, int B, bl_row *r)
{
    mr_status st = MR_OK;
    mr_kv_seq *seqs = calloc((size_t)B, sizeof *seqs);
    mr_kv_seq **seq_of = malloc(sizeof *seq_of * (size_t)B);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)B), *pos = malloc(sizeof(int32_t) * (size_t)B);
    float *logits = malloc(sizeof(float) * (size_t)B * cfg->vocab_size);
    if (!seqs || !seq_of || !ids || !pos || !logits) st = mr_fail(MR_ENOMEM, "bench layer: out of memory");
    for (int i = 0; i < B && st == MR_OK; i++) {
        mr_kv_seq_init(&seqs[i], kv->pool);
        st = mr_kv_seq_reserve(&seqs[i], o->context + 1);
        seq_of[i] = &seqs[i];
        ids[i] = (int32_t)((i * 7919) % cfg->vocab_size);
        pos[i] = o->context;
    }
    const int L = cfg->num_hidden_layers;
    double *sum = calloc((size_t)L + 2, sizeof(double));
    if (!sum && st == MR_OK) st = mr_fail(MR_ENOMEM, "bench layer: out of memory");
    mr_batch batch = {B, ids, pos, seq_of, NULL};
    for (int s = -1; s < o->steps && st == MR_OK; s++) { /* step -1: warm-up */
        clock->n = 0;
        k->sync();
        double t0 = mr_now();
        st = mr_engine_forward(engine, &batch, logits);
        double t1 = mr_now();
        if (st != MR_OK || s < 0 || clock->n != L) continue;
        double prev = t0;
        for (int l = 0; l < L; l++) {
            sum[l] += clock->t[l] - prev;
            prev = clock->t[l];
        }
        sum[L] += t1 - prev;     /* head */
        sum[L + 1] += t1 - t0;   /* step */
    }
    if (st == MR_OK) {
        int n_dense = 0, n_moe = 0;
        for (int l = 0; l < L; l++) {
            if (mr_config_layer_is_moe(cfg, l)) {
                r->moe_ms += sum[l];
                n_moe++;
            } else {
                r->dense_ms += sum[l];
                n_dense++;
            }
        }
        r->batch = B;
        r->moe_ms = n_moe ? 1e3 * r->moe_ms / n_moe / o->steps : 0;
        r->dense_ms = n_dense ? 1e3 * r->dense_ms / n_dense / o->steps : 0;
        r->head_ms = 1e3 * sum[L] / o->steps;
        r->step_ms = 1e3 * sum[L + 1] / o->steps;
    }
    for (int i = 0; seqs && i < B; i++) mr_kv_seq_release(&seqs[i]);
    free(sum);
    free(seqs);
    free(seq_of);
    free(ids);
    free(pos);
    free(logits);
    return st;
}

static void print_table(const bl_opts *o, const mr_config *cfg, const char *source,
                        const char *device, double bw, double peak, const bl_row *rows, int n)
{
    char date[32];
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%d %H:%M", localtime(&now));
    printf("# moerun bench layer — %s, %s\n", source, date);
    printf("# backend %s (%s weights, %s KV) on %s; %d dense + %d MoE layers (hidden %d, %d heads, "
           "%d experts top-%d, inter %d/%d), context %d, %d steps per batch\n",
           o->backend, o->bf16 ? "bf16" : "fp32", mr_wtype_name(o->kv_dtype), device,
           cfg->first_k_dense_replace, cfg->num_hidden_layers - cfg->first_k_dense_replace,
           cfg->hidden_size, cfg->num_attention_heads, cfg->n_routed_experts,
           cfg->num_experts_per_tok, cfg->intermediate_size, cfg->moe_intermediate_size,
           o->context, o->steps);
    printf("# ceilings measured now: %s %.1f GB/s, matmul %d^3 %.1f GFLOP/s; "
           "roofline = max(bytes/bandwidth, FLOPs/matmul); ratio = roofline / measured\n",
           strcmp(o->backend, "cuda") ? "read-only stream (all CPUs)" : "D2D copy (read+write)",
           bw / 1e9, strcmp(o->backend, "cuda") ? 2048 : 8192, peak / 1e9);
    printf("#\n# %6s %10s %10s %10s %10s %11s %7s %10s %10s %8s %10s %7s %10s\n", "batch",
           "step(ms)", "head(ms)", "dense(ms)", "moe(ms)", "moe-roof", "ratio", "moe-GB",
           "moe-GFLOP", "experts", "dense-roof", "ratio", "tok/s");
    for (int i = 0; i < n; i++) {
        const bl_row *r = &rows[i];
        printf("  %6d %10.3f %10.3f %10.3f %10.3f %11.3f %7.2f %10.3f %10.2f %8.1f %10.3f %7.2f "
               "%10.1f\n",
               r->batch, r->step_ms, r->head_ms, r->dense_ms, r->moe_ms, r->moe_roof_ms,
               r->moe_ms > 0 ? r->moe_roof_ms / r->moe_ms : 0, r->moe_bytes / 1e9,
               r->moe_flops / 1e9, r->experts_touched, r->dense_roof_ms,
               r->dense_ms > 0 ? r->dense_roof_ms / r->dense_ms : 0,
               r->step_ms > 0 ? 1e3 * r->batch / r->step_ms : 0);
    }
}

static int write_json(const bl_opts *o, const char *source, const char *device, double bw,
                      double peak, const bl_row *rows, int n)
{
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "bench", "layer");
    cJSON_AddStringToObject(root, "model", source);
    cJSON_AddStringToObject(root, "backend", o->backend);
    cJSON_AddStringToObject(root, "precision", o->bf16 ? "bf16" : "fp32");
    cJSON_AddStringToObject(root, "kv_dtype", mr_wtype_name(o->kv_dtype));
    cJSON_AddStringToObject(root, "device", device);
    cJSON_AddNumberToObject(root, "context", o->context);
    cJSON_AddNumberToObject(root, "copy_bytes_per_s", bw);
    cJSON_AddNumberToObject(root, "matmul_flops_per_s", peak);
    cJSON *arr = cJSON_AddArrayToObject(root, "rows");
    for (int i = 0; i < n; i++) {
        cJSON *r = cJSON_CreateObject();
        cJSON_AddNumberToObject(r, "batch", rows[i].batch);
        cJSON_AddNumberToObject(r, "step_ms", rows[i].step_ms);
        cJSON_AddNumberToObject(r, "head_ms", rows[i].head_ms);
        cJSON_AddNumberToObject(r, "dense_layer_ms", rows[i].dense_ms);
        cJSON_AddNumberToObject(r, "moe_layer_ms", rows[i].moe_ms);
        cJSON_AddNumberToObject(r, "moe_roofline_ms", rows[i].moe_roof_ms);
        cJSON_AddNumberToObject(r, "dense_roofline_ms", rows[i].dense_roof_ms);
        cJSON_AddNumberToObject(r, "moe_bytes", rows[i].moe_bytes);
        cJSON_AddNumberToObject(r, "moe_flops", rows[i].moe_flops);
        cJSON_AddNumberToObject(r, "experts_touched", rows[i].experts_touched);
        cJSON_AddItemToArray(arr, r);
    }
    char *text = cJSON_Print(root);
    FILE *fp = text ? fopen(o->json_path, "w") : NULL;
    bool ok = fp && fputs(text, fp) >= 0;
    if (fp && fclose(fp) != 0) ok = false;
    free(text);
    cJSON_Delete(root);
    if (!ok) fprintf(stderr, "moerun bench layer: cannot write %s\n", o->json_path);
    return ok ? 0 : 1;
}

int mr_bench_layer(int argc, char **argv)
{
    bl_opts o;
    mr_log_set_tag("bench layer");
    if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) return usage(stdout, 0);
    if (parse(argc, argv, &o) != MR_OK) {
        fprintf(stderr, "moerun bench layer: %s\n\n", mr_last_error());
        return usage(stderr, 2);
    }
    mr_config cfg;
    mr_status st = o.config_path ? mr_config_load(o.config_path, &cfg)
                                 : mr_synth_preset_config(o.preset, &cfg);
    const mr_kernels *k = NULL;
    if (st == MR_OK) st = mr_backend_open(o.backend, o.bf16, &k);
    if (st != MR_OK) {
        fprintf(stderr, "moerun bench layer: %s\n", mr_last_error());
        return strstr(mr_last_error(), "no usable GPU") ? 77 : 1;
    }
    /* keep the config's shapes, only N dense + M MoE layers */
    int dense = o.dense_layers >= 0 ? o.dense_layers : (cfg.first_k_dense_replace > 0 ? 1 : 0);
    cfg.first_k_dense_replace = dense;
    cfg.num_hidden_layers = dense + o.moe_layers;
    if (cfg.num_hidden_layers < 1) {
        fprintf(stderr, "moerun bench layer: no layers (--dense-layers 0 --moe-layers 0)\n");
        return 2;
    }
    char source[512], device[256] = "CPU";
    snprintf(source, sizeof source, "%s", o.config_path ? o.config_path : o.preset);
    if (!strcmp(o.backend, "cuda")) mr_cuda_device_describe(device, sizeof device);

    const bool gpu = !strcmp(k->name, "cuda");
    /* on a GPU: 1 GiB (a 256 MiB copy is ~0.18 ms on an H100, its sync ~5 % of that) and
     * 8192^3 (2048^3 bf16 is ~20 us there: launch + sync halve the rate) */
    double bw = gpu ? copy_bandwidth(k, (size_t)1 << 30) : host_read_bandwidth();
    const mr_wtype wt = o.bf16 ? MR_WT_BF16 : MR_WT_F32;
    double peak = matmul_peak(k, gpu ? 8192 : 2048, wt);
    MR_INFO("ceilings: copy %.1f GB/s, matmul %.1f GFLOP/s; building random weights", bw / 1e9,
            peak / 1e9);
    mr_weights host;
    mr_engine *engine = NULL;
    mr_kv_store kv = {0};
    bl_row rows[BL_MAX_BATCHES];
    memset(rows, 0, sizeof rows);
    double t0 = mr_now();
    st = mr_weights_random(&cfg, 1, &host);
    int max_b = 1;
    for (int i = 0; i < o.n_batches; i++) max_b = o.batches[i] > max_b ? o.batches[i] : max_b;
    double ticks[256];
    bl_clock clock = {.k = k, .t = ticks, .cap = 256};
    if (st == MR_OK) {
        MR_INFO("%.1f GB of random fp32 weights in %.1f s; to the %s backend", host.n_bytes / 1e9,
                mr_now() - t0, k->name);
        mr_engine_opts eo = {.kernels = k, .weight_type = wt, .attn = MR_ATTN_ABSORB,
                             .between_layers = bl_tick, .between_layers_ctx = &clock};
        st = mr_engine_create(&cfg, &host, &eo, &engine);
    }
    if (st == MR_OK && (!k->host_memory || wt != MR_WT_F32))
        mr_weights_free(&host); /* the engine holds its copy */
    int blocks = max_b * ((o.context + 1 + BL_BLOCK_TOKENS - 1) / BL_BLOCK_TOKENS);
    if (st == MR_OK)
        st = mr_kv_store_create(k, cfg.num_hidden_layers, mr_config_latent_dim(&cfg),
                                BL_BLOCK_TOKENS, blocks, o.kv_dtype, NULL, &kv);
    int n = 0;
    for (int i = 0; i < o.n_batches && st == MR_OK; i++, n++) {
        st = run_batch(&cfg, k, engine, &kv, &clock, &o, o.batches[i], &rows[i]);
        const double wb = (double)mr_wtype_size(wt), kvb = (double)mr_wtype_size(o.kv_dtype);
        layer_model(&cfg, true, o.batches[i], o.context, wb, kvb, &rows[i]);
        layer_model(&cfg, false, o.batches[i], o.context, wb, kvb, &rows[i]);
        rows[i].moe_roof_ms = 1e3 * fmax(rows[i].moe_bytes / bw, rows[i].moe_flops / peak);
        rows[i].dense_roof_ms = 1e3 * fmax(rows[i].dense_bytes / bw, rows[i].dense_flops / peak);
        if (st == MR_OK)
            MR_INFO("batch %d: step %.3f ms, MoE layer %.3f ms (roofline %.3f ms)", o.batches[i],
                    rows[i].step_ms, rows[i].moe_ms, rows[i].moe_roof_ms);
    }
    mr_engine_destroy(engine);
    mr_kv_store_destroy(&kv);
    mr_weights_free(&host);
    if (st != MR_OK) {
        fprintf(stderr, "moerun bench layer: %s\n", mr_last_error());
        return 1;
    }
    print_table(&o, &cfg, source, device, bw, peak, rows, n);
    return o.json_path ? write_json(&o, source, device, bw, peak, rows, n) : 0;
}
