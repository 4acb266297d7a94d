/* runtime/route_pairs.c — see route_pairs.h. */
#include "route_pairs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/timer.h"
#include "kernels/cuda/kernels_cuda.h"

_Static_assert(sizeof(((mr_route_pair_hello *)0)->nccl_id) == NP_ID_BYTES,
               "the hello carries one NCCL id");

np_plane *mr_route_pair(const mr_route_pairs *p, int rank)
{
    return p->plane && rank >= 0 && rank < p->n_ranks ? p->plane[rank] : NULL;
}

void mr_route_pairs_drop(mr_route_pairs *p, int rank, const char *why)
{
    np_plane *pl = mr_route_pair(p, rank);
    if (!pl) return;
    np_abort(pl, why);
    np_destroy(pl);
    p->plane[rank] = NULL;
    p->n_nccl--;
    MR_WARN("route pair with rank %d dropped: %s", rank, why);
}

void mr_route_pairs_free(mr_route_pairs *p)
{
    for (int i = 0; p->plane && i < p->n_ranks; i++) np_destroy(p->plane[i]);
    free(p->plane);
    memset(p, 0, sizeof *p);
}

static mr_status ensure_table(mr_role *r, mr_route_pairs *p)
{
    if (p->plane) return MR_OK;
    p->n_ranks = tp_size(r->tp);
    p->plane = calloc((size_t)p->n_ranks, sizeof *p->plane);
    return p->plane ? MR_OK : mr_fail(MR_ENOMEM, "route pairs: out of memory");
}

/* This rank's GPU, when it can be a pair member at all; else why not. */
static mr_status local_gpu(const mr_role *r, int *device, char *identity, size_t cap)
{
    if (strcmp(r->kernels->name, "cuda") != 0)
        return mr_fail(MR_EINVAL, "--route-plane nccl needs --backend cuda (rank %d runs %s)",
                       r->rank, r->kernels->name);
    if (!np_available())
        return mr_fail(MR_EUNSUPPORTED, "--route-plane nccl: this moerun was built without NCCL");
    return mr_cuda_backend_device(device, identity, cap);
}

