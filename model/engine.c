/* model/engine.c — forward pass; see engine.h for the contract. */
#include "engine.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* A growable float buffer owned by the engine. */
typedef struct scratch_buf {
    float *data;
    size_t cap;
} scratch_buf;

struct mr_engine {
    const mr_config *cfg;
    const mr_weights *weights;
    const mr_kernels *k;
    mr_attn_mode attn;
    mr_moe_exec moe;
    void (*between_layers)(void *ctx);
    void *between_layers_ctx;

    float softmax_scale;
    float rope_mscale;        /* multiplies cos/sin (YaRN mscale ratio) */
    double *inv_freq;         /* (rope/2) */
    float **w_uk_t;           /* per layer: (H, C, nope) kv_b key rows transposed */

    scratch_buf x, xn, qa, q, kv, q_lat, head_in, head_out, out_lat, attn_out;
    scratch_buf ctx, kvb, k_full, v_full, scores, cos_t, sin_t;
    scratch_buf gate_logits, gate_w, gate_scratch, expert_out, mlp_scratch, routed;
    int32_t *gate_ids;
    size_t gate_ids_cap;
};

static float *grow(scratch_buf *b, size_t n_floats, mr_status *st)
{
    if (*st != MR_OK) return NULL;
    if (n_floats == 0) n_floats = 1;
    if (b->cap < n_floats) {
        float *p = realloc(b->data, n_floats * sizeof(float));
        if (!p) {
            *st = mr_fail(MR_ENOMEM, "engine: cannot grow scratch to %zu floats", n_floats);
            return NULL;
        }
        b->data = p;
        b->cap = n_floats;
    }
    return b->data;
}

static void free_buf(scratch_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = 0;
}

/* ---- RoPE / YaRN, exactly as the official precompute_freqs_cis ---------- */

static double yarn_get_mscale(double scale, double mscale)
{
    return scale <= 1.0 ? 1.0 : 0.1 * mscale * log(scale) + 1.0;
}

static double yarn_correction_dim(double n_rot, int dim, double base, int max_pos)
{
    return dim * log(max_pos / (n_rot * 2.0 * M_PI)) / (2.0 * log(base));
}

static void compute_inv_freq(const mr_config *c, double *inv_freq)
{
    const int dim = c->qk_rope_head_dim;
    for (int j = 0; j < dim / 2; j++) inv_freq[j] = 1.0 / pow(c->rope_theta, (2.0 * j) / dim);
    if (!c->yarn_enabled) return;
    const int orig = c->yarn_original_max_position_embeddings;
    double low = floor(yarn_correction_dim(c->yarn_beta_fast, dim, c->rope_theta, orig));
    double high = ceil(yarn_correction_dim(c->yarn_beta_slow, dim, c->rope_theta, orig));
    if (low < 0) low = 0;
    if (high > dim - 1) high = dim - 1;
    if (low == high) high += 0.001;
    for (int j = 0; j < dim / 2; j++) {
        double ramp = (j - low) / (high - low);
        ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
        double smooth = 1.0 - ramp;
        inv_freq[j] = inv_freq[j] / c->yarn_factor * (1.0 - smooth) + inv_freq[j] * smooth;
    }
}

void mr_engine_rope_at(const mr_engine *e, int pos, float *cos_out, float *sin_out)
{
    for (int j = 0; j < e->cfg->qk_rope_head_dim / 2; j++) {
        double angle = (double)pos * e->inv_freq[j];
        cos_out[j] = (float)(cos(angle) * e->rope_mscale);
        sin_out[j] = (float)(sin(angle) * e->rope_mscale);
    }
}

float mr_engine_softmax_scale(const mr_engine *e)
{
    return e->softmax_scale;
}

/* ---- local routed experts ------------------------------------------------ */

static mr_expert_w expert_view(const mr_mlp *m)
{
    mr_expert_w e = {m->gate.w, m->up.w, m->down.w, m->gate.cols, m->gate.rows};
    return e;
}

