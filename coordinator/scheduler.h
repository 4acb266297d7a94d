/* coordinator/scheduler.h — which prefill and decode rank get a request.
 *
 * The coordinator's view of the load on every prefill and decode rank:
 *  - decode: free KV blocks. Its own accounting reserves ⌈(S+N)/block_tokens⌉
 *    blocks per request admitted (released when the request ends); a Status
 *    frame from the rank corrects it: the estimate is the smaller of
 *    (pool − reserved) and (reported free − blocks admitted since that report).
 *  - prefill: queued prompt tokens, in the coordinator's own accounting (added at
 *    admission, removed when the request's first token arrives or it ends).
 * Choice: decode = most estimated free blocks, prefill = fewest queued tokens,
 * ties → lowest rank; dead ranks are never chosen.
 *
 * Pure logic (no transport), thread-compatible. Rank numbers are transport
 * ranks; a rank that is not one of the table's is ignored by every call.
 */
#ifndef MR_COORD_SCHEDULER_H
#define MR_COORD_SCHEDULER_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"

typedef struct mr_sched_decode {
    int rank;
    bool alive;
    int pool_blocks;          /* total blocks (role option, then Status) */
    int reserved_blocks;      /* own accounting: blocks of admitted, unfinished requests */
    int reported_free;        /* last Status free_kv_blocks; -1 before the first */
    int admitted_since_report;/* blocks admitted after that Status */
    int running;              /* last Status: running requests (informational) */
} mr_sched_decode;

typedef struct mr_sched_prefill {
    int rank;
    bool alive;
    int64_t queued_tokens;    /* own accounting */
    int64_t reported_queued;  /* last Status queued_tokens; -1 before the first */
} mr_sched_prefill;

typedef struct mr_sched {
    mr_sched_prefill *prefill;
    int n_prefill;
    mr_sched_decode *decode;
    int n_decode;
    int block_tokens;
} mr_sched;

/* Ranks in role order; kv_blocks / block_tokens are the role options every
 * decode rank starts with. */
mr_status mr_sched_init(mr_sched *s, const int *prefill_ranks, int n_prefill,
                        const int *decode_ranks, int n_decode, int kv_blocks, int block_tokens);
void mr_sched_free(mr_sched *s); /* accepts NULL */

/* KV blocks a request of prompt_tokens + max_new_tokens reserves. */
int mr_sched_blocks_for(const mr_sched *s, int prompt_tokens, int max_new_tokens);

/* Estimated free blocks of a decode entry (may be negative when overbooked). */
int mr_sched_decode_free(const mr_sched_decode *d);

/* Largest pool of a live decode rank (0 when none is alive). */
int mr_sched_max_pool(const mr_sched *s);

/* Pick ranks for a request of `blocks` KV blocks: the decode rank is chosen
 * among live ranks whose pool can hold it at all (it may have to queue).
 * MR_EPEER ("no live decode rank" / "no live prefill rank") when a role has
 * no live rank; MR_ERANGE ("request needs N KV blocks ... a decode pool holds
 * M") when no live pool is large enough. */
mr_status mr_sched_pick(const mr_sched *s, int blocks, int *prefill_rank, int *decode_rank);

/* Book a request on the chosen ranks / release it. prefill_done releases the
 * prompt tokens only (first token arrived); release_decode the blocks. */
void mr_sched_admit(mr_sched *s, int prefill_rank, int decode_rank, int prompt_tokens,
                    int blocks);
void mr_sched_prefill_done(mr_sched *s, int prefill_rank, int prompt_tokens);
void mr_sched_release_decode(mr_sched *s, int decode_rank, int blocks);

/* A Status frame from `rank` (decode or prefill). */
void mr_sched_on_status(mr_sched *s, int rank, int free_kv_blocks, int total_kv_blocks,
                        int queued_tokens, int running);

/* Never choose `rank` again. Returns true when it was a live rank of the table. */
bool mr_sched_mark_dead(mr_sched *s, int rank);

int mr_sched_live_decode(const mr_sched *s);
int mr_sched_live_prefill(const mr_sched *s);

#endif
