/* tests/gpu/test_gpu_mla.c — CUDA MLA attention (absorbed and naive) against
 * the CPU reference. Tolerance GT_TOL_GEMM_FP32 (FP32) / GT_TOL_CHAIN_BF16
 * (BF16) of max|ref|.
 *
 * Shapes: one head and one context row, odd sizes, causal prefill chunks
 * (query i sees n_ctx - n_q + i + 1 rows), explicit ctx_len with a fully
 * masked query (ctx_len 0 → zero output), and DeepSeek-V3 head shapes (128
 * heads, kv_lora 512, rope 64; naive qk 192, v 128) at short contexts.
 * Inputs uniform in [-1, 1); scale 1/√(qk head dim).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gpu_test.h"

#include "common/bf16.h"

/* ctx_len(i): explicit list when `lens` is non-NULL, else causal. */
static int32_t *make_ctx_len(gt_ctx *t, int n_q, int n_ctx, const int32_t *lens)
{
    int32_t *len = (int32_t *)gt_host(t, (size_t)n_q);
    for (int i = 0; i < n_q; i++) len[i] = lens != NULL ? lens[i] : n_ctx - n_q + i + 1;
    return len;
}

static double mla_tol(const gt_ctx *t)
{
    return t->bf16 ? GT_TOL_CHAIN_BF16 : GT_TOL_GEMM_FP32;
}

static void check_absorbed(gt_ctx *t, int n_q, int n_heads, int kv_lora, int rope_dim,
                           int n_ctx, const int32_t *lens)
{
    const size_t n_lat = (size_t)n_q * n_heads * kv_lora, n_pe = (size_t)n_q * n_heads * rope_dim;
    const size_t n_ctx_f = (size_t)n_ctx * (kv_lora + rope_dim);
    const size_t n_scratch = (size_t)n_q * n_heads * n_ctx;
    float *q_lat = gt_host(t, n_lat), *q_pe = gt_host(t, n_pe), *ctx = gt_host(t, n_ctx_f);
    float *out_cpu = gt_host(t, n_lat), *out_gpu = gt_host(t, n_lat);
    float *scratch = gt_host(t, n_scratch);
    int32_t *len = make_ctx_len(t, n_q, n_ctx, lens);
    gt_fill(t, q_lat, n_lat, -1.0f, 1.0f);
    gt_fill(t, q_pe, n_pe, -1.0f, 1.0f);
    gt_fill(t, ctx, n_ctx_f, -1.0f, 1.0f);
    const float scale = 1.0f / sqrtf((float)(kv_lora + rope_dim));
    float *dq_lat = gt_upload(t, q_lat, n_lat * sizeof(float));
    float *dq_pe = gt_upload(t, q_pe, n_pe * sizeof(float));
    float *dctx = gt_upload(t, ctx, n_ctx_f * sizeof(float));
    int32_t *dlen = gt_upload(t, len, (size_t)n_q * sizeof(int32_t));
    float *dout = gt_dev_alloc(t, n_lat * sizeof(float));
    float *dscratch = gt_dev_alloc(t, n_scratch * sizeof(float));
    t->cpu->mla_absorbed(q_lat, q_pe, n_q, n_heads, kv_lora, rope_dim, ctx, n_ctx, len, scale,
                         out_cpu, scratch);
    t->gpu->mla_absorbed(dq_lat, dq_pe, n_q, n_heads, kv_lora, rope_dim, dctx, n_ctx, dlen,
                         scale, dout, dscratch);
    gt_download(t, out_gpu, dout, n_lat * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "mla_absorbed q=%d H=%d C=%d R=%d ctx=%d%s", n_q, n_heads,
             kv_lora, rope_dim, n_ctx, lens != NULL ? " ctx_len given" : " causal");
    gt_check_close(t, what, out_gpu, out_cpu, n_lat, mla_tol(t));
    gt_case_end(t);
}

void gt_test_mla_absorbed(gt_ctx *t)
{
    check_absorbed(t, 1, 1, 1, 2, 1, NULL);
    check_absorbed(t, 5, 16, 64, 16, 37, NULL); /* DeepSeek-V3 ratios, scaled down */
    static const int32_t lens[3] = { 0, 7, 20 };
    check_absorbed(t, 3, 3, 33, 8, 20, lens);   /* odd; query 0 sees nothing */
    check_absorbed(t, 1, 128, 512, 64, 300, NULL); /* DeepSeek-V3 decode */
    check_absorbed(t, 4, 128, 512, 64, 129, NULL); /* DeepSeek-V3 prefill chunk */
}

