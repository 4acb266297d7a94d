/* prefill_node/ep_moe.c — wide expert parallelism among the prefill ranks
 * (the DeepEP "normal mode" pattern over our transport).
 *
 * Each prefill rank holds 1/P of the routed experts (expert e on prefill rank
 * e mod P). At every MoE layer of iteration n, every prefill rank sends one
 * MSG_EP_DISPATCH to each peer (empty when no token routes there), serves its
 * own experts for its own and the received rows, answers each peer with
 * MSG_EP_COMBINE and places the answers it gets. Ranks with no tokens take
 * part too (prefill.c joins an iteration when a peer's dispatch for it shows
 * up), so the exchange never waits for a rank that is idle. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "prefill_internal.h"

typedef struct ep_key {
    int kind, src;
    uint64_t seq;
    int layer;
} ep_key;

/* ep_pending holds only validated bulk messages. */
static bool ep_matches(const tp_msg *m, void *ctx)
{
    const ep_key *k = ctx;
    mr_bulk_hdr h;
    memcpy(&h, m->data, sizeof h);
    return m->src == k->src && m->type == k->kind && h.seq == k->seq && h.layer == k->layer;
}

/* Find (or wait for) the EP message of `kind` from `src` for (seq, layer). */
static mr_status await_ep(prefill_state *p, int kind, int src, uint64_t seq, int layer,
                          tp_msg *out)
{
    const mr_config *cfg = &p->role.model.cfg;
    ep_key key = {kind, src, seq, layer};
    if (mr_msgq_take(&p->ep_pending, ep_matches, &key, out)) return MR_OK;
    const double deadline = mr_now() + 2.0 * p->role.opts.heartbeat_timeout_s;
    for (;;) {
        tp_msg m;
        if (!tp_poll(p->role.tp, &m)) {
            if (mr_now() > deadline)
                return mr_fail(MR_ETIMEDOUT, "prefill rank %d did not send its layer %d exchange",
                               src, layer);
            tp_wait(p->role.tp, 0.05);
            continue;
        }
        if (m.type == TP_MSG_PEER_DEAD) {
            int dead = m.src;
            mr_msgq_push(&p->role.deferred, &m);
            if (tp_peer_info(p->role.tp, dead)->role == TP_ROLE_PREFILL) {
                p->ep_broken = true;
                return mr_fail(MR_EPEER, "lost prefill rank %d (expert-parallel layer %d)", dead,
                               layer);
            }
            continue;
        }
        if (m.type != MSG_EP_DISPATCH && m.type != MSG_EP_COMBINE) {
            mr_msgq_push(&p->role.deferred, &m);
            continue;
        }
        mr_bulk_view v;
        if (mr_bulk_view_of(m.data, m.len, m.type, cfg->hidden_size, cfg->num_hidden_layers,
                            cfg->n_routed_experts, m.src, &v) != MR_OK) {
            mr_role_reject(&p->role);
            tp_msg_free(&m);
            continue;
        }
        if (m.src == src && m.type == kind && v.hdr.seq == seq && v.hdr.layer == layer) {
            *out = m;
            return MR_OK;
        }
        mr_msgq_push(&p->ep_pending, &m);
    }
}

bool pf_ep_join_needed(const prefill_state *p)
{
    for (int i = 0; i < p->ep_pending.count; i++) {
        const tp_msg *m = &p->ep_pending.items[(p->ep_pending.head + i) % p->ep_pending.cap];
        mr_bulk_hdr h;
        memcpy(&h, m->data, sizeof h);
        if (m->type == MSG_EP_DISPATCH && h.seq == p->iter + 1) return true;
    }
    return false;
}

typedef struct ep_layer {
    int n_peers;
    uint8_t **reply;      /* (n_prefill) combine buffers for peers' rows */
    tp_msg *dispatch_in;  /* (n_prefill) peers' dispatches */
} ep_layer;

