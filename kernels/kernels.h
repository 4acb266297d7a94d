/* kernels/kernels.h — the math of moerun behind one backend table.
 *
 * struct mr_kernels is a table of function pointers filled by a backend:
 * kernels/cpu (OpenBLAS + plain C; the reference) and kernels/cuda (CUDA +
 * cuBLAS, kernels_cuda.h).
 * Callers never #ifdef on the backend. Pointers passed to a backend live in
 * that backend's memory space (host memory for cpu, device memory for cuda);
 * structs passed by pointer (mr_expert_w, mr_gate_params) are host memory,
 * the arrays they point to are backend memory. Callers move data with the
 * table's alloc / free / copy, and call sync before reading results that a
 * backend may compute asynchronously (cuda; sync is a no-op on cpu).
 *
 * Conventions: row-major; weight matrices are [out, in] as HF stores them,
 * so a linear layer is y[M,N] = x[M,K] · W[N,K]ᵀ. Shapes are given in
 * comments as (rows, cols). Every cpu op is thread-compatible (no shared
 * state); the cuda ops share one stream and cuBLAS handle, so call them from
 * one host thread at a time (kernels_cuda.h). Ops that need temporary
 * memory take a caller-owned scratch buffer whose size in floats the op's
 * comment states.
 */
#ifndef MR_KERNELS_H
#define MR_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../model/config.h"

/* Element type of stored data in backend memory: weight matrices
 * (--precision) and the paged latent KV rows (--kv-dtype, through
 * gather_rows / scatter_rows / mla_decode_paged). Activations, norms and
 * biases are always fp32. A GEMM with a BF16 weight takes
 * its activation input rounded to bfloat16 (nearest even), as tensor cores
 * do, and multiplies and accumulates in fp32: the CPU backend emulates
 * exactly that (so it is the reference for the GPU's BF16 GEMMs), cuda runs
 * it as a BF16 x BF16 -> FP32 cuBLAS GEMM. */
typedef enum mr_wtype { MR_WT_F32 = 0, MR_WT_BF16 = 1 } mr_wtype;

static inline size_t mr_wtype_size(mr_wtype t) { return t == MR_WT_BF16 ? 2 : 4; }
static inline const char *mr_wtype_name(mr_wtype t) { return t == MR_WT_BF16 ? "bf16" : "fp32"; }

/* `w` advanced by `elems` elements of type t (a row or head offset). */
static inline const void *mr_wtype_at(const void *w, mr_wtype t, size_t elems)
{
    return (const char *)w + elems * mr_wtype_size(t);
}

/* Routed-expert weights as the kernels see them (same layout as mr_mlp). */
typedef struct mr_expert_w {
    const void *gate;    /* (inter, D) of `type` */
    const void *up;      /* (inter, D) */
    const void *down;    /* (D, inter) */
    int dim;             /* D */
    int inter;           /* inner size */
    mr_wtype type;       /* all three matrices */
} mr_expert_w;

typedef struct mr_gate_params {
    int n_experts;            /* E */
    int n_group;              /* groups for group-limited routing (1 = none) */
    int topk_group;           /* groups kept */
    int top_k;                /* experts per token K */
    mr_score_func score_func; /* sigmoid (V3) | softmax (V2) */
    mr_topk_method method;    /* noaux_tc | greedy | group_limited_greedy */
    bool norm_topk_prob;
    float routed_scaling_factor;
    bool v2_scaling;          /* HF V2 semantics: scale only when not normalized */
} mr_gate_params;

/* One row of mr_kernels.sample_rows: the sampling parameters of a sequence
 * and the uniform draw u in [0, 1) its sampler's RNG gives for this step
 * (mr_sampler_draw, model/sampler.h). temperature 0 = greedy (u unused). */
typedef struct mr_sample_row {
    double u;
    float temperature;
    float top_p;    /* (0, 1]; 1 = off */
    int32_t top_k;  /* 0 = off */
    int32_t pad;
} mr_sample_row;

/* Direction of mr_kernels.copy. H = host memory, D = backend memory (for the
 * cpu backend all three are plain host-to-host copies). */
typedef enum mr_copy_dir { MR_COPY_H2D, MR_COPY_D2H, MR_COPY_D2D } mr_copy_dir;

