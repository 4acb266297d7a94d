/* model/weights.h — a model's weights: loaded in fp32 on the host; on a
 * backend, matrices in fp32 or bf16 (mr_weights_to_backend).
 *
 * mr_weights_load() walks the HF tensor names of the DeepSeek-V3 release
 * (model.embed_tokens.weight, model.layers.N.self_attn.q_a_proj.weight,
 * ..., mlp.experts.E.gate_proj.weight, mlp.shared_experts.*, model.norm.weight,
 * lm_head.weight), checks every shape against the config, converts F32/BF16/
 * F16 and dequantizes F8_E4M3 with its `<name>_scale_inv` (block size from
 * quantization_config.weight_block_size). Multi-token-prediction tensors
 * (layers >= num_hidden_layers) are ignored; any other tensor the config does
 * not call for is an error ("unexpected tensor X"), as is a missing one.
 *
 * A role that needs only part of the model (a decode rank holds no routed
 * experts, an expert rank only its placement) passes a filter; experts it
 * rejects stay unloaded (w == NULL) but are still shape-checked.
 *
 * Matrices are row-major [out, in] as HF stores them: y = x · Wᵀ.
 * Ownership: mr_weights owns every buffer; free with mr_weights_free.
 */
#ifndef MR_WEIGHTS_H
#define MR_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "../kernels/kernels.h"
#include "config.h"
#include "safetensors.h"

typedef struct mr_mat {
    void *w;        /* [rows, cols] row-major of `type`; NULL when not loaded */
    int rows;       /* out features */
    int cols;       /* in features */
    mr_wtype type;  /* MR_WT_F32 as loaded; MR_WT_BF16 on a backend that stores bf16 */
} mr_mat;

typedef struct mr_mlp {
    mr_mat gate;  /* [inter, D]  (w1) */
    mr_mat up;    /* [inter, D]  (w3) */
    mr_mat down;  /* [D, inter]  (w2) */
} mr_mlp;

typedef struct mr_layer_weights {
    float *attn_norm;      /* input_layernorm [D] */
    float *ffn_norm;       /* post_attention_layernorm [D] */

    mr_mat q_a;            /* [q_lora, D]            (q_lora_rank > 0) */
    float *q_a_norm;       /* [q_lora] */
    mr_mat q_b;            /* [H*(nope+rope), q_lora] */
    mr_mat q;              /* [H*(nope+rope), D]     (q_lora_rank == 0) */
    mr_mat kv_a;           /* [kv_lora+rope, D]  kv_a_proj_with_mqa */
    float *kv_a_norm;      /* [kv_lora] */
    mr_mat kv_b;           /* [H*(nope+v), kv_lora] */
    mr_mat o;              /* [D, H*v] */

    bool is_moe;
    mr_mlp dense;          /* !is_moe: intermediate_size */
    mr_mat gate;           /* is_moe: [E, D] router */
    float *gate_bias;      /* is_moe: e_score_correction_bias [E] or NULL */
    mr_mlp *experts;       /* is_moe: [E]; unloaded experts have NULL w */
    mr_mlp shared;         /* is_moe: n_shared*moe_inter (absent when n_shared == 0) */
} mr_layer_weights;

typedef struct mr_weights {
    float *embed;          /* [vocab, D] */
    mr_layer_weights *layers;  /* [num_hidden_layers] */
    float *final_norm;     /* [D] */
    mr_mat lm_head;        /* [vocab, D] */
    int n_layers;
    int n_experts;
    uint64_t n_bytes;      /* bytes held (every array, in its stored type) */
    /* Whose memory the arrays are: NULL = host memory from malloc (the
     * loader); else the backend table that allocated them
     * (mr_weights_to_backend), which mr_weights_free gives them back to. */
    const mr_kernels *backend;
} mr_weights;

/* Return true to load routed expert `expert` of MoE layer `layer`. */
typedef bool (*mr_expert_filter)(void *ctx, int layer, int expert);

