/* decode_node/setup.c — decode start-up and teardown: model without routed
 * experts, expert placement, engine, KV pool registered for RMA and announced
 * to every prefill rank. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "decode_internal.h"

static bool no_routed_experts(void *ctx, int layer, int expert)
{
    (void)ctx;
    (void)layer;
    (void)expert;
    return false;
}

mr_status dec_add_req(decode_state *d, dec_req *q)
{
    if (d->n_reqs == d->cap_reqs) { /* squeeze out finished slots, keeping FIFO order */
        int n = 0;
        for (int i = 0; i < d->n_reqs; i++)
            if (d->reqs[i]) d->reqs[n++] = d->reqs[i];
        d->n_reqs = n;
    }
    if (d->n_reqs == d->cap_reqs) {
        int cap = d->cap_reqs ? d->cap_reqs * 2 : 64;
        dec_req **grown = realloc(d->reqs, sizeof(dec_req *) * (size_t)cap);
        if (!grown) return mr_fail(MR_ENOMEM, "decode: out of memory for requests");
        d->reqs = grown;
        d->cap_reqs = cap;
    }
    d->reqs[d->n_reqs++] = q;
    return MR_OK;
}

static mr_status announce_pool(decode_state *d)
{
    void *base = mr_kv_store_host_block(&d->kv, 0);
    void *packed = NULL;
    size_t packed_len = 0;
    MR_TRY(tp_mem_pack(d->role.tp, d->pool_mem, &packed, &packed_len));
    Moerun__KvPoolInfo info = MOERUN__KV_POOL_INFO__INIT;
    info.rkey.data = packed;
    info.rkey.len = packed_len;
    info.base_addr = (uint64_t)(uintptr_t)base;
    info.block_bytes = mr_kv_pool_block_bytes(d->pool);
    info.n_blocks = mr_kv_pool_total_blocks(d->pool);
    info.block_tokens = mr_kv_pool_block_tokens(d->pool);
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_KV_POOL_INFO;
    f.kv_pool_info = &info;
    int n_prefill = 0;
    int *prefill = mr_role_ranks(&d->role, TP_ROLE_PREFILL, &n_prefill);
    mr_status st = MR_OK;
    for (int i = 0; i < n_prefill && st == MR_OK; i++) st = mr_role_send_frame(&d->role, prefill[i], &f);
    free(prefill);
    free(packed);
    return st;
}

