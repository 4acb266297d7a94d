/* tests/gpu/test_gpu_movement.c — CUDA data-movement ops against the CPU
 * reference: copy_2d (all three directions), gather_rows / scatter_rows
 * (embedding lookup, paged-KV rows with a layer offset), moe_combine, add and
 * argmax_rows (greedy sampling: integer results must be identical).
 *
 * These ops move or add floats without reassociation, so the tolerance is 0:
 * results must be bit-identical (moe_combine sums k in order with separate
 * multiply and add on both backends).
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "gpu_test.h"

#include "common/bf16.h"

#define GT_TOL_EXACT 0.0

/* ---- copy_2d ------------------------------------------------------------------ */

static void check_copy_2d(gt_ctx *t, int rows, int width, int src_ld, int dst_ld)
{
    const size_t ns = (size_t)rows * src_ld, nd = (size_t)rows * dst_ld;
    float *src = gt_host(t, ns), *want = gt_host(t, nd), *got = gt_host(t, nd);
    gt_fill(t, src, ns, -1.0f, 1.0f);
    gt_fill(t, want, nd, 5.0f, 6.0f); /* gaps must stay as they are */
    float *d_src = gt_upload(t, src, ns * sizeof(float));
    float *d_dst = gt_upload(t, want, nd * sizeof(float));
    float *d_dst2 = gt_upload(t, want, nd * sizeof(float));
    const size_t sp = sizeof(float) * (size_t)src_ld, dp = sizeof(float) * (size_t)dst_ld;
    const size_t w = sizeof(float) * (size_t)width;
    t->cpu->copy_2d(want, dp, src, sp, w, (size_t)rows, MR_COPY_D2D);
    /* D2D on the device, then H2D of the host source into a second buffer */
    t->gpu->copy_2d(d_dst, dp, d_src, sp, w, (size_t)rows, MR_COPY_D2D);
    t->gpu->copy_2d(d_dst2, dp, src, sp, w, (size_t)rows, MR_COPY_H2D);
    char what[128];
    gt_download(t, got, d_dst, nd * sizeof(float));
    snprintf(what, sizeof what, "copy_2d D2D rows=%d width=%d ld %d->%d", rows, width, src_ld,
             dst_ld);
    gt_check_close(t, what, got, want, nd, GT_TOL_EXACT);
    gt_download(t, got, d_dst2, nd * sizeof(float));
    snprintf(what, sizeof what, "copy_2d H2D rows=%d width=%d", rows, width);
    gt_check_close(t, what, got, want, nd, GT_TOL_EXACT);
    /* D2H: strided device rows into a strided host buffer */
    float *back = gt_host(t, nd);
    memcpy(back, want, nd * sizeof(float));
    t->gpu->copy_2d(back, dp, d_src, sp, w, (size_t)rows, MR_COPY_D2H);
    snprintf(what, sizeof what, "copy_2d D2H rows=%d width=%d", rows, width);
    gt_check_close(t, what, back, want, nd, GT_TOL_EXACT);
    gt_case_end(t);
}

/* ---- gather / scatter ------------------------------------------------------------ */

/* A host copy of n floats as type t (bf16: rounded), in this case's memory. */
static void *as_type(gt_ctx *t, const float *v, size_t n, mr_wtype type)
{
    if (type == MR_WT_F32) return (void *)v;
    uint16_t *b = (uint16_t *)gt_host(t, n / 2 + 1);
    for (size_t i = 0; i < n; i++) b[i] = mr_bf16_round(v[i]);
    return b;
}

/* n values of type t widened to fp32 (into a new host array). */
static float *widened(gt_ctx *t, const void *v, size_t n, mr_wtype type)
{
    float *f = gt_host(t, n);
    for (size_t i = 0; i < n; i++)
        f[i] = type == MR_WT_BF16 ? mr_bf16_widen(((const uint16_t *)v)[i]) : ((const float *)v)[i];
    return f;
}

/* gather from / scatter into rows of `type` (fp32, or bf16: the KV pool with
 * --kv-dtype bf16): bit-identical to the CPU either way. */
