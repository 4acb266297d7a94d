/* kernels/cuda/cuda_movement.cu — data-movement ops of the CUDA backend:
 * strided copies, indexed row gather/scatter (embedding lookup, paged KV
 * reads and writes, expert permutations), the fixed-order MoE combine and
 * the residual add, and the row argmax of greedy sampling. Contracts in
 * kernels/kernels.h.
 *
 * moe_combine sums k = 0..K-1 from 0.0f with separate multiply and add
 * (__fmul_rn/__fadd_rn: no FMA contraction), operation for operation as
 * kernels_cpu.c, so its result is bit-identical to the CPU's.
 */
#include "cuda_internal.cuh"

#define ELEM_THREADS 256

/* ---- copy_2d ------------------------------------------------------------------- */

static mr_status copy_2d_impl(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                              size_t width, size_t rows, int direction)
{
    cudaMemcpyKind kind = cudaMemcpyDefault;
    MR_TRY(cu_copy_kind("copy_2d", direction, &kind));
    if (width == 0 || rows == 0) return MR_OK;
    if (dst_pitch < width || src_pitch < width)
        return mr_fail(MR_EINVAL, "cuda copy_2d: pitch (%zu, %zu) < width %zu", dst_pitch,
                       src_pitch, width);
    CUDA_TRY(cudaMemcpy2DAsync(dst, dst_pitch, src, src_pitch, width, rows, kind, cu_stream()));
    if (direction != MR_COPY_D2D) CUDA_TRY(cudaStreamSynchronize(cu_stream()));
    return MR_OK;
}

void cu_op_copy_2d(void *dst, size_t dst_pitch, const void *src, size_t src_pitch, size_t width,
                   size_t rows, int direction)
{
    cu_record(copy_2d_impl(dst, dst_pitch, src, src_pitch, width, rows, direction));
}

/* ---- gather / scatter rows ------------------------------------------------------ */

/* One block per row; threads stride over its floats. */
template <typename T>
__global__ void gather_rows_kernel(const T *src, int src_ld, const int32_t *rows, int row_base,
                                   int width, float *dst)
{
    const T *s = src + ((size_t)rows[blockIdx.x] + (size_t)row_base) * (size_t)src_ld;
    float *d = dst + (size_t)blockIdx.x * (size_t)width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) d[i] = cu_to_float(s[i]);
}

template <typename T>
__global__ void scatter_rows_kernel(const float *src, int width, const int32_t *rows,
                                    int row_base, T *dst, int dst_ld)
{
    const float *s = src + (size_t)blockIdx.x * (size_t)width;
    T *d = dst + ((size_t)rows[blockIdx.x] + (size_t)row_base) * (size_t)dst_ld;
    for (int i = threadIdx.x; i < width; i += blockDim.x) cu_from_float(s[i], &d[i]);
}

static unsigned row_threads(int width)
{
    return width >= 256 ? 256u : width >= 64 ? 64u : 32u;
}

