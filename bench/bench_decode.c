/* bench/bench_decode.c — `moerun bench decode`: single-sequence decode speed
 * of the engine against the memory system.
 *
 *   moerun bench decode [--model DIR] [--tokens N] [--threads T] [--json FILE]
 *
 * Without --model the `small` preset (f32) is synthesized into a temporary
 * directory. One prompt of 16 tokens is prefilled, then N tokens are decoded
 * one at a time (batch 1, greedy). Decode at batch 1 is bound by reading
 * weights: every step reads the attention and dense weights of every layer,
 * the router, the shared experts and the K routed experts each MoE layer
 * picks, and lm_head. The table reports tokens/s, those active weight bytes
 * per token, the implied weight bytes/s, and a read-only stream over a buffer
 * of the model's size measured in the same run (bench_read_pass) as the
 * ceiling. */
#include <cblas.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/timer.h"
#include "../model/engine.h"
#include "../model/model.h"
#include "../model/sampler.h"
#include "../model/synth.h"
#include "bench_decode.h"
#include "bench_sys.h"

static double mat_bytes(const mr_mat *m)
{
    return 4.0 * m->rows * m->cols;
}

static double mlp_bytes(const mr_mlp *m)
{
    return mat_bytes(&m->gate) + mat_bytes(&m->up) + mat_bytes(&m->down);
}

/* Weight bytes one decode step reads, besides the routed experts. */
static double fixed_bytes_per_token(const mr_config *c, const mr_weights *w)
{
    double b = 4.0 * c->hidden_size * 2; /* embedding row + final norm */
    b += mat_bytes(&w->lm_head);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        const mr_layer_weights *lw = &w->layers[l];
        b += mat_bytes(&lw->q_a) + mat_bytes(&lw->q_b) + mat_bytes(&lw->q) + mat_bytes(&lw->kv_a) +
             mat_bytes(&lw->kv_b) + mat_bytes(&lw->o);
        b += lw->is_moe ? mat_bytes(&lw->gate) + (c->n_shared_experts ? mlp_bytes(&lw->shared) : 0)
                        : mlp_bytes(&lw->dense);
    }
    return b;
}

