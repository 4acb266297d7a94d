/* expert_node/prepare.h — a PREPARE of live re-placement, loaded in the
 * background so the expert rank keeps serving its current experts.
 *
 * ex_prepare_start snapshots which experts the rank holds and starts a
 * thread that loads, from the model directory, every expert the new table
 * gives this rank that is not in the snapshot (mr_model_load_routed; disk
 * reads and dtype conversion, the slow part). The main loop polls
 * ex_prepare_done between batches and then calls ex_prepare_finish, which
 * joins the thread and adopts the loaded experts on the main thread (the
 * backend copy happens there: backends are single-threaded). The thread
 * touches nothing of the role; the role's weights change only in finish.
 *
 * --test-load-delay-ms (test hook) makes the thread sleep first, so tests
 * can watch the rank serve while a PREPARE is loading.
 */
#ifndef MR_EXPERT_PREPARE_H
#define MR_EXPERT_PREPARE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "runtime/placement.h"
#include "runtime/role.h"

typedef struct ex_prepare {
    bool running;               /* started and not finished */
    uint64_t epoch;
    pthread_t thread;
    atomic_bool done;
    /* the thread's inputs (read-only for it) and outputs */
    mr_placement table;
    uint8_t *held;              /* (layers, experts) loaded when the job started */
    int n_experts, rank, delay_ms;
    const char *model_dir;
    mr_model loaded;
    mr_status status;
    char error[1024];
    double started, seconds;
} ex_prepare;

/* Start loading for `table` (moved into the job). Fails only when the thread
 * cannot start. */
mr_status ex_prepare_start(ex_prepare *p, const mr_role *r, mr_placement *table, uint64_t epoch);
/* The load finished (successfully or not): finish will not block. */
bool ex_prepare_done(ex_prepare *p);
/* Join the thread (blocking if it is still loading) and adopt what it
 * loaded into r; *n = experts adopted. Returns the load's or the adoption's
 * status with its message. The job is then free for the next start. */
mr_status ex_prepare_finish(ex_prepare *p, mr_role *r, int *n);

#endif
