/* model/experts.h — routed experts run where their weights are: grouping the
 * (token, expert) slots of one MoE layer per expert and running one
 * expert_ffn batch per expert.
 *
 * Order is fixed, so results never depend on who asked: slots are grouped by
 * expert in increasing id, stable within an expert (the caller's slot order),
 * and each group is one expert_ffn call over its rows in that order. The
 * engine's local path, expert ranks and wide-EP prefill ranks all call these,
 * so the cluster computes exactly what a single process does.
 *
 * Memory: `weights` and `k` belong together (the weights live in k's memory:
 * host weights with the cpu table, mr_weights_to_backend copies with cuda).
 * mr_experts_run takes rows in backend memory (what the engine holds);
 * mr_experts_forward takes host row pointers (what arrives over the network)
 * and stages them through the workspace when k's memory is not host memory.
 *
 * Workspace: an mr_expert_ws (zero-initialized) keeps host and backend
 * scratch between calls; free it with mr_expert_ws_free and the same k.
 * One workspace per thread.
 */
#ifndef MR_EXPERTS_H
#define MR_EXPERTS_H

#include <stdint.h>

#include "../kernels/kbuf.h"
#include "../kernels/kernels.h"
#include "config.h"
#include "weights.h"

typedef struct mr_expert_ws {
    mr_kbuf in, out, scratch, idx;      /* backend memory */
    mr_kbuf host;                       /* staging memory holding the five arrays below */
    mr_expert_w *views;                 /* host: the non-empty groups' experts (E + 1) */
    int32_t *order, *start, *host_idx;  /* host: sorted slots, group starts (E+1), 2n rows */
    int32_t *row_start;                 /* host: the groups' row ranges (E+1) */
    mr_kbuf host_in, host_out;          /* staging memory (non-host backends) */
} mr_expert_ws;

void mr_expert_ws_free(const mr_kernels *k, mr_expert_ws *ws);

/* Slots in backend memory: slot i reads row x + in_row[i]*D, runs expert
 * experts[i] of MoE layer `layer`, writes row out + out_row[i]*D (out rows
 * distinct; unweighted FFN output). in_row / experts / out_row are host
 * arrays. An expert not held in `weights` → MR_EINVAL naming it. */
mr_status mr_experts_run(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                         mr_expert_ws *ws, int layer, int n_slots, const float *x,
                         const int32_t *in_row, const int32_t *experts, float *out,
                         const int32_t *out_row);

/* Slots in host memory: row i is rows[i] (D floats) for expert experts[i];
 * writes out[i] (D floats). */
mr_status mr_experts_forward(const mr_config *cfg, const mr_weights *weights,
                             const mr_kernels *k, mr_expert_ws *ws, int layer, int n_rows,
                             const float *const *rows, const int32_t *experts,
                             float *const *out);

/* Every (t, k) slot of a layer locally: h(n_tokens, D) and
 * expert_out(n_tokens, K, D) in backend memory (_run) or host memory
 * (_run_host); expert_ids(n_tokens, K) host. Row (t, k) of expert_out is
 * expert_ids[t,k]'s FFN of h[t]. */
mr_status mr_moe_run_local(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                           mr_expert_ws *ws, int layer, const float *h, int n_tokens,
                           const int32_t *expert_ids, float *expert_out);
mr_status mr_moe_run_local_host(const mr_config *cfg, const mr_weights *weights,
                                const mr_kernels *k, mr_expert_ws *ws, int layer, const float *h,
                                int n_tokens, const int32_t *expert_ids, float *expert_out);

#endif
