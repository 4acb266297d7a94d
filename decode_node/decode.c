/* decode_node/decode.c — the decode role (moerun-decode).
 *
 * Owns a paged latent KV pool registered for UCX RMA (prefill ranks put
 * finished prompts' KV straight into it) and the continuous batch of running
 * requests. Each step feeds one token of every running request through the
 * model: attention, dense layers and shared experts run here; each MoE
 * layer's routed tokens go to the expert ranks (remote_moe.c). Samples and
 * streams tokens to the coordinator. Protocol: docs/PROTOCOL.md.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/npy.h"
#include "common/timer.h"
#include "decode_internal.h"
#include "model/sampler.h"

static dec_req *find_req(decode_state *d, const char *id)
{
    for (int i = 0; i < d->n_reqs; i++)
        if (d->reqs[i] && !strcmp(d->reqs[i]->id, id)) return d->reqs[i];
    return NULL;
}

static void send_status(decode_state *d)
{
    Moerun__Status s = MOERUN__STATUS__INIT;
    s.free_kv_blocks = mr_kv_pool_free_blocks(d->pool);
    s.total_kv_blocks = mr_kv_pool_total_blocks(d->pool);
    int running = 0;
    for (int i = 0; i < d->n_reqs; i++) running += d->reqs[i] && d->reqs[i]->state == REQ_RUNNING;
    s.running = running;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_STATUS;
    f.status = &s;
    mr_role_send_frame(&d->role, d->role.coordinator, &f);
}

/* Forget a finished request: blocks back exactly once, slot freed. */
static void release_req(decode_state *d, dec_req *q)
{
    mr_kv_seq_release(&q->seq);
    if (q->request) moerun__request__free_unpacked(q->request, NULL);
    if (q->logits.fp) mr_npy_close(&q->logits);
    for (int i = 0; i < d->n_reqs; i++)
        if (d->reqs[i] == q) d->reqs[i] = NULL;
    free(q->id);
    free(q);
    send_status(d);
}

/* End a request with a terminal error event. */
static void fail_req(decode_state *d, dec_req *q, const char *error)
{
    MR_WARN("request '%s' failed: %s", q->id, error);
    mr_role_send_token(&d->role, q->id, -1, MOERUN__FINISH_REASON__FINISH_ERROR, error);
    release_req(d, q);
}

/* Stream `token` as the request's next output; finish when done. */
static void emit_token(decode_state *d, dec_req *q, int32_t token)
{
    q->last_token = token;
    q->n_generated++;
    Moerun__FinishReason why = MOERUN__FINISH_REASON__FINISH_NONE;
    if (!q->ignore_eos && token == d->role.model.cfg.eos_token_id)
        why = MOERUN__FINISH_REASON__FINISH_STOP;
    else if (q->n_generated >= q->max_new_tokens)
        why = MOERUN__FINISH_REASON__FINISH_LENGTH;
    mr_role_send_token(&d->role, q->id, token, why, NULL);
    if (why != MOERUN__FINISH_REASON__FINISH_NONE) release_req(d, q);
}

/* Reserve KV for a waiting request and hand it to its prefill rank. */
static bool try_grant(decode_state *d, dec_req *q)
{
    int total = q->prompt_len + q->max_new_tokens;
    if (mr_kv_seq_reserve(&q->seq, total) != MR_OK) return false;
    q->state = REQ_PREFILLING;
    Moerun__KvGrant g = MOERUN__KV_GRANT__INIT;
    g.request = q->request;
    g.decode_rank = d->role.rank;
    g.n_blocks = (size_t)q->seq.n_blocks;
    g.blocks = q->seq.blocks;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_KV_GRANT;
    f.kv_grant = &g;
    mr_status st = mr_role_send_frame(&d->role, q->prefill_rank, &f);
    if (st != MR_OK) {
        char err[256];
        snprintf(err, sizeof err, "cannot reach prefill rank %d: %s", q->prefill_rank,
                 mr_last_error());
        fail_req(d, q, err);
        return true;
    }
    send_status(d);
    return true;
}

/* FIFO admission: the oldest waiting request first, no overtaking. */
static void admit_waiting(decode_state *d)
{
    for (int i = 0; i < d->n_reqs; i++) {
        dec_req *q = d->reqs[i];
        if (!q || q->state != REQ_WAITING_KV) continue;
        if (!try_grant(d, q)) return;
    }
}

