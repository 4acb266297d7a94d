/* kernels/cuda/cuda_mla_paged.cu — absorbed MLA decode straight from the
 * paged latent pool (mla_decode_paged in kernels.h), one launch for every
 * decode token of a batch.
 *
 * Block (token, head group of 32 heads), 32 warps: warp w owns head
 * 32·group + w. The block walks the token's context in tiles of TILE latent
 * rows: all threads load a tile (rows found through the pool's row indices,
 * no gather pass) into shared memory once, then every warp scores each row
 * against its head (lane-strided dot product over C + R, warp reduction) and
 * folds it into an online softmax (running max m, sum l, and the C-wide
 * output accumulator, C/32 floats per lane). So the latent KV is read once per
 * head group (⌈H/32⌉ times per token, 4 for DeepSeek-V3's 128 heads) and the
 * scores never touch memory.
 *
 * KV rows fp32 or bf16 (--kv-dtype), widened to fp32 as the tile is loaded.
 * With --precision bf16 (and kv_lora, rope multiples of 16) the tensor-core
 * form below runs instead. fp32 on CUDA cores: absorbed MLA decode does ~2·(2C+R) FLOPs per latent row
 * per head (B 64, ctx 4k, 128 heads: ~73 GFLOP for ~0.6 GB), so this kernel is
 * compute-bound on an H100; BF16 tensor-core tiles (FlashMLA) are the next
 * step. Differences to the CPU (GEMM + softmax): summation order and the
 * online rescaling, within the fp32 GEMM tolerance of tests/gpu.
 */
#include "cuda_internal.cuh"

#include <mma.h>

#define HEADS_PER_BLOCK 32
#define TILE 8
#define MAX_C_PER_LANE 32 /* kv_lora <= 1024 */
#define MAX_R_PER_LANE 4  /* rope_dim <= 128 */

/* 1024 threads per block: left unbounded, ptxas gives this kernel 107
 * registers (q and acc alone are 64 floats per lane), and 1024 x 112 is more
 * than a block's 64K registers, so every launch would fail with
 * cudaErrorLaunchOutOfResources. The bound caps it at 64 registers (ptxas
 * -v, sm_90: 164 bytes of spill stores). The other way out, 16 heads per
 * block (512 threads, 108 registers, no spills, the latent read twice as
 * often), is for a GPU session to measure against this one. */
template <typename T>
__global__ void __launch_bounds__(HEADS_PER_BLOCK * 32)
    mla_decode_paged_kernel(const float *q_lat, const float *q_pe, int q_pe_ld,
                                        int q_pe_hstride, const int32_t *seq, int n_heads,
                                        int C, int R, const T *kv, const int32_t *rows,
                                        int row_base, float scale, float *out_lat)
{
    extern __shared__ float tile[]; /* (TILE, C + R) */
    const int lat = C + R;
    const int token = seq[3 * blockIdx.y], off = seq[3 * blockIdx.y + 1];
    const int n_ctx = seq[3 * blockIdx.y + 2];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.x * HEADS_PER_BLOCK + warp;
    const bool active = h < n_heads;
    const int nc = C / 32, nr = (R + 31) / 32;

    float q[MAX_C_PER_LANE], qp[MAX_R_PER_LANE], acc[MAX_C_PER_LANE];
    const float *ql = q_lat + ((size_t)token * n_heads + (active ? h : 0)) * C;
    const float *qr = q_pe + (size_t)token * q_pe_ld + (size_t)(active ? h : 0) * q_pe_hstride;
#pragma unroll
    for (int i = 0; i < MAX_C_PER_LANE; i++) {
        q[i] = i < nc ? ql[lane + 32 * i] : 0.0f;
        acc[i] = 0.0f;
    }
#pragma unroll
    for (int i = 0; i < MAX_R_PER_LANE; i++) {
        const int r = lane + 32 * i;
        qp[i] = i < nr && r < R ? qr[r] : 0.0f;
    }
    float m = -INFINITY, l = 0.0f;

    for (int t0 = 0; t0 < n_ctx; t0 += TILE) {
        const int n = n_ctx - t0 < TILE ? n_ctx - t0 : TILE;
        __syncthreads(); /* the previous tile is consumed */
        for (int idx = threadIdx.x; idx < n * lat; idx += blockDim.x) {
            const int r = idx / lat, c = idx % lat;
            tile[idx] = cu_to_float(
                kv[((size_t)rows[off + t0 + r] + (size_t)row_base) * (size_t)lat + c]);
        }
        __syncthreads();
        if (!active) continue;
        for (int r = 0; r < n; r++) {
            const float *row = tile + (size_t)r * lat;
            float part = 0.0f;
#pragma unroll
            for (int i = 0; i < MAX_C_PER_LANE; i++)
                if (i < nc) part += q[i] * row[lane + 32 * i];
#pragma unroll
            for (int i = 0; i < MAX_R_PER_LANE; i++) {
                const int c = lane + 32 * i;
                if (i < nr && c < R) part += qp[i] * row[C + c];
            }
            for (int o = 16; o > 0; o /= 2) part += __shfl_xor_sync(0xffffffffu, part, o);
            const float s = part * scale;
            const float m_new = s > m ? s : m;
            const float corr = expf(m - m_new), p = expf(s - m_new);
            l = l * corr + p;
#pragma unroll
            for (int i = 0; i < MAX_C_PER_LANE; i++)
                if (i < nc) acc[i] = acc[i] * corr + p * row[lane + 32 * i];
            m = m_new;
        }
    }
    if (!active) return;
    float *out = out_lat + ((size_t)token * n_heads + h) * C;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f; /* no context: zeros, as the CPU */
#pragma unroll
    for (int i = 0; i < MAX_C_PER_LANE; i++)
        if (i < nc) out[lane + 32 * i] = acc[i] * inv;
}