mr_status mr_experts_forward(const mr_config *cfg, const mr_weights *weights,
                             const mr_kernels *k, int layer, int n_rows,
                             const float *const *rows, const int32_t *experts, float *const *out)
{
    const int dim = cfg->hidden_size, inter = cfg->moe_intermediate_size;
    const mr_layer_weights *lw = &weights->layers[layer];
    if (!lw->is_moe) return mr_fail(MR_EINVAL, "layer %d is not an MoE layer", layer);
    for (int i = 0; i < n_rows; i++)
        if (experts[i] < 0 || experts[i] >= cfg->n_routed_experts || !lw->experts[experts[i]].gate.w)
            return mr_fail(MR_EINVAL, "layer %d: expert %d is not held here", layer, experts[i]);
    mr_status st = MR_OK;
    float *in = malloc(sizeof(float) * (size_t)n_rows * dim + 1);
    float *res = malloc(sizeof(float) * (size_t)n_rows * dim + 1);
    float *scratch = malloc(sizeof(float) * 2 * (size_t)n_rows * inter + 1);
    int32_t *members = malloc(sizeof(int32_t) * (size_t)n_rows + 1);
    if (!in || !res || !scratch || !members) {
        st = mr_fail(MR_ENOMEM, "layer %d experts: out of memory for %d rows", layer, n_rows);
        goto done;
    }
    /* one batch per expert, experts in increasing id, rows in given order */
    for (int ex = 0; ex < cfg->n_routed_experts; ex++) {
        int n = 0;
        for (int i = 0; i < n_rows; i++)
            if (experts[i] == ex) members[n++] = i;
        if (n == 0) continue;
        for (int j = 0; j < n; j++)
            memcpy(in + (size_t)j * dim, rows[members[j]], sizeof(float) * dim);
        mr_expert_w ew = expert_view(&lw->experts[ex]);
        k->expert_ffn(&ew, in, n, res, false, scratch);
        for (int j = 0; j < n; j++)
            memcpy(out[members[j]], res + (size_t)j * dim, sizeof(float) * dim);
    }
done:
    free(in);
    free(res);
    free(scratch);
    free(members);
    return st;
}

mr_status mr_moe_run_local(const mr_config *cfg, const mr_weights *weights,
                           const mr_kernels *k, int layer, const float *h, int n_tokens,
                           const int32_t *expert_ids, float *expert_out)
{
    const int dim = cfg->hidden_size, top_k = cfg->num_experts_per_tok;
    const int n_rows = n_tokens * top_k;
    const float **rows = malloc(sizeof(float *) * (size_t)n_rows + 1);
    float **out = malloc(sizeof(float *) * (size_t)n_rows + 1);
    if (!rows || !out) {
        free(rows);
        free(out);
        return mr_fail(MR_ENOMEM, "layer %d experts: out of memory", layer);
    }
    for (int slot = 0; slot < n_rows; slot++) {
        rows[slot] = h + (size_t)(slot / top_k) * dim;
        out[slot] = expert_out + (size_t)slot * dim;
    }
    mr_status st = mr_experts_forward(cfg, weights, k, layer, n_rows, rows, expert_ids, out);
    free(rows);
    free(out);
    return st;
}

static mr_status local_moe_run(void *ctx, int layer, const float *h, int n_tokens,
                               const int32_t *expert_ids, const float *weights,
                               float *expert_out)
{
    mr_engine *e = ctx;
    (void)weights;
    return mr_moe_run_local(e->cfg, e->weights, e->k, layer, h, n_tokens, expert_ids, expert_out);
}

/* ---- create / destroy ---------------------------------------------------- */

