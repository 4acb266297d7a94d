/* tests/kernels/test_matmul_cpu.c — CPU dense math (kernels/cpu/matmul_cpu.c)
 * against naive double-precision references.
 *
 * matmul: every m around the streaming kernel's tiles and the sgemm crossover,
 * odd n and k, accumulate on/off, aligned and misaligned operands, 1 and 2
 * threads. Tolerance: |y - ref| ≤ 1e-5·√k·√Σ(x_i w_i)² (fp32 rounding of a
 * k-term sum in any order). The meson test runs this binary once per ISA
 * (MOERUN_CPU_ISA=avx512|avx2|generic) so every code path is covered.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <cmocka.h>

#include "common/bf16.h"
#include "kernels/cpu/cpu_internal.h"

/* xorshift64*: reproducible uniform floats in [-1, 1). */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float rand_unit(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    uint64_t r = rng_state * 0x2545f4914f6cdd1dull;
    return (float)((double)(r >> 40) / (double)(1u << 23) - 1.0);
}

static void fill(float *a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = rand_unit();
}

/* `count` floats at `offset` floats past a 64-byte boundary (owner in *base). */
static float *alloc_at(size_t count, int offset, void **base)
{
    *base = aligned_alloc(64, ((count + (size_t)offset) * sizeof(float) + 63) & ~(size_t)63);
    assert_non_null(*base);
    return (float *)*base + offset;
}

/* Checks mr_cpu_matmul(x, w, y, m, n, k, accumulate) against a double
 * reference; `offset` misaligns x, w and y by that many floats. */
static void check_matmul(int m, int n, int k, bool accumulate, int offset)
{
    void *xb, *wb, *yb;
    float *x = alloc_at((size_t)m * (size_t)k, offset, &xb);
    float *w = alloc_at((size_t)n * (size_t)k, offset, &wb);
    float *y = alloc_at((size_t)m * (size_t)n, offset, &yb);
    float *y0 = malloc((size_t)m * (size_t)n * sizeof(float));
    assert_non_null(y0);
    fill(x, (size_t)m * (size_t)k);
    fill(w, (size_t)n * (size_t)k);
    if (accumulate)
        fill(y, (size_t)m * (size_t)n);
    else
        for (size_t i = 0; i < (size_t)m * (size_t)n; i++) y[i] = NAN; /* must be overwritten */
    memcpy(y0, y, (size_t)m * (size_t)n * sizeof(float));

    mr_cpu_matmul(x, w, y, m, n, k, accumulate);

    for (int t = 0; t < m; t++) {
        for (int j = 0; j < n; j++) {
            double dot = 0.0, sq = 0.0;
            for (int i = 0; i < k; i++) {
                double term = (double)x[(size_t)t * k + i] * (double)w[(size_t)j * k + i];
                dot += term;
                sq += term * term;
            }
            double ref = (accumulate ? (double)y0[(size_t)t * n + j] : 0.0) + dot;
            double tol = 1e-5 * sqrt((double)k) * sqrt(sq) + (accumulate ? 1e-7 : 0.0);
            double got = y[(size_t)t * n + j];
            if (!(fabs(got - ref) <= tol))
                fail_msg("m=%d n=%d k=%d acc=%d off=%d: y[%d][%d] = %.9g, want %.9g (tol %.3g)",
                         m, n, k, accumulate, offset, t, j, got, ref, tol);
        }
    }
    free(xb);
    free(wb);
    free(yb);
    free(y0);
}

static const int test_ms[] = { 1, 2, 3, 5, 8, 15, 16, 17, 33, 64 };
static const int test_dims[] = { 1, 7, 160, 1000 };
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static void sweep_matmul(bool accumulate, int offset)
{
    for (int mi = 0; mi < COUNT(test_ms); mi++)
        for (int ni = 0; ni < COUNT(test_dims); ni++)
            for (int ki = 0; ki < COUNT(test_dims); ki++)
                check_matmul(test_ms[mi], test_dims[ni], test_dims[ki], accumulate, offset);
}

