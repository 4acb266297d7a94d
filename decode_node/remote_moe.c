/* decode_node/remote_moe.c — routed experts of one MoE layer on the expert
 * ranks: route every (token, k) slot to a live replica of its expert, send
 * one dispatch per destination rank, collect the answers and place each
 * output row at its slot (the engine combines them in router order).
 * Messages that arrive meanwhile are set aside for the main loop.
 *
 * Two ways rows travel (runtime/route_pairs.h):
 *   UCX  — MSG_DISPATCH / MSG_COMBINE carry slots, expert ids and rows in
 *          host memory (staged from/to the backend on a GPU);
 *   NCCL — with a pair to that rank (--route-plane nccl, distinct GPUs):
 *          MSG_DISPATCH_IDS / MSG_COMBINE_IDS carry slots and expert ids
 *          only; the rows are gathered on the GPU, sent, and the answers
 *          received on the pair (np_post_ordered: sends, then receives),
 *          then scattered into place on the GPU.
 * On a backend whose memory is not host memory the engine hands h and
 * expert_out over in backend memory (model/engine.h) and this file
 * does the staging the UCX destinations need. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "decode_internal.h"

/* The slots sent to rank r, in slot order (what its answer must echo). */
static int slots_of(const decode_state *d, int r, int n_slots, int32_t *out)
{
    int n = 0;
    for (int s = 0; s < n_slots; s++)
        if (d->route[s] == r) out[n++] = s;
    return n;
}

/* Check one answer; a UCX answer's rows go to expert_out_host at their
 * slots (an NCCL answer's rows arrive over the pair). */
static mr_status take_combine(decode_state *d, const tp_msg *m, int layer, int n_slots,
                              float *expert_out_host)
{
    const mr_config *cfg = &d->role.model.cfg;
    const int D = cfg->hidden_size;
    const bool nccl = m->type == MSG_COMBINE_IDS;
    mr_bulk_view v;
    MR_TRY(mr_bulk_view_of(m->data, m->len, m->type, D, cfg->num_hidden_layers,
                           cfg->n_routed_experts, m->src, &v));
    if (v.hdr.layer != layer || v.hdr.seq != d->step || v.hdr.n_rows != d->rows_per_rank[m->src])
        return mr_fail(MR_EPROTO, "expert rank %d answered layer %d step %llu with %d rows; "
                       "expected layer %d step %llu, %d rows", m->src, v.hdr.layer,
                       (unsigned long long)v.hdr.seq, v.hdr.n_rows, layer,
                       (unsigned long long)d->step, d->rows_per_rank[m->src]);
    int32_t *sent = d->slot_scratch;
    if (nccl) slots_of(d, m->src, n_slots, sent);
    for (int i = 0; i < v.hdr.n_rows; i++) {
        int slot = v.slots[i];
        if (slot < 0 || slot >= n_slots || d->route[slot] != m->src || (nccl && slot != sent[i]))
            return mr_fail(MR_EPROTO, "expert rank %d answered slot %d it was not sent%s", m->src,
                           slot, nccl ? " (or out of order)" : "");
        if (!nccl)
            memcpy(expert_out_host + (size_t)slot * D, v.rows + (size_t)i * D, sizeof(float) * D);
    }
    return MR_OK;
}

static mr_status route_slots(decode_state *d, int layer, int n_slots, const int32_t *expert_ids)
{
    const int n_ranks = tp_size(d->role.tp);
    memset(d->rows_per_rank, 0, sizeof(int) * (size_t)n_ranks);
    for (int slot = 0; slot < n_slots; slot++) {
        int r = mr_placement_route(&d->placement, layer, expert_ids[slot], slot, d->alive);
        if (r < 0)
            return mr_fail(MR_EPEER, "layer %d expert %d has no live replica (lost expert rank %d)",
                           layer, expert_ids[slot],
                           d->placement.ranks[((size_t)layer * d->placement.n_experts +
                                               expert_ids[slot]) * MR_PLACEMENT_MAX_REPLICAS]);
        d->route[slot] = r;
        d->rows_per_rank[r]++;
    }
    return MR_OK;
}

/* Rows to rank r over its NCCL pair: gather them on the backend (token
 * s / K of each slot s sent), post the send, then the receive. The slot
 * list stays in the pair's index buffer for the scatter afterwards. */
