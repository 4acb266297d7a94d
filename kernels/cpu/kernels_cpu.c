/* kernels/cpu/kernels_cpu.c — the CPU backend table: norms, RoPE, softmax,
 * the MoE router and MLA attention. GEMM-shaped work goes to OpenBLAS (or
 * matmul_cpu.c's weight-streaming kernel for few tokens). This is the
 * reference every other backend is compared against. */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "../../common/bf16.h"
#include "../../model/sampler.h"
#include "../../common/aligned.h"

static void cpu_rmsnorm(const float *x, const float *weight, float *y, int n_rows, int dim,
                        int stride, float eps)
{
    for (int r = 0; r < n_rows; r++) {
        const float *xr = x + (size_t)r * stride;
        float *yr = y + (size_t)r * stride;
        double sum_sq = 0.0;
        for (int i = 0; i < dim; i++) sum_sq += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(sum_sq / dim + eps));
        for (int i = 0; i < dim; i++) yr[i] = xr[i] * inv * weight[i];
    }
}

static void cpu_rope(float *x, int n_vecs, int stride, int rope_dim, const float *cos_t,
                     const float *sin_t)
{
    for (int v = 0; v < n_vecs; v++) {
        float *p = x + (size_t)v * stride;
        for (int j = 0; j < rope_dim / 2; j++) {
            float re = p[2 * j], im = p[2 * j + 1];
            p[2 * j] = re * cos_t[j] - im * sin_t[j];
            p[2 * j + 1] = re * sin_t[j] + im * cos_t[j];
        }
    }
}

static void cpu_matmul_strided(const float *x, int ldx, size_t x_bstride, const void *w,
                               mr_wtype wt, size_t w_bstride, float *y, int ldy,
                               size_t y_bstride, int batch, int m, int n, int k)
{
    if (m <= 0 || n <= 0 || batch <= 0) return;
    float *xd = malloc(sizeof(float) * (size_t)m * (size_t)(k > 0 ? k : 1));
    float *yd = malloc(sizeof(float) * (size_t)m * (size_t)n);
    if (!xd || !yd) abort(); /* the table's ops cannot fail; a few hundred KB */
    for (int b = 0; b < batch; b++) {
        for (int r = 0; r < m; r++)
            memcpy(xd + (size_t)r * k, x + b * x_bstride + (size_t)r * ldx, sizeof(float) * (size_t)k);
        mr_cpu_matmul_typed(xd, mr_wtype_at(w, wt, b * w_bstride), wt, yd, m, n, k, false);
        for (int r = 0; r < m; r++)
            memcpy(y + b * y_bstride + (size_t)r * ldy, yd + (size_t)r * n, sizeof(float) * (size_t)n);
    }
    free(xd);
    free(yd);
}

static void cpu_rope_tokens(float *x, int n_tokens, int token_stride, int n_vecs, int vec_stride,
                            int rope_dim, const float *cos_t, const float *sin_t)
{
    const int half = rope_dim / 2;
    for (int t = 0; t < n_tokens; t++)
        cpu_rope(x + (size_t)t * token_stride, n_vecs, vec_stride, rope_dim,
                 cos_t + (size_t)t * half, sin_t + (size_t)t * half);
}

static void cpu_softmax(float *x, int n_rows, int n)
{
    for (int r = 0; r < n_rows; r++) {
        float *row = x + (size_t)r * n;
        float max = -INFINITY;
        for (int i = 0; i < n; i++) max = row[i] > max ? row[i] : max;
        if (max == -INFINITY) { /* fully masked row: defined as all zeros */
            memset(row, 0, sizeof(float) * (size_t)n);
            continue;
        }
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            row[i] = expf(row[i] - max);
            sum += row[i];
        }
        float inv = (float)(1.0 / sum);
        for (int i = 0; i < n; i++) row[i] *= inv;
    }
}

/* Indices of the k largest values of v[0..n) in descending order; ties go
 * to the lower index (as torch.topk on CPU in practice, and as the spec says).
 * -inf entries are only chosen when fewer than k finite ones exist. */
static void top_k_indices(const float *v, int n, int k, int32_t *out)
{
    for (int j = 0; j < k; j++) out[j] = -1;
    for (int i = 0; i < n; i++) {
        int pos = k;
        while (pos > 0 && (out[pos - 1] < 0 || v[i] > v[out[pos - 1]])) pos--;
        if (pos >= k) continue;
        memmove(out + pos + 1, out + pos, sizeof(int32_t) * (size_t)(k - pos - 1));
        out[pos] = i;
    }
}

