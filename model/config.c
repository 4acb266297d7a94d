/* model/config.c — HF config.json → mr_config. Contract in config.h.
 *
 * Each used key goes through one typed getter that reports a missing key, a
 * wrong JSON type or an out-of-range value with the key's name and the origin.
 * Defaults for optional keys follow the HF DeepseekV2/V3 configuration
 * classes; keys the engine does not use are never looked at.
 */
#include "config.h"

#include "../common/fileio.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES ((long)16 * 1024 * 1024)

typedef enum { KEY_REQUIRED, KEY_OPTIONAL } key_need;

/* Parsing context: the object being read, its origin and the key prefix
 * ("" at top level, "rope_scaling." inside rope_scaling). */
typedef struct cfg_reader {
    const cJSON *object;
    const char *origin;
    const char *prefix;
} cfg_reader;

static const char *json_type_name(const cJSON *item)
{
    if (cJSON_IsNull(item)) return "null";
    if (cJSON_IsBool(item)) return "a boolean";
    if (cJSON_IsNumber(item)) return "a number";
    if (cJSON_IsString(item)) return "a string";
    if (cJSON_IsArray(item)) return "an array";
    if (cJSON_IsObject(item)) return "an object";
    return "invalid";
}

/* NULL when the key is absent (or JSON null and null_is_absent). */
static const cJSON *get_item(const cfg_reader *r, const char *key, bool null_is_absent)
{
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(r->object, key);
    if (item && null_is_absent && cJSON_IsNull(item))
        return NULL;
    return item;
}

static mr_status missing(const cfg_reader *r, const char *key)
{
    return mr_fail(MR_EINVAL, "%s: missing key %s%s", r->origin, r->prefix, key);
}

static mr_status wrong_type(const cfg_reader *r, const char *key, const cJSON *item,
                            const char *expected)
{
    return mr_fail(MR_EINVAL, "%s: key %s%s must be %s, got %s", r->origin, r->prefix, key,
                   expected, json_type_name(item));
}

static bool number_is_int(const cJSON *item)
{
    if (!cJSON_IsNumber(item))
        return false;
    double value = item->valuedouble;
    return value == floor(value) && value >= INT_MIN && value <= INT_MAX;
}

/* Integer key; absent keeps *out (the default) unless required. */
static mr_status get_int(const cfg_reader *r, const char *key, key_need need, int *out)
{
    const cJSON *item = get_item(r, key, false);
    if (!item)
        return need == KEY_REQUIRED ? missing(r, key) : MR_OK;
    if (!number_is_int(item))
        return wrong_type(r, key, item, "an integer");
    *out = (int)item->valuedouble;
    return MR_OK;
}

static mr_status get_int_min(const cfg_reader *r, const char *key, key_need need, int min,
                             int *out)
{
    MR_TRY(get_int(r, key, need, out));
    if (*out < min)
        return mr_fail(MR_EINVAL, "%s: key %s%s is %d, must be >= %d", r->origin, r->prefix, key,
                       *out, min);
    return MR_OK;
}

static mr_status get_double(const cfg_reader *r, const char *key, key_need need, double *out)
{
    const cJSON *item = get_item(r, key, false);
    if (!item)
        return need == KEY_REQUIRED ? missing(r, key) : MR_OK;
    if (!cJSON_IsNumber(item))
        return wrong_type(r, key, item, "a number");
    *out = item->valuedouble;
    return MR_OK;
}

static mr_status get_positive_double(const cfg_reader *r, const char *key, key_need need,
                                     double *out)
{
    MR_TRY(get_double(r, key, need, out));
    if (!(*out > 0.0) || !isfinite(*out))
        return mr_fail(MR_EINVAL, "%s: key %s%s is %g, must be > 0", r->origin, r->prefix, key,
                       *out);
    return MR_OK;
}

static mr_status get_bool(const cfg_reader *r, const char *key, key_need need, bool *out)
{
    const cJSON *item = get_item(r, key, false);
    if (!item)
        return need == KEY_REQUIRED ? missing(r, key) : MR_OK;
    if (!cJSON_IsBool(item))
        return wrong_type(r, key, item, "a boolean");
    *out = cJSON_IsTrue(item);
    return MR_OK;
}

