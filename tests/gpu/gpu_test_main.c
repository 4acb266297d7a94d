/* tests/gpu/gpu_test_main.c — harness of the CUDA backend tests: GPU probe
 * and skip rule, per-case memory, comparisons, and the op dispatch. See
 * gpu_test.h for the usage, exit codes and tolerances. */
#include "gpu_test.h"

#include "common/bf16.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_SKIP 77

/* ---- random numbers ------------------------------------------------------ */

double gt_unit(gt_ctx *t)
{
    t->rng ^= t->rng >> 12;
    t->rng ^= t->rng << 25;
    t->rng ^= t->rng >> 27;
    return (double)((t->rng * 0x2545f4914f6cdd1dull) >> 11) / 9007199254740992.0;
}

float gt_uniform(gt_ctx *t, float lo, float hi)
{
    return lo + (float)gt_unit(t) * (hi - lo);
}

void gt_fill(gt_ctx *t, float *p, size_t n, float lo, float hi)
{
    for (size_t i = 0; i < n; i++) p[i] = gt_uniform(t, lo, hi);
}

/* ---- memory ---------------------------------------------------------------- */

static void gt_fatal(const char *what)
{
    fprintf(stderr, "FATAL: %s: %s\n", what, mr_last_error());
    exit(1);
}

float *gt_host(gt_ctx *t, size_t n_floats)
{
    if (t->n_host == (int)(sizeof t->host / sizeof t->host[0])) gt_fatal("too many host buffers");
    float *p = calloc(n_floats > 0 ? n_floats : 1, sizeof(float));
    if (p == NULL) gt_fatal("host allocation");
    t->host[t->n_host++] = p;
    return p;
}

void *gt_dev_alloc(gt_ctx *t, size_t bytes)
{
    if (t->n_dev == (int)(sizeof t->dev / sizeof t->dev[0])) gt_fatal("too many device buffers");
    void *p = t->gpu->alloc(bytes);
    if (p == NULL) gt_fatal("device allocation");
    t->dev[t->n_dev++] = p;
    return p;
}

void *gt_upload(gt_ctx *t, const void *host, size_t bytes)
{
    void *d = gt_dev_alloc(t, bytes);
    t->gpu->copy(d, host, bytes, MR_COPY_H2D);
    return d;
}

void gt_download(gt_ctx *t, void *host, const void *dev, size_t bytes)
{
    t->gpu->copy(host, dev, bytes, MR_COPY_D2H);
}

mr_wtype gt_wtype(const gt_ctx *t)
{
    return t->bf16 ? MR_WT_BF16 : MR_WT_F32;
}

void *gt_weight(gt_ctx *t, const float *w, size_t n, const void **host_w)
{
    if (!t->bf16) {
        *host_w = w;
        return gt_upload(t, w, n * sizeof(float));
    }
    uint16_t *b = (uint16_t *)gt_host(t, n / 2 + 1); /* n bf16 values */
    for (size_t i = 0; i < n; i++) b[i] = mr_bf16_round(w[i]);
    *host_w = b;
    return gt_upload(t, b, n * sizeof(uint16_t));
}

void gt_case_end(gt_ctx *t)
{
    for (int i = 0; i < t->n_dev; i++) t->gpu->free(t->dev[i]);
    for (int i = 0; i < t->n_host; i++) free(t->host[i]);
    t->n_dev = t->n_host = 0;
}

/* ---- checks ------------------------------------------------------------------ */

double gt_max_err(const float *got, const float *ref, size_t n)
{
    double max_ref = 0.0, max_diff = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs((double)ref[i]), d = fabs((double)got[i] - (double)ref[i]);
        if (isnan(got[i]) != isnan(ref[i])) return INFINITY;
        if (isnan(ref[i])) continue;
        max_ref = r > max_ref ? r : max_ref;
        max_diff = d > max_diff ? d : max_diff;
    }
    if (max_diff == 0.0) return 0.0;
    return max_ref > 0.0 ? max_diff / max_ref : INFINITY;
}

bool gt_check_backend(gt_ctx *t, const char *what)
{
    if (mr_kernels_cuda_check() == MR_OK) return true;
    t->checks++;
    t->failures++;
    printf("FAIL %s: cuda backend error: %s\n", what, mr_last_error());
    mr_kernels_cuda_clear_status();
    return false;
}

bool gt_check_close(gt_ctx *t, const char *what, const float *got, const float *ref, size_t n,
                    double tol)
{
    if (!gt_check_backend(t, what)) return false;
    const double err = gt_max_err(got, ref, n);
    const bool ok = err <= tol;
    t->checks++;
    if (!ok) t->failures++;
    printf("%-4s %-64s err %.3g (tol %.0e)\n", ok ? "ok" : "FAIL", what, err, tol);
    return ok;
}

