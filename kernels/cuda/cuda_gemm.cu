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

#include <cuda_bf16.h>

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

mr_status cu_gemm_rm_typed(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                           const void *a, int lda, long long sa, const void *b, int ldb,
                           long long sb, cudaDataType ab_type, float beta, float *c, int ldc,
                           long long sc, int batch)
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
    const cublasComputeType_t compute = cu_compute_type(ab_type);
    if (batch == 1) {
        CUBLAS_TRY(cublasGemmEx(cu_blas(), op_b, op_a, n, m, k, &alpha, b, ab_type, ldb, a,
                                ab_type, lda, &beta, c, CUDA_R_32F, ldc, compute,
                                CUBLAS_GEMM_DEFAULT));
    } else {
        CUBLAS_TRY(cublasGemmStridedBatchedEx(cu_blas(), op_b, op_a, n, m, k, &alpha, b, ab_type,
                                              ldb, sb, a, ab_type, lda, sa, &beta, c, CUDA_R_32F,
                                              ldc, sc, batch, compute, CUBLAS_GEMM_DEFAULT));
    }
    return MR_OK;
}

mr_status cu_gemm_rm(bool trans_a, bool trans_b, int m, int n, int k, float alpha,
                     const float *a, int lda, long long sa, const float *b, int ldb,
                     long long sb, float beta, float *c, int ldc, long long sc, int batch)
{
    return cu_gemm_rm_typed(trans_a, trans_b, m, n, k, alpha, a, lda, sa, b, ldb, sb, CUDA_R_32F,
                            beta, c, ldc, sc, batch);
}

/* ---- activations rounded to bf16 (the other GEMM input of a BF16 weight) ------ */

mr_status cu_growbuf_reserve(cu_growbuf *b, size_t bytes)
{
    if (bytes <= b->cap) return MR_OK;
    if (b->p) {
        CUDA_TRY(cudaStreamSynchronize(cu_stream()));
        CUDA_TRY(cudaFree(b->p));
        b->p = NULL;
        b->cap = 0;
    }
    CUDA_TRY(cudaMalloc(&b->p, bytes));
    b->cap = bytes;
    return MR_OK;
}

static cu_growbuf act_bf16_buf;     /* activations as bf16 */
static cu_growbuf grouped_ptrs_buf; /* pointer arrays of the grouped GEMMs */

__global__ void round_bf16_kernel(const float *x, __nv_bfloat16 *y, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __float2bfloat16_rn(x[i]);
}

/* A buffer of `elems` bf16 values (valid until the next call). */
static mr_status act_bf16(size_t elems, __nv_bfloat16 **out)
{
    MR_TRY(cu_growbuf_reserve(&act_bf16_buf, (elems ? elems : 1) * sizeof(__nv_bfloat16)));
    *out = (__nv_bfloat16 *)act_bf16_buf.p;
    return MR_OK;
}

/* y(i) = x(i) rounded to nearest-even bf16, i < n */
static mr_status round_bf16(const float *x, size_t n, __nv_bfloat16 *y)
{
    if (n == 0) return MR_OK;
    round_bf16_kernel<<<cu_grid_1d(n, 256), 256, 0, cu_stream()>>>(x, y, n);
    CU_LAUNCH_TRY();
    return MR_OK;
}

