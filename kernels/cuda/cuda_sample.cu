/* kernels/cuda/cuda_sample.cu — sample_rows: the CPU sampler's rule
 * (model/sampler.c, mr_sample_pick) on the GPU, so a decode step copies back
 * token ids instead of batch x vocab logits.
 *
 * Greedy rows (temperature 0): the argmax kernel over every row first (it is
 * one read of the logits). Sampled rows, compacted into `jobs`:
 *   1. scale: keys = logits / T (−0 made +0, as the CPU comparator sees
 *      them equal), values = token ids;
 *   2. sort: CUB segmented STABLE radix sort, keys descending — ties keep id
 *      order, which is the CPU's (value desc, id asc) order;
 *   3. pick: one block per row; the exponentials and the divisions by the
 *      sum are element-wise (parallel, same double arithmetic as the CPU),
 *      every sum that decides the result (softmax denominator, top-p prefix,
 *      the walk to u · mass) is done by one thread in the CPU's order, in
 *      double. The result matches the CPU's exactly unless CUDA's double
 *      exp differs from glibc's by an ulp that changes a float rounding.
 * Cost: the sort is O(rows · vocab); the sequential softmax sum is one
 * thread's pass over the kept candidates (all of the vocab without top-k).
 */
#include "cuda_internal.cuh"

#include <cub/device/device_segmented_sort.cuh>
#include <limits.h>

typedef struct sample_job {
    double u;
    float temperature;
    float top_p;
    int32_t top_k;
    int32_t row; /* the logits row / output slot */
} sample_job;

static cu_growbuf jobs_buf, keys_buf, vals_buf, offsets_buf, temp_buf;

__global__ void sample_scale_kernel(const float *logits, int vocab, const sample_job *jobs,
                                    int n_jobs, float *keys, int32_t *ids)
{
    for (int y = blockIdx.y; y < n_jobs; y += gridDim.y) { /* gridDim.y <= 65535 */
        const sample_job *j = &jobs[y];
        const float *row = logits + (size_t)j->row * (size_t)vocab;
        float *k = keys + (size_t)y * (size_t)vocab;
        int32_t *v = ids + (size_t)y * (size_t)vocab;
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < vocab; i += gridDim.x * blockDim.x) {
            k[i] = row[i] / j->temperature + 0.0f; /* IEEE division; −0 → +0 */
            v[i] = i;
        }
    }
}

__global__ void sample_offsets_kernel(int n_jobs, int vocab, int *offsets)
{
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= n_jobs; i += gridDim.x * blockDim.x)
        offsets[i] = i * vocab;
}

/* sorted: this job's keys (descending) and ids; work: vocab floats of
 * scratch (the exponentials, then the probabilities). */
__global__ void sample_pick_kernel(int vocab, const sample_job *jobs, const float *sorted,
                                   const int32_t *ids, float *work, int32_t *out)
{
    const sample_job *j = &jobs[blockIdx.x];
    const float *key = sorted + (size_t)blockIdx.x * (size_t)vocab;
    const int32_t *id = ids + (size_t)blockIdx.x * (size_t)vocab;
    float *p = work + (size_t)blockIdx.x * (size_t)vocab;
    const int n = (j->top_k > 0 && j->top_k < vocab) ? j->top_k : vocab;
    const float max = key[0];
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        p[i] = (float)exp((double)key[i] - (double)max);
    __syncthreads();
    __shared__ double sum;
    if (threadIdx.x == 0) {
        double s = 0.0;
        for (int i = 0; i < n; i++) s += p[i];
        sum = s;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) p[i] = (float)((double)p[i] / sum);
    __syncthreads();
    if (threadIdx.x != 0) return;
    int kept = n;
    if (j->top_p < 1.0f) {
        double cum = 0.0;
        int keep = 0;
        while (keep < n) {
            cum += p[keep];
            keep++;
            if (cum >= j->top_p) break;
        }
        kept = keep;
    }
    double mass = 0.0;
    for (int i = 0; i < kept; i++) mass += p[i];
    const double r = j->u * mass;
    double acc = 0.0;
    int pick = kept - 1;
    for (int i = 0; i < kept; i++) {
        acc += p[i];
        if (r < acc) {
            pick = i;
            break;
        }
    }
    out[j->row] = id[pick];
}

