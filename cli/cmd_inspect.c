/* cli/cmd_inspect.c — `moerun inspect --model DIR [--load]`: parse config.json,
 * open the safetensors archive, check every tensor name/shape/dtype against the
 * config (mr_weights_check) and print a summary to stdout: the config, the
 * parameter count, tensor counts and bytes per dtype. --load also converts
 * every tensor to fp32 (finds fp8 NaN codes; needs the memory).
 * Exit 0 on a good model, 1 with the error on stderr otherwise, 2 on usage.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/status.h"
#include "../model/config.h"
#include "../model/safetensors.h"
#include "../model/weights.h"
#include "commands.h"

static const char *topk_method_name(mr_topk_method method)
{
    switch (method) {
    case MR_TOPK_NOAUX_TC: return "noaux_tc";
    case MR_TOPK_GREEDY: return "greedy";
    case MR_TOPK_GROUP_LIMITED_GREEDY: return "group_limited_greedy";
    }
    return "?";
}

static void print_config(const mr_config *c)
{
    int dense = c->first_k_dense_replace;
    printf("model_type         %s (%s)\n", c->model_type,
           c->arch == MR_ARCH_DEEPSEEK_V3 ? "DeepSeek-V3 family" : "DeepSeek-V2 family");
    printf("layers             %d (%d dense, %d MoE)\n", c->num_hidden_layers, dense,
           c->num_hidden_layers - dense);
    printf("hidden_size        %d\n", c->hidden_size);
    printf("heads              %d\n", c->num_attention_heads);
    printf("vocab_size         %d\n", c->vocab_size);
    printf("intermediate       dense %d, expert %d\n", c->intermediate_size,
           c->moe_intermediate_size);
    printf("experts            %d routed (top-%d, %d groups, top-%d groups), %d shared\n",
           c->n_routed_experts, c->num_experts_per_tok, c->n_group, c->topk_group,
           c->n_shared_experts);
    printf("gate               %s %s, norm_topk_prob %s, routed_scaling_factor %g\n",
           c->scoring_func == MR_SCORE_SIGMOID ? "sigmoid" : "softmax",
           topk_method_name(c->topk_method), c->norm_topk_prob ? "true" : "false",
           (double)c->routed_scaling_factor);
    printf("mla                q_lora_rank %d%s, kv_lora_rank %d, qk_nope %d, qk_rope %d, "
           "v_head %d\n",
           c->q_lora_rank, c->q_lora_rank == 0 ? " (direct q_proj)" : "", c->kv_lora_rank,
           c->qk_nope_head_dim, c->qk_rope_head_dim, c->v_head_dim);
    printf("rope               theta %g, max_position_embeddings %d\n", c->rope_theta,
           c->max_position_embeddings);
    if (c->rope_scaling_yarn)
        printf("yarn               %s: factor %g, original %d, beta_fast %g, beta_slow %g, "
               "mscale %g, mscale_all_dim %g\n",
               c->yarn_enabled ? "enabled" : "disabled (max_position <= original)",
               c->yarn_factor, c->yarn_original_max_position_embeddings, c->yarn_beta_fast,
               c->yarn_beta_slow, c->yarn_mscale, c->yarn_mscale_all_dim);
    else
        printf("yarn               none\n");
    printf("rms_norm_eps       %g\n", (double)c->rms_norm_eps);
    if (c->fp8)
        printf("quantization       fp8 e4m3, block %dx%d\n", c->weight_block_size[0],
               c->weight_block_size[1]);
    else
        printf("quantization       none\n");
    printf("tokens             bos %d, eos %d\n", c->bos_token_id, c->eos_token_id);
}

static bool is_scale(const char *name)
{
    size_t len = strlen(name);
    return len > 10 && strcmp(name + len - 10, "_scale_inv") == 0;
}

static bool is_routed_expert(const char *name)
{
    return strstr(name, ".mlp.experts.") != NULL;
}


static void print_tensors(const mr_config *c, const mr_st_archive *archive)
{
    static const mr_dtype dtypes[] = {MR_DT_F32, MR_DT_BF16, MR_DT_F16, MR_DT_F8_E4M3};
    size_t count[4] = {0};
    uint64_t bytes[4] = {0}, total_bytes = 0, params = 0, expert_params = 0;
    uint64_t fp32_params = 0; /* what stays fp32 on a backend: embedding table, vectors */
    size_t skipped = 0;
    for (size_t i = 0; i < mr_st_count(archive); i++) {
        const mr_tensor_info *t = mr_st_at(archive, i);
        count[t->dtype]++;
        bytes[t->dtype] += t->nbytes;
        total_bytes += t->nbytes;
        if (mr_weights_is_mtp_tensor(t->name, c->num_hidden_layers)) {
            skipped++;
            continue;
        }
        if (is_scale(t->name))
            continue;
        params += (uint64_t)t->n_elems;
        if (t->ndim < 2 || strcmp(t->name, "model.embed_tokens.weight") == 0)
            fp32_params += (uint64_t)t->n_elems;
        if (is_routed_expert(t->name))
            expert_params += (uint64_t)t->n_elems;
    }
    uint64_t per_expert = c->n_routed_experts > 0 && c->num_hidden_layers > c->first_k_dense_replace
        ? expert_params / ((uint64_t)c->n_routed_experts *
                           (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace))
        : 0;
    uint64_t active = params - expert_params +
                      per_expert * (uint64_t)c->num_experts_per_tok *
                          (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace);
    printf("parameters         %" PRIu64 " (%" PRIu64 " in routed experts, %" PRIu64
           " active per token)\n",
           params, expert_params, active);
    /* what a backend holds (mr_weights_to_backend) and the latent KV per token */
    const double matrices = (double)(params - fp32_params);
    printf("serving memory     weights %.3g GB fp32, %.3g GB with --precision bf16 (matrices "
           "bf16; embedding and vectors fp32)\n",
           4.0 * (double)params / 1e9, (2.0 * matrices + 4.0 * (double)fp32_params) / 1e9);
    const double kv_values = (double)c->num_hidden_layers * mr_config_latent_dim(c);
    printf("kv per token       %.1f KB fp32, %.1f KB with --kv-dtype bf16 (%d layers x %d "
           "latent values)\n", 4.0 * kv_values / 1e3, 2.0 * kv_values / 1e3,
           c->num_hidden_layers, mr_config_latent_dim(c));
    printf("tensors            %zu (%zu in layers >= num_hidden_layers, ignored)\n",
           mr_st_count(archive), skipped);
    printf("%-18s %10s %16s\n", "dtype", "tensors", "bytes");
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++)
        if (count[dtypes[d]] > 0)
            printf("%-18s %10zu %16" PRIu64 "\n", mr_dtype_name(dtypes[d]), count[dtypes[d]],
                   bytes[dtypes[d]]);
    printf("%-18s %10zu %16" PRIu64 "\n", "total", mr_st_count(archive), total_bytes);
}

