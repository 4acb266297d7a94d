/* tests/gpu/test_gpu_gate.c — the CUDA MoE router against the CPU reference.
 *
 * Expert ids must be identical (same experts, same order); weights within
 * GT_TOL_GATE_WEIGHTS (1e-6 of max|ref|). Configurations: DeepSeek-V3
 * (sigmoid, noaux_tc, bias, 8 groups keep 4, top-8, normalized, × 2.5) with
 * and without bias (group score = sum of top-2 vs max), DeepSeek-V2 (softmax,
 * group_limited_greedy, unnormalized × 16), V2.5 (normalized, so no scaling),
 * V2-Lite (greedy), odd sizes, top-1, more picks than kept experts (masked
 * -inf experts are taken, lower id first), and exact ties (lower id first).
 *
 * Random tokens are redrawn until every two selection scores, and every two
 * group scores, differ by more than 1e-5 of the largest: the CPU and GPU
 * scores differ in the last ulp of expf, and a near-tie would turn that into
 * a different (equally valid) choice. Exact ties are tested on purpose below.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_test.h"

#define MAX_E 512
#define MIN_GAP 1e-5

typedef struct gate_case {
    const char *name;
    mr_gate_params p;
    bool bias;
    float logit_lo, logit_hi;
    int n_tokens;
} gate_case;

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* True when the n values are pairwise further apart than MIN_GAP·max|v|. */
static bool well_separated(double *v, int n)
{
    double max_abs = 0.0;
    for (int i = 0; i < n; i++) max_abs = fabs(v[i]) > max_abs ? fabs(v[i]) : max_abs;
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    for (int i = 1; i < n; i++)
        if (v[i] - v[i - 1] <= MIN_GAP * max_abs) return false;
    return true;
}

/* Selection and group scores of one token (double precision) are separated. */
static bool token_ok(const float *lg, const float *bias, const mr_gate_params *p)
{
    const int n_exp = p->n_experts;
    double sel[MAX_E], group[MAX_E], max = -INFINITY, sum = 0.0;
    for (int e = 0; e < n_exp; e++) max = lg[e] > max ? lg[e] : max;
    for (int e = 0; e < n_exp; e++) {
        sel[e] = p->score_func == MR_SCORE_SIGMOID ? 1.0 / (1.0 + exp(-(double)lg[e]))
                                                   : exp((double)lg[e] - max);
        sum += sel[e];
    }
    for (int e = 0; e < n_exp; e++) {
        if (p->score_func == MR_SCORE_SOFTMAX) sel[e] /= sum;
        if (bias != NULL) sel[e] += bias[e];
    }
    const bool grouped = p->method != MR_TOPK_GREEDY && p->n_group > 1;
    if (grouped) {
        const int per = n_exp / p->n_group;
        for (int g = 0; g < p->n_group; g++) {
            double best = -INFINITY, second = -INFINITY;
            for (int i = 0; i < per; i++) {
                const double v = sel[g * per + i];
                if (v > best) {
                    second = best;
                    best = v;
                } else if (v > second) {
                    second = v;
                }
            }
            group[g] = bias != NULL ? best + (per > 1 ? second : 0.0) : best;
        }
        if (!well_separated(group, p->n_group)) return false;
    }
    return well_separated(sel, n_exp);
}