static void cpu_moe_gate(const float *logits, const float *bias, int n_tokens,
                         const mr_gate_params *p, int32_t *expert_ids, float *weights,
                         float *scratch)
{
    const int n_exp = p->n_experts;
    float *scores = scratch;          /* [E] unbiased */
    float *sel = scratch + n_exp;     /* [E] selection scores */
    const bool grouped = p->method != MR_TOPK_GREEDY && p->n_group > 1;
    const int per_group = n_exp / p->n_group;

    for (int t = 0; t < n_tokens; t++) {
        const float *lg = logits + (size_t)t * n_exp;
        if (p->score_func == MR_SCORE_SIGMOID) {
            for (int e = 0; e < n_exp; e++) scores[e] = 1.0f / (1.0f + expf(-lg[e]));
        } else {
            memcpy(scores, lg, sizeof(float) * (size_t)n_exp);
            cpu_softmax(scores, 1, n_exp);
        }
        for (int e = 0; e < n_exp; e++) sel[e] = bias ? scores[e] + bias[e] : scores[e];

        if (grouped) {
            const int n_group = p->n_group;
            float *group_score = scratch + 2 * (size_t)n_exp;                  /* [n_group] */
            int32_t *keep = (int32_t *)(scratch + 2 * (size_t)n_exp + n_group); /* [topk_group] */
            for (int g = 0; g < n_group; g++) {
                const float *gs = sel + (size_t)g * per_group;
                if (bias) { /* sum of the two best in the group */
                    int32_t best2[2];
                    int k2 = per_group < 2 ? per_group : 2;
                    top_k_indices(gs, per_group, k2, best2);
                    group_score[g] = gs[best2[0]] + (k2 > 1 ? gs[best2[1]] : 0.0f);
                } else {
                    float m = -INFINITY;
                    for (int i = 0; i < per_group; i++) m = gs[i] > m ? gs[i] : m;
                    group_score[g] = m;
                }
            }
            top_k_indices(group_score, n_group, p->topk_group, keep);
            for (int g = 0; g < n_group; g++) {
                bool kept = false;
                for (int j = 0; j < p->topk_group; j++) kept |= keep[j] == g;
                if (!kept)
                    for (int i = 0; i < per_group; i++) sel[(size_t)g * per_group + i] = -INFINITY;
            }
        }

        int32_t *ids = expert_ids + (size_t)t * p->top_k;
        float *w = weights + (size_t)t * p->top_k;
        top_k_indices(sel, n_exp, p->top_k, ids);
        double sum = 0.0;
        for (int j = 0; j < p->top_k; j++) {
            w[j] = scores[ids[j]];
            sum += w[j];
        }
        bool normalize = p->norm_topk_prob && p->top_k > 1;
        float scale = p->routed_scaling_factor;
        if (normalize && p->v2_scaling) scale = 1.0f;
        for (int j = 0; j < p->top_k; j++) {
            float v = normalize ? (float)(w[j] / (sum + 1e-20)) : w[j];
            w[j] = v * scale;
        }
    }
}

/* Rows of `scores` (n_q*H, n_ctx): query i = row/H may see t < ctx_len[i]. */
static void mask_and_softmax(float *scores, int n_q, int n_heads, int n_ctx,
                             const int32_t *ctx_len)
{
    for (int i = 0; i < n_q; i++) {
        for (int h = 0; h < n_heads; h++) {
            float *row = scores + ((size_t)i * n_heads + h) * n_ctx;
            for (int t = ctx_len[i]; t < n_ctx; t++) row[t] = -INFINITY;
        }
    }
    cpu_softmax(scores, n_q * n_heads, n_ctx);
}

static void cpu_mla_absorbed(const float *q_lat, const float *q_pe, int n_q, int n_heads,
                             int kv_lora, int rope_dim, const float *ctx, int n_ctx,
                             const int32_t *ctx_len, float scale, float *out_lat,
                             float *scratch)
{
    const int rows = n_q * n_heads;
    const int ld_ctx = kv_lora + rope_dim;
    float *scores = scratch; /* (rows, n_ctx) */
    /* scores = scale · (q_lat · cᵀ + q_pe · peᵀ) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_ctx, kv_lora, scale, q_lat,
                kv_lora, ctx, ld_ctx, 0.0f, scores, n_ctx);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n_ctx, rope_dim, scale, q_pe,
                rope_dim, ctx + kv_lora, ld_ctx, 1.0f, scores, n_ctx);
    mask_and_softmax(scores, n_q, n_heads, n_ctx, ctx_len);
    /* out_lat = P · c */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, kv_lora, n_ctx, 1.0f, scores,
                n_ctx, ctx, ld_ctx, 0.0f, out_lat, kv_lora);
}

