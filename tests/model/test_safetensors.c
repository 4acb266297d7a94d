/* tests/model/test_safetensors.c — the safetensors reader (model/safetensors.h):
 * hostile files each fail with a message naming the problem; synth output in
 * every dtype/sharding reads back with the right names, dtypes and values. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/safetensors.h"
#include "model/synth.h"
#include "model_test_util.h"

typedef struct fixture {
    char *dir;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    f->dir = mt_make_tempdir();
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    mt_remove_tree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Open f->dir and expect failure whose message contains every needle. */
static void expect_open_error(const fixture *f, const char *needle1, const char *needle2)
{
    mr_st_archive *archive = NULL;
    mr_status status = mr_st_open_dir(f->dir, &archive);
    if (status == MR_OK) {
        mr_st_close(archive);
        fail_msg("opened a bad checkpoint (expected \"%s\")", needle1);
    }
    assert_null(archive);
    if (!strstr(mr_last_error(), needle1) || (needle2 && !strstr(mr_last_error(), needle2)))
        fail_msg("message \"%s\" lacks \"%s\" / \"%s\"", mr_last_error(), needle1,
                 needle2 ? needle2 : "");
}

static void write_single(const fixture *f, const char *header, const void *data, size_t len)
{
    mt_write_raw_safetensors(mt_path(f->dir, "model.safetensors"), header, data, len);
}

static const float four_floats[4] = {1.0f, -2.0f, 0.5f, 3.25f};

static void test_file_shorter_than_8_bytes(void **state)
{
    fixture *f = *state;
    mt_write_file(mt_path(f->dir, "model.safetensors"), "abc", 3);
    expect_open_error(f, "shorter than 8 bytes", "model.safetensors");
}

static void test_header_length_larger_than_file(void **state)
{
    fixture *f = *state;
    uint8_t buf[16] = {0};
    uint64_t len = 1000;
    memcpy(buf, &len, 8);
    memcpy(buf + 8, "{}      ", 8);
    mt_write_file(mt_path(f->dir, "model.safetensors"), buf, sizeof buf);
    expect_open_error(f, "larger than the file", "model.safetensors");
}

static void test_header_length_over_the_cap(void **state)
{
    fixture *f = *state;
    uint8_t buf[16] = {0};
    uint64_t len = (uint64_t)1 << 40;
    memcpy(buf, &len, 8);
    mt_write_file(mt_path(f->dir, "model.safetensors"), buf, sizeof buf);
    expect_open_error(f, "over the cap", NULL);
    len = UINT64_MAX; /* would wrap 8 + len */
    memcpy(buf, &len, 8);
    mt_write_file(mt_path(f->dir, "model.safetensors"), buf, sizeof buf);
    expect_open_error(f, "over the cap", NULL);
}

static void test_header_not_json(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"a\": [1, 2", NULL, 0);
    expect_open_error(f, "not valid JSON", NULL);
    write_single(f, "[1, 2]", NULL, 0);
    expect_open_error(f, "not a JSON object", NULL);
}

static void test_unknown_dtype_is_named(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"dtype\":\"I4\",\"shape\":[2],\"data_offsets\":[0,1]}}", "ab", 1);
    expect_open_error(f, "unsupported dtype I4", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "unsupported dtype F64", "tensor w");
}

static void test_offsets_out_of_range(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,32]}}",
                 four_floats, 16);
    expect_open_error(f, "out of range", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[-16,0]}}",
                 four_floats, 16);
    expect_open_error(f, "out of range", "tensor w");
    /* beyond 2^53: not representable, must not wrap to something small */
    write_single(f,
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],"
                 "\"data_offsets\":[18446744073709551600,18446744073709551616]}}",
                 four_floats, 16);
    expect_open_error(f, "out of range", "tensor w");
}

static void test_end_before_begin(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,0]}}",
                 four_floats, 16);
    expect_open_error(f, "end 0 < begin 16", "tensor w");
}