static mr_status post_pair(decode_state *d, int r, const float *h, int n_slots)
{
    const mr_kernels *k = d->role.kernels;
    const int D = d->role.model.cfg.hidden_size, K = d->role.model.cfg.num_experts_per_tok;
    int32_t *host = d->slot_scratch;
    const int n = slots_of(d, r, n_slots, host + n_slots); /* slots at [n_slots, ...) */
    for (int j = 0; j < n; j++) host[j] = host[n_slots + j] / K;
    memmove(host + n, host + n_slots, sizeof(int32_t) * (size_t)n); /* [tokens | slots] */
    mr_status st = MR_OK;
    const size_t bytes = sizeof(float) * (size_t)n * D;
    int32_t *idx = mr_kbuf_reserve(k, &d->pair_idx[r], sizeof(int32_t) * 2 * (size_t)n, &st);
    float *send = mr_kbuf_reserve(k, &d->pair_send[r], bytes, &st);
    float *recv = mr_kbuf_reserve(k, &d->pair_recv[r], bytes, &st);
    if (st != MR_OK) return st;
    k->copy(idx, host, sizeof(int32_t) * 2 * (size_t)n, MR_COPY_H2D);
    k->gather_rows(h, MR_WT_F32, D, idx, 0, n, D, send);
    MR_TRY(k->check()); /* NCCL reads `send` on the pair's own stream */
    np_xfer x[2] = {{.send = true, .buf = send, .bytes = bytes},
                    {.send = false, .buf = recv, .bytes = bytes}};
    return mr_route_pair_post(&d->role, &d->pairs, r, x, 2);
}

/* One dispatch per destination rank with rows. h is host memory for the
 * UCX destinations (h_host) and backend memory for the NCCL ones (h). */
static mr_status send_dispatches(decode_state *d, int layer, const float *h, const float *h_host,
                                 int n_slots, const int32_t *expert_ids, int *n_pending)
{
    const mr_config *cfg = &d->role.model.cfg;
    const int D = cfg->hidden_size, K = cfg->num_experts_per_tok, n_ranks = tp_size(d->role.tp);
    *n_pending = 0;
    /* every pair's buffers before the first post: growing one (cudaFree +
     * cudaMalloc) may synchronize the device, i.e. wait for the groups
     * already posted on the other pairs */
    for (int r = 0; r < n_ranks; r++) {
        if (d->rows_per_rank[r] == 0 || !mr_route_pairs_has(&d->pairs, r)) continue;
        const size_t n = (size_t)d->rows_per_rank[r];
        mr_status st = MR_OK;
        mr_kbuf_reserve(d->role.kernels, &d->pair_idx[r], sizeof(int32_t) * 2 * n, &st);
        mr_kbuf_reserve(d->role.kernels, &d->pair_send[r], sizeof(float) * n * D, &st);
        mr_kbuf_reserve(d->role.kernels, &d->pair_recv[r], sizeof(float) * n * D, &st);
        if (st != MR_OK) return st;
    }
    for (int r = 0; r < n_ranks; r++) {
        if (d->rows_per_rank[r] == 0) continue;
        const bool nccl = mr_route_pairs_has(&d->pairs, r);
        const int kind = nccl ? MSG_DISPATCH_IDS : MSG_DISPATCH;
        mr_status st = MR_OK;
        if (nccl) { /* before the ids leave: the expert rank waits for rows it was told of */
            st = post_pair(d, r, h, n_slots);
            d->pair_posted[r] = st == MR_OK;
            if (st != MR_OK) return mr_fail_prefix(st, "dispatch to expert rank %d: ", r);
        }
        size_t size = 0;
        uint8_t *buf = mr_bulk_pack_routed(kind, layer, d->step, nccl ? NULL : h_host, D, K,
                                           expert_ids, d->route, n_slots, r, &size);
        if (!buf) return mr_fail(MR_ENOMEM, "dispatch: out of memory");
        /* zero-copy: buf stays ours until release_dispatches() flushed it */
        d->send_bufs[r] = buf;
        st = tp_send_nocopy(d->role.tp, r, (uint16_t)kind, buf, size);
        if (st != MR_OK) return mr_fail_prefix(st, "dispatch to expert rank %d: ", r);
        (*n_pending)++;
    }
    return MR_OK;
}

