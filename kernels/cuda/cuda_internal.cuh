/* kernels/cuda/cuda_internal.cuh — pieces of the CUDA backend shared between
 * its .cu files: the backend state accessors, the check macros and the ops
 * the table in cuda_backend.cu points to. Not for use outside kernels/cuda.
 *
 * Error idiom (STYLE.md item 5): every op is a static mr_status function
 * built from CUDA_TRY / CUBLAS_TRY / CU_LAUNCH_TRY, which turn a foreign
 * error into mr_fail(MR_EIO, "file:line: call: cudaErrorX: text"); the void
 * function the table points to passes that status to cu_record(), which keeps
 * the first failure in the backend state (mr_kernels_cuda_last_status()).
 */
#ifndef MR_CUDA_INTERNAL_CUH
#define MR_CUDA_INTERNAL_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

extern "C" {
#include "kernels_cuda.h"
}

/* ---- checks ---------------------------------------------------------------- */

mr_status cu_fail_cuda(cudaError_t err, const char *call, const char *file, int line);
mr_status cu_fail_cublas(cublasStatus_t err, const char *call, const char *file, int line);

#define CUDA_TRY(call)                                                   \
    do {                                                                 \
        cudaError_t cu_try_err_ = (call);                                \
        if (cu_try_err_ != cudaSuccess)                                  \
            return cu_fail_cuda(cu_try_err_, #call, __FILE__, __LINE__); \
    } while (0)

#define CUBLAS_TRY(call)                                                   \
    do {                                                                   \
        cublasStatus_t cu_try_err_ = (call);                               \
        if (cu_try_err_ != CUBLAS_STATUS_SUCCESS)                          \
            return cu_fail_cublas(cu_try_err_, #call, __FILE__, __LINE__); \
    } while (0)

/* After a <<<...>>> launch: launch-configuration errors (bad grid, too much
 * shared memory) are reported here; execution errors at the next sync. */
#define CU_LAUNCH_TRY() CUDA_TRY(cudaGetLastError())

/* Keeps `status` as the backend's first error when it is not MR_OK and none
 * is recorded yet (with the calling thread's mr_last_error() message). */
void cu_record(mr_status status);

/* The cudaMemcpyKind of an mr_copy_dir; another value → MR_EINVAL naming op. */
static inline mr_status cu_copy_kind(const char *op, int direction, cudaMemcpyKind *kind)
{
    switch (direction) {
    case MR_COPY_H2D: *kind = cudaMemcpyHostToDevice; return MR_OK;
    case MR_COPY_D2H: *kind = cudaMemcpyDeviceToHost; return MR_OK;
    case MR_COPY_D2D: *kind = cudaMemcpyDeviceToDevice; return MR_OK;
    default:
        return mr_fail(MR_EINVAL, "cuda %s: direction %d is not an mr_copy_dir", op, direction);
    }
}

/* ---- backend state (valid once mr_kernels_cuda() succeeded) --------------- */

cudaStream_t cu_stream(void);
cublasHandle_t cu_blas(void);
mr_cuda_precision cu_precision(void);

/* Grid size for a 1-D grid-stride loop over n elements with `block` threads. */
static inline unsigned cu_grid_1d(size_t n, unsigned block)
{
    size_t blocks = (n + block - 1) / block;
    const size_t cap = 65535u * 8u; /* plenty for grid-stride loops */
    if (blocks < 1) blocks = 1;
    return (unsigned)(blocks < cap ? blocks : cap);
}

/* ---- block reductions (blockDim.x a multiple of 32, <= 1024) -------------
 * Every thread of the block must call them; every thread gets the result. */

__device__ inline double cu_block_sum(double v)
{
    __shared__ double part[32];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads(); /* part[] may still be read by a previous call */
    if (lane == 0) part[warp] = v;
    __syncthreads();
    double total = 0.0;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) total += part[w];
    return total;
}

/* Max with the CPU reference's rule `m = v > m ? v : m` (NaN never wins). */
__device__ inline float cu_block_max(float v)
{
    __shared__ float part[32];
    for (int off = 16; off > 0; off /= 2) {
        float o = __shfl_down_sync(0xffffffffu, v, off);
        v = o > v ? o : v;
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) part[warp] = v;
    __syncthreads();
    float m = -INFINITY;
    for (int w = 0; w < (int)(blockDim.x / 32); w++) m = part[w] > m ? part[w] : m;
    return m;
}

/* ---- storage element types (mr_wtype) ------------------------------------------
 * fp32 and bf16 rows read as fp32 (exact) and written from fp32 (bf16:
 * round to nearest even, as mr_bf16_round). */
__device__ inline float cu_to_float(float v) { return v; }
__device__ inline float cu_to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ inline void cu_from_float(float v, float *out) { *out = v; }
__device__ inline void cu_from_float(float v, __nv_bfloat16 *out) { *out = __float2bfloat16_rn(v); }

/* ---- grow-only device buffers ------------------------------------------------
 * Only the backend's one host thread issues ops and the stream orders every
 * use, so one buffer per purpose serves every call. cu_growbuf_reserve makes
 * b->p hold at least `bytes` (growing waits for the stream before freeing the
 * old buffer; contents are not kept). Zero-initialize a cu_growbuf. */
typedef struct cu_growbuf {
    void *p;
    size_t cap;
} cu_growbuf;
mr_status cu_growbuf_reserve(cu_growbuf *b, size_t bytes);

/* argmax_rows without recording (for ops built on it). */
mr_status cu_argmax_rows_impl(const float *x, int n_rows, int n, int32_t *out);

/* ---- row-major GEMM on cuBLAS -------------------------------------------------
 * C(M,N) = alpha · op(A) · op(B) + beta · C for `batch` matrices, all row-major
 * with leading dimensions lda/ldb/ldc and element strides sa/sb/sc between
 * batch members; trans_a: op(A) = Aᵀ where A is stored (K, M), else A is
 * (M, K); likewise B (N, K) when trans_b, else (K, N). Precision per
 * cu_precision(). M, N or batch 0: nothing; K 0: C = beta·C. */
mr_status cu_gemm_rm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, long long sa, const float *b, int ldb,
                     long long sb, float beta, float *c, int ldc, long long sc, int batch);

