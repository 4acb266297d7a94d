/* prefill_node/ep_moe.c — wide expert parallelism among the prefill ranks
 * (the DeepEP "normal mode" pattern over our transport).
 *
 * Each prefill rank holds 1/P of the routed experts (expert e on member
 * e mod P). At every MoE layer of iteration n every prefill rank:
 *   1. sends one MSG_EP_ROUTE to each peer (slot ids and expert ids of the
 *      rows it will send there; empty when no token routes there) and takes
 *      the peers' routes, so both sides of every transfer know its size;
 *   2. gathers the rows for each peer on its backend and runs the dispatch
 *      exchange through the EP data plane (ep_plane.h: UCX via host memory,
 *      or NCCL between GPUs);
 *   3. runs its experts on its own rows and on the received rows;
 *   4. runs the combine exchange (the answers go back in the order the rows
 *      came, so no further route is needed) and scatters the answers into
 *      the engine's expert_out rows.
 * Rows stay in backend memory throughout (the engine hands h and expert_out
 * over in backend memory, model/engine.h). Ranks with no tokens take
 * part too (prefill.c joins an iteration when a peer's EP message for it
 * shows up), so the exchange never waits for a rank that is idle. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "ep_plane.h"
#include "prefill_internal.h"

typedef struct ep_key {
    int kind, src;
    uint64_t seq;
    int layer, phase;
} ep_key;

/* ep_pending holds only validated bulk messages. */
static bool ep_matches(const tp_msg *m, void *ctx)
{
    const ep_key *k = ctx;
    mr_bulk_hdr h;
    memcpy(&h, m->data, sizeof h);
    return m->src == k->src && m->type == k->kind && h.seq == k->seq && h.layer == k->layer &&
           (k->kind != MSG_EP_ROWS || h.reserved == k->phase);
}

bool pf_ep_message_valid(const prefill_state *p, const tp_msg *m)
{
    const mr_config *cfg = &p->role.model.cfg;
    mr_bulk_view v;
    if (mr_bulk_view_of(m->data, m->len, m->type, cfg->hidden_size, cfg->num_hidden_layers,
                        cfg->n_routed_experts, m->src, &v) != MR_OK)
        return false;
    if (m->type == MSG_EP_ROWS && v.hdr.reserved != MR_EP_PHASE_DISPATCH &&
        v.hdr.reserved != MR_EP_PHASE_COMBINE)
        return false;
    return true;
}

mr_status pf_ep_await(prefill_state *p, int kind, int src, uint64_t seq, int layer, int phase,
                      tp_msg *out)
{
    ep_key key = {kind, src, seq, layer, phase};
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
        if (m.type != MSG_EP_ROUTE && m.type != MSG_EP_ROWS) {
            mr_msgq_push(&p->role.deferred, &m);
            continue;
        }
        if (!pf_ep_message_valid(p, &m)) {
            mr_role_reject(&p->role);
            tp_msg_free(&m);
            continue;
        }
        if (ep_matches(&m, &key)) {
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
        if (h.seq == p->iter + 1) return true;
    }
    return false;
}

/* ---- one layer -------------------------------------------------------------------- */

/* Host plan of one layer. Rows for peers are ordered peer by peer (member
 * order), within a peer in slot order; so are the rows received. */
typedef struct ep_plan {
    int *send_n, *send_off, *recv_n, *recv_off;  /* (P) rows per peer and offsets */
    int n_send, n_recv, n_own;
    int32_t *route;       /* (n_slots) owner rank of each slot */
    int32_t *idx;         /* (2 n_send) send rows' token, then their slots */
    int32_t *own_tok, *own_slot, *own_exp;      /* (n_own) */
    int32_t *recv_exp, *recv_row;               /* (n_recv) experts, 0..n_recv-1 */
} ep_plan;

static void plan_free(ep_plan *pl)
{
    free(pl->send_n);
    free(pl->route);
    free(pl->idx);
    free(pl->own_tok);
    free(pl->recv_exp);
    memset(pl, 0, sizeof *pl);
}

