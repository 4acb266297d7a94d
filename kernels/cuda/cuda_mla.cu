/* kernels/cuda/cuda_mla.cu — MLA attention of the CUDA backend: absorbed
 * (latent context) and naive (per-head k, v), each as cuBLAS GEMMs around a
 * causally masked softmax, the same three steps as kernels_cpu.c:
 *   scores = scale · q · kᵀ  →  mask t >= ctx_len[i], softmax  →  out = P · v.
 * scratch holds the scores (n_q·H·n_ctx floats, device memory). ctx_len is
 * device memory (n_q int32).
 *
 * This is the first, unfused version: the context is read twice (scores, then
 * P·c) and the scores make a round trip through memory. The decode benchmark
 * (moerun-bench-gpu) measures how far that is from the copy bandwidth.
 */
#include "cuda_internal.cuh"

static mr_status zero_floats(float *p, size_t n)
{
    if (n == 0) return MR_OK;
    CUDA_TRY(cudaMemsetAsync(p, 0, n * sizeof(float), cu_stream()));
    return MR_OK;
}

static mr_status mla_absorbed_impl(const float *q_lat, const float *q_pe, int n_q, int n_heads,
                                   int kv_lora, int rope_dim, const float *ctx, int n_ctx,
                                   const int32_t *ctx_len, float scale, float *out_lat,
                                   float *scratch)
{
    if (n_q < 0 || n_heads < 0 || kv_lora <= 0 || rope_dim < 0 || n_ctx < 0)
        return mr_fail(MR_EINVAL,
                       "cuda mla_absorbed: bad shape n_q=%d heads=%d kv_lora=%d rope=%d "
                       "n_ctx=%d",
                       n_q, n_heads, kv_lora, rope_dim, n_ctx);
    const int rows = n_q * n_heads; /* row r = query r / H, head r % H */
    const int ld_ctx = kv_lora + rope_dim;
    if (rows == 0) return MR_OK;
    if (n_ctx == 0) return zero_floats(out_lat, (size_t)rows * (size_t)kv_lora);
    float *scores = scratch; /* (rows, n_ctx) */
    /* scores = scale · (q_lat · cᵀ + q_pe · peᵀ) */
    MR_TRY(cu_gemm_rm(false, true, rows, n_ctx, kv_lora, scale, q_lat, kv_lora, 0, ctx, ld_ctx,
                      0, 0.0f, scores, n_ctx, 0, 1));
    if (rope_dim > 0)
        MR_TRY(cu_gemm_rm(false, true, rows, n_ctx, rope_dim, scale, q_pe, rope_dim, 0,
                          ctx + kv_lora, ld_ctx, 0, 1.0f, scores, n_ctx, 0, 1));
    MR_TRY(cu_masked_softmax(scores, rows, n_ctx, ctx_len, n_heads, n_q));
    /* out_lat = P · c */
    return cu_gemm_rm(false, false, rows, kv_lora, n_ctx, 1.0f, scores, n_ctx, 0, ctx, ld_ctx,
                      0, 0.0f, out_lat, kv_lora, 0, 1);
}

void cu_op_mla_absorbed(const float *q_lat, const float *q_pe, int n_q, int n_heads,
                        int kv_lora, int rope_dim, const float *ctx, int n_ctx,
                        const int32_t *ctx_len, float scale, float *out_lat, float *scratch)
{
    cu_record(mla_absorbed_impl(q_lat, q_pe, n_q, n_heads, kv_lora, rope_dim, ctx, n_ctx,
                                ctx_len, scale, out_lat, scratch));
}

static mr_status mla_naive_impl(const float *q, const float *k, const float *v, int n_q,
                                int n_heads, int qk_dim, int v_dim, int n_ctx,
                                const int32_t *ctx_len, float scale, float *out,
                                float *scratch)
{
    if (n_q < 0 || n_heads < 0 || qk_dim <= 0 || v_dim <= 0 || n_ctx < 0)
        return mr_fail(MR_EINVAL,
                       "cuda mla_naive: bad shape n_q=%d heads=%d qk=%d v=%d n_ctx=%d", n_q,
                       n_heads, qk_dim, v_dim, n_ctx);
    if (n_q == 0 || n_heads == 0) return MR_OK;
    if (n_ctx == 0) return zero_floats(out, (size_t)n_q * (size_t)n_heads * (size_t)v_dim);
    const long long per_head = (long long)n_q * n_ctx;
    /* scores(h, i, t) = scale · q(i, h, :) · k(t, h, :), one GEMM per head */
    MR_TRY(cu_gemm_rm(false, true, n_q, n_ctx, qk_dim, scale, q, n_heads * qk_dim, qk_dim, k,
                      n_heads * qk_dim, qk_dim, 0.0f, scratch, n_ctx, per_head, n_heads));
    /* row r = h·n_q + i belongs to query r % n_q */
    MR_TRY(cu_masked_softmax(scratch, n_heads * n_q, n_ctx, ctx_len, 1, n_q));
    /* out(i, h, :) = Σ_t P(h, i, t) · v(t, h, :) */
    return cu_gemm_rm(false, false, n_q, v_dim, n_ctx, 1.0f, scratch, n_ctx, per_head, v,
                      n_heads * v_dim, v_dim, 0.0f, out, n_heads * v_dim, v_dim, n_heads);
}

void cu_op_mla_naive(const float *q, const float *k, const float *v, int n_q, int n_heads,
                     int qk_dim, int v_dim, int n_ctx, const int32_t *ctx_len, float scale,
                     float *out, float *scratch)
{
    cu_record(mla_naive_impl(q, k, v, n_q, n_heads, qk_dim, v_dim, n_ctx, ctx_len, scale, out,
                             scratch));
}
