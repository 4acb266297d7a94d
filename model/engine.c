/* model/engine.c — forward pass; see engine.h for the contract. */
#include "engine.h"

#include <stdlib.h>
#include <string.h>
#include "../common/aligned.h"

struct mr_engine {
    const mr_config *cfg;
    const mr_weights *w;      /* in k's memory: the caller's (host) or dev_w */
    mr_weights dev_w;         /* backend copy when k's memory is not host */
    const mr_kernels *k;
    mr_attn_mode attn;
    mr_moe_exec moe;
    void (*between_layers)(void *ctx);
    void *between_layers_ctx;

    mr_rope rope;             /* RoPE tables and the softmax scale (YaRN) */
    void **w_uk_t;            /* per layer, backend: (H, C, nope) kv_b key rows transposed */
    mr_wtype wtype;           /* how the backend copy stores matrices (w_uk_t too) */

    /* backend scratch (contents not kept across growth, see kbuf.h) */
    mr_kbuf x, xn, qa, q, kv, q_lat, head_in, out_lat, attn_out, ctx, q_pe, kvb;
    mr_kbuf k_full, v_full, scores, rope_cs, gate_logits, gate_w, gate_scratch, gate_ids;
    mr_kbuf expert_out, mlp_scratch, routed, idx, logits, greedy_ids, dec_scratch;
    mr_expert_ws experts;     /* local routed experts */

    /* host side of one forward (staging memory, pinned on cuda): indices and
     * RoPE tables to upload, router results and staged rows to download */
    mr_kbuf idx_host, cs_host, gw_host, ids_host;
    /* this forward's sequence runs and index layout (see forward_prepare) */
    struct seq_run { int first, n, n_ctx, ctx_off; } *runs;
    int n_runs, runs_cap;
    int off_kvrow, off_ctx_len, off_want, n_want;
    int off_decode, n_decode, max_decode_ctx; /* one-token runs: {token, row_off, n_ctx} */
    const int32_t *dev_idx;   /* idx in k's memory (== idx_host on cpu) */
    void *kv_storage;         /* the batch's KV pool storage (k's memory) */
    mr_wtype kv_type;         /* its rows' element type */
    int kv_block_tokens;
};

/* Reserve one backend scratch buffer of n floats. */
static float *fbuf(mr_engine *e, mr_kbuf *b, size_t n_floats, mr_status *st)
{
    return mr_kbuf_reserve(e->k, b, n_floats * sizeof(float), st);
}

/* Grow a host array (contents kept). */
static mr_status host_grow(void **p, size_t *cap, size_t n, size_t elem)
{
    if (*cap >= n) return MR_OK;
    size_t want = n + n / 4 + 16;
    void *q = realloc(*p, want * elem);
    if (!q) return mr_fail(MR_ENOMEM, "engine: out of memory for %zu host entries", n);
    *p = q;
    *cap = want;
    return MR_OK;
}

void mr_engine_rope_at(const mr_engine *e, int pos, float *cos_out, float *sin_out)
{
    mr_rope_at(&e->rope, pos, cos_out, sin_out);
}

const mr_weights *mr_engine_weights(const mr_engine *e)
{
    return e->w;
}

float mr_engine_softmax_scale(const mr_engine *e)
{
    return e->rope.softmax_scale;
}

/* ---- local routed experts ------------------------------------------------ */

static mr_status local_moe_run(void *ctx, int layer, const float *h, int n_tokens,
                               const int32_t *expert_ids, const float *weights,
                               float *expert_out)
{
    mr_engine *e = ctx;
    (void)weights; /* applied by the fixed combine */
    return mr_moe_run_local(e->cfg, e->w, e->k, &e->experts, layer, h, n_tokens, expert_ids,
                            expert_out);
}

/* ---- create / destroy ---------------------------------------------------- */

