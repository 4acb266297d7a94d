/* tests/model/test_config.c — config.json parsing (model/config.h).
 * argv[1]: the shared directory holding models/deepseek-ai--DeepSeek-{V3,R1}.config.json.
 */
#include <cjson/cJSON.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "common/status.h"
#include "model/config.h"
#include "model/synth.h"
#include "model_test_util.h"

static const char *shared_dir = "../shared";

static const char *model_path(const char *name)
{
    static char path[4096];
    snprintf(path, sizeof path, "%s/models/%s", shared_dir, name);
    return path;
}

/* The V3 release config as a cJSON tree (caller deletes). */
static cJSON *v3_json(void)
{
    char *text = mt_read_file(model_path("deepseek-ai--DeepSeek-V3.config.json"), NULL);
    cJSON *root = cJSON_Parse(text);
    free(text);
    assert_non_null(root);
    return root;
}

static mr_status parse_tree(const cJSON *root, mr_config *out)
{
    char *text = cJSON_PrintUnformatted(root);
    mr_status status = mr_config_parse(text, strlen(text), "test/config.json", out);
    free(text);
    return status;
}

/* Set root[key] (or root[object][key]) to `value` (NULL: delete), parse, and
 * expect failure with a message containing `needle`. */
static void expect_error(const char *object, const char *key, cJSON *value, const char *needle)
{
    cJSON *root = v3_json();
    cJSON *target = object ? cJSON_GetObjectItemCaseSensitive(root, object) : root;
    assert_non_null(target);
    if (value)
        cJSON_ReplaceItemInObjectCaseSensitive(target, key, value);
    else
        cJSON_DeleteItemFromObjectCaseSensitive(target, key);
    mr_config cfg;
    mr_status status = parse_tree(root, &cfg);
    cJSON_Delete(root);
    if (status == MR_OK)
        fail_msg("setting %s%s%s was accepted", object ? object : "", object ? "." : "", key);
    if (!strstr(mr_last_error(), needle))
        fail_msg("message \"%s\" does not name \"%s\"", mr_last_error(), needle);
    if (!strstr(mr_last_error(), "test/config.json"))
        fail_msg("message \"%s\" does not name the file", mr_last_error());
}

