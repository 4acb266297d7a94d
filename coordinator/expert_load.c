#include "expert_load.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mr_status mr_expert_load_init(mr_expert_load *l, int n_layers, int n_experts)
{
    memset(l, 0, sizeof *l);
    size_t n = (size_t)(n_layers > 0 ? n_layers : 1) * (size_t)(n_experts > 0 ? n_experts : 1);
    l->tokens = calloc(n, sizeof(uint64_t));
    if (!l->tokens) return mr_fail(MR_ENOMEM, "expert load: out of memory");
    l->n_layers = n_layers;
    l->n_experts = n_experts;
    return MR_OK;
}

void mr_expert_load_free(mr_expert_load *l)
{
    if (!l) return;
    free(l->tokens);
    memset(l, 0, sizeof *l);
}

mr_status mr_expert_load_add(mr_expert_load *l, int src_rank, const int32_t *layers,
                             size_t n_report_layers, int n_experts, const uint64_t *tokens,
                             size_t n_tokens)
{
    if (n_experts != l->n_experts || n_tokens != n_report_layers * (size_t)n_experts)
        return mr_fail(MR_EPROTO, "load report from rank %d: %zu counts for %zu layers x %d "
                       "experts (model has %d experts)", src_rank, n_tokens, n_report_layers,
                       n_experts, l->n_experts);
    for (size_t i = 0; i < n_report_layers; i++)
        if (layers[i] < 0 || layers[i] >= l->n_layers)
            return mr_fail(MR_EPROTO, "load report from rank %d: layer %d out of range", src_rank,
                           layers[i]);
    for (size_t i = 0; i < n_report_layers; i++)
        for (int e = 0; e < n_experts; e++)
            l->tokens[(size_t)layers[i] * n_experts + e] += tokens[i * (size_t)n_experts + e];
    return MR_OK;
}

double mr_expert_load_imbalance(const mr_expert_load *l, int layer)
{
    uint64_t sum = 0, max = 0;
    for (int e = 0; e < l->n_experts; e++) {
        uint64_t v = l->tokens[(size_t)layer * l->n_experts + e];
        sum += v;
        if (v > max) max = v;
    }
    return sum ? (double)max * l->n_experts / (double)sum : 0.0;
}

cJSON *mr_expert_load_json(const mr_expert_load *l)
{
    cJSON *o = cJSON_CreateObject();
    for (int layer = 0; o && layer < l->n_layers; layer++) {
        const uint64_t *row = l->tokens + (size_t)layer * l->n_experts;
        uint64_t sum = 0;
        for (int e = 0; e < l->n_experts; e++) sum += row[e];
        if (!sum) continue;
        cJSON *a = cJSON_CreateArray();
        for (int e = 0; e < l->n_experts; e++) cJSON_AddItemToArray(a, cJSON_CreateNumber((double)row[e]));
        char key[16];
        snprintf(key, sizeof key, "%d", layer);
        cJSON_AddItemToObject(o, key, a);
    }
    return o;
}
