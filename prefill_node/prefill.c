/* prefill_node/prefill.c — the prefill role (moerun-prefill).
 *
 * Requests arrive as KvGrant from the decode rank that reserved their KV.
 * Continuous chunked prefill under a token budget: an iteration takes up to
 * --max-batch-tokens prompt tokens from the FIFO queue (chunking long
 * prompts; the oldest request always goes first, so nothing starves) and
 * starts when the budget is full or the oldest request has waited
 * --max-wait-ms. Attention is data-parallel (this rank's requests only); MoE
 * layers are expert-parallel across all prefill ranks (ep_moe.c). A finished
 * prompt's latent KV is put into the decode rank's pool, flushed, announced
 * with KvReady (with the first token and the sampler state), then released. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "model/sampler.h"
#include "ep_plane.h"
#include "prefill_internal.h"

static void free_req(pf_req *q)
{
    mr_kv_seq_release(&q->seq);
    if (q->logits.fp) mr_npy_close(&q->logits);
    if (q->request) moerun__request__free_unpacked(q->request, NULL);
    free(q->grant);
    free(q->id);
    free(q);
}

static void remove_from_queue(prefill_state *p, pf_req *q)
{
    int j = 0;
    for (int i = 0; i < p->n_queue; i++)
        if (p->queue[i] != q) p->queue[j++] = p->queue[i];
    p->n_queue = j;
}

/* Tell the decode rank (which reports to the coordinator) that the request failed. */
static void fail_req(prefill_state *p, pf_req *q, const char *error)
{
    MR_WARN("request '%s' failed in prefill: %s", q->id, error);
    Moerun__KvReady k = MOERUN__KV_READY__INIT;
    k.id = q->id;
    k.first_token = -1;
    k.error = (char *)error;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_KV_READY;
    f.kv_ready = &k;
    if (mr_role_send_frame(&p->role, q->decode_rank, &f) != MR_OK) /* decode gone too */
        mr_role_send_token(&p->role, q->id, -1, MOERUN__FINISH_REASON__FINISH_ERROR, error);
    remove_from_queue(p, q);
    free_req(q);
}

/* Put every local KV block into the decode rank's granted blocks, flush. */
static mr_status ship_kv(prefill_state *p, pf_req *q)
{
    pf_decode_pool *dp = &p->decode_pools[q->decode_rank];
    if (!dp->known)
        return mr_fail(MR_EPROTO, "no KV pool info from decode rank %d", q->decode_rank);
    if (dp->block_bytes != mr_kv_pool_block_bytes(p->pool))
        return mr_fail(MR_EINVAL, "decode rank %d KV block is %llu bytes, prefill's is %zu "
                       "(--block-tokens must match)", q->decode_rank,
                       (unsigned long long)dp->block_bytes, mr_kv_pool_block_bytes(p->pool));
    int n_local = mr_kv_pool_blocks_for(p->pool, q->prompt_len);
    if (n_local > q->n_grant)
        return mr_fail(MR_EPROTO, "decode rank %d granted %d blocks for a %d-token prompt",
                       q->decode_rank, q->n_grant, q->prompt_len);
    double t0 = mr_now();
    /* a GPU backend computed the blocks in device memory: stage them */
    MR_TRY(mr_kv_store_download(&p->kv, n_local, q->seq.blocks));
    for (int i = 0; i < n_local; i++) {
        if (q->grant[i] < 0 || q->grant[i] >= dp->n_blocks)
            return mr_fail(MR_EPROTO, "decode rank %d granted block %d outside its pool",
                           q->decode_rank, q->grant[i]);
        MR_TRY(tp_put(p->role.tp, q->decode_rank, dp->rkey,
                      (uint64_t)q->grant[i] * dp->block_bytes,
                      mr_kv_store_host_block(&p->kv, q->seq.blocks[i]), dp->block_bytes));
    }
    mr_status st = tp_flush(p->role.tp, q->decode_rank, 2.0 * p->role.opts.heartbeat_timeout_s);
    p->role.transfer_s += mr_now() - t0;
    return st;
}

/* The prompt is done: sample the first token, ship KV, announce it. */
static void complete_req(prefill_state *p, pf_req *q, const float *last_logits)
{
    const Moerun__SamplingParams *sp = q->request->sampling;
    mr_sampling_params params = {sp ? sp->temperature : 0.0f, sp ? sp->top_p : 1.0f,
                                 sp ? sp->top_k : 0, sp ? sp->seed : 0};
    mr_sampler sampler;
    int32_t token = -1;
    mr_status st = mr_sampler_init(&sampler, &params);
    if (st == MR_OK) st = mr_sampler_next(&sampler, last_logits, p->role.model.cfg.vocab_size, &token);
    if (st == MR_OK) st = ship_kv(p, q);
    if (st != MR_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", mr_last_error());
        fail_req(p, q, err);
        return;
    }
    if (q->logits.fp) mr_npy_close(&q->logits);
    Moerun__KvReady k = MOERUN__KV_READY__INIT;
    k.id = q->id;
    k.first_token = token;
    k.n_rng_state = 4;
    k.rng_state = sampler.rng_state;
    k.error = "";
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_KV_READY;
    f.kv_ready = &k;
    if (mr_role_send_frame(&p->role, q->decode_rank, &f) != MR_OK)
        MR_WARN("KvReady for '%s' lost: %s", q->id, mr_last_error());
    remove_from_queue(p, q);
    free_req(q);
}