mr_status mr_engine_create(const mr_config *cfg, const mr_weights *weights,
                           const mr_engine_opts *opts, mr_engine **out)
{
    *out = NULL;
    mr_engine *e = calloc(1, sizeof *e);
    if (!e) return mr_fail(MR_ENOMEM, "engine: out of memory");
    e->cfg = cfg;
    e->weights = weights;
    e->k = opts && opts->kernels ? opts->kernels : mr_kernels_cpu();
    e->attn = opts ? opts->attn : MR_ATTN_ABSORB;
    e->between_layers = opts ? opts->between_layers : NULL;
    e->between_layers_ctx = opts ? opts->between_layers_ctx : NULL;
    if (opts && opts->moe) {
        e->moe = *opts->moe;
    } else {
        e->moe.run = local_moe_run;
        e->moe.ctx = e;
    }

    double scale = 1.0 / sqrt((double)mr_config_qk_head_dim(cfg));
    e->rope_mscale = 1.0f;
    if (cfg->yarn_enabled) {
        double m_all = yarn_get_mscale(cfg->yarn_factor, cfg->yarn_mscale_all_dim);
        scale *= m_all * m_all;
        e->rope_mscale = (float)(yarn_get_mscale(cfg->yarn_factor, cfg->yarn_mscale) / m_all);
    }
    e->softmax_scale = (float)scale;

    e->inv_freq = calloc((size_t)cfg->qk_rope_head_dim / 2 + 1, sizeof(double));
    e->w_uk_t = calloc((size_t)cfg->num_hidden_layers, sizeof(float *));
    if (!e->inv_freq || !e->w_uk_t) goto nomem;
    compute_inv_freq(cfg, e->inv_freq);

    /* Absorbed attention folds kv_b's key rows into q: q_lat = q_nope · W_uk
     * with W_uk (nope, C) per head; store W_ukᵀ (C, nope) so it is a plain
     * [out, in] matrix for matmul. */
    const int H = cfg->num_attention_heads, nope = cfg->qk_nope_head_dim;
    const int C = cfg->kv_lora_rank, vd = cfg->v_head_dim;
    for (int l = 0; l < cfg->num_hidden_layers && e->attn == MR_ATTN_ABSORB; l++) {
        const float *kv_b = weights->layers[l].kv_b.w;
        float *t = malloc(sizeof(float) * (size_t)H * C * nope);
        if (!t) goto nomem;
        e->w_uk_t[l] = t;
        for (int h = 0; h < H; h++)
            for (int d = 0; d < nope; d++)
                for (int c = 0; c < C; c++)
                    t[((size_t)h * C + c) * nope + d] = kv_b[((size_t)h * (nope + vd) + d) * C + c];
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
    for (int l = 0; e->w_uk_t && l < e->cfg->num_hidden_layers; l++) free(e->w_uk_t[l]);
    free(e->w_uk_t);
    free(e->inv_freq);
    scratch_buf *bufs[] = {&e->x, &e->xn, &e->qa, &e->q, &e->kv, &e->q_lat, &e->head_in,
                           &e->head_out, &e->out_lat, &e->attn_out, &e->ctx, &e->kvb,
                           &e->k_full, &e->v_full, &e->scores, &e->cos_t, &e->sin_t,
                           &e->gate_logits, &e->gate_w, &e->gate_scratch, &e->expert_out,
                           &e->mlp_scratch, &e->routed};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free_buf(bufs[i]);
    free(e->gate_ids);
    free(e);
}

/* ---- attention ----------------------------------------------------------- */

/* Copy column block [col0, col0+width) of each of n rows (row stride ld_src)
 * into a dense (n, width) matrix, or back (scatter). */
static void gather_cols(const float *src, int ld_src, int col0, int width, int n, float *dst)
{
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * width, src + (size_t)i * ld_src + col0, sizeof(float) * width);
}

static void scatter_cols(const float *src, int n, int width, float *dst, int ld_dst, int col0)
{
    for (int i = 0; i < n; i++)
        memcpy(dst + (size_t)i * ld_dst + col0, src + (size_t)i * width, sizeof(float) * width);
}

/* Attention of the tokens [first, first+n_q) that belong to one sequence;
 * writes attn_out rows (n_q, H*v). */