bool gt_check_true(gt_ctx *t, const char *what, bool cond, const char *detail)
{
    t->checks++;
    if (!cond) t->failures++;
    printf("%-4s %-64s %s\n", cond ? "ok" : "FAIL", what, detail != NULL ? detail : "");
    return cond;
}

/* ---- main ---------------------------------------------------------------------- */

typedef struct gt_op {
    const char *name;
    void (*run)(gt_ctx *t);
} gt_op;

static const gt_op ops[] = {
    { "memory", gt_test_memory },         { "matmul", gt_test_matmul },
    { "rmsnorm", gt_test_rmsnorm },       { "rope", gt_test_rope },
    { "softmax", gt_test_softmax },       { "swiglu", gt_test_swiglu },
    { "moe_gate", gt_test_moe_gate },     { "expert_ffn", gt_test_expert_ffn },
    { "experts_grouped", gt_test_experts_grouped },
    { "matmul_strided", gt_test_matmul_strided },
    { "mla_decode_paged", gt_test_mla_decode_paged },
    { "mla_absorbed", gt_test_mla_absorbed }, { "mla_naive", gt_test_mla_naive },
    { "movement", gt_test_movement },     { "sample_rows", gt_test_sample_rows },
};
#define N_OPS ((int)(sizeof ops / sizeof ops[0]))

static int usage(const char *argv0)
{
    fprintf(stderr, "usage: %s OP [--bf16]\n  OP: all", argv0);
    for (int i = 0; i < N_OPS; i++) fprintf(stderr, " %s", ops[i].name);
    fprintf(stderr, "\n");
    return 2;
}

/* No usable GPU: skip, or fail when MOERUN_REQUIRE_GPU=1. */
static int no_gpu(const char *why)
{
    const char *req = getenv("MOERUN_REQUIRE_GPU");
    if (req != NULL && strcmp(req, "1") == 0) {
        printf("FAIL: MOERUN_REQUIRE_GPU=1 but no usable GPU: %s\n", why);
        return 1;
    }
    printf("SKIP: no usable GPU: %s\n", why);
    return EXIT_SKIP;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* a hang killed by gpu-run's timeout keeps the checks so far */
    if (argc < 2 || argc > 3) return usage(argv[0]);
    bool bf16 = false;
    if (argc == 3) {
        if (strcmp(argv[2], "--bf16") != 0) return usage(argv[0]);
        bf16 = true;
    }
    const char *op = argv[1];
    bool known = strcmp(op, "all") == 0;
    for (int i = 0; i < N_OPS; i++) known |= strcmp(op, ops[i].name) == 0;
    if (!known) return usage(argv[0]);

    const int n_devices = mr_cuda_device_count();
    if (n_devices < 0) return no_gpu(mr_last_error());
    if (n_devices == 0) return no_gpu("cudaGetDeviceCount found 0 devices");

    gt_ctx t;
    memset(&t, 0, sizeof t);
    t.rng = 0x9e3779b97f4a7c15ull;
    t.bf16 = bf16;
    t.cpu = mr_kernels_cpu();
    t.gpu = mr_kernels_cuda();
    if (t.gpu == NULL) { /* a device exists but the backend cannot start: a failure */
        printf("FAIL: %d CUDA device(s) but the backend did not start: %s\n", n_devices,
               mr_last_error());
        return 1;
    }
    char device[256];
    if (mr_cuda_device_describe(device, sizeof device) != MR_OK)
        snprintf(device, sizeof device, "(unknown: %s)", mr_last_error());
    printf("# device: %s\n# op: %s, GEMM precision: %s\n", device, op, bf16 ? "bf16" : "fp32");
    if (mr_kernels_cuda_set_precision(bf16 ? MR_CUDA_PRECISION_BF16 : MR_CUDA_PRECISION_FP32) !=
        MR_OK) {
        printf("FAIL: set precision: %s\n", mr_last_error());
        return 1;
    }

    for (int i = 0; i < N_OPS; i++) {
        if (strcmp(op, "all") != 0 && strcmp(op, ops[i].name) != 0) continue;
        ops[i].run(&t);
        gt_case_end(&t);
    }
    gt_check_backend(&t, "backend state at exit");
    mr_kernels_cuda_release();
    printf("# %d checks, %d failed\n", t.checks, t.failures);
    return t.failures == 0 && t.checks > 0 ? 0 : 1;
}