static mr_status send_dispatches(prefill_state *p, int layer, const float *h, int n_slots,
                                 const int32_t *expert_ids, const int32_t *route, uint64_t seq)
{
    const int D = p->role.model.cfg.hidden_size, K = p->role.model.cfg.num_experts_per_tok;
    for (int i = 0; i < p->n_prefill; i++) {
        int r = p->prefill_ranks[i];
        if (r == p->role.rank) continue;
        size_t size = 0; /* possibly empty: every peer takes part in every layer */
        uint8_t *buf = mr_bulk_pack_routed(MSG_EP_DISPATCH, layer, seq, h, D, K, expert_ids, route,
                                           n_slots, r, &size);
        if (!buf) return mr_fail(MR_ENOMEM, "EP dispatch: out of memory");
        mr_status st = tp_send(p->role.tp, r, MSG_EP_DISPATCH, buf, size);
        free(buf);
        if (st != MR_OK) return mr_fail_prefix(st, "EP dispatch to prefill rank %d: ", r);
    }
    return MR_OK;
}

/* Serve own experts for own slots and every peer's rows; build replies. */
static mr_status serve_experts(prefill_state *p, int layer, const float *h, int n_slots,
                               const int32_t *expert_ids, float *expert_out, ep_layer *el)
{
    const mr_config *cfg = &p->role.model.cfg;
    const int D = cfg->hidden_size, K = cfg->num_experts_per_tok;
    int total = 0;
    for (int s = 0; s < n_slots; s++) total += pf_expert_owner(p, expert_ids[s]) == p->role.rank;
    for (int i = 0; i < p->n_prefill; i++) {
        if (!el->dispatch_in[i].data) continue;
        mr_bulk_hdr hd;
        memcpy(&hd, el->dispatch_in[i].data, sizeof hd);
        total += hd.n_rows;
    }
    const float **rows = malloc(sizeof(float *) * (size_t)(total + 1));
    float **outs = malloc(sizeof(float *) * (size_t)(total + 1));
    int32_t *experts = malloc(sizeof(int32_t) * (size_t)(total + 1));
    mr_status st = MR_OK;
    if (!rows || !outs || !experts) {
        st = mr_fail(MR_ENOMEM, "EP layer %d: out of memory", layer);
        goto done;
    }
    int n = 0;
    for (int s = 0; s < n_slots; s++) {
        if (pf_expert_owner(p, expert_ids[s]) != p->role.rank) continue;
        rows[n] = h + (size_t)(s / K) * D;
        outs[n] = expert_out + (size_t)s * D;
        experts[n++] = expert_ids[s];
    }
    for (int i = 0; i < p->n_prefill; i++) {
        tp_msg *m = &el->dispatch_in[i];
        if (!m->data) continue;
        mr_bulk_view v;
        if ((st = mr_bulk_view_of(m->data, m->len, MSG_EP_DISPATCH, D, cfg->num_hidden_layers,
                                  cfg->n_routed_experts, m->src, &v)) != MR_OK)
            goto done;
        el->reply[i] = malloc(mr_bulk_size(MSG_EP_COMBINE, v.hdr.n_rows, D));
        if (!el->reply[i]) {
            st = mr_fail(MR_ENOMEM, "EP layer %d: out of memory", layer);
            goto done;
        }
        int32_t *slots;
        float *out_rows;
        mr_bulk_init(el->reply[i], MSG_EP_COMBINE, layer, v.hdr.n_rows, D, v.hdr.seq, &slots, NULL,
                     &out_rows);
        for (int j = 0; j < v.hdr.n_rows; j++) {
            slots[j] = v.slots[j];
            rows[n] = v.rows + (size_t)j * D;
            outs[n] = out_rows + (size_t)j * D;
            experts[n++] = v.experts[j];
        }
    }
    st = mr_experts_forward(cfg, mr_engine_weights(p->engine), p->role.kernels, &p->role.experts_ws,
                            layer, n, rows, experts, outs);
done:
    free(rows);
    free(outs);
    free(experts);
    return st;
}