static void test_dtype_times_shape_must_equal_byte_span(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "does not match byte span", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "does not match byte span", "tensor w");
    /* element count overflow must not wrap into a match */
    write_single(f,
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                 "\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "overflow", "tensor w");
}

static void test_negative_dim(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "negative dim", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "shape dim 0", "tensor w");
}

static void test_missing_fields_and_too_many_dims(void **state)
{
    fixture *f = *state;
    write_single(f, "{\"w\":{\"shape\":[4],\"data_offsets\":[0,16]}}", four_floats, 16);
    expect_open_error(f, "dtype", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}", four_floats, 16);
    expect_open_error(f, "shape", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}", four_floats, 16);
    expect_open_error(f, "data_offsets", "tensor w");
    write_single(f, "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,4],\"data_offsets\":[0,16]}}",
                 four_floats, 16);
    expect_open_error(f, "dims", "tensor w");
}

static void test_no_checkpoint_in_dir(void **state)
{
    fixture *f = *state;
    expect_open_error(f, "model.safetensors", f->dir);
}

static void test_duplicate_tensor_in_header(void **state)
{
    fixture *f = *state;
    write_single(f,
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
                 four_floats, 16);
    expect_open_error(f, "duplicate tensor w", NULL);
}

static void test_unaligned_data_reads_exactly(void **state)
{
    fixture *f = *state;
    /* Header of odd length: the data section starts unaligned; tensors too. */
    uint8_t data[1 + 16 + 6];
    data[0] = 0xEE;
    memcpy(data + 1, four_floats, 16);
    uint16_t bf16[3] = {mr_f32_to_bf16(1.5f), mr_f32_to_bf16(-0.25f), 0x7F80};
    memcpy(data + 17, bf16, 6);
    write_single(f,
                 "{\"__metadata__\":{\"format\":\"pt\"},"
                 "\"pad\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]},"
                 "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[1,17]},"
                 "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[17,23]} }",
                 data, sizeof data);
    mr_st_archive *archive = NULL;
    if (mr_st_open_dir(f->dir, &archive) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_int_equal(mr_st_count(archive), 3);
    const mr_tensor_info *a = mr_st_find(archive, "a"), *b = mr_st_find(archive, "b");
    assert_non_null(a);
    assert_non_null(b);
    assert_null(mr_st_find(archive, "__metadata__"));
    assert_null(mr_st_find(archive, "c"));
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->n_elems, 4);
    assert_int_equal(a->nbytes, 16);
    float out[4];
    assert_int_equal(mr_st_read_f32(a, out), MR_OK);
    assert_memory_equal(out, four_floats, 16);
    assert_int_equal(mr_st_read_f32(b, out), MR_OK);
    assert_true(out[0] == 1.5f && out[1] == -0.25f && isinf(out[2]));
    /* F8 needs its scale */
    assert_int_not_equal(mr_st_read_f32(mr_st_find(archive, "pad"), out), MR_OK);
    assert_non_null(strstr(mr_last_error(), "pad"));
    mr_st_close(archive);
}