static void check_rows(gt_ctx *t, int n_src_rows, int ld, int width, int n, int row_base,
                       mr_wtype type)
{
    const size_t ns = (size_t)n_src_rows * ld, esz = mr_wtype_size(type);
    float *src_f = gt_host(t, ns);
    gt_fill(t, src_f, ns, -4.0f, 4.0f);
    void *src = as_type(t, src_f, ns, type);
    int32_t *rows = (int32_t *)gt_host(t, (size_t)n);
    /* distinct rows (scatter needs them), in a scrambled order */
    const int span = n_src_rows - row_base;
    for (int i = 0; i < n; i++) rows[i] = (int32_t)(((size_t)i * 7919u + 13u) % (size_t)span);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++)
            if (rows[j] == rows[i]) rows[i] = (rows[i] + 1) % span, j = -1;
    void *d_src = gt_upload(t, src, ns * esz);
    int32_t *d_rows = gt_upload(t, rows, (size_t)n * sizeof(int32_t));
    float *want = gt_host(t, (size_t)n * width), *got = gt_host(t, (size_t)n * width);
    float *d_dst = gt_dev_alloc(t, (size_t)n * width * sizeof(float));
    t->cpu->gather_rows(src, type, ld, rows, row_base, n, width, want);
    t->gpu->gather_rows(d_src, type, ld, d_rows, row_base, n, width, d_dst);
    gt_download(t, got, d_dst, (size_t)n * width * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "gather_rows %s n=%d width=%d ld=%d base=%d", mr_wtype_name(type),
             n, width, ld, row_base);
    gt_check_close(t, what, got, want, (size_t)n * width, GT_TOL_EXACT);

    /* scatter the gathered rows (negated, plus a bit: bf16 must round) back
     * into a copy of src */
    for (size_t i = 0; i < (size_t)n * width; i++) want[i] = -want[i] * 1.001f;
    float *d_vals = gt_upload(t, want, (size_t)n * width * sizeof(float));
    void *ref = gt_host(t, ns), *out = gt_host(t, ns);
    memcpy(ref, src, ns * esz);
    t->cpu->scatter_rows(want, n, width, rows, row_base, ref, type, ld);
    t->gpu->scatter_rows(d_vals, n, width, d_rows, row_base, d_src, type, ld);
    gt_download(t, out, d_src, ns * esz);
    snprintf(what, sizeof what, "scatter_rows %s n=%d width=%d ld=%d base=%d",
             mr_wtype_name(type), n, width, ld, row_base);
    gt_check_close(t, what, widened(t, out, ns, type), widened(t, ref, ns, type), ns,
                   GT_TOL_EXACT);
    gt_case_end(t);
}

/* ---- moe_combine / add ----------------------------------------------------------- */

static void check_combine(gt_ctx *t, int n_tokens, int top_k, int dim)
{
    const size_t ne = (size_t)n_tokens * top_k * dim, nw = (size_t)n_tokens * top_k;
    float *eo = gt_host(t, ne), *w = gt_host(t, nw);
    gt_fill(t, eo, ne, -3.0f, 3.0f);
    gt_fill(t, w, nw, 0.0f, 2.5f);
    float *want = gt_host(t, (size_t)n_tokens * dim), *got = gt_host(t, (size_t)n_tokens * dim);
    float *d_eo = gt_upload(t, eo, ne * sizeof(float)), *d_w = gt_upload(t, w, nw * sizeof(float));
    float *d_out = gt_dev_alloc(t, (size_t)n_tokens * dim * sizeof(float));
    t->cpu->moe_combine(eo, w, n_tokens, top_k, dim, want);
    t->gpu->moe_combine(d_eo, d_w, n_tokens, top_k, dim, d_out);
    gt_download(t, got, d_out, (size_t)n_tokens * dim * sizeof(float));
    char what[128];
    snprintf(what, sizeof what, "moe_combine tokens=%d top_k=%d dim=%d (bit-exact)", n_tokens, top_k,
             dim);
    gt_check_close(t, what, got, want, (size_t)n_tokens * dim, GT_TOL_EXACT);

    /* add: y += x over the same buffers */
    float *d_y = gt_upload(t, want, (size_t)n_tokens * dim * sizeof(float));
    t->cpu->add(want, eo, (size_t)n_tokens * dim);
    t->gpu->add(d_y, d_eo, (size_t)n_tokens * dim);
    gt_download(t, got, d_y, (size_t)n_tokens * dim * sizeof(float));
    snprintf(what, sizeof what, "add n=%d", n_tokens * dim);
    gt_check_close(t, what, got, want, (size_t)n_tokens * dim, GT_TOL_EXACT);
    gt_case_end(t);
}