mr_status mr_engine_create(const mr_config *cfg, const mr_weights *weights,
                           const mr_engine_opts *opts, mr_engine **out)
{
    *out = NULL;
    mr_engine *e = calloc(1, sizeof *e);
    if (!e) return mr_fail(MR_ENOMEM, "engine: out of memory");
    e->cfg = cfg;
    e->k = opts && opts->kernels ? opts->kernels : mr_kernels_cpu();
    e->w = weights;
    e->attn = opts ? opts->attn : MR_ATTN_ABSORB;
    e->between_layers = opts ? opts->between_layers : NULL;
    e->between_layers_ctx = opts ? opts->between_layers_ctx : NULL;
    if (opts && opts->moe) {
        e->moe = *opts->moe;
    } else {
        e->moe.run = local_moe_run;
        e->moe.ctx = e;
    }
    e->wtype = opts ? opts->weight_type : MR_WT_F32;
    if (!e->k->host_memory || e->wtype != MR_WT_F32) {
        mr_status st = mr_weights_to_backend(cfg, e->k, e->wtype, weights, &e->dev_w);
        if (st != MR_OK) {
            const char *backend = e->k->name; /* the table outlives the engine */
            mr_engine_destroy(e);
            return mr_fail_prefix(st, "engine: weights to the %s backend: ", backend);
        }
        e->w = &e->dev_w;
    }

    e->w_uk_t = calloc((size_t)cfg->num_hidden_layers, sizeof(void *));
    if (!e->w_uk_t || mr_rope_init(cfg, &e->rope) != MR_OK) goto nomem;

    /* Absorbed attention folds kv_b's key rows into q: q_lat = q_nope · W_uk
     * with W_uk (nope, C) per head; store W_ukᵀ (C, nope) so it is a plain
     * [out, in] matrix for matmul. */
    const int H = cfg->num_attention_heads, nope = cfg->qk_nope_head_dim;
    const int C = cfg->kv_lora_rank, vd = cfg->v_head_dim;
    for (int l = 0; l < cfg->num_hidden_layers && e->attn == MR_ATTN_ABSORB; l++) {
        const float *kv_b = weights->layers[l].kv_b.w; /* the host fp32 weights */
        float *t = mr_aligned_alloc(sizeof(float) * (size_t)H * C * nope);
        if (!t) goto nomem;
        for (int h = 0; h < H; h++)
            for (int d = 0; d < nope; d++)
                for (int c = 0; c < C; c++)
                    t[((size_t)h * C + c) * nope + d] = kv_b[((size_t)h * (nope + vd) + d) * C + c];
        if (e->k->host_memory && e->wtype == MR_WT_F32) {
            e->w_uk_t[l] = t;
            continue;
        }
        /* stored like kv_b itself (rounding commutes with the transpose) */
        const mr_mat host_t = {.w = t, .rows = H * C, .cols = nope, .type = MR_WT_F32};
        mr_mat dev_t;
        const mr_status st = mr_mat_to_backend(e->k, e->wtype, &host_t, &dev_t);
        free(t);
        if (st != MR_OK) goto nomem;
        e->w_uk_t[l] = dev_t.w;
    }
    *out = e;
    return MR_OK;
nomem:
    mr_engine_destroy(e);
    return mr_fail(MR_ENOMEM, "engine: out of memory");
}

void mr_engine_destroy(mr_engine *e)
{
    if (!e) return;
    const mr_kernels *k = e->k;
    for (int l = 0; e->w_uk_t && l < e->cfg->num_hidden_layers; l++) {
        if (k->host_memory && e->wtype == MR_WT_F32)
            free(e->w_uk_t[l]);
        else
            k->free(e->w_uk_t[l]);
    }
    free(e->w_uk_t);
    mr_rope_free(&e->rope);
    mr_kbuf *bufs[] = {&e->x, &e->xn, &e->qa, &e->q, &e->kv, &e->q_lat, &e->head_in,
                       &e->out_lat, &e->attn_out, &e->ctx, &e->q_pe, &e->kvb,
                       &e->k_full, &e->v_full, &e->scores, &e->rope_cs, &e->gate_logits,
                       &e->gate_w, &e->gate_scratch, &e->gate_ids, &e->expert_out,
                       &e->mlp_scratch, &e->routed, &e->idx, &e->logits, &e->greedy_ids,
                       &e->dec_scratch};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) mr_kbuf_free(k, bufs[i]);
    mr_kbuf *host_bufs[] = {&e->idx_host, &e->cs_host, &e->gw_host, &e->ids_host};
    for (size_t i = 0; i < sizeof host_bufs / sizeof host_bufs[0]; i++)
        mr_kbuf_free(k, host_bufs[i]);
    mr_expert_ws_free(k, &e->experts);
    mr_weights_free(&e->dev_w);
    free(e->runs);
    free(e);
}

/* ---- attention ----------------------------------------------------------- */

/* Strided copy in backend memory of n rows of `width` floats (pitches in
 * floats). */