static void test_fp8_dequant_applies_block_scales_and_rejects_nan(void **state)
{
    fixture *f = *state;
    /* w [3, 5] with block [2, 4]: scale_inv [2, 2] */
    uint8_t codes[15];
    for (int i = 0; i < 15; i++)
        codes[i] = (uint8_t)(0x30 + i); /* finite codes */
    float scales[4] = {1.0f, 2.0f, 0.5f, 4.0f};
    uint8_t data[15 + 16];
    memcpy(data, codes, 15);
    memcpy(data + 15, scales, 16);
    write_single(f,
                 "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[3,5],\"data_offsets\":[0,15]},"
                 "\"w_scale_inv\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[15,31]}}",
                 data, sizeof data);
    mr_st_archive *archive = NULL;
    if (mr_st_open_dir(f->dir, &archive) != MR_OK)
        fail_msg("%s", mr_last_error());
    const mr_tensor_info *w = mr_st_find(archive, "w"), *s = mr_st_find(archive, "w_scale_inv");
    float out[15];
    assert_int_equal(mr_st_read_fp8_dequant(w, s, 2, 4, out), MR_OK);
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 5; j++) {
            float want = mr_fp8_e4m3_to_f32(codes[i * 5 + j]) * scales[(i / 2) * 2 + j / 4];
            assert_true(out[i * 5 + j] == want);
        }
    /* wrong block size → scale shape mismatch named */
    assert_int_not_equal(mr_st_read_fp8_dequant(w, s, 128, 128, out), MR_OK);
    assert_non_null(strstr(mr_last_error(), "w_scale_inv"));
    mr_st_close(archive);

    data[7] = 0xFF; /* NaN code in w[1, 2] */
    write_single(f,
                 "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[3,5],\"data_offsets\":[0,15]},"
                 "\"w_scale_inv\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[15,31]}}",
                 data, sizeof data);
    assert_int_equal(mr_st_open_dir(f->dir, &archive), MR_OK);
    w = mr_st_find(archive, "w");
    s = mr_st_find(archive, "w_scale_inv");
    assert_int_not_equal(mr_st_read_fp8_dequant(w, s, 2, 4, out), MR_OK);
    assert_non_null(strstr(mr_last_error(), "NaN"));
    assert_non_null(strstr(mr_last_error(), "tensor w"));
    assert_non_null(strstr(mr_last_error(), "[1, 2]"));
    mr_st_close(archive);
}

static void write_index(const fixture *f, const char *weight_map)
{
    char text[1024];
    snprintf(text, sizeof text, "{\"metadata\":{\"total_size\":16},\"weight_map\":%s}",
             weight_map);
    mt_write_file(mt_path(f->dir, "model.safetensors.index.json"), text, strlen(text));
}

static const char *shard_a_header =
    "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
static const char *shard_b_header =
    "{\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";

static void write_two_shards(const fixture *f)
{
    mt_write_raw_safetensors(mt_path(f->dir, "s1.safetensors"), shard_a_header, four_floats, 8);
    mt_write_raw_safetensors(mt_path(f->dir, "s2.safetensors"), shard_b_header, four_floats + 2,
                             8);
}

