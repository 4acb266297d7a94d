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

/* Pick a token from logits(vocab). Fails only on allocation. */
mr_status mr_sampler_next(mr_sampler *s, const float *logits, int vocab, int32_t *token);

/* Index of the largest logit (ties → lowest index). */
int32_t mr_argmax(const float *logits, int n);

#endif