/* Runs one router call on both backends and compares. */
static void compare_gate(gt_ctx *t, const char *what, const mr_gate_params *p,
                         const float *logits, const float *bias, int n_tokens,
                         const int32_t *expect_ids)
{
    const int n_exp = p->n_experts, k = p->top_k;
    const size_t n_out = (size_t)n_tokens * k;
    int32_t *ids_cpu = (int32_t *)gt_host(t, n_out), *ids_gpu = (int32_t *)gt_host(t, n_out);
    float *w_cpu = gt_host(t, n_out), *w_gpu = gt_host(t, n_out);
    float *scratch = gt_host(t, 2 * (size_t)n_exp + 2 * (size_t)p->n_group);
    float *dlogits = gt_upload(t, logits, (size_t)n_tokens * n_exp * sizeof(float));
    float *dbias = bias != NULL ? gt_upload(t, bias, (size_t)n_exp * sizeof(float)) : NULL;
    int32_t *dids = gt_dev_alloc(t, n_out * sizeof(int32_t));
    float *dw = gt_dev_alloc(t, n_out * sizeof(float));
    float *dscratch = gt_dev_alloc(t, (2 * (size_t)n_exp + 2 * (size_t)p->n_group) * 4);
    t->cpu->moe_gate(logits, bias, n_tokens, p, ids_cpu, w_cpu, scratch);
    t->gpu->moe_gate(dlogits, dbias, n_tokens, p, dids, dw, dscratch);
    gt_download(t, ids_gpu, dids, n_out * sizeof(int32_t));
    gt_download(t, w_gpu, dw, n_out * sizeof(float));
    if (!gt_check_backend(t, what)) return;

    int mismatch = -1;
    for (size_t i = 0; i < n_out && mismatch < 0; i++)
        if (ids_cpu[i] != ids_gpu[i]) mismatch = (int)i;
    char detail[160] = "";
    if (mismatch >= 0)
        snprintf(detail, sizeof detail, "token %d slot %d: cpu expert %d, gpu expert %d",
                 mismatch / k, mismatch % k, ids_cpu[mismatch], ids_gpu[mismatch]);
    char label[160];
    snprintf(label, sizeof label, "%s: ids identical", what);
    gt_check_true(t, label, mismatch < 0, detail);
    if (expect_ids != NULL) {
        bool same = memcmp(ids_cpu, expect_ids, n_out * sizeof(int32_t)) == 0 &&
                    memcmp(ids_gpu, expect_ids, n_out * sizeof(int32_t)) == 0;
        snprintf(label, sizeof label, "%s: ids as specified", what);
        gt_check_true(t, label, same, "");
    }
    snprintf(label, sizeof label, "%s: weights", what);
    gt_check_close(t, label, w_gpu, w_cpu, n_out, GT_TOL_GATE_WEIGHTS);
}

static void run_random_case(gt_ctx *t, const gate_case *c)
{
    const int n_exp = c->p.n_experts;
    float *logits = gt_host(t, (size_t)c->n_tokens * n_exp);
    float *bias = c->bias ? gt_host(t, (size_t)n_exp) : NULL;
    if (bias != NULL) gt_fill(t, bias, (size_t)n_exp, -0.3f, 0.3f);
    for (int tok = 0; tok < c->n_tokens; tok++) {
        float *lg = logits + (size_t)tok * n_exp;
        int tries = 0;
        do {
            gt_fill(t, lg, (size_t)n_exp, c->logit_lo, c->logit_hi);
        } while (!token_ok(lg, bias, &c->p) && ++tries < 10000);
        if (tries == 10000) {
            gt_check_true(t, c->name, false, "could not draw well-separated scores");
            gt_case_end(t);
            return;
        }
    }
    char what[128];
    snprintf(what, sizeof what, "moe_gate %s E=%d K=%d tokens=%d", c->name, n_exp, c->p.top_k,
             c->n_tokens);
    compare_gate(t, what, &c->p, logits, bias, c->n_tokens, NULL);
    gt_case_end(t);
}

static mr_gate_params params(int n_experts, int n_group, int topk_group, int top_k,
                             mr_score_func score, mr_topk_method method, bool norm,
                             float scaling, bool v2_scaling)
{
    mr_gate_params p = { n_experts, n_group, topk_group, top_k, score, method, norm, scaling,
                         v2_scaling };
    return p;
}