static void on_admit(decode_state *d, Moerun__Admit *a)
{
    Moerun__Request *rq = a->request;
    if (!rq || !rq->id || find_req(d, rq->id)) {
        MR_WARN("admit rejected: %s", rq && rq->id ? "duplicate id" : "missing request");
        if (rq && rq->id && !find_req(d, rq->id))
            mr_role_send_token(&d->role, rq->id, -1, MOERUN__FINISH_REASON__FINISH_ERROR,
                               "malformed admit");
        return;
    }
    dec_req *q = calloc(1, sizeof *q);
    if (!q) {
        mr_role_send_token(&d->role, rq->id, -1, MOERUN__FINISH_REASON__FINISH_ERROR,
                           "decode rank out of memory");
        return;
    }
    q->id = strdup(rq->id);
    q->prompt_len = (int)rq->n_prompt_ids;
    q->max_new_tokens = rq->max_new_tokens;
    q->ignore_eos = rq->ignore_eos;
    q->want_logits = rq->want_logits;
    q->prefill_rank = a->prefill_rank;
    q->state = REQ_WAITING_KV;
    mr_sampling_params sp = {1.0f, 1.0f, 0, 0};
    if (rq->sampling) {
        sp.temperature = rq->sampling->temperature;
        sp.top_p = rq->sampling->top_p;
        sp.top_k = rq->sampling->top_k;
        sp.seed = rq->sampling->seed;
    }
    mr_kv_seq_init(&q->seq, d->pool);
    /* keep the request to forward it in the KvGrant */
    a->request = NULL;
    q->request = rq;
    if (dec_add_req(d, q) != MR_OK || mr_sampler_init(&q->sampler, &sp) != MR_OK) {
        fail_req(d, q, mr_last_error());
        return;
    }
    int need = mr_kv_pool_blocks_for(d->pool, q->prompt_len + q->max_new_tokens);
    if (need > mr_kv_pool_total_blocks(d->pool)) {
        char err[256];
        snprintf(err, sizeof err, "request needs %d KV blocks (%d prompt + %d new tokens) but the "
                 "decode pool has only %d", need, q->prompt_len, q->max_new_tokens,
                 mr_kv_pool_total_blocks(d->pool));
        fail_req(d, q, err);
        return;
    }
    admit_waiting(d);
}

static void on_kv_ready(decode_state *d, int src, Moerun__KvReady *k)
{
    dec_req *q = k->id ? find_req(d, k->id) : NULL;
    if (!q || q->state != REQ_PREFILLING || q->prefill_rank != src) {
        MR_WARN("KvReady from rank %d for unknown request '%s' ignored", src, k->id ? k->id : "");
        return;
    }
    if (k->error && *k->error) {
        fail_req(d, q, k->error);
        return;
    }
    if (k->n_rng_state != 4 || k->first_token < 0 ||
        k->first_token >= d->role.model.cfg.vocab_size) {
        fail_req(d, q, "malformed KvReady from prefill");
        return;
    }
    /* prefill put the prompt's KV into the host image: to a GPU backend */
    int n_blocks = mr_kv_pool_blocks_for(d->pool, q->prompt_len);
    if (mr_kv_store_upload(&d->kv, n_blocks, q->seq.blocks) != MR_OK) {
        fail_req(d, q, mr_last_error());
        return;
    }
    memcpy(q->sampler.rng_state, k->rng_state, sizeof q->sampler.rng_state);
    if (q->want_logits && d->role.opts.logits_dir) {
        char path[1024];
        if (mr_role_logits_path(&d->role, q->id, path, sizeof path) != MR_OK ||
            mr_npy_open_append(path, (size_t)d->role.model.cfg.vocab_size, &q->logits) != MR_OK)
            MR_WARN("logits for '%s' not written: %s", q->id, mr_last_error());
    }
    q->state = REQ_RUNNING;
    emit_token(d, q, k->first_token);
}

static void on_peer_dead(decode_state *d, int rank)
{
    d->alive[rank] = false;
    const tp_peer *p = tp_peer_info(d->role.tp, rank);
    if (!d->role.shutdown) MR_WARN("%s rank %d is gone", tp_role_name(p->role), rank);
    if (rank == d->role.coordinator) {
        d->role.shutdown = true;
        return;
    }
    if (p->role == TP_ROLE_PREFILL) {
        char err[128];
        snprintf(err, sizeof err, "lost prefill rank %d", rank);
        for (int i = 0; i < d->n_reqs; i++) {
            dec_req *q = d->reqs[i];
            if (q && q->prefill_rank == rank && q->state != REQ_RUNNING)
                fail_req(d, q, err);
        }
    }
    /* expert ranks: routing skips dead replicas; a step needing an expert
     * with no live replica fails its requests (remote_moe.c). */
}

/* SWITCH: route with the new table from the next step on. Handled between
 * steps (the main loop), so no dispatch of the old table is in flight. */
static void on_placement(decode_state *d, int src, const Moerun__Placement *pf)
{
    mr_placement table;
    mr_status st = src == d->role.coordinator &&
                           pf->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_SWITCH
                       ? mr_role_placement_of(&d->role, pf, &table)
                       : mr_fail(MR_EPROTO, "placement phase %d from rank %d is not for decode "
                                 "ranks", (int)pf->phase, src);
    if (st == MR_OK) {
        mr_placement_free(&d->placement);
        d->placement = table; /* moved */
        MR_INFO("placement epoch %llu: routing with the new table",
                (unsigned long long)pf->epoch);
    } else {
        mr_role_reject(&d->role); /* logs and counts it; routing is unchanged */
    }
    mr_role_send_placement_ack(&d->role, pf->epoch, pf->phase, st == MR_OK ? NULL : mr_last_error(),
                               0, 0);
}

