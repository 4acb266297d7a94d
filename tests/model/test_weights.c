/* tests/model/test_weights.c — loading HF-named tensors into mr_weights
 * (model/weights.h): names, shapes, missing/unexpected tensors, the expert
 * filter, fp8/bf16 conversion against the f32 twin of a synth model. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/config.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "model/weights.h"
#include "model_test_util.h"

typedef struct fixture {
    char *dir;
    char *src;   /* synth model */
    char *dst;   /* edited copy */
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = mt_make_tempdir();
    f->src = strdup(mt_path(f->dir, "src"));
    f->dst = strdup(mt_path(f->dir, "dst"));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    mt_remove_tree(f->dir);
    free(f->dir);
    free(f->src);
    free(f->dst);
    free(f);
    return 0;
}

typedef struct loaded {
    mr_config cfg;
    mr_st_archive *archive;
    mr_weights w;
} loaded;

static mr_status try_load(const char *dir, mr_expert_filter filter, void *ctx, loaded *out)
{
    memset(out, 0, sizeof *out);
    MR_TRY(mr_config_load(mt_path(dir, "config.json"), &out->cfg));
    MR_TRY(mr_st_open_dir(dir, &out->archive));
    return mr_weights_load(&out->cfg, out->archive, filter, ctx, &out->w);
}

static void load_ok(const char *dir, mr_expert_filter filter, void *ctx, loaded *out)
{
    if (try_load(dir, filter, ctx, out) != MR_OK)
        fail_msg("%s: %s", dir, mr_last_error());
}

static void unload(loaded *l)
{
    mr_weights_free(&l->w);
    mr_st_close(l->archive);
    memset(l, 0, sizeof *l);
}

/* Expect loading `dir` to fail naming every non-NULL needle; also via mr_weights_check. */
static void expect_load_error(const char *dir, const char *n1, const char *n2, const char *n3)
{
    loaded l;
    mr_status status = try_load(dir, NULL, NULL, &l);
    if (status == MR_OK)
        fail_msg("loaded a bad model (expected \"%s\")", n1);
    const char *needles[3] = {n1, n2, n3};
    for (int i = 0; i < 3; i++)
        if (needles[i] && !strstr(mr_last_error(), needles[i]))
            fail_msg("message \"%s\" lacks \"%s\"", mr_last_error(), needles[i]);
    /* the cheap check agrees (when the failure is structural, not in the data) */
    if (l.archive && !strstr(mr_last_error(), "NaN"))
        assert_int_not_equal(mr_weights_check(&l.cfg, l.archive), MR_OK);
    assert_null(l.w.layers);
    unload(&l);
}

/* Rewrite f->src as a single-file f->dst through `edit` on its tensor list. */
typedef size_t (*edit_fn)(mt_tensor *tensors, size_t n, void *ctx);

static void rewrite(const fixture *f, edit_fn edit, void *ctx)
{
    mr_st_archive *archive = NULL;
    assert_int_equal(mr_st_open_dir(f->src, &archive), MR_OK);
    size_t n = 0;
    mt_tensor *all = mt_tensors_from_archive(archive, &n);
    mt_tensor *tensors = calloc(n + 8, sizeof *tensors); /* room to add */
    memcpy(tensors, all, n * sizeof *tensors);
    n = edit(tensors, n, ctx);
    mt_copy_config(f->src, f->dst);
    mt_write_safetensors(mt_path(f->dst, "model.safetensors"), tensors, n);
    free(tensors);
    free(all);
    mr_st_close(archive);
}

static mt_tensor *find(mt_tensor *tensors, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tensors[i].name, name) == 0)
            return &tensors[i];
    fail_msg("no tensor %s to edit", name);
    return NULL;
}

static size_t drop_named(mt_tensor *tensors, size_t n, void *ctx)
{
    mt_tensor *t = find(tensors, n, ctx);
    *t = tensors[n - 1];
    return n - 1;
}

static size_t transpose_named(mt_tensor *tensors, size_t n, void *ctx)
{
    mt_tensor *t = find(tensors, n, ctx);
    int64_t rows = t->shape[0];
    t->shape[0] = t->shape[1];
    t->shape[1] = rows;
    return n;
}

static const float extra_data[8] = {0};