static void test_sharded_index_reads_each_tensor_from_its_shard(void **state)
{
    fixture *f = *state;
    write_two_shards(f);
    write_index(f, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\"}");
    mr_st_archive *archive = NULL;
    if (mr_st_open_dir(f->dir, &archive) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_int_equal(mr_st_count(archive), 2);
    float out[2];
    assert_int_equal(mr_st_read_f32(mr_st_find(archive, "b"), out), MR_OK);
    assert_true(out[0] == 0.5f && out[1] == 3.25f);
    assert_non_null(strstr(mr_st_find(archive, "b")->file, "s2.safetensors"));
    mr_st_close(archive);
}

static void test_sharded_index_naming_a_missing_file(void **state)
{
    fixture *f = *state;
    write_two_shards(f);
    write_index(f, "{\"a\":\"s1.safetensors\",\"b\":\"s3.safetensors\"}");
    expect_open_error(f, "s3.safetensors", "cannot open");
}

static void test_sharded_index_naming_a_tensor_not_in_its_shard(void **state)
{
    fixture *f = *state;
    write_two_shards(f);
    write_index(f, "{\"a\":\"s1.safetensors\",\"b\":\"s2.safetensors\",\"c\":\"s2.safetensors\"}");
    expect_open_error(f, "tensor c", "does not hold it");
}

static void test_sharded_tensor_in_the_wrong_shard(void **state)
{
    fixture *f = *state;
    write_two_shards(f);
    /* s2 holds b, but the index puts b in s1 */
    write_index(f, "{\"a\":\"s1.safetensors\",\"b\":\"s1.safetensors\",\"c\":\"s2.safetensors\"}");
    expect_open_error(f, "tensor b", "not listed for this shard");
}

static void test_sharded_index_rejects_paths_and_bad_json(void **state)
{
    fixture *f = *state;
    write_two_shards(f);
    write_index(f, "{\"a\":\"../s1.safetensors\",\"b\":\"s2.safetensors\"}");
    expect_open_error(f, "plain shard file name", NULL);
    write_index(f, "[]");
    expect_open_error(f, "weight_map", NULL);
    mt_write_file(mt_path(f->dir, "model.safetensors.index.json"), "{", 1);
    expect_open_error(f, "model.safetensors.index.json", NULL);
}

/* ------------------------------------------------------------ synth round trips */

static mr_st_archive *open_ok(const char *dir)
{
    mr_st_archive *archive = NULL;
    if (mr_st_open_dir(dir, &archive) != MR_OK)
        fail_msg("%s: %s", dir, mr_last_error());
    return archive;
}

static void expect_tensor(const mr_st_archive *archive, const char *name, mr_dtype dtype,
                          int64_t rows, int64_t cols)
{
    const mr_tensor_info *t = mr_st_find(archive, name);
    if (!t)
        fail_msg("no tensor %s", name);
    if (t->dtype != dtype)
        fail_msg("%s is %s, want %s", name, mr_dtype_name(t->dtype), mr_dtype_name(dtype));
    assert_int_equal(t->ndim, cols > 0 ? 2 : 1);
    assert_int_equal(t->shape[0], rows);
    if (cols > 0)
        assert_int_equal(t->shape[1], cols);
}

static float *read_all(const mr_tensor_info *t)
{
    float *out = malloc((size_t)t->n_elems * sizeof *out);
    assert_int_equal(mr_st_read_f32(t, out), MR_OK);
    return out;
}

static void test_synth_f32_round_trip(void **state)
{
    fixture *f = *state;
    mt_synth(f->dir, "tiny", MR_SYNTH_F32, 1, 7);
    mr_st_archive *archive = open_ok(f->dir);
    /* tiny: embed + 2 + (dense: 3+11 attn/norm) + 2 MoE layers ... count by formula */
    size_t per_layer = 2 + 7;           /* norms + q_a, q_a_norm, q_b, kv_a, kv_a_norm, kv_b, o */
    size_t dense = per_layer + 3, moe = per_layer + 2 + 16 * 3 + 3;
    assert_int_equal(mr_st_count(archive), 1 + dense + 2 * moe + 2);
    expect_tensor(archive, "model.embed_tokens.weight", MR_DT_F32, 256, 160);
    expect_tensor(archive, "model.layers.0.mlp.gate_proj.weight", MR_DT_F32, 256, 160);
    expect_tensor(archive, "model.layers.1.mlp.experts.15.down_proj.weight", MR_DT_F32, 160, 48);
    expect_tensor(archive, "model.layers.2.mlp.gate.e_score_correction_bias", MR_DT_F32, 16, 0);
    expect_tensor(archive, "model.layers.2.self_attn.q_b_proj.weight", MR_DT_F32, 4 * 24, 48);
    expect_tensor(archive, "model.layers.2.self_attn.kv_a_proj_with_mqa.weight", MR_DT_F32, 40,
                  160);
    expect_tensor(archive, "lm_head.weight", MR_DT_F32, 256, 160);

    /* value ranges of the documented init */
    float *norm = read_all(mr_st_find(archive, "model.layers.1.input_layernorm.weight"));
    float *o = read_all(mr_st_find(archive, "model.layers.1.self_attn.o_proj.weight"));
    float *embed = read_all(mr_st_find(archive, "model.embed_tokens.weight"));
    float bound = sqrtf(3.0f / 64.0f), o_max = 0, embed_max = 0;
    float norm_min = 2, norm_max = 0;
    for (int i = 0; i < 160; i++) {
        norm_min = fminf(norm_min, norm[i]);
        norm_max = fmaxf(norm_max, norm[i]);
    }
    assert_true(norm_min >= 0.9f && norm_min < 0.91f); /* 1 + U(-0.1, 0.1) */
    assert_true(norm_max <= 1.1f && norm_max > 1.09f);
    for (int i = 0; i < 160 * 64; i++)
        o_max = fmaxf(o_max, fabsf(o[i]));
    for (int i = 0; i < 256 * 160; i++)
        embed_max = fmaxf(embed_max, fabsf(embed[i]));
    assert_true(o_max <= bound && o_max > 0.9f * bound);
    assert_true(embed_max <= 1.0f && embed_max > 0.99f);
    free(norm);
    free(o);
    free(embed);
    /* each tensor draws its own values */
    const mr_tensor_info *e0 = mr_st_find(archive, "model.layers.1.mlp.experts.0.up_proj.weight");
    const mr_tensor_info *e1 = mr_st_find(archive, "model.layers.1.mlp.experts.1.up_proj.weight");
    const mr_tensor_info *g0 = mr_st_find(archive, "model.layers.1.mlp.experts.0.gate_proj.weight");
    assert_true(memcmp(e0->data, e1->data, e0->nbytes) != 0);
    assert_true(memcmp(e0->data, g0->data, e0->nbytes) != 0);
    mr_st_close(archive);
}

static void test_synth_bf16_is_the_rounded_f32_model(void **state)
{
    fixture *f = *state;
    char *dir32 = strdup(mt_path(f->dir, "f32")), *dir16 = strdup(mt_path(f->dir, "bf16"));
    mt_synth(dir32, "tiny", MR_SYNTH_F32, 1, 3);
    mt_synth(dir16, "tiny", MR_SYNTH_BF16, 1, 3);
    mr_st_archive *a32 = open_ok(dir32), *a16 = open_ok(dir16);
    assert_int_equal(mr_st_count(a32), mr_st_count(a16));
    for (size_t i = 0; i < mr_st_count(a16); i++) {
        const mr_tensor_info *t16 = mr_st_at(a16, i), *t32 = mr_st_find(a32, t16->name);
        assert_non_null(t32);
        bool bias = strstr(t16->name, "e_score_correction_bias") != NULL;
        assert_int_equal(t16->dtype, bias ? MR_DT_F32 : MR_DT_BF16);
        float *v16 = read_all(t16), *v32 = read_all(t32);
        for (int64_t j = 0; j < t16->n_elems; j++)
            if (v16[j] != (bias ? v32[j] : mr_bf16_to_f32(mr_f32_to_bf16(v32[j]))))
                fail_msg("%s[%lld]: %g vs bf16(%g)", t16->name, (long long)j, (double)v16[j],
                         (double)v32[j]);
        free(v16);
        free(v32);
    }
    mr_st_close(a32);
    mr_st_close(a16);
    free(dir32);
    free(dir16);
}

static void test_synth_fp8_uses_the_release_layout(void **state)
{
    fixture *f = *state;
    mt_synth(f->dir, "tiny", MR_SYNTH_FP8, 1, 1);
    mr_st_archive *archive = open_ok(f->dir);
    expect_tensor(archive, "model.embed_tokens.weight", MR_DT_BF16, 256, 160);
    expect_tensor(archive, "model.layers.1.input_layernorm.weight", MR_DT_BF16, 160, 0);
    expect_tensor(archive, "model.layers.1.mlp.gate.weight", MR_DT_BF16, 16, 160);
    expect_tensor(archive, "model.layers.1.mlp.gate.e_score_correction_bias", MR_DT_F32, 16, 0);
    expect_tensor(archive, "lm_head.weight", MR_DT_BF16, 256, 160);
    /* [256, 160] in 128x128 blocks: partial edge blocks → [2, 2] */
    expect_tensor(archive, "model.layers.0.mlp.gate_proj.weight", MR_DT_F8_E4M3, 256, 160);
    expect_tensor(archive, "model.layers.0.mlp.gate_proj.weight_scale_inv", MR_DT_F32, 2, 2);
    expect_tensor(archive, "model.layers.0.self_attn.q_a_proj.weight", MR_DT_F8_E4M3, 48, 160);
    expect_tensor(archive, "model.layers.0.self_attn.q_a_proj.weight_scale_inv", MR_DT_F32, 1, 2);
    expect_tensor(archive, "model.layers.2.mlp.experts.3.up_proj.weight_scale_inv", MR_DT_F32, 1,
                  2);
    expect_tensor(archive, "model.layers.2.mlp.shared_experts.down_proj.weight", MR_DT_F8_E4M3,
                  160, 48);
    /* every F8 tensor has a scale; every block's amax hits the fp8 max 448 */
    size_t n_fp8 = 0;
    for (size_t i = 0; i < mr_st_count(archive); i++) {
        const mr_tensor_info *t = mr_st_at(archive, i);
        if (t->dtype != MR_DT_F8_E4M3)
            continue;
        n_fp8++;
        char name[256];
        snprintf(name, sizeof name, "%s_scale_inv", t->name);
        assert_non_null(mr_st_find(archive, name));
        bool saw_max = false;
        for (int64_t j = 0; j < t->n_elems; j++)
            saw_max |= (t->data[j] & 0x7F) == 0x7E;
        assert_true(saw_max);
    }
    assert_int_equal(n_fp8, 5 * 3 + 3 + 2 * (16 + 1) * 3); /* attn, dense, experts+shared */
    mr_st_close(archive);
}

static void test_synth_sharded_equals_single_file(void **state)
{
    fixture *f = *state;
    char *one = strdup(mt_path(f->dir, "one")), *three = strdup(mt_path(f->dir, "three"));
    mt_synth(one, "tiny", MR_SYNTH_FP8, 1, 5);
    mt_synth(three, "tiny", MR_SYNTH_FP8, 3, 5);
    char *index = mt_read_file(mt_path(three, "model.safetensors.index.json"), NULL);
    assert_non_null(strstr(index, "\"total_size\""));
    assert_non_null(strstr(index, "model-00003-of-00003.safetensors"));
    free(index);
    mr_st_archive *a1 = open_ok(one), *a3 = open_ok(three);
    assert_int_equal(mr_st_count(a1), mr_st_count(a3));
    bool shard_used[3] = {false, false, false};
    for (size_t i = 0; i < mr_st_count(a1); i++) {
        const mr_tensor_info *t1 = mr_st_at(a1, i), *t3 = mr_st_at(a3, i);
        assert_string_equal(t1->name, t3->name);
        assert_int_equal(t1->dtype, t3->dtype);
        assert_int_equal(t1->nbytes, t3->nbytes);
        assert_memory_equal(t1->data, t3->data, t1->nbytes);
        for (int s = 0; s < 3; s++) {
            char file[64];
            snprintf(file, sizeof file, "model-%05d-of-00003.safetensors", s + 1);
            shard_used[s] |= strstr(t3->file, file) != NULL;
        }
        /* a weight and its scale share a shard; layers are not split */
        if (strstr(t3->name, "_scale_inv")) {
            char weight[256];
            snprintf(weight, sizeof weight, "%.*s", (int)(strlen(t3->name) - 10), t3->name);
            assert_string_equal(mr_st_find(a3, weight)->file, t3->file);
        }
    }
    assert_true(shard_used[0] && shard_used[1] && shard_used[2]);
    assert_string_equal(mr_st_find(a3, "model.layers.1.input_layernorm.weight")->file,
                        mr_st_find(a3, "model.layers.1.mlp.experts.9.up_proj.weight")->file);
    mr_st_close(a1);
    mr_st_close(a3);

    /* re-synth the sharded dir as a single file: the stale index must go */
    mt_synth(three, "tiny", MR_SYNTH_F32, 1, 5);
    mr_st_archive *again = open_ok(three);
    assert_int_equal(mr_st_find(again, "lm_head.weight")->dtype, MR_DT_F32);
    mr_st_close(again);
    free(one);
    free(three);
}

static void test_synth_is_deterministic_per_seed(void **state)
{
    fixture *f = *state;
    char *a = strdup(mt_path(f->dir, "a")), *b = strdup(mt_path(f->dir, "b")),
         *c = strdup(mt_path(f->dir, "c"));
    mt_synth(a, "tiny-v2", MR_SYNTH_BF16, 1, 42);
    mt_synth(b, "tiny-v2", MR_SYNTH_BF16, 1, 42);
    mt_synth(c, "tiny-v2", MR_SYNTH_BF16, 1, 43);
    size_t la, lb, lc;
    char *fa = mt_read_file(mt_path(a, "model.safetensors"), &la);
    char *fb = mt_read_file(mt_path(b, "model.safetensors"), &lb);
    char *fc = mt_read_file(mt_path(c, "model.safetensors"), &lc);
    assert_int_equal(la, lb);
    assert_memory_equal(fa, fb, la);
    assert_int_equal(la, lc);
    assert_true(memcmp(fa, fc, la) != 0);
    free(fa);
    free(fb);
    free(fc);
    char *ca = mt_read_file(mt_path(a, "config.json"), NULL);
    char *cb = mt_read_file(mt_path(b, "config.json"), NULL);
    assert_string_equal(ca, cb);
    assert_non_null(strstr(ca, "\"hidden_act\": \"silu\""));
    assert_non_null(strstr(ca, "\"q_lora_rank\": null"));
    free(ca);
    free(cb);
    free(a);
    free(b);
    free(c);
}

static void test_synth_rejects_bad_options(void **state)
{
    fixture *f = *state;
    mr_synth_opts opts = {.preset = "tiny", .dtype = MR_SYNTH_F32, .seed = 1, .shards = 6};
    assert_int_not_equal(mr_synth_write(f->dir, &opts), MR_OK); /* tiny has 3+2 units */
    assert_non_null(strstr(mr_last_error(), "shards"));
    opts.shards = 1;
    opts.preset = "enormous";
    assert_int_not_equal(mr_synth_write(f->dir, &opts), MR_OK);
    assert_non_null(strstr(mr_last_error(), "enormous"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_file_shorter_than_8_bytes),
        T(test_header_length_larger_than_file),
        T(test_header_length_over_the_cap),
        T(test_header_not_json),
        T(test_unknown_dtype_is_named),
        T(test_offsets_out_of_range),
        T(test_end_before_begin),
        T(test_dtype_times_shape_must_equal_byte_span),
        T(test_negative_dim),
        T(test_missing_fields_and_too_many_dims),
        T(test_no_checkpoint_in_dir),
        T(test_duplicate_tensor_in_header),
        T(test_unaligned_data_reads_exactly),
        T(test_fp8_dequant_applies_block_scales_and_rejects_nan),
        T(test_sharded_index_reads_each_tensor_from_its_shard),
        T(test_sharded_index_naming_a_missing_file),
        T(test_sharded_index_naming_a_tensor_not_in_its_shard),
        T(test_sharded_tensor_in_the_wrong_shard),
        T(test_sharded_index_rejects_paths_and_bad_json),
        T(test_synth_f32_round_trip),
        T(test_synth_bf16_is_the_rounded_f32_model),
        T(test_synth_fp8_uses_the_release_layout),
        T(test_synth_sharded_equals_single_file),
        T(test_synth_is_deterministic_per_seed),
        T(test_synth_rejects_bad_options),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
