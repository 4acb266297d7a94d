#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* xoshiro256** seeded by splitmix64 (public-domain algorithms). */
static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t *s)
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* uniform in [0, 1) with 53 random bits */
static double uniform01(uint64_t *s)
{
    return (double)(xoshiro_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

mr_status mr_sampler_init(mr_sampler *s, const mr_sampling_params *p)
{
    if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
        return mr_fail(MR_EINVAL, "temperature must be a finite number >= 0 (got %g)",
                       (double)p->temperature);
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return mr_fail(MR_EINVAL, "top_p must be in (0, 1] (got %g)", (double)p->top_p);
    if (p->top_k < 0) return mr_fail(MR_EINVAL, "top_k must be >= 0 (got %d)", p->top_k);
    s->params = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng_state[i] = splitmix64(&x);
    return MR_OK;
}

int32_t mr_argmax(const float *logits, int n)
{
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (logits[i] > logits[best]) best = i;
    return best;
}

typedef struct {
    float value;
    int32_t id;
} scored;

static int by_value_desc(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->value != y->value) return x->value > y->value ? -1 : 1;
    return x->id < y->id ? -1 : (x->id > y->id);
}

void mr_sampler_draw(mr_sampler *s, mr_sample_row *row)
{
    const mr_sampling_params *p = &s->params;
    row->temperature = p->temperature;
    row->top_p = p->top_p;
    row->top_k = p->top_k;
    row->pad = 0;
    row->u = p->temperature == 0.0f ? 0.0 : uniform01(s->rng_state);
}

int32_t mr_sample_pick(const float *logits, int vocab, const mr_sample_row *row, void *scratch)
{
    scored *c = scratch;
    for (int i = 0; i < vocab; i++) {
        c[i].value = logits[i] / row->temperature;
        c[i].id = i;
    }
    /* candidates sorted by scaled logit, descending; top-k keeps a prefix */
    qsort(c, (size_t)vocab, sizeof *c, by_value_desc);
    int n = (row->top_k > 0 && row->top_k < vocab) ? row->top_k : vocab;
    /* softmax over the kept candidates */
    double sum = 0.0;
    float max = c[0].value;
    for (int i = 0; i < n; i++) {
        c[i].value = (float)exp((double)c[i].value - max);
        sum += c[i].value;
    }
    for (int i = 0; i < n; i++) c[i].value = (float)(c[i].value / sum);
    /* top-p: smallest prefix whose mass reaches top_p (at least one) */
    if (row->top_p < 1.0f) {
        double cum = 0.0;
        int keep = 0;
        while (keep < n) {
            cum += c[keep].value;
            keep++;
            if (cum >= row->top_p) break;
        }
        n = keep;
    }
    double mass = 0.0;
    for (int i = 0; i < n; i++) mass += c[i].value;
    double r = row->u * mass;
    double acc = 0.0;
    for (int i = 0; i < n; i++) {
        acc += c[i].value;
        if (r < acc) return c[i].id;
    }
    return c[n - 1].id;
}

mr_status mr_sampler_next(mr_sampler *s, const float *logits, int vocab, int32_t *token)
{
    mr_sample_row row;
    mr_sampler_draw(s, &row);
    if (row.temperature == 0.0f) {
        *token = mr_argmax(logits, vocab);
        return MR_OK;
    }
    scored *c = malloc(sizeof(scored) * (size_t)vocab);
    if (!c) return mr_fail(MR_ENOMEM, "sampler: out of memory");
    *token = mr_sample_pick(logits, vocab, &row, c);
    free(c);
    return MR_OK;
}