/* ---- argmax_rows ------------------------------------------------------------------ */

/* Random rows, then planted cases: a tie (the first index must win), NaN in
 * the middle (never wins), NaN at index 0 (mr_argmax returns 0), all -inf. */
static void check_argmax(gt_ctx *t, int n_rows, int n)
{
    const size_t total = (size_t)n_rows * n;
    float *x = gt_host(t, total);
    gt_fill(t, x, total, -10.0f, 10.0f);
    if (n_rows >= 4 && n >= 8) {
        x[(size_t)0 * n + 3] = 50.0f;
        x[(size_t)0 * n + n - 1] = 50.0f;          /* tie: index 3 wins */
        x[(size_t)1 * n + 2] = NAN;                /* ignored */
        x[(size_t)2 * n + 0] = NAN;                /* row answers 0 */
        for (int i = 0; i < n; i++) x[(size_t)3 * n + i] = -INFINITY; /* answers 0 */
    }
    int32_t *want = (int32_t *)gt_host(t, (size_t)n_rows), *got = (int32_t *)gt_host(t, (size_t)n_rows);
    float *dx = gt_upload(t, x, total * sizeof(float));
    int32_t *dout = gt_dev_alloc(t, (size_t)n_rows * sizeof(int32_t));
    t->cpu->argmax_rows(x, n_rows, n, want);
    t->gpu->argmax_rows(dx, n_rows, n, dout);
    gt_download(t, got, dout, (size_t)n_rows * sizeof(int32_t));
    int bad = -1;
    for (int r = 0; r < n_rows && bad < 0; r++)
        if (got[r] != want[r]) bad = r;
    char what[128], detail[96] = "";
    snprintf(what, sizeof what, "argmax_rows rows=%d n=%d (ties, NaN, -inf planted)", n_rows, n);
    if (bad >= 0) snprintf(detail, sizeof detail, "row %d: gpu %d, cpu %d", bad, got[bad], want[bad]);
    gt_check_true(t, what, bad < 0, detail);
    gt_case_end(t);
}

/* ---- sample_rows ------------------------------------------------------------------ */

/* Rows mixing greedy and sampled parameters (top-k, top-p, both, neither),
 * logits with planted ties and a -0.0/+0.0 pair, u uniform: the ids must be
 * identical (the GPU sorts stably and sums in the CPU's order, in double). */
static void check_sample(gt_ctx *t, int n_rows, int n)
{
    const size_t total = (size_t)n_rows * n;
    float *x = gt_host(t, total);
    gt_fill(t, x, total, -4.0f, 4.0f);
    mr_sample_row *rows = (mr_sample_row *)gt_host(t, (size_t)n_rows * sizeof(mr_sample_row) / 4 + 1);
    for (int r = 0; r < n_rows; r++) {
        float *row = x + (size_t)r * n;
        if (n >= 8) {
            row[5] = row[n - 2] = 3.9f; /* a tie near the top */
            row[1] = -0.0f;
            row[2] = 0.0f;
        }
        rows[r].u = gt_unit(t);
        rows[r].temperature = r % 5 == 0 ? 0.0f : 0.5f + 0.25f * (float)(r % 4);
        rows[r].top_k = r % 3 == 1 ? 40 : 0;
        rows[r].top_p = r % 4 == 2 ? 0.9f : (r % 4 == 3 ? 0.5f : 1.0f);
        rows[r].pad = 0;
    }
    int32_t *want = (int32_t *)gt_host(t, (size_t)n_rows), *got = (int32_t *)gt_host(t, (size_t)n_rows);
    float *dx = gt_upload(t, x, total * sizeof(float));
    int32_t *dout = gt_dev_alloc(t, (size_t)n_rows * sizeof(int32_t));
    t->cpu->sample_rows(x, n_rows, n, rows, want);
    t->gpu->sample_rows(dx, n_rows, n, rows, dout);
    gt_download(t, got, dout, (size_t)n_rows * sizeof(int32_t));
    int bad = -1;
    for (int r = 0; r < n_rows && bad < 0; r++)
        if (got[r] != want[r]) bad = r;
    char what[128], detail[128] = "";
    snprintf(what, sizeof what, "sample_rows rows=%d vocab=%d (greedy, top-k, top-p, ties)",
             n_rows, n);
    if (bad >= 0)
        snprintf(detail, sizeof detail, "row %d (T %g, top-k %d, top-p %g): gpu %d, cpu %d", bad,
                 (double)rows[bad].temperature, rows[bad].top_k, (double)rows[bad].top_p,
                 got[bad], want[bad]);
    gt_check_backend(t, what);
    gt_check_true(t, what, bad < 0, detail);
    gt_case_end(t);
}