static size_t add_named(mt_tensor *tensors, size_t n, void *ctx)
{
    mt_tensor *t = &tensors[n];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", (const char *)ctx);
    t->dtype = "F32";
    t->ndim = 2;
    t->shape[0] = 2;
    t->shape[1] = 4;
    t->data = (const uint8_t *)extra_data;
    t->nbytes = sizeof extra_data;
    return n + 1;
}

static void test_tiny_f32_loads_every_tensor_with_its_shape(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 9);
    loaded l;
    load_ok(f->src, NULL, NULL, &l);
    const mr_weights *w = &l.w;
    assert_int_equal(w->n_layers, 3);
    assert_int_equal(w->n_experts, 16);
    assert_non_null(w->embed);
    assert_non_null(w->final_norm);
    assert_int_equal(w->lm_head.rows, 256);
    assert_int_equal(w->lm_head.cols, 160);
    const mr_layer_weights *dense = &w->layers[0], *moe = &w->layers[2];
    assert_false(dense->is_moe);
    assert_true(moe->is_moe);
    assert_int_equal(dense->dense.gate.rows, 256);
    assert_int_equal(dense->dense.down.rows, 160);
    assert_int_equal(dense->dense.down.cols, 256);
    assert_null(dense->experts);
    assert_int_equal(moe->q_a.rows, 48);
    assert_int_equal(moe->q_b.rows, 96);
    assert_null(moe->q.w);
    assert_int_equal(moe->kv_a.rows, 40);
    assert_int_equal(moe->kv_b.rows, 4 * 32);
    assert_int_equal(moe->kv_b.cols, 32);
    assert_int_equal(moe->o.rows, 160);
    assert_int_equal(moe->o.cols, 64);
    assert_int_equal(moe->gate.rows, 16);
    assert_non_null(moe->gate_bias);
    assert_non_null(moe->experts[15].down.w);
    assert_int_equal(moe->experts[15].down.rows, 160);
    assert_int_equal(moe->experts[15].down.cols, 48);
    assert_int_equal(moe->shared.gate.rows, 48);

    /* values are the file's, and n_bytes counts every float held */
    uint64_t total = 0;
    for (size_t i = 0; i < mr_st_count(l.archive); i++)
        total += mr_st_at(l.archive, i)->nbytes;
    assert_int_equal(w->n_bytes, total);
    const mr_tensor_info *t = mr_st_find(l.archive, "model.layers.2.mlp.experts.7.up_proj.weight");
    assert_memory_equal(moe->experts[7].up.w, t->data, t->nbytes);
    t = mr_st_find(l.archive, "model.layers.2.self_attn.kv_a_layernorm.weight");
    assert_memory_equal(moe->kv_a_norm, t->data, t->nbytes);
    unload(&l);
}

static void test_v2_presets_use_direct_q_proj_and_no_bias(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny-v2", MR_SYNTH_BF16, 2, 9);
    loaded l;
    load_ok(f->src, NULL, NULL, &l);
    const mr_layer_weights *layer = &l.w.layers[1];
    assert_non_null(layer->q.w);
    assert_int_equal(layer->q.rows, 96);
    assert_int_equal(layer->q.cols, 160);
    assert_null(layer->q_a.w);
    assert_null(layer->q_b.w);
    assert_null(layer->q_a_norm);
    assert_null(layer->gate_bias);
    assert_int_equal(layer->shared.up.rows, 2 * 48);
    unload(&l);

    mt_synth(f->dst, "tiny-lite", MR_SYNTH_FP8, 1, 9);
    load_ok(f->dst, NULL, NULL, &l);
    assert_int_equal(l.w.n_layers, 2);
    assert_non_null(l.w.layers[1].experts[0].gate.w);
    unload(&l);
}

static void test_missing_tensor_is_named(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    rewrite(f, drop_named, "model.layers.2.self_attn.kv_b_proj.weight");
    expect_load_error(f->dst, "missing tensor model.layers.2.self_attn.kv_b_proj.weight", NULL,
                      NULL);
    rewrite(f, drop_named, "lm_head.weight");
    expect_load_error(f->dst, "missing tensor lm_head.weight", NULL, NULL);
}

