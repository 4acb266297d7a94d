/* model/sampler.h — next-token sampling from logits.
 *
 * Order (the CLI contract): logits / T → top-k → softmax → top-p →
 * renormalize → draw. temperature == 0 is greedy (argmax, ties → lowest id).
 * top_k 0 = off; top_p 1 = off. Each sequence owns an mr_sampler seeded from
 * its request's seed, so a given seed always gives the same tokens whatever
 * else runs in the batch. Not thread-safe per sampler.
 */
#ifndef MR_SAMPLER_H
#define MR_SAMPLER_H

#include <stdint.h>

#include "../common/status.h"
#include "../kernels/kernels.h"

typedef struct mr_sampling_params {
    float temperature;   /* >= 0 */
    float top_p;         /* (0, 1] */
    int top_k;           /* >= 0 */
    uint64_t seed;
} mr_sampling_params;

typedef struct mr_sampler {
    mr_sampling_params params;
    uint64_t rng_state[4];
} mr_sampler;

/* Validates the params (message names the bad one). */
mr_status mr_sampler_init(mr_sampler *s, const mr_sampling_params *params);

/* Pick a token from logits(vocab). Fails only on allocation.
 * = mr_sampler_draw, then argmax (temperature 0) or mr_sample_pick. */
mr_status mr_sampler_next(mr_sampler *s, const float *logits, int vocab, int32_t *token);

/* This step's parameters and uniform draw, for sampling elsewhere (on a
 * backend: mr_kernels.sample_rows): advances the RNG exactly as
 * mr_sampler_next does (once when temperature > 0, never at 0), so a seed
 * gives the same tokens whichever side samples. */
void mr_sampler_draw(mr_sampler *s, mr_sample_row *row);

/* The token row's rule picks from logits(vocab) for row->temperature > 0
 * (see the order above; u = row->u). scratch: 2 * vocab 32-bit words. */
int32_t mr_sample_pick(const float *logits, int vocab, const mr_sample_row *row, void *scratch);

/* Index of the largest logit (ties → lowest index). */
int32_t mr_argmax(const float *logits, int n);

#endif