static void test_matmul_matches_reference_overwrite(void **state)
{
    (void)state;
    sweep_matmul(false, 0);
}

static void test_matmul_matches_reference_accumulate(void **state)
{
    (void)state;
    sweep_matmul(true, 0);
}

/* Misaligned operands (like tensors at arbitrary safetensors offsets); k a
 * multiple of 16 takes the aligning first k-block. */
static void test_matmul_handles_misaligned_operands(void **state)
{
    (void)state;
    const int ks[] = { 16, 160, 1024, 1000, 37 };
    for (int off = 1; off <= 5; off += 2)
        for (int ki = 0; ki < COUNT(ks); ki++) {
            check_matmul(1, 13, ks[ki], false, off);
            check_matmul(4, 9, ks[ki], true, off);
            check_matmul(16, 24, ks[ki], false, off);
            check_matmul(31, 17, ks[ki], true, off);
        }
}

/* Weights large enough for the row split across threads (and its seam). */
static void test_matmul_same_result_with_one_and_two_threads(void **state)
{
    (void)state;
    const int saved = openblas_get_num_threads();
    for (int threads = 1; threads <= 2; threads++) {
        openblas_set_num_threads(threads);
        check_matmul(1, 1030, 1024, false, 0);
        check_matmul(5, 1027, 1040, true, 1);
        check_matmul(16, 2050, 520, false, 0);
    }
    openblas_set_num_threads(saved);
}

static void test_matmul_with_empty_k_zeroes_or_keeps_y(void **state)
{
    (void)state;
    float x[1] = { 1.0f }, w[1] = { 1.0f }, y[6] = { 1, 2, 3, 4, 5, 6 };
    mr_cpu_matmul(x, w, y, 2, 3, 0, true);
    assert_true(y[0] == 1.0f && y[5] == 6.0f);
    mr_cpu_matmul(x, w, y, 2, 3, 0, false);
    for (int i = 0; i < 6; i++) assert_true(y[i] == 0.0f);
}

/* ---- swiglu ---- */

/* ~8 ulp: exp (≤ 2 ulp) then a division and a product; measured worst 3.6 ulp */
#define SWIGLU_RTOL 5e-7

static double silu_ref(double g) { return g / (1.0 + exp(-g)); }

static void test_swiglu_known_values(void **state)
{
    (void)state;
    const float gate[] = { 0.0f, 1.0f, -1.0f, 20.0f, -20.0f, -100.0f, 100.0f, 2.5f, -0.5f };
    const float up[] = { 3.0f, 2.0f, 1.0f, 0.5f, 1.0f, 1.0f, -1.0f, -2.0f, 4.0f };
    /* g / (1 + exp(-g)) * u, computed in double */
    const double want[] = { 0.0, 2.0 * 0.7310585786300049, -0.2689414213699951,
                            0.5 * 19.999999958776925, -4.122307236380407e-08,
                            -3.720075976020836e-42, -100.0, -2.0 * 2.3103545499468914,
                            4.0 * -0.1887703343990727 };
    const size_t n = sizeof gate / sizeof gate[0];
    float out[sizeof gate / sizeof gate[0]];
    mr_cpu_swiglu(gate, up, out, n);
    for (size_t i = 0; i < n; i++) {
        double tol = SWIGLU_RTOL * fabs(want[i]) + 1e-37;
        if (!(fabs((double)out[i] - want[i]) <= tol))
            fail_msg("swiglu(%g, %g) = %.9g, want %.9g", (double)gate[i], (double)up[i],
                     (double)out[i], want[i]);
    }
}

/* Random values over lengths that end inside a vector; out aliasing gate. */
static void test_swiglu_matches_reference_in_place(void **state)
{
    (void)state;
    const size_t lens[] = { 1, 7, 16, 17, 1003 };
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        const size_t n = lens[li];
        float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
        double *want = malloc(n * sizeof(double));
        assert_true(g && u && want);
        for (size_t i = 0; i < n; i++) {
            g[i] = 30.0f * rand_unit();
            u[i] = rand_unit();
            want[i] = silu_ref(g[i]) * (double)u[i];
        }
        mr_cpu_swiglu(g, u, g, n);
        for (size_t i = 0; i < n; i++)
            if (!(fabs((double)g[i] - want[i]) <= SWIGLU_RTOL * fabs(want[i]) + 1e-37))
                fail_msg("n=%zu i=%zu: %.9g, want %.9g", n, i, (double)g[i], want[i]);
        free(g);
        free(u);
        free(want);
    }
}

