/* tests/engine/test_engine.c — the engine's own invariants (the numpy
 * reference checks the math itself, see tests/ref/check_generate.py):
 * incremental decode equals full recompute, batching never changes a
 * sequence's result, KV paging is all-or-nothing, sampling is deterministic. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/engine.h"
#include "model/model.h"
#include "model/sampler.h"
#include "model/synth.h"

static mr_model tiny;

static int setup_model(void **state)
{
    (void)state;
    /* dir NULL = the built-in tiny preset, the same model `generate` uses */
    mr_status st = mr_model_load(NULL, NULL, NULL, &tiny);
    if (st != MR_OK) fprintf(stderr, "load: %s\n", mr_last_error());
    return st == MR_OK ? 0 : -1;
}

static int teardown_model(void **state)
{
    (void)state;
    mr_model_free(&tiny);
    return 0;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0.0f;
    for (size_t i = 0; i < n; i++) m = fmaxf(m, fabsf(a[i] - b[i]));
    return m;
}

/* Logits of every position of ids[0..n) in one causal pass over a fresh cache. */
static void full_pass(mr_engine *e, mr_kv_pool *pool, const int32_t *ids, int n, float *logits)
{
    mr_kv_seq seq;
    mr_kv_seq_init(&seq, pool);
    assert_int_equal(mr_kv_seq_reserve(&seq, n), MR_OK);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    mr_kv_seq **seqs = malloc(sizeof(mr_kv_seq *) * (size_t)n);
    for (int i = 0; i < n; i++) {
        pos[i] = i;
        seqs[i] = &seq;
    }
    mr_batch b = {n, ids, pos, seqs, NULL};
    assert_int_equal(mr_engine_forward(e, &b, logits), MR_OK);
    assert_int_equal(mr_kv_seq_release(&seq), MR_OK);
    free(pos);
    free(seqs);
}

static void check_incremental_equals_full_recompute(mr_attn_mode attn)
{
    const mr_config *c = &tiny.cfg;
    const int V = c->vocab_size, S = 5, G = 12, L = S + G;
    mr_engine_opts opts = {.attn = attn};
    mr_engine *e = NULL;
    mr_kv_pool *pool = NULL;
    assert_int_equal(mr_engine_create(c, &tiny.weights, &opts, &e), MR_OK);
    assert_int_equal(mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 4, 64, &pool),
                     MR_OK);
    int32_t ids[64] = {3, 141, 59, 26, 53};
    float *inc = malloc(sizeof(float) * (size_t)L * V);
    float *full = malloc(sizeof(float) * (size_t)L * V);

    /* prefill a chunk of S, then one token at a time (block size 4 so the
     * sequence crosses several KV blocks) */
    mr_kv_seq seq;
    mr_kv_seq_init(&seq, pool);
    assert_int_equal(mr_kv_seq_reserve(&seq, L), MR_OK);
    int32_t pos[64];
    mr_kv_seq *seqs[64];
    for (int i = 0; i < L; i++) {
        pos[i] = i;
        seqs[i] = &seq;
    }
    mr_batch prefill = {S, ids, pos, seqs, NULL};
    assert_int_equal(mr_engine_forward(e, &prefill, inc), MR_OK);
    for (int i = S; i < L; i++) {
        ids[i] = mr_argmax(inc + (size_t)(i - 1) * V, V);
        mr_batch step = {1, ids + i, pos + i, seqs + i, NULL};
        assert_int_equal(mr_engine_forward(e, &step, inc + (size_t)i * V), MR_OK);
    }
    assert_int_equal(mr_kv_seq_release(&seq), MR_OK);

    full_pass(e, pool, ids, L, full);
    float diff = max_abs_diff(inc, full, (size_t)L * V);
    printf("attn %s: max |incremental - full| over %d positions = %.3g\n",
           attn == MR_ATTN_ABSORB ? "absorb" : "naive", L, (double)diff);
    assert_true(diff < 1e-4f);
    assert_int_equal(mr_kv_pool_free_blocks(pool), 64);
    free(inc);
    free(full);
    mr_kv_pool_destroy(pool);
    mr_engine_destroy(e);
}

static void test_incremental_decode_equals_full_recompute_absorb(void **state)
{
    (void)state;
    check_incremental_equals_full_recompute(MR_ATTN_ABSORB);
}

static void test_incremental_decode_equals_full_recompute_naive(void **state)
{
    (void)state;
    check_incremental_equals_full_recompute(MR_ATTN_NAIVE);
}