/* String key; *out stays NULL when absent and optional. */
static mr_status get_string(const cfg_reader *r, const char *key, key_need need,
                            const char **out)
{
    const cJSON *item = get_item(r, key, false);
    if (!item)
        return need == KEY_REQUIRED ? missing(r, key) : MR_OK;
    if (!cJSON_IsString(item))
        return wrong_type(r, key, item, "a string");
    *out = item->valuestring;
    return MR_OK;
}

static mr_status unsupported(const cfg_reader *r, const char *key, const char *value,
                             const char *allowed)
{
    return mr_fail(MR_EUNSUPPORTED, "%s: key %s%s is \"%s\", supported: %s", r->origin,
                   r->prefix, key, value, allowed);
}

/* bos/eos: an integer, null (-1), or for eos a list whose first entry is used. */
static mr_status get_token_id(const cfg_reader *r, const char *key, bool list_ok, int *out)
{
    const cJSON *item = get_item(r, key, true);
    *out = -1;
    if (!item)
        return MR_OK;
    if (list_ok && cJSON_IsArray(item)) {
        if (cJSON_GetArraySize(item) == 0)
            return MR_OK;
        item = cJSON_GetArrayItem(item, 0);
    }
    if (!number_is_int(item) || item->valuedouble < 0)
        return wrong_type(r, key, item,
                          list_ok ? "a non-negative integer or a list of them"
                                  : "a non-negative integer");
    *out = (int)item->valuedouble;
    return MR_OK;
}

static mr_status parse_model_type(const cfg_reader *r, mr_config *c)
{
    const char *model_type = NULL;
    MR_TRY(get_string(r, "model_type", KEY_REQUIRED, &model_type));
    if (strcmp(model_type, "deepseek_v3") == 0 || strcmp(model_type, "kimi_k2") == 0)
        c->arch = MR_ARCH_DEEPSEEK_V3;
    else if (strcmp(model_type, "deepseek_v2") == 0)
        c->arch = MR_ARCH_DEEPSEEK_V2;
    else
        return unsupported(r, "model_type", model_type, "deepseek_v3, kimi_k2, deepseek_v2");
    snprintf(c->model_type, sizeof c->model_type, "%s", model_type);

    const cJSON *archs = get_item(r, "architectures", true);
    if (archs) {
        if (!cJSON_IsArray(archs))
            return wrong_type(r, "architectures", archs, "an array of strings");
        bool known = false;
        const cJSON *arch;
        cJSON_ArrayForEach(arch, archs) {
            if (!cJSON_IsString(arch))
                return wrong_type(r, "architectures", arch, "an array of strings");
            if (strcmp(arch->valuestring, "DeepseekV3ForCausalLM") == 0 ||
                strcmp(arch->valuestring, "DeepseekV2ForCausalLM") == 0)
                known = true;
        }
        if (!known)
            return mr_fail(MR_EUNSUPPORTED,
                           "%s: key architectures names neither DeepseekV3ForCausalLM nor "
                           "DeepseekV2ForCausalLM",
                           r->origin);
    }

    const char *hidden_act = NULL;
    MR_TRY(get_string(r, "hidden_act", KEY_OPTIONAL, &hidden_act));
    if (hidden_act && strcmp(hidden_act, "silu") != 0)
        return unsupported(r, "hidden_act", hidden_act, "silu");
    int moe_layer_freq = 1;
    MR_TRY(get_int(r, "moe_layer_freq", KEY_OPTIONAL, &moe_layer_freq));
    if (moe_layer_freq != 1)
        return mr_fail(MR_EUNSUPPORTED, "%s: key moe_layer_freq is %d, only 1 is supported",
                       r->origin, moe_layer_freq);
    return MR_OK;
}

