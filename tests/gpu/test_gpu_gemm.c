/* tests/gpu/test_gpu_gemm.c — CUDA matmul and expert_ffn against the CPU
 * reference, plus the backend's memory functions and error record.
 *
 * Shapes: tiny and odd (1×1×1, 3×5×7, 17×33×65), k = 0 (y zeroed, or kept
 * when accumulating), DeepSeek-V3 projections (decode rows × 7168 → 2048,
 * 2048 → 7168) and scaled-down experts. Inputs uniform in [-1, 1).
 * With --bf16 the weights are BF16 on both sides (the CPU emulates the
 * tensor-core GEMM exactly, see mr_wtype). Tolerance: GT_TOL_GEMM_FP32
 * (FP32), GT_TOL_GEMM_BF16W / GT_TOL_CHAIN_BF16W (BF16) of max|ref|.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gpu_test.h"

/* ---- memory and the error record ---------------------------------------------- */

void gt_test_memory(gt_ctx *t)
{
    /* round trip H2D → D2D → D2H of an odd byte count */
    const size_t n = 1000003;
    float *h = gt_host(t, n), *back = gt_host(t, n);
    gt_fill(t, h, n, -1.0f, 1.0f);
    void *d1 = gt_upload(t, h, n * sizeof(float));
    void *d2 = gt_dev_alloc(t, n * sizeof(float));
    t->gpu->copy(d2, d1, n * sizeof(float), MR_COPY_D2D);
    gt_download(t, back, d2, n * sizeof(float));
    gt_check_backend(t, "memory: copies");
    gt_check_true(t, "memory: H2D, D2D, D2H round trip is exact",
                  memcmp(h, back, n * sizeof(float)) == 0, "");
    t->gpu->copy(back, h, 0, MR_COPY_H2D); /* 0 bytes: a no-op */
    t->gpu->free(NULL);
    gt_check_backend(t, "memory: copy of 0 bytes and free(NULL)");

    /* a failing CUDA call is recorded with its file:line and the call */
    char detail[512];
    void *huge = t->gpu->alloc((size_t)1 << 50);
    mr_status st = mr_kernels_cuda_last_status();
    snprintf(detail, sizeof detail, "status %s, message \"%s\"", mr_status_name(st),
             mr_kernels_cuda_last_error());
    gt_check_true(t, "memory: alloc(1 PiB) fails and records ENOMEM with file:line",
                  huge == NULL && st == MR_ENOMEM &&
                      strstr(mr_kernels_cuda_last_error(), "cuda_backend.cu:") != NULL &&
                      strstr(mr_kernels_cuda_last_error(), "cudaMalloc") != NULL,
                  detail);
    t->gpu->free(huge);
    st = mr_kernels_cuda_check();
    gt_check_true(t, "memory: check() reports the first error", st == MR_ENOMEM,
                  mr_last_error());

    /* only the first error is kept; clear resets */
    t->gpu->copy(d1, h, 4, 42);
    gt_check_true(t, "memory: a later error does not replace the first",
                  mr_kernels_cuda_last_status() == MR_ENOMEM, mr_kernels_cuda_last_error());
    mr_kernels_cuda_clear_status();
    t->gpu->copy(d1, h, 4, 42);
    gt_check_true(t, "memory: bad copy direction records EINVAL",
                  mr_kernels_cuda_last_status() == MR_EINVAL, mr_kernels_cuda_last_error());
    mr_kernels_cuda_clear_status();
    gt_check_true(t, "memory: clear resets the record", mr_kernels_cuda_last_status() == MR_OK,
                  "");
}

/* ---- matmul ------------------------------------------------------------------------ */

static void check_matmul(gt_ctx *t, int m, int n, int k, bool accumulate)
{
    const size_t nx = (size_t)m * k, nw = (size_t)n * k, ny = (size_t)m * n;
    float *x = gt_host(t, nx), *w = gt_host(t, nw), *y_cpu = gt_host(t, ny),
          *y_gpu = gt_host(t, ny);
    gt_fill(t, x, nx, -1.0f, 1.0f);
    gt_fill(t, w, nw, -1.0f, 1.0f);
    gt_fill(t, y_cpu, ny, -1.0f, 1.0f); /* accumulate target, garbage otherwise */
    const void *hw = NULL;
    float *dx = gt_upload(t, x, nx * sizeof(float));
    void *dw = gt_weight(t, w, nw, &hw);
    float *dy = gt_upload(t, y_cpu, ny * sizeof(float));
    t->cpu->matmul(x, hw, gt_wtype(t), y_cpu, m, n, k, accumulate);
    t->gpu->matmul(dx, dw, gt_wtype(t), dy, m, n, k, accumulate);
    gt_download(t, y_gpu, dy, ny * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "matmul m=%d n=%d k=%d%s", m, n, k, accumulate ? " +=" : "");
    gt_check_close(t, what, y_gpu, y_cpu, ny, t->bf16 ? GT_TOL_GEMM_BF16W : GT_TOL_GEMM_FP32);
    gt_case_end(t);
}

