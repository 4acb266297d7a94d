/* planner/capacity.c — the cost model of `moerun plan capacity`: bytes,
 * FLOPs and all-to-all volume of one layer on one GPU from the config's
 * shapes, their roofline time, weights and KV memory per GPU, decode and
 * prefill capacity. Contract and the model's assumptions in capacity.h; the
 * simulation and the search are in capacity_sim.c. */
#include <math.h>
#include <string.h>

#include "capacity.h"

void mr_cap_deploy_defaults(const mr_config *cfg, mr_cap_deploy *out)
{
    *out = (mr_cap_deploy){
        .weight_bytes = cfg && cfg->fp8 ? 1 : 2,
        .kv_bytes = 2,
        .efficiency = 0.6,
        .link_efficiency = 0.8,
        .mem_util = 0.9,
        .prefill_chunk_tokens = 4096,
        .decode_max_batch = 256,
        .prefill_ep_nodes = 0,
        .decode_ep_nodes = 0,
        .max_nodes = 4096,
    };
}

/* Bytes per linear weight: fp8 adds one fp32 scale per block (the config's
 * weight_block_size, else 128x128). */
static double weight_scale_bytes(const mr_cap_model *m)
{
    if (m->dep.weight_bytes != 1) return m->dep.weight_bytes;
    const int *bs = m->cfg->weight_block_size;
    double block = bs[0] > 0 && bs[1] > 0 ? (double)bs[0] * bs[1] : 128.0 * 128.0;
    return 1.0 + 4.0 / block;
}

double mr_cap_attn_params(const mr_config *c)
{
    const double D = c->hidden_size, H = c->num_attention_heads, C = c->kv_lora_rank;
    const double R = c->qk_rope_head_dim, nope = c->qk_nope_head_dim, vd = c->v_head_dim;
    const double q = c->q_lora_rank > 0 ? D * c->q_lora_rank + c->q_lora_rank * H * (nope + R)
                                        : D * H * (nope + R);
    return q + D * (C + R)   /* kv_a: latent + rope key */
           + C * H * (nope + vd) /* kv_b: per-head nope keys and values */
           + H * vd * D;     /* o_proj */
}

static double expert_params(const mr_config *c)
{
    return 3.0 * c->hidden_size * c->moe_intermediate_size; /* gate, up, down */
}

static int n_dense_layers(const mr_config *c)
{
    int k = c->first_k_dense_replace;
    return k < c->num_hidden_layers ? k : c->num_hidden_layers;
}

static double experts_held(const mr_config *c, int ep_gpus)
{
    return ceil((double)c->n_routed_experts / ep_gpus);
}

/* Attention of one layer: projections in the weight dtype, the core in bf16. */
static void attention_work(const mr_cap_model *m, const mr_cap_batch *b, mr_cap_work *w)
{
    const mr_config *c = m->cfg;
    const double T = b->tokens, pairs = b->attn_pairs, H = c->num_attention_heads;
    const double C = c->kv_lora_rank, R = c->qk_rope_head_dim, nope = c->qk_nope_head_dim;
    const double vd = c->v_head_dim, attn = mr_cap_attn_params(c);
    memset(w, 0, sizeof *w);
    w->hbm_bytes = attn * weight_scale_bytes(m) +
                   b->kv_rows * mr_config_latent_dim(c) * m->dep.kv_bytes;
    w->gemm_flops = 2.0 * T * attn;
    if (b->phase == MR_CAP_DECODE) { /* absorbed: scores over C + R, values over C */
        w->bf16_flops = H * pairs * (4.0 * C + 2.0 * R);
    } else { /* expanded per head: QK over nope + rope, PV over v_head */
        w->bf16_flops = 2.0 * H * pairs * (nope + R) + 2.0 * H * pairs * vd;
        /* every prompt token's latent KV row leaves for its decode node */
        w->net_bytes = T * mr_config_latent_dim(c) * m->dep.kv_bytes;
    }
}