static mr_status parse_sizes(const cfg_reader *r, mr_config *c)
{
    MR_TRY(get_int_min(r, "hidden_size", KEY_REQUIRED, 1, &c->hidden_size));
    MR_TRY(get_int_min(r, "intermediate_size", KEY_REQUIRED, 1, &c->intermediate_size));
    MR_TRY(get_int_min(r, "moe_intermediate_size", KEY_REQUIRED, 1, &c->moe_intermediate_size));
    MR_TRY(get_int_min(r, "num_hidden_layers", KEY_REQUIRED, 1, &c->num_hidden_layers));
    c->first_k_dense_replace = 0;
    MR_TRY(get_int_min(r, "first_k_dense_replace", KEY_OPTIONAL, 0, &c->first_k_dense_replace));
    if (c->first_k_dense_replace > c->num_hidden_layers)
        return mr_fail(MR_EINVAL, "%s: key first_k_dense_replace %d > num_hidden_layers %d",
                       r->origin, c->first_k_dense_replace, c->num_hidden_layers);
    MR_TRY(get_int_min(r, "num_attention_heads", KEY_REQUIRED, 1, &c->num_attention_heads));
    MR_TRY(get_int_min(r, "vocab_size", KEY_REQUIRED, 1, &c->vocab_size));

    /* MLA; q_lora_rank null means a direct q_proj (V2-Lite). */
    const cJSON *q_lora = get_item(r, "q_lora_rank", false);
    if (!q_lora)
        return missing(r, "q_lora_rank");
    c->q_lora_rank = 0;
    if (!cJSON_IsNull(q_lora))
        MR_TRY(get_int_min(r, "q_lora_rank", KEY_REQUIRED, 1, &c->q_lora_rank));
    MR_TRY(get_int_min(r, "kv_lora_rank", KEY_REQUIRED, 1, &c->kv_lora_rank));
    MR_TRY(get_int_min(r, "qk_nope_head_dim", KEY_REQUIRED, 1, &c->qk_nope_head_dim));
    MR_TRY(get_int_min(r, "qk_rope_head_dim", KEY_REQUIRED, 2, &c->qk_rope_head_dim));
    if (c->qk_rope_head_dim % 2 != 0)
        return mr_fail(MR_EINVAL, "%s: key qk_rope_head_dim is %d, must be even", r->origin,
                       c->qk_rope_head_dim);
    MR_TRY(get_int_min(r, "v_head_dim", KEY_REQUIRED, 1, &c->v_head_dim));

    double eps = 1e-6;
    MR_TRY(get_positive_double(r, "rms_norm_eps", KEY_OPTIONAL, &eps));
    c->rms_norm_eps = (float)eps;
    c->rope_theta = 10000.0;
    MR_TRY(get_positive_double(r, "rope_theta", KEY_OPTIONAL, &c->rope_theta));
    MR_TRY(get_int_min(r, "max_position_embeddings", KEY_REQUIRED, 1,
                       &c->max_position_embeddings));
    MR_TRY(get_token_id(r, "bos_token_id", false, &c->bos_token_id));
    MR_TRY(get_token_id(r, "eos_token_id", true, &c->eos_token_id));
    return MR_OK;
}

