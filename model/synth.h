/* model/synth.h — random-weight models in the real checkpoint format.
 *
 * `moerun synth` writes config.json + safetensors exactly as a DeepSeek-V3
 * release is laid out (HF tensor names; F32, BF16 or the official FP8 format:
 * F8_E4M3 linear weights with 128×128 F32 `_scale_inv` blocks, embeddings,
 * norms, router and lm_head in BF16, e_score_correction_bias F32), single file
 * or sharded with model.safetensors.index.json. Deterministic for a seed.
 *
 * Presets (see mr_synth_presets()): tiny (V3 structure scaled down: dense first
 * layer, grouped sigmoid gate with bias, shared expert, MLA with q_lora, YaRN),
 * tiny-v2 (V2: softmax gate, group_limited_greedy, direct q_proj, mscale !=
 * mscale_all_dim), tiny-lite (V2-Lite: greedy, one group, no YaRN), small
 * (benchmark size, same structure as V3).
 */
#ifndef MR_SYNTH_H
#define MR_SYNTH_H

#include <stdint.h>

#include "../common/status.h"
#include "config.h"

typedef enum { MR_SYNTH_F32, MR_SYNTH_BF16, MR_SYNTH_FP8 } mr_synth_dtype;

typedef struct mr_synth_opts {
    const char *preset;        /* "tiny" when NULL */
    mr_synth_dtype dtype;
    uint64_t seed;
    int shards;                /* 1 = model.safetensors; N > 1 = index + N files */
    float gate_bias_offset;    /* added to every e_score_correction_bias value */
    /* Persistently hot experts (load-balancing tests): these expert ids get
     * +hot_bias on e_score_correction_bias in every MoE layer, so the router
     * prefers them for every token. */
    const int32_t *hot_experts;
    int n_hot_experts;
    float hot_bias;
} mr_synth_opts;

/* NULL-terminated list of preset names. */
const char *const *mr_synth_presets(void);

/* The config of a preset (as it would be written). */
mr_status mr_synth_preset_config(const char *preset, mr_config *out);

/* Create out_dir if needed and write config.json + weights. */
mr_status mr_synth_write(const char *out_dir, const mr_synth_opts *opts);

#endif