/* Rows whose pick is decided by the tie order alone (random rows almost never
 * land on a planted tie): all logits equal (a stable sort keeps id order, so
 * u = 0.5 picks id ~n/2), only ids 1 (-0.0) and 2 (+0.0) finite (p = 0.5
 * each: u = 0.25 picks id 1, as the CPU sees them equal), and 7-way ties cut
 * by top-k inside a tie. */
static void check_sample_ties(gt_ctx *t, int n)
{
    enum { N_ROWS = 3 };
    float *x = gt_host(t, (size_t)N_ROWS * n);
    mr_sample_row *rows = (mr_sample_row *)gt_host(t, N_ROWS * sizeof(mr_sample_row) / 4 + 1);
    for (int i = 0; i < n; i++) {
        x[i] = 1.0f;
        x[(size_t)n + i] = -INFINITY;
        x[2 * (size_t)n + i] = (float)(i % 7);
    }
    x[(size_t)n + 1] = -0.0f;
    x[(size_t)n + 2] = 0.0f;
    for (int r = 0; r < N_ROWS; r++) {
        rows[r].temperature = 1.0f;
        rows[r].top_p = 1.0f;
        rows[r].top_k = 0;
        rows[r].pad = 0;
    }
    rows[0].u = 0.5;
    rows[1].u = 0.25;
    rows[2].u = 0.7;
    rows[2].top_k = 10;
    int32_t want[N_ROWS], got[N_ROWS];
    float *dx = gt_upload(t, x, (size_t)N_ROWS * n * sizeof(float));
    int32_t *dout = gt_dev_alloc(t, sizeof got);
    t->cpu->sample_rows(x, N_ROWS, n, rows, want);
    t->gpu->sample_rows(dx, N_ROWS, n, rows, dout);
    gt_download(t, got, dout, sizeof got);
    char what[128], detail[128];
    snprintf(what, sizeof what, "sample_rows vocab=%d: exact ties and -0/+0 decide the pick", n);
    snprintf(detail, sizeof detail, "gpu %d %d %d, cpu %d %d %d", got[0], got[1], got[2], want[0],
             want[1], want[2]);
    gt_check_backend(t, what);
    gt_check_true(t, what, memcmp(got, want, sizeof got) == 0, detail);
    gt_case_end(t);
}

void gt_test_sample_rows(gt_ctx *t)
{
    check_sample_ties(t, 257);
    check_sample_ties(t, 129280);
    check_sample(t, 1, 1);
    check_sample(t, 10, 257);
    check_sample(t, 64, 129280); /* DeepSeek-V3 vocabulary, a decode batch */
}

void gt_test_movement(gt_ctx *t)
{
    check_argmax(t, 1, 1);
    check_argmax(t, 6, 257);
    check_argmax(t, 64, 129280); /* DeepSeek-V3 vocabulary, a decode batch */
    check_copy_2d(t, 1, 1, 1, 1);
    check_copy_2d(t, 5, 64, 192, 64);      /* q_pe out of q rows */
    check_copy_2d(t, 33, 512, 576, 1024);  /* c_kv out of latent rows, wider dst */
    check_rows(t, 300, 7168, 7168, 17, 0, MR_WT_F32); /* embedding lookup */
    check_rows(t, 4 * 61 * 16, 576, 576, 40, 16 * 7, MR_WT_F32); /* KV rows of layer 7 */
    check_rows(t, 4 * 61 * 16, 576, 576, 40, 16 * 7, MR_WT_BF16); /* ... with --kv-dtype bf16 */
    check_rows(t, 50, 100, 37, 50, 0, MR_WT_F32);     /* every row, partial width */
    check_rows(t, 50, 100, 37, 50, 0, MR_WT_BF16);
    check_combine(t, 1, 1, 1);
    check_combine(t, 7, 8, 7168);          /* DeepSeek-V3 top-8 */
    check_combine(t, 33, 6, 2048);
}