/* Fill the batch from the FIFO queue under the token budget. */
static int build_batch(prefill_state *p, pf_req **members, int *chunk, int *n_members)
{
    const int budget = p->role.opts.max_batch_tokens;
    int n = 0;
    *n_members = 0;
    for (int i = 0; i < p->n_queue && n < budget; i++) {
        pf_req *q = p->queue[i];
        if (!q->started) {
            if (mr_kv_seq_reserve(&q->seq, q->prompt_len) != MR_OK) break; /* wait: FIFO */
            q->started = true;
            if (q->request->want_logits && p->role.opts.logits_dir) {
                char path[1024];
                if (mr_role_logits_path(&p->role, q->id, path, sizeof path) != MR_OK ||
                    mr_npy_open(path, (size_t)q->prompt_len, (size_t)p->role.model.cfg.vocab_size,
                                &q->logits) != MR_OK)
                    MR_WARN("logits for '%s' not written: %s", q->id, mr_last_error());
            }
        }
        int take = q->prompt_len - q->done;
        if (take > budget - n) take = budget - n;
        for (int t = 0; t < take; t++, n++) {
            int pos = q->done + t;
            p->ids[n] = q->request->prompt_ids[pos];
            p->pos[n] = pos;
            p->seqs[n] = &q->seq;
            p->want[n] = q->logits.fp || pos == q->prompt_len - 1;
        }
        members[*n_members] = q;
        chunk[(*n_members)++] = take;
    }
    return n;
}

static void run_iteration(prefill_state *p)
{
    const int V = p->role.model.cfg.vocab_size;
    int cap = p->n_queue > 0 ? p->n_queue : 1;
    pf_req **members = malloc(sizeof(pf_req *) * (size_t)cap);
    int *chunk = malloc(sizeof(int) * (size_t)cap);
    if (!members || !chunk) {
        free(members);
        free(chunk);
        MR_ERROR("prefill: out of memory");
        return;
    }
    int n_members = 0;
    int n = build_batch(p, members, chunk, &n_members);
    mr_batch b = {n, p->ids, p->pos, p->seqs, p->want};
    double t0 = mr_now();
    p->ep_wait_s = 0;
    mr_status st = MR_OK;
    if (n > 0) {
        st = mr_engine_forward(p->engine, &b, p->logits);
    } else { /* nothing of our own: still take part in every MoE layer's exchange */
        const mr_config *cfg = &p->role.model.cfg;
        for (int l = cfg->first_k_dense_replace; l < cfg->num_hidden_layers && st == MR_OK; l++)
            st = pf_ep_moe(p, l, NULL, 0, NULL, NULL, NULL);
    }
    p->iter++;
    double dt = mr_now() - t0;
    p->role.compute_s += dt - p->ep_wait_s;
    p->role.transfer_s += p->ep_wait_s;
    p->role.tokens_processed += (uint64_t)n;
    if (st != MR_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", mr_last_error());
        for (int i = 0; i < n_members; i++) fail_req(p, members[i], err);
        goto done;
    }
    int row = 0; /* logits rows in batch order for tokens with want set */
    int tok = 0;
    for (int i = 0; i < n_members; i++) {
        pf_req *q = members[i];
        int first_row = row;
        for (int t = 0; t < chunk[i]; t++, tok++) row += p->want[tok];
        if (q->logits.fp) mr_npy_append(&q->logits, p->logits + (size_t)first_row * V, (size_t)chunk[i]);
        q->done += chunk[i];
        if (q->done == q->prompt_len) complete_req(p, q, p->logits + (size_t)(row - 1) * V);
    }
done:
    free(members);
    free(chunk);
}