static void cpu_gather_rows(const void *src, mr_wtype src_type, int src_ld, const int32_t *rows,
                            int row_base, int n, int width, float *dst);

static void cpu_mla_decode_paged(const float *q_lat, const float *q_pe, int q_pe_ld,
                                 int q_pe_hstride, int n_tok, const int32_t *seq, int n_heads,
                                 int kv_lora, int rope_dim, const void *kv, mr_wtype kv_type,
                                 const int32_t *rows, int row_base, float scale, float *out_lat,
                                 float *scratch, int max_ctx)
{
    const int lat = kv_lora + rope_dim;
    float *ctx = scratch;                                    /* (max_ctx, lat) */
    float *pe = ctx + (size_t)max_ctx * lat;                 /* (H, R) dense q_pe */
    float *scores = pe + (size_t)n_heads * rope_dim;         /* (H, max_ctx) */
    for (int i = 0; i < n_tok; i++) {
        const int token = seq[3 * i], off = seq[3 * i + 1], n_ctx = seq[3 * i + 2];
        cpu_gather_rows(kv, kv_type, lat, rows + off, row_base, n_ctx, lat, ctx);
        for (int h = 0; h < n_heads; h++)
            memcpy(pe + (size_t)h * rope_dim, q_pe + (size_t)token * q_pe_ld + (size_t)h * q_pe_hstride,
                   sizeof(float) * rope_dim);
        const int32_t len = n_ctx;
        cpu_mla_absorbed(q_lat + (size_t)token * n_heads * kv_lora, pe, 1, n_heads, kv_lora,
                         rope_dim, ctx, n_ctx, &len, scale,
                         out_lat + (size_t)token * n_heads * kv_lora, scores);
    }
}

static void cpu_mla_naive(const float *q, const float *k, const float *v, int n_q, int n_heads,
                          int qk_dim, int v_dim, int n_ctx, const int32_t *ctx_len, float scale,
                          float *out, float *scratch)
{
    /* Per head: scores(n_q, n_ctx) = q_h · k_hᵀ, strided views into (.., H, d). */
    for (int h = 0; h < n_heads; h++) {
        float *scores = scratch + (size_t)h * n_q * n_ctx;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n_q, n_ctx, qk_dim, scale,
                    q + (size_t)h * qk_dim, n_heads * qk_dim, k + (size_t)h * qk_dim,
                    n_heads * qk_dim, 0.0f, scores, n_ctx);
        for (int i = 0; i < n_q; i++)
            for (int t = ctx_len[i]; t < n_ctx; t++) scores[(size_t)i * n_ctx + t] = -INFINITY;
        cpu_softmax(scores, n_q, n_ctx);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n_q, v_dim, n_ctx, 1.0f, scores,
                    n_ctx, v + (size_t)h * v_dim, n_heads * v_dim, 0.0f,
                    out + (size_t)h * v_dim, n_heads * v_dim);
    }
}

/* Backend memory of the cpu backend is host memory. */
static void *cpu_alloc(size_t bytes)
{
    return mr_aligned_alloc(bytes);
}

static void cpu_free(void *p)
{
    free(p);
}

static void cpu_copy(void *dst, const void *src, size_t bytes, int direction)
{
    (void)direction; /* H2D, D2H and D2D are all host-to-host here */
    if (bytes > 0) memcpy(dst, src, bytes);
}

static void cpu_sync(void)
{
    /* every cpu op has finished when it returns */
}

static mr_status cpu_host_register(void *p, size_t bytes)
{
    (void)p;
    (void)bytes;
    return MR_OK; /* host memory is all the cpu backend knows */
}

static void cpu_host_unregister(void *p)
{
    (void)p;
}

static mr_status cpu_check(void)
{
    return MR_OK; /* cpu ops cannot fail */
}

static void cpu_copy_2d(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                        size_t width, size_t rows, int direction)
{
    (void)direction;
    if (width == 0) return;
    for (size_t r = 0; r < rows; r++)
        memcpy((char *)dst + r * dst_pitch, (const char *)src + r * src_pitch, width);
}

static void cpu_gather_rows(const void *src, mr_wtype src_type, int src_ld, const int32_t *rows,
                            int row_base, int n, int width, float *dst)
{
    for (int i = 0; i < n; i++) {
        const size_t at = ((size_t)rows[i] + row_base) * (size_t)src_ld;
        float *d = dst + (size_t)i * width;
        if (src_type == MR_WT_BF16) {
            const uint16_t *s = (const uint16_t *)src + at;
            for (int j = 0; j < width; j++) d[j] = mr_bf16_widen(s[j]);
        } else {
            memcpy(d, (const float *)src + at, sizeof(float) * width);
        }
    }
}

