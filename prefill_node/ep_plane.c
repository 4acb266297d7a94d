/* prefill_node/ep_plane.c — the UCX and NCCL data planes of wide EP.
 * Contract in ep_plane.h. */
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "ep_plane.h"
#include "kernels/backend.h"
#include "kernels/cuda/kernels_cuda.h"
#include "prefill_internal.h"

/* ---- UCX: one MSG_EP_ROWS message per non-empty send ---------------------------- */

static mr_status ucx_send(prefill_state *p, int phase, int layer, uint64_t seq,
                          const pf_ep_xfer *x)
{
    const mr_kernels *k = p->role.kernels;
    const int D = p->role.model.cfg.hidden_size;
    const size_t bytes = sizeof(float) * (size_t)x->n_rows * (size_t)D;
    mr_bulk_hdr hdr;
    mr_bulk_init(&hdr, MSG_EP_ROWS, layer, x->n_rows, D, seq, NULL, NULL, NULL);
    hdr.reserved = (uint16_t)phase;
    const void *body = x->rows;
    if (!k->host_memory) { /* stage: tp_send2 copies, so one staging buffer serves every send */
        mr_status st = MR_OK;
        void *stage = mr_kbuf_reserve_host(k, &p->ep_stage, bytes ? bytes : 1, &st);
        if (st != MR_OK) return st;
        k->copy(stage, x->rows, bytes, MR_COPY_D2H);
        body = stage;
    }
    const int rank = p->prefill_ranks[x->member];
    mr_status st = tp_send2(p->role.tp, rank, MSG_EP_ROWS, &hdr, sizeof hdr, body, bytes);
    return st == MR_OK ? MR_OK : mr_fail_prefix(st, "EP rows to prefill rank %d: ", rank);
}

static mr_status ucx_recv(prefill_state *p, int phase, int layer, uint64_t seq,
                          const pf_ep_xfer *x)
{
    const mr_kernels *k = p->role.kernels;
    const mr_config *cfg = &p->role.model.cfg;
    const int D = cfg->hidden_size, rank = p->prefill_ranks[x->member];
    tp_msg m;
    MR_TRY(pf_ep_await(p, MSG_EP_ROWS, rank, seq, layer, phase, &m));
    mr_bulk_view v;
    mr_status st = mr_bulk_view_of(m.data, m.len, MSG_EP_ROWS, D, cfg->num_hidden_layers,
                                   cfg->n_routed_experts, rank, &v);
    if (st == MR_OK && v.hdr.n_rows != x->n_rows)
        st = mr_fail(MR_EPROTO, "prefill rank %d sent %d rows for layer %d, its route said %d",
                     rank, v.hdr.n_rows, layer, x->n_rows);
    if (st == MR_OK)
        k->copy(x->rows, v.rows, sizeof(float) * (size_t)x->n_rows * (size_t)D, MR_COPY_H2D);
    tp_msg_free(&m);
    return st;
}

static mr_status ucx_exchange(prefill_state *p, int phase, int layer, uint64_t seq,
                              const pf_ep_xfer *x, int n)
{
    for (int i = 0; i < n; i++)
        if (x[i].send && x[i].n_rows > 0) MR_TRY(ucx_send(p, phase, layer, seq, &x[i]));
    for (int i = 0; i < n; i++)
        if (!x[i].send && x[i].n_rows > 0) MR_TRY(ucx_recv(p, phase, layer, seq, &x[i]));
    return MR_OK;
}

/* ---- NCCL: one group of ncclSend/ncclRecv per exchange -------------------------- */

static mr_status nccl_exchange(prefill_state *p, const pf_ep_xfer *x, int n)
{
    const size_t row_bytes = sizeof(float) * (size_t)p->role.model.cfg.hidden_size;
    np_xfer *nx = malloc(sizeof *nx * (size_t)(n > 0 ? n : 1));
    if (!nx) return mr_fail(MR_ENOMEM, "EP NCCL exchange: out of memory");
    for (int i = 0; i < n; i++)
        nx[i] = (np_xfer){.peer = x[i].member, .send = x[i].send, .buf = x[i].rows,
                          .bytes = row_bytes * (size_t)x[i].n_rows};
    /* the rows were written by the backend's stream; NCCL runs on its own */
    mr_status st = p->role.kernels->check();
    if (st == MR_OK) st = np_exchange(p->nccl, nx, n, 2.0 * p->role.opts.heartbeat_timeout_s);
    free(nx);
    if (st != MR_OK) p->ep_broken = true;
    return st;
}

