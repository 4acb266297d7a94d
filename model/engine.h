/* model/engine.h — the DeepSeek-V3 forward pass over a batch of tokens.
 *
 * The math is the official DeepSeek-V3 inference code (inference/model.py)
 * in fp32 on dequantized weights: embedding; per layer x += MLA(rmsnorm(x)),
 * x += FFN(rmsnorm(x)) with FFN a dense SwiGLU MLP (layers < first_k_dense_
 * replace) or MoE (router + routed experts + shared experts); final norm;
 * lm_head. YaRN is applied statically from the config (mr_config.yarn_enabled).
 *
 * A batch is any set of tokens from any sequences: each token carries its
 * sequence's KV block table and its position. Tokens of one sequence must be
 * consecutive in the batch with increasing positions (a prompt chunk, or one
 * decode token). A token at position p attends to positions [0, p] of its
 * sequence; positions < p must already be in the cache (earlier forwards or
 * earlier tokens of this batch). The caller reserves KV for every position.
 *
 * Routed experts go through an mr_moe_exec: the default runs them locally
 * from the engine's weights; cluster roles plug in one that ships tokens to
 * expert ranks. Either way the combine is fixed: for each token the K expert
 * outputs are summed in the router's order, then the shared experts' output
 * is added — so results never depend on where or in what order experts ran.
 *
 * Ownership: the engine borrows cfg, weights and kernels (they must outlive
 * it) and owns its scratch memory. One engine per thread.
 */
#ifndef MR_ENGINE_H
#define MR_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "../kernels/kernels.h"
#include "config.h"
#include "kvcache.h"
#include "weights.h"

typedef enum { MR_ATTN_ABSORB, MR_ATTN_NAIVE } mr_attn_mode;

/* Routed-expert execution for one MoE layer.
 * h(n, D): normed hidden states; expert_ids/weights(n, K) from the router.
 * Must write expert_out(n, K, D): row (t, k) = expert_ids[t,k]'s FFN of h[t]
 * (unweighted). Returns MR_OK or an error with its message set. */
typedef struct mr_moe_exec {
    mr_status (*run)(void *ctx, int layer, const float *h, int n_tokens,
                     const int32_t *expert_ids, const float *weights, float *expert_out);
    void *ctx;
} mr_moe_exec;

typedef struct mr_engine_opts {
    const mr_kernels *kernels;   /* NULL = CPU */
    mr_attn_mode attn;
    const mr_moe_exec *moe;      /* NULL = local experts from the weights */
    /* Called after every layer (NULL = none): cluster roles keep their
     * transport serviced (heartbeats) through long forward passes. */
    void (*between_layers)(void *ctx);
    void *between_layers_ctx;
} mr_engine_opts;

typedef struct mr_batch {
    int n_tokens;
    const int32_t *token_ids;    /* (n) */
    const int32_t *positions;    /* (n) */
    mr_kv_seq *const *seqs;      /* (n) block table of each token's sequence */
    const uint8_t *want_logits;  /* (n) 1 = write this token's logits; NULL = all */
} mr_batch;

typedef struct mr_engine mr_engine;

mr_status mr_engine_create(const mr_config *cfg, const mr_weights *weights,
                           const mr_engine_opts *opts, mr_engine **out);
void mr_engine_destroy(mr_engine *engine); /* accepts NULL */

/* Run the batch; logits(n_want, vocab) rows in batch order for the tokens with
 * want_logits set. Token ids and positions are validated (MR_ERANGE). */
mr_status mr_engine_forward(mr_engine *engine, const mr_batch *batch, float *logits);

/* The softmax scale and the RoPE tables the engine derived from the config
 * (exposed for tests): scale = qk_head_dim^-0.5 · mscale²; cos/sin(rope/2)
 * at `pos`, including the YaRN cos/sin mscale. */
float mr_engine_softmax_scale(const mr_engine *engine);
void mr_engine_rope_at(const mr_engine *engine, int pos, float *cos_out, float *sin_out);

/* Routed experts of MoE layer `layer`, row by row: row i is the hidden
 * state rows[i] (D floats) for expert experts[i]; writes out[i] (D floats,
 * unweighted). Rows are grouped per expert, one GEMM batch each, experts in
 * increasing id. An expert not loaded in `weights` → MR_EINVAL naming it.
 * Used by the local path and by expert / prefill ranks serving peers. */
mr_status mr_experts_forward(const mr_config *cfg, const mr_weights *weights,
                             const mr_kernels *kernels, int layer, int n_rows,
                             const float *const *rows, const int32_t *experts, float *const *out);

/* The default mr_moe_exec: all (t, k) slots run locally (every expert loaded). */
mr_status mr_moe_run_local(const mr_config *cfg, const mr_weights *weights,
                           const mr_kernels *kernels, int layer, const float *h,
                           int n_tokens, const int32_t *expert_ids, float *expert_out);

#endif