static mr_status sample_rows_impl(const float *logits, int n_rows, int vocab,
                                  const mr_sample_row *rows, int32_t *out)
{
    if (n_rows <= 0) return MR_OK;
    if (vocab <= 0) return mr_fail(MR_EINVAL, "cuda sample_rows: vocab %d", vocab);
    MR_TRY(cu_argmax_rows_impl(logits, n_rows, vocab, out)); /* greedy rows; the rest overwritten */
    int n_jobs = 0;
    for (int r = 0; r < n_rows; r++) n_jobs += rows[r].temperature != 0.0f;
    if (n_jobs == 0) return MR_OK;

    sample_job *host = (sample_job *)malloc(sizeof(sample_job) * (size_t)n_jobs);
    if (!host) return mr_fail(MR_ENOMEM, "cuda sample_rows: out of memory");
    for (int r = 0, j = 0; r < n_rows; r++) {
        if (rows[r].temperature == 0.0f) continue;
        host[j].u = rows[r].u;
        host[j].temperature = rows[r].temperature;
        host[j].top_p = rows[r].top_p;
        host[j].top_k = rows[r].top_k;
        host[j].row = r;
        j++;
    }
    const size_t elems = (size_t)n_jobs * (size_t)vocab;
    if (elems > (size_t)INT_MAX) {
        free(host);
        return mr_fail(MR_EINVAL, "cuda sample_rows: %d rows x vocab %d exceed one sort", n_jobs,
                       vocab);
    }
    mr_status st = cu_growbuf_reserve(&jobs_buf, sizeof(sample_job) * (size_t)n_jobs);
    /* keys: scaled logits, then sorted keys | work; ids: in, then out */
    if (st == MR_OK) st = cu_growbuf_reserve(&keys_buf, 2 * elems * sizeof(float));
    if (st == MR_OK) st = cu_growbuf_reserve(&vals_buf, 2 * elems * sizeof(int32_t));
    if (st == MR_OK) st = cu_growbuf_reserve(&offsets_buf, sizeof(int) * (size_t)(n_jobs + 1));
    if (st == MR_OK) {
        /* pageable source: the copy is staged before cudaMemcpyAsync returns */
        cudaError_t err = cudaMemcpyAsync(jobs_buf.p, host, sizeof(sample_job) * (size_t)n_jobs,
                                          cudaMemcpyHostToDevice, cu_stream());
        if (err != cudaSuccess) st = cu_fail_cuda(err, "cudaMemcpyAsync(jobs)", __FILE__, __LINE__);
    }
    free(host);
    if (st != MR_OK) return st;

    const sample_job *jobs = (const sample_job *)jobs_buf.p;
    float *keys_in = (float *)keys_buf.p, *keys_out = keys_in + elems;
    int32_t *ids_in = (int32_t *)vals_buf.p, *ids_out = ids_in + elems;
    int *offsets = (int *)offsets_buf.p;
    const dim3 grid(cu_grid_1d((size_t)vocab, 256) < 64 ? cu_grid_1d((size_t)vocab, 256) : 64,
                    (unsigned)(n_jobs < 65535 ? n_jobs : 65535));
    sample_scale_kernel<<<grid, 256, 0, cu_stream()>>>(logits, vocab, jobs, n_jobs, keys_in,
                                                       ids_in);
    CU_LAUNCH_TRY();
    sample_offsets_kernel<<<cu_grid_1d((size_t)n_jobs + 1, 256), 256, 0, cu_stream()>>>(
        n_jobs, vocab, offsets);
    CU_LAUNCH_TRY();

    size_t temp_bytes = 0;
    CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairsDescending(
        nullptr, temp_bytes, keys_in, keys_out, ids_in, ids_out, (int)elems, n_jobs, offsets,
        offsets + 1, cu_stream()));
    MR_TRY(cu_growbuf_reserve(&temp_buf, temp_bytes ? temp_bytes : 1));
    CUDA_TRY(cub::DeviceSegmentedSort::StableSortPairsDescending(
        temp_buf.p, temp_bytes, keys_in, keys_out, ids_in, ids_out, (int)elems, n_jobs, offsets,
        offsets + 1, cu_stream()));
    /* keys_in is free again: the pick kernel's work area */
    sample_pick_kernel<<<n_jobs, 256, 0, cu_stream()>>>(vocab, jobs, keys_out, ids_out, keys_in,
                                                        out);
    CU_LAUNCH_TRY();
    return MR_OK;
}

void cu_op_sample_rows(const float *logits, int n_rows, int vocab, const mr_sample_row *rows,
                       int32_t *out)
{
    cu_record(sample_rows_impl(logits, n_rows, vocab, rows, out));
}
