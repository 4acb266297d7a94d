/* model/synth_presets.c — the presets of `moerun synth` and their
 * config.json (cJSON, printed in the HF layout). Contract in synth.h; the
 * writer (synth.c) uses synth_preset_config and synth_hf_layout from
 * synth_internal.h. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "synth.h"
#include "synth_internal.h"

typedef struct synth_preset {
    const char *name;
    const char *model_type;
    bool v2;                      /* DeepseekV2ForCausalLM */
    int hidden, intermediate, moe_intermediate, layers, first_dense, heads;
    int routed, shared, top_k, n_group, topk_group;
    const char *topk_method, *scoring;
    bool norm_topk;
    double routed_scaling;
    int q_lora;                   /* 0 → null */
    int kv_lora, nope, rope, v_head, vocab;
    bool yarn;
    double yarn_factor, mscale, mscale_all_dim;
    int yarn_original, max_position;
} synth_preset;

static const synth_preset presets[] = {
    {"tiny", "deepseek_v3", false, 160, 256, 48, 3, 1, 4, 16, 1, 4, 4, 2, "noaux_tc", "sigmoid",
     true, 2.5, 48, 32, 16, 8, 16, 256, true, 4.0, 1.0, 1.0, 64, 256},
    {"tiny-v2", "deepseek_v2", true, 160, 256, 48, 3, 1, 4, 16, 2, 4, 4, 2,
     "group_limited_greedy", "softmax", false, 1.5, 0, 32, 16, 8, 16, 256, true, 4.0, 0.9, 0.707,
     64, 256},
    {"tiny-lite", "deepseek_v2", true, 160, 256, 48, 2, 1, 4, 16, 2, 6, 1, 1, "greedy",
     "softmax", false, 1.0, 0, 32, 16, 8, 16, 256, false, 1.0, 1.0, 1.0, 0, 256},
    {"small", "deepseek_v3", false, 1024, 2816, 512, 6, 1, 16, 16, 1, 6, 4, 2, "noaux_tc",
     "sigmoid", true, 2.5, 384, 256, 64, 32, 64, 8192, true, 4.0, 1.0, 1.0, 1024, 4096},
};

static const char *const preset_names[] = {"tiny", "tiny-v2", "tiny-lite", "small", NULL};

const char *const *mr_synth_presets(void)
{
    return preset_names;
}

static const synth_preset *find_preset(const char *name)
{
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++)
        if (strcmp(presets[i].name, name) == 0)
            return &presets[i];
    return NULL;
}

/* ------------------------------------------------------------------ config.json */

static void add_number(cJSON *obj, const char *key, double value)
{
    cJSON_AddNumberToObject(obj, key, value);
}