static void copy_rows(const mr_kernels *k, float *dst, int dst_ld, const float *src, int src_ld,
                      int width, int n)
{
    k->copy_2d(dst, sizeof(float) * (size_t)dst_ld, src, sizeof(float) * (size_t)src_ld,
               sizeof(float) * (size_t)width, (size_t)n, MR_COPY_D2D);
}

/* Attention of one run of consecutive tokens of one sequence: writes their
 * out_lat rows (absorbed) or attn_out rows (naive). */
static mr_status attend_run(mr_engine *e, int layer, const struct seq_run *run)
{
    const mr_config *c = e->cfg;
    const mr_kernels *k = e->k;
    const int H = c->num_attention_heads, C = c->kv_lora_rank, R = c->qk_rope_head_dim;
    const int nope = c->qk_nope_head_dim, vd = c->v_head_dim, dqk = nope + R;
    const int lat = C + R, first = run->first, n_q = run->n, n_ctx = run->n_ctx;

    mr_status st = MR_OK;
    float *ctx = fbuf(e, &e->ctx, (size_t)n_ctx * lat, &st);
    float *scores = fbuf(e, &e->scores, (size_t)n_q * H * n_ctx, &st);
    if (st != MR_OK) return st;
    /* the sequence's latent rows of this layer, gathered from the paged pool */
    k->gather_rows(e->kv_storage, e->kv_type, lat, e->dev_idx + run->ctx_off,
                   layer * e->kv_block_tokens,
                   n_ctx, lat, ctx);
    const int32_t *ctx_len = e->dev_idx + e->off_ctx_len + first;
    const float *q = e->q.p;

    if (e->attn == MR_ATTN_ABSORB) {
        /* q_pe (n_q, H, R) sits inside the q rows: make it dense */
        float *q_pe = fbuf(e, &e->q_pe, (size_t)n_q * H * R, &st);
        if (st != MR_OK) return st;
        copy_rows(k, q_pe, R, q + (size_t)first * H * dqk + nope, dqk, R, n_q * H);
        k->mla_absorbed((const float *)e->q_lat.p + (size_t)first * H * C, q_pe, n_q, H, C, R,
                        ctx, n_ctx, ctx_len, e->rope.softmax_scale,
                        (float *)e->out_lat.p + (size_t)first * H * C, scores);
        return MR_OK;
    }
    /* Naive: expand the latent into per-head K and V. */
    float *kvb = fbuf(e, &e->kvb, (size_t)n_ctx * H * (nope + vd), &st);
    float *kf = fbuf(e, &e->k_full, (size_t)n_ctx * H * dqk, &st);
    float *vf = fbuf(e, &e->v_full, (size_t)n_ctx * H * vd, &st);
    float *cn = fbuf(e, &e->head_in, (size_t)n_ctx * C, &st);
    if (st != MR_OK) return st;
    copy_rows(k, cn, C, ctx, lat, C, n_ctx);
    const mr_mat *kv_b = &e->w->layers[layer].kv_b;
    k->matmul(cn, kv_b->w, kv_b->type, kvb, n_ctx, H * (nope + vd), C, false);
    /* k(t, h) = [k_nope(t, h) | k_pe(t)], v(t, h) */
    copy_rows(k, kf, dqk, kvb, nope + vd, nope, n_ctx * H);
    for (int h = 0; h < H; h++) copy_rows(k, kf + (size_t)h * dqk + nope, H * dqk, ctx + C, lat, R, n_ctx);
    copy_rows(k, vf, vd, kvb + nope, nope + vd, vd, n_ctx * H);
    k->mla_naive(q + (size_t)first * H * dqk, kf, vf, n_q, H, dqk, vd, n_ctx, ctx_len,
                 e->rope.softmax_scale, (float *)e->attn_out.p + (size_t)first * H * vd, scores);
    return MR_OK;
}