int mr_cmd_inspect(int argc, char **argv)
{
    const char *model_dir = NULL;
    bool load = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) {
            model_dir = argv[++i];
        } else if (strcmp(argv[i], "--load") == 0) {
            load = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            printf("usage: moerun inspect --model DIR [--load]\n");
            return 0;
        } else {
            fprintf(stderr, "moerun inspect: unknown option %s\n"
                            "usage: moerun inspect --model DIR [--load]\n",
                    argv[i]);
            return 2;
        }
    }
    if (!model_dir) {
        fprintf(stderr, "moerun inspect: --model DIR is required\n");
        return 2;
    }

    int rc = 1;
    mr_st_archive *archive = NULL;
    mr_weights weights = {0};
    mr_config config;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", model_dir);
    if (mr_config_load(path, &config) != MR_OK || mr_st_open_dir(model_dir, &archive) != MR_OK ||
        mr_weights_check(&config, archive) != MR_OK)
        goto fail;
    if (load && mr_weights_load(&config, archive, NULL, NULL, &weights) != MR_OK)
        goto fail;

    printf("model              %s\n", model_dir);
    print_config(&config);
    print_tensors(&config, archive);
    if (load)
        printf("loaded             %" PRIu64 " fp32 bytes\n", weights.n_bytes);
    rc = 0;
fail:
    if (rc != 0)
        fprintf(stderr, "moerun inspect: error: %s\n", mr_last_error());
    mr_weights_free(&weights);
    mr_st_close(archive);
    return rc;
}