/* Everything that depends only on this rank's routing. */
static mr_status plan_sends(const prefill_state *p, int n_slots, const int32_t *expert_ids,
                            ep_plan *pl)
{
    const int P = p->n_prefill, K = p->role.model.cfg.num_experts_per_tok;
    pl->send_n = calloc((size_t)P * 4, sizeof(int));
    pl->route = malloc(sizeof(int32_t) * (size_t)(n_slots + 1));
    pl->idx = malloc(sizeof(int32_t) * (size_t)(2 * n_slots + 1));
    pl->own_tok = malloc(sizeof(int32_t) * (size_t)(3 * n_slots + 1));
    if (!pl->send_n || !pl->route || !pl->idx || !pl->own_tok)
        return mr_fail(MR_ENOMEM, "EP: out of memory");
    pl->send_off = pl->send_n + P;
    pl->recv_n = pl->send_n + 2 * P;
    pl->recv_off = pl->send_n + 3 * P;
    pl->own_slot = pl->own_tok + n_slots;
    pl->own_exp = pl->own_slot + n_slots;
    for (int s = 0; s < n_slots; s++) {
        const int member = expert_ids[s] % P;
        pl->route[s] = p->prefill_ranks[member];
        if (member == p->my_index) {
            pl->own_tok[pl->n_own] = s / K;
            pl->own_slot[pl->n_own] = s;
            pl->own_exp[pl->n_own++] = expert_ids[s];
        } else {
            pl->send_n[member]++;
        }
    }
    for (int i = 0; i < P; i++) {
        pl->send_off[i] = pl->n_send;
        pl->n_send += pl->send_n[i];
    }
    int *fill = calloc((size_t)P, sizeof(int));
    if (!fill) return mr_fail(MR_ENOMEM, "EP: out of memory");
    for (int s = 0; s < n_slots; s++) {
        const int member = expert_ids[s] % P;
        if (member == p->my_index) continue;
        const int j = pl->send_off[member] + fill[member]++;
        pl->idx[j] = s / K;              /* the row to gather */
        pl->idx[pl->n_send + j] = s;     /* where its answer goes */
    }
    free(fill);
    return MR_OK;
}

/* Send our routes, then take every peer's (rows and experts we will get). */
static mr_status exchange_routes(prefill_state *p, int layer, uint64_t seq, int n_slots,
                                 const int32_t *expert_ids, ep_plan *pl)
{
    const mr_config *cfg = &p->role.model.cfg;
    const int D = cfg->hidden_size, K = cfg->num_experts_per_tok, P = p->n_prefill;
    for (int i = 0; i < P; i++) {
        const int r = p->prefill_ranks[i];
        if (i == p->my_index) continue;
        size_t size = 0; /* possibly empty: every peer takes part in every layer */
        uint8_t *buf = mr_bulk_pack_routed(MSG_EP_ROUTE, layer, seq, NULL, D, K, expert_ids,
                                           pl->route, n_slots, r, &size);
        if (!buf) return mr_fail(MR_ENOMEM, "EP route: out of memory");
        mr_status st = tp_send(p->role.tp, r, MSG_EP_ROUTE, buf, size);
        free(buf);
        if (st != MR_OK) return mr_fail_prefix(st, "EP route to prefill rank %d: ", r);
    }
    tp_msg *in = calloc((size_t)(P > 0 ? P : 1), sizeof *in);
    if (!in) return mr_fail(MR_ENOMEM, "EP: out of memory");
    mr_status st = MR_OK;
    for (int i = 0; i < P && st == MR_OK; i++) {
        if (i == p->my_index) continue;
        st = pf_ep_await(p, MSG_EP_ROUTE, p->prefill_ranks[i], seq, layer, 0, &in[i]);
        if (st != MR_OK) break;
        mr_bulk_hdr h;
        memcpy(&h, in[i].data, sizeof h);
        pl->recv_off[i] = pl->n_recv;
        pl->recv_n[i] = h.n_rows;
        pl->n_recv += h.n_rows;
    }
    if (st == MR_OK) {
        pl->recv_exp = malloc(sizeof(int32_t) * (size_t)(2 * pl->n_recv + 1));
        if (!pl->recv_exp) st = mr_fail(MR_ENOMEM, "EP: out of memory");
    }
    for (int i = 0; i < P && st == MR_OK; i++) {
        if (i == p->my_index) continue;
        mr_bulk_view v;
        st = mr_bulk_view_of(in[i].data, in[i].len, MSG_EP_ROUTE, D, cfg->num_hidden_layers,
                             cfg->n_routed_experts, in[i].src, &v);
        for (int j = 0; st == MR_OK && j < v.hdr.n_rows; j++) {
            if (v.experts[j] % P != p->my_index)
                st = mr_fail(MR_EPROTO, "prefill rank %d routed expert %d to us (it lives on "
                             "member %d)", in[i].src, v.experts[j], v.experts[j] % P);
            pl->recv_exp[pl->recv_off[i] + j] = v.experts[j];
        }
    }
    if (st == MR_OK) {
        pl->recv_row = pl->recv_exp + pl->n_recv;
        for (int j = 0; j < pl->n_recv; j++) pl->recv_row[j] = j;
    }
    for (int i = 0; i < P; i++) tp_msg_free(&in[i]);
    free(in);
    return st;
}

/* The transfers of one exchange: `out` rows (at out_off) to each peer,
 * `in` rows (at in_off) from it. */