static mr_status attention_block(mr_engine *e, int layer, int T)
{
    const mr_config *c = e->cfg;
    const mr_kernels *k = e->k;
    const mr_layer_weights *lw = &e->w->layers[layer];
    const int D = c->hidden_size, H = c->num_attention_heads;
    const int C = c->kv_lora_rank, R = c->qk_rope_head_dim, nope = c->qk_nope_head_dim;
    const int vd = c->v_head_dim, dqk = nope + R, lat = C + R;
    mr_status st = MR_OK;

    float *x = e->x.p;
    float *xn = fbuf(e, &e->xn, (size_t)T * D, &st);
    float *q = fbuf(e, &e->q, (size_t)T * H * dqk, &st);
    float *kv = fbuf(e, &e->kv, (size_t)T * lat, &st);
    float *attn_out = fbuf(e, &e->attn_out, (size_t)T * H * vd, &st);
    if (st != MR_OK) return st;

    k->rmsnorm(x, lw->attn_norm, xn, T, D, D, c->rms_norm_eps);
    if (c->q_lora_rank > 0) {
        float *qa = fbuf(e, &e->qa, (size_t)T * c->q_lora_rank, &st);
        if (st != MR_OK) return st;
        k->matmul(xn, lw->q_a.w, lw->q_a.type, qa, T, c->q_lora_rank, D, false);
        k->rmsnorm(qa, lw->q_a_norm, qa, T, c->q_lora_rank, c->q_lora_rank, c->rms_norm_eps);
        k->matmul(qa, lw->q_b.w, lw->q_b.type, q, T, H * dqk, c->q_lora_rank, false);
    } else {
        k->matmul(xn, lw->q.w, lw->q.type, q, T, H * dqk, D, false);
    }
    k->matmul(xn, lw->kv_a.w, lw->kv_a.type, kv, T, lat, D, false);

    /* RoPE on q_pe (every head) and k_pe (shared), at each token's position:
     * one call per tensor for the whole batch */
    const float *cos_all = e->rope_cs.p;
    const float *sin_all = cos_all + (size_t)T * (R / 2);
    k->rope_tokens(q + nope, T, H * dqk, H, dqk, R, cos_all, sin_all);
    k->rope_tokens(kv + C, T, lat, 1, lat, R, cos_all, sin_all);
    k->rmsnorm(kv, lw->kv_a_norm, kv, T, C, lat, c->rms_norm_eps);
    /* this batch's latent rows into the paged pool */
    k->scatter_rows(kv, T, lat, e->dev_idx + e->off_kvrow, layer * e->kv_block_tokens,
                    e->kv_storage, e->kv_type, lat);

    if (e->attn == MR_ATTN_ABSORB) {
        float *q_lat = fbuf(e, &e->q_lat, (size_t)T * H * C, &st);
        fbuf(e, &e->out_lat, (size_t)T * H * C, &st);
        if (st != MR_OK) return st;
        /* q_lat[:, h] = q_nope[:, h] · W_uk[h]   (n, nope) → (n, C), every head at once */
        k->matmul_strided(q, H * dqk, (size_t)dqk, e->w_uk_t[layer], e->wtype, (size_t)C * nope,
                          q_lat, H * C, (size_t)C, H, T, C, nope);
    }
    if (e->attn == MR_ATTN_ABSORB && e->n_decode > 0) {
        /* every one-token run (decode) in one call, straight from the pool */
        const size_t scratch_n = (size_t)e->max_decode_ctx * lat + (size_t)H * R +
                                 (size_t)H * e->max_decode_ctx;
        float *scratch = fbuf(e, &e->dec_scratch, scratch_n, &st);
        if (st != MR_OK) return st;
        k->mla_decode_paged(e->q_lat.p, q + nope, H * dqk, dqk, e->n_decode,
                            e->dev_idx + e->off_decode, H, C, R, e->kv_storage, e->kv_type,
                            e->dev_idx,
                            layer * e->kv_block_tokens, e->rope.softmax_scale, e->out_lat.p, scratch,
                            e->max_decode_ctx);
    }
    for (int r = 0; r < e->n_runs; r++)
        if (e->attn != MR_ATTN_ABSORB || e->runs[r].n != 1)
            MR_TRY(attend_run(e, layer, &e->runs[r]));
    if (e->attn == MR_ATTN_ABSORB) {
        /* attn_out[:, h] = out_lat[:, h] · W_uvᵀ  with W_uv = kv_b value rows (v, C) */
        k->matmul_strided(e->out_lat.p, H * C, (size_t)C,
                          mr_wtype_at(lw->kv_b.w, lw->kv_b.type, (size_t)nope * C), lw->kv_b.type,
                          (size_t)(nope + vd) * C, attn_out, H * vd, (size_t)vd, H, T, vd, C);
    }
    /* x += o_proj(attn_out) */
    k->matmul(attn_out, lw->o.w, lw->o.type, x, T, D, H * vd, true);
    return MR_OK;
}

/* ---- feed-forward -------------------------------------------------------- */

