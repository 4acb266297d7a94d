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
 * fp32 on CUDA cores: absorbed MLA decode does ~2·(2C+R) FLOPs per latent row
 * per head (B 64, ctx 4k, 128 heads: ~73 GFLOP for ~0.6 GB), so this kernel is
 * compute-bound on an H100; BF16 tensor-core tiles (FlashMLA) are the next
 * step. Differences to the CPU (GEMM + softmax): summation order and the
 * online rescaling, within the fp32 GEMM tolerance of tests/gpu.
 */
#include "cuda_internal.cuh"

#define HEADS_PER_BLOCK 32
#define TILE 8
#define MAX_C_PER_LANE 32 /* kv_lora <= 1024 */
#define MAX_R_PER_LANE 4  /* rope_dim <= 128 */

template <typename T>
__global__ void mla_decode_paged_kernel(const float *q_lat, const float *q_pe, int q_pe_ld,
                                        int q_pe_hstride, const int32_t *seq, int n_heads,
                                        int C, int R, const T *kv, const int32_t *rows,
                                        int row_base, float scale, float *out_lat)
{
    extern __shared__ float tile[]; /* (TILE, C + R) */
    const int lat = C + R;
    const int token = seq[3 * blockIdx.x], off = seq[3 * blockIdx.x + 1];
    const int n_ctx = seq[3 * blockIdx.x + 2];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int h = blockIdx.y * HEADS_PER_BLOCK + warp;
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

static mr_status mla_decode_paged_impl(const float *q_lat, const float *q_pe, int q_pe_ld,
                                       int q_pe_hstride, int n_tok, const int32_t *seq,
                                       int n_heads, int C, int R, const void *kv,
                                       mr_wtype kv_type, const int32_t *rows, int row_base,
                                       float scale, float *out_lat)
{
    if (n_tok <= 0) return MR_OK;
    if (n_heads <= 0 || C <= 0 || C % 32 != 0 || C > 32 * MAX_C_PER_LANE || R < 0 ||
        R > 32 * MAX_R_PER_LANE)
        return mr_fail(MR_EINVAL, "cuda mla_decode_paged: heads %d, kv_lora %d (a multiple of 32, "
                       "<= %d), rope %d (<= %d) not supported", n_heads, C,
                       32 * MAX_C_PER_LANE, R, 32 * MAX_R_PER_LANE);
    const size_t smem = sizeof(float) * TILE * (size_t)(C + R);
    const dim3 grid((unsigned)n_tok, (unsigned)((n_heads + HEADS_PER_BLOCK - 1) / HEADS_PER_BLOCK));
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
