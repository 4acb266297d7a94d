/* model/rope.h — DeepSeek-V3's rotary embedding with static YaRN, exactly as
 * the official precompute_freqs_cis and the attention's softmax scale.
 *
 * mr_rope_init derives from the config: the inverse frequencies (YaRN's
 * linear ramp between beta_fast and beta_slow over the original context, the
 * long-range ones divided by the factor), the cos/sin multiplier
 * mscale(factor, mscale) / mscale(factor, mscale_all_dim), and the softmax
 * scale qk_head_dim^-0.5 · mscale(factor, mscale_all_dim)². Without YaRN the
 * multiplier is 1 and the scale qk_head_dim^-0.5. Ownership: init/free pair.
 */
#ifndef MR_ROPE_H
#define MR_ROPE_H

#include "config.h"

typedef struct mr_rope {
    int half;              /* qk_rope_head_dim / 2 */
    double *inv_freq;      /* (half) */
    float mscale;          /* multiplies cos and sin */
    float softmax_scale;
} mr_rope;

mr_status mr_rope_init(const mr_config *cfg, mr_rope *out);
void mr_rope_free(mr_rope *r); /* accepts a zeroed struct */

/* cos/sin(half) at position pos, the multiplier included. */
void mr_rope_at(const mr_rope *r, int pos, float *cos_out, float *sin_out);

#endif