/* Routed experts through e->moe: rows in backend memory, the router's
 * results copied to host memory for it. */
static mr_status run_routed(mr_engine *e, int layer, int T, const float *xn, const float *gw,
                            float *eo)
{
    const mr_kernels *k = e->k;
    const size_t n_slots = (size_t)T * e->cfg->num_experts_per_tok;
    const int32_t *ids = e->gate_ids.p;
    const float *gw_host = gw;
    mr_status st = MR_OK;
    if (!k->host_memory) {
        int32_t *ih = mr_kbuf_reserve_host(k, &e->ids_host, sizeof(int32_t) * n_slots, &st);
        float *wh = mr_kbuf_reserve_host(k, &e->gw_host, sizeof(float) * n_slots, &st);
        if (st != MR_OK) return st;
        k->copy(ih, ids, sizeof(int32_t) * n_slots, MR_COPY_D2H);
        k->copy(wh, gw, sizeof(float) * n_slots, MR_COPY_D2H);
        ids = ih;
        gw_host = wh;
    }
    return e->moe.run(e->moe.ctx, layer, xn, T, ids, gw_host, eo);
}

static mr_status ffn_block(mr_engine *e, int layer, int T)
{
    const mr_config *c = e->cfg;
    const mr_kernels *k = e->k;
    const mr_layer_weights *lw = &e->w->layers[layer];
    const int D = c->hidden_size;
    mr_status st = MR_OK;
    float *x = e->x.p;
    float *xn = fbuf(e, &e->xn, (size_t)T * D, &st);
    if (st != MR_OK) return st;
    k->rmsnorm(x, lw->ffn_norm, xn, T, D, D, c->rms_norm_eps);

    if (!lw->is_moe) {
        float *s = fbuf(e, &e->mlp_scratch, 2 * (size_t)T * c->intermediate_size, &st);
        if (st != MR_OK) return st;
        mr_expert_w dense = mr_mlp_view(&lw->dense);
        k->expert_ffn(&dense, xn, T, x, true, s);
        return MR_OK;
    }

    const int E = c->n_routed_experts, K = c->num_experts_per_tok;
    float *logits = fbuf(e, &e->gate_logits, (size_t)T * E, &st);
    float *gw = fbuf(e, &e->gate_w, (size_t)T * K, &st);
    float *gs = fbuf(e, &e->gate_scratch, 2 * (size_t)E + 2 * (size_t)c->n_group, &st);
    float *eo = fbuf(e, &e->expert_out, (size_t)T * K * D, &st);
    float *routed = fbuf(e, &e->routed, (size_t)T * D, &st);
    int shared_inter = c->n_shared_experts * c->moe_intermediate_size;
    float *ms = fbuf(e, &e->mlp_scratch, 2 * (size_t)T * (shared_inter > 0 ? shared_inter : 1),
                     &st);
    int32_t *ids = mr_kbuf_reserve(k, &e->gate_ids, sizeof(int32_t) * (size_t)T * K, &st);
    if (st != MR_OK) return st;

    mr_gate_params gp = {
        .n_experts = E, .n_group = c->n_group, .topk_group = c->topk_group, .top_k = K,
        .score_func = c->scoring_func, .method = c->topk_method,
        .norm_topk_prob = c->norm_topk_prob, .routed_scaling_factor = c->routed_scaling_factor,
        .v2_scaling = c->arch == MR_ARCH_DEEPSEEK_V2,
    };
    k->matmul(xn, lw->gate.w, lw->gate.type, logits, T, E, D, false);
    k->moe_gate(logits, lw->gate_bias, T, &gp, ids, gw, gs);

    st = run_routed(e, layer, T, xn, gw, eo);
    if (st != MR_OK) return mr_fail_prefix(st, "layer %d routed experts: ", layer);

    /* Fixed combine: routed = Σ_k w[t,k]·out[t,k] in router order; then
     * x += routed + shared(xn). */
    k->moe_combine(eo, gw, T, K, D, routed);
    if (c->n_shared_experts > 0) {
        mr_expert_w shared = mr_mlp_view(&lw->shared);
        k->expert_ffn(&shared, xn, T, routed, true, ms);
    }
    k->add(x, routed, (size_t)T * D);
    return MR_OK;
}

/* ---- forward ------------------------------------------------------------- */