static mr_status attend_sequence(mr_engine *e, int layer, const mr_batch *b, int first, int n_q)
{
    const mr_config *c = e->cfg;
    const int H = c->num_attention_heads, C = c->kv_lora_rank, R = c->qk_rope_head_dim;
    const int nope = c->qk_nope_head_dim, vd = c->v_head_dim, dqk = nope + R;
    const int lat = C + R;
    const mr_kv_seq *seq = b->seqs[first];
    const int n_ctx = b->positions[first + n_q - 1] + 1;
    int32_t ctx_len_stack[64];
    int32_t *ctx_len = n_q <= 64 ? ctx_len_stack : malloc(sizeof(int32_t) * (size_t)n_q);
    if (!ctx_len) return mr_fail(MR_ENOMEM, "engine: out of memory");
    for (int i = 0; i < n_q; i++) ctx_len[i] = b->positions[first + i] + 1;

    mr_status st = MR_OK;
    float *ctx = grow(&e->ctx, (size_t)n_ctx * lat, &st);
    float *scores = grow(&e->scores, (size_t)n_q * H * n_ctx, &st);
    if (st != MR_OK) goto done;
    mr_kv_seq_gather(seq, layer, n_ctx, ctx);

    if (e->attn == MR_ATTN_ABSORB) {
        /* q_pe (n_q, H, R) sits inside q rows; gather it densely. */
        float *q_pe = grow(&e->head_in, (size_t)n_q * H * R, &st);
        if (st != MR_OK) goto done;
        for (int i = 0; i < n_q; i++)
            for (int h = 0; h < H; h++)
                memcpy(q_pe + ((size_t)i * H + h) * R,
                       e->q.data + ((size_t)(first + i) * H + h) * dqk + nope, sizeof(float) * R);
        e->k->mla_absorbed(e->q_lat.data + (size_t)first * H * C, q_pe, n_q, H, C, R, ctx, n_ctx,
                           ctx_len, e->softmax_scale, e->out_lat.data + (size_t)first * H * C,
                           scores);
    } else {
        /* Naive: expand the latent into per-head K and V. */
        float *kvb = grow(&e->kvb, (size_t)n_ctx * H * (nope + vd), &st);
        float *kf = grow(&e->k_full, (size_t)n_ctx * H * dqk, &st);
        float *vf = grow(&e->v_full, (size_t)n_ctx * H * vd, &st);
        float *cn = grow(&e->head_in, (size_t)n_ctx * C, &st);
        if (st != MR_OK) goto done;
        gather_cols(ctx, lat, 0, C, n_ctx, cn);
        e->k->matmul(cn, e->weights->layers[layer].kv_b.w, kvb, n_ctx, H * (nope + vd), C, false);
        for (int t = 0; t < n_ctx; t++) {
            for (int h = 0; h < H; h++) {
                const float *src = kvb + ((size_t)t * H + h) * (nope + vd);
                float *kd = kf + ((size_t)t * H + h) * dqk;
                memcpy(kd, src, sizeof(float) * nope);
                memcpy(kd + nope, ctx + (size_t)t * lat + C, sizeof(float) * R);
                memcpy(vf + ((size_t)t * H + h) * vd, src + nope, sizeof(float) * vd);
            }
        }
        e->k->mla_naive(e->q.data + (size_t)first * H * dqk, kf, vf, n_q, H, dqk, vd, n_ctx,
                        ctx_len, e->softmax_scale, e->attn_out.data + (size_t)first * H * vd,
                        scores);
    }
done:
    if (ctx_len != ctx_len_stack) free(ctx_len);
    return st;
}

