/* kernels/cuda/cuda_elementwise.cu — row and element-wise ops of the CUDA
 * backend: rmsnorm, rope, softmax (plain and causally masked) and SwiGLU.
 *
 * Each follows kernels_cpu.c / matmul_cpu.c operation for operation so the
 * results agree to a few ulp: rmsnorm and softmax sum in double, the max uses
 * the reference's `v > m` rule, rope rounds every product (__fmul_rn: no FMA
 * contraction, as the reference built without -mfma). The remaining
 * difference is expf (CUDA: ≤ 2 ulp; glibc: < 1 ulp).
 *
 * Launch shapes: one 256-thread block per row for rmsnorm and softmax (rows
 * are a few hundred to tens of thousands of floats); grid-stride loops for
 * rope and SwiGLU.
 */
#include "cuda_internal.cuh"

#define ROW_THREADS 256
#define ELEM_THREADS 256

/* ---- rmsnorm ------------------------------------------------------------------- */

__global__ void rmsnorm_kernel(const float *x, const float *weight, float *y, int dim,
                               int stride, float eps)
{
    const float *xr = x + (size_t)blockIdx.x * (size_t)stride;
    float *yr = y + (size_t)blockIdx.x * (size_t)stride;
    double sum_sq = 0.0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) sum_sq += (double)xr[i] * xr[i];
    sum_sq = cu_block_sum(sum_sq); /* every x read is done before any y write */
    const float inv = (float)(1.0 / sqrt(sum_sq / dim + eps));
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = xr[i] * inv * weight[i];
}

static mr_status rmsnorm_impl(const float *x, const float *weight, float *y, int n_rows,
                              int dim, int stride, float eps)
{
    if (n_rows <= 0 || dim <= 0) return MR_OK;
    if (stride < dim)
        return mr_fail(MR_EINVAL, "cuda rmsnorm: stride %d < dim %d", stride, dim);
    rmsnorm_kernel<<<n_rows, ROW_THREADS, 0, cu_stream()>>>(x, weight, y, dim, stride, eps);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_rmsnorm(const float *x, const float *weight, float *y, int n_rows, int dim,
                   int stride, float eps)
{
    cu_record(rmsnorm_impl(x, weight, y, n_rows, dim, stride, eps));
}

/* ---- rope ------------------------------------------------------------------------ */

__global__ void rope_kernel(float *x, int n_vecs, int stride, int half, const float *cos_t,
                            const float *sin_t)
{
    const size_t total = (size_t)n_vecs * (size_t)half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t v = idx / (size_t)half;
        const int j = (int)(idx % (size_t)half);
        float *p = x + v * (size_t)stride;
        const float re = p[2 * j], im = p[2 * j + 1], c = cos_t[j], s = sin_t[j];
        p[2 * j] = __fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s));
        p[2 * j + 1] = __fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c));
    }
}

static mr_status rope_impl(float *x, int n_vecs, int stride, int rope_dim, const float *cos_t,
                           const float *sin_t)
{
    const int half = rope_dim / 2;
    if (n_vecs <= 0 || half <= 0) return MR_OK;
    if (stride < 2 * half)
        return mr_fail(MR_EINVAL, "cuda rope: stride %d < rope_dim %d", stride, rope_dim);
    const size_t total = (size_t)n_vecs * (size_t)half;
    rope_kernel<<<cu_grid_1d(total, ELEM_THREADS), ELEM_THREADS, 0, cu_stream()>>>(
        x, n_vecs, stride, half, cos_t, sin_t);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_rope(float *x, int n_vecs, int stride, int rope_dim, const float *cos_t,
                const float *sin_t)
{
    cu_record(rope_impl(x, n_vecs, stride, rope_dim, cos_t, sin_t));
}

/* One launch for every (token, vector, pair) of a batch; same arithmetic as
 * rope_kernel. */
__global__ void rope_tokens_kernel(float *x, int n_tokens, int token_stride, int n_vecs,
                                   int vec_stride, int half, const float *cos_t,
                                   const float *sin_t)
{
    const size_t per_token = (size_t)n_vecs * (size_t)half;
    const size_t total = (size_t)n_tokens * per_token;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t t = idx / per_token, rest = idx % per_token;
        const size_t v = rest / (size_t)half;
        const int j = (int)(rest % (size_t)half);
        float *p = x + t * (size_t)token_stride + v * (size_t)vec_stride;
        const float re = p[2 * j], im = p[2 * j + 1];
        const float c = cos_t[t * (size_t)half + (size_t)j], s = sin_t[t * (size_t)half + (size_t)j];
        p[2 * j] = __fsub_rn(__fmul_rn(re, c), __fmul_rn(im, s));
        p[2 * j + 1] = __fadd_rn(__fmul_rn(re, s), __fmul_rn(im, c));
    }
}