mr_status dec_setup(decode_state *d)
{
    mr_role *r = &d->role;
    MR_TRY(mr_role_load_model(r, no_routed_experts, NULL));
    const mr_config *cfg = &r->model.cfg;
    int n_ranks = tp_size(r->tp);
    int n_expert = 0;
    int *experts = mr_role_ranks(r, TP_ROLE_EXPERT, &n_expert);
    mr_status st = r->opts.placement_path
                       ? mr_placement_load(r->opts.placement_path, cfg, experts, n_expert, &d->placement)
                       : mr_placement_round_robin(cfg, experts, n_expert, &d->placement);
    free(experts);
    MR_TRY(st);

    const int max_b = r->opts.max_running, K = cfg->num_experts_per_tok;
    d->alive = malloc(sizeof(bool) * (size_t)n_ranks);
    d->batch_reqs = malloc(sizeof(dec_req *) * (size_t)max_b);
    d->batch_ids = malloc(sizeof(int32_t) * (size_t)max_b);
    d->batch_pos = malloc(sizeof(int32_t) * (size_t)max_b);
    d->batch_next = malloc(sizeof(int32_t) * (size_t)max_b);
    d->batch_draws = malloc(sizeof(mr_sample_row) * (size_t)max_b);
    d->batch_seqs = malloc(sizeof(mr_kv_seq *) * (size_t)max_b);
    d->logits = malloc(sizeof(float) * (size_t)max_b * cfg->vocab_size);
    d->route = malloc(sizeof(int32_t) * (size_t)max_b * K);
    d->slot_scratch = malloc(sizeof(int32_t) * 2 * (size_t)max_b * K);
    d->rows_per_rank = calloc((size_t)n_ranks, sizeof(int));
    d->send_bufs = calloc((size_t)n_ranks, sizeof(uint8_t *));
    d->pair_idx = calloc((size_t)n_ranks, sizeof(mr_kbuf));
    d->pair_send = calloc((size_t)n_ranks, sizeof(mr_kbuf));
    d->pair_recv = calloc((size_t)n_ranks, sizeof(mr_kbuf));
    d->pair_posted = calloc((size_t)n_ranks, sizeof(bool));
    d->pair_ranks = calloc((size_t)n_ranks, sizeof(int));
    if (!d->alive || !d->batch_reqs || !d->batch_ids || !d->batch_pos || !d->batch_next || !d->batch_draws ||
        !d->batch_seqs || !d->logits || !d->route || !d->slot_scratch || !d->rows_per_rank ||
        !d->send_bufs || !d->pair_idx || !d->pair_send || !d->pair_recv || !d->pair_posted ||
        !d->pair_ranks)
        return mr_fail(MR_ENOMEM, "decode: out of memory for batch buffers");
    for (int i = 0; i < n_ranks; i++) d->alive[i] = true;

    /* the pool lives in memory UCX allocated, so prefill's puts are native
     * on every transport (shared memory included) */
    size_t pool_bytes = mr_kv_pool_bytes_for(cfg->num_hidden_layers, mr_config_latent_dim(cfg),
                                             r->opts.block_tokens, r->opts.kv_blocks,
                                             r->opts.kv_dtype);
    MR_TRY(tp_mem_alloc(r->tp, pool_bytes, &d->pool_mem));
    MR_TRY(mr_kv_store_create(r->kernels, cfg->num_hidden_layers, mr_config_latent_dim(cfg),
                              r->opts.block_tokens, r->opts.kv_blocks, r->opts.kv_dtype,
                              tp_mem_base(d->pool_mem), &d->kv));
    d->pool = d->kv.pool;
    d->moe.run = dec_remote_moe;
    d->moe.ctx = d;
    mr_engine_opts eo = {.kernels = r->kernels, .weight_type = mr_role_weight_type(r),
                         .attn = r->opts.attn, .moe = &d->moe,
                         .between_layers = mr_role_service, .between_layers_ctx = r};
    MR_TRY(mr_role_create_engine(r, &eo, &d->engine));
    if (r->opts.route_pairs) MR_TRY(mr_route_pairs_offer(r, &d->pairs));
    MR_TRY(announce_pool(d));
    MR_TRY(mr_role_send_ready(r, mr_kv_pool_free_blocks(d->pool), mr_kv_pool_total_blocks(d->pool)));
    MR_INFO("ready: KV pool %d blocks x %d tokens (%.1f MB of %s rows), %d expert ranks",
            r->opts.kv_blocks, r->opts.block_tokens,
            (double)mr_kv_pool_block_bytes(d->pool) * r->opts.kv_blocks / 1e6,
            mr_wtype_name(r->opts.kv_dtype),
            tp_count_role(r->tp, TP_ROLE_EXPERT));
    return MR_OK;
}

void dec_teardown(decode_state *d)
{
    for (int i = 0; i < d->n_reqs; i++)
        if (d->reqs[i]) {
            mr_kv_seq_release(&d->reqs[i]->seq);
            free(d->reqs[i]->id);
            free(d->reqs[i]);
        }
    free(d->reqs);
    mr_engine_destroy(d->engine);
    mr_kv_store_destroy(&d->kv); /* before the host image it uses */
    d->pool = NULL;
    if (d->pool_mem) tp_mem_deregister(d->role.tp, d->pool_mem);
    mr_placement_free(&d->placement);
    int n_ranks = d->role.tp ? tp_size(d->role.tp) : 0;
    for (int i = 0; d->send_bufs && i < n_ranks; i++) free(d->send_bufs[i]);
    free(d->send_bufs);
    mr_route_pairs_free(&d->pairs); /* before the buffers its transfers used */
    for (int i = 0; d->pair_idx && d->pair_send && d->pair_recv && d->role.kernels && i < n_ranks;
         i++) {
        mr_kbuf_free(d->role.kernels, &d->pair_idx[i]);
        mr_kbuf_free(d->role.kernels, &d->pair_send[i]);
        mr_kbuf_free(d->role.kernels, &d->pair_recv[i]);
    }
    if (d->role.kernels) {
        mr_kbuf_free(d->role.kernels, &d->h_host);
        mr_kbuf_free(d->role.kernels, &d->out_host);
    }
    free(d->pair_idx);
    free(d->pair_send);
    free(d->pair_recv);
    free(d->pair_posted);
    free(d->pair_ranks);
    free(d->slot_scratch);
    free(d->rows_per_rank);
    free(d->route);
    free(d->alive);
    free(d->batch_reqs);
    free(d->batch_ids);
    free(d->batch_pos);
    free(d->batch_next);
    free(d->batch_draws);
    free(d->batch_seqs);
    free(d->logits);
}
