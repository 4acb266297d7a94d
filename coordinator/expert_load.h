/* coordinator/expert_load.h — tokens routed to each (MoE layer, expert),
 * summed over the LoadReports of every expert rank. The input of expert
 * balancing (hot experts get redundant replicas) and of the summary's
 * "expert_load" section. Pure logic, no transport.
 */
#ifndef MR_COORD_EXPERT_LOAD_H
#define MR_COORD_EXPERT_LOAD_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef struct mr_expert_load {
    int n_layers;
    int n_experts;
    uint64_t *tokens;   /* (n_layers, n_experts) */
} mr_expert_load;

mr_status mr_expert_load_init(mr_expert_load *l, int n_layers, int n_experts);
void mr_expert_load_free(mr_expert_load *l);

/* Add one LoadReport: tokens is (n_report_layers, n_experts) for the layers
 * listed. Layer ids, expert count and array length are checked (a bad report
 * is rejected whole, with a message naming the sender). */
mr_status mr_expert_load_add(mr_expert_load *l, int src_rank, const int32_t *layers,
                             size_t n_report_layers, int n_experts, const uint64_t *tokens,
                             size_t n_tokens);

/* Max over mean of a layer's expert counts (1.0 = perfectly balanced; 0 when
 * the layer saw no tokens). */
double mr_expert_load_imbalance(const mr_expert_load *l, int layer);

/* {"<layer>": [counts...]} for layers that saw tokens. */
cJSON *mr_expert_load_json(const mr_expert_load *l);

#endif
