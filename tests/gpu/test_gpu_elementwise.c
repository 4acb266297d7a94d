/* tests/gpu/test_gpu_elementwise.c — CUDA rmsnorm, rope, softmax and SwiGLU
 * against the CPU reference. Tolerance GT_TOL_ELEMENTWISE (1e-6 of max|ref|)
 * in both precision modes (these ops are fp32 always).
 *
 * Shapes: single elements, odd sizes, DeepSeek-V3 rows (7168 hidden, 512
 * latent, 64 rope inside 576-float latent rows, 16k-long softmax rows),
 * in-place use (rmsnorm x == y, SwiGLU out == gate), strided rows whose gaps
 * must stay untouched, and softmax rows that are partly or fully -inf.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gpu_test.h"

/* ---- rmsnorm -------------------------------------------------------------------- */

static void check_rmsnorm(gt_ctx *t, int n_rows, int dim, int stride, bool in_place)
{
    const size_t n = (size_t)n_rows * stride;
    float *x = gt_host(t, n), *wt = gt_host(t, (size_t)dim);
    float *y_cpu = gt_host(t, n), *y_gpu = gt_host(t, n);
    gt_fill(t, x, n, -2.0f, 2.0f);
    gt_fill(t, wt, (size_t)dim, 0.5f, 1.5f);
    gt_fill(t, y_cpu, n, -1.0f, 1.0f); /* gaps between rows: must stay as they are */
    float *dx = gt_upload(t, x, n * sizeof(float));
    float *dw = gt_upload(t, wt, (size_t)dim * sizeof(float));
    float *dy = in_place ? dx : gt_upload(t, y_cpu, n * sizeof(float));
    if (in_place) memcpy(y_cpu, x, n * sizeof(float));
    t->cpu->rmsnorm(in_place ? y_cpu : x, wt, y_cpu, n_rows, dim, stride, 1e-6f);
    t->gpu->rmsnorm(dx, dw, dy, n_rows, dim, stride, 1e-6f);
    gt_download(t, y_gpu, dy, n * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "rmsnorm rows=%d dim=%d stride=%d%s", n_rows, dim, stride,
             in_place ? " in place" : "");
    gt_check_close(t, what, y_gpu, y_cpu, n, GT_TOL_ELEMENTWISE);
    gt_case_end(t);
}

void gt_test_rmsnorm(gt_ctx *t)
{
    check_rmsnorm(t, 1, 1, 1, false);
    check_rmsnorm(t, 1, 7, 7, false);
    check_rmsnorm(t, 5, 513, 520, false);
    check_rmsnorm(t, 16, 7168, 7168, true); /* DeepSeek-V3 hidden */
    check_rmsnorm(t, 9, 512, 576, true);    /* kv_a_layernorm over latent rows */
    check_rmsnorm(t, 3, 1536, 1536, false); /* q_a_layernorm */
}

/* ---- rope ---------------------------------------------------------------------------- */

static void check_rope(gt_ctx *t, int n_vecs, int stride, int rope_dim, int offset)
{
    const size_t n = (size_t)n_vecs * stride;
    float *buf_cpu = gt_host(t, n), *buf_gpu = gt_host(t, n);
    float *cos_t = gt_host(t, (size_t)rope_dim / 2), *sin_t = gt_host(t, (size_t)rope_dim / 2);
    gt_fill(t, buf_cpu, n, -3.0f, 3.0f);
    for (int j = 0; j < rope_dim / 2; j++) { /* a YaRN-like mscale of 1.2 included */
        const float angle = gt_uniform(t, -10.0f, 10.0f);
        cos_t[j] = 1.2f * cosf(angle);
        sin_t[j] = 1.2f * sinf(angle);
    }
    float *dbuf = gt_upload(t, buf_cpu, n * sizeof(float));
    float *dcos = gt_upload(t, cos_t, (size_t)rope_dim / 2 * sizeof(float));
    float *dsin = gt_upload(t, sin_t, (size_t)rope_dim / 2 * sizeof(float));
    t->cpu->rope(buf_cpu + offset, n_vecs, stride, rope_dim, cos_t, sin_t);
    t->gpu->rope(dbuf + offset, n_vecs, stride, rope_dim, dcos, dsin);
    gt_download(t, buf_gpu, dbuf, n * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "rope vecs=%d stride=%d rope_dim=%d at +%d", n_vecs, stride,
             rope_dim, offset);
    gt_check_close(t, what, buf_gpu, buf_cpu, n, GT_TOL_ELEMENTWISE);
    gt_case_end(t);
}