static mr_status gather_rows_impl(const void *src, mr_wtype type, int src_ld, const int32_t *rows,
                                  int row_base, int n, int width, float *dst)
{
    if (n < 0 || width < 0 || src_ld < width)
        return mr_fail(MR_EINVAL, "cuda gather_rows: bad shape n %d width %d ld %d", n, width,
                       src_ld);
    if (n == 0 || width == 0) return MR_OK;
    if (type == MR_WT_BF16)
        gather_rows_kernel<<<n, row_threads(width), 0, cu_stream()>>>(
            (const __nv_bfloat16 *)src, src_ld, rows, row_base, width, dst);
    else
        gather_rows_kernel<<<n, row_threads(width), 0, cu_stream()>>>(
            (const float *)src, src_ld, rows, row_base, width, dst);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_gather_rows(const void *src, mr_wtype type, int src_ld, const int32_t *rows,
                       int row_base, int n, int width, float *dst)
{
    cu_record(gather_rows_impl(src, type, src_ld, rows, row_base, n, width, dst));
}

static mr_status scatter_rows_impl(const float *src, int n, int width, const int32_t *rows,
                                   int row_base, void *dst, mr_wtype type, int dst_ld)
{
    if (n < 0 || width < 0 || dst_ld < width)
        return mr_fail(MR_EINVAL, "cuda scatter_rows: bad shape n %d width %d ld %d", n, width,
                       dst_ld);
    if (n == 0 || width == 0) return MR_OK;
    if (type == MR_WT_BF16)
        scatter_rows_kernel<<<n, row_threads(width), 0, cu_stream()>>>(
            src, width, rows, row_base, (__nv_bfloat16 *)dst, dst_ld);
    else
        scatter_rows_kernel<<<n, row_threads(width), 0, cu_stream()>>>(
            src, width, rows, row_base, (float *)dst, dst_ld);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_scatter_rows(const float *src, int n, int width, const int32_t *rows, int row_base,
                        void *dst, mr_wtype type, int dst_ld)
{
    cu_record(scatter_rows_impl(src, n, width, rows, row_base, dst, type, dst_ld));
}

/* ---- moe_combine / add ------------------------------------------------------------ */

__global__ void moe_combine_kernel(const float *expert_out, const float *weights, int n_tokens,
                                   int top_k, int dim, float *out)
{
    const size_t total = (size_t)n_tokens * (size_t)dim;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / (size_t)dim, d = idx % (size_t)dim;
        float r = 0.0f;
        for (int j = 0; j < top_k; j++) {
            const size_t slot = t * (size_t)top_k + (size_t)j;
            r = __fadd_rn(r, __fmul_rn(weights[slot], expert_out[slot * (size_t)dim + d]));
        }
        out[idx] = r;
    }
}

static mr_status moe_combine_impl(const float *expert_out, const float *weights, int n_tokens,
                                  int top_k, int dim, float *out)
{
    if (n_tokens < 0 || top_k < 0 || dim < 0)
        return mr_fail(MR_EINVAL, "cuda moe_combine: bad shape (%d, %d, %d)", n_tokens, top_k,
                       dim);
    const size_t total = (size_t)n_tokens * (size_t)dim;
    if (total == 0) return MR_OK;
    moe_combine_kernel<<<cu_grid_1d(total, ELEM_THREADS), ELEM_THREADS, 0, cu_stream()>>>(
        expert_out, weights, n_tokens, top_k, dim, out);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_moe_combine(const float *expert_out, const float *weights, int n_tokens, int top_k,
                       int dim, float *out)
{
    cu_record(moe_combine_impl(expert_out, weights, n_tokens, top_k, dim, out));
}

__global__ void add_kernel(float *y, const float *x, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        y[i] = __fadd_rn(y[i], x[i]);
}

static mr_status add_impl(float *y, const float *x, size_t n)
{
    if (n == 0) return MR_OK;
    add_kernel<<<cu_grid_1d(n, ELEM_THREADS), ELEM_THREADS, 0, cu_stream()>>>(y, x, n);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_add(float *y, const float *x, size_t n)
{
    cu_record(add_impl(y, x, n));
}

/* ---- argmax_rows (greedy sampling) ----------------------------------------------- */

#define ARGMAX_THREADS 256

/* (v, i) beats (bv, bi): larger value, or equal value and lower index; NaN
 * never beats anything and anything beats NaN (the caller handles a NaN at
 * index 0, where mr_argmax returns 0). */
__device__ inline bool argmax_better(float v, int i, float bv, int bi)
{
    if (isnan(v)) return false;
    if (isnan(bv)) return true;
    return v > bv || (v == bv && i < bi);
}

__global__ void argmax_rows_kernel(const float *x, int n, int32_t *out)
{
    const float *row = x + (size_t)blockIdx.x * (size_t)n;
    __shared__ float sv[ARGMAX_THREADS];
    __shared__ int si[ARGMAX_THREADS];
    if (isnan(row[0])) { /* mr_argmax keeps index 0: nothing compares greater than NaN */
        if (threadIdx.x == 0) out[blockIdx.x] = 0;
        return;
    }
    float bv = NAN;
    int bi = n;
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        if (argmax_better(row[i], i, bv, bi)) {
            bv = row[i];
            bi = i;
        }
    sv[threadIdx.x] = bv;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (threadIdx.x < stride &&
            argmax_better(sv[threadIdx.x + stride], si[threadIdx.x + stride], sv[threadIdx.x],
                          si[threadIdx.x])) {
            sv[threadIdx.x] = sv[threadIdx.x + stride];
            si[threadIdx.x] = si[threadIdx.x + stride];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = si[0] < n ? si[0] : 0;
}

mr_status cu_argmax_rows_impl(const float *x, int n_rows, int n, int32_t *out)
{
    if (n_rows <= 0) return MR_OK;
    if (n <= 0) return mr_fail(MR_EINVAL, "cuda argmax_rows: row length %d", n);
    argmax_rows_kernel<<<n_rows, ARGMAX_THREADS, 0, cu_stream()>>>(x, n, out);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_argmax_rows(const float *x, int n_rows, int n, int32_t *out)
{
    cu_record(cu_argmax_rows_impl(x, n_rows, n, out));
}