/* ---- the tensor-core form (--precision bf16) -------------------------------------
 * Block (token, group of TC_HEADS heads), TC_WARPS warps. The group's queries
 * (q_lat | q_pe, bf16) stay in shared memory; the context streams through in
 * tiles of TC_TILE latent rows (bf16 in shared memory, widened/rounded as
 * loaded). Per tile: S = Q·Kᵀ (TC_HEADS x TC_TILE, WMMA 16x16x16 bf16, fp32
 * accumulate; one warp per 16 columns), the online softmax row by row (one
 * thread per head; P rounded to bf16, the row sum over the rounded P), then
 * O = O·corr + P·V with V the tile's first C columns (one warp per 16 output
 * columns; O in shared memory, since WMMA accumulators cannot be rescaled by
 * row). Inputs of both products are bf16, everything else fp32: the same
 * arithmetic as the bf16 GEMMs of mla_absorbed.
 * NOT YET RUN ON A GPU (no GPU was available when it was written): the gpu
 * suite's mla_decode_paged --bf16 case compares it with the CPU. */
#define TC_HEADS 16
#define TC_TILE 32
#define TC_WARPS 4
#define TC_PAD 8 /* bf16 elements of row padding: keeps every WMMA pointer 32-byte aligned */

static size_t tc_smem_bytes(int C, int R)
{
    const size_t ld = (size_t)(C + R + TC_PAD);
    return sizeof(__nv_bfloat16) * (TC_HEADS * ld + TC_TILE * ld + TC_HEADS * (TC_TILE + TC_PAD)) +
           sizeof(float) * (TC_HEADS * TC_TILE + (size_t)TC_HEADS * C + TC_WARPS * 256 +
                            3 * TC_HEADS);
}