int mr_bench_decode(int argc, char **argv)
{
    const char *model_arg = NULL, *json_path = NULL;
    int n_tokens = 64, threads = 1;
    for (int i = 2; i < argc; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        mr_status st = MR_OK;
        if (!v) st = mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        else if (!strcmp(f, "--model")) model_arg = v;
        else if (!strcmp(f, "--json")) json_path = v;
        else if (!strcmp(f, "--tokens")) st = mr_parse_int(f, v, 2, 100000, &n_tokens);
        else if (!strcmp(f, "--threads")) st = mr_parse_int(f, v, 1, 256, &threads);
        else st = mr_fail(MR_EINVAL, "unknown flag '%s'", f);
        if (st != MR_OK) {
            fprintf(stderr, "moerun bench decode: %s\n", mr_last_error());
            return 2;
        }
    }
    openblas_set_num_threads(threads);
    char tmp[PATH_MAX - 64] = "", model_dir[PATH_MAX];
    mr_status st = MR_OK;
    if (model_arg) {
        snprintf(model_dir, sizeof model_dir, "%s", model_arg);
    } else {
        const char *t = getenv("TMPDIR");
        snprintf(tmp, sizeof tmp, "%s/moerun-bench-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(tmp)) {
            fprintf(stderr, "moerun bench decode: cannot create a temporary directory\n");
            return 1;
        }
        snprintf(model_dir, sizeof model_dir, "%s/model", tmp);
        mr_synth_opts so = {.preset = "small", .dtype = MR_SYNTH_F32, .seed = 1, .shards = 1};
        st = mr_synth_write(model_dir, &so);
    }
    mr_model m;
    memset(&m, 0, sizeof m);
    mr_engine *e = NULL;
    mr_kv_pool *pool = NULL;
    mr_kv_seq seq = {0};
    float *logits = NULL;
    if (st == MR_OK) st = mr_model_load(model_dir, NULL, NULL, &m);
    const mr_config *c = &m.cfg;
    const int prompt = 16;
    if (st == MR_OK) st = mr_engine_create(c, &m.weights, NULL, &e);
    if (st == MR_OK)
        st = mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 16,
                               (prompt + n_tokens) / 16 + 2, &pool);
    if (st == MR_OK) {
        mr_kv_seq_init(&seq, pool);
        st = mr_kv_seq_reserve(&seq, prompt + n_tokens);
    }
    logits = malloc(sizeof(float) * (size_t)prompt * (c->vocab_size > 0 ? c->vocab_size : 1));
    double t_decode = 0;
    if (st == MR_OK && logits) {
        int32_t ids[16], pos[16];
        mr_kv_seq *seqs[16];
        for (int i = 0; i < prompt; i++) {
            ids[i] = (i * 131 + 7) % c->vocab_size;
            pos[i] = i;
            seqs[i] = &seq;
        }
        mr_batch b = {prompt, ids, pos, seqs, NULL};
        st = mr_engine_forward(e, &b, logits);
        int32_t token = mr_argmax(logits + (size_t)(prompt - 1) * c->vocab_size, c->vocab_size);
        double t0 = mr_now();
        for (int g = 0; g < n_tokens && st == MR_OK; g++) {
            int32_t p = prompt + g;
            mr_kv_seq *sp = &seq;
            mr_batch step = {1, &token, &p, &sp, NULL};
            st = mr_engine_forward(e, &step, logits);
            token = mr_argmax(logits, c->vocab_size);
        }
        t_decode = mr_now() - t0;
    }
    int rc = 0;
    if (st != MR_OK) {
        fprintf(stderr, "moerun bench decode: %s\n", mr_last_error());
        rc = 1;
    } else {
        const int n_moe = c->num_hidden_layers - c->first_k_dense_replace;
        double expert = 4.0 * 3.0 * c->hidden_size * c->moe_intermediate_size;
        double per_token = fixed_bytes_per_token(c, &m.weights) +
                           (double)n_moe * c->num_experts_per_tok * expert;
        /* stream baseline over a buffer as large as the model (cold) */
        size_t n_floats = (size_t)(m.weights.n_bytes / 4);
        float *buf = malloc(n_floats * sizeof(float));
        double best = 1e30;
        const bool have_stream = buf != NULL;
        if (have_stream) {
            for (size_t i = 0; i < n_floats; i++) buf[i] = (float)(i & 7);
            for (int r = 0; r < 5; r++) {
                double t0 = mr_now();
                volatile float sink = bench_read_pass(buf, n_floats, threads);
                (void)sink;
                double dt = mr_now() - t0;
                if (dt < best) best = dt;
            }
            free(buf);
        }
        double stream = have_stream ? (double)n_floats * 4.0 / best : 0.0;
        double tok_s = n_tokens / t_decode;
        double bytes_s = per_token * tok_s;
        printf("# moerun bench decode: model %s (%.0f MB fp32), batch 1, %d tokens, %d thread(s), "
               "OpenBLAS core %s\n", m.source, (double)m.weights.n_bytes / 1e6, n_tokens, threads,
               openblas_get_corename());
        printf("# %10s %14s %16s %16s %10s\n", "tok/s", "MB/token", "weights GB/s", "stream GB/s",
               "ratio");
        printf("  %10.1f %14.1f %16.2f %16.2f %10.2f\n", tok_s, per_token / 1e6, bytes_s / 1e9,
               stream / 1e9, stream > 0 ? bytes_s / stream : 0.0);
        if (json_path) {
            FILE *fp = fopen(json_path, "w");
            if (fp) {
                fprintf(fp, "{\"tok_s\":%.3f,\"bytes_per_token\":%.0f,\"weights_gbs\":%.3f,"
                            "\"stream_gbs\":%.3f,\"threads\":%d}\n",
                        tok_s, per_token, bytes_s / 1e9, stream / 1e9, threads);
                fclose(fp);
            }
        }
    }
    free(logits);
    mr_kv_seq_release(&seq);
    mr_kv_pool_destroy(pool);
    mr_engine_destroy(e);
    mr_model_free(&m);
    if (tmp[0]) {
        char cmd[PATH_MAX + 16];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp);
    }
    return rc;
}