/* rope_tokens: a batch of tokens, each with its own cos/sin row. */
static void check_rope_tokens(gt_ctx *t, int n_tokens, int token_stride, int n_vecs,
                              int vec_stride, int rope_dim, int offset)
{
    const size_t n = (size_t)n_tokens * token_stride, half = (size_t)rope_dim / 2;
    float *buf_cpu = gt_host(t, n), *buf_gpu = gt_host(t, n);
    float *cos_t = gt_host(t, (size_t)n_tokens * half), *sin_t = gt_host(t, (size_t)n_tokens * half);
    gt_fill(t, buf_cpu, n, -3.0f, 3.0f);
    for (size_t j = 0; j < (size_t)n_tokens * half; j++) {
        const float angle = gt_uniform(t, -10.0f, 10.0f);
        cos_t[j] = 1.2f * cosf(angle);
        sin_t[j] = 1.2f * sinf(angle);
    }
    float *dbuf = gt_upload(t, buf_cpu, n * sizeof(float));
    float *dcos = gt_upload(t, cos_t, (size_t)n_tokens * half * sizeof(float));
    float *dsin = gt_upload(t, sin_t, (size_t)n_tokens * half * sizeof(float));
    t->cpu->rope_tokens(buf_cpu + offset, n_tokens, token_stride, n_vecs, vec_stride, rope_dim,
                        cos_t, sin_t);
    t->gpu->rope_tokens(dbuf + offset, n_tokens, token_stride, n_vecs, vec_stride, rope_dim, dcos,
                        dsin);
    gt_download(t, buf_gpu, dbuf, n * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "rope_tokens tokens=%d vecs=%d stride %d/%d rope_dim=%d at +%d",
             n_tokens, n_vecs, token_stride, vec_stride, rope_dim, offset);
    gt_check_close(t, what, buf_gpu, buf_cpu, n, GT_TOL_ELEMENTWISE);
    gt_case_end(t);
}

void gt_test_rope(gt_ctx *t)
{
    check_rope_tokens(t, 1, 2, 1, 2, 2, 0);
    check_rope_tokens(t, 37, 128 * 192, 128, 192, 64, 128); /* V3 q_pe of a batch */
    check_rope_tokens(t, 19, 576, 1, 576, 64, 512);         /* V3 k_pe in latent rows */
    check_rope(t, 1, 2, 2, 0);
    check_rope(t, 7, 64, 64, 0);
    check_rope(t, 3 * 128, 192, 64, 128); /* q_pe inside (tokens·H, 192) q rows */
    check_rope(t, 5, 576, 64, 512);       /* k_pe inside latent rows */
    check_rope(t, 11, 30, 18, 5);         /* odd stride and offset */
}

/* ---- softmax --------------------------------------------------------------------------- */

static void check_softmax(gt_ctx *t, int n_rows, int n, float lo, float hi, int n_masked)
{
    const size_t total = (size_t)n_rows * n;
    float *x_cpu = gt_host(t, total), *x_gpu = gt_host(t, total);
    gt_fill(t, x_cpu, total, lo, hi);
    /* row 0: fully -inf (defined as all zeros); other rows: n_masked trailing -inf */
    if (n_masked > 0) {
        for (int i = 0; i < n; i++) x_cpu[i] = -INFINITY;
        for (int r = 1; r < n_rows; r++)
            for (int i = n - (n_masked < n ? n_masked : n - 1); i < n; i++)
                x_cpu[(size_t)r * n + i] = -INFINITY;
    }
    float *dx = gt_upload(t, x_cpu, total * sizeof(float));
    t->cpu->softmax(x_cpu, n_rows, n);
    t->gpu->softmax(dx, n_rows, n);
    gt_download(t, x_gpu, dx, total * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "softmax rows=%d n=%d range [%g, %g)%s", n_rows, n, lo, hi,
             n_masked > 0 ? " with -inf" : "");
    gt_check_close(t, what, x_gpu, x_cpu, total, GT_TOL_ELEMENTWISE);
    gt_case_end(t);
}

void gt_test_softmax(gt_ctx *t)
{
    check_softmax(t, 1, 1, -1.0f, 1.0f, 0);
    check_softmax(t, 3, 7, -5.0f, 5.0f, 0);
    check_softmax(t, 128, 4097, -8.0f, 8.0f, 0);
    check_softmax(t, 2, 16384, -30.0f, 30.0f, 0);
    check_softmax(t, 4, 37, -3.0f, 3.0f, 10);
    check_softmax(t, 6, 256, -1.0f, 1.0f, 100); /* a router row width */
}

/* ---- SwiGLU -------------------------------------------------------------------------------- */

static void check_swiglu(gt_ctx *t, size_t n, bool in_place)
{
    float *g = gt_host(t, n), *u = gt_host(t, n), *out_cpu = gt_host(t, n),
          *out_gpu = gt_host(t, n);
    gt_fill(t, g, n, -12.0f, 12.0f);
    gt_fill(t, u, n, -2.0f, 2.0f);
    float *dg = gt_upload(t, g, n * sizeof(float));
    float *du = gt_upload(t, u, n * sizeof(float));
    float *dout = in_place ? dg : gt_dev_alloc(t, n * sizeof(float));
    t->cpu->swiglu(g, u, out_cpu, n);
    t->gpu->swiglu(dg, du, dout, n);
    gt_download(t, out_gpu, dout, n * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "swiglu n=%zu%s", n, in_place ? " out == gate" : "");
    gt_check_close(t, what, out_gpu, out_cpu, n, GT_TOL_ELEMENTWISE);
    gt_case_end(t);
}

void gt_test_swiglu(gt_ctx *t)
{
    check_swiglu(t, 1, false);
    check_swiglu(t, 7, true);
    check_swiglu(t, 37 * 2048, false);
    check_swiglu(t, 1000003, true);
}
