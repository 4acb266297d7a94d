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

static mr_status matmul_strided_impl(const float *x, int ldx, size_t x_bstride, const float *w,
                                     size_t w_bstride, float *y, int ldy, size_t y_bstride,
                                     int batch, int m, int n, int k)
{
    if (m < 0 || n < 0 || k < 0 || batch < 0 || ldx < k || ldy < n)
        return mr_fail(MR_EINVAL, "cuda matmul_strided: bad shape batch=%d m=%d n=%d k=%d "
                       "ldx=%d ldy=%d", batch, m, n, k, ldx, ldy);
    /* y_b(m,n) = x_b(m,k) · w_b(n,k)ᵀ: one strided-batched GEMM */
    return cu_gemm_rm(false, true, m, n, k, 1.0f, x, ldx, (long long)x_bstride, w, k,
                      (long long)w_bstride, 0.0f, y, ldy, (long long)y_bstride, batch);
}

void cu_op_matmul_strided(const float *x, int ldx, size_t x_bstride, const float *w,
                          size_t w_bstride, float *y, int ldy, size_t y_bstride, int batch, int m,
                          int n, int k)
{
    cu_record(matmul_strided_impl(x, ldx, x_bstride, w, w_bstride, y, ldy, y_bstride, batch, m,
                                  n, k));
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

/* ---- routed experts of one layer: two grouped GEMMs --------------------------------- */

/* Device array of pointers for the grouped GEMMs, grown on demand; only the
 * backend's one host thread issues ops, so one buffer serves every call. */
static const void **grouped_ptrs_dev;
static size_t grouped_ptrs_cap;

static mr_status grouped_ptrs(size_t n, const void **host, const void ***dev)
{
    if (n > grouped_ptrs_cap) {
        if (grouped_ptrs_dev) {
            CUDA_TRY(cudaStreamSynchronize(cu_stream()));
            CUDA_TRY(cudaFree(grouped_ptrs_dev));
            grouped_ptrs_dev = NULL;
            grouped_ptrs_cap = 0;
        }
        CUDA_TRY(cudaMalloc((void **)&grouped_ptrs_dev, n * sizeof(void *)));
        grouped_ptrs_cap = n;
    }
    /* pageable source: the copy is staged before cudaMemcpyAsync returns */
    CUDA_TRY(cudaMemcpyAsync(grouped_ptrs_dev, host, n * sizeof(void *), cudaMemcpyHostToDevice,
                             cu_stream()));
    *dev = grouped_ptrs_dev;
    return MR_OK;
}

/* problems[i]: C_i(rows_i, n) = A_i(rows_i, k) · W_i(n, k)ᵀ, row-major, as one
 * cublasGemmGroupedBatchedEx with one group per problem (rows differ). */
static mr_status grouped_gemm_rm(int n_probs, const int *rows, int n, int k, const float *const *a,
                                 const float *const *w, float *const *c)
{
    if (n_probs == 0) return MR_OK;
    const size_t np = (size_t)n_probs;
    cublasOperation_t *ta = (cublasOperation_t *)malloc(np * sizeof *ta);
    cublasOperation_t *tb = (cublasOperation_t *)malloc(np * sizeof *tb);
    int *m_arr = (int *)malloc(np * sizeof(int) * 6);
    float *ab = (float *)malloc(np * 2 * sizeof(float));
    const void **ptrs = (const void **)malloc(3 * np * sizeof(void *));
    mr_status st = MR_OK;
    if (!ta || !tb || !m_arr || !ab || !ptrs) {
        st = mr_fail(MR_ENOMEM, "cuda grouped GEMM: out of memory for %d problems", n_probs);
        goto done;
    }
    {
        int *n_arr = m_arr + np, *k_arr = m_arr + 2 * np, *lda = m_arr + 3 * np;
        int *ldb = m_arr + 4 * np, *gsize = m_arr + 5 * np;
        float *alpha = ab, *beta = ab + np;
        /* row-major C = A·Wᵀ is column-major Cᵀ = W·Aᵀ: cuBLAS A := W (op T), B := A */
        for (size_t i = 0; i < np; i++) {
            ta[i] = CUBLAS_OP_T;
            tb[i] = CUBLAS_OP_N;
            m_arr[i] = n;
            n_arr[i] = rows[i];
            k_arr[i] = k;
            lda[i] = k;
            ldb[i] = k;
            gsize[i] = 1;
            alpha[i] = 1.0f;
            beta[i] = 0.0f;
            ptrs[i] = w[i];
            ptrs[np + i] = a[i];
            ptrs[2 * np + i] = c[i];
        }
        const void **dev = NULL;
        st = grouped_ptrs(3 * np, ptrs, &dev);
        if (st != MR_OK) goto done;
        const cublasComputeType_t compute = cu_precision() == MR_CUDA_PRECISION_BF16
                                                ? CUBLAS_COMPUTE_32F_FAST_16BF
                                                : CUBLAS_COMPUTE_32F;
        int *ldc = m_arr; /* ldc = n for every problem, the same as m_arr */
        cublasStatus_t err = cublasGemmGroupedBatchedEx(
            cu_blas(), ta, tb, m_arr, n_arr, k_arr, alpha, dev, CUDA_R_32F, lda, dev + np,
            CUDA_R_32F, ldb, beta, (void *const *)(dev + 2 * np), CUDA_R_32F, ldc, n_probs, gsize,
            compute);
        if (err != CUBLAS_STATUS_SUCCESS)
            st = cu_fail_cublas(err, "cublasGemmGroupedBatchedEx", __FILE__, __LINE__);
        /* the host arrays may go: cuBLAS reads them before returning */
    }
done:
    free(ta);
    free(tb);
    free(m_arr);
    free(ab);
    free(ptrs);
    return st;
}

static mr_status experts_grouped_impl(const mr_expert_w *experts, int n_groups,
                                      const int32_t *row_start, const float *x, float *out,
                                      float *scratch)
{
    if (n_groups <= 0) return MR_OK;
    const int dim = experts[0].dim, inter = experts[0].inter, n_rows = row_start[n_groups];
    if (n_rows <= 0) return MR_OK;
    int n_live = 0;
    for (int g = 0; g < n_groups; g++) {
        if (experts[g].dim != dim || experts[g].inter != inter || row_start[g + 1] < row_start[g])
            return mr_fail(MR_EINVAL, "cuda experts_grouped: group %d differs in shape or its "
                           "rows go backwards", g);
        n_live += row_start[g + 1] > row_start[g];
    }
    const size_t hidden = (size_t)n_rows * (size_t)inter;
    float *gbuf = scratch, *ubuf = scratch + hidden;
    /* gate and up of every group: 2·n_live problems */
    int *rows = (int *)malloc(sizeof(int) * 2 * (size_t)n_live);
    const float **a = (const float **)malloc(sizeof(float *) * 2 * (size_t)n_live);
    const float **w = (const float **)malloc(sizeof(float *) * 2 * (size_t)n_live);
    float **c = (float **)malloc(sizeof(float *) * 2 * (size_t)n_live);
    mr_status st = MR_OK;
    if (!rows || !a || !w || !c) {
        st = mr_fail(MR_ENOMEM, "cuda experts_grouped: out of memory");
        goto done;
    }
    {
        int p = 0;
        for (int g = 0; g < n_groups; g++) {
            const int n = row_start[g + 1] - row_start[g];
            if (n <= 0) continue;
            const size_t r0 = (size_t)row_start[g];
            rows[p] = rows[p + n_live] = n;
            a[p] = a[p + n_live] = x + r0 * (size_t)dim;
            w[p] = experts[g].gate;
            w[p + n_live] = experts[g].up;
            c[p] = gbuf + r0 * (size_t)inter;
            c[p + n_live] = ubuf + r0 * (size_t)inter;
            p++;
        }
        st = grouped_gemm_rm(2 * n_live, rows, inter, dim, a, w, c);
        if (st == MR_OK) st = cu_swiglu_impl(gbuf, ubuf, gbuf, hidden);
        /* down: out rows = h rows · down(D, inter)ᵀ */
        p = 0;
        for (int g = 0; g < n_groups && st == MR_OK; g++) {
            const int n = row_start[g + 1] - row_start[g];
            if (n <= 0) continue;
            const size_t r0 = (size_t)row_start[g];
            a[p] = gbuf + r0 * (size_t)inter;
            w[p] = experts[g].down;
            c[p] = out + r0 * (size_t)dim;
            p++;
        }
        if (st == MR_OK) st = grouped_gemm_rm(n_live, rows, dim, inter, a, w, c);
    }
done:
    free(rows);
    free(a);
    free(w);
    free(c);
    return st;
}

void cu_op_experts_grouped(const mr_expert_w *experts, int n_groups, const int32_t *row_start,
                           const float *x, float *out, float *scratch)
{
    cu_record(experts_grouped_impl(experts, n_groups, row_start, x, out, scratch));
}