static void test_absorbed_and_naive_attention_agree(void **state)
{
    (void)state;
    const mr_config *c = &tiny.cfg;
    const int V = c->vocab_size, S = 9;
    int32_t ids[9] = {7, 7, 200, 1, 0, 99, 12, 255, 31};
    float *a = malloc(sizeof(float) * S * V), *n = malloc(sizeof(float) * S * V);
    mr_kv_pool *pool = NULL;
    assert_int_equal(mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 16, 8, &pool),
                     MR_OK);
    mr_engine *ea = NULL, *en = NULL;
    mr_engine_opts oa = {.attn = MR_ATTN_ABSORB}, on = {.attn = MR_ATTN_NAIVE};
    assert_int_equal(mr_engine_create(c, &tiny.weights, &oa, &ea), MR_OK);
    assert_int_equal(mr_engine_create(c, &tiny.weights, &on, &en), MR_OK);
    full_pass(ea, pool, ids, S, a);
    full_pass(en, pool, ids, S, n);
    assert_true(max_abs_diff(a, n, (size_t)S * V) < 1e-4f);
    mr_engine_destroy(ea);
    mr_engine_destroy(en);
    mr_kv_pool_destroy(pool);
    free(a);
    free(n);
}

/* Three prompts of different lengths decoded together in one continuous
 * batch produce exactly the greedy tokens each produces alone. */
static void test_batched_prompts_match_each_prompt_alone(void **state)
{
    (void)state;
    const mr_config *c = &tiny.cfg;
    const int V = c->vocab_size, n_seq = 3, G = 6;
    const int32_t p0[] = {5, 9, 13}, p1[] = {100, 2, 77, 31, 8, 250, 3}, p2[] = {42};
    const int32_t *prompts[] = {p0, p1, p2};
    const int lens[] = {3, 7, 1};
    int32_t alone[3][8], together[3][8];
    mr_engine *e = NULL;
    mr_kv_pool *pool = NULL;
    assert_int_equal(mr_engine_create(c, &tiny.weights, NULL, &e), MR_OK);
    assert_int_equal(mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 4, 32, &pool),
                     MR_OK);
    float *logits = malloc(sizeof(float) * 32 * V);

    for (int s = 0; s < n_seq; s++) { /* alone */
        mr_kv_seq seq;
        mr_kv_seq_init(&seq, pool);
        assert_int_equal(mr_kv_seq_reserve(&seq, lens[s] + G), MR_OK);
        int32_t pos[16];
        mr_kv_seq *seqs[16];
        for (int i = 0; i < 16; i++) {
            pos[i] = i;
            seqs[i] = &seq;
        }
        mr_batch b = {lens[s], prompts[s], pos, seqs, NULL};
        assert_int_equal(mr_engine_forward(e, &b, logits), MR_OK);
        alone[s][0] = mr_argmax(logits + (size_t)(lens[s] - 1) * V, V);
        for (int g = 1; g < G; g++) {
            mr_batch step = {1, &alone[s][g - 1], &pos[lens[s] + g - 1], seqs, NULL};
            assert_int_equal(mr_engine_forward(e, &step, logits), MR_OK);
            alone[s][g] = mr_argmax(logits, V);
        }
        assert_int_equal(mr_kv_seq_release(&seq), MR_OK);
    }

    /* together: one prefill batch holding all prompts, then decode steps
     * with one token of every sequence per batch */
    mr_kv_seq seq[3];
    int32_t ids[32], pos[32];
    mr_kv_seq *seqs[32];
    uint8_t want[32];
    int n = 0;
    for (int s = 0; s < n_seq; s++) {
        mr_kv_seq_init(&seq[s], pool);
        assert_int_equal(mr_kv_seq_reserve(&seq[s], lens[s] + G), MR_OK);
        for (int i = 0; i < lens[s]; i++, n++) {
            ids[n] = prompts[s][i];
            pos[n] = i;
            seqs[n] = &seq[s];
            want[n] = i == lens[s] - 1;
        }
    }
    mr_batch b = {n, ids, pos, seqs, want};
    assert_int_equal(mr_engine_forward(e, &b, logits), MR_OK);
    for (int s = 0; s < n_seq; s++) together[s][0] = mr_argmax(logits + (size_t)s * V, V);
    for (int g = 1; g < G; g++) {
        for (int s = 0; s < n_seq; s++) {
            ids[s] = together[s][g - 1];
            pos[s] = lens[s] + g - 1;
            seqs[s] = &seq[s];
        }
        mr_batch step = {n_seq, ids, pos, seqs, NULL};
        assert_int_equal(mr_engine_forward(e, &step, logits), MR_OK);
        for (int s = 0; s < n_seq; s++) together[s][g] = mr_argmax(logits + (size_t)s * V, V);
    }
    for (int s = 0; s < n_seq; s++) {
        assert_memory_equal(alone[s], together[s], sizeof(int32_t) * G);
        assert_int_equal(mr_kv_seq_release(&seq[s]), MR_OK);
    }
    free(logits);
    mr_kv_pool_destroy(pool);
    mr_engine_destroy(e);
}