static mr_status parse_routing(const cfg_reader *r, mr_config *c)
{
    bool v3 = c->arch == MR_ARCH_DEEPSEEK_V3;
    MR_TRY(get_int_min(r, "n_routed_experts", KEY_REQUIRED, 1, &c->n_routed_experts));
    c->n_shared_experts = 0;
    if (get_item(r, "n_shared_experts", true))
        MR_TRY(get_int_min(r, "n_shared_experts", KEY_OPTIONAL, 0, &c->n_shared_experts));
    MR_TRY(get_int_min(r, "num_experts_per_tok", KEY_REQUIRED, 1, &c->num_experts_per_tok));
    c->n_group = 1;
    c->topk_group = 1;
    MR_TRY(get_int_min(r, "n_group", KEY_OPTIONAL, 1, &c->n_group));
    MR_TRY(get_int_min(r, "topk_group", KEY_OPTIONAL, 1, &c->topk_group));

    const char *scoring = v3 ? "sigmoid" : "softmax";
    MR_TRY(get_string(r, "scoring_func", KEY_OPTIONAL, &scoring));
    if (strcmp(scoring, "sigmoid") == 0)
        c->scoring_func = MR_SCORE_SIGMOID;
    else if (strcmp(scoring, "softmax") == 0)
        c->scoring_func = MR_SCORE_SOFTMAX;
    else
        return unsupported(r, "scoring_func", scoring, "sigmoid, softmax");

    const char *method = v3 ? "noaux_tc" : "greedy";
    MR_TRY(get_string(r, "topk_method", KEY_OPTIONAL, &method));
    if (strcmp(method, "noaux_tc") == 0)
        c->topk_method = MR_TOPK_NOAUX_TC;
    else if (strcmp(method, "greedy") == 0)
        c->topk_method = MR_TOPK_GREEDY;
    else if (strcmp(method, "group_limited_greedy") == 0)
        c->topk_method = MR_TOPK_GROUP_LIMITED_GREEDY;
    else
        return unsupported(r, "topk_method", method, "noaux_tc, greedy, group_limited_greedy");
    if (v3 && c->scoring_func == MR_SCORE_SIGMOID && c->topk_method != MR_TOPK_NOAUX_TC)
        return unsupported(r, "topk_method", method, "noaux_tc (with scoring_func sigmoid)");

    c->norm_topk_prob = v3;
    MR_TRY(get_bool(r, "norm_topk_prob", KEY_OPTIONAL, &c->norm_topk_prob));
    double scaling = v3 ? 2.5 : 1.0;
    MR_TRY(get_positive_double(r, "routed_scaling_factor", KEY_OPTIONAL, &scaling));
    c->routed_scaling_factor = (float)scaling;

    int experts = c->n_routed_experts;
    if (experts % c->n_group != 0)
        return mr_fail(MR_EINVAL, "%s: key n_group %d does not divide n_routed_experts %d",
                       r->origin, c->n_group, experts);
    if (c->topk_group > c->n_group)
        return mr_fail(MR_EINVAL, "%s: key topk_group %d > n_group %d", r->origin,
                       c->topk_group, c->n_group);
    if (c->num_experts_per_tok > experts)
        return mr_fail(MR_EINVAL, "%s: key num_experts_per_tok %d > n_routed_experts %d",
                       r->origin, c->num_experts_per_tok, experts);
    bool grouped = c->topk_method != MR_TOPK_GREEDY && c->n_group > 1;
    if (grouped && c->num_experts_per_tok > c->topk_group * (experts / c->n_group))
        return mr_fail(MR_EINVAL,
                       "%s: key num_experts_per_tok %d > topk_group %d x %d experts per group",
                       r->origin, c->num_experts_per_tok, c->topk_group, experts / c->n_group);
    if (c->topk_method == MR_TOPK_NOAUX_TC && experts / c->n_group < 2)
        return mr_fail(MR_EINVAL,
                       "%s: key n_group %d leaves %d expert per group; noaux_tc scores a group "
                       "by its top 2",
                       r->origin, c->n_group, experts / c->n_group);
    return MR_OK;
}

static mr_status parse_rope_scaling(const cfg_reader *top, mr_config *c)
{
    c->rope_scaling_yarn = false;
    c->yarn_enabled = false;
    c->yarn_factor = 1.0;
    c->yarn_original_max_position_embeddings = 0;
    c->yarn_beta_fast = 32.0;
    c->yarn_beta_slow = 1.0;
    c->yarn_mscale = 1.0;
    c->yarn_mscale_all_dim = 0.0;

    const cJSON *scaling = get_item(top, "rope_scaling", true);
    if (!scaling)
        return MR_OK;
    if (!cJSON_IsObject(scaling))
        return wrong_type(top, "rope_scaling", scaling, "an object or null");
    cfg_reader r = {.object = scaling, .origin = top->origin, .prefix = "rope_scaling."};
    const char *type = NULL;
    const char *type_key =
        !get_item(&r, "type", false) && get_item(&r, "rope_type", false) ? "rope_type" : "type";
    MR_TRY(get_string(&r, type_key, KEY_REQUIRED, &type));
    if (strcmp(type, "yarn") != 0)
        return unsupported(&r, type_key, type, "yarn");

    c->rope_scaling_yarn = true;
    MR_TRY(get_positive_double(&r, "factor", KEY_REQUIRED, &c->yarn_factor));
    MR_TRY(get_int_min(&r, "original_max_position_embeddings", KEY_REQUIRED, 1,
                       &c->yarn_original_max_position_embeddings));
    MR_TRY(get_double(&r, "beta_fast", KEY_OPTIONAL, &c->yarn_beta_fast));
    MR_TRY(get_double(&r, "beta_slow", KEY_OPTIONAL, &c->yarn_beta_slow));
    MR_TRY(get_double(&r, "mscale", KEY_OPTIONAL, &c->yarn_mscale));
    MR_TRY(get_double(&r, "mscale_all_dim", KEY_OPTIONAL, &c->yarn_mscale_all_dim));
    c->yarn_enabled = c->max_position_embeddings > c->yarn_original_max_position_embeddings;
    return MR_OK;
}