void mr_cap_layer_work(const mr_cap_model *m, int ep_gpus, bool moe, const mr_cap_batch *b,
                       mr_cap_work *w)
{
    const mr_config *c = m->cfg;
    const double ws = weight_scale_bytes(m), T = b->tokens, D = c->hidden_size;
    attention_work(m, b, w);

    if (!moe) {
        const double mlp = 3.0 * D * c->intermediate_size;
        w->hbm_bytes += mlp * ws;
        w->gemm_flops += 2.0 * T * mlp;
        return;
    }
    const double E = c->n_routed_experts, K = c->num_experts_per_tok, G = ep_gpus;
    const double expert = expert_params(c), shared = c->n_shared_experts * expert;
    const double touched = 1.0 - pow(1.0 - K / E, G * T);
    w->hbm_bytes += E * D * 2.0 /* router, bf16 */ + shared * ws +
                    experts_held(c, ep_gpus) * touched * expert * ws;
    w->bf16_flops += 2.0 * T * E * D;
    w->gemm_flops += 2.0 * T * (shared + K * expert);

    /* all-to-all: dispatch D values in the weight dtype, combine D in bf16 */
    const double copy = D * (m->dep.weight_bytes + 2.0);
    const double gpn = m->hw.gpus_per_node < ep_gpus ? m->hw.gpus_per_node : ep_gpus;
    if (b->phase == MR_CAP_DECODE) {
        w->nvlink_bytes = T * K * (gpn - 1.0) / G * copy;
        w->net_bytes += T * K * (G - gpn) / G * copy;
    } else {
        const double nodes = G / gpn;
        w->nvlink_bytes = T * K * (gpn - 1.0) / gpn * copy;
        w->net_bytes += T * (nodes - 1.0) * (1.0 - pow(1.0 - 1.0 / nodes, K)) * copy;
    }
}

void mr_cap_head_work(const mr_cap_model *m, const mr_cap_batch *b, mr_cap_work *w)
{
    const double vd = (double)m->cfg->vocab_size * m->cfg->hidden_size;
    memset(w, 0, sizeof *w);
    if (b->logits_rows <= 0) return;
    w->hbm_bytes = 2.0 * vd;
    w->bf16_flops = 2.0 * b->logits_rows * vd;
}

void mr_cap_work_terms(const mr_cap_model *m, const mr_cap_work *w, mr_cap_terms *out)
{
    const mr_cap_hw *hw = &m->hw;
    const double eff = m->dep.efficiency, link = m->dep.link_efficiency;
    const double gemm_peak = m->dep.weight_bytes == 1 ? hw->fp8_flops_per_s : hw->bf16_flops_per_s;
    out->hbm_s = w->hbm_bytes / (hw->hbm_bytes_per_s * eff);
    out->math_s = (w->gemm_flops / gemm_peak + w->bf16_flops / hw->bf16_flops_per_s) / eff;
    out->nvlink_s = w->nvlink_bytes / (hw->nvlink_bytes_per_s * link);
    out->net_s = w->net_bytes / (hw->net_bytes_per_s * link);
}

double mr_cap_work_s(const mr_cap_model *m, const mr_cap_work *w)
{
    mr_cap_terms t;
    mr_cap_work_terms(m, w, &t);
    return fmax(fmax(t.hbm_s, t.math_s), fmax(t.nvlink_s, t.net_s));
}

double mr_cap_forward_s(const mr_cap_model *m, int ep_gpus, const mr_cap_batch *b)
{
    const int dense = n_dense_layers(m->cfg), moe = m->cfg->num_hidden_layers - dense;
    mr_cap_work w;
    double t = 0;
    if (dense > 0) {
        mr_cap_layer_work(m, ep_gpus, false, b, &w);
        t += dense * mr_cap_work_s(m, &w);
    }
    if (moe > 0) {
        mr_cap_layer_work(m, ep_gpus, true, b, &w);
        t += moe * mr_cap_work_s(m, &w);
    }
    mr_cap_head_work(m, b, &w);
    return t + mr_cap_work_s(m, &w);
}

/* Weights of a GPU that holds `held` routed experts per MoE layer and every
 * non-expert weight (held = 0: an attention node of the disaggregated layout). */
static double weight_bytes_holding(const mr_cap_model *m, double held)
{
    const mr_config *c = m->cfg;
    const double ws = weight_scale_bytes(m), D = c->hidden_size, E = c->n_routed_experts;
    const int dense = n_dense_layers(c), moe = c->num_hidden_layers - dense;
    const double expert = expert_params(c);
    const double attn = mr_cap_attn_params(c) * ws;
    const double dense_layer = attn + 3.0 * D * c->intermediate_size * ws;
    const double moe_layer = attn + E * D * 2.0 + c->n_shared_experts * expert * ws +
                             held * expert * ws;
    const double embed_head = 2.0 * 2.0 * c->vocab_size * D; /* bf16 embedding + lm_head */
    return dense * dense_layer + moe * moe_layer + embed_head;
}

double mr_cap_weight_bytes_per_gpu(const mr_cap_model *m, int ep_gpus)
{
    return weight_bytes_holding(m, experts_held(m->cfg, ep_gpus));
}

double mr_cap_kv_bytes_per_token(const mr_cap_model *m)
{
    return (double)m->cfg->num_hidden_layers * mr_config_latent_dim(m->cfg) * m->dep.kv_bytes;
}

double mr_cap_kv_batch_limit(const mr_cap_model *m, int ep_gpus, double context)
{
    double free_bytes = m->dep.mem_util * m->hw.hbm_bytes - mr_cap_weight_bytes_per_gpu(m, ep_gpus);
    if (free_bytes <= 0) return 0;
    return floor(free_bytes / (mr_cap_kv_bytes_per_token(m) * fmax(context, 1.0)));
}