/* ---- expert_ffn ---- */

static void check_expert_ffn(int dim, int inter, int n_tokens, bool accumulate)
{
    float *gate = malloc((size_t)inter * dim * sizeof(float));
    float *up = malloc((size_t)inter * dim * sizeof(float));
    float *down = malloc((size_t)dim * inter * sizeof(float));
    float *x = malloc((size_t)n_tokens * dim * sizeof(float));
    float *out = malloc((size_t)n_tokens * dim * sizeof(float));
    float *out0 = malloc((size_t)n_tokens * dim * sizeof(float));
    float *scratch = malloc(2 * (size_t)n_tokens * inter * sizeof(float));
    double *h = malloc((size_t)inter * sizeof(double));
    assert_true(gate && up && down && x && out && out0 && scratch && h);
    fill(gate, (size_t)inter * dim);
    fill(up, (size_t)inter * dim);
    fill(down, (size_t)dim * inter);
    fill(x, (size_t)n_tokens * dim);
    fill(out, (size_t)n_tokens * dim);
    memcpy(out0, out, (size_t)n_tokens * dim * sizeof(float));
    mr_expert_w e = { .gate = gate, .up = up, .down = down, .dim = dim, .inter = inter };

    mr_cpu_expert_ffn(&e, x, n_tokens, out, accumulate, scratch);

    for (int t = 0; t < n_tokens; t++) {
        for (int i = 0; i < inter; i++) {
            double g = 0.0, u = 0.0;
            for (int d = 0; d < dim; d++) {
                g += (double)gate[(size_t)i * dim + d] * x[(size_t)t * dim + d];
                u += (double)up[(size_t)i * dim + d] * x[(size_t)t * dim + d];
            }
            h[i] = silu_ref(g) * u;
        }
        for (int d = 0; d < dim; d++) {
            double ref = accumulate ? out0[(size_t)t * dim + d] : 0.0, mag = 0.0;
            for (int i = 0; i < inter; i++) {
                ref += (double)down[(size_t)d * inter + i] * h[i];
                mag += fabs((double)down[(size_t)d * inter + i] * h[i]);
            }
            /* h carries the fp32 error of its own √dim-term sums */
            double tol = 1e-5 * (sqrt((double)dim) + sqrt((double)inter)) * (mag + 1.0);
            double got = out[(size_t)t * dim + d];
            if (!(fabs(got - ref) <= tol))
                fail_msg("D=%d inter=%d n=%d acc=%d: out[%d][%d] = %.9g, want %.9g (tol %.3g)",
                         dim, inter, n_tokens, accumulate, t, d, got, ref, tol);
        }
    }
    free(gate);
    free(up);
    free(down);
    free(x);
    free(out);
    free(out0);
    free(scratch);
    free(h);
}

/* ---- BF16 weights (matmul_typed_cpu.c): the exact emulation of a tensor-core
 * GEMM — y = round_bf16(x) · widen(w)ᵀ with fp32 products and sums — so the
 * reference rounds x the same way and the fp32 tolerance applies. ---- */

