/* kernels/cuda/cuda_gemm.cu — GEMM-shaped ops of the CUDA backend: the
 * row-major cuBLAS wrapper (cu_gemm_rm), matmul and expert_ffn.
 *
 * Row-major on column-major cuBLAS: a row-major (R, C) matrix with leading
 * dimension ld is the column-major (C, R) matrix with the same ld, i.e. its
 * transpose. So C = op(A)·op(B) in row-major is Cᵀ = op(B)ᵀ·op(A)ᵀ in
 * column-major: swap the operands and M/N, keep each operand's trans flag.
 * Precision (kernels_cuda.h): FP32 → CUBLAS_COMPUTE_32F (the handle stays in
 * CUBLAS_DEFAULT_MATH, so no TF32); BF16 → CUBLAS_COMPUTE_32F_FAST_16BF.
 */
#include "cuda_internal.cuh"

/* c(b, i, j) *= beta (or = 0 when beta is 0, so NaN garbage is cleared) */
__global__ void scale_rows_kernel(float *c, int m, int n, int ldc, long long sc, int batch,
                                  float beta)
{
    const size_t total = (size_t)batch * (size_t)m * (size_t)n;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t b = idx / ((size_t)m * (size_t)n);
        const size_t rest = idx % ((size_t)m * (size_t)n);
        float *p = c + (long long)b * sc + (long long)(rest / (size_t)n) * ldc +
                   (long long)(rest % (size_t)n);
        *p = beta == 0.0f ? 0.0f : *p * beta;
    }
}

mr_status cu_gemm_rm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, long long sa, const float *b, int ldb,
                     long long sb, float beta, float *c, int ldc, long long sc, int batch)
{
    if (m <= 0 || n <= 0 || batch <= 0) return MR_OK;
    if (k <= 0) {
        if (beta == 1.0f) return MR_OK;
        const size_t total = (size_t)batch * (size_t)m * (size_t)n;
        scale_rows_kernel<<<cu_grid_1d(total, 256), 256, 0, cu_stream()>>>(c, m, n, ldc, sc,
                                                                            batch, beta);
        CU_LAUNCH_TRY();
        return MR_OK;
    }
    const cublasOperation_t op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasComputeType_t compute = cu_precision() == MR_CUDA_PRECISION_BF16
                                            ? CUBLAS_COMPUTE_32F_FAST_16BF
                                            : CUBLAS_COMPUTE_32F;
    if (batch == 1) {
        CUBLAS_TRY(cublasGemmEx(cu_blas(), op_b, op_a, n, m, k, &alpha, b, CUDA_R_32F, ldb, a,
                                CUDA_R_32F, lda, &beta, c, CUDA_R_32F, ldc, compute,
                                CUBLAS_GEMM_DEFAULT));
    } else {
        CUBLAS_TRY(cublasGemmStridedBatchedEx(cu_blas(), op_b, op_a, n, m, k, &alpha, b,
                                              CUDA_R_32F, ldb, sb, a, CUDA_R_32F, lda, sa,
                                              &beta, c, CUDA_R_32F, ldc, sc, batch, compute,
                                              CUBLAS_GEMM_DEFAULT));
    }
    return MR_OK;
}

/* ---- matmul -------------------------------------------------------------------- */

static mr_status matmul_impl(const float *x, const float *w, float *y, int m, int n, int k,
                             bool accumulate)
{
    if (m < 0 || n < 0 || k < 0)
        return mr_fail(MR_EINVAL, "cuda matmul: negative shape m=%d n=%d k=%d", m, n, k);
    /* y(m,n) = x(m,k) · w(n,k)ᵀ */
    return cu_gemm_rm(false, true, m, n, k, 1.0f, x, k, 0, w, k, 0, accumulate ? 1.0f : 0.0f,
                      y, n, 0, 1);
}

void cu_op_matmul(const float *x, const float *w, float *y, int m, int n, int k,
                  bool accumulate)
{
    cu_record(matmul_impl(x, w, y, m, n, k, accumulate));
}

/* ---- expert / MLP forward -------------------------------------------------------- */

static mr_status expert_ffn_impl(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                                 bool accumulate, float *scratch)
{
    if (n_tokens <= 0) return MR_OK;
    if (e->dim <= 0 || e->inter <= 0)
        return mr_fail(MR_EINVAL, "cuda expert_ffn: bad expert shape dim=%d inter=%d", e->dim,
                       e->inter);
    const int dim = e->dim, inter = e->inter;
    const size_t hidden = (size_t)n_tokens * (size_t)inter;
    float *g = scratch;          /* (n, inter), then h = silu(g) ⊙ u in place */
    float *u = scratch + hidden; /* (n, inter) */
    MR_TRY(cu_gemm_rm(false, true, n_tokens, inter, dim, 1.0f, x, dim, 0, e->gate, dim, 0,
                      0.0f, g, inter, 0, 1));
    MR_TRY(cu_gemm_rm(false, true, n_tokens, inter, dim, 1.0f, x, dim, 0, e->up, dim, 0, 0.0f,
                      u, inter, 0, 1));
    MR_TRY(cu_swiglu_impl(g, u, g, hidden));
    return cu_gemm_rm(false, true, n_tokens, dim, inter, 1.0f, g, inter, 0, e->down, inter, 0,
                      accumulate ? 1.0f : 0.0f, out, dim, 0, 1);
}

void cu_op_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                      bool accumulate, float *scratch)
{
    cu_record(expert_ffn_impl(e, x, n_tokens, out, accumulate, scratch));
}