/* mla_decode_paged: tokens 0, 2, 4, ... of a batch (odd ones are not decode
 * tokens and must stay untouched), each over its own scattered pool rows,
 * q_pe read in place from q-like rows (head stride dqk). */
static void check_decode_paged(gt_ctx *t, int n_tok, int n_heads, int C, int R, const int *n_ctx,
                               mr_wtype kv_type)
{
    const int lat = C + R, dqk = 128 + R, T = 2 * n_tok;
    int total = 0, max_ctx = 0;
    for (int i = 0; i < n_tok; i++) {
        total += n_ctx[i];
        max_ctx = n_ctx[i] > max_ctx ? n_ctx[i] : max_ctx;
    }
    const int pool_rows = 2 * total + 8, row_base = 3;
    float *pool = gt_host(t, (size_t)(pool_rows + row_base) * lat);
    float *q_lat = gt_host(t, (size_t)T * n_heads * C);
    float *q = gt_host(t, (size_t)T * n_heads * dqk);
    float *out_cpu = gt_host(t, (size_t)T * n_heads * C), *out_gpu = gt_host(t, (size_t)T * n_heads * C);
    gt_fill(t, pool, (size_t)(pool_rows + row_base) * lat, -1.0f, 1.0f);
    gt_fill(t, q_lat, (size_t)T * n_heads * C, -1.0f, 1.0f);
    gt_fill(t, q, (size_t)T * n_heads * dqk, -1.0f, 1.0f);
    gt_fill(t, out_cpu, (size_t)T * n_heads * C, 5.0f, 6.0f);
    int32_t *rows = (int32_t *)gt_host(t, (size_t)total + 1);
    int32_t *seq = (int32_t *)gt_host(t, 3 * (size_t)n_tok);
    for (int i = 0, off = 0; i < n_tok; i++) {
        seq[3 * i] = 2 * i;
        seq[3 * i + 1] = off;
        seq[3 * i + 2] = n_ctx[i];
        for (int r = 0; r < n_ctx[i]; r++) /* scattered, like paged blocks */
            rows[off + r] = (int32_t)(((size_t)(off + r) * 7919u) % (size_t)pool_rows);
        off += n_ctx[i];
    }
    const float scale = 0.1f;
    const size_t pool_n = (size_t)(pool_rows + row_base) * lat;
    void *pool_t = pool; /* the pool as kv_type (bf16: rounded) */
    if (kv_type == MR_WT_BF16) {
        uint16_t *b = (uint16_t *)gt_host(t, pool_n / 2 + 1);
        for (size_t i = 0; i < pool_n; i++) b[i] = mr_bf16_round(pool[i]);
        pool_t = b;
    }
    void *d_pool = gt_upload(t, pool_t, pool_n * mr_wtype_size(kv_type));
    float *d_qlat = gt_upload(t, q_lat, (size_t)T * n_heads * C * sizeof(float));
    float *d_q = gt_upload(t, q, (size_t)T * n_heads * dqk * sizeof(float));
    float *d_out = gt_upload(t, out_cpu, (size_t)T * n_heads * C * sizeof(float));
    int32_t *d_rows = gt_upload(t, rows, ((size_t)total + 1) * sizeof(int32_t));
    int32_t *d_seq = gt_upload(t, seq, 3 * (size_t)n_tok * sizeof(int32_t));
    const size_t n_scratch = (size_t)max_ctx * lat + (size_t)n_heads * R + (size_t)n_heads * max_ctx;
    float *scratch = gt_host(t, n_scratch);
    /* pool rows are row indices relative to pool + row_base rows */
    t->cpu->mla_decode_paged(q_lat, q + 128, n_heads * dqk, dqk, n_tok, seq, n_heads, C, R, pool_t,
                             kv_type, rows, row_base, scale, out_cpu, scratch, max_ctx);
    t->gpu->mla_decode_paged(d_qlat, d_q + 128, n_heads * dqk, dqk, n_tok, d_seq, n_heads, C, R,
                             d_pool, kv_type, d_rows, row_base, scale, d_out, NULL, max_ctx);
    gt_download(t, out_gpu, d_out, (size_t)T * n_heads * C * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "mla_decode_paged %s KV tokens=%d heads=%d C=%d R=%d max_ctx=%d%s",
             mr_wtype_name(kv_type), n_tok, n_heads, C, R, max_ctx,
             t->bf16 ? " (tensor-core kernel)" : "");
    /* decode tokens' rows against the CPU (error relative to their own max|ref|,
     * not to the 5..6 filler, which would loosen the tolerance 6-15x); the
     * other tokens' rows must come back bit-identical */
    const size_t hc = (size_t)n_heads * C;
    float *got_d = gt_host(t, (size_t)n_tok * hc), *ref_d = gt_host(t, (size_t)n_tok * hc);
    bool untouched = true;
    for (int i = 0; i < n_tok; i++) {
        memcpy(got_d + i * hc, out_gpu + (size_t)(2 * i) * hc, hc * sizeof(float));
        memcpy(ref_d + i * hc, out_cpu + (size_t)(2 * i) * hc, hc * sizeof(float));
        untouched &= memcmp(out_gpu + (size_t)(2 * i + 1) * hc, out_cpu + (size_t)(2 * i + 1) * hc,
                            hc * sizeof(float)) == 0;
    }
    gt_check_close(t, what, got_d, ref_d, (size_t)n_tok * hc, mla_tol(t));
    gt_check_true(t, "mla_decode_paged: rows of non-decode tokens untouched", untouched, NULL);
    gt_case_end(t);
}

