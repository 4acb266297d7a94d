/* model/experts.c — see experts.h. */
#include "experts.h"

#include <stdlib.h>
#include <string.h>

void mr_expert_ws_free(const mr_kernels *k, mr_expert_ws *ws)
{
    mr_kbuf_free(k, &ws->in);
    mr_kbuf_free(k, &ws->out);
    mr_kbuf_free(k, &ws->scratch);
    mr_kbuf_free(k, &ws->idx);
    mr_kbuf_free(k, &ws->host);
    mr_kbuf_free(k, &ws->host_in);
    mr_kbuf_free(k, &ws->host_out);
    memset(ws, 0, sizeof *ws);
}

/* The host arrays of one call, carved from one staging buffer (refilled by
 * every call, so its contents need not survive growth). */
static mr_status ws_reserve_slots(const mr_kernels *k, mr_expert_ws *ws, int n_slots,
                                  int n_experts)
{
    const size_t n = (size_t)n_slots, e = (size_t)n_experts + 1;
    mr_status st = MR_OK;
    char *p = mr_kbuf_reserve_host(k, &ws->host, sizeof(mr_expert_w) * e +
                                   sizeof(int32_t) * (3 * n + 2 * e), &st);
    if (st != MR_OK) return st;
    ws->views = (mr_expert_w *)p; /* first: keeps its pointer alignment */
    ws->order = (int32_t *)(p + sizeof(mr_expert_w) * e);
    ws->host_idx = ws->order + n;
    ws->start = ws->host_idx + 2 * n;
    ws->row_start = ws->start + e;
    return MR_OK;
}

/* Checks every slot's expert and sorts slots by expert (stable) into
 * ws->order; group e is order[start[e] .. start[e+1]). */
static mr_status group_slots(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                             mr_expert_ws *ws,
                             int layer, int n_slots, const int32_t *experts)
{
    const int E = cfg->n_routed_experts;
    if (layer < 0 || layer >= cfg->num_hidden_layers || !weights->layers[layer].is_moe)
        return mr_fail(MR_EINVAL, "layer %d is not an MoE layer", layer);
    const mr_layer_weights *lw = &weights->layers[layer];
    MR_TRY(ws_reserve_slots(k, ws, n_slots, E));
    memset(ws->start, 0, sizeof(int32_t) * ((size_t)E + 1));
    for (int i = 0; i < n_slots; i++) {
        int ex = experts[i];
        if (ex < 0 || ex >= E || !lw->experts[ex].gate.w)
            return mr_fail(MR_EINVAL, "layer %d: expert %d is not held here", layer, ex);
        ws->start[ex + 1]++;
    }
    for (int e = 0; e < E; e++) ws->start[e + 1] += ws->start[e]; /* start of each group */
    /* place slots with start[e] as the cursor; afterwards start[e] is the end
     * of group e, i.e. the start of group e + 1: shift back by one */
    for (int i = 0; i < n_slots; i++) ws->order[ws->start[experts[i]]++] = i;
    for (int e = E; e > 0; e--) ws->start[e] = ws->start[e - 1];
    ws->start[0] = 0; /* start[e] = first sorted slot of expert e; start[E] = n_slots */
    return MR_OK;
}

/* Every non-empty group over sorted rows in ws->in → ws->out, as one
 * experts_grouped call. */
static mr_status run_groups(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                            mr_expert_ws *ws, int layer)
{
    const int inter = cfg->moe_intermediate_size;
    const int E = cfg->n_routed_experts;
    const size_t n_rows = (size_t)ws->start[E];
    mr_status st = MR_OK;
    /* experts_grouped: 2 * n_rows * inter (every group's hidden rows at once) */
    float *scratch = mr_kbuf_reserve(k, &ws->scratch, sizeof(float) * 2 * n_rows * inter, &st);
    if (st != MR_OK) return st;
    int n_groups = 0;
    for (int e = 0; e < E; e++) {
        if (ws->start[e + 1] == ws->start[e]) continue;
        ws->views[n_groups] = mr_mlp_view(&weights->layers[layer].experts[e]);
        ws->row_start[n_groups++] = ws->start[e];
    }
    ws->row_start[n_groups] = ws->start[E];
    k->experts_grouped(ws->views, n_groups, ws->row_start, ws->in.p, ws->out.p, scratch);
    return MR_OK;
}

