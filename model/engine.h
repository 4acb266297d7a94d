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
 * Precision: weight_type BF16 stores every matrix as bfloat16 (the
 * embedding, norms and router bias stay fp32) and its GEMMs take their
 * activations rounded to bf16 with fp32 products and sums (mr_wtype);
 * everything else is fp32 as above.
 *
 * Backends: every tensor of a forward lives in the kernels' memory (host
 * for cpu, the GPU for cuda): weights are copied there at create
 * (mr_weights_to_backend) unless the backend's memory is host memory and
 * the weights stay fp32, the KV
 * pool's storage must be that memory too (mr_kv_pool_create_in over k->alloc;
 * the engine addresses KV rows by index, mr_kv_seq_row_index), and per
 * forward the engine uploads only token ids, row indices and RoPE tables and
 * downloads only the logits (plus the router results an mr_moe_exec gets).
 * The cpu path runs the same code with no copies, so the CPU tests cover the
 * engine's data movement.
 *
 * Ownership: the engine borrows cfg, weights (host memory) and kernels (they
 * must outlive it) and owns its scratch and backend copies. One engine per
 * thread.
 */
#ifndef MR_ENGINE_H
#define MR_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "../kernels/kernels.h"
#include "experts.h"
#include "config.h"
#include "kvcache.h"
#include "rope.h"
#include "weights.h"

typedef enum { MR_ATTN_ABSORB, MR_ATTN_NAIVE } mr_attn_mode;

/* Routed-expert execution for one MoE layer.
 * h(n, D): normed hidden states; expert_ids/weights(n, K) from the router.
 * Must write expert_out(n, K, D): row (t, k) = expert_ids[t,k]'s FFN of h[t]
 * (unweighted). Returns MR_OK or an error with its message set.
 * expert_ids and weights are host memory; h and expert_out are the
 * backend's memory (an exec that moves rows elsewhere stages what it needs). */
typedef struct mr_moe_exec {
    mr_status (*run)(void *ctx, int layer, const float *h, int n_tokens,
                     const int32_t *expert_ids, const float *weights, float *expert_out);
    void *ctx;
} mr_moe_exec;

typedef struct mr_engine_opts {
    const mr_kernels *kernels;   /* NULL = CPU */
    mr_wtype weight_type;        /* matrices on the backend: fp32 (default) or bf16 */
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

/* Run the batch; logits(n_want, vocab) (host memory) rows in batch order for
 * the tokens with want_logits set. Token ids and positions are validated
 * (MR_ERANGE); a backend error (cuda) is returned with its message. */
mr_status mr_engine_forward(mr_engine *engine, const mr_batch *batch, float *logits);

/* The same pass with the next tokens picked on the backend: ids(n_want)
 * (host memory), row i sampled by rows[i] (host memory; mr_sampler_draw of
 * that sequence's sampler) with mr_kernels.sample_rows, i.e. exactly the
 * token mr_sampler_next would pick from those logits; rows NULL = every row
 * greedy (argmax, mr_argmax's rule). The logits stay in backend memory: a
 * GPU copies n_want ints instead of n_want · vocab floats. */
mr_status mr_engine_forward_sample(mr_engine *engine, const mr_batch *batch,
                                   const mr_sample_row *rows, int32_t *ids);

/* The weights the engine computes with, in its kernels' memory (the
 * caller's host weights on cpu, the engine's copy otherwise): wide-EP prefill
 * ranks run their routed experts from these. */
const mr_weights *mr_engine_weights(const mr_engine *engine);

/* The softmax scale and the RoPE tables the engine derived from the config
 * (exposed for tests): scale = qk_head_dim^-0.5 · mscale²; cos/sin(rope/2)
 * at `pos`, including the YaRN cos/sin mscale. */
float mr_engine_softmax_scale(const mr_engine *engine);
void mr_engine_rope_at(const mr_engine *engine, int pos, float *cos_out, float *sin_out);

#endif