static mr_status validate_batch(const mr_engine *e, const mr_batch *b)
{
    const mr_config *c = e->cfg;
    for (int t = 0; t < b->n_tokens; t++) {
        int id = b->token_ids[t], pos = b->positions[t];
        if (id < 0 || id >= c->vocab_size)
            return mr_fail(MR_ERANGE, "token id %d out of range [0, %d) (vocab_size)", id,
                           c->vocab_size);
        if (pos < 0 || pos >= c->max_position_embeddings)
            return mr_fail(MR_ERANGE, "position %d out of range [0, %d) (max_position_embeddings)",
                           pos, c->max_position_embeddings);
        const mr_kv_seq *s = b->seqs[t];
        if (!s || mr_kv_pool_blocks_for(s->pool, pos + 1) > s->n_blocks)
            return mr_fail(MR_EINVAL, "token %d: KV cache not reserved for position %d", t, pos);
        if (s->pool != b->seqs[0]->pool)
            return mr_fail(MR_EINVAL, "token %d: all sequences of a batch must share one KV pool",
                           t);
        if (t > 0 && b->seqs[t - 1] == s && b->positions[t - 1] + 1 != pos)
            return mr_fail(MR_EINVAL, "token %d: positions of one sequence must be consecutive", t);
    }
    return MR_OK;
}

/* Host side of a forward: the sequence runs, and one int32 upload holding
 *   [token ids (T) | KV row of each token (T) | ctx_len (T) | wanted rows (T) |
 *    decode runs {token, row_off, n_ctx} (3T) | context rows of each run (Σ n_ctx)]
 * plus the RoPE tables cos(T, R/2) | sin(T, R/2). A decode run is a run of
 * one token (the absorbed path attends those in one mla_decode_paged call). */
static mr_status forward_prepare(mr_engine *e, const mr_batch *b)
{
    const int T = b->n_tokens, R = e->cfg->qk_rope_head_dim;
    e->n_runs = 0;
    size_t n_idx = 7 * (size_t)T;
    for (int first = 0; first < T;) {
        int n = 1;
        while (first + n < T && b->seqs[first + n] == b->seqs[first]) n++;
        if (e->n_runs == e->runs_cap) {
            size_t cap = (size_t)e->runs_cap;
            MR_TRY(host_grow((void **)&e->runs, &cap, (size_t)e->n_runs + 1, sizeof *e->runs));
            e->runs_cap = (int)cap;
        }
        struct seq_run *run = &e->runs[e->n_runs++];
        run->first = first;
        run->n = n;
        run->n_ctx = b->positions[first + n - 1] + 1;
        run->ctx_off = (int)n_idx;
        n_idx += (size_t)run->n_ctx;
        first += n;
    }
    mr_status st = MR_OK;
    int32_t *idx = mr_kbuf_reserve_host(e->k, &e->idx_host, sizeof(int32_t) * n_idx, &st);
    float *cs_host = mr_kbuf_reserve_host(e->k, &e->cs_host, sizeof(float) * (size_t)T * R, &st);
    if (st != MR_OK) return st;
    e->off_kvrow = T;
    e->off_ctx_len = 2 * T;
    e->off_want = 3 * T;
    e->off_decode = 4 * T;
    e->n_want = 0;
    e->n_decode = 0;
    e->max_decode_ctx = 0;
    for (int t = 0; t < T; t++) {
        idx[t] = b->token_ids[t];
        idx[e->off_kvrow + t] = mr_kv_seq_row_index(b->seqs[t], b->positions[t]);
        idx[e->off_ctx_len + t] = b->positions[t] + 1;
        if (!b->want_logits || b->want_logits[t]) idx[e->off_want + e->n_want++] = t;
        mr_engine_rope_at(e, b->positions[t], cs_host + (size_t)t * (R / 2),
                          cs_host + (size_t)T * (R / 2) + (size_t)t * (R / 2));
    }
    for (int r = 0; r < e->n_runs; r++) {
        const struct seq_run *run = &e->runs[r];
        const mr_kv_seq *seq = b->seqs[run->first];
        for (int pos = 0; pos < run->n_ctx; pos++)
            idx[run->ctx_off + pos] = mr_kv_seq_row_index(seq, pos);
        if (run->n != 1) continue;
        int32_t *d = idx + e->off_decode + 3 * e->n_decode++;
        d[0] = run->first;
        d[1] = run->ctx_off;
        d[2] = run->n_ctx;
        if (run->n_ctx > e->max_decode_ctx) e->max_decode_ctx = run->n_ctx;
    }
    mr_kv_pool *pool = b->seqs[0]->pool;
    e->kv_storage = mr_kv_pool_storage(pool);
    e->kv_type = mr_kv_pool_dtype(pool);
    e->kv_block_tokens = mr_kv_pool_block_tokens(pool);

    float *cs = fbuf(e, &e->rope_cs, (size_t)T * R, &st);
    if (e->k->host_memory) {
        e->dev_idx = idx;
    } else {
        int32_t *dev = mr_kbuf_reserve(e->k, &e->idx, sizeof(int32_t) * n_idx, &st);
        if (st == MR_OK) e->k->copy(dev, idx, sizeof(int32_t) * n_idx, MR_COPY_H2D);
        e->dev_idx = dev;
    }
    if (st == MR_OK) e->k->copy(cs, cs_host, sizeof(float) * (size_t)T * R, MR_COPY_H2D);
    return st;
}

