/* model/config.h — the HF config.json of a DeepSeek-V3-family model.
 *
 * Accepts architectures DeepseekV3ForCausalLM (model_type deepseek_v3 or
 * kimi_k2) and DeepseekV2ForCausalLM (model_type deepseek_v2: V2/V2.5/V2-Lite).
 * Every size, rope_theta, YaRN beta and mscale comes from the file; nothing of
 * DeepSeek-V3 is hard-coded. Keys the engine does not use are ignored
 * (auto_map, ep_size, num_nextn_predict_layers, ...). A used key that is
 * missing, of the wrong JSON type or with an unsupported value is an error
 * whose message names the key (and the file).
 *
 * Ownership: mr_config is a plain value, no heap memory. Thread-safe.
 */
#ifndef MR_CONFIG_H
#define MR_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/status.h"

typedef enum { MR_ARCH_DEEPSEEK_V3, MR_ARCH_DEEPSEEK_V2 } mr_arch;
typedef enum { MR_SCORE_SIGMOID, MR_SCORE_SOFTMAX } mr_score_func;
typedef enum {
    MR_TOPK_NOAUX_TC,             /* V3: sigmoid + correction bias, group score = sum of top-2 */
    MR_TOPK_GREEDY,               /* V2: plain top-k over all experts */
    MR_TOPK_GROUP_LIMITED_GREEDY  /* V2: group score = max within the group */
} mr_topk_method;

typedef struct mr_config {
    mr_arch arch;
    char model_type[32];          /* as written: deepseek_v3 | kimi_k2 | deepseek_v2 */

    int hidden_size;              /* D */
    int intermediate_size;        /* dense MLP inner size */
    int moe_intermediate_size;    /* routed/shared expert inner size */
    int num_hidden_layers;
    int first_k_dense_replace;    /* layers [0, k) are dense, the rest MoE */
    int num_attention_heads;      /* H */
    int vocab_size;

    /* MoE routing */
    int n_routed_experts;         /* E */
    int n_shared_experts;         /* shared expert inner = n_shared * moe_intermediate */
    int num_experts_per_tok;      /* K */
    int n_group;
    int topk_group;
    mr_topk_method topk_method;
    mr_score_func scoring_func;
    bool norm_topk_prob;
    float routed_scaling_factor;

    /* MLA */
    int q_lora_rank;              /* 0: direct q_proj (V2-Lite: null in the file) */
    int kv_lora_rank;
    int qk_nope_head_dim;
    int qk_rope_head_dim;
    int v_head_dim;

    float rms_norm_eps;
    double rope_theta;
    int max_position_embeddings;

    /* rope_scaling; yarn_enabled is the static decision of the official code:
     * type yarn AND max_position_embeddings > original_max_position_embeddings. */
    bool rope_scaling_yarn;       /* rope_scaling present with type/rope_type yarn */
    bool yarn_enabled;
    double yarn_factor;
    int yarn_original_max_position_embeddings;
    double yarn_beta_fast;
    double yarn_beta_slow;
    double yarn_mscale;
    double yarn_mscale_all_dim;

    /* quantization_config (fp8 e4m3 block-scaled checkpoints) */
    bool fp8;
    int weight_block_size[2];     /* [rows, cols]; 0,0 when not fp8 */

    int bos_token_id;             /* -1 when absent */
    int eos_token_id;             /* -1 when absent */
} mr_config;

/* Parse config JSON text. `origin` names the source in messages (a path). */
mr_status mr_config_parse(const char *json_text, size_t len, const char *origin,
                          mr_config *out);

/* Read and parse `path` (a config.json file). */
mr_status mr_config_load(const char *path, mr_config *out);

/* Derived sizes. */
static inline int mr_config_qk_head_dim(const mr_config *c)
{
    return c->qk_nope_head_dim + c->qk_rope_head_dim;
}
static inline bool mr_config_layer_is_moe(const mr_config *c, int layer)
{
    return layer >= c->first_k_dense_replace;
}
/* Latent KV floats per token per layer: kv_lora_rank + qk_rope_head_dim. */
static inline int mr_config_latent_dim(const mr_config *c)
{
    return c->kv_lora_rank + c->qk_rope_head_dim;
}

#endif