static void on_kv_grant(prefill_state *p, Moerun__KvGrant *g)
{
    Moerun__Request *rq = g->request;
    if (!rq || !rq->id || rq->n_prompt_ids == 0) {
        MR_WARN("malformed KvGrant ignored");
        return;
    }
    if (p->n_queue == p->cap_queue) {
        int cap = p->cap_queue ? p->cap_queue * 2 : 64;
        pf_req **grown = realloc(p->queue, sizeof(pf_req *) * (size_t)cap);
        if (grown) {
            p->queue = grown;
            p->cap_queue = cap;
        }
    }
    pf_req *q = calloc(1, sizeof *q);
    int32_t *grant = malloc(sizeof(int32_t) * (g->n_blocks + 1));
    if (!q || !grant || p->n_queue == p->cap_queue) {
        free(q);
        free(grant);
        mr_role_send_token(&p->role, rq->id, -1, MOERUN__FINISH_REASON__FINISH_ERROR,
                           "prefill rank out of memory");
        return;
    }
    q->id = strdup(rq->id);
    q->request = rq;
    g->request = NULL; /* keep it */
    q->decode_rank = g->decode_rank;
    memcpy(grant, g->blocks, sizeof(int32_t) * g->n_blocks);
    q->grant = grant;
    q->n_grant = (int)g->n_blocks;
    q->prompt_len = (int)rq->n_prompt_ids;
    q->t_enqueued = mr_now();
    mr_kv_seq_init(&q->seq, p->pool);
    p->queue[p->n_queue++] = q;
    const mr_config *cfg = &p->role.model.cfg;
    for (int i = 0; i < q->prompt_len; i++)
        if (rq->prompt_ids[i] < 0 || rq->prompt_ids[i] >= cfg->vocab_size) {
            fail_req(p, q, "prompt token id out of range");
            return;
        }
    if (q->decode_rank < 0 || q->decode_rank >= tp_size(p->role.tp))
        fail_req(p, q, "bad decode rank in KvGrant");
    else if (mr_kv_pool_blocks_for(p->pool, q->prompt_len) > mr_kv_pool_total_blocks(p->pool))
        fail_req(p, q, "prompt larger than the prefill rank's KV pool (--kv-blocks)");
}

static void on_pool_info(prefill_state *p, int src, Moerun__KvPoolInfo *info)
{
    pf_decode_pool *dp = &p->decode_pools[src];
    if (dp->rkey) tp_rkey_release(dp->rkey);
    dp->rkey = NULL;
    dp->known = false;
    if (tp_rkey_import(p->role.tp, src, info->rkey.data, info->rkey.len, info->base_addr,
                       &dp->rkey) != MR_OK) {
        MR_ERROR("decode rank %d KV pool: %s", src, mr_last_error());
        return;
    }
    if (info->block_bytes != mr_kv_pool_block_bytes(p->pool)) {
        MR_ERROR("decode rank %d KV pool: blocks of %llu bytes, ours %zu (do --kv-dtype, "
                 "--block-tokens and the model agree on every rank?)", src,
                 (unsigned long long)info->block_bytes, mr_kv_pool_block_bytes(p->pool));
        return;
    }
    dp->block_bytes = info->block_bytes;
    dp->n_blocks = info->n_blocks;
    dp->known = true;
}

static void handle_message(prefill_state *p, tp_msg *m)
{
    if (m->type == TP_MSG_PEER_DEAD) {
        const tp_peer *peer = tp_peer_info(p->role.tp, m->src);
        MR_WARN("rank %d is dead", m->src);
        if (m->src == p->role.coordinator) p->role.shutdown = true;
        if (peer->role == TP_ROLE_PREFILL) p->ep_broken = true;
        if (peer->role == TP_ROLE_DECODE) {
            char err[128];
            snprintf(err, sizeof err, "lost decode rank %d", m->src);
            for (int i = p->n_queue - 1; i >= 0; i--)
                if (p->queue[i]->decode_rank == m->src) fail_req(p, p->queue[i], err);
        }
        return;
    }
    if (m->type == MSG_EP_ROUTE || m->type == MSG_EP_ROWS) {
        if (!pf_ep_message_valid(p, m)) {
            mr_role_reject(&p->role);
            return;
        }
        mr_msgq_push(&p->ep_pending, m); /* a peer started the next iteration */
        return;
    }
    if (m->type == MSG_EP_NCCL_ID) { /* only expected while opening the NCCL plane */
        mr_role_reject(&p->role);
        return;
    }
    Moerun__Frame *f = mr_role_control_frame(&p->role, m);
    if (!f) return;
    switch (f->body_case) {
    case MOERUN__FRAME__BODY_KV_GRANT: on_kv_grant(p, f->kv_grant); break;
    case MOERUN__FRAME__BODY_KV_POOL_INFO: on_pool_info(p, m->src, f->kv_pool_info); break;
    case MOERUN__FRAME__BODY_SHUTDOWN: p->role.shutdown = true; break;
    default: mr_role_reject_frame(&p->role, f, m->src); break;
    }
    mr_frame_free(f);
}

