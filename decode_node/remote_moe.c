/* decode_node/remote_moe.c — routed experts of one MoE layer on the expert
 * ranks: route every (token, k) slot to a live replica of its expert, send
 * one MSG_DISPATCH per destination rank, collect the MSG_COMBINE answers and
 * place each output row at its slot (the engine combines them in router
 * order). Messages that arrive meanwhile are set aside for the main loop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "decode_internal.h"

/* Check and place one combine answer. */
static mr_status take_combine(decode_state *d, const tp_msg *m, int layer, int n_slots,
                              float *expert_out)
{
    const mr_config *cfg = &d->role.model.cfg;
    const int D = cfg->hidden_size;
    mr_bulk_view v;
    MR_TRY(mr_bulk_view_of(m->data, m->len, MSG_COMBINE, D, cfg->num_hidden_layers,
                           cfg->n_routed_experts, m->src, &v));
    if (v.hdr.layer != layer || v.hdr.seq != d->step || v.hdr.n_rows != d->rows_per_rank[m->src])
        return mr_fail(MR_EPROTO, "expert rank %d answered layer %d step %llu with %d rows; "
                       "expected layer %d step %llu, %d rows", m->src, v.hdr.layer,
                       (unsigned long long)v.hdr.seq, v.hdr.n_rows, layer,
                       (unsigned long long)d->step, d->rows_per_rank[m->src]);
    for (int i = 0; i < v.hdr.n_rows; i++) {
        int slot = v.slots[i];
        if (slot < 0 || slot >= n_slots || d->route[slot] != m->src)
            return mr_fail(MR_EPROTO, "expert rank %d answered slot %d it was not sent", m->src,
                           slot);
        memcpy(expert_out + (size_t)slot * D, v.rows + (size_t)i * D, sizeof(float) * D);
    }
    return MR_OK;
}

static mr_status send_dispatches(decode_state *d, int layer, const float *h, int n_slots,
                                 const int32_t *expert_ids, int *n_pending)
{
    const mr_config *cfg = &d->role.model.cfg;
    const int D = cfg->hidden_size, K = cfg->num_experts_per_tok, n_ranks = tp_size(d->role.tp);
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
    *n_pending = 0;
    for (int r = 0; r < n_ranks; r++) {
        if (d->rows_per_rank[r] == 0) continue;
        size_t size = 0;
        uint8_t *buf = mr_bulk_pack_routed(MSG_DISPATCH, layer, d->step, h, D, K, expert_ids,
                                           d->route, n_slots, r, &size);
        if (!buf) return mr_fail(MR_ENOMEM, "dispatch: out of memory");
        /* zero-copy: buf stays ours until release_dispatches() flushed it */
        d->send_bufs[r] = buf;
        mr_status st = tp_send_nocopy(d->role.tp, r, MSG_DISPATCH, buf, size);
        if (st != MR_OK) return mr_fail_prefix(st, "dispatch to expert rank %d: ", r);
        (*n_pending)++;
    }
    return MR_OK;
}

/* The layer's dispatch buffers may be freed once their sends completed: the
 * answers came back, so the flush only collects local completions (a dead
 * peer's flush fails fast, its buffer is free as well). */
static void release_dispatches(decode_state *d)
{
    const int n_ranks = tp_size(d->role.tp);
    for (int r = 0; r < n_ranks; r++) {
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

mr_status dec_remote_moe(void *ctx, int layer, const float *h, int n_tokens,
                         const int32_t *expert_ids, const float *weights, float *expert_out)
{
    decode_state *d = ctx;
    (void)weights; /* the engine applies them in its fixed combine */
    const int n_slots = n_tokens * d->role.model.cfg.num_experts_per_tok;
    const int n_ranks = tp_size(d->role.tp);
    double t0 = mr_now();
    int pending = 0;
    mr_status st = send_dispatches(d, layer, h, n_slots, expert_ids, &pending);
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
            tp_wait(d->role.tp, 0.05);
            continue;
        }
        bool awaited = m.src >= 0 && m.src < n_ranks && d->rows_per_rank[m.src] > 0 &&
                       !answered[m.src];
        if (m.type == MSG_COMBINE && awaited) {
            st = take_combine(d, &m, layer, n_slots, expert_out);
            answered[m.src] = true;
            pending--;
            tp_msg_free(&m);
        } else if (m.type == TP_MSG_PEER_DEAD) {
            d->alive[m.src] = false;
            if (awaited) st = mr_fail(MR_EPEER, "lost expert rank %d (layer %d)", m.src, layer);
            mr_msgq_push(&d->role.deferred, &m); /* the main loop handles it too */
        } else if (m.type == MSG_COMBINE) {
            MR_DEBUG("stale combine from rank %d dropped", m.src);
            tp_msg_free(&m);
        } else {
            mr_msgq_push(&d->role.deferred, &m);
        }
    }
    free(answered);
    if (st != MR_OK) { /* keep this layer's error, not a flush's */
        char why[1024];
        snprintf(why, sizeof why, "%s", mr_last_error());
        release_dispatches(d);
        st = mr_fail(st, "%s", why);
    } else {
        release_dispatches(d);
    }
    d->moe_wait_s += mr_now() - t0;
    return st;
}