static void test_unexpected_tensor_is_named(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    rewrite(f, add_named, "model.layers.1.mlp.bogus.weight");
    expect_load_error(f->dst, "unexpected tensor model.layers.1.mlp.bogus.weight", NULL, NULL);
    /* a scale next to an unquantized weight is not consumed */
    rewrite(f, add_named, "model.layers.0.self_attn.o_proj.weight_scale_inv");
    expect_load_error(f->dst, "unexpected tensor model.layers.0.self_attn.o_proj.weight_scale_inv",
                      NULL, NULL);
    /* layer 2 exists: not an MTP layer */
    rewrite(f, add_named, "model.layers.2.eh_proj.weight");
    expect_load_error(f->dst, "unexpected tensor model.layers.2.eh_proj.weight", NULL, NULL);
}

static void test_tensors_of_layers_past_num_hidden_layers_are_ignored(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    rewrite(f, add_named, "model.layers.3.eh_proj.weight"); /* MTP layer of a 3-layer model */
    loaded l;
    load_ok(f->dst, NULL, NULL, &l);
    assert_int_equal(l.w.n_layers, 3);
    unload(&l);
}

static void test_shape_mismatch_names_tensor_and_both_shapes(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    rewrite(f, transpose_named, "model.layers.1.self_attn.q_a_proj.weight");
    expect_load_error(f->dst, "model.layers.1.self_attn.q_a_proj.weight", "[160, 48]",
                      "expected [48, 160]");
}

static bool even_experts_of_layer_1(void *ctx, int layer, int expert)
{
    int *calls = ctx;
    (*calls)++;
    return layer == 1 && expert % 2 == 0;
}

static void test_filter_leaves_rejected_experts_unloaded(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    loaded all, some;
    int calls = 0;
    load_ok(f->src, NULL, NULL, &all);
    load_ok(f->src, even_experts_of_layer_1, &calls, &some);
    assert_int_equal(calls, 2 * 16);
    for (int layer = 1; layer < 3; layer++) {
        for (int e = 0; e < 16; e++) {
            const mr_mlp *expert = &some.w.layers[layer].experts[e];
            bool want = layer == 1 && e % 2 == 0;
            assert_int_equal(expert->gate.w != NULL, want);
            assert_int_equal(expert->up.w != NULL, want);
            assert_int_equal(expert->down.w != NULL, want);
            assert_int_equal(expert->down.rows, 160); /* shapes known either way */
            assert_int_equal(expert->down.cols, 48);
        }
        assert_non_null(some.w.layers[layer].shared.gate.w); /* not routed: always loaded */
        assert_non_null(some.w.layers[layer].gate.w);
    }
    uint64_t expert_bytes = 3ull * 48 * 160 * sizeof(float);
    assert_int_equal(some.w.n_bytes, all.w.n_bytes - (32 - 8) * expert_bytes);
    unload(&all);
    unload(&some);
}

static void test_routed_only_load_holds_just_the_accepted_experts(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    loaded l;
    int calls = 0;
    memset(&l, 0, sizeof l);
    assert_int_equal(mr_config_load(mt_path(f->src, "config.json"), &l.cfg), MR_OK);
    assert_int_equal(mr_st_open_dir(f->src, &l.archive), MR_OK);
    assert_int_equal(mr_weights_load_routed(&l.cfg, l.archive, even_experts_of_layer_1, &calls,
                                            &l.w), MR_OK);
    assert_null(l.w.embed);
    assert_null(l.w.lm_head.w);
    assert_null(l.w.final_norm);
    for (int layer = 0; layer < 3; layer++) {
        assert_null(l.w.layers[layer].attn_norm);
        assert_null(l.w.layers[layer].kv_b.w);
        assert_int_equal(l.w.layers[layer].kv_b.cols, 32); /* still shape-checked */
    }
    assert_null(l.w.layers[1].shared.gate.w);
    assert_null(l.w.layers[1].gate.w);
    assert_non_null(l.w.layers[1].experts[0].gate.w);
    assert_null(l.w.layers[1].experts[1].gate.w);
    assert_int_equal(l.w.n_bytes, 8ull * 3 * 48 * 160 * sizeof(float)); /* 8 experts, nothing else */
    unload(&l);
}

static bool no_experts(void *ctx, int layer, int expert)
{
    (void)ctx;
    (void)layer;
    (void)expert;
    return false;
}

