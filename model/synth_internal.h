/* model/synth_internal.h — shared between synth_presets.c (presets and their
 * config.json) and synth.c (the tensor writer). Not for use outside model/. */
#ifndef MR_SYNTH_INTERNAL_H
#define MR_SYNTH_INTERNAL_H

#include "synth.h"

/* FP8 checkpoints: 128x128 weight_block_size, as the DeepSeek-V3 release. */
#define SYNTH_FP8_BLOCK 128

/* Print the preset's config.json (HF layout) and parse it back into *cfg;
 * *text_out (malloc'd, caller frees) receives the text unless NULL. */
mr_status synth_preset_config(const char *preset, mr_synth_dtype dtype, mr_config *cfg,
                              char **text_out);

/* Rewrite cJSON_Print's tab layout as HF's json.dumps(indent=2); replaces *text. */
void synth_hf_layout(char **text);

#endif