mr_status mr_experts_run(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                         mr_expert_ws *ws, int layer, int n_slots, const float *x,
                         const int32_t *in_row, const int32_t *experts, float *out,
                         const int32_t *out_row)
{
    if (n_slots <= 0) return MR_OK;
    const int D = cfg->hidden_size;
    MR_TRY(group_slots(cfg, weights, k, ws, layer, n_slots, experts));
    int32_t *perm_in = ws->host_idx, *perm_out = ws->host_idx + n_slots;
    for (int j = 0; j < n_slots; j++) {
        perm_in[j] = in_row[ws->order[j]];
        perm_out[j] = out_row[ws->order[j]];
    }
    mr_status st = MR_OK;
    size_t rows_bytes = sizeof(float) * (size_t)n_slots * D;
    mr_kbuf_reserve(k, &ws->in, rows_bytes, &st);
    mr_kbuf_reserve(k, &ws->out, rows_bytes, &st);
    const int32_t *idx = ws->host_idx;
    if (!k->host_memory) {
        int32_t *dev_idx = mr_kbuf_reserve(k, &ws->idx, sizeof(int32_t) * 2 * (size_t)n_slots, &st);
        if (st == MR_OK) k->copy(dev_idx, ws->host_idx, sizeof(int32_t) * 2 * (size_t)n_slots,
                                 MR_COPY_H2D);
        idx = dev_idx;
    }
    if (st != MR_OK) return st;
    k->gather_rows(x, MR_WT_F32, D, idx, 0, n_slots, D, ws->in.p);
    MR_TRY(run_groups(cfg, weights, k, ws, layer));
    k->scatter_rows(ws->out.p, n_slots, D, idx + n_slots, 0, out, MR_WT_F32, D);
    return MR_OK;
}

mr_status mr_experts_forward(const mr_config *cfg, const mr_weights *weights,
                             const mr_kernels *k, mr_expert_ws *ws, int layer, int n_rows,
                             const float *const *rows, const int32_t *experts,
                             float *const *out)
{
    if (n_rows <= 0) return MR_OK;
    const int D = cfg->hidden_size;
    MR_TRY(group_slots(cfg, weights, k, ws, layer, n_rows, experts));
    mr_status st = MR_OK;
    size_t rows_bytes = sizeof(float) * (size_t)n_rows * D;
    float *in = mr_kbuf_reserve(k, &ws->in, rows_bytes, &st);
    float *res = mr_kbuf_reserve(k, &ws->out, rows_bytes, &st);
    if (st != MR_OK) return st;
    float *stage_in = in, *stage_out = res; /* host memory: pack in place */
    if (!k->host_memory) {
        stage_in = mr_kbuf_reserve_host(k, &ws->host_in, rows_bytes, &st);
        stage_out = mr_kbuf_reserve_host(k, &ws->host_out, rows_bytes, &st);
        if (st != MR_OK) return st;
    }
    for (int j = 0; j < n_rows; j++)
        memcpy(stage_in + (size_t)j * D, rows[ws->order[j]], sizeof(float) * D);
    if (!k->host_memory) k->copy(in, stage_in, rows_bytes, MR_COPY_H2D);
    MR_TRY(run_groups(cfg, weights, k, ws, layer));
    if (!k->host_memory) {
        k->copy(stage_out, res, rows_bytes, MR_COPY_D2H);
        MR_TRY(k->check());
    }
    for (int j = 0; j < n_rows; j++)
        memcpy(out[ws->order[j]], stage_out + (size_t)j * D, sizeof(float) * D);
    return MR_OK;
}

mr_status mr_moe_run_local(const mr_config *cfg, const mr_weights *weights, const mr_kernels *k,
                           mr_expert_ws *ws, int layer, const float *h, int n_tokens,
                           const int32_t *expert_ids, float *expert_out)
{
    const int K = cfg->num_experts_per_tok, n_slots = n_tokens * K;
    int32_t *rows = malloc(sizeof(int32_t) * 2 * (size_t)(n_slots + 1));
    if (!rows) return mr_fail(MR_ENOMEM, "layer %d experts: out of memory", layer);
    int32_t *in_row = rows, *out_row = rows + n_slots + 1;
    for (int s = 0; s < n_slots; s++) {
        in_row[s] = s / K;
        out_row[s] = s;
    }
    mr_status st = mr_experts_run(cfg, weights, k, ws, layer, n_slots, h, in_row, expert_ids,
                                  expert_out, out_row);
    free(rows);
    return st;
}

mr_status mr_moe_run_local_host(const mr_config *cfg, const mr_weights *weights,
                                const mr_kernels *k, mr_expert_ws *ws, int layer, const float *h,
                                int n_tokens, const int32_t *expert_ids, float *expert_out)
{
    const int D = cfg->hidden_size, K = cfg->num_experts_per_tok, n_slots = n_tokens * K;
    const float **rows = malloc(sizeof(float *) * (size_t)(n_slots + 1));
    float **out = malloc(sizeof(float *) * (size_t)(n_slots + 1));
    mr_status st = MR_OK;
    if (!rows || !out) {
        st = mr_fail(MR_ENOMEM, "layer %d experts: out of memory", layer);
    } else {
        for (int s = 0; s < n_slots; s++) {
            rows[s] = h + (size_t)(s / K) * D;
            out[s] = expert_out + (size_t)s * D;
        }
        st = mr_experts_forward(cfg, weights, k, ws, layer, n_slots, rows, expert_ids, out);
    }
    free(rows);
    free(out);
    return st;
}