static void test_forward_rejects_out_of_range_token_and_position(void **state)
{
    (void)state;
    const mr_config *c = &tiny.cfg;
    mr_engine *e = NULL;
    mr_kv_pool *pool = NULL;
    assert_int_equal(mr_engine_create(c, &tiny.weights, NULL, &e), MR_OK);
    assert_int_equal(mr_kv_pool_create(c->num_hidden_layers, mr_config_latent_dim(c), 16, 2, &pool),
                     MR_OK);
    mr_kv_seq seq;
    mr_kv_seq_init(&seq, pool);
    assert_int_equal(mr_kv_seq_reserve(&seq, 4), MR_OK);
    mr_kv_seq *sp = &seq;
    float logits[512];
    int32_t bad_id = c->vocab_size, pos0 = 0;
    mr_batch b1 = {1, &bad_id, &pos0, &sp, NULL};
    assert_int_equal(mr_engine_forward(e, &b1, logits), MR_ERANGE);
    assert_non_null(strstr(mr_last_error(), "vocab_size"));
    int32_t id = 3, far = 20; /* not reserved */
    mr_batch b2 = {1, &id, &far, &sp, NULL};
    assert_int_equal(mr_engine_forward(e, &b2, logits), MR_EINVAL);
    assert_non_null(strstr(mr_last_error(), "not reserved"));
    mr_kv_seq_release(&seq);
    mr_kv_pool_destroy(pool);
    mr_engine_destroy(e);
}

static void test_kv_pool_alloc_is_all_or_nothing_and_release_is_checked(void **state)
{
    (void)state;
    mr_kv_pool *pool = NULL;
    assert_int_equal(mr_kv_pool_create(2, 8, 4, 3, &pool), MR_OK);
    mr_kv_seq a, b;
    mr_kv_seq_init(&a, pool);
    mr_kv_seq_init(&b, pool);
    assert_int_equal(mr_kv_seq_reserve(&a, 9), MR_OK); /* 3 blocks */
    assert_int_equal(mr_kv_pool_free_blocks(pool), 0);
    assert_int_equal(mr_kv_seq_reserve(&b, 1), MR_ENOMEM);
    assert_non_null(strstr(mr_last_error(), "exhausted"));
    assert_int_equal(b.n_blocks, 0);
    int32_t first = a.blocks[0];
    assert_int_equal(mr_kv_seq_release(&a), MR_OK);
    assert_int_equal(mr_kv_pool_free_blocks(pool), 3);
    assert_int_equal(mr_kv_seq_release(&a), MR_OK); /* idempotent */
    assert_int_equal(mr_kv_pool_release(pool, 1, &first), MR_EINTERNAL); /* double free */
    assert_int_equal(mr_kv_pool_free_blocks(pool), 3);
    /* rows of different (layer, pos) never alias */
    assert_int_equal(mr_kv_seq_reserve(&b, 8), MR_OK);
    assert_ptr_not_equal(mr_kv_seq_row(&b, 0, 5), mr_kv_seq_row(&b, 1, 5));
    assert_ptr_not_equal(mr_kv_seq_row(&b, 0, 3), mr_kv_seq_row(&b, 0, 4));
    mr_kv_seq_release(&b);
    mr_kv_pool_destroy(pool);
}