static mr_status place_combine(prefill_state *p, const tp_msg *m, int n_slots,
                               const int32_t *expert_ids, float *expert_out)
{
    const mr_config *cfg = &p->role.model.cfg;
    const int D = cfg->hidden_size;
    mr_bulk_view v;
    MR_TRY(mr_bulk_view_of(m->data, m->len, MSG_EP_COMBINE, D, cfg->num_hidden_layers,
                           cfg->n_routed_experts, m->src, &v));
    for (int j = 0; j < v.hdr.n_rows; j++) {
        int s = v.slots[j];
        if (s < 0 || s >= n_slots || pf_expert_owner(p, expert_ids[s]) != m->src)
            return mr_fail(MR_EPROTO, "prefill rank %d answered slot %d it was not sent", m->src, s);
        memcpy(expert_out + (size_t)s * D, v.rows + (size_t)j * D, sizeof(float) * D);
    }
    return MR_OK;
}

mr_status pf_ep_moe(void *ctx, int layer, const float *h, int n_tokens,
                    const int32_t *expert_ids, const float *weights, float *expert_out)
{
    prefill_state *p = ctx;
    (void)weights; /* applied by the engine's fixed combine */
    const mr_config *cfg = &p->role.model.cfg;
    const int n_slots = n_tokens * cfg->num_experts_per_tok;
    if (p->n_prefill == 1)
        return mr_moe_run_local_host(cfg, mr_engine_weights(p->engine), p->role.kernels,
                                     &p->role.experts_ws, layer, h, n_tokens, expert_ids,
                                     expert_out);
    if (p->ep_broken) return mr_fail(MR_EPEER, "expert parallelism lost a prefill rank");
    const uint64_t seq = p->iter + 1;
    double t0 = mr_now();
    double t_compute = 0;
    ep_layer el = {0};
    el.reply = calloc((size_t)p->n_prefill, sizeof(uint8_t *));
    el.dispatch_in = calloc((size_t)p->n_prefill, sizeof(tp_msg));
    int32_t *route = malloc(sizeof(int32_t) * (size_t)(n_slots + 1));
    mr_status st = el.reply && el.dispatch_in && route ? MR_OK
                                                       : mr_fail(MR_ENOMEM, "EP: out of memory");
    for (int s = 0; route && s < n_slots; s++) route[s] = pf_expert_owner(p, expert_ids[s]);
    if (st == MR_OK) st = send_dispatches(p, layer, h, n_slots, expert_ids, route, seq);
    for (int i = 0; i < p->n_prefill && st == MR_OK; i++) {
        int r = p->prefill_ranks[i];
        if (r != p->role.rank) st = await_ep(p, MSG_EP_DISPATCH, r, seq, layer, &el.dispatch_in[i]);
    }
    if (st == MR_OK) {
        double tc = mr_now();
        st = serve_experts(p, layer, h, n_slots, expert_ids, expert_out, &el);
        t_compute = mr_now() - tc;
    }
    for (int i = 0; i < p->n_prefill && st == MR_OK; i++) {
        if (!el.reply[i]) continue;
        mr_bulk_hdr hd;
        memcpy(&hd, el.reply[i], sizeof hd);
        st = tp_send(p->role.tp, p->prefill_ranks[i], MSG_EP_COMBINE, el.reply[i],
                     mr_bulk_size(MSG_EP_COMBINE, hd.n_rows, cfg->hidden_size));
    }
    for (int i = 0; i < p->n_prefill && st == MR_OK; i++) {
        int r = p->prefill_ranks[i];
        if (r == p->role.rank) continue;
        tp_msg m;
        st = await_ep(p, MSG_EP_COMBINE, r, seq, layer, &m);
        if (st == MR_OK) {
            st = place_combine(p, &m, n_slots, expert_ids, expert_out);
            tp_msg_free(&m);
        }
    }
    for (int i = 0; el.reply && i < p->n_prefill; i++) {
        free(el.reply[i]);
        tp_msg_free(&el.dispatch_in[i]);
    }
    free(el.reply);
    free(el.dispatch_in);
    free(route);
    p->ep_wait_s += mr_now() - t0 - t_compute;
    return st;
}
