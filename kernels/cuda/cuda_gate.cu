/* kernels/cuda/cuda_gate.cu — the MoE router of the CUDA backend (moe_gate).
 *
 * One 256-thread block per token, everything in shared memory (the op's
 * scratch argument is not used): scores (E), selection scores (E), group
 * scores, the kept groups and a taken-flag per expert. The decisions are the
 * reference's (kernels_cpu.c cpu_moe_gate), step by step:
 *  - scores = sigmoid(logits) | softmax(logits), sel = scores (+ bias);
 *  - grouped (method != greedy and n_group > 1): thread g scores group g with
 *    the reference's sequential top-2 (sum, bias present) or max (no bias);
 *    thread 0 picks topk_group groups with the reference's stable top-k; the
 *    other groups' sel become -inf;
 *  - top-K: K rounds of a block arg-max over the experts not yet taken,
 *    larger value first, ties → lower index (-inf entries only once no finite
 *    one is left, lower index first): the order of the reference's stable
 *    insertion top-k;
 *  - thread 0 gathers the weights and normalizes / scales in the reference's
 *    double / float arithmetic.
 * So ids agree exactly and weights to the last ulp of the scores (expf).
 */
#include <limits.h>

#include "cuda_internal.cuh"

#define GATE_THREADS 256
/* dynamic shared memory without opt-in: 48 KiB minus the kernel's static
 * shared memory (block_pick, cu_block_max/_sum: 640 bytes on sm_90) */
#define GATE_MAX_SMEM (47 * 1024)

struct gate_args {
    int n_experts, n_group, topk_group, top_k, per_group;
    bool grouped, sigmoid, normalize;
    float scale;
};

/* The reference's top_k_indices: stable descending insertion, ties → lower index. */
__device__ static void seq_top_k(const float *v, int n, int k, int32_t *out)
{
    for (int j = 0; j < k; j++) out[j] = -1;
    for (int i = 0; i < n; i++) {
        int pos = k;
        while (pos > 0 && (out[pos - 1] < 0 || v[i] > v[out[pos - 1]])) pos--;
        if (pos >= k) continue;
        for (int j = k - 1; j > pos; j--) out[j] = out[j - 1];
        out[pos] = i;
    }
}

/* (value, index) pair a beats pair b: an index of INT_MAX means "none". */
__device__ static bool pick_beats(float av, int ai, float bv, int bi)
{
    if (ai == INT_MAX) return false;
    if (bi == INT_MAX) return true;
    return av > bv || (av == bv && ai < bi);
}