static void handle_message(decode_state *d, tp_msg *m)
{
    if (m->type == TP_MSG_PEER_DEAD) {
        on_peer_dead(d, m->src);
        return;
    }
    if (m->type == MSG_COMBINE) {
        MR_DEBUG("stale combine from rank %d dropped", m->src);
        return;
    }
    Moerun__Frame *f = mr_role_control_frame(&d->role, m);
    if (!f) return;
    switch (f->body_case) {
    case MOERUN__FRAME__BODY_ADMIT: on_admit(d, f->admit); break;
    case MOERUN__FRAME__BODY_KV_READY: on_kv_ready(d, m->src, f->kv_ready); break;
    case MOERUN__FRAME__BODY_SHUTDOWN: d->role.shutdown = true; break;
    case MOERUN__FRAME__BODY_PLACEMENT: on_placement(d, m->src, f->placement); break;
    default: mr_role_reject_frame(&d->role, f, m->src); break;
    }
    mr_frame_free(f);
}

/* One continuous-batching step over the running requests. */
static void decode_step(decode_state *d)
{
    const int V = d->role.model.cfg.vocab_size;
    int n = 0;
    for (int i = 0; i < d->n_reqs && n < d->role.opts.max_running; i++) {
        dec_req *q = d->reqs[i];
        if (!q || q->state != REQ_RUNNING) continue;
        d->batch_reqs[n] = q;
        d->batch_ids[n] = q->last_token;
        d->batch_pos[n] = q->prompt_len + q->n_generated - 1;
        d->batch_seqs[n] = &q->seq;
        n++;
    }
    if (n == 0) return;
    /* no request writes a logits file: every request's sampler rule runs on
     * the backend (each sampler draws its u here) and only token ids come
     * back; the same tokens as mr_sampler_next on the logits */
    bool on_backend = true;
    for (int i = 0; i < n && on_backend; i++) on_backend = !d->batch_reqs[i]->logits.fp;
    for (int i = 0; i < n && on_backend; i++)
        mr_sampler_draw(&d->batch_reqs[i]->sampler, &d->batch_draws[i]);
    mr_batch b = {n, d->batch_ids, d->batch_pos, d->batch_seqs, NULL};
    double t0 = mr_now();
    d->moe_wait_s = 0;
    mr_status st = on_backend
                       ? mr_engine_forward_sample(d->engine, &b, d->batch_draws, d->batch_next)
                       : mr_engine_forward(d->engine, &b, d->logits);
    double dt = mr_now() - t0;
    d->role.compute_s += dt - d->moe_wait_s;
    d->role.transfer_s += d->moe_wait_s;
    d->step++;
    if (st != MR_OK) {
        char err[1024];
        snprintf(err, sizeof err, "%s", mr_last_error());
        for (int i = 0; i < n; i++) fail_req(d, d->batch_reqs[i], err);
        return;
    }
    d->role.tokens_processed += (uint64_t)n;
    for (int i = 0; i < n && on_backend; i++) emit_token(d, d->batch_reqs[i], d->batch_next[i]);
    for (int i = 0; i < n && !on_backend; i++) {
        dec_req *q = d->batch_reqs[i];
        const float *row = d->logits + (size_t)i * V;
        if (q->logits.fp) mr_npy_append(&q->logits, row, 1);
        int32_t token;
        if (mr_sampler_next(&q->sampler, row, V, &token) != MR_OK) {
            fail_req(d, q, mr_last_error());
            continue;
        }
        emit_token(d, q, token);
    }
}

static mr_status run(decode_state *d)
{
    tp_msg m;
    while (!d->role.shutdown) {
        while (!d->role.shutdown && mr_role_next(&d->role, &m)) {
            handle_message(d, &m);
            tp_msg_free(&m);
        }
        if (d->role.shutdown) break;
        bool busy = false;
        for (int i = 0; i < d->n_reqs && !busy; i++) busy = d->reqs[i] && d->reqs[i]->state == REQ_RUNNING;
        if (busy) decode_step(d);
        admit_waiting(d); /* finished requests may have freed KV blocks */
        if (!busy) mr_role_idle(&d->role, 0.5);
    }
    return MR_OK;
}

int main(int argc, char **argv)
{
    decode_state d;
    memset(&d, 0, sizeof d);
    mr_status st = mr_role_init(&d.role, "decode", TP_ROLE_DECODE, argc, argv);
    if (st == MR_OK) st = dec_setup(&d);
    if (st == MR_OK) st = run(&d);
    if (st == MR_OK) {
        for (int i = 0; i < d.n_reqs; i++)
            if (d.reqs[i]) fail_req(&d, d.reqs[i], "decode rank shut down");
        if (tp_peer_alive(d.role.tp, d.role.coordinator)) mr_role_send_stats(&d.role);
    }
    dec_teardown(&d);
    return mr_role_finish(&d.role, st);
}
