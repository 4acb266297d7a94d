/* tests/gpu/test_nccl_plane.c — the NCCL data plane (transport/nccl_plane.h)
 * on one GPU: a one-member plane, where every transfer is to itself.
 *
 *   1. a group of self send/recv pairs (1 B, 1 MiB, 5 MiB + 3 B) delivers the
 *      bytes intact;
 *   2. a receive nobody sends to fails with MR_EPEER within its deadline
 *      (no silent hang) and leaves the plane down: the next exchange fails
 *      at once naming why;
 *   3. a transfer to a member that does not exist is MR_EINVAL.
 * Multi-GPU planes (ranks on distinct GPUs) need a multi-GPU machine: not
 * covered here. Exit 77 without a usable GPU, unless MOERUN_REQUIRE_GPU=1.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/timer.h"
#include "kernels/cuda/kernels_cuda.h"
#include "transport/nccl_plane.h"

static int failures;

static void check(bool ok, const char *what)
{
    printf("%s %s\n", ok ? "ok  " : "FAIL", what);
    if (!ok) failures++;
}

int main(void)
{
    const char *req = getenv("MOERUN_REQUIRE_GPU");
    const mr_kernels *k = mr_kernels_cuda();
    if (!k) {
        printf("%s: %s\n", req && !strcmp(req, "1") ? "FAIL" : "SKIP", mr_last_error());
        return req && !strcmp(req, "1") ? 1 : 77;
    }
    np_id id;
    np_plane *plane = NULL;
    mr_status st = np_make_id(&id);
    if (st == MR_OK) st = np_create(&id, 1, 0, 0, 60.0, NULL, NULL, &plane);
    check(st == MR_OK, "one-member plane created");
    if (st != MR_OK) {
        printf("  %s\n", mr_last_error());
        return 1;
    }

    /* 1: self transfers in one group */
    const size_t sizes[3] = {1, 1 << 20, (5 << 20) + 3};
    void *src[3], *dst[3];
    np_xfer x[6];
    for (int i = 0; i < 3; i++) {
        unsigned char *h = malloc(sizes[i]);
        for (size_t b = 0; b < sizes[i]; b++) h[b] = (unsigned char)(b * 7 + i);
        src[i] = k->alloc(sizes[i]);
        dst[i] = k->alloc(sizes[i]);
        k->copy(src[i], h, sizes[i], MR_COPY_H2D);
        free(h);
        x[2 * i] = (np_xfer){.peer = 0, .send = true, .buf = src[i], .bytes = sizes[i]};
        x[2 * i + 1] = (np_xfer){.peer = 0, .send = false, .buf = dst[i], .bytes = sizes[i]};
    }
    k->sync();
    st = np_exchange(plane, x, 6, 30.0);
    check(st == MR_OK, "group of 3 self send/recv pairs completes");
    if (st != MR_OK) printf("  %s\n", mr_last_error());
    for (int i = 0; i < 3 && st == MR_OK; i++) {
        unsigned char *a = malloc(sizes[i]), *b = malloc(sizes[i]);
        k->copy(a, src[i], sizes[i], MR_COPY_D2H);
        k->copy(b, dst[i], sizes[i], MR_COPY_D2H);
        char what[64];
        snprintf(what, sizeof what, "%zu bytes arrive intact", sizes[i]);
        check(memcmp(a, b, sizes[i]) == 0, what);
        free(a);
        free(b);
    }

    /* 3 (before breaking the plane): a member that does not exist */
    np_xfer bad = {.peer = 1, .send = true, .buf = src[0], .bytes = 1};
    check(np_exchange(plane, &bad, 1, 1.0) == MR_EINVAL, "peer out of range is MR_EINVAL");

    /* 2: an unmatched receive must time out, not hang */
    np_xfer lonely = {.peer = 0, .send = false, .buf = dst[1], .bytes = sizes[1]};
    double t0 = mr_now();
    st = np_exchange(plane, &lonely, 1, 2.0);
    double dt = mr_now() - t0;
    printf("  unmatched receive: %s after %.2f s: %s\n", mr_status_name(st), dt, mr_last_error());
    check(st == MR_EPEER && dt < 10.0, "unmatched receive fails with MR_EPEER near its deadline");
    st = np_exchange(plane, x, 2, 1.0);
    check(st == MR_EPEER && strstr(mr_last_error(), "plane is down") != NULL,
          "the aborted plane refuses further exchanges");

    np_destroy(plane);

    /* 4: the two halves (np_post / np_test / np_abort) on a fresh plane */
    st = np_make_id(&id);
    if (st == MR_OK) st = np_create(&id, 1, 0, 0, 60.0, NULL, NULL, &plane);
    check(st == MR_OK, "second one-member plane created");
    if (st == MR_OK) {
        k->copy(dst[2], src[0], 1, MR_COPY_D2D); /* dirty the destination */
        k->sync();
        st = np_post(plane, x, 6);
        bool done = false;
        double deadline = mr_now() + 30.0;
        while (st == MR_OK && !done && mr_now() < deadline) st = np_test(plane, &done);
        check(st == MR_OK && done, "posted group of 3 self pairs reports done through np_test");
        if (st == MR_OK && done) {
            unsigned char *a = malloc(sizes[2]), *b = malloc(sizes[2]);
            k->copy(a, src[2], sizes[2], MR_COPY_D2H);
            k->copy(b, dst[2], sizes[2], MR_COPY_D2H);
            check(memcmp(a, b, sizes[2]) == 0, "posted transfers arrive intact");
            free(a);
            free(b);
        }
        st = np_test(plane, &done);
        check(st == MR_OK && done, "np_test with nothing pending is done");
        st = np_post(plane, &lonely, 1); /* never matched: stays pending */
        check(st == MR_OK, "an unmatched receive posts");
        check(np_post(plane, &lonely, 1) == MR_EINVAL, "posting while a group is pending is MR_EINVAL");
        st = np_test(plane, &done);
        check(st == MR_OK && !done, "the unmatched receive is not done");
        /* a backend kernel after a not-ready poll: np_test must not leave
         * cudaErrorNotReady behind as this thread's last CUDA error */
        mr_kernels_cuda_clear_status();
        k->add((float *)dst[1], (const float *)src[1], 1024);
        check(k->check() == MR_OK, "a backend kernel launched after a not-ready np_test succeeds");
        np_abort(plane, "test: peer declared dead");
        st = np_test(plane, &done);
        check(st == MR_EPEER && strstr(mr_last_error(), "peer declared dead") != NULL,
              "after np_abort the plane fails fast naming why");
        np_destroy(plane);
    }
    for (int i = 0; i < 3; i++) {
        k->free(src[i]);
        k->free(dst[i]);
    }
    mr_kernels_cuda_clear_status(); /* the aborted group may leave an error behind */
    printf("%d failure(s)\n", failures);
    return failures ? 1 : 0;
}