template <typename T>
__global__ void mla_decode_tc_kernel(const float *q_lat, const float *q_pe, int q_pe_ld,
                                     int q_pe_hstride, const int32_t *seq, int n_heads, int C,
                                     int R, const T *kv, const int32_t *rows, int row_base,
                                     float scale, float *out_lat)
{
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char tc_smem[];
    const int lat = C + R, ld = lat + TC_PAD, ldp = TC_TILE + TC_PAD;
    const int token = seq[3 * blockIdx.y], off = seq[3 * blockIdx.y + 1];
    const int n_ctx = seq[3 * blockIdx.y + 2];
    const int h0 = blockIdx.x * TC_HEADS, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    /* carve (each size a multiple of 32 bytes, see TC_PAD) */
    __nv_bfloat16 *qs = (__nv_bfloat16 *)tc_smem;      /* (TC_HEADS, ld)  queries */
    __nv_bfloat16 *ks = qs + TC_HEADS * ld;             /* (TC_TILE, ld)   context tile */
    __nv_bfloat16 *ps = ks + TC_TILE * ld;              /* (TC_HEADS, ldp) probabilities */
    float *ss = (float *)(ps + TC_HEADS * ldp);         /* (TC_HEADS, TC_TILE) scores */
    float *os = ss + TC_HEADS * TC_TILE;                /* (TC_HEADS, C)   output */
    float *tmp = os + TC_HEADS * C;                     /* (TC_WARPS, 16, 16) */
    float *m_s = tmp + TC_WARPS * 256, *l_s = m_s + TC_HEADS, *c_s = l_s + TC_HEADS;

    for (int idx = threadIdx.x; idx < TC_HEADS * lat; idx += blockDim.x) {
        const int h = idx / lat, c = idx % lat, head = h0 + h;
        float v = 0.0f;
        if (head < n_heads)
            v = c < C ? q_lat[((size_t)token * n_heads + head) * C + c]
                      : q_pe[(size_t)token * q_pe_ld + (size_t)head * q_pe_hstride + (c - C)];
        qs[h * ld + c] = __float2bfloat16_rn(v);
    }
    for (int idx = threadIdx.x; idx < TC_HEADS * C; idx += blockDim.x) os[idx] = 0.0f;
    if (threadIdx.x < TC_HEADS) {
        m_s[threadIdx.x] = -INFINITY;
        l_s[threadIdx.x] = 0.0f;
    }

    for (int t0 = 0; t0 < n_ctx; t0 += TC_TILE) {
        const int n = n_ctx - t0 < TC_TILE ? n_ctx - t0 : TC_TILE;
        __syncthreads(); /* the previous tile is consumed (and, first time, q is in place) */
        for (int idx = threadIdx.x; idx < TC_TILE * lat; idx += blockDim.x) {
            const int r = idx / lat, c = idx % lat;
            const float v = r < n ? cu_to_float(kv[((size_t)rows[off + t0 + r] +
                                                    (size_t)row_base) * (size_t)lat + c])
                                  : 0.0f;
            ks[r * ld + c] = __float2bfloat16_rn(v);
        }
        __syncthreads();
        /* S = Q · Kᵀ: warp w owns score columns [16w, 16w + 16) */
        if (warp < TC_TILE / 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < lat; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(a, qs + kk, ld);
                wmma::load_matrix_sync(b, ks + warp * 16 * ld + kk, ld); /* B(k, n) = K(n, k) */
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(ss + warp * 16, acc, TC_TILE, wmma::mem_row_major);
        }
        __syncthreads();
        /* online softmax, one thread per head row */
        if (threadIdx.x < TC_HEADS) {
            const int r = threadIdx.x;
            float mx = m_s[r];
            for (int j = 0; j < n; j++) mx = fmaxf(mx, ss[r * TC_TILE + j] * scale);
            const float corr = expf(m_s[r] - mx); /* 0 on the first tile (m = -inf) */
            float sum = 0.0f;
            for (int j = 0; j < TC_TILE; j++) {
                const __nv_bfloat16 p =
                    __float2bfloat16_rn(j < n ? expf(ss[r * TC_TILE + j] * scale - mx) : 0.0f);
                ps[r * ldp + j] = p;
                sum += __bfloat162float(p);
            }
            l_s[r] = l_s[r] * corr + sum;
            m_s[r] = mx;
            c_s[r] = corr;
        }
        __syncthreads();
        /* O = O·corr + P · V: warp w owns output column tiles w, w + TC_WARPS, ... */
        float *t = tmp + warp * 256;
        for (int ct = warp; ct < C / 16; ct += TC_WARPS) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
            for (int kk = 0; kk < TC_TILE; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(a, ps + kk, ldp);
                wmma::load_matrix_sync(b, ks + kk * ld + ct * 16, ld); /* B(k, n) = V(k, n) */
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(t, acc, 16, wmma::mem_row_major);
            __syncwarp();
            for (int e = lane; e < 256; e += 32) {
                const int r = e / 16, c = ct * 16 + e % 16;
                os[r * C + c] = os[r * C + c] * c_s[r] + t[e];
            }
            __syncwarp();
        }
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < TC_HEADS * C; idx += blockDim.x) {
        const int h = idx / C, c = idx % C, head = h0 + h;
        if (head >= n_heads) continue;
        const float l = l_s[h];
        out_lat[((size_t)token * n_heads + head) * C + c] = l > 0.0f ? os[idx] / l : 0.0f;
    }
}

