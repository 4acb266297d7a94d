/* tests/kernels/test_devsim.c — the devsim backend enforces device-memory
 * rules: an op given host memory, or an extent past the end of an
 * allocation, aborts the process; copies check which side is host; in-bounds
 * use matches the cpu backend exactly. Each violation runs in a forked child
 * whose death by SIGABRT is the expected outcome.
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "kernels/devsim/kernels_devsim.h"

/* Runs fn in a child; true when the child died of SIGABRT. */
static bool aborts(void (*fn)(void))
{
    pid_t pid = fork();
    if (pid == 0) {
        /* keep the expected abort message out of the test log's way */
        if (!freopen("/dev/null", "w", stderr)) _exit(3);
        fn();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void matmul_with_host_weights(void)
{
    const mr_kernels *k = mr_kernels_devsim();
    float *x = k->alloc(4 * sizeof(float)), *y = k->alloc(4 * sizeof(float));
    float w[4] = {1, 2, 3, 4}; /* host memory */
    k->matmul(x, w, MR_WT_F32, y, 2, 2, 2, false);
}

static void matmul_past_the_end(void)
{
    const mr_kernels *k = mr_kernels_devsim();
    float *x = k->alloc(4 * sizeof(float)), *w = k->alloc(4 * sizeof(float));
    float *y = k->alloc(3 * sizeof(float)); /* needs 4 */
    k->matmul(x, w, MR_WT_F32, y, 2, 2, 2, false);
}

static void h2d_from_backend_memory(void)
{
    const mr_kernels *k = mr_kernels_devsim();
    float *a = k->alloc(64), *b = k->alloc(64);
    k->copy(a, b, 64, MR_COPY_H2D); /* src must be host */
}

static void gather_row_outside(void)
{
    const mr_kernels *k = mr_kernels_devsim();
    float *src = k->alloc(10 * 4 * sizeof(float)), *dst = k->alloc(4 * sizeof(float));
    int32_t *rows = k->alloc(sizeof(int32_t));
    int32_t host_rows[1] = {9};
    k->copy(rows, host_rows, sizeof host_rows, MR_COPY_H2D);
    k->gather_rows(src, MR_WT_F32, 4, rows, 1, 1, 4, dst); /* row 9 + base 1 = row 10 of 10 */
}

static void free_of_host_pointer(void)
{
    const mr_kernels *k = mr_kernels_devsim();
    static float host[4];
    k->free(host);
}

static void test_violations_abort(void **state)
{
    (void)state;
    assert_true(aborts(matmul_with_host_weights));
    assert_true(aborts(matmul_past_the_end));
    assert_true(aborts(h2d_from_backend_memory));
    assert_true(aborts(gather_row_outside));
    assert_true(aborts(free_of_host_pointer));
}

static void test_in_bounds_use_matches_cpu(void **state)
{
    (void)state;
    const mr_kernels *d = mr_kernels_devsim(), *c = mr_kernels_cpu();
    size_t live = mr_devsim_live_allocations();
    float x[6] = {1, -2, 3, 0.5f, 4, -1}, w[6] = {2, 1, 0, -1, 3, 0.25f}, y_cpu[4], y[4];
    float *dx = d->alloc(sizeof x), *dw = d->alloc(sizeof w), *dy = d->alloc(sizeof y);
    d->copy(dx, x, sizeof x, MR_COPY_H2D);
    d->copy(dw, w, sizeof w, MR_COPY_H2D);
    d->matmul(dx, dw, MR_WT_F32, dy, 2, 2, 3, false);
    d->copy(y, dy, sizeof y, MR_COPY_D2H);
    c->matmul(x, w, MR_WT_F32, y_cpu, 2, 2, 3, false);
    assert_memory_equal(y, y_cpu, sizeof y);
    assert_int_equal(mr_devsim_live_allocations(), live + 3);
    d->free(dx);
    d->free(dw);
    d->free(dy);
    assert_int_equal(mr_devsim_live_allocations(), live);
    assert_false(d->host_memory);
    assert_int_equal(d->check(), MR_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_violations_abort),
        cmocka_unit_test(test_in_bounds_use_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