static void check_matmul_bf16(int m, int n, int k, bool accumulate)
{
    float *x = malloc(((size_t)m * k + 1) * sizeof(float));
    float *wf = malloc(((size_t)n * k + 1) * sizeof(float));
    uint16_t *w = malloc(((size_t)n * k + 1) * sizeof(uint16_t));
    float *y = malloc(((size_t)m * n + 1) * sizeof(float));
    float *y0 = malloc(((size_t)m * n + 1) * sizeof(float));
    assert_true(x && wf && w && y && y0);
    fill(x, (size_t)m * k);
    fill(wf, (size_t)n * k);
    for (size_t i = 0; i < (size_t)n * k; i++) w[i] = mr_bf16_round(wf[i]);
    if (accumulate)
        fill(y, (size_t)m * n);
    else
        for (size_t i = 0; i < (size_t)m * n; i++) y[i] = NAN; /* must be overwritten */
    memcpy(y0, y, (size_t)m * n * sizeof(float));

    mr_cpu_matmul_typed(x, w, MR_WT_BF16, y, m, n, k, accumulate);

    int differs_from_unrounded_x = 0;
    for (int t = 0; t < m; t++) {
        for (int j = 0; j < n; j++) {
            double dot = 0.0, sq = 0.0, dot_fp32_x = 0.0;
            for (int i = 0; i < k; i++) {
                const double wv = mr_bf16_widen(w[(size_t)j * k + i]);
                const double term = (double)mr_bf16_quantize(x[(size_t)t * k + i]) * wv;
                dot += term;
                sq += term * term;
                dot_fp32_x += (double)x[(size_t)t * k + i] * wv;
            }
            double ref = (accumulate ? (double)y0[(size_t)t * n + j] : 0.0) + dot;
            double tol = 1e-5 * sqrt((double)k) * sqrt(sq) + (accumulate ? 1e-7 : 0.0);
            double got = y[(size_t)t * n + j];
            if (!(fabs(got - ref) <= tol))
                fail_msg("bf16 m=%d n=%d k=%d acc=%d: y[%d][%d] = %.9g, want %.9g (tol %.3g)", m,
                         n, k, accumulate, t, j, got, ref, tol);
            differs_from_unrounded_x += fabs(dot - dot_fp32_x) > tol;
        }
    }
    /* the check can tell: without rounding x, outputs would miss */
    if (k >= 64) assert_true(differs_from_unrounded_x > 0);
    free(x);
    free(wf);
    free(w);
    free(y);
    free(y0);
}

static void test_matmul_bf16_weights_emulate_tensor_cores(void **state)
{
    (void)state;
    /* tiles of 64 Ki weight floats: k 4096 → 16 rows per tile, n 37 = 2 full + 1 partial */
    check_matmul_bf16(1, 37, 4096, false);
    check_matmul_bf16(3, 37, 4096, true);
    check_matmul_bf16(70, 300, 300, false); /* sgemm rows, 218-row tiles */
    check_matmul_bf16(70, 300, 300, true);
    check_matmul_bf16(5, 7, 160, false);    /* one tile covers n */
    check_matmul_bf16(4, 3, 0, false);      /* k 0: y cleared */
    check_matmul_bf16(4, 3, 0, true);       /* k 0, accumulate: y kept */
}

static void test_expert_ffn_matches_reference(void **state)
{
    (void)state;
    const int tokens[] = { 1, 3, 16, 33, 70 };
    for (int ti = 0; ti < COUNT(tokens); ti++) {
        check_expert_ffn(160, 48, tokens[ti], false); /* tiny preset */
        check_expert_ffn(160, 48, tokens[ti], true);
        check_expert_ffn(203, 37, tokens[ti], ti % 2 == 0); /* odd sizes */
    }
}

int main(void)
{
    const char *isa = getenv("MOERUN_CPU_ISA");
    printf("# MOERUN_CPU_ISA=%s\n", isa ? isa : "(best available)");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matmul_matches_reference_overwrite),
        cmocka_unit_test(test_matmul_bf16_weights_emulate_tensor_cores),
        cmocka_unit_test(test_matmul_matches_reference_accumulate),
        cmocka_unit_test(test_matmul_handles_misaligned_operands),
        cmocka_unit_test(test_matmul_same_result_with_one_and_two_threads),
        cmocka_unit_test(test_matmul_with_empty_k_zeroes_or_keeps_y),
        cmocka_unit_test(test_swiglu_known_values),
        cmocka_unit_test(test_swiglu_matches_reference_in_place),
        cmocka_unit_test(test_expert_ffn_matches_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