static int make_xfers(const prefill_state *p, float *out, const int *out_n, const int *out_off,
                      float *in, const int *in_n, const int *in_off, pf_ep_xfer *x)
{
    const size_t D = (size_t)p->role.model.cfg.hidden_size;
    int n = 0;
    for (int i = 0; i < p->n_prefill; i++) {
        if (i == p->my_index) continue;
        x[n++] = (pf_ep_xfer){i, true, out + (size_t)out_off[i] * D, out_n[i]};
        x[n++] = (pf_ep_xfer){i, false, in + (size_t)in_off[i] * D, in_n[i]};
    }
    return n;
}

static mr_status ep_layer(prefill_state *p, int layer, uint64_t seq, const float *h, int n_slots,
                          const int32_t *expert_ids, float *expert_out, double *t_compute)
{
    const mr_config *cfg = &p->role.model.cfg;
    const mr_kernels *k = p->role.kernels;
    const mr_weights *w = mr_engine_weights(p->engine);
    const size_t D = (size_t)cfg->hidden_size;
    ep_plan pl = {0};
    pf_ep_xfer *x = malloc(sizeof *x * 2 * (size_t)(p->n_prefill > 0 ? p->n_prefill : 1));
    mr_status st = x ? plan_sends(p, n_slots, expert_ids, &pl)
                     : mr_fail(MR_ENOMEM, "EP: out of memory");
    if (st == MR_OK) st = exchange_routes(p, layer, seq, n_slots, expert_ids, &pl);
    /* backend buffers: rows out | rows in | answers out | answers in */
    const size_t rows = 2 * (size_t)(pl.n_send + pl.n_recv) + 1;
    float *buf = st == MR_OK ? mr_kbuf_reserve(k, &p->ep_rows, sizeof(float) * rows * D, &st)
                             : NULL;
    int32_t *idx = st == MR_OK ? mr_kbuf_reserve(k, &p->ep_idx,
                                                 sizeof(int32_t) * (2 * (size_t)pl.n_send + 1), &st)
                               : NULL;
    if (st != MR_OK) goto done;
    float *send_rows = buf, *recv_rows = send_rows + (size_t)pl.n_send * D;
    float *reply_rows = recv_rows + (size_t)pl.n_recv * D;
    float *back_rows = reply_rows + (size_t)pl.n_recv * D;
    if (pl.n_send > 0) {
        k->copy(idx, pl.idx, sizeof(int32_t) * 2 * (size_t)pl.n_send, MR_COPY_H2D);
        k->gather_rows(h, MR_WT_F32, (int)D, idx, 0, pl.n_send, (int)D, send_rows);
    }
    int n = make_xfers(p, send_rows, pl.send_n, pl.send_off, recv_rows, pl.recv_n, pl.recv_off, x);
    st = pf_plane_exchange(p, MR_EP_PHASE_DISPATCH, layer, seq, x, n);
    if (st != MR_OK) goto done;

    const double tc = mr_now();
    st = mr_experts_run(cfg, w, k, &p->role.experts_ws, layer, pl.n_own, h, pl.own_tok,
                        pl.own_exp, expert_out, pl.own_slot);
    if (st == MR_OK)
        st = mr_experts_run(cfg, w, k, &p->role.experts_ws, layer, pl.n_recv, recv_rows,
                            pl.recv_row, pl.recv_exp, reply_rows, pl.recv_row);
    *t_compute += mr_now() - tc;
    if (st != MR_OK) goto done;

    n = make_xfers(p, reply_rows, pl.recv_n, pl.recv_off, back_rows, pl.send_n, pl.send_off, x);
    st = pf_plane_exchange(p, MR_EP_PHASE_COMBINE, layer, seq, x, n);
    if (st == MR_OK && pl.n_send > 0)
        k->scatter_rows(back_rows, pl.n_send, (int)D, idx + pl.n_send, 0, expert_out, MR_WT_F32,
                        (int)D);
done:
    plan_free(&pl);
    free(x);
    return st;
}

mr_status pf_ep_moe(void *ctx, int layer, const float *h, int n_tokens,
                    const int32_t *expert_ids, const float *weights, float *expert_out)
{
    prefill_state *p = ctx;
    (void)weights; /* applied by the engine's fixed combine */
    const mr_config *cfg = &p->role.model.cfg;
    if (p->n_prefill == 1)
        return mr_moe_run_local(cfg, mr_engine_weights(p->engine), p->role.kernels,
                                &p->role.experts_ws, layer, h, n_tokens, expert_ids, expert_out);
    if (p->ep_broken) return mr_fail(MR_EPEER, "expert parallelism lost a prefill rank");
    const double t0 = mr_now();
    double t_compute = 0;
    mr_status st = ep_layer(p, layer, p->iter + 1, h, n_tokens * cfg->num_experts_per_tok,
                            expert_ids, expert_out, &t_compute);
    p->ep_wait_s += mr_now() - t0 - t_compute;
    return st;
}