/* The layer's dispatch buffers may be freed once their sends completed: the
 * answers came back, so the flush only collects local completions (a dead
 * peer's flush fails fast, its buffer is free as well). A pair whose group
 * is still posted after a failed layer is dropped: its buffers would be
 * written behind our back, and its order with the expert rank is lost (that
 * rank's rows go over UCX from now on). */
static void release_dispatches(decode_state *d, const bool *answered)
{
    const int n_ranks = tp_size(d->role.tp);
    /* a failed layer: a pair whose expert rank answered (its rows follow over
     * the pair whatever became of the layer here) finishes first, instead of
     * being dropped for good; the wait drops those that do not finish, one
     * deadline for all */
    int *ranks = d->pair_ranks, m = 0;
    for (int r = 0; answered && r < n_ranks; r++)
        if (d->pair_posted[r] && answered[r] && mr_route_pairs_has(&d->pairs, r)) ranks[m++] = r;
    const double until = mr_now() + 2.0 * d->role.opts.heartbeat_timeout_s;
    while (m > 0) {
        const double left = until - mr_now();
        if (mr_route_pairs_wait(&d->role, &d->pairs, ranks, m, left > 0 ? left : 0) == MR_OK) break;
        MR_WARN("%s", mr_last_error()); /* that pair was dropped; wait on for the others */
        int k = 0;
        for (int i = 0; i < m; i++)
            if (mr_route_pairs_has(&d->pairs, ranks[i])) ranks[k++] = ranks[i];
        if (k == m) break;
        m = k;
    }
    for (int r = 0; r < n_ranks; r++) {
        if (d->pair_posted[r]) {
            bool idle = false;
            if (mr_route_pairs_has(&d->pairs, r) &&
                (mr_route_pair_idle(&d->pairs, r, &idle) != MR_OK || !idle))
                mr_route_pairs_drop(&d->pairs, r, "a layer failed with its rows in flight");
            d->pair_posted[r] = false;
        }
        if (!d->send_bufs[r]) continue;
        mr_status st = tp_flush(d->role.tp, r, 2.0 * d->role.opts.heartbeat_timeout_s);
        if (st == MR_ETIMEDOUT) {
            /* still in flight: it must not be freed under UCX; declare the peer
             * dead (its requests fail), then the buffer is ours again */
            tp_declare_dead(d->role.tp, r, "dispatch send did not complete");
        }
        free(d->send_bufs[r]);
        d->send_bufs[r] = NULL;
    }
}

/* Wait for every NCCL pair's group, then scatter its rows to their slots. */
static mr_status finish_pairs(decode_state *d, int layer, float *expert_out)
{
    const mr_kernels *k = d->role.kernels;
    const int D = d->role.model.cfg.hidden_size, n_ranks = tp_size(d->role.tp);
    int *ranks = d->pair_ranks, m = 0;
    for (int r = 0; r < n_ranks; r++)
        if (d->pair_posted[r]) ranks[m++] = r;
    if (m == 0) return MR_OK;
    mr_status st = mr_route_pairs_wait(&d->role, &d->pairs, ranks, m,
                                       2.0 * d->role.opts.heartbeat_timeout_s);
    for (int i = 0; st != MR_OK && i < m; i++)
        if (!tp_peer_alive(d->role.tp, ranks[i])) { /* name it as every lost-rank error does */
            char why[512];
            snprintf(why, sizeof why, "%s", mr_last_error());
            return mr_fail(MR_EPEER, "lost expert rank %d (layer %d): %s", ranks[i], layer, why);
        }
    MR_TRY(st);
    for (int i = 0; i < m; i++) {
        const int r = ranks[i], n = d->rows_per_rank[r];
        const int32_t *slots = (const int32_t *)d->pair_idx[r].p + n;
        k->scatter_rows(d->pair_recv[r].p, n, D, slots, 0, expert_out, MR_WT_F32, D);
        d->pair_posted[r] = false;
    }
    return MR_OK;
}