/* The same with A and B of type ab_type (CUDA_R_32F, or CUDA_R_16BF: then
 * FP32 compute on tensor cores); C is always fp32. Strides in elements. */
mr_status cu_gemm_rm_typed(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const void *a, int lda, long long sa, const void *b, int ldb,
                           long long sb, cudaDataType ab_type, float beta, float *c, int ldc,
                           long long sc, int batch);

/* cuBLAS compute type for inputs of ab_type: bf16 inputs accumulate in fp32;
 * fp32 inputs follow cu_precision() (FP32: COMPUTE_32F, no TF32; BF16:
 * COMPUTE_32F_FAST_16BF, cuBLAS rounds the inputs). */
static inline cublasComputeType_t cu_compute_type(cudaDataType ab_type)
{
    if (ab_type == CUDA_R_16BF) return CUBLAS_COMPUTE_32F;
    return cu_precision() == MR_CUDA_PRECISION_BF16 ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                    : CUBLAS_COMPUTE_32F;
}

/* In place over n_rows rows of n floats: row r sees columns t < limit, where
 * limit = n when ctx_len is NULL, else ctx_len[(r / q_div) % q_mod] clamped to
 * [0, n] (ctx_len is device memory); hidden columns and fully hidden rows
 * become 0. Visible columns: max-subtracted softmax as cpu_softmax. */
mr_status cu_masked_softmax(float *x, int n_rows, int n, const int32_t *ctx_len, int q_div,
                            int q_mod);

/* out(i) = silu(gate(i)) · up(i), see mr_kernels.swiglu. */
mr_status cu_swiglu_impl(const float *gate, const float *up, float *out, size_t n);

/* ---- the ops of the table (contracts in kernels.h) ------------------------ */

void cu_op_copy_2d(void *dst, size_t dst_pitch, const void *src, size_t src_pitch, size_t width,
                   size_t rows, int direction);
void cu_op_gather_rows(const void *src, mr_wtype type, int src_ld, const int32_t *rows,
                       int row_base, int n, int width, float *dst);
void cu_op_scatter_rows(const float *src, int n, int width, const int32_t *rows, int row_base,
                        void *dst, mr_wtype type, int dst_ld);
void cu_op_moe_combine(const float *expert_out, const float *weights, int n_tokens, int top_k,
                       int dim, float *out);
void cu_op_add(float *y, const float *x, size_t n);
void cu_op_argmax_rows(const float *x, int n_rows, int n, int32_t *out);
void cu_op_sample_rows(const float *logits, int n_rows, int vocab, const mr_sample_row *rows,
                       int32_t *out);
void cu_op_matmul(const float *x, const void *w, mr_wtype wt, float *y, int m, int n, int k,
                  bool accumulate);
void cu_op_matmul_strided(const float *x, int ldx, size_t x_bstride, const void *w, mr_wtype wt,
                          size_t w_bstride, float *y, int ldy, size_t y_bstride, int batch, int m,
                          int n, int k);
void cu_op_rmsnorm(const float *x, const float *weight, float *y, int n_rows, int dim,
                   int stride, float eps);
void cu_op_rope(float *x, int n_vecs, int stride, int rope_dim, const float *cos_t,
                const float *sin_t);
void cu_op_rope_tokens(float *x, int n_tokens, int token_stride, int n_vecs, int vec_stride,
                       int rope_dim, const float *cos_t, const float *sin_t);
void cu_op_softmax(float *x, int n_rows, int n);
void cu_op_swiglu(const float *gate, const float *up, float *out, size_t n);
void cu_op_moe_gate(const float *logits, const float *bias, int n_tokens,
                    const mr_gate_params *p, int32_t *expert_ids, float *weights,
                    float *scratch);
void cu_op_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                      bool accumulate, float *scratch);
void cu_op_experts_grouped(const mr_expert_w *experts, int n_groups, const int32_t *row_start,
                           const float *x, float *out, float *scratch);
void cu_op_mla_absorbed(const float *q_lat, const float *q_pe, int n_q, int n_heads,
                        int kv_lora, int rope_dim, const float *ctx, int n_ctx,
                        const int32_t *ctx_len, float scale, float *out_lat, float *scratch);
void cu_op_mla_decode_paged(const float *q_lat, const float *q_pe, int q_pe_ld, int q_pe_hstride,
                            int n_tok, const int32_t *seq, int n_heads, int kv_lora, int rope_dim,
                            const void *kv, mr_wtype kv_type, const int32_t *rows, int row_base,
                            float scale, float *out_lat, float *scratch, int max_ctx);
void cu_op_mla_naive(const float *q, const float *k, const float *v, int n_q, int n_heads,
                     int qk_dim, int v_dim, int n_ctx, const int32_t *ctx_len, float scale,
                     float *out, float *scratch);

#endif