void gt_test_matmul(gt_ctx *t)
{
    static const int cases[][4] = {
        /* m, n, k, accumulate */
        { 1, 1, 1, 0 },       { 3, 5, 7, 0 },        { 17, 33, 65, 1 },
        { 4, 3, 0, 0 },       { 4, 3, 0, 1 },        { 64, 128, 256, 0 },
        { 128, 256, 512, 1 }, { 5, 2048, 7168, 0 }, /* DeepSeek-V3 decode: D → inter */
        { 33, 7168, 2048, 1 },                       /* inter → D, accumulate */
        { 257, 129, 1031, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        check_matmul(t, cases[i][0], cases[i][1], cases[i][2], cases[i][3] != 0);
}

/* ---- expert_ffn ------------------------------------------------------------------------ */

static void check_expert_ffn(gt_ctx *t, int dim, int inter, int n_tokens, bool accumulate)
{
    const size_t nw = (size_t)inter * dim, nx = (size_t)n_tokens * dim;
    const size_t n_scratch = 2 * (size_t)n_tokens * inter;
    float *gate = gt_host(t, nw), *up = gt_host(t, nw), *down = gt_host(t, nw);
    float *x = gt_host(t, nx), *out_cpu = gt_host(t, nx), *out_gpu = gt_host(t, nx);
    float *scratch = gt_host(t, n_scratch);
    /* weights uniform in ±√(3/fan_in): every dot product has variance ~1/3 */
    const float a_in = sqrtf(3.0f / (float)dim), a_mid = sqrtf(3.0f / (float)inter);
    gt_fill(t, gate, nw, -a_in, a_in);
    gt_fill(t, up, nw, -a_in, a_in);
    gt_fill(t, down, nw, -a_mid, a_mid);
    gt_fill(t, x, nx, -1.0f, 1.0f);
    gt_fill(t, out_cpu, nx, -1.0f, 1.0f);
    mr_expert_w w_cpu = { .dim = dim, .inter = inter, .type = gt_wtype(t) };
    mr_expert_w w_dev = w_cpu;
    w_dev.gate = gt_weight(t, gate, nw, &w_cpu.gate);
    w_dev.up = gt_weight(t, up, nw, &w_cpu.up);
    w_dev.down = gt_weight(t, down, nw, &w_cpu.down);
    float *dx = gt_upload(t, x, nx * sizeof(float));
    float *dout = gt_upload(t, out_cpu, nx * sizeof(float));
    float *dscratch = gt_dev_alloc(t, n_scratch * sizeof(float));
    t->cpu->expert_ffn(&w_cpu, x, n_tokens, out_cpu, accumulate, scratch);
    t->gpu->expert_ffn(&w_dev, dx, n_tokens, dout, accumulate, dscratch);
    gt_download(t, out_gpu, dout, nx * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "expert_ffn D=%d inter=%d tokens=%d%s", dim, inter, n_tokens,
             accumulate ? " +=" : "");
    gt_check_close(t, what, out_gpu, out_cpu, nx,
                   t->bf16 ? GT_TOL_CHAIN_BF16W : GT_TOL_GEMM_FP32);
    gt_case_end(t);
}

void gt_test_expert_ffn(gt_ctx *t)
{
    check_expert_ffn(t, 33, 17, 5, false);
    check_expert_ffn(t, 256, 128, 1, true);
    check_expert_ffn(t, 1024, 256, 37, true);   /* small preset-like */
    check_expert_ffn(t, 7168, 2048, 4, false);  /* DeepSeek-V3 routed expert, decode */
    check_expert_ffn(t, 2048, 1408, 64, false); /* DeepSeek-V2-Lite expert width */
}

/* ---- experts_grouped ------------------------------------------------------------------- */

/* n_groups experts with the given row counts (0 = an empty group) in one
 * call, against the CPU (one expert_ffn per group). */
static void check_experts_grouped(gt_ctx *t, int dim, int inter, int n_groups, const int *rows)
{
    int32_t start[9];
    start[0] = 0;
    for (int g = 0; g < n_groups; g++) start[g + 1] = start[g] + rows[g];
    const int n_rows = start[n_groups];
    const size_t nw = (size_t)inter * dim, nx = (size_t)n_rows * dim;
    const size_t n_scratch = 2 * (size_t)n_rows * inter;
    mr_expert_w w_cpu[8], w_dev[8];
    const float a_in = sqrtf(3.0f / (float)dim), a_mid = sqrtf(3.0f / (float)inter);
    for (int g = 0; g < n_groups; g++) {
        float *gate = gt_host(t, nw), *up = gt_host(t, nw), *down = gt_host(t, nw);
        gt_fill(t, gate, nw, -a_in, a_in);
        gt_fill(t, up, nw, -a_in, a_in);
        gt_fill(t, down, nw, -a_mid, a_mid);
        w_cpu[g] = (mr_expert_w){ .dim = dim, .inter = inter, .type = gt_wtype(t) };
        w_dev[g] = w_cpu[g];
        w_dev[g].gate = gt_weight(t, gate, nw, &w_cpu[g].gate);
        w_dev[g].up = gt_weight(t, up, nw, &w_cpu[g].up);
        w_dev[g].down = gt_weight(t, down, nw, &w_cpu[g].down);
    }
    float *x = gt_host(t, nx), *out_cpu = gt_host(t, nx), *out_gpu = gt_host(t, nx);
    float *scratch = gt_host(t, n_scratch);
    gt_fill(t, x, nx, -1.0f, 1.0f);
    float *dx = gt_upload(t, x, nx * sizeof(float));
    float *dout = gt_dev_alloc(t, nx * sizeof(float));
    float *dscratch = gt_dev_alloc(t, n_scratch * sizeof(float));
    t->cpu->experts_grouped(w_cpu, n_groups, start, x, out_cpu, scratch);
    t->gpu->experts_grouped(w_dev, n_groups, start, dx, dout, dscratch);
    gt_download(t, out_gpu, dout, nx * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "experts_grouped D=%d inter=%d groups=%d rows=%d", dim, inter,
             n_groups, n_rows);
    gt_check_close(t, what, out_gpu, out_cpu, nx, t->bf16 ? GT_TOL_CHAIN_BF16W : GT_TOL_GEMM_FP32);
    gt_case_end(t);
}

void gt_test_experts_grouped(gt_ctx *t)
{
    const int one[1] = {5}, mixed[6] = {1, 0, 7, 33, 0, 2}, even[8] = {64, 64, 64, 64, 64, 64, 64, 64};
    const int v3_decode[4] = {3, 1, 2, 5};
    check_experts_grouped(t, 33, 17, 1, one);
    check_experts_grouped(t, 256, 128, 6, mixed);    /* empty groups are skipped */
    check_experts_grouped(t, 1024, 512, 8, even);    /* small preset, 64 rows each */
    check_experts_grouped(t, 7168, 2048, 4, v3_decode); /* DeepSeek-V3 experts, decode */
}

/* ---- matmul_strided (the MLA absorptions over all heads) -------------------------------- */

static void check_matmul_strided(gt_ctx *t, int heads, int m, int n, int k, int ldx, int ldy,
                                 int x_head, int y_head, int w_head)
{
    const size_t nx = (size_t)m * ldx, ny = (size_t)m * ldy;
    const size_t nw = (size_t)(heads - 1) * w_head + (size_t)n * k;
    float *x = gt_host(t, nx), *w = gt_host(t, nw), *y_cpu = gt_host(t, ny), *y_gpu = gt_host(t, ny);
    gt_fill(t, x, nx, -1.0f, 1.0f);
    gt_fill(t, w, nw, -0.2f, 0.2f);
    gt_fill(t, y_cpu, ny, 7.0f, 8.0f); /* gaps between the heads' columns stay untouched */
    const void *hw = NULL;
    float *dx = gt_upload(t, x, nx * sizeof(float));
    void *dw = gt_weight(t, w, nw, &hw);
    float *dy = gt_upload(t, y_cpu, ny * sizeof(float));
    t->cpu->matmul_strided(x, ldx, (size_t)x_head, hw, gt_wtype(t), (size_t)w_head, y_cpu, ldy,
                           (size_t)y_head, heads, m, n, k);
    t->gpu->matmul_strided(dx, ldx, (size_t)x_head, dw, gt_wtype(t), (size_t)w_head, dy, ldy,
                           (size_t)y_head, heads, m, n, k);
    gt_download(t, y_gpu, dy, ny * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "matmul_strided heads=%d m=%d n=%d k=%d", heads, m, n, k);
    gt_check_close(t, what, y_gpu, y_cpu, ny, t->bf16 ? GT_TOL_GEMM_BF16W : GT_TOL_GEMM_FP32);
    gt_case_end(t);
}

void gt_test_matmul_strided(gt_ctx *t)
{
    check_matmul_strided(t, 1, 3, 5, 7, 7, 5, 0, 0, 0);
    /* V3 q absorption: q rows (T, 128·192), nope at head·192; W_uk (C, nope) per head */
    check_matmul_strided(t, 128, 5, 512, 128, 128 * 192, 128 * 512, 192, 512, 512 * 128);
    /* V3 value absorption: out_lat (T, 128·512); W_uv rows inside kv_b (head stride 256·512) */
    check_matmul_strided(t, 128, 9, 128, 512, 128 * 512, 128 * 128, 512, 128, 256 * 512);
}