static mr_status rope_tokens_impl(float *x, int n_tokens, int token_stride, int n_vecs,
                                  int vec_stride, int rope_dim, const float *cos_t,
                                  const float *sin_t)
{
    const int half = rope_dim / 2;
    if (n_tokens <= 0 || n_vecs <= 0 || half <= 0) return MR_OK;
    if (vec_stride < 2 * half)
        return mr_fail(MR_EINVAL, "cuda rope_tokens: vector stride %d < rope_dim %d", vec_stride,
                       rope_dim);
    const size_t total = (size_t)n_tokens * (size_t)n_vecs * (size_t)half;
    rope_tokens_kernel<<<cu_grid_1d(total, ELEM_THREADS), ELEM_THREADS, 0, cu_stream()>>>(
        x, n_tokens, token_stride, n_vecs, vec_stride, half, cos_t, sin_t);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_rope_tokens(float *x, int n_tokens, int token_stride, int n_vecs, int vec_stride,
                       int rope_dim, const float *cos_t, const float *sin_t)
{
    cu_record(rope_tokens_impl(x, n_tokens, token_stride, n_vecs, vec_stride, rope_dim, cos_t,
                               sin_t));
}

/* ---- softmax ------------------------------------------------------------------------ */

__global__ void masked_softmax_kernel(float *x, int n, const int32_t *ctx_len, int q_div,
                                      int q_mod)
{
    float *row = x + (size_t)blockIdx.x * (size_t)n;
    int limit = n;
    if (ctx_len != NULL) {
        const int len = ctx_len[(blockIdx.x / q_div) % q_mod];
        limit = len < 0 ? 0 : len > n ? n : len;
    }
    float max = -INFINITY;
    for (int i = threadIdx.x; i < limit; i += blockDim.x) max = row[i] > max ? row[i] : max;
    max = cu_block_max(max);
    if (max == -INFINITY) { /* fully masked row: all zeros, as the reference */
        for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = 0.0f;
        return;
    }
    double sum = 0.0;
    for (int i = threadIdx.x; i < limit; i += blockDim.x) {
        const float e = expf(row[i] - max);
        row[i] = e;
        sum += e;
    }
    sum = cu_block_sum(sum);
    const float inv = (float)(1.0 / sum);
    for (int i = threadIdx.x; i < n; i += blockDim.x) row[i] = i < limit ? row[i] * inv : 0.0f;
}

mr_status cu_masked_softmax(float *x, int n_rows, int n, const int32_t *ctx_len, int q_div,
                            int q_mod)
{
    if (n_rows <= 0 || n <= 0) return MR_OK;
    if (ctx_len != NULL && (q_div <= 0 || q_mod <= 0))
        return mr_fail(MR_EINVAL, "cuda masked softmax: q_div %d / q_mod %d must be > 0", q_div,
                       q_mod);
    masked_softmax_kernel<<<n_rows, ROW_THREADS, 0, cu_stream()>>>(x, n, ctx_len, q_div, q_mod);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_softmax(float *x, int n_rows, int n)
{
    cu_record(cu_masked_softmax(x, n_rows, n, NULL, 1, 1));
}

/* ---- SwiGLU ---------------------------------------------------------------------------- */

__global__ void swiglu_kernel(const float *gate, const float *up, float *out, size_t n)
{
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

mr_status cu_swiglu_impl(const float *gate, const float *up, float *out, size_t n)
{
    if (n == 0) return MR_OK;
    swiglu_kernel<<<cu_grid_1d(n, ELEM_THREADS), ELEM_THREADS, 0, cu_stream()>>>(gate, up, out,
                                                                                 n);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_swiglu(const float *gate, const float *up, float *out, size_t n)
{
    cu_record(cu_swiglu_impl(gate, up, out, n));
}