/* filter NULL = load every expert. */
mr_status mr_weights_load(const mr_config *cfg, const mr_st_archive *archive,
                          mr_expert_filter filter, void *filter_ctx, mr_weights *out);
/* The same, but only routed experts are loaded (those the filter accepts);
 * every other tensor is checked and left NULL: what an expert rank needs. */
mr_status mr_weights_load_routed(const mr_config *cfg, const mr_st_archive *archive,
                                 mr_expert_filter filter, void *filter_ctx, mr_weights *out);
void mr_weights_free(mr_weights *w); /* accepts NULL and zeroed structs */

/* One expert's (or MLP's) three matrices: a backend copy of host fp32 arrays
 * stored as `wtype` (shapes kept; nothing left allocated on failure), and
 * freeing them (k NULL: host memory from the loader). Used when an expert
 * rank's set of experts changes while serving. */
mr_status mr_mlp_to_backend(const mr_kernels *k, mr_wtype wtype, const mr_mlp *host,
                            mr_mlp *dev);
void mr_mlp_free(const mr_kernels *k, mr_mlp *m);

/* Random host weights for every tensor the config calls for (all experts),
 * without a checkpoint: linear layers uniform in ±1/sqrt(fan_in), norms near
 * 1, router bias near 0. Values repeat with a period of 2^24 floats (fills
 * tens of GB fast). For benchmarks at real shapes (moerun bench layer). */
mr_status mr_weights_random(const mr_config *cfg, uint64_t seed, mr_weights *out);

/* A copy of host (fp32) weights in backend memory: every array `host` holds
 * is allocated with k->alloc and copied (arrays NULL in host stay NULL;
 * shapes are kept). Matrices (every mr_mat) are stored as `wtype`: BF16
 * rounds each value to nearest even (exact for a BF16 checkpoint; an FP8
 * checkpoint, dequantized at load, is rounded once more). The embedding
 * table, norms and the router bias stay fp32. For a host-memory backend
 * (cpu) it still copies, so the two structs never share buffers. `out`
 * records k as its backend; free it with mr_weights_free. On failure nothing
 * is left allocated; weights that cannot fit in the backend's free memory
 * fail before any allocation, naming the sizes (mr_backend_check_fits). */
mr_status mr_weights_to_backend(const mr_config *cfg, const mr_kernels *k, mr_wtype wtype,
                                const mr_weights *host, mr_weights *out);

/* One fp32 host matrix as a backend copy stored as wtype (what
 * mr_weights_to_backend does for each matrix; nothing left allocated on
 * failure). For matrices the engine derives (the absorbed W_ukᵀ). */
mr_status mr_mat_to_backend(const mr_kernels *k, mr_wtype wtype, const mr_mat *host,
                            mr_mat *dev);

/* Bytes mr_weights_to_backend would allocate for `host` stored as wtype. */
uint64_t mr_weights_backend_bytes(const mr_config *cfg, const mr_weights *host, mr_wtype wtype);

/* MR_OK when `bytes` fit in k's free memory (mr_kernels.mem_info; always
 * when it reports nothing), else MR_ENOMEM "<backend> backend: <what> need
 * X, Y free of Z (<hint>)": fail before allocating, with the sizes. */
mr_status mr_backend_check_fits(const mr_kernels *k, uint64_t bytes, const char *what,
                                const char *hint);

/* The same expert/MLP as the kernels take it (pointers, shape, type). */
mr_expert_w mr_mlp_view(const mr_mlp *m);

/* A tensor of a layer >= n_layers (model.layers.N.*, N >= num_hidden_layers):
 * the multi-token-prediction layers the engine ignores. */
bool mr_weights_is_mtp_tensor(const char *name, int n_layers);

/* Every check of mr_weights_load (names, missing/unexpected tensors, shapes,
 * dtypes, fp8 scale shapes) without converting any tensor data; cheap even for
 * a full-size checkpoint (used by `moerun inspect`). NaN fp8 codes are only
 * found by a load, since they need the data. */
mr_status mr_weights_check(const mr_config *cfg, const mr_st_archive *archive);

#endif