/* The forward pass up to the logits of the wanted tokens, in backend memory
 * (*dev_logits, n_want rows); `host_out` is where a host-memory backend
 * writes them directly (NULL: into the engine's buffer). */
static mr_status forward_logits(mr_engine *e, const mr_batch *b, float *host_out,
                                float **dev_logits)
{
    const mr_config *c = e->cfg;
    const mr_kernels *k = e->k;
    const int T = b->n_tokens, D = c->hidden_size;
    MR_TRY(validate_batch(e, b));
    MR_TRY(forward_prepare(e, b));

    mr_status st = MR_OK;
    float *x = fbuf(e, &e->x, (size_t)T * D, &st);
    if (st != MR_OK) return st;
    k->gather_rows(e->w->embed, MR_WT_F32, D, e->dev_idx, 0, T, D, x);
    for (int l = 0; l < c->num_hidden_layers; l++) {
        st = attention_block(e, l, T);
        if (st == MR_OK) st = ffn_block(e, l, T);
        if (st != MR_OK) {
            mr_status backend = k->check(); /* a queued failure explains more */
            return backend != MR_OK ? backend : st;
        }
        if (e->between_layers) e->between_layers(e->between_layers_ctx);
    }
    /* final norm + lm_head for the tokens that want logits */
    const int n_want = e->n_want;
    float *xn = fbuf(e, &e->xn, (size_t)(n_want > 0 ? n_want : 1) * D, &st);
    float *out = host_out && k->host_memory
                     ? host_out
                     : fbuf(e, &e->logits, (size_t)(n_want > 0 ? n_want : 1) * c->vocab_size, &st);
    if (st != MR_OK) return st;
    k->gather_rows(x, MR_WT_F32, D, e->dev_idx + e->off_want, 0, n_want, D, xn);
    k->rmsnorm(xn, e->w->final_norm, xn, n_want, D, D, c->rms_norm_eps);
    k->matmul(xn, e->w->lm_head.w, e->w->lm_head.type, out, n_want, c->vocab_size, D, false);
    *dev_logits = out;
    return MR_OK;
}

mr_status mr_engine_forward(mr_engine *e, const mr_batch *b, float *logits)
{
    if (b->n_tokens <= 0) return MR_OK;
    float *out = NULL;
    MR_TRY(forward_logits(e, b, logits, &out));
    if (out != logits)
        e->k->copy(logits, out, sizeof(float) * (size_t)e->n_want * e->cfg->vocab_size,
                   MR_COPY_D2H);
    return e->k->check();
}

mr_status mr_engine_forward_sample(mr_engine *e, const mr_batch *b, const mr_sample_row *rows,
                                   int32_t *ids)
{
    if (b->n_tokens <= 0) return MR_OK;
    float *out = NULL;
    MR_TRY(forward_logits(e, b, NULL, &out));
    mr_status st = MR_OK;
    const size_t n = (size_t)(e->n_want > 0 ? e->n_want : 1);
    int32_t *dev_ids = mr_kbuf_reserve(e->k, &e->greedy_ids, sizeof(int32_t) * n, &st);
    if (st != MR_OK) return st;
    if (rows)
        e->k->sample_rows(out, e->n_want, e->cfg->vocab_size, rows, dev_ids);
    else
        e->k->argmax_rows(out, e->n_want, e->cfg->vocab_size, dev_ids);
    e->k->copy(ids, dev_ids, sizeof(int32_t) * (size_t)e->n_want, MR_COPY_D2H);
    return e->k->check();
}