/* ---- attention-FFN disaggregation (the search is in capacity_afd.c) -------- */

double mr_cap_afd_net_bytes_per_token(const mr_cap_model *m)
{
    const mr_config *c = m->cfg;
    return c->num_experts_per_tok * (double)c->hidden_size * (m->dep.weight_bytes + 2.0);
}

void mr_cap_afd_layer_work(const mr_cap_model *m, int attn_gpus, int expert_gpus, bool moe,
                           const mr_cap_batch *b, mr_cap_work *attn, mr_cap_work *experts)
{
    const mr_config *c = m->cfg;
    memset(experts, 0, sizeof *experts);
    if (!moe) { /* dense layers run on the attention GPUs as in DP attention */
        mr_cap_layer_work(m, 1, false, b, attn);
        return;
    }
    const double ws = weight_scale_bytes(m), T = b->tokens, D = c->hidden_size;
    const double E = c->n_routed_experts, K = c->num_experts_per_tok;
    const double expert = expert_params(c), shared = c->n_shared_experts * expert;
    attention_work(m, b, attn);
    attn->hbm_bytes += E * D * 2.0 /* router, bf16 */ + shared * ws;
    attn->bf16_flops += 2.0 * T * E * D;
    attn->gemm_flops += 2.0 * T * shared;
    attn->net_bytes += T * mr_cap_afd_net_bytes_per_token(m);

    /* the expert GPUs see every attention GPU's tokens, K rows each */
    const double tokens = (double)attn_gpus * T, rows = tokens * K / expert_gpus;
    const double touched = 1.0 - pow(1.0 - K / E, tokens);
    experts->hbm_bytes = experts_held(c, expert_gpus) * touched * expert * ws;
    experts->gemm_flops = 2.0 * rows * expert;
    experts->net_bytes = rows * D * (m->dep.weight_bytes + 2.0);
}

double mr_cap_afd_attn_weight_bytes(const mr_cap_model *m)
{
    return weight_bytes_holding(m, 0);
}

double mr_cap_afd_expert_weight_bytes(const mr_cap_model *m, int expert_gpus)
{
    const mr_config *c = m->cfg;
    const int moe = c->num_hidden_layers - n_dense_layers(c);
    return moe * experts_held(c, expert_gpus) * expert_params(c) * weight_scale_bytes(m);
}

double mr_cap_decode_step_s(const mr_cap_model *m, int ep_gpus, double batch, double context)
{
    mr_cap_batch b = {.phase = MR_CAP_DECODE, .tokens = batch, .attn_pairs = batch * context,
                      .kv_rows = batch * context, .logits_rows = batch};
    return mr_cap_forward_s(m, ep_gpus, &b);
}

int mr_cap_decode_capacity(const mr_cap_model *m, int ep_gpus, double context, double tpot_ms,
                           double *node_tok_s)
{
    double limit = fmin(m->dep.decode_max_batch, mr_cap_kv_batch_limit(m, ep_gpus, context));
    int best = 0;
    double best_step = 0;
    for (int b = 1; b <= (int)limit; b++) { /* the step time grows with the batch */
        double step = mr_cap_decode_step_s(m, ep_gpus, b, context);
        if (1e3 * step > tpot_ms) break;
        best = b;
        best_step = step;
    }
    *node_tok_s = best ? m->hw.gpus_per_node * best / best_step : 0;
    return best;
}

double mr_cap_prefill_node_tok_s(const mr_cap_model *m, int ep_gpus, double mean_input)
{
    const double S = m->dep.prefill_chunk_tokens, L = fmax(mean_input, 1.0);
    mr_cap_batch b = {.phase = MR_CAP_PREFILL, .tokens = S, .attn_pairs = S * (L + 1.0) / 2.0,
                      .kv_rows = S, .logits_rows = S / L};
    return m->hw.gpus_per_node * S / mr_cap_forward_s(m, ep_gpus, &b);
}

mr_status mr_cap_min_ep_nodes(const mr_cap_model *m, int *nodes)
{
    const double usable = m->dep.mem_util * m->hw.hbm_bytes;
    for (int n = 1; n <= 64; n *= 2)
        if (mr_cap_weight_bytes_per_gpu(m, n * m->hw.gpus_per_node) < usable) {
            *nodes = n;
            return MR_OK;
        }
    return mr_fail(MR_EINVAL, "weights do not fit: %.1f GB per GPU even with EP over 64 nodes, "
                   "%.1f GB usable (%.0f%% of %.0f GB HBM)",
                   mr_cap_weight_bytes_per_gpu(m, 64 * m->hw.gpus_per_node) / 1e9, usable / 1e9,
                   100 * m->dep.mem_util, m->hw.hbm_bytes / 1e9);
}