/* The best untaken expert of the block (every thread gets it). */
__device__ static int block_pick(const float *sel, const unsigned char *taken, int n)
{
    __shared__ float part_v[32];
    __shared__ int part_i[32];
    float best_v = -INFINITY;
    int best_i = INT_MAX;
    for (int e = threadIdx.x; e < n; e += blockDim.x)
        if (!taken[e] && pick_beats(sel[e], e, best_v, best_i)) {
            best_v = sel[e];
            best_i = e;
        }
    for (int off = 16; off > 0; off /= 2) {
        const float ov = __shfl_down_sync(0xffffffffu, best_v, off);
        const int oi = __shfl_down_sync(0xffffffffu, best_i, off);
        if (pick_beats(ov, oi, best_v, best_i)) {
            best_v = ov;
            best_i = oi;
        }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    __syncthreads();
    if (lane == 0) {
        part_v[warp] = best_v;
        part_i[warp] = best_i;
    }
    __syncthreads();
    best_v = -INFINITY;
    best_i = INT_MAX;
    for (int w = 0; w < (int)(blockDim.x / 32); w++)
        if (pick_beats(part_v[w], part_i[w], best_v, best_i)) {
            best_v = part_v[w];
            best_i = part_i[w];
        }
    return best_i;
}

__global__ void moe_gate_kernel(const float *logits, const float *bias, gate_args a,
                                int32_t *expert_ids, float *weights)
{
    extern __shared__ float smem[];
    const int n_exp = a.n_experts;
    float *scores = smem;                                  /* [E] */
    float *sel = scores + n_exp;                           /* [E] */
    float *group_score = sel + n_exp;                      /* [n_group] */
    int32_t *keep = (int32_t *)(group_score + a.n_group);  /* [topk_group] */
    int32_t *ids = keep + a.topk_group;                    /* [K] */
    unsigned char *taken = (unsigned char *)(ids + a.top_k); /* [E] */
    const float *lg = logits + (size_t)blockIdx.x * (size_t)n_exp;

    if (a.sigmoid) {
        for (int e = threadIdx.x; e < n_exp; e += blockDim.x)
            scores[e] = 1.0f / (1.0f + expf(-lg[e]));
    } else { /* cpu_softmax on one row */
        float max = -INFINITY;
        for (int e = threadIdx.x; e < n_exp; e += blockDim.x) max = lg[e] > max ? lg[e] : max;
        max = cu_block_max(max);
        double sum = 0.0;
        for (int e = threadIdx.x; e < n_exp; e += blockDim.x) {
            const float x = max == -INFINITY ? 0.0f : expf(lg[e] - max);
            scores[e] = x;
            sum += x;
        }
        sum = cu_block_sum(sum);
        const float inv = max == -INFINITY ? 0.0f : (float)(1.0 / sum);
        for (int e = threadIdx.x; e < n_exp; e += blockDim.x) scores[e] *= inv;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < n_exp; e += blockDim.x) {
        sel[e] = bias != NULL ? scores[e] + bias[e] : scores[e];
        taken[e] = 0;
    }
    __syncthreads();

    if (a.grouped) {
        for (int g = threadIdx.x; g < a.n_group; g += blockDim.x) {
            const float *gs = sel + (size_t)g * a.per_group;
            if (bias != NULL) { /* sum of the two best in the group */
                int32_t best2[2];
                const int k2 = a.per_group < 2 ? a.per_group : 2;
                seq_top_k(gs, a.per_group, k2, best2);
                group_score[g] = gs[best2[0]] + (k2 > 1 ? gs[best2[1]] : 0.0f);
            } else {
                float m = -INFINITY;
                for (int i = 0; i < a.per_group; i++) m = gs[i] > m ? gs[i] : m;
                group_score[g] = m;
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) seq_top_k(group_score, a.n_group, a.topk_group, keep);
        __syncthreads();
        for (int e = threadIdx.x; e < n_exp; e += blockDim.x) {
            const int g = e / a.per_group;
            bool kept = false;
            for (int j = 0; j < a.topk_group; j++) kept |= keep[j] == g;
            if (!kept) sel[e] = -INFINITY;
        }
        __syncthreads();
    }

    for (int j = 0; j < a.top_k; j++) {
        const int best = block_pick(sel, taken, n_exp);
        if (threadIdx.x == 0) {
            ids[j] = best;
            taken[best] = 1;
        }
        __syncthreads();
    }

    if (threadIdx.x == 0) {
        int32_t *ids_out = expert_ids + (size_t)blockIdx.x * (size_t)a.top_k;
        float *w = weights + (size_t)blockIdx.x * (size_t)a.top_k;
        double sum = 0.0;
        for (int j = 0; j < a.top_k; j++) {
            ids_out[j] = ids[j];
            w[j] = scores[ids[j]];
            sum += w[j];
        }
        for (int j = 0; j < a.top_k; j++) {
            const float v = a.normalize ? (float)(w[j] / (sum + 1e-20)) : w[j];
            w[j] = v * a.scale;
        }
    }
}

static size_t gate_smem_bytes(const mr_gate_params *p)
{
    return sizeof(float) * (2 * (size_t)p->n_experts + (size_t)p->n_group) +
           sizeof(int32_t) * ((size_t)p->topk_group + (size_t)p->top_k) + (size_t)p->n_experts;
}

static mr_status moe_gate_impl(const float *logits, const float *bias, int n_tokens,
                               const mr_gate_params *p, int32_t *expert_ids, float *weights)
{
    if (n_tokens <= 0) return MR_OK;
    gate_args a;
    a.n_experts = p->n_experts;
    a.top_k = p->top_k;
    a.grouped = p->method != MR_TOPK_GREEDY && p->n_group > 1;
    a.n_group = a.grouped ? p->n_group : 1;
    a.topk_group = a.grouped ? p->topk_group : 0;
    a.per_group = p->n_group > 0 ? p->n_experts / p->n_group : 0;
    a.sigmoid = p->score_func == MR_SCORE_SIGMOID;
    a.normalize = p->norm_topk_prob && p->top_k > 1;
    a.scale = a.normalize && p->v2_scaling ? 1.0f : p->routed_scaling_factor;
    if (a.n_experts <= 0 || a.top_k <= 0 || a.top_k > a.n_experts)
        return mr_fail(MR_EINVAL, "cuda moe_gate: need 0 < top_k (%d) <= n_experts (%d)",
                       a.top_k, a.n_experts);
    if (a.grouped && (a.n_experts % a.n_group != 0 || a.topk_group <= 0 ||
                      a.topk_group > a.n_group))
        return mr_fail(MR_EINVAL,
                       "cuda moe_gate: n_experts %d, n_group %d, topk_group %d: need groups "
                       "of equal size and 0 < topk_group <= n_group",
                       a.n_experts, a.n_group, a.topk_group);
    mr_gate_params used = *p;
    used.n_group = a.n_group;
    used.topk_group = a.topk_group;
    const size_t smem = gate_smem_bytes(&used);
    if (smem > GATE_MAX_SMEM)
        return mr_fail(MR_EUNSUPPORTED,
                       "cuda moe_gate: %d experts need %zu bytes of shared memory (max %d)",
                       a.n_experts, smem, GATE_MAX_SMEM);
    moe_gate_kernel<<<n_tokens, GATE_THREADS, smem, cu_stream()>>>(logits, bias, a, expert_ids,
                                                                   weights);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_moe_gate(const float *logits, const float *bias, int n_tokens,
                    const mr_gate_params *p, int32_t *expert_ids, float *weights,
                    float *scratch)
{
    (void)scratch; /* shared memory instead; see the file comment */
    cu_record(moe_gate_impl(logits, bias, n_tokens, p, expert_ids, weights));
}