static void test_sampler_same_seed_same_tokens_and_greedy_limits(void **state)
{
    (void)state;
    float logits[64];
    for (int i = 0; i < 64; i++) logits[i] = sinf((float)i * 0.7f) * 2.0f;
    mr_sampling_params p = {.temperature = 1.0f, .top_p = 0.9f, .top_k = 20, .seed = 7};
    mr_sampler a, b;
    assert_int_equal(mr_sampler_init(&a, &p), MR_OK);
    assert_int_equal(mr_sampler_init(&b, &p), MR_OK);
    int differs_from_argmax = 0;
    for (int i = 0; i < 50; i++) {
        int32_t ta, tb;
        mr_sampler_next(&a, logits, 64, &ta);
        mr_sampler_next(&b, logits, 64, &tb);
        assert_int_equal(ta, tb);
        differs_from_argmax += ta != mr_argmax(logits, 64);
    }
    assert_true(differs_from_argmax > 0); /* it really samples */
    /* top_k 1 and a tiny top_p both reduce to greedy */
    mr_sampling_params k1 = {.temperature = 1.5f, .top_p = 1.0f, .top_k = 1, .seed = 3};
    mr_sampling_params p0 = {.temperature = 1.5f, .top_p = 1e-6f, .top_k = 0, .seed = 3};
    mr_sampler s1, s2;
    assert_int_equal(mr_sampler_init(&s1, &k1), MR_OK);
    assert_int_equal(mr_sampler_init(&s2, &p0), MR_OK);
    for (int i = 0; i < 10; i++) {
        int32_t t1, t2;
        mr_sampler_next(&s1, logits, 64, &t1);
        mr_sampler_next(&s2, logits, 64, &t2);
        assert_int_equal(t1, mr_argmax(logits, 64));
        assert_int_equal(t2, mr_argmax(logits, 64));
    }
    mr_sampling_params bad = {.temperature = -1.0f, .top_p = 1.0f};
    assert_int_equal(mr_sampler_init(&s1, &bad), MR_EINVAL);
    assert_non_null(strstr(mr_last_error(), "temperature"));
}

/* sample_rows (the backend's sampler: mr_sampler_draw on the host, the pick
 * on the backend) gives mr_sampler_next's tokens, row by row, for a batch
 * mixing greedy and sampled rows with ties planted, over many steps (the
 * RNG advances identically on both paths). */
static void test_backend_sample_rows_match_sampler_next(void **state)
{
    (void)state;
    enum { ROWS = 5, V = 300, STEPS = 40 };
    const mr_sampling_params params[ROWS] = {
        {.temperature = 0.0f, .top_p = 1.0f, .top_k = 0, .seed = 1},    /* greedy */
        {.temperature = 0.8f, .top_p = 0.9f, .top_k = 0, .seed = 2},
        {.temperature = 1.3f, .top_p = 1.0f, .top_k = 7, .seed = 3},
        {.temperature = 1.0f, .top_p = 0.5f, .top_k = 40, .seed = 4},
        {.temperature = 2.0f, .top_p = 1.0f, .top_k = 0, .seed = 5},
    };
    mr_sampler host[ROWS], dev[ROWS];
    for (int r = 0; r < ROWS; r++) {
        assert_int_equal(mr_sampler_init(&host[r], &params[r]), MR_OK);
        assert_int_equal(mr_sampler_init(&dev[r], &params[r]), MR_OK);
    }
    const mr_kernels *k = mr_kernels_cpu();
    static float logits[ROWS * V];
    int sampled_not_argmax = 0;
    for (int step = 0; step < STEPS; step++) {
        for (int i = 0; i < ROWS * V; i++)
            logits[i] = sinf((float)(i * 7 + step * 13) * 0.37f) * 3.0f;
        for (int r = 0; r < ROWS; r++) logits[r * V + 11] = logits[r * V + 200]; /* a tie */
        mr_sample_row draws[ROWS];
        int32_t got[ROWS];
        for (int r = 0; r < ROWS; r++) mr_sampler_draw(&dev[r], &draws[r]);
        k->sample_rows(logits, ROWS, V, draws, got);
        for (int r = 0; r < ROWS; r++) {
            int32_t want;
            assert_int_equal(mr_sampler_next(&host[r], logits + r * V, V, &want), MR_OK);
            assert_int_equal(got[r], want);
            sampled_not_argmax += got[r] != mr_argmax(logits + r * V, V);
        }
    }
    assert_true(sampled_not_argmax > 0); /* the sampled rows really sample */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_incremental_decode_equals_full_recompute_absorb),
        cmocka_unit_test(test_incremental_decode_equals_full_recompute_naive),
        cmocka_unit_test(test_absorbed_and_naive_attention_agree),
        cmocka_unit_test(test_batched_prompts_match_each_prompt_alone),
        cmocka_unit_test(test_forward_rejects_out_of_range_token_and_position),
        cmocka_unit_test(test_kv_pool_alloc_is_all_or_nothing_and_release_is_checked),
        cmocka_unit_test(test_sampler_same_seed_same_tokens_and_greedy_limits),
        cmocka_unit_test(test_backend_sample_rows_match_sampler_next),
    };
    return cmocka_run_group_tests(tests, setup_model, teardown_model);
}
