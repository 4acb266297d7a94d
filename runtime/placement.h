/* runtime/placement.h — which rank holds which routed expert.
 *
 * Placement is data, not topology (docs/DESIGN): a table
 * (MoE layer, logical expert) → list of physical replicas (MPI ranks).
 * The default is round robin over the given ranks (expert e of every layer
 * on ranks[e % n]). A placement file overrides entries:
 *     {"layers": {"3": {"17": [4, 6]}}}
 * = layer 3's expert 17 has replicas on MPI ranks 4 and 6. Keys must be MoE
 * layers and expert ids of the model, ranks must be among the given ranks,
 * no rank twice in one list; anything else is an error naming the entry.
 *
 * Routing splits a replicated expert's tokens deterministically: slot s goes
 * to the (s mod n_live)-th live replica. Ownership: create/free pair.
 */
#ifndef MR_PLACEMENT_H
#define MR_PLACEMENT_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"
#include "model/config.h"

#define MR_PLACEMENT_MAX_REPLICAS 8

typedef struct mr_placement {
    int n_layers;
    int n_experts;
    uint8_t *n_replicas;  /* (n_layers, n_experts); 0 for dense layers */
    int32_t *ranks;       /* (n_layers, n_experts, MR_PLACEMENT_MAX_REPLICAS) */
} mr_placement;

mr_status mr_placement_round_robin(const mr_config *cfg, const int *ranks, int n_ranks,
                                   mr_placement *out);
/* Round robin, then the file's entries replace those experts' replica lists. */
mr_status mr_placement_load(const char *path, const mr_config *cfg, const int *ranks,
                            int n_ranks, mr_placement *out);
void mr_placement_free(mr_placement *p);
/* A deep copy (dst is overwritten, not freed). */
mr_status mr_placement_copy(const mr_placement *src, mr_placement *dst);

/* The table of a Placement frame: counts checked
 * against the model (dims, MoE layers only, 1..MR_PLACEMENT_MAX_REPLICAS
 * replicas per MoE expert), every rank among `ranks`, no rank twice in one
 * list; anything else is MR_EINVAL naming the entry. */
mr_status mr_placement_from_table(const mr_config *cfg, int n_layers, int n_experts,
                                  const int32_t *n_replicas, size_t n_counts,
                                  const int32_t *ranks, size_t n_ranks_listed,
                                  const int *allowed, int n_allowed, mr_placement *out);
/* Flatten p into (n_layers * n_experts) counts and the concatenated ranks
 * (malloc'd; caller frees both). */
mr_status mr_placement_to_table(const mr_placement *p, int32_t **n_replicas, size_t *n_counts,
                                int32_t **ranks, size_t *n_ranks_listed);

bool mr_placement_holds(const mr_placement *p, int layer, int expert, int rank);
/* Rank serving `slot` of (layer, expert) among live replicas; -1 when none
 * is alive. alive is indexed by MPI rank (NULL = all alive). */
int mr_placement_route(const mr_placement *p, int layer, int expert, int slot, const bool *alive);

#endif
