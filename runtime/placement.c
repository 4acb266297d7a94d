#include "placement.h"

#include "common/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REP MR_PLACEMENT_MAX_REPLICAS

static size_t entry(const mr_placement *p, int layer, int expert)
{
    return (size_t)layer * p->n_experts + (size_t)expert;
}

mr_status mr_placement_round_robin(const mr_config *cfg, const int *ranks, int n_ranks,
                                   mr_placement *out)
{
    memset(out, 0, sizeof *out);
    if (n_ranks <= 0) return mr_fail(MR_EINVAL, "placement: no ranks to place experts on");
    out->n_layers = cfg->num_hidden_layers;
    out->n_experts = cfg->n_routed_experts;
    size_t n = (size_t)out->n_layers * out->n_experts;
    out->n_replicas = calloc(n ? n : 1, 1);
    out->ranks = malloc(sizeof(int32_t) * (n ? n : 1) * REP);
    if (!out->n_replicas || !out->ranks) {
        mr_placement_free(out);
        return mr_fail(MR_ENOMEM, "placement: out of memory");
    }
    for (int l = 0; l < out->n_layers; l++) {
        if (!mr_config_layer_is_moe(cfg, l)) continue;
        for (int e = 0; e < out->n_experts; e++) {
            out->n_replicas[entry(out, l, e)] = 1;
            out->ranks[entry(out, l, e) * REP] = ranks[e % n_ranks];
        }
    }
    return MR_OK;
}

static bool rank_allowed(const int *ranks, int n_ranks, int r)
{
    for (int i = 0; i < n_ranks; i++)
        if (ranks[i] == r) return true;
    return false;
}

static mr_status parse_index(const char *path, const char *what, const char *key, int limit,
                             int *out)
{
    char *end;
    errno = 0;
    long v = strtol(key, &end, 10);
    if (!*key || *end || errno || v < 0 || v >= limit)
        return mr_fail(MR_EINVAL, "%s: %s \"%s\" is not in [0, %d)", path, what, key, limit);
    *out = (int)v;
    return MR_OK;
}

static mr_status apply_file(const char *path, const cJSON *root, const mr_config *cfg,
                            const int *ranks, int n_ranks, mr_placement *p)
{
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(root, "layers");
    if (!cJSON_IsObject(layers))
        return mr_fail(MR_EINVAL, "%s: expected an object with key \"layers\"", path);
    const cJSON *lj;
    cJSON_ArrayForEach(lj, layers) {
        int layer = 0;
        MR_TRY(parse_index(path, "layer", lj->string, cfg->num_hidden_layers, &layer));
        if (!mr_config_layer_is_moe(cfg, layer))
            return mr_fail(MR_EINVAL, "%s: layer %d is a dense layer (first_k_dense_replace %d)",
                           path, layer, cfg->first_k_dense_replace);
        if (!cJSON_IsObject(lj))
            return mr_fail(MR_EINVAL, "%s: layers.%s must be an object", path, lj->string);
        const cJSON *ej;
        cJSON_ArrayForEach(ej, lj) {
            int expert = 0;
            MR_TRY(parse_index(path, "expert", ej->string, cfg->n_routed_experts, &expert));
            int n = cJSON_GetArraySize(ej);
            if (!cJSON_IsArray(ej) || n < 1 || n > REP)
                return mr_fail(MR_EINVAL, "%s: layers.%s.%s must be a list of 1..%d ranks", path,
                               lj->string, ej->string, REP);
            size_t at = entry(p, layer, expert);
            for (int i = 0; i < n; i++) {
                const cJSON *r = cJSON_GetArrayItem(ej, i);
                int rank = cJSON_IsNumber(r) ? (int)r->valuedouble : -1;
                if (!cJSON_IsNumber(r) || r->valuedouble != rank || !rank_allowed(ranks, n_ranks, rank))
                    return mr_fail(MR_EINVAL, "%s: layers.%s.%s: %s is not an expert rank of this "
                                   "cluster", path, lj->string, ej->string,
                                   cJSON_IsNumber(r) ? "rank" : "entry");
                for (int j = 0; j < i; j++)
                    if (p->ranks[at * REP + j] == rank)
                        return mr_fail(MR_EINVAL, "%s: layers.%s.%s lists rank %d twice", path,
                                       lj->string, ej->string, rank);
                p->ranks[at * REP + i] = rank;
            }
            p->n_replicas[at] = (uint8_t)n;
        }
    }
    return MR_OK;
}

mr_status mr_placement_load(const char *path, const mr_config *cfg, const int *ranks,
                            int n_ranks, mr_placement *out)
{
    MR_TRY(mr_placement_round_robin(cfg, ranks, n_ranks, out));
    cJSON *root = NULL;
    mr_status st = mr_read_json_file(path, 64u << 20, &root);
    if (st == MR_OK) st = apply_file(path, root, cfg, ranks, n_ranks, out);
    cJSON_Delete(root);
    if (st != MR_OK) mr_placement_free(out);
    return st;
}

void mr_placement_free(mr_placement *p)
{
    if (!p) return;
    free(p->n_replicas);
    free(p->ranks);
    memset(p, 0, sizeof *p);
}

bool mr_placement_holds(const mr_placement *p, int layer, int expert, int rank)
{
    size_t at = entry(p, layer, expert);
    for (int i = 0; i < p->n_replicas[at]; i++)
        if (p->ranks[at * REP + i] == rank) return true;
    return false;
}