static mr_status parse_quantization(const cfg_reader *top, mr_config *c)
{
    c->fp8 = false;
    c->weight_block_size[0] = 0;
    c->weight_block_size[1] = 0;
    const cJSON *quant = get_item(top, "quantization_config", true);
    if (!quant)
        return MR_OK;
    if (!cJSON_IsObject(quant))
        return wrong_type(top, "quantization_config", quant, "an object or null");
    cfg_reader r = {.object = quant, .origin = top->origin, .prefix = "quantization_config."};
    const char *method = NULL;
    MR_TRY(get_string(&r, "quant_method", KEY_REQUIRED, &method));
    if (strcmp(method, "fp8") != 0)
        return unsupported(&r, "quant_method", method, "fp8");
    const char *fmt = "e4m3";
    MR_TRY(get_string(&r, "fmt", KEY_OPTIONAL, &fmt));
    if (strcmp(fmt, "e4m3") != 0)
        return unsupported(&r, "fmt", fmt, "e4m3");

    const cJSON *block = get_item(&r, "weight_block_size", false);
    if (!block)
        return missing(&r, "weight_block_size");
    if (!cJSON_IsArray(block) || cJSON_GetArraySize(block) != 2)
        return wrong_type(&r, "weight_block_size", block, "an array of 2 positive integers");
    for (int i = 0; i < 2; i++) {
        const cJSON *item = cJSON_GetArrayItem(block, i);
        if (!number_is_int(item) || item->valuedouble < 1)
            return wrong_type(&r, "weight_block_size", item, "an array of 2 positive integers");
        c->weight_block_size[i] = (int)item->valuedouble;
    }
    c->fp8 = true;
    return MR_OK;
}

mr_status mr_config_parse(const char *json_text, size_t len, const char *origin,
                          mr_config *out)
{
    mr_status status = MR_OK;
    mr_config config;
    memset(&config, 0, sizeof config);
    if (!origin)
        origin = "config.json";
    cJSON *root = cJSON_ParseWithLength(json_text, len);
    if (!root)
        return mr_fail(MR_EINVAL, "%s: not valid JSON", origin);
    if (!cJSON_IsObject(root)) {
        status = mr_fail(MR_EINVAL, "%s: top level is not a JSON object", origin);
        goto fail;
    }
    cfg_reader reader = {.object = root, .origin = origin, .prefix = ""};
    if ((status = parse_model_type(&reader, &config)) != MR_OK ||
        (status = parse_sizes(&reader, &config)) != MR_OK ||
        (status = parse_routing(&reader, &config)) != MR_OK ||
        (status = parse_rope_scaling(&reader, &config)) != MR_OK ||
        (status = parse_quantization(&reader, &config)) != MR_OK)
        goto fail;
    *out = config;

fail:
    cJSON_Delete(root);
    return status;
}

mr_status mr_config_load(const char *path, mr_config *out)
{
    char *text = NULL;
    size_t len = 0;
    MR_TRY(mr_read_small_file(path, CONFIG_MAX_BYTES, &text, &len));
    mr_status status = mr_config_parse(text, len, path, out);
    free(text);
    return status;
}