void gt_test_mla_decode_paged(gt_ctx *t)
{
    static const int one[1] = {1}, mixed[4] = {3, 17, 1, 40}, v3[3] = {300, 1025, 64};
    check_decode_paged(t, 1, 1, 32, 8, one, MR_WT_F32);
    check_decode_paged(t, 4, 33, 64, 16, mixed, MR_WT_F32);   /* heads not a multiple of 32 (16) */
    check_decode_paged(t, 3, 128, 512, 64, v3, MR_WT_F32);    /* DeepSeek-V3 decode */
    check_decode_paged(t, 4, 33, 64, 16, mixed, MR_WT_BF16);  /* --kv-dtype bf16 */
    check_decode_paged(t, 3, 128, 512, 64, v3, MR_WT_BF16);
}

static void check_naive(gt_ctx *t, int n_q, int n_heads, int qk_dim, int v_dim, int n_ctx,
                        const int32_t *lens)
{
    const size_t n_qf = (size_t)n_q * n_heads * qk_dim, n_kf = (size_t)n_ctx * n_heads * qk_dim;
    const size_t n_vf = (size_t)n_ctx * n_heads * v_dim, n_out = (size_t)n_q * n_heads * v_dim;
    const size_t n_scratch = (size_t)n_q * n_heads * n_ctx;
    float *q = gt_host(t, n_qf), *k = gt_host(t, n_kf), *v = gt_host(t, n_vf);
    float *out_cpu = gt_host(t, n_out), *out_gpu = gt_host(t, n_out);
    float *scratch = gt_host(t, n_scratch);
    int32_t *len = make_ctx_len(t, n_q, n_ctx, lens);
    gt_fill(t, q, n_qf, -1.0f, 1.0f);
    gt_fill(t, k, n_kf, -1.0f, 1.0f);
    gt_fill(t, v, n_vf, -1.0f, 1.0f);
    const float scale = 1.0f / sqrtf((float)qk_dim);
    float *dq = gt_upload(t, q, n_qf * sizeof(float));
    float *dk = gt_upload(t, k, n_kf * sizeof(float));
    float *dv = gt_upload(t, v, n_vf * sizeof(float));
    int32_t *dlen = gt_upload(t, len, (size_t)n_q * sizeof(int32_t));
    float *dout = gt_dev_alloc(t, n_out * sizeof(float));
    float *dscratch = gt_dev_alloc(t, n_scratch * sizeof(float));
    t->cpu->mla_naive(q, k, v, n_q, n_heads, qk_dim, v_dim, n_ctx, len, scale, out_cpu,
                      scratch);
    t->gpu->mla_naive(dq, dk, dv, n_q, n_heads, qk_dim, v_dim, n_ctx, dlen, scale, dout,
                      dscratch);
    gt_download(t, out_gpu, dout, n_out * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "mla_naive q=%d H=%d qk=%d v=%d ctx=%d%s", n_q, n_heads, qk_dim,
             v_dim, n_ctx, lens != NULL ? " ctx_len given" : " causal");
    gt_check_close(t, what, out_gpu, out_cpu, n_out, mla_tol(t));
    gt_case_end(t);
}

void gt_test_mla_naive(gt_ctx *t)
{
    check_naive(t, 1, 1, 1, 1, 1, NULL);
    check_naive(t, 5, 16, 48, 32, 37, NULL);
    static const int32_t lens[2] = { 0, 9 };
    check_naive(t, 2, 3, 7, 5, 9, lens);
    check_naive(t, 4, 128, 192, 128, 64, NULL); /* DeepSeek-V3 heads */
    check_naive(t, 1, 128, 192, 128, 200, NULL);
}