static void test_filter_still_checks_skipped_experts(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 1);
    rewrite(f, transpose_named, "model.layers.2.mlp.experts.3.gate_proj.weight");
    loaded l;
    assert_int_not_equal(try_load(f->dst, no_experts, NULL, &l), MR_OK);
    assert_non_null(strstr(mr_last_error(), "model.layers.2.mlp.experts.3.gate_proj.weight"));
    unload(&l);
}

/* Every buffer of a loaded model in a fixed order. */
typedef struct buf_ref {
    const float *p;
    size_t n;
} buf_ref;

static size_t add_mat(buf_ref *out, size_t k, const mr_mat *m)
{
    out[k].p = m->w;
    out[k].n = (size_t)m->rows * (size_t)m->cols;
    return k + 1;
}

static size_t add_vec(buf_ref *out, size_t k, const float *p, int n)
{
    out[k].p = p;
    out[k].n = (size_t)n;
    return k + 1;
}

static size_t list_buffers(const mr_config *c, const mr_weights *w, buf_ref *out)
{
    size_t k = 0;
    int dim = c->hidden_size;
    k = add_vec(out, k, w->embed, c->vocab_size * dim);
    k = add_vec(out, k, w->final_norm, dim);
    k = add_mat(out, k, &w->lm_head);
    for (int l = 0; l < w->n_layers; l++) {
        const mr_layer_weights *L = &w->layers[l];
        k = add_vec(out, k, L->attn_norm, dim);
        k = add_vec(out, k, L->ffn_norm, dim);
        k = add_mat(out, k, &L->q_a);
        k = add_vec(out, k, L->q_a_norm, c->q_lora_rank);
        k = add_mat(out, k, &L->q_b);
        k = add_mat(out, k, &L->q);
        k = add_mat(out, k, &L->kv_a);
        k = add_vec(out, k, L->kv_a_norm, c->kv_lora_rank);
        k = add_mat(out, k, &L->kv_b);
        k = add_mat(out, k, &L->o);
        const mr_mlp *mlps[20];
        int n_mlps = 0;
        if (!L->is_moe) {
            mlps[n_mlps++] = &L->dense;
        } else {
            k = add_mat(out, k, &L->gate);
            k = add_vec(out, k, L->gate_bias, L->gate_bias ? c->n_routed_experts : 0);
            mlps[n_mlps++] = &L->shared;
            for (int e = 0; e < c->n_routed_experts; e++)
                mlps[n_mlps++] = &L->experts[e];
        }
        for (int i = 0; i < n_mlps; i++) {
            k = add_mat(out, k, &mlps[i]->gate);
            k = add_mat(out, k, &mlps[i]->up);
            k = add_mat(out, k, &mlps[i]->down);
        }
    }
    return k;
}

/* fp8 (E4M3, 3 mantissa bits): |q - x| <= |x|/16 in the normal range, and
 * <= scale * 2^-10 in the subnormal range, scale <= amax/448. */
static void test_fp8_dequant_is_within_fp8_rounding_of_the_f32_twin(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_F32, 1, 21);
    mt_synth(f->dst, "tiny", MR_SYNTH_FP8, 3, 21);
    loaded a, q;
    load_ok(f->src, NULL, NULL, &a);
    load_ok(f->dst, NULL, NULL, &q);
    static buf_ref ra[4096], rq[4096];
    size_t n = list_buffers(&a.cfg, &a.w, ra);
    assert_int_equal(list_buffers(&q.cfg, &q.w, rq), n);
    size_t exact = 0, quantized = 0;
    double worst = 0;
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(ra[i].n, rq[i].n);
        assert_int_equal(ra[i].p == NULL, rq[i].p == NULL);
        if (!ra[i].p)
            continue;
        /* BF16 storage is exact bf16 rounding; the F32 bias is identical. */
        bool bf16 = true, same = true;
        float amax = 0;
        for (size_t j = 0; j < ra[i].n; j++) {
            bf16 &= rq[i].p[j] == mr_bf16_to_f32(mr_f32_to_bf16(ra[i].p[j]));
            same &= rq[i].p[j] == ra[i].p[j];
            amax = fmaxf(amax, fabsf(ra[i].p[j]));
        }
        if (bf16 || same) {
            exact++;
            continue;
        }
        quantized++;
        for (size_t j = 0; j < ra[i].n; j++) {
            double x = ra[i].p[j], err = fabs((double)rq[i].p[j] - x);
            double bound = fabs(x) / 16.0 + amax / 448.0 / 1024.0 + 1e-7 * fabs(x);
            if (err > bound)
                fail_msg("buffer %zu [%zu]: fp8 %g vs f32 %g", i, j, (double)rq[i].p[j], x);
            if (fabs(x) > amax / 8 && err / fabs(x) > worst)
                worst = err / fabs(x);
        }
    }
    /* 5*3 attention + 3 dense + 2*17*3 expert matrices are fp8; the grid is used */
    assert_int_equal(quantized, 5 * 3 + 3 + 2 * 17 * 3);
    assert_true(exact > 0);
    assert_true(worst > 1.0 / 64 && worst <= 1.0 / 16 + 1e-6);
    unload(&a);
    unload(&q);
}

