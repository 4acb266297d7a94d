/* model/model.h — open a model directory in one call: config.json +
 * safetensors → validated mr_config + fp32 mr_weights.
 *
 * dir == NULL opens the built-in default: the `tiny` synthetic preset
 * (seed 0, f32) written to a private temporary directory, loaded and removed
 * — so every command works on a fresh machine with no download.
 * Ownership: mr_model owns its weights; free with mr_model_free.
 */
#ifndef MR_MODEL_H
#define MR_MODEL_H

#include <stdint.h>

#include "config.h"
#include "weights.h"

typedef struct mr_model {
    mr_config cfg;
    mr_weights weights;
    char source[512];   /* the directory, or "built-in tiny (seed 0)" */
} mr_model;

mr_status mr_model_load(const char *dir, mr_expert_filter filter, void *filter_ctx,
                        mr_model *out);
/* Only the routed experts the filter accepts are loaded (mr_weights_load_routed). */
mr_status mr_model_load_routed(const char *dir, mr_expert_filter filter, void *filter_ctx,
                               mr_model *out);
void mr_model_free(mr_model *model); /* accepts NULL */

/* A cheap fingerprint of a model directory for the cluster's start-up check
 * that every rank loads the same model: FNV-1a over config.json and, for each
 * safetensors file (sorted by name), its size and its header bytes. dir NULL
 * = the built-in tiny model (a fixed value per build). Reads no tensor data. */
mr_status mr_model_fingerprint(const char *dir, uint64_t *out);

#endif
