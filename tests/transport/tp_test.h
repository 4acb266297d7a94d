/* tests/transport/tp_test.h — helpers for the MPI transport tests.
 *
 * Each test is an MPI program started by run_mpi.sh. A rank that passes all
 * its checks calls tpt_pass(), which writes $TP_TEST_OUT/rank.<r>.ok; the
 * script then checks that exactly the expected ranks passed (mpirun
 * --enable-recovery exits 0 whatever the ranks did, so its status proves
 * nothing). A failed CHECK prints rank, file:line and tp's last error, and
 * _exit(1)s. */
#ifndef MR_TP_TEST_H
#define MR_TP_TEST_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/status.h"
#include "common/timer.h"
#include "transport/tp.h"

static int tpt_rank = -1;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "[rank %d] %s:%d: CHECK(%s) failed: ", tpt_rank, __FILE__,     \
                    __LINE__, #cond);                                                      \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fprintf(stderr, " (tp last error: %s)\n", mr_last_error());                    \
            fflush(stderr);                                                                \
            _exit(1);                                                                      \
        }                                                                                  \
    } while (0)

#define CHECK_OK(expr)                                                                     \
    do {                                                                                   \
        mr_status st_ = (expr);                                                            \
        CHECK(st_ == MR_OK, "%s returned %s", #expr, mr_status_name(st_));                 \
    } while (0)

/* Record that this rank passed. */
static inline void tpt_pass(int rank)
{
    const char *dir = getenv("TP_TEST_OUT");
    if (!dir) return;
    char path[4096];
    snprintf(path, sizeof path, "%s/rank.%d.ok", dir, rank);
    FILE *f = fopen(path, "w");
    if (f) fclose(f);
}

/* Wait for the next message (of any type) for up to timeout_s; fail the test if none. */
static inline tp_msg tpt_recv(tp_ctx *ctx, double timeout_s)
{
    tp_msg m;
    double deadline = mr_now() + timeout_s;
    while (!tp_poll(ctx, &m)) {
        CHECK(mr_now() < deadline, "no message within %.1f s", timeout_s);
        CHECK_OK(tp_wait(ctx, deadline - mr_now()));
    }
    return m;
}

/* Deterministic bytes: message `seq` of a stream, byte i. */
static inline uint8_t tpt_byte(uint64_t seq, size_t i)
{
    uint64_t x = (seq + 1) * 0x9e3779b97f4a7c15ull + (uint64_t)i * 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return (uint8_t)(x ^ (x >> 17));
}

static inline void tpt_fill(uint8_t *buf, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++) buf[i] = tpt_byte(seq, i);
}

/* Index of the first wrong byte, or len if all match. */
static inline size_t tpt_verify(const uint8_t *buf, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != tpt_byte(seq, i)) return i;
    return len;
}

#endif