static void test_fp8_checkpoint_needs_quantization_config(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_FP8, 1, 1);
    mt_synth(f->dst, "tiny", MR_SYNTH_F32, 1, 1);
    mt_copy_config(f->dst, f->src); /* f32 config (no quantization_config) over fp8 weights */
    expect_load_error(f->src, "F8_E4M3", "quantization_config", NULL);
}

static void test_fp8_weight_without_scale_is_named(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_FP8, 1, 1);
    rewrite(f, drop_named, "model.layers.1.self_attn.o_proj.weight_scale_inv");
    expect_load_error(f->dst, "missing tensor model.layers.1.self_attn.o_proj.weight_scale_inv",
                      NULL, NULL);
    rewrite(f, transpose_named, "model.layers.0.self_attn.q_a_proj.weight_scale_inv");
    expect_load_error(f->dst, "model.layers.0.self_attn.q_a_proj.weight_scale_inv", "[2, 1]",
                      "expected [1, 2]");
}

typedef struct poison {
    const char *name;
    uint8_t *copy;      /* the edited data, freed by the test */
} poison;

static size_t poison_fp8(mt_tensor *tensors, size_t n, void *ctx)
{
    poison *p = ctx;
    mt_tensor *t = find(tensors, n, p->name);
    p->copy = malloc(t->nbytes);
    memcpy(p->copy, t->data, t->nbytes);
    p->copy[t->shape[1] * 5 + 7] = 0x7F; /* [5, 7] */
    t->data = p->copy;
    return n;
}

static void test_fp8_nan_code_fails_the_load_naming_the_tensor(void **state)
{
    fixture *f = *state;
    mt_synth(f->src, "tiny", MR_SYNTH_FP8, 1, 1);
    poison p = {.name = "model.layers.2.self_attn.kv_b_proj.weight"};
    rewrite(f, poison_fp8, &p);
    free(p.copy);
    /* structure is fine: the cheap check passes, the load finds the NaN */
    loaded l;
    assert_int_equal(mr_config_load(mt_path(f->dst, "config.json"), &l.cfg), MR_OK);
    assert_int_equal(mr_st_open_dir(f->dst, &l.archive), MR_OK);
    assert_int_equal(mr_weights_check(&l.cfg, l.archive), MR_OK);
    mr_st_close(l.archive);
    expect_load_error(f->dst, "model.layers.2.self_attn.kv_b_proj.weight", "NaN", "[5, 7]");
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_tiny_f32_loads_every_tensor_with_its_shape),
        T(test_v2_presets_use_direct_q_proj_and_no_bias),
        T(test_missing_tensor_is_named),
        T(test_unexpected_tensor_is_named),
        T(test_tensors_of_layers_past_num_hidden_layers_are_ignored),
        T(test_shape_mismatch_names_tensor_and_both_shapes),
        T(test_filter_leaves_rejected_experts_unloaded),
        T(test_filter_still_checks_skipped_experts),
        T(test_routed_only_load_holds_just_the_accepted_experts),
        T(test_fp8_dequant_is_within_fp8_rounding_of_the_f32_twin),
        T(test_fp8_checkpoint_needs_quantization_config),
        T(test_fp8_weight_without_scale_is_named),
        T(test_fp8_nan_code_fails_the_load_naming_the_tensor),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