/* ---- open / exchange / close ----------------------------------------------------- */

/* Member 0 makes the id and sends it; the others wait for it (other
 * messages are deferred to the main loop). */
static mr_status share_nccl_id(prefill_state *p, np_id *id)
{
    if (p->my_index == 0) {
        MR_TRY(np_make_id(id));
        for (int i = 1; i < p->n_prefill; i++)
            MR_TRY(tp_send(p->role.tp, p->prefill_ranks[i], MSG_EP_NCCL_ID, id->bytes,
                           sizeof id->bytes));
        return MR_OK;
    }
    const int from = p->prefill_ranks[0];
    const double deadline = mr_now() + 2.0 * p->role.opts.heartbeat_timeout_s;
    for (;;) {
        tp_msg m;
        if (!tp_poll(p->role.tp, &m)) {
            if (mr_now() > deadline)
                return mr_fail(MR_ETIMEDOUT, "no NCCL id from prefill rank %d", from);
            tp_wait(p->role.tp, 0.05);
            continue;
        }
        if (m.type == MSG_EP_NCCL_ID && m.src == from && m.len == sizeof id->bytes) {
            memcpy(id->bytes, m.data, sizeof id->bytes);
            tp_msg_free(&m);
            return MR_OK;
        }
        if (m.type == MSG_EP_NCCL_ID) {
            mr_role_reject(&p->role);
            tp_msg_free(&m);
            continue;
        }
        if (m.type == TP_MSG_PEER_DEAD && m.src == from) {
            tp_msg_free(&m);
            return mr_fail(MR_EPEER, "prefill rank %d died before sending the NCCL id", from);
        }
        mr_msgq_push(&p->role.deferred, &m);
    }
}

mr_status pf_plane_open(prefill_state *p)
{
    if (!p->role.opts.ep_nccl || p->n_prefill < 2) return MR_OK;
    if (strcmp(p->role.kernels->name, "cuda") != 0)
        return mr_fail(MR_EINVAL, "--ep-plane nccl needs --backend cuda (this rank runs %s)",
                       p->role.kernels->name);
    if (!np_available())
        return mr_fail(MR_EUNSUPPORTED, "--ep-plane nccl: this moerun was built without NCCL");
    const int n_dev = mr_cuda_device_count();
    if (n_dev <= 0) return mr_fail(MR_EUNSUPPORTED, "--ep-plane nccl: no usable GPU");
    const int device = mr_backend_local_rank() % n_dev;
    np_id id;
    MR_TRY(share_nccl_id(p, &id));
    /* heartbeats while the members join (one still loading can take longer
     * than heartbeat_timeout_s / 2) and while every exchange waits */
    mr_status st = np_create(&id, p->n_prefill, p->my_index, device,
                             2.0 * p->role.opts.heartbeat_timeout_s, mr_role_service, &p->role,
                             &p->nccl);
    if (st != MR_OK)
        return mr_fail_prefix(st, "--ep-plane nccl (prefill ranks need one GPU each; "
                                  "--ep-plane ucx works with shared GPUs): ");
    MR_INFO("wide EP rows over NCCL: member %d of %d on GPU %d", p->my_index, p->n_prefill,
            device);
    return MR_OK;
}

mr_status pf_plane_exchange(prefill_state *p, int phase, int layer, uint64_t seq,
                            const pf_ep_xfer *xfers, int n)
{
    if (p->nccl) return nccl_exchange(p, xfers, n);
    return ucx_exchange(p, phase, layer, seq, xfers, n);
}

void pf_plane_close(prefill_state *p)
{
    np_destroy(p->nccl);
    p->nccl = NULL;
    mr_kbuf_free(p->role.kernels, &p->ep_stage);
}