void gt_test_moe_gate(gt_ctx *t)
{
    const gate_case cases[] = {
        { "deepseek-v3", params(256, 8, 4, 8, MR_SCORE_SIGMOID, MR_TOPK_NOAUX_TC, true, 2.5f,
                                false), true, -4.0f, 4.0f, 67 },
        { "v3 without bias (group max)", params(256, 8, 4, 8, MR_SCORE_SIGMOID,
                                                MR_TOPK_NOAUX_TC, true, 2.5f, false),
          false, -4.0f, 4.0f, 19 },
        { "deepseek-v2", params(160, 8, 3, 6, MR_SCORE_SOFTMAX, MR_TOPK_GROUP_LIMITED_GREEDY,
                                false, 16.0f, true), false, -2.0f, 2.0f, 33 },
        { "v2.5 normalized", params(160, 8, 3, 6, MR_SCORE_SOFTMAX,
                                    MR_TOPK_GROUP_LIMITED_GREEDY, true, 16.0f, true),
          false, -2.0f, 2.0f, 9 },
        { "v2-lite greedy", params(64, 1, 1, 6, MR_SCORE_SOFTMAX, MR_TOPK_GREEDY, false, 1.0f,
                                   true), false, -2.0f, 2.0f, 21 },
        { "odd sizes", params(36, 4, 2, 5, MR_SCORE_SIGMOID, MR_TOPK_NOAUX_TC, true, 1.5f,
                              false), true, -4.0f, 4.0f, 5 },
        { "top-1 (never normalized)", params(36, 4, 2, 1, MR_SCORE_SIGMOID, MR_TOPK_NOAUX_TC,
                                             true, 2.0f, false), true, -4.0f, 4.0f, 3 },
        { "picks beyond the kept groups (-inf)", params(16, 8, 2, 6, MR_SCORE_SIGMOID,
                                                        MR_TOPK_NOAUX_TC, true, 1.0f, false),
          true, -4.0f, 4.0f, 7 },
        { "greedy ignores groups", params(64, 8, 1, 8, MR_SCORE_SIGMOID, MR_TOPK_GREEDY, true,
                                          1.0f, false), true, -4.0f, 4.0f, 4 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_random_case(t, &cases[i]);

    /* exact ties: equal logits and no bias → groups 0..1 kept, experts 0..3 */
    mr_gate_params p = params(16, 4, 2, 4, MR_SCORE_SIGMOID, MR_TOPK_NOAUX_TC, true, 1.0f, false);
    float *logits = gt_host(t, 2 * 16);
    for (int e = 0; e < 16; e++) logits[16 + e] = 0.25f; /* token 1: all equal, token 0: zeros */
    static const int32_t expect[8] = { 0, 1, 2, 3, 0, 1, 2, 3 };
    compare_gate(t, "moe_gate ties go to the lower id", &p, logits, NULL, 2, expect);
    gt_case_end(t);

    /* ties with bias (sum of top-2): groups 1 and 3 tie for the second kept
     * slot → group 1; experts 6 and 9 tie → 6 first */
    float *lg2 = gt_host(t, 16), *bias = gt_host(t, 16);
    for (int e = 0; e < 16; e++) lg2[e] = -1.0f;
    lg2[8] = 3.0f;               /* group 2: s(3) + s(2), the best */
    lg2[9] = 2.0f;
    lg2[4] = lg2[12] = 2.5f;     /* groups 1 and 3: s(2.5) + s(2) each */
    lg2[6] = lg2[14] = 2.0f;
    static const int32_t expect2[4] = { 8, 4, 6, 9 };
    compare_gate(t, "moe_gate tied groups and experts, lower id first", &p, lg2, bias, 1,
                 expect2);
    gt_case_end(t);

    /* an invalid configuration is recorded as EINVAL, not run */
    mr_gate_params bad = params(10, 4, 2, 3, MR_SCORE_SIGMOID, MR_TOPK_NOAUX_TC, true, 1.0f,
                                false); /* 10 experts do not split into 4 groups */
    float *dl = gt_dev_alloc(t, 10 * sizeof(float));
    int32_t *di = gt_dev_alloc(t, 3 * sizeof(int32_t));
    float *dw = gt_dev_alloc(t, 3 * sizeof(float));
    t->gpu->moe_gate(dl, NULL, 1, &bad, di, dw, NULL);
    const mr_status st = mr_kernels_cuda_last_status();
    gt_check_true(t, "moe_gate: 10 experts in 4 groups records EINVAL", st == MR_EINVAL,
                  mr_kernels_cuda_last_error());
    mr_kernels_cuda_clear_status();
    gt_case_end(t);
}
