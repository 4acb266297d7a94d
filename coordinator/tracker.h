/* coordinator/tracker.h — every request's life from submission to its end.
 *
 * Owns the per-request state the coordinator keeps while the cluster runs:
 * which ranks a request went to, the tokens streamed back, timestamps, and
 * how it ended. Every request ends exactly once: completed (stop | length)
 * or with an error (a bad input line, a TokenEvent error, a lost rank, a
 * timeout, no live rank to send it to). Events for unknown or already
 * ended ids are ignored (counted in n_ignored_events).
 *
 * Times are seconds on one clock (mr_now() in the coordinator, anything
 * monotonic in tests). A request's clock starts at its submission, or at
 * its scheduled arrival in replay (start + arrival_ms), so queueing delay in
 * the coordinator counts against it.
 *
 * When a request ends, its reservations are released in the scheduler passed
 * to mr_tracker_init (may be NULL). Pure logic, thread-compatible.
 */
#ifndef MR_COORD_TRACKER_H
#define MR_COORD_TRACKER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "requests.h"
#include "scheduler.h"

typedef enum {
    MR_RQ_PENDING,   /* valid, not yet submitted (waiting for its arrival time) */
    MR_RQ_RUNNING,   /* Admit sent */
    MR_RQ_DONE,      /* ended; see finish */
} mr_rq_phase;

typedef enum { MR_END_NONE, MR_END_STOP, MR_END_LENGTH, MR_END_ERROR } mr_rq_end;

typedef struct mr_rq_state {
    const mr_req_spec *spec;
    mr_rq_phase phase;
    mr_rq_end end;
    char *error;             /* NULL unless end == MR_END_ERROR */
    int prefill_rank, decode_rank; /* -1 before submission */
    int kv_blocks;           /* reserved in the scheduler */
    bool prefill_released;   /* queued prompt tokens already released */
    int32_t *out_ids;
    int n_out, cap_out;
    double submit_s, first_s, last_s, end_s; /* first/last: token times; 0 when none */
} mr_rq_state;

typedef struct mr_tracker {
    mr_rq_state *reqs;       /* parallel to the request set */
    int n;
    int n_done, n_completed, n_failed;
    int64_t output_tokens;   /* tokens of every request, completed or not */
    uint64_t n_ignored_events;
    mr_sched *sched;         /* borrowed; may be NULL */
    /* id → index hash (open addressing) */
    int *index;
    int index_cap;
} mr_tracker;

/* Invalid specs end at once with their error (end_s = submit_s = now). */
mr_status mr_tracker_init(mr_tracker *t, const mr_req_set *set, mr_sched *sched, double now);
void mr_tracker_free(mr_tracker *t); /* accepts NULL */

/* Index of the request with this id, or -1. */
int mr_tracker_find(const mr_tracker *t, const char *id);

/* Mark request i submitted to (prefill, decode) at time `clock_start`
 * (its submission or arrival time) with `blocks` reserved; the caller has
 * already booked them in the scheduler. */
void mr_tracker_submitted(mr_tracker *t, int i, int prefill_rank, int decode_rank, int blocks,
                          double clock_start);

/* End request i with an error (no-op when it already ended). `now` is its end
 * time; a pending request gets submit_s = now too. Returns true when it ended here. */
bool mr_tracker_fail(mr_tracker *t, int i, const char *error, double now);

/* A TokenEvent from `src_rank`. finish: 0 none, 1 stop, 2 length, 3 error
 * (Moerun__FinishReason values). A token >= 0 is appended unless the event is
 * an error. Events from a rank other than the request's prefill or decode
 * rank, for unknown ids, or for ended requests are ignored (returns false). */
bool mr_tracker_on_token(mr_tracker *t, int src_rank, const char *id, int token, int finish,
                         const char *error, double now);

/* A rank died. Returns the number of requests that ended because of it:
 * decode → every unfinished request on it ("lost decode rank N");
 * prefill → its requests without a first token yet ("lost prefill rank N").
 * `is_decode` / `is_prefill` say which role the rank had. */
int mr_tracker_rank_dead(mr_tracker *t, int rank, bool is_decode, bool is_prefill, double now);

/* End every running request submitted before now - timeout_s ("timed out
 * after S s"). timeout_s <= 0 disables. Returns the number ended. */
int mr_tracker_check_timeouts(mr_tracker *t, double timeout_s, double now);

/* End every request not yet ended (pending or running) with `error`. */
int mr_tracker_fail_all(mr_tracker *t, const char *error, double now);

static inline bool mr_tracker_all_done(const mr_tracker *t)
{
    return t->n_done == t->n;
}

/* Per-request metrics in milliseconds: ttft (0 without a token), tpot
 * ((last - first)/(n-1), 0 when n < 2), e2e (end - submit). */
double mr_rq_ttft_ms(const mr_rq_state *r);
double mr_rq_tpot_ms(const mr_rq_state *r);
double mr_rq_e2e_ms(const mr_rq_state *r);
const char *mr_rq_end_name(mr_rq_end end); /* "stop" | "length" | "error" | "none" */

#endif