template <typename T>
static mr_status launch_tc(const float *q_lat, const float *q_pe, int q_pe_ld, int q_pe_hstride,
                           int n_tok, const int32_t *seq, int n_heads, int C, int R, const T *kv,
                           const int32_t *rows, int row_base, float scale, float *out_lat)
{
    const size_t smem = tc_smem_bytes(C, R);
    CUDA_TRY(cudaFuncSetAttribute(mla_decode_tc_kernel<T>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)((n_heads + TC_HEADS - 1) / TC_HEADS), (unsigned)n_tok);
    mla_decode_tc_kernel<T><<<grid, TC_WARPS * 32, smem, cu_stream()>>>(
        q_lat, q_pe, q_pe_ld, q_pe_hstride, seq, n_heads, C, R, kv, rows, row_base, scale,
        out_lat);
    CU_LAUNCH_TRY();
    return MR_OK;
}

static mr_status mla_decode_paged_impl(const float *q_lat, const float *q_pe, int q_pe_ld,
                                       int q_pe_hstride, int n_tok, const int32_t *seq,
                                       int n_heads, int C, int R, const void *kv,
                                       mr_wtype kv_type, const int32_t *rows, int row_base,
                                       float scale, float *out_lat)
{
    if (n_tok <= 0) return MR_OK;
    /* grid (head groups, tokens): blocks go out x-fastest, so one token's head
     * groups run side by side and share its latent rows in L2 (tokens-fastest
     * would spread them over waves and re-read the rows from HBM) */
    if (n_tok > 65535)
        return mr_fail(MR_EINVAL, "cuda mla_decode_paged: %d decode tokens in one call (at most "
                       "65535, the grid's y limit)", n_tok);
    if (cu_precision() == MR_CUDA_PRECISION_BF16 && n_heads > 0 && C > 0 && C % 16 == 0 &&
        R % 16 == 0 && tc_smem_bytes(C, R) <= 200u * 1024u) {
        if (kv_type == MR_WT_BF16)
            return launch_tc(q_lat, q_pe, q_pe_ld, q_pe_hstride, n_tok, seq, n_heads, C, R,
                             (const __nv_bfloat16 *)kv, rows, row_base, scale, out_lat);
        return launch_tc(q_lat, q_pe, q_pe_ld, q_pe_hstride, n_tok, seq, n_heads, C, R,
                         (const float *)kv, rows, row_base, scale, out_lat);
    }
    if (n_heads <= 0 || C <= 0 || C % 32 != 0 || C > 32 * MAX_C_PER_LANE || R < 0 ||
        R > 32 * MAX_R_PER_LANE)
        return mr_fail(MR_EINVAL, "cuda mla_decode_paged: heads %d, kv_lora %d (a multiple of 32, "
                       "<= %d), rope %d (<= %d) not supported", n_heads, C,
                       32 * MAX_C_PER_LANE, R, 32 * MAX_R_PER_LANE);
    const size_t smem = sizeof(float) * TILE * (size_t)(C + R);
    const dim3 grid((unsigned)((n_heads + HEADS_PER_BLOCK - 1) / HEADS_PER_BLOCK),
                    (unsigned)n_tok);
    if (kv_type == MR_WT_BF16)
        mla_decode_paged_kernel<<<grid, HEADS_PER_BLOCK * 32, smem, cu_stream()>>>(
            q_lat, q_pe, q_pe_ld, q_pe_hstride, seq, n_heads, C, R, (const __nv_bfloat16 *)kv,
            rows, row_base, scale, out_lat);
    else
        mla_decode_paged_kernel<<<grid, HEADS_PER_BLOCK * 32, smem, cu_stream()>>>(
            q_lat, q_pe, q_pe_ld, q_pe_hstride, seq, n_heads, C, R, (const float *)kv, rows,
            row_base, scale, out_lat);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_mla_decode_paged(const float *q_lat, const float *q_pe, int q_pe_ld, int q_pe_hstride,
                            int n_tok, const int32_t *seq, int n_heads, int kv_lora, int rope_dim,
                            const void *kv, mr_wtype kv_type, const int32_t *rows, int row_base,
                            float scale, float *out_lat, float *scratch, int max_ctx)
{
    (void)scratch; /* no gather, no scores in memory */
    (void)max_ctx;
    cu_record(mla_decode_paged_impl(q_lat, q_pe, q_pe_ld, q_pe_hstride, n_tok, seq, n_heads,
                                    kv_lora, rope_dim, kv, kv_type, rows, row_base, scale,
                                    out_lat));
}