/* Keys in HF's (alphabetical) order; ignored extras included on purpose. */
static cJSON *preset_json(const synth_preset *p, mr_synth_dtype dtype)
{
    const char *cls = p->v2 ? "DeepseekV2" : "DeepseekV3";
    char buf[96];
    cJSON *root = cJSON_CreateObject();
    cJSON *archs = cJSON_AddArrayToObject(root, "architectures");
    snprintf(buf, sizeof buf, "%sForCausalLM", cls);
    cJSON_AddItemToArray(archs, cJSON_CreateString(buf));
    cJSON_AddFalseToObject(root, "attention_bias");
    add_number(root, "attention_dropout", 0.0);
    cJSON *auto_map = cJSON_AddObjectToObject(root, "auto_map");
    snprintf(buf, sizeof buf, "configuration_deepseek.%sConfig", cls);
    cJSON_AddStringToObject(auto_map, "AutoConfig", buf);
    snprintf(buf, sizeof buf, "modeling_deepseek.%sModel", cls);
    cJSON_AddStringToObject(auto_map, "AutoModel", buf);
    snprintf(buf, sizeof buf, "modeling_deepseek.%sForCausalLM", cls);
    cJSON_AddStringToObject(auto_map, "AutoModelForCausalLM", buf);
    add_number(root, "bos_token_id", 0);
    add_number(root, "eos_token_id", 1);
    add_number(root, "ep_size", 1);
    add_number(root, "first_k_dense_replace", p->first_dense);
    cJSON_AddStringToObject(root, "hidden_act", "silu");
    add_number(root, "hidden_size", p->hidden);
    add_number(root, "initializer_range", 0.02);
    add_number(root, "intermediate_size", p->intermediate);
    add_number(root, "kv_lora_rank", p->kv_lora);
    add_number(root, "max_position_embeddings", p->max_position);
    cJSON_AddStringToObject(root, "model_type", p->model_type);
    add_number(root, "moe_intermediate_size", p->moe_intermediate);
    add_number(root, "moe_layer_freq", 1);
    add_number(root, "n_group", p->n_group);
    add_number(root, "n_routed_experts", p->routed);
    add_number(root, "n_shared_experts", p->shared);
    cJSON_AddBoolToObject(root, "norm_topk_prob", p->norm_topk);
    add_number(root, "num_attention_heads", p->heads);
    add_number(root, "num_experts_per_tok", p->top_k);
    add_number(root, "num_hidden_layers", p->layers);
    add_number(root, "num_key_value_heads", p->heads);
    add_number(root, "num_nextn_predict_layers", 0);
    if (p->q_lora > 0)
        add_number(root, "q_lora_rank", p->q_lora);
    else
        cJSON_AddNullToObject(root, "q_lora_rank");
    add_number(root, "qk_nope_head_dim", p->nope);
    add_number(root, "qk_rope_head_dim", p->rope);
    if (dtype == MR_SYNTH_FP8) {
        cJSON *quant = cJSON_AddObjectToObject(root, "quantization_config");
        cJSON_AddStringToObject(quant, "activation_scheme", "dynamic");
        cJSON_AddStringToObject(quant, "fmt", "e4m3");
        cJSON_AddStringToObject(quant, "quant_method", "fp8");
        cJSON *block = cJSON_AddArrayToObject(quant, "weight_block_size");
        cJSON_AddItemToArray(block, cJSON_CreateNumber(SYNTH_FP8_BLOCK));
        cJSON_AddItemToArray(block, cJSON_CreateNumber(SYNTH_FP8_BLOCK));
    }
    add_number(root, "rms_norm_eps", 1e-6);
    if (p->yarn) {
        cJSON *scaling = cJSON_AddObjectToObject(root, "rope_scaling");
        add_number(scaling, "beta_fast", 32);
        add_number(scaling, "beta_slow", 1);
        add_number(scaling, "factor", p->yarn_factor);
        add_number(scaling, "mscale", p->mscale);
        add_number(scaling, "mscale_all_dim", p->mscale_all_dim);
        add_number(scaling, "original_max_position_embeddings", p->yarn_original);
        cJSON_AddStringToObject(scaling, "type", "yarn");
    } else {
        cJSON_AddNullToObject(root, "rope_scaling");
    }
    add_number(root, "rope_theta", 10000);
    add_number(root, "routed_scaling_factor", p->routed_scaling);
    cJSON_AddStringToObject(root, "scoring_func", p->scoring);
    cJSON_AddFalseToObject(root, "tie_word_embeddings");
    add_number(root, "topk_group", p->topk_group);
    cJSON_AddStringToObject(root, "topk_method", p->topk_method);
    cJSON_AddStringToObject(root, "torch_dtype", dtype == MR_SYNTH_F32 ? "float32" : "bfloat16");
    cJSON_AddStringToObject(root, "transformers_version", "4.46.3");
    cJSON_AddTrueToObject(root, "use_cache");
    add_number(root, "v_head_dim", p->v_head);
    add_number(root, "vocab_size", p->vocab);
    return root;
}

/* cJSON_Print indents with tabs and writes "key":<tab>value; rewrite it in the
 * layout of HF's json.dumps(indent=2). Raw tabs never occur inside cJSON
 * strings (they are escaped), so every tab is layout. Replaces *text. */
void synth_hf_layout(char **text)
{
    size_t tabs = 0, len = strlen(*text);
    for (size_t i = 0; i < len; i++)
        tabs += (*text)[i] == '\t';
    char *out = malloc(len + tabs + 1);
    if (!out)
        return;                    /* keep cJSON's layout: still valid JSON */
    size_t o = 0;
    bool line_start = true;
    for (size_t i = 0; i < len; i++) {
        char ch = (*text)[i];
        if (ch == '\t') {
            out[o++] = ' ';
            if (line_start)
                out[o++] = ' ';
            continue;
        }
        line_start = ch == '\n';
        out[o++] = ch;
    }
    out[o] = '\0';
    free(*text);
    *text = out;
}

/* Print the preset's config.json and parse it back. *text_out may be NULL. */
mr_status synth_preset_config(const char *preset, mr_synth_dtype dtype, mr_config *cfg,
                               char **text_out)
{
    const synth_preset *p = find_preset(preset);
    if (!p)
        return mr_fail(MR_EINVAL, "synth: unknown preset \"%s\" (tiny, tiny-v2, tiny-lite, small)",
                       preset);
    cJSON *root = preset_json(p, dtype);
    char *text = root ? cJSON_Print(root) : NULL;
    cJSON_Delete(root);
    if (!text)
        return mr_fail(MR_ENOMEM, "synth: out of memory printing config.json");
    synth_hf_layout(&text);
    mr_status status = mr_config_parse(text, strlen(text), preset, cfg);
    if (status == MR_OK && text_out)
        *text_out = text;
    else
        free(text);
    return status;
}

mr_status mr_synth_preset_config(const char *preset, mr_config *out)
{
    return synth_preset_config(preset ? preset : "tiny", MR_SYNTH_F32, out, NULL);
}