static void cpu_scatter_rows(const float *src, int n, int width, const int32_t *rows,
                             int row_base, void *dst, mr_wtype dst_type, int dst_ld)
{
    for (int i = 0; i < n; i++) {
        const size_t at = ((size_t)rows[i] + row_base) * (size_t)dst_ld;
        const float *s = src + (size_t)i * width;
        if (dst_type == MR_WT_BF16) {
            uint16_t *d = (uint16_t *)dst + at;
            for (int j = 0; j < width; j++) d[j] = mr_bf16_round(s[j]);
        } else {
            memcpy((float *)dst + at, s, sizeof(float) * width);
        }
    }
}

static void cpu_moe_combine(const float *expert_out, const float *weights, int n_tokens,
                            int top_k, int dim, float *out)
{
    for (int t = 0; t < n_tokens; t++) {
        float *r = out + (size_t)t * dim;
        memset(r, 0, sizeof(float) * dim);
        for (int j = 0; j < top_k; j++) {
            const float w = weights[(size_t)t * top_k + j];
            const float *o = expert_out + ((size_t)t * top_k + j) * dim;
            for (int d = 0; d < dim; d++) r[d] += w * o[d];
        }
    }
}

static void cpu_experts_grouped(const mr_expert_w *experts, int n_groups,
                                const int32_t *row_start, const float *x, float *out,
                                float *scratch)
{
    for (int g = 0; g < n_groups; g++) {
        const int n = row_start[g + 1] - row_start[g];
        if (n <= 0) continue;
        const size_t at = (size_t)row_start[g] * (size_t)experts[g].dim;
        mr_cpu_expert_ffn(&experts[g], x + at, n, out + at, false, scratch);
    }
}

void mr_cpu_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    *free_bytes = *total_bytes = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return;
    char line[256];
    unsigned long long kb;
    while (fgets(line, sizeof line, f)) {
        if (sscanf(line, "MemTotal: %llu kB", &kb) == 1) *total_bytes = (size_t)kb * 1024u;
        else if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) *free_bytes = (size_t)kb * 1024u;
    }
    fclose(f);
}

/* mr_sampler's rule per row (model/sampler.c): argmax at temperature 0, else
 * mr_sample_pick with the row's draw. */
static void cpu_sample_rows(const float *logits, int n_rows, int vocab, const mr_sample_row *rows,
                            int32_t *out)
{
    void *scratch = NULL;
    for (int r = 0; r < n_rows; r++) {
        const float *row = logits + (size_t)r * (size_t)vocab;
        if (rows[r].temperature == 0.0f) {
            out[r] = mr_argmax(row, vocab);
            continue;
        }
        if (!scratch && !(scratch = malloc(8 * (size_t)vocab))) abort(); /* ops cannot fail */
        out[r] = mr_sample_pick(row, vocab, &rows[r], scratch);
    }
    free(scratch);
}

/* mr_argmax (model/sampler.c) per row: strictly greater wins. */
static void cpu_argmax_rows(const float *x, int n_rows, int n, int32_t *out)
{
    for (int r = 0; r < n_rows; r++) out[r] = mr_argmax(x + (size_t)r * n, n);
}

static void cpu_add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

static const mr_kernels cpu_kernels = {
    .name = "cpu",
    .host_memory = true,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .sync = cpu_sync,
    .host_alloc = cpu_alloc,
    .host_free = cpu_free,
    .host_register = cpu_host_register,
    .host_unregister = cpu_host_unregister,
    .check = cpu_check,
    .copy_2d = cpu_copy_2d,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .moe_combine = cpu_moe_combine,
    .add = cpu_add,
    .mem_info = mr_cpu_mem_info,
    .argmax_rows = cpu_argmax_rows,
    .sample_rows = cpu_sample_rows,
    .matmul = mr_cpu_matmul_typed,
    .matmul_strided = cpu_matmul_strided,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .rope_tokens = cpu_rope_tokens,
    .softmax = cpu_softmax,
    .swiglu = mr_cpu_swiglu,
    .moe_gate = cpu_moe_gate,
    .expert_ffn = mr_cpu_expert_ffn,
    .experts_grouped = cpu_experts_grouped,
    .mla_absorbed = cpu_mla_absorbed,
    .mla_decode_paged = cpu_mla_decode_paged,
    .mla_naive = cpu_mla_naive,
};

const mr_kernels *mr_kernels_cpu(void)
{
    return &cpu_kernels;
}
