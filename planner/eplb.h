/* planner/eplb.h — expert-parallel load balancing: which rank holds which
 * routed expert, with redundant replicas for the hot ones.
 *
 * The idea follows DeepSeek's EPLB (replicate the heaviest experts, then pack
 * replicas into ranks so that every rank carries about the same load); this
 * is our own greedy version, per MoE layer:
 *   1. replicate: every expert starts with one replica; each of the
 *      `redundant` extra replicas goes to the expert whose load per replica
 *      is highest at that moment (ties → lower expert id);
 *   2. pack: replicas, heaviest first (load / replicas), go to the rank with
 *      the least load so far that still has a free slot and does not hold
 *      that expert yet (ties → lower rank index). Slots per rank =
 *      ceil((E + redundant) / n_ranks).
 * A replica serves an equal share of its expert's tokens (the runtime splits
 * an expert's tokens over its replicas round robin).
 *
 * Pure logic, no I/O; the caller owns every buffer. Thread-compatible.
 */
#ifndef MR_EPLB_H
#define MR_EPLB_H

#include <stdint.h>

#include "../common/status.h"

#define MR_EPLB_MAX_REPLICAS 8

typedef struct mr_eplb_layer {
    int n_experts;
    int n_ranks;
    /* outputs */
    int replicas[1024];                        /* per expert; experts <= 1024 */
    int rank_of[1024][MR_EPLB_MAX_REPLICAS];   /* rank index (0..n_ranks) per replica */
    double rank_load[256];                     /* tokens per rank after balancing */
} mr_eplb_layer;

/* Balance one layer. load: (n_experts) token counts; ranks <= 256,
 * experts <= 1024, 0 <= redundant, replicas per expert <= min(n_ranks, 8). */
mr_status mr_eplb_balance(const uint64_t *load, int n_experts, int n_ranks, int redundant,
                          mr_eplb_layer *out);

/* Max over mean of per-rank load with one replica per expert on rank
 * (expert mod n_ranks): the round-robin placement's imbalance, for comparison. */
double mr_eplb_round_robin_imbalance(const uint64_t *load, int n_experts, int n_ranks);
/* Max over mean of out->rank_load. */
double mr_eplb_imbalance(const mr_eplb_layer *l);

#endif