mr_status dec_remote_moe(void *ctx, int layer, const float *h, int n_tokens,
                         const int32_t *expert_ids, const float *weights, float *expert_out)
{
    decode_state *d = ctx;
    (void)weights; /* the engine applies them in its fixed combine */
    const mr_kernels *k = d->role.kernels;
    const int D = d->role.model.cfg.hidden_size;
    const int n_slots = n_tokens * d->role.model.cfg.num_experts_per_tok;
    const int n_ranks = tp_size(d->role.tp);
    double t0 = mr_now();
    int pending = 0;
    mr_status st = route_slots(d, layer, n_slots, expert_ids);

    /* host views of h and expert_out for the UCX destinations */
    bool any_ucx = false;
    for (int r = 0; r < n_ranks; r++)
        any_ucx |= d->rows_per_rank[r] > 0 && !mr_route_pairs_has(&d->pairs, r);
    const float *h_host = h;
    float *out_host = expert_out;
    if (st == MR_OK && !k->host_memory && any_ucx) {
        float *hh = mr_kbuf_reserve_host(k, &d->h_host, sizeof(float) * (size_t)n_tokens * D, &st);
        out_host = mr_kbuf_reserve_host(k, &d->out_host, sizeof(float) * (size_t)n_slots * D, &st);
        if (st == MR_OK) k->copy(hh, h, sizeof(float) * (size_t)n_tokens * D, MR_COPY_D2H);
        h_host = hh;
    }
    if (st == MR_OK) st = send_dispatches(d, layer, h, h_host, n_slots, expert_ids, &pending);
    bool *answered = calloc((size_t)n_ranks, sizeof(bool));
    if (!answered && st == MR_OK) st = mr_fail(MR_ENOMEM, "out of memory");
    const double deadline = t0 + 2.0 * d->role.opts.heartbeat_timeout_s;
    while (st == MR_OK && pending > 0) {
        tp_msg m;
        if (!tp_poll(d->role.tp, &m)) {
            if (mr_now() > deadline) {
                st = mr_fail(MR_ETIMEDOUT, "layer %d: %d expert rank(s) did not answer within "
                             "%.0f s", layer, pending, deadline - t0);
                break;
            }
            /* the pairs' groups move on meanwhile: an ordered post issues its
             * receives once its sends are enqueued (np_post_ordered) */
            bool moving = false;
            for (int r = 0; r < n_ranks; r++) {
                bool idle = true;
                if (d->pair_posted[r] && mr_route_pairs_has(&d->pairs, r) &&
                    mr_route_pair_idle(&d->pairs, r, &idle) == MR_OK && !idle)
                    moving = true; /* an error shows again in finish_pairs */
            }
            tp_wait(d->role.tp, moving ? 0.0002 : 0.05);
            continue;
        }
        const bool awaited = m.src >= 0 && m.src < n_ranks && d->rows_per_rank[m.src] > 0 &&
                             !answered[m.src];
        const bool nccl = awaited && mr_route_pairs_has(&d->pairs, m.src);
        const bool answer = m.type == (nccl ? MSG_COMBINE_IDS : MSG_COMBINE);
        if (answer && awaited) {
            st = take_combine(d, &m, layer, n_slots, out_host);
            answered[m.src] = st == MR_OK; /* rows follow over a pair only after a good answer */
            pending--;
            tp_msg_free(&m);
        } else if (m.type == TP_MSG_PEER_DEAD) {
            d->alive[m.src] = false;
            if (awaited) st = mr_fail(MR_EPEER, "lost expert rank %d (layer %d)", m.src, layer);
            mr_msgq_push(&d->role.deferred, &m); /* the main loop handles it too */
        } else if (m.type == MSG_PAIR_ROWS) { /* a test pair's rows, early */
            mr_route_pairs_deliver(&d->role, &d->pairs, &m);
        } else if (m.type == MSG_COMBINE || m.type == MSG_COMBINE_IDS) {
            MR_DEBUG("stale combine from rank %d dropped", m.src);
            tp_msg_free(&m);
        } else {
            mr_msgq_push(&d->role.deferred, &m);
        }
    }
    /* the UCX answers' rows first (whole slots image), then the pairs' rows
     * scattered over it */
    if (st == MR_OK && !k->host_memory && any_ucx)
        k->copy(expert_out, out_host, sizeof(float) * (size_t)n_slots * D, MR_COPY_H2D);
    if (st == MR_OK && d->pairs.n_pairs > 0) st = finish_pairs(d, layer, expert_out);
    if (st != MR_OK) { /* keep this layer's error, not a flush's */
        char why[1024];
        snprintf(why, sizeof why, "%s", mr_last_error());
        release_dispatches(d, answered);
        st = mr_fail(st, "%s", why);
    } else {
        release_dispatches(d, answered);
    }
    free(answered);
    d->moe_wait_s += mr_now() - t0;
    return st;
}