mr_status mr_route_pairs_wait(mr_role *r, mr_route_pairs *p, const int *ranks, int n,
                              double timeout_s)
{
    const double deadline = mr_now() + timeout_s;
    char why[256];
    for (;;) {
        bool all_done = true;
        for (int i = 0; i < n; i++) {
            const int rank = ranks[i];
            np_plane *pl = mr_route_pair(p, rank);
            if (!pl) return mr_fail(MR_EPEER, "the NCCL pair with rank %d is down", rank);
            bool ready = false, done = false;
            mr_status st = np_ready(pl, &ready);
            if (st == MR_OK && ready) st = np_test(pl, &done);
            if (st != MR_OK) {
                snprintf(why, sizeof why, "%s", mr_last_error());
                mr_route_pairs_drop(p, rank, why);
                return mr_fail(st, "NCCL pair with rank %d: %s", rank, why);
            }
            if (done) continue;
            all_done = false;
            const char *lost = !tp_peer_alive(r->tp, rank) ? "the rank died"
                               : mr_now() > deadline   ? "no completion within its deadline"
                                                       : NULL;
            if (lost) {
                snprintf(why, sizeof why, "%s (%.1f s)", lost, timeout_s);
                mr_route_pairs_drop(p, rank, why);
                return mr_fail(MR_EPEER, "NCCL pair with rank %d: %s", rank, why);
            }
        }
        if (all_done) return MR_OK;
        mr_role_service(r); /* heartbeats while the GPUs move rows */
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}

mr_status mr_route_pairs_offer(mr_role *r, mr_route_pairs *p)
{
    int device = -1;
    mr_route_pair_hello hello;
    memset(&hello, 0, sizeof hello);
    MR_TRY(local_gpu(r, &device, hello.identity, sizeof hello.identity));
    MR_TRY(ensure_table(r, p));
    int n_expert = 0;
    int *experts = mr_role_ranks(r, TP_ROLE_EXPERT, &n_expert);
    np_id *ids = calloc((size_t)(n_expert > 0 ? n_expert : 1), sizeof *ids);
    bool *answered = calloc((size_t)(n_expert > 0 ? n_expert : 1), sizeof *answered);
    mr_status st = experts && ids && answered ? MR_OK : mr_fail(MR_ENOMEM, "route pairs: out of memory");
    for (int i = 0; i < n_expert && st == MR_OK; i++) {
        st = np_make_id(&ids[i]);
        memcpy(hello.nccl_id, ids[i].bytes, sizeof hello.nccl_id);
        if (st == MR_OK) st = tp_send(r->tp, experts[i], MSG_ROUTE_NCCL_ID, &hello, sizeof hello);
    }
    /* answers come once each expert rank finished loading: no deadline but
     * its death (a slow load is not a failure) */
    int left = n_expert;
    double next_note = mr_now() + 10.0;
    while (st == MR_OK && left > 0) {
        tp_msg m;
        if (!tp_poll(r->tp, &m)) {
            if (mr_now() > next_note) {
                MR_INFO("--route-plane nccl: waiting for %d expert rank(s) to answer", left);
                next_note = mr_now() + 10.0;
            }
            tp_wait(r->tp, 0.05);
            continue;
        }
        int i = 0;
        while (i < n_expert && experts[i] != m.src) i++;
        const bool awaited = i < n_expert && !answered[i];
        if (m.type == MSG_ROUTE_NCCL_ACK && awaited) {
            mr_route_pair_ack ack;
            memset(&ack, 0, sizeof ack);
            memcpy(&ack, m.data, m.len < sizeof ack ? m.len : sizeof ack);
            ack.reason[sizeof ack.reason - 1] = 0;
            answered[i] = true;
            left--;
            if (!ack.accepted) {
                MR_INFO("route pair with expert rank %d: over UCX (%s)", m.src, ack.reason);
            } else if (np_create_start(&ids[i], 2, 0, device, &p->plane[m.src]) == MR_OK) {
                p->n_nccl++;
            } else {
                /* the expert rank's half never completes; it is never used
                 * either: this rank sends that rank MSG_DISPATCH (rows over UCX) */
                MR_WARN("route pair with expert rank %d: over UCX (%s)", m.src, mr_last_error());
            }
            tp_msg_free(&m);
        } else if (m.type == TP_MSG_PEER_DEAD && awaited) {
            answered[i] = true;
            left--;
            mr_msgq_push(&r->deferred, &m); /* the role's loop handles the death too */
        } else if (m.type == MSG_ROUTE_NCCL_ACK) {
            mr_fail(MR_EPROTO, "unexpected route pair answer from rank %d", m.src);
            mr_role_reject(r);
            tp_msg_free(&m);
        } else {
            mr_msgq_push(&r->deferred, &m);
        }
    }
    /* every accepted pair must finish joining; one that does not stays on UCX */
    for (int i = 0; i < n_expert && st == MR_OK; i++) {
        if (!mr_route_pair(p, experts[i])) continue;
        if (mr_route_pairs_wait(r, p, &experts[i], 1, 2.0 * r->opts.heartbeat_timeout_s) != MR_OK)
            MR_WARN("route pair with expert rank %d: over UCX (%s)", experts[i], mr_last_error());
        else
            MR_INFO("route pair with expert rank %d: over NCCL (GPU %d)", experts[i], device);
    }
    if (st == MR_OK && p->n_nccl == 0 && n_expert > 0)
        MR_WARN("--route-plane nccl: no expert rank is reachable over NCCL (pairs on one GPU, or "
                "not on cuda); every routed row goes over UCX through host memory");
    free(experts);
    free(ids);
    free(answered);
    return st;
}

void mr_route_pairs_answer(mr_role *r, mr_route_pairs *p, const tp_msg *m)
{
    mr_route_pair_hello hello;
    if (m->len != sizeof hello) {
        mr_fail(MR_EPROTO, "route pair offer from rank %d: %zu bytes, expected %zu", m->src, m->len,
                sizeof hello);
        mr_role_reject(r);
        return;
    }
    memcpy(&hello, m->data, sizeof hello);
    hello.identity[sizeof hello.identity - 1] = 0;
    mr_route_pair_ack ack;
    memset(&ack, 0, sizeof ack);
    int device = -1;
    char mine[MR_ROUTE_IDENTITY_MAX];
    mr_status st = ensure_table(r, p);
    if (st == MR_OK) st = local_gpu(r, &device, mine, sizeof mine);
    if (st == MR_OK && strcmp(mine, hello.identity) == 0)
        st = mr_fail(MR_EUNSUPPORTED, "rank %d shares GPU %s with this expert rank (NCCL needs "
                     "one GPU per member)", m->src, mine);
    if (st == MR_OK) {
        mr_route_pairs_drop(p, m->src, "a new offer replaces it");
        np_id id;
        memcpy(id.bytes, hello.nccl_id, sizeof id.bytes);
        st = np_create_start(&id, 2, 1, device, &p->plane[m->src]);
    }
    if (st == MR_OK) {
        p->n_nccl++;
        ack.accepted = 1;
        MR_INFO("route pair with decode rank %d: joining over NCCL (GPU %d)", m->src, device);
    } else {
        snprintf(ack.reason, sizeof ack.reason, "%s", mr_last_error());
    }
    if (tp_send(r->tp, m->src, MSG_ROUTE_NCCL_ACK, &ack, sizeof ack) != MR_OK)
        MR_WARN("route pair answer to rank %d lost: %s", m->src, mr_last_error());
}