static cudaDataType weight_cuda_type(mr_wtype t)
{
    return t == MR_WT_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/* ---- matmul -------------------------------------------------------------------- */

static mr_status matmul_impl(const float *x, const void *w, mr_wtype wt, float *y, int m, int n,
                             int k, bool accumulate)
{
    if (m < 0 || n < 0 || k < 0)
        return mr_fail(MR_EINVAL, "cuda matmul: negative shape m=%d n=%d k=%d", m, n, k);
    const float beta = accumulate ? 1.0f : 0.0f;
    /* y(m,n) = x(m,k) · w(n,k)ᵀ */
    if (wt != MR_WT_BF16 || m == 0 || n == 0 || k == 0)
        return cu_gemm_rm_typed(false, true, m, n, k, 1.0f, x, k, 0, w, k, 0,
                                weight_cuda_type(wt), beta, y, n, 0, 1);
    __nv_bfloat16 *xb = NULL;
    MR_TRY(act_bf16((size_t)m * (size_t)k, &xb));
    MR_TRY(round_bf16(x, (size_t)m * (size_t)k, xb));
    return cu_gemm_rm_typed(false, true, m, n, k, 1.0f, xb, k, 0, w, k, 0, CUDA_R_16BF, beta, y,
                            n, 0, 1);
}

void cu_op_matmul(const float *x, const void *w, mr_wtype wt, float *y, int m, int n, int k,
                  bool accumulate)
{
    cu_record(matmul_impl(x, w, wt, y, m, n, k, accumulate));
}

static mr_status matmul_strided_impl(const float *x, int ldx, size_t x_bstride, const void *w,
                                     mr_wtype wt, size_t w_bstride, float *y, int ldy,
                                     size_t y_bstride, int batch, int m, int n, int k)
{
    if (m < 0 || n < 0 || k < 0 || batch < 0 || ldx < k || ldy < n)
        return mr_fail(MR_EINVAL, "cuda matmul_strided: bad shape batch=%d m=%d n=%d k=%d "
                       "ldx=%d ldy=%d", batch, m, n, k, ldx, ldy);
    /* y_b(m,n) = x_b(m,k) · w_b(n,k)ᵀ: one strided-batched GEMM */
    if (wt != MR_WT_BF16 || m == 0 || n == 0 || k == 0 || batch == 0)
        return cu_gemm_rm_typed(false, true, m, n, k, 1.0f, x, ldx, (long long)x_bstride, w, k,
                                (long long)w_bstride, weight_cuda_type(wt), 0.0f, y, ldy,
                                (long long)y_bstride, batch);
    /* round the whole span the views cover (gaps included), keeping its layout */
    const size_t span = (size_t)(batch - 1) * x_bstride + (size_t)(m - 1) * (size_t)ldx +
                        (size_t)k;
    __nv_bfloat16 *xb = NULL;
    MR_TRY(act_bf16(span, &xb));
    MR_TRY(round_bf16(x, span, xb));
    return cu_gemm_rm_typed(false, true, m, n, k, 1.0f, xb, ldx, (long long)x_bstride, w, k,
                            (long long)w_bstride, CUDA_R_16BF, 0.0f, y, ldy,
                            (long long)y_bstride, batch);
}

void cu_op_matmul_strided(const float *x, int ldx, size_t x_bstride, const void *w, mr_wtype wt,
                          size_t w_bstride, float *y, int ldy, size_t y_bstride, int batch, int m,
                          int n, int k)
{
    cu_record(matmul_strided_impl(x, ldx, x_bstride, w, wt, w_bstride, y, ldy, y_bstride, batch,
                                  m, n, k));
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
    const size_t in_elems = (size_t)n_tokens * (size_t)dim;
    float *g = scratch;          /* (n, inter), then h = silu(g) ⊙ u in place */
    float *u = scratch + hidden; /* (n, inter) */
    const cudaDataType ty = weight_cuda_type(e->type);
    const void *xin = x, *hin = g; /* the GEMM inputs: fp32, or rounded copies for bf16 */
    __nv_bfloat16 *xb = NULL;
    if (e->type == MR_WT_BF16) {
        MR_TRY(act_bf16(in_elems + hidden, &xb));
        MR_TRY(round_bf16(x, in_elems, xb));
        xin = xb;
        hin = xb + in_elems;
    }
    MR_TRY(cu_gemm_rm_typed(false, true, n_tokens, inter, dim, 1.0f, xin, dim, 0, e->gate, dim,
                            0, ty, 0.0f, g, inter, 0, 1));
    MR_TRY(cu_gemm_rm_typed(false, true, n_tokens, inter, dim, 1.0f, xin, dim, 0, e->up, dim, 0,
                            ty, 0.0f, u, inter, 0, 1));
    MR_TRY(cu_swiglu_impl(g, u, g, hidden));
    if (xb) MR_TRY(round_bf16(g, hidden, xb + in_elems));
    return cu_gemm_rm_typed(false, true, n_tokens, dim, inter, 1.0f, hin, inter, 0, e->down,
                            inter, 0, ty, accumulate ? 1.0f : 0.0f, out, dim, 0, 1);
}

void cu_op_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                      bool accumulate, float *scratch)
{
    cu_record(expert_ffn_impl(e, x, n_tokens, out, accumulate, scratch));
}

/* ---- routed experts of one layer: two grouped GEMMs --------------------------------- */

/* The grouped GEMMs' pointer arrays in device memory. */
static mr_status grouped_ptrs(size_t n, const void **host, const void ***dev)
{
    MR_TRY(cu_growbuf_reserve(&grouped_ptrs_buf, n * sizeof(void *)));
    /* pageable source: the copy is staged before cudaMemcpyAsync returns */
    CUDA_TRY(cudaMemcpyAsync(grouped_ptrs_buf.p, host, n * sizeof(void *), cudaMemcpyHostToDevice,
                             cu_stream()));
    *dev = (const void **)grouped_ptrs_buf.p;
    return MR_OK;
}

/* Type combinations cublasGemmGroupedBatchedEx refused with
 * CUBLAS_STATUS_NOT_SUPPORTED, one bit per (ab_type, compute type): its
 * documented table has BF16 inputs only with a BF16 C and no
 * COMPUTE_32F_FAST_16BF, so BF16 weights (FP32 C) and
 * MR_CUDA_PRECISION_BF16 are expected to take the per-problem path after
 * one refused call. */
static unsigned grouped_refused;

static unsigned grouped_key(cudaDataType ab_type, cublasComputeType_t compute)
{
    return 1u << ((ab_type == CUDA_R_16BF ? 2u : 0u) + (compute != CUBLAS_COMPUTE_32F ? 1u : 0u));
}