static void check_v3_release(const char *file)
{
    mr_config c;
    char path[4096];
    snprintf(path, sizeof path, "%s", model_path(file));
    if (mr_config_load(path, &c) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_int_equal(c.arch, MR_ARCH_DEEPSEEK_V3);
    assert_string_equal(c.model_type, "deepseek_v3");
    assert_int_equal(c.hidden_size, 7168);
    assert_int_equal(c.intermediate_size, 18432);
    assert_int_equal(c.moe_intermediate_size, 2048);
    assert_int_equal(c.num_hidden_layers, 61);
    assert_int_equal(c.first_k_dense_replace, 3);
    assert_int_equal(c.num_attention_heads, 128);
    assert_int_equal(c.vocab_size, 129280);
    assert_int_equal(c.n_routed_experts, 256);
    assert_int_equal(c.n_shared_experts, 1);
    assert_int_equal(c.num_experts_per_tok, 8);
    assert_int_equal(c.n_group, 8);
    assert_int_equal(c.topk_group, 4);
    assert_int_equal(c.topk_method, MR_TOPK_NOAUX_TC);
    assert_int_equal(c.scoring_func, MR_SCORE_SIGMOID);
    assert_true(c.norm_topk_prob);
    assert_float_equal(c.routed_scaling_factor, 2.5, 0);
    assert_int_equal(c.q_lora_rank, 1536);
    assert_int_equal(c.kv_lora_rank, 512);
    assert_int_equal(c.qk_nope_head_dim, 128);
    assert_int_equal(c.qk_rope_head_dim, 64);
    assert_int_equal(c.v_head_dim, 128);
    assert_float_equal(c.rms_norm_eps, 1e-6f, 0);
    assert_float_equal(c.rope_theta, 10000.0, 0);
    assert_int_equal(c.max_position_embeddings, 163840);
    assert_true(c.rope_scaling_yarn);
    assert_true(c.yarn_enabled); /* 163840 > 4096 */
    assert_float_equal(c.yarn_factor, 40.0, 0);
    assert_int_equal(c.yarn_original_max_position_embeddings, 4096);
    assert_float_equal(c.yarn_beta_fast, 32.0, 0);
    assert_float_equal(c.yarn_beta_slow, 1.0, 0);
    assert_float_equal(c.yarn_mscale, 1.0, 0);
    assert_float_equal(c.yarn_mscale_all_dim, 1.0, 0);
    assert_true(c.fp8);
    assert_int_equal(c.weight_block_size[0], 128);
    assert_int_equal(c.weight_block_size[1], 128);
    assert_int_equal(c.bos_token_id, 0);
    assert_int_equal(c.eos_token_id, 1);
    assert_int_equal(mr_config_qk_head_dim(&c), 192);
    assert_int_equal(mr_config_latent_dim(&c), 576);
    assert_false(mr_config_layer_is_moe(&c, 2));
    assert_true(mr_config_layer_is_moe(&c, 3));
}

static void test_v3_release_config_parses_with_its_values(void **state)
{
    (void)state;
    check_v3_release("deepseek-ai--DeepSeek-V3.config.json");
}

static void test_r1_release_config_parses_with_its_values(void **state)
{
    (void)state;
    check_v3_release("deepseek-ai--DeepSeek-R1.config.json");
}

static void test_missing_key_is_named(void **state)
{
    (void)state;
    expect_error(NULL, "hidden_size", NULL, "missing key hidden_size");
    expect_error(NULL, "kv_lora_rank", NULL, "kv_lora_rank");
    expect_error(NULL, "q_lora_rank", NULL, "q_lora_rank");
    expect_error(NULL, "model_type", NULL, "model_type");
    expect_error("rope_scaling", "factor", NULL, "rope_scaling.factor");
    expect_error("quantization_config", "weight_block_size", NULL,
                 "quantization_config.weight_block_size");
}

static void test_wrong_type_names_key_and_expected_type(void **state)
{
    (void)state;
    expect_error(NULL, "hidden_size", cJSON_CreateString("7168"),
                 "hidden_size must be an integer, got a string");
    expect_error(NULL, "num_hidden_layers", cJSON_CreateNumber(61.5), "num_hidden_layers");
    expect_error(NULL, "norm_topk_prob", cJSON_CreateNumber(1), "norm_topk_prob must be a boolean");
    expect_error(NULL, "rope_theta", cJSON_CreateString("1e4"), "rope_theta must be a number");
    expect_error(NULL, "scoring_func", cJSON_CreateNumber(1), "scoring_func must be a string");
    expect_error(NULL, "rope_scaling", cJSON_CreateString("yarn"), "rope_scaling must be an object");
    expect_error(NULL, "architectures", cJSON_CreateString("DeepseekV3ForCausalLM"),
                 "architectures");
    expect_error("quantization_config", "weight_block_size", cJSON_CreateNumber(128),
                 "quantization_config.weight_block_size");
}

static void test_unsupported_values_are_named(void **state)
{
    (void)state;
    expect_error(NULL, "hidden_act", cJSON_CreateString("gelu"), "hidden_act");
    expect_error(NULL, "moe_layer_freq", cJSON_CreateNumber(2), "moe_layer_freq");
    expect_error("rope_scaling", "type", cJSON_CreateString("linear"), "rope_scaling.type");
    expect_error("quantization_config", "fmt", cJSON_CreateString("e5m2"),
                 "quantization_config.fmt");
    expect_error("quantization_config", "quant_method", cJSON_CreateString("gptq"),
                 "quantization_config.quant_method");
    expect_error(NULL, "model_type", cJSON_CreateString("llama"), "model_type");
    expect_error(NULL, "topk_method", cJSON_CreateString("top1"), "topk_method");
    expect_error(NULL, "scoring_func", cJSON_CreateString("relu"), "scoring_func");
    /* V3 with sigmoid scoring needs noaux_tc. */
    expect_error(NULL, "topk_method", cJSON_CreateString("greedy"), "topk_method");
    cJSON *archs = cJSON_CreateArray();
    cJSON_AddItemToArray(archs, cJSON_CreateString("LlamaForCausalLM"));
    expect_error(NULL, "architectures", archs, "architectures");
}

static void test_invalid_sizes_and_routing_are_named(void **state)
{
    (void)state;
    expect_error(NULL, "n_group", cJSON_CreateNumber(3), "n_group");
    expect_error(NULL, "n_routed_experts", cJSON_CreateNumber(100), "n_group");
    expect_error(NULL, "topk_group", cJSON_CreateNumber(9), "topk_group");
    expect_error(NULL, "num_experts_per_tok", cJSON_CreateNumber(257), "num_experts_per_tok");
    /* 4 of 8 groups of 32 experts hold 128 candidates: top-129 cannot be filled. */
    expect_error(NULL, "num_experts_per_tok", cJSON_CreateNumber(129), "num_experts_per_tok");
    expect_error(NULL, "qk_rope_head_dim", cJSON_CreateNumber(63), "qk_rope_head_dim");
    expect_error(NULL, "hidden_size", cJSON_CreateNumber(0), "hidden_size");
    expect_error(NULL, "v_head_dim", cJSON_CreateNumber(-1), "v_head_dim");
    expect_error(NULL, "first_k_dense_replace", cJSON_CreateNumber(62), "first_k_dense_replace");
}

static void test_unknown_keys_are_ignored(void **state)
{
    (void)state;
    cJSON *root = v3_json();
    cJSON_AddStringToObject(root, "some_future_key", "whatever");
    cJSON_AddItemToObject(root, "nested_unknown", cJSON_CreateObject());
    cJSON_AddStringToObject(cJSON_GetObjectItem(root, "rope_scaling"), "extra", "x");
    cJSON_AddStringToObject(cJSON_GetObjectItem(root, "quantization_config"),
                            "activation_scheme_v2", "x");
    mr_config c;
    if (parse_tree(root, &c) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_int_equal(c.hidden_size, 7168);
    cJSON_Delete(root);
}

static void test_yarn_enabled_only_past_original_length(void **state)
{
    (void)state;
    cJSON *root = v3_json();
    mr_config c;
    cJSON_ReplaceItemInObject(root, "max_position_embeddings", cJSON_CreateNumber(4096));
    assert_int_equal(parse_tree(root, &c), MR_OK);
    assert_true(c.rope_scaling_yarn);
    assert_false(c.yarn_enabled); /* 4096 <= 4096 */
    cJSON_ReplaceItemInObject(root, "max_position_embeddings", cJSON_CreateNumber(4097));
    assert_int_equal(parse_tree(root, &c), MR_OK);
    assert_true(c.yarn_enabled);
    cJSON_ReplaceItemInObject(root, "rope_scaling", cJSON_CreateNull());
    assert_int_equal(parse_tree(root, &c), MR_OK);
    assert_false(c.rope_scaling_yarn);
    assert_false(c.yarn_enabled);
    cJSON_Delete(root);
}

static void test_yarn_defaults_and_rope_type_alias(void **state)
{
    (void)state;
    cJSON *root = v3_json();
    cJSON *scaling = cJSON_CreateObject();
    cJSON_AddStringToObject(scaling, "rope_type", "yarn");
    cJSON_AddNumberToObject(scaling, "factor", 8);
    cJSON_AddNumberToObject(scaling, "original_max_position_embeddings", 2048);
    cJSON_ReplaceItemInObject(root, "rope_scaling", scaling);
    mr_config c;
    if (parse_tree(root, &c) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_true(c.rope_scaling_yarn);
    assert_float_equal(c.yarn_factor, 8.0, 0);
    assert_float_equal(c.yarn_beta_fast, 32.0, 0);
    assert_float_equal(c.yarn_beta_slow, 1.0, 0);
    assert_float_equal(c.yarn_mscale, 1.0, 0);
    assert_float_equal(c.yarn_mscale_all_dim, 0.0, 0);
    cJSON_Delete(root);
}

static void test_v2_lite_shape_config(void **state)
{
    (void)state;
    cJSON *root = v3_json();
    cJSON_ReplaceItemInObject(root, "model_type", cJSON_CreateString("deepseek_v2"));
    cJSON *archs = cJSON_CreateArray();
    cJSON_AddItemToArray(archs, cJSON_CreateString("DeepseekV2ForCausalLM"));
    cJSON_ReplaceItemInObject(root, "architectures", archs);
    cJSON_ReplaceItemInObject(root, "q_lora_rank", cJSON_CreateNull());
    cJSON_DeleteItemFromObject(root, "topk_method");
    cJSON_DeleteItemFromObject(root, "scoring_func");
    cJSON_DeleteItemFromObject(root, "quantization_config");
    cJSON *eos = cJSON_CreateArray();
    cJSON_AddItemToArray(eos, cJSON_CreateNumber(100001));
    cJSON_AddItemToArray(eos, cJSON_CreateNumber(7));
    cJSON_ReplaceItemInObject(root, "eos_token_id", eos);
    cJSON_ReplaceItemInObject(root, "bos_token_id", cJSON_CreateNull());
    mr_config c;
    if (parse_tree(root, &c) != MR_OK)
        fail_msg("%s", mr_last_error());
    assert_int_equal(c.arch, MR_ARCH_DEEPSEEK_V2);
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.topk_method, MR_TOPK_GREEDY);
    assert_int_equal(c.scoring_func, MR_SCORE_SOFTMAX);
    assert_false(c.fp8);
    assert_int_equal(c.eos_token_id, 100001);
    assert_int_equal(c.bos_token_id, -1);
    cJSON_Delete(root);
}

static void test_kimi_k2_model_type_is_v3(void **state)
{
    (void)state;
    cJSON *root = v3_json();
    cJSON_ReplaceItemInObject(root, "model_type", cJSON_CreateString("kimi_k2"));
    mr_config c;
    assert_int_equal(parse_tree(root, &c), MR_OK);
    assert_int_equal(c.arch, MR_ARCH_DEEPSEEK_V3);
    assert_string_equal(c.model_type, "kimi_k2");
    cJSON_Delete(root);
}

static void test_not_json_and_missing_file_are_errors(void **state)
{
    (void)state;
    mr_config c;
    const char *text = "{\"hidden_size\": 160,";
    assert_int_not_equal(mr_config_parse(text, strlen(text), "x/config.json", &c), MR_OK);
    assert_non_null(strstr(mr_last_error(), "x/config.json"));
    assert_int_not_equal(mr_config_load("/nonexistent/dir/config.json", &c), MR_OK);
    assert_non_null(strstr(mr_last_error(), "/nonexistent/dir/config.json"));
}

static void test_synth_presets_have_the_documented_shape(void **state)
{
    (void)state;
    mr_config c;
    assert_int_equal(mr_synth_preset_config("tiny", &c), MR_OK);
    assert_int_equal(c.arch, MR_ARCH_DEEPSEEK_V3);
    assert_int_equal(c.hidden_size, 160);
    assert_int_equal(c.q_lora_rank, 48);
    assert_int_equal(c.topk_method, MR_TOPK_NOAUX_TC);
    assert_true(c.yarn_enabled);
    assert_float_equal(c.yarn_mscale_all_dim, 1.0, 0);

    assert_int_equal(mr_synth_preset_config("tiny-v2", &c), MR_OK);
    assert_int_equal(c.arch, MR_ARCH_DEEPSEEK_V2);
    assert_int_equal(c.q_lora_rank, 0);
    assert_int_equal(c.scoring_func, MR_SCORE_SOFTMAX);
    assert_int_equal(c.topk_method, MR_TOPK_GROUP_LIMITED_GREEDY);
    assert_int_equal(c.n_shared_experts, 2);
    assert_float_equal(c.yarn_mscale, 0.9, 1e-12);
    assert_float_equal(c.yarn_mscale_all_dim, 0.707, 1e-12);
    assert_float_equal(c.routed_scaling_factor, 1.5, 0);

    assert_int_equal(mr_synth_preset_config("tiny-lite", &c), MR_OK);
    assert_int_equal(c.topk_method, MR_TOPK_GREEDY);
    assert_int_equal(c.n_group, 1);
    assert_int_equal(c.num_experts_per_tok, 6);
    assert_int_equal(c.num_hidden_layers, 2);
    assert_false(c.rope_scaling_yarn);

    assert_int_equal(mr_synth_preset_config("small", &c), MR_OK);
    assert_int_equal(c.hidden_size, 1024);
    assert_int_equal(c.vocab_size, 8192);
    assert_int_equal(c.yarn_original_max_position_embeddings, 1024);

    assert_int_not_equal(mr_synth_preset_config("huge", &c), MR_OK);
    assert_non_null(strstr(mr_last_error(), "huge"));
}

int main(int argc, char **argv)
{
    if (argc > 1)
        shared_dir = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v3_release_config_parses_with_its_values),
        cmocka_unit_test(test_r1_release_config_parses_with_its_values),
        cmocka_unit_test(test_missing_key_is_named),
        cmocka_unit_test(test_wrong_type_names_key_and_expected_type),
        cmocka_unit_test(test_unsupported_values_are_named),
        cmocka_unit_test(test_invalid_sizes_and_routing_are_named),
        cmocka_unit_test(test_unknown_keys_are_ignored),
        cmocka_unit_test(test_yarn_enabled_only_past_original_length),
        cmocka_unit_test(test_yarn_defaults_and_rope_type_alias),
        cmocka_unit_test(test_v2_lite_shape_config),
        cmocka_unit_test(test_kimi_k2_model_type_is_v3),
        cmocka_unit_test(test_not_json_and_missing_file_are_errors),
        cmocka_unit_test(test_synth_presets_have_the_documented_shape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