/* Seconds until the batch should start (0 = now, <0 = no work). */
static double time_to_start(const prefill_state *p)
{
    if (p->n_queue == 0) return -1;
    int waiting = 0;
    for (int i = 0; i < p->n_queue; i++) waiting += p->queue[i]->prompt_len - p->queue[i]->done;
    if (waiting >= p->role.opts.max_batch_tokens) return 0;
    double waited_ms = (mr_now() - p->queue[0]->t_enqueued) * 1e3;
    double left = (p->role.opts.max_wait_ms - waited_ms) / 1e3;
    return left > 0 ? left : 0;
}

static bool no_expert_unless_mine(void *ctx, int layer, int expert)
{
    (void)layer;
    prefill_state *p = ctx;
    return pf_expert_owner(p, expert) == p->role.rank;
}

static mr_status setup(prefill_state *p)
{
    mr_role *r = &p->role;
    p->prefill_ranks = mr_role_ranks(r, TP_ROLE_PREFILL, &p->n_prefill);
    for (int i = 0; i < p->n_prefill; i++)
        if (p->prefill_ranks[i] == r->rank) p->my_index = i;
    MR_TRY(mr_role_load_model(r, no_expert_unless_mine, p));
    const mr_config *cfg = &r->model.cfg;
    const int B = r->opts.max_batch_tokens;
    p->decode_pools = calloc((size_t)tp_size(r->tp), sizeof(pf_decode_pool));
    p->ids = malloc(sizeof(int32_t) * (size_t)B);
    p->pos = malloc(sizeof(int32_t) * (size_t)B);
    p->seqs = malloc(sizeof(mr_kv_seq *) * (size_t)B);
    p->want = malloc((size_t)B);
    p->logits = malloc(sizeof(float) * (size_t)B * cfg->vocab_size);
    if (!p->decode_pools || !p->ids || !p->pos || !p->seqs || !p->want || !p->logits)
        return mr_fail(MR_ENOMEM, "prefill: out of memory for batch buffers");
    MR_TRY(mr_kv_store_create(r->kernels, cfg->num_hidden_layers, mr_config_latent_dim(cfg),
                              r->opts.block_tokens, r->opts.kv_blocks, r->opts.kv_dtype, NULL,
                              &p->kv));
    p->pool = p->kv.pool;
    p->moe.run = pf_ep_moe;
    p->moe.ctx = p;
    MR_TRY(pf_plane_open(p));
    mr_engine_opts eo = {.kernels = r->kernels, .weight_type = mr_role_weight_type(r),
                         .attn = r->opts.attn, .moe = &p->moe,
                         .between_layers = mr_role_service, .between_layers_ctx = r};
    MR_TRY(mr_role_create_engine(r, &eo, &p->engine));
    MR_INFO("ready: %d prefill ranks (expert-parallel), budget %d tokens/iteration", p->n_prefill, B);
    return mr_role_send_ready(r, 0, 0);
}

static void teardown(prefill_state *p)
{
    for (int i = 0; i < p->n_queue; i++) free_req(p->queue[i]);
    free(p->queue);
    for (int i = 0; p->decode_pools && p->role.tp && i < tp_size(p->role.tp); i++)
        if (p->decode_pools[i].rkey) tp_rkey_release(p->decode_pools[i].rkey);
    free(p->decode_pools);
    mr_msgq_free(&p->ep_pending);
    if (p->role.kernels) {
        pf_plane_close(p);
        mr_kbuf_free(p->role.kernels, &p->ep_rows);
        mr_kbuf_free(p->role.kernels, &p->ep_idx);
    }
    mr_engine_destroy(p->engine);
    mr_kv_store_destroy(&p->kv);
    p->pool = NULL;
    free(p->prefill_ranks);
    free(p->ids);
    free(p->pos);
    free(p->seqs);
    free(p->want);
    free(p->logits);
}

int main(int argc, char **argv)
{
    prefill_state p;
    memset(&p, 0, sizeof p);
    mr_status st = mr_role_init(&p.role, "prefill", TP_ROLE_PREFILL, argc, argv);
    if (st == MR_OK) st = setup(&p);
    tp_msg m;
    while (st == MR_OK && !p.role.shutdown) {
        while (!p.role.shutdown && mr_role_next(&p.role, &m)) {
            handle_message(&p, &m);
            tp_msg_free(&m);
        }
        if (p.role.shutdown) break;
        double wait = time_to_start(&p);
        bool join = p.n_prefill > 1 && pf_ep_join_needed(&p);
        if (join || wait == 0) run_iteration(&p); /* with EP broken it fails fast */
        else mr_role_idle(&p.role, wait > 0 ? wait : 0.5);
    }
    if (st == MR_OK) {
        for (int i = p.n_queue - 1; i >= 0; i--) fail_req(&p, p.queue[i], "prefill rank shut down");
        if (tp_peer_alive(p.role.tp, p.role.coordinator)) mr_role_send_stats(&p.role);
    }
    teardown(&p);
    return mr_role_finish(&p.role, st);
}