typedef struct mr_kernels {
    const char *name;
    /* true when backend memory is ordinary host memory (cpu): callers may
     * then hand host pointers straight to the ops and skip staging copies. */
    bool host_memory;

    /* Backend memory. alloc returns NULL on failure (cuda: the error is also
     * recorded, see kernels/cuda/kernels_cuda.h); free accepts NULL. copy moves
     * `bytes` bytes (direction: mr_copy_dir) and returns when dst holds them;
     * source and destination must not overlap. sync returns when every op
     * issued before it has finished. */
    void *(*alloc)(size_t bytes);
    void (*free)(void *p);
    void (*copy)(void *dst, const void *src, size_t bytes, int direction);
    void (*sync)(void);
    /* Host memory for staging (what copy moves at full speed): cuda gives
     * page-locked memory (cudaMallocHost), cpu/devsim aligned malloc.
     * host_free accepts NULL. host_register pins existing host memory in
     * place (cuda: cudaHostRegister, e.g. for memory UCX allocated; a no-op
     * elsewhere); an error only means copies from it run at pageable speed. */
    void *(*host_alloc)(size_t bytes);
    void (*host_free)(void *p);
    mr_status (*host_register)(void *p, size_t bytes);
    void (*host_unregister)(void *p);

    /* Free and total bytes of backend memory, for sizing and for failing
     * early with a clear message (cuda: cudaMemGetInfo; cpu: MemAvailable
     * and MemTotal of /proc/meminfo; devsim: its simulated capacity,
     * MOERUN_DEVSIM_MEMORY_MB, else the host's). 0/0 when unknown. */
    void (*mem_info)(size_t *free_bytes, size_t *total_bytes);

    /* sync, then the first error the backend recorded since the last check
     * (cleared by this call), with its message set (mr_last_error); MR_OK on
     * cpu, whose ops cannot fail. Callers check once per forward pass. */
    mr_status (*check)(void);

    /* Strided copy of `rows` rows of `width` bytes: row r goes from
     * src + r*src_pitch to dst + r*dst_pitch (cudaMemcpy2D semantics).
     * H2D / D2H return when dst holds the data; D2D is ordered with the ops
     * (queued on cuda). */
    void (*copy_2d)(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                    size_t width, size_t rows, int direction);

    /* Indexed row gather: dst(n, width) fp32 row i = width elements of type
     * src_type at src + (rows[i] + row_base) * src_ld elements, widened to
     * fp32 (bf16 rows: the paged KV pool with --kv-dtype bf16). rows(n)
     * int32 in backend memory. */
    void (*gather_rows)(const void *src, mr_wtype src_type, int src_ld, const int32_t *rows,
                        int row_base, int n, int width, float *dst);
    /* Indexed row scatter, the inverse: width elements of type dst_type at
     * dst + (rows[i] + row_base) * dst_ld = src(n, width) fp32 row i (rounded
     * to nearest even for bf16). Rows must be distinct. */
    void (*scatter_rows)(const float *src, int n, int width, const int32_t *rows, int row_base,
                         void *dst, mr_wtype dst_type, int dst_ld);

    /* MoE combine: out(t,:) = Σ_k weights(t,k) · expert_out(t,k,:), summed
     * from 0 in k order (fixed order: results never depend on where experts
     * ran). expert_out(n_tokens, top_k, dim), weights(n_tokens, top_k). */
    void (*moe_combine)(const float *expert_out, const float *weights, int n_tokens, int top_k,
                        int dim, float *out);

    /* Greedy sampling on the backend: out[r] = index of the largest value
     * of row r of x(n_rows, n), the first one on ties; NaN never wins,
     * unless x(r, 0) is NaN (then 0) — exactly mr_argmax (model/sampler.h).
     * out(n_rows) int32 in backend memory. */
    void (*argmax_rows)(const float *x, int n_rows, int n, int32_t *out);

    /* Sampling on the backend: out[r] = the token mr_sample_pick
     * (model/sampler.h) picks from row r of logits(n_rows, vocab) with
     * rows[r] — exactly the CPU sampler's rule (logits / T, sort by value
     * descending then id ascending, top-k prefix, softmax, top-p prefix,
     * walk the cumulative mass to u · mass), or argmax_rows' rule when
     * rows[r].temperature is 0. rows is host memory (n_rows), out(n_rows)
     * int32 backend memory. cpu: the same C code as the sampler; cuda: one
     * segmented stable radix sort (CUB) plus one block per row that sums in
     * the CPU's order, in double. */
    void (*sample_rows)(const float *logits, int n_rows, int vocab, const mr_sample_row *rows,
                        int32_t *out);

    /* y(i) += x(i) for i < n (residual add). */
    void (*add)(float *y, const float *x, size_t n);

    /* y(m,n) = x(m,k) · w(n,k)ᵀ, or y += ... when accumulate; w of type wt
     * (BF16: x rounded to bf16 first, see mr_wtype). */
    void (*matmul)(const float *x, const void *w, mr_wtype wt, float *y, int m, int n, int k,
                   bool accumulate);

    /* A batch of linear layers on strided views: for b < batch,
     *   y_b(m, n) = x_b(m, k) · w_b(n, k)ᵀ
     * with x_b = x + b*x_bstride (rows ldx floats apart), w_b = w + b*w_bstride
     * elements of type wt (dense, rows k apart), y_b = y + b*y_bstride (rows
     * ldy apart); y_b is
     * overwritten. The per-head MLA absorptions (q_nope·W_uk, out_lat·W_uvᵀ)
     * over all heads in one call. Equal to a dense copy of x_b, matmul, and a
     * copy out per b (cpu does exactly that); one strided-batched GEMM on cuda. */
    void (*matmul_strided)(const float *x, int ldx, size_t x_bstride, const void *w,
                           mr_wtype wt, size_t w_bstride, float *y, int ldy, size_t y_bstride,
                           int batch, int m, int n, int k);

    /* y(r,:) = x(r,:) / sqrt(mean(x(r,:)²) + eps) * weight(:). x == y allowed.
     * Rows are `stride` floats apart in both x and y (stride >= dim). */
    void (*rmsnorm)(const float *x, const float *weight, float *y, int n_rows, int dim,
                    int stride, float eps);

    /* Rotate n_vecs vectors of rope_dim floats (vector i at x + i*stride) by the
     * official interleaved-pair rotation: (x[2j], x[2j+1]) ← complex multiply by
     * (cos[j], sin[j]), j < rope_dim/2. cos/sin already hold the YaRN mscale. */
    void (*rope)(float *x, int n_vecs, int stride, int rope_dim, const float *cos,
                 const float *sin);

    /* rope for a batch of tokens in one call: token t's n_vecs vectors start
     * at x + t*token_stride (vector i at + i*vec_stride) and use row t of
     * cos(n_tokens, rope_dim/2) and sin(n_tokens, rope_dim/2). Equal to one
     * rope call per token (cpu does exactly that); one launch on cuda. */
    void (*rope_tokens)(float *x, int n_tokens, int token_stride, int n_vecs, int vec_stride,
                        int rope_dim, const float *cos, const float *sin);

    /* In place over each of n_rows rows of n floats: softmax (max-subtracted). */
    void (*softmax)(float *x, int n_rows, int n);

    /* out(i) = silu(gate(i)) * up(i) for i < n. out may alias gate. */
    void (*swiglu)(const float *gate, const float *up, float *out, size_t n);

    /* MoE router on precomputed logits(t, E) = x·gate_wᵀ. bias(E) or NULL.
     * Writes expert_ids(t, K) (by descending selection score, ties → lower id)
     * and weights(t, K). Exactly the official noaux_tc / V2 gate:
     *  scores = sigmoid(logits) | softmax(logits); sel = scores (+ bias);
     *  noaux_tc / group_limited_greedy with n_group > 1: group score = sum of
     *  top-2 sel (bias present) or max sel (no bias); keep topk_group groups,
     *  others -inf; top-K of sel; weights = scores at those ids; normalized when
     *  norm_topk_prob and K > 1 (sum + 1e-20); × routed_scaling_factor (V2: only
     *  when not normalized). scratch: 2*E + 2*n_group floats. */
    void (*moe_gate)(const float *logits, const float *bias, int n_tokens,
                     const mr_gate_params *p, int32_t *expert_ids, float *weights,
                     float *scratch);

    /* One expert (or dense/shared MLP) on n tokens: out(n,D) = down(silu(gate x)
     * ⊙ up x), or out += ... when accumulate. x is (n, D).
     * scratch: 2 * n * inter floats. */
    void (*expert_ffn)(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                       bool accumulate, float *scratch);

    /* The routed experts of one MoE layer in one call: group g runs
     * experts[g] on rows [row_start[g], row_start[g+1]) of x(n_rows, D) into
     * the same rows of out (unweighted, overwritten); n_rows =
     * row_start[n_groups]. Every expert has the same dim and inter. Results
     * equal one expert_ffn per group (cpu does exactly that); cuda issues the
     * gate and up GEMMs of all groups as one grouped GEMM, one SwiGLU over
     * all rows, and the down GEMMs as a second grouped GEMM (fp32 weights
     * and precision; cuBLAS's grouped GEMM has no BF16 -> FP32 form, so
     * bf16 runs one cublasGemmEx per group).
     * experts and row_start are host memory. scratch: 2 * n_rows * inter. */
    void (*experts_grouped)(const mr_expert_w *experts, int n_groups, const int32_t *row_start,
                            const float *x, float *out, float *scratch);

    /* Absorbed MLA attention of n_q queries of ONE sequence over its latent
     * context ctx(n_ctx, C+R) (row t = [normalized c_kv (C) | roped k_pe (R)]).
     * q_lat(n_q, H, C) is q_nope absorbed through kv_b's key rows, q_pe(n_q, H, R)
     * roped. Query i sees context rows t < ctx_len[i] (causal limit).
     * out_lat(n_q, H, C) = Σ_t softmax_t(scale·(q_lat·c_t + q_pe·pe_t)) · c_t.
     * scratch: n_q * H * n_ctx floats. */
    void (*mla_absorbed)(const float *q_lat, const float *q_pe, int n_q, int n_heads,
                         int kv_lora, int rope_dim, const float *ctx, int n_ctx,
                         const int32_t *ctx_len, float scale, float *out_lat,
                         float *scratch);

    /* Absorbed MLA decode straight from the paged latent pool, for n_tok
     * tokens that are each the only query of their sequence. seq(n_tok, 3)
     * int32 in backend memory: {token, row_off, n_ctx}: the token's q_lat row
     * is q_lat + token*H*C (heads C apart), its q_pe for head h is at
     * q_pe + token*q_pe_ld + h*q_pe_hstride (R floats; the rows of q, no
     * copy), and it attends the n_ctx pool rows kv + (rows[row_off + t] +
     * row_base)*(C+R) (elements of kv_type, widened to fp32), t < n_ctx;
     * writes out_lat + token*H*C. Per token the
     * result is mla_absorbed over the gathered rows (cpu does exactly that:
     * scratch max_ctx*(C+R) + H*max_ctx + H*R floats, max_ctx = the largest
     * n_ctx); cuda reads the pool in one pass per head group with an online
     * softmax, no gather and one launch (scratch unused there). */
    void (*mla_decode_paged)(const float *q_lat, const float *q_pe, int q_pe_ld,
                             int q_pe_hstride, int n_tok, const int32_t *seq, int n_heads,
                             int kv_lora, int rope_dim, const void *kv, mr_wtype kv_type,
                             const int32_t *rows, int row_base, float scale, float *out_lat,
                             float *scratch, int max_ctx);

    /* Naive MLA attention of n_q queries of one sequence: q(n_q, H, Dqk),
     * k(n_ctx, H, Dqk), v(n_ctx, H, Dv); query i sees rows t < ctx_len[i].
     * out(n_q, H, Dv). scratch: n_q * H * n_ctx floats. */
    void (*mla_naive)(const float *q, const float *k, const float *v, int n_q,
                      int n_heads, int qk_dim, int v_dim, int n_ctx,
                      const int32_t *ctx_len, float scale, float *out, float *scratch);
} mr_kernels;

/* The CPU backend (always available). The CUDA backend: mr_kernels_cuda()
 * in kernels/cuda/kernels_cuda.h (declared in every build; NULL with a
 * message when the build has no CUDA or no device is usable). */
const mr_kernels *mr_kernels_cpu(void);

#endif