int mr_placement_route(const mr_placement *p, int layer, int expert, int slot, const bool *alive)
{
    size_t at = entry(p, layer, expert);
    int live[REP], n_live = 0;
    for (int i = 0; i < p->n_replicas[at]; i++) {
        int r = p->ranks[at * REP + i];
        if (!alive || alive[r]) live[n_live++] = r;
    }
    return n_live ? live[slot % n_live] : -1;
}

mr_status mr_placement_copy(const mr_placement *src, mr_placement *dst)
{
    memset(dst, 0, sizeof *dst);
    size_t n = (size_t)src->n_layers * src->n_experts;
    dst->n_replicas = malloc(n ? n : 1);
    dst->ranks = malloc(sizeof(int32_t) * (n ? n : 1) * REP);
    if (!dst->n_replicas || !dst->ranks) {
        mr_placement_free(dst);
        return mr_fail(MR_ENOMEM, "placement: out of memory");
    }
    dst->n_layers = src->n_layers;
    dst->n_experts = src->n_experts;
    memcpy(dst->n_replicas, src->n_replicas, n);
    memcpy(dst->ranks, src->ranks, sizeof(int32_t) * n * REP);
    return MR_OK;
}

mr_status mr_placement_from_table(const mr_config *cfg, int n_layers, int n_experts,
                                  const int32_t *n_replicas, size_t n_counts,
                                  const int32_t *ranks, size_t n_ranks_listed,
                                  const int *allowed, int n_allowed, mr_placement *out)
{
    memset(out, 0, sizeof *out);
    if (n_layers != cfg->num_hidden_layers || n_experts != cfg->n_routed_experts ||
        n_counts != (size_t)n_layers * (size_t)n_experts)
        return mr_fail(MR_EINVAL, "placement table: %d layers x %d experts (%zu counts) does not "
                       "match the model's %d x %d", n_layers, n_experts, n_counts,
                       cfg->num_hidden_layers, cfg->n_routed_experts);
    size_t n = n_counts;
    out->n_layers = n_layers;
    out->n_experts = n_experts;
    out->n_replicas = calloc(n ? n : 1, 1);
    out->ranks = malloc(sizeof(int32_t) * (n ? n : 1) * REP);
    if (!out->n_replicas || !out->ranks) {
        mr_placement_free(out);
        return mr_fail(MR_ENOMEM, "placement: out of memory");
    }
    mr_status st = MR_OK;
    size_t at_rank = 0;
    for (int l = 0; l < n_layers && st == MR_OK; l++) {
        for (int e = 0; e < n_experts && st == MR_OK; e++) {
            size_t at = entry(out, l, e);
            int32_t c = n_replicas[at];
            bool moe = mr_config_layer_is_moe(cfg, l);
            if ((moe && (c < 1 || c > REP)) || (!moe && c != 0)) {
                st = mr_fail(MR_EINVAL, "placement table: layer %d expert %d has %d replicas "
                             "(expected %s)", l, e, c, moe ? "1..8" : "0 on a dense layer");
                break;
            }
            if (at_rank + (size_t)c > n_ranks_listed) {
                st = mr_fail(MR_EINVAL, "placement table: rank list ends at layer %d expert %d",
                             l, e);
                break;
            }
            for (int i = 0; i < c && st == MR_OK; i++) {
                int r = ranks[at_rank + (size_t)i];
                if (!rank_allowed(allowed, n_allowed, r))
                    st = mr_fail(MR_EINVAL, "placement table: layer %d expert %d: rank %d is not "
                                 "an expert rank of this cluster", l, e, r);
                for (int j = 0; j < i && st == MR_OK; j++)
                    if (out->ranks[at * REP + j] == r)
                        st = mr_fail(MR_EINVAL, "placement table: layer %d expert %d lists rank "
                                     "%d twice", l, e, r);
                out->ranks[at * REP + i] = r;
            }
            out->n_replicas[at] = (uint8_t)c;
            at_rank += (size_t)c;
        }
    }
    if (st == MR_OK && at_rank != n_ranks_listed)
        st = mr_fail(MR_EINVAL, "placement table: %zu ranks listed, %zu used", n_ranks_listed,
                     at_rank);
    if (st != MR_OK) mr_placement_free(out);
    return st;
}

mr_status mr_placement_to_table(const mr_placement *p, int32_t **n_replicas, size_t *n_counts,
                                int32_t **ranks, size_t *n_ranks_listed)
{
    size_t n = (size_t)p->n_layers * p->n_experts, total = 0;
    for (size_t i = 0; i < n; i++) total += p->n_replicas[i];
    *n_replicas = malloc(sizeof(int32_t) * (n ? n : 1));
    *ranks = malloc(sizeof(int32_t) * (total ? total : 1));
    if (!*n_replicas || !*ranks) {
        free(*n_replicas);
        free(*ranks);
        *n_replicas = *ranks = NULL;
        return mr_fail(MR_ENOMEM, "placement: out of memory");
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        (*n_replicas)[i] = p->n_replicas[i];
        for (int j = 0; j < p->n_replicas[i]; j++) (*ranks)[k++] = p->ranks[i * REP + (size_t)j];
    }
    *n_counts = n;
    *n_ranks_listed = total;
    return MR_OK;
}
