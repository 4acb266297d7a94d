/* coordinator/rebalance.h — live expert re-placement: the coordinator moves
 * and replicates hot experts over the expert ranks while requests are served.
 *
 * Every --rebalance-period seconds the coordinator looks at the tokens each
 * (MoE layer, expert) received (LoadReports of the expert ranks), smoothed
 * over windows (load = window + load of the previous decision / 2, so one
 * noisy window does not move experts back and forth), builds a new table
 * with planner/eplb.h (replicas for the hottest
 * experts, packed so every live expert rank carries the same load), and
 * predicts the imbalance of both tables on that load:
 *
 *     imbalance = Σ_layers max_rank load(rank, layer) / Σ_layers mean_rank load
 *
 * (1.0 = every rank equally busy in every layer; a decode step waits for the
 * busiest rank of each layer), where an expert's tokens are split equally
 * over its replicas. When the new table lowers it by at least
 * --rebalance-min-gain (relative), an epoch runs (proto Placement):
 *
 *   PREPARE → every live expert rank loads the experts it gains, keeping all
 *             it holds (it can serve both tables); each acks;
 *   SWITCH  → every live decode rank routes with the new table from its next
 *             step (between steps: no old dispatch is in flight); each acks;
 *   COMMIT  → every live expert rank drops what the new table does not give
 *             it; each acks; the epoch is done.
 * Recovery: when an expert rank dies and some expert has no live replica
 * left, the next tick runs an epoch at once (whatever the load or the gain)
 * that places every expert over the live expert ranks, so requests after it
 * are served again (those caught by the death still end with an error).
 * A PREPARE failure (or a dead expert rank) aborts the epoch: COMMIT carries
 * the old table, so ranks drop what they loaded and nothing else changed. A
 * SWITCH failure stops re-placement for the rest of the run (ranks keep
 * both sets: correct, only larger). Tokens never depend on the placement
 * (the engine's fixed combine), so outputs stay identical to generate's.
 *
 * Measured: each window's imbalance from what the live ranks actually
 * processed (the same formula over per-rank, per-layer token counts), so the summary
 * shows the balance before and after re-placement.
 *
 * Single-threaded, used by coordinator/main.c; sends through the role.
 */
#ifndef MR_COORD_REBALANCE_H
#define MR_COORD_REBALANCE_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "common/status.h"
#include "model/config.h"
#include "runtime/placement.h"
#include "runtime/role.h"

#define MR_RB_MAX_EPOCHS 64
#define MR_RB_MAX_WINDOWS 256

typedef enum { MR_RB_IDLE, MR_RB_PREPARING, MR_RB_SWITCHING, MR_RB_COMMITTING } mr_rb_phase;

typedef struct mr_rb_epoch {
    uint64_t epoch;
    double start_s, done_s;            /* since serving started; done_s < 0 while running */
    double predicted_before, predicted_after;
    int experts_loaded, experts_dropped;
    bool aborted;
    bool recovery;                     /* forced: experts had no live replica */
    char error[160];
} mr_rb_epoch;

typedef struct mr_rb_window {
    double end_s;
    uint64_t tokens;
    double measured;                   /* imbalance of what ranks processed; 0: no tokens */
} mr_rb_window;

typedef struct mr_rebalancer {
    const mr_config *cfg;
    double period_s, min_gain;
    int redundant;                     /* extra replicas per MoE layer */
    int *expert_ranks, n_expert;
    int n_ranks;                       /* cluster size */
    mr_placement current, next;
    uint64_t *window_load;             /* (layers, experts) tokens this window */
    uint64_t *smoothed;                /* (layers, experts) window + previous / 2 */
    uint64_t *window_rank;             /* (n_ranks, layers) tokens processed this window */
    uint64_t window_tokens;
    mr_rb_phase phase;
    bool disabled;
    bool *waiting;                     /* (n_ranks) ack awaited from */
    int n_waiting;
    double t0, last_s;                 /* serve start; last decision */
    mr_rb_epoch epochs[MR_RB_MAX_EPOCHS];
    int n_epochs;
    mr_rb_window windows[MR_RB_MAX_WINDOWS];
    int n_windows;
} mr_rebalancer;

/* Off (period 0) costs nothing but still reports measured windows at the end.
 * `initial` is the placement the decode ranks started with (copied). */
mr_status mr_rb_init(mr_rebalancer *rb, const mr_config *cfg, const mr_role_opts *opts,
                     const int *expert_ranks, int n_expert, int n_ranks,
                     const mr_placement *initial, double t0);
void mr_rb_free(mr_rebalancer *rb);

/* A LoadReport from rank src (already validated by mr_expert_load_add). */
void mr_rb_on_load(mr_rebalancer *rb, int src, const int32_t *layers, size_t n_layers,
                   const uint64_t *tokens);
/* Time passes: may close the window and start an epoch. alive by rank. */
void mr_rb_tick(mr_rebalancer *rb, mr_role *role, const bool *alive, double now);
void mr_rb_on_ack(mr_rebalancer *rb, mr_role *role, int src, const Moerun__PlacementAck *ack,
                  const bool *alive, double now);
void mr_rb_on_dead(mr_rebalancer *rb, mr_role *role, int rank, const bool *alive, double now);
/* The run ended: close the last window. */
void mr_rb_finish(mr_rebalancer *rb, const bool *alive, double now);

/* imbalance of `table` on load (layers, experts), as defined above. */
double mr_rb_predicted_imbalance(const mr_config *cfg, const mr_placement *table,
                                 const uint64_t *load, int n_ranks);

cJSON *mr_rb_json(const mr_rebalancer *rb);
void mr_rb_print(const mr_rebalancer *rb, FILE *fp);

#endif