static mr_status attention_block(mr_engine *e, int layer, const mr_batch *b)
{
    const mr_config *c = e->cfg;
    const mr_layer_weights *lw = &e->weights->layers[layer];
    const int T = b->n_tokens, D = c->hidden_size, H = c->num_attention_heads;
    const int C = c->kv_lora_rank, R = c->qk_rope_head_dim, nope = c->qk_nope_head_dim;
    const int vd = c->v_head_dim, dqk = nope + R, lat = C + R;
    mr_status st = MR_OK;

    float *xn = grow(&e->xn, (size_t)T * D, &st);
    float *q = grow(&e->q, (size_t)T * H * dqk, &st);
    float *kv = grow(&e->kv, (size_t)T * lat, &st);
    float *attn_out = grow(&e->attn_out, (size_t)T * H * vd, &st);
    if (st != MR_OK) return st;

    e->k->rmsnorm(e->x.data, lw->attn_norm, xn, T, D, D, c->rms_norm_eps);
    if (c->q_lora_rank > 0) {
        float *qa = grow(&e->qa, (size_t)T * c->q_lora_rank, &st);
        if (st != MR_OK) return st;
        e->k->matmul(xn, lw->q_a.w, qa, T, c->q_lora_rank, D, false);
        e->k->rmsnorm(qa, lw->q_a_norm, qa, T, c->q_lora_rank, c->q_lora_rank, c->rms_norm_eps);
        e->k->matmul(qa, lw->q_b.w, q, T, H * dqk, c->q_lora_rank, false);
    } else {
        e->k->matmul(xn, lw->q.w, q, T, H * dqk, D, false);
    }
    e->k->matmul(xn, lw->kv_a.w, kv, T, lat, D, false);

    /* RoPE on q_pe (every head) and k_pe (shared), at each token's position. */
    for (int t = 0; t < T; t++) {
        const float *cos_t = e->cos_t.data + (size_t)t * (R / 2);
        const float *sin_t = e->sin_t.data + (size_t)t * (R / 2);
        e->k->rope(q + (size_t)t * H * dqk + nope, H, dqk, R, cos_t, sin_t);
        e->k->rope(kv + (size_t)t * lat + C, 1, lat, R, cos_t, sin_t);
    }
    e->k->rmsnorm(kv, lw->kv_a_norm, kv, T, C, lat, c->rms_norm_eps);
    for (int t = 0; t < T; t++)
        memcpy(mr_kv_seq_row(b->seqs[t], layer, b->positions[t]), kv + (size_t)t * lat,
               sizeof(float) * lat);

    if (e->attn == MR_ATTN_ABSORB) {
        float *q_lat = grow(&e->q_lat, (size_t)T * H * C, &st);
        grow(&e->out_lat, (size_t)T * H * C, &st);
        float *head_out = grow(&e->head_out, (size_t)T * (C > vd ? C : vd), &st);
        /* q_lat[:, h] = q_nope[:, h] · W_uk[h]   (n, nope) → (n, C) */
        float *head_in = grow(&e->head_in, (size_t)T * nope, &st);
        if (st != MR_OK) return st;
        for (int h = 0; h < H; h++) {
            gather_cols(q, H * dqk, h * dqk, nope, T, head_in);
            e->k->matmul(head_in, e->w_uk_t[layer] + (size_t)h * C * nope, head_out, T, C, nope,
                         false);
            scatter_cols(head_out, T, C, q_lat, H * C, h * C);
        }
    }
    /* attention per sequence: a run of consecutive tokens of one sequence */
    for (int first = 0; first < T;) {
        int n = 1;
        while (first + n < T && b->seqs[first + n] == b->seqs[first]) n++;
        MR_TRY(attend_sequence(e, layer, b, first, n));
        first += n;
    }
    if (e->attn == MR_ATTN_ABSORB) {
        /* attn_out[:, h] = out_lat[:, h] · W_uvᵀ  with W_uv = kv_b value rows (v, C) */
        float *lat_in = grow(&e->head_in, (size_t)T * C, &st);
        if (st != MR_OK) return st;
        for (int h = 0; h < H; h++) {
            gather_cols(e->out_lat.data, H * C, h * C, C, T, lat_in);
            e->k->matmul(lat_in, lw->kv_b.w + ((size_t)h * (nope + vd) + nope) * C,
                         e->head_out.data, T, vd, C, false);
            scatter_cols(e->head_out.data, T, vd, attn_out, H * vd, h * vd);
        }
    }
    /* x += o_proj(attn_out) */
    e->k->matmul(e->attn_out.data, lw->o.w, e->x.data, T, D, H * vd, true);
    return MR_OK;
}

/* ---- feed-forward -------------------------------------------------------- */