/* problems[i] as one cu_gemm_rm_typed each */
static mr_status grouped_gemm_loop(int n_probs, const int *rows, int n, int k,
                                   const void *const *a, const void *const *w, float *const *c,
                                   cudaDataType ab_type)
{
    for (int i = 0; i < n_probs; i++)
        MR_TRY(cu_gemm_rm_typed(false, true, rows[i], n, k, 1.0f, a[i], k, 0, w[i], k, 0, ab_type,
                                0.0f, c[i], n, 0, 1));
    return MR_OK;
}

/* problems[i]: C_i(rows_i, n) = A_i(rows_i, k) · W_i(n, k)ᵀ, row-major, A and
 * W both of type ab_type, as one cublasGemmGroupedBatchedEx with one group
 * per problem (rows differ). Should this cuBLAS refuse the type combination
 * (CUBLAS_STATUS_NOT_SUPPORTED), the problems run as one GEMM each, now and
 * in every later call with that combination. */
static mr_status grouped_gemm_rm(int n_probs, const int *rows, int n, int k, const void *const *a,
                                 const void *const *w, float *const *c, cudaDataType ab_type)
{
    if (n_probs == 0) return MR_OK;
    const cublasComputeType_t compute = cu_compute_type(ab_type);
    const unsigned key = grouped_key(ab_type, compute);
    if (grouped_refused & key) return grouped_gemm_loop(n_probs, rows, n, k, a, w, c, ab_type);
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
        int *ldc = m_arr; /* ldc = n for every problem, the same as m_arr */
        cublasStatus_t err = cublasGemmGroupedBatchedEx(
            cu_blas(), ta, tb, m_arr, n_arr, k_arr, alpha, dev, ab_type, lda, dev + np, ab_type,
            ldb, beta, (void *const *)(dev + 2 * np), CUDA_R_32F, ldc, n_probs, gsize, compute);
        if (err == CUBLAS_STATUS_NOT_SUPPORTED) {
            grouped_refused |= key;
            st = grouped_gemm_loop(n_probs, rows, n, k, a, w, c, ab_type);
        } else if (err != CUBLAS_STATUS_SUCCESS) {
            st = cu_fail_cublas(err, "cublasGemmGroupedBatchedEx", __FILE__, __LINE__);
        }
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
    const mr_wtype wt = experts[0].type;
    if (n_rows <= 0) return MR_OK;
    int n_live = 0;
    for (int g = 0; g < n_groups; g++) {
        if (experts[g].dim != dim || experts[g].inter != inter || experts[g].type != wt ||
            row_start[g + 1] < row_start[g])
            return mr_fail(MR_EINVAL, "cuda experts_grouped: group %d differs in shape or weight "
                           "type, or its rows go backwards", g);
        n_live += row_start[g + 1] > row_start[g];
    }
    const size_t hidden = (size_t)n_rows * (size_t)inter;
    const size_t in_elems = (size_t)n_rows * (size_t)dim;
    float *gbuf = scratch, *ubuf = scratch + hidden;
    /* the GEMM inputs: x and h in fp32, or their bf16 roundings next to BF16 weights */
    const cudaDataType ty = weight_cuda_type(wt);
    const size_t esz = mr_wtype_size(wt);
    const char *xin = (const char *)x, *hin = (const char *)gbuf;
    __nv_bfloat16 *xb = NULL;
    if (wt == MR_WT_BF16) {
        MR_TRY(act_bf16(in_elems + hidden, &xb));
        MR_TRY(round_bf16(x, in_elems, xb));
        xin = (const char *)xb;
        hin = (const char *)(xb + in_elems);
    }
    /* gate and up of every group: 2·n_live problems */
    int *rows = (int *)malloc(sizeof(int) * 2 * (size_t)n_live);
    const void **a = (const void **)malloc(sizeof(void *) * 2 * (size_t)n_live);
    const void **w = (const void **)malloc(sizeof(void *) * 2 * (size_t)n_live);
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
            a[p] = a[p + n_live] = xin + r0 * (size_t)dim * esz;
            w[p] = experts[g].gate;
            w[p + n_live] = experts[g].up;
            c[p] = gbuf + r0 * (size_t)inter;
            c[p + n_live] = ubuf + r0 * (size_t)inter;
            p++;
        }
        st = grouped_gemm_rm(2 * n_live, rows, inter, dim, a, w, c, ty);
        if (st == MR_OK) st = cu_swiglu_impl(gbuf, ubuf, gbuf, hidden);
        if (st == MR_OK && xb) st = round_bf16(gbuf, hidden, xb + in_elems);
        /* down: out rows = h rows · down(D, inter)ᵀ */
        p = 0;
        for (int g = 0; g < n_groups && st == MR_OK; g++) {
            const int n = row_start[g + 1] - row_start[g];
            if (n <= 0) continue;
            const size_t r0 = (size_t)row_start[g];
            a[p] = hin + r0 * (size_t)inter * esz;
            w[p] = experts[g].down;
            c[p] = out + r0 * (size_t)dim;
            p++;
        }
        if (st == MR_OK) st = grouped_gemm_rm(n_live, rows, dim, inter, a, w, c, ty);
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