static mr_status ffn_block(mr_engine *e, int layer, int T)
{
    const mr_config *c = e->cfg;
    const mr_layer_weights *lw = &e->weights->layers[layer];
    const int D = c->hidden_size;
    mr_status st = MR_OK;
    float *xn = grow(&e->xn, (size_t)T * D, &st);
    if (st != MR_OK) return st;
    e->k->rmsnorm(e->x.data, lw->ffn_norm, xn, T, D, D, c->rms_norm_eps);

    if (!lw->is_moe) {
        float *s = grow(&e->mlp_scratch, 2 * (size_t)T * c->intermediate_size, &st);
        if (st != MR_OK) return st;
        mr_expert_w dense = expert_view(&lw->dense);
        e->k->expert_ffn(&dense, xn, T, e->x.data, true, s);
        return MR_OK;
    }

    const int E = c->n_routed_experts, K = c->num_experts_per_tok;
    float *logits = grow(&e->gate_logits, (size_t)T * E, &st);
    float *gw = grow(&e->gate_w, (size_t)T * K, &st);
    float *gs = grow(&e->gate_scratch, 2 * (size_t)E + 2 * (size_t)c->n_group, &st);
    float *eo = grow(&e->expert_out, (size_t)T * K * D, &st);
    float *routed = grow(&e->routed, (size_t)T * D, &st);
    int shared_inter = c->n_shared_experts * c->moe_intermediate_size;
    float *ms = grow(&e->mlp_scratch, 2 * (size_t)T * (shared_inter > 0 ? shared_inter : 1), &st);
    if (st != MR_OK) return st;
    if (e->gate_ids_cap < (size_t)T * K) {
        int32_t *p = realloc(e->gate_ids, sizeof(int32_t) * (size_t)T * K);
        if (!p) return mr_fail(MR_ENOMEM, "engine: out of memory");
        e->gate_ids = p;
        e->gate_ids_cap = (size_t)T * K;
    }

    mr_gate_params gp = {
        .n_experts = E, .n_group = c->n_group, .topk_group = c->topk_group, .top_k = K,
        .score_func = c->scoring_func, .method = c->topk_method,
        .norm_topk_prob = c->norm_topk_prob, .routed_scaling_factor = c->routed_scaling_factor,
        .v2_scaling = c->arch == MR_ARCH_DEEPSEEK_V2,
    };
    e->k->matmul(xn, lw->gate.w, logits, T, E, D, false);
    e->k->moe_gate(logits, lw->gate_bias, T, &gp, e->gate_ids, gw, gs);

    st = e->moe.run(e->moe.ctx, layer, xn, T, e->gate_ids, gw, eo);
    if (st != MR_OK) return mr_fail_prefix(st, "layer %d routed experts: ", layer);

    /* Fixed combine: routed = Σ_k w[t,k]·out[t,k] in router order; then
     * x += routed + shared(xn). */
    memset(routed, 0, sizeof(float) * (size_t)T * D);
    for (int t = 0; t < T; t++) {
        float *r = routed + (size_t)t * D;
        for (int j = 0; j < K; j++) {
            const float w = gw[(size_t)t * K + j];
            const float *o = eo + ((size_t)t * K + j) * D;
            for (int d = 0; d < D; d++) r[d] += w * o[d];
        }
    }
    if (c->n_shared_experts > 0) {
        mr_expert_w shared = expert_view(&lw->shared);
        e->k->expert_ffn(&shared, xn, T, routed, true, ms);
    }
    for (size_t i = 0; i < (size_t)T * D; i++) e->x.data[i] += routed[i];
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
        if (t > 0 && b->seqs[t - 1] == s && b->positions[t - 1] + 1 != pos)
            return mr_fail(MR_EINVAL, "token %d: positions of one sequence must be consecutive", t);
    }
    return MR_OK;
}

mr_status mr_engine_forward(mr_engine *e, const mr_batch *b, float *logits)
{
    const mr_config *c = e->cfg;
    const int T = b->n_tokens, D = c->hidden_size, R = c->qk_rope_head_dim;
    if (T <= 0) return MR_OK;
    MR_TRY(validate_batch(e, b));

    mr_status st = MR_OK;
    float *x = grow(&e->x, (size_t)T * D, &st);
    float *cos_t = grow(&e->cos_t, (size_t)T * (R / 2), &st);
    float *sin_t = grow(&e->sin_t, (size_t)T * (R / 2), &st);
    if (st != MR_OK) return st;
    for (int t = 0; t < T; t++) {
        memcpy(x + (size_t)t * D, e->weights->embed + (size_t)b->token_ids[t] * D,
               sizeof(float) * D);
        mr_engine_rope_at(e, b->positions[t], cos_t + (size_t)t * (R / 2),
                          sin_t + (size_t)t * (R / 2));
    }
    for (int l = 0; l < c->num_hidden_layers; l++) {
        MR_TRY(attention_block(e, l, b));
        MR_TRY(ffn_block(e, l, T));
        if (e->between_layers) e->between_layers(e->between_layers_ctx);
    }
    /* final norm + lm_head for the tokens that want logits */
    float *xn = grow(&e->xn, (size_t)T * D, &st);
    if (st != MR_OK) return st;
    int n_want = 0;
    for (int t = 0; t < T; t++) {
        if (b->want_logits && !b->want_logits[t]) continue;
        memcpy(xn + (size_t)n_want * D, x + (size_t)t * D, sizeof(float) * D);
        n_want++;
    }
    e->k->rmsnorm(xn, e->weights->final_norm, xn, n_want, D, D, c->rms_norm_eps);
    e->k->matmul(xn, e->weights->lm_head.w, logits, n_want, c->vocab_size, D, false);
    return MR_OK;
}
