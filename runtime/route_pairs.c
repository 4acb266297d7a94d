/* runtime/route_pairs.c — see route_pairs.h. */
#include "route_pairs.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/timer.h"
#include "kernels/kbuf.h"
#include "kernels/cuda/kernels_cuda.h"

_Static_assert(sizeof(((mr_route_pair_hello *)0)->nccl_id) == NP_ID_BYTES,
               "the hello carries one NCCL id");

struct mr_route_pair {
    int rank;            /* the other member's rank */
    int peer_member;     /* its member index in the NCCL pair (decode 0, expert 1) */
    np_plane *nccl;      /* NCCL pair, or NULL for a test pair */
    /* test pair: rows as MSG_PAIR_ROWS over the control transport */
    const mr_kernels *k;
    mr_kbuf stage;       /* host staging of rows sent from backend memory */
    void *recv_buf;      /* the posted receive (backend memory), NULL when none */
    size_t recv_bytes;
    tp_msg inbox;        /* rows that came before their receive was posted */
    bool has_inbox;
    bool broken;
    char why[256];
};

static mr_route_pair *pair_of(const mr_route_pairs *p, int rank)
{
    return p->pair && rank >= 0 && rank < p->n_ranks ? p->pair[rank] : NULL;
}

bool mr_route_pairs_has(const mr_route_pairs *p, int rank)
{
    return pair_of(p, rank) != NULL;
}

static void pair_free(mr_route_pair *q)
{
    if (!q) return;
    np_destroy(q->nccl);
    if (q->k) mr_kbuf_free(q->k, &q->stage);
    if (q->has_inbox) tp_msg_free(&q->inbox);
    free(q);
}

/* Forget the pair with `rank` (no message). */
static void remove_pair(mr_route_pairs *p, int rank)
{
    mr_route_pair *q = pair_of(p, rank);
    if (!q) return;
    pair_free(q);
    p->pair[rank] = NULL;
    p->n_pairs--;
}

void mr_route_pairs_drop(mr_route_pairs *p, int rank, const char *why)
{
    mr_route_pair *q = pair_of(p, rank);
    if (!q) return;
    np_abort(q->nccl, why);
    remove_pair(p, rank);
    MR_WARN("route pair with rank %d dropped: %s", rank, why);
}

void mr_route_pairs_free(mr_route_pairs *p)
{
    for (int i = 0; p->pair && i < p->n_ranks; i++) pair_free(p->pair[i]);
    free(p->pair);
    memset(p, 0, sizeof *p);
}

static mr_status ensure_table(mr_role *r, mr_route_pairs *p)
{
    if (p->pair) return MR_OK;
    p->n_ranks = tp_size(r->tp);
    p->pair = calloc((size_t)p->n_ranks, sizeof *p->pair);
    return p->pair ? MR_OK : mr_fail(MR_ENOMEM, "route pairs: out of memory");
}

/* A new pair with `rank` in the table (replacing any old one); the peer is
 * member peer_member of the NCCL pair. */
static mr_status add_pair(mr_role *r, mr_route_pairs *p, int rank, int peer_member,
                          mr_route_pair **out)
{
    MR_TRY(ensure_table(r, p));
    mr_route_pairs_drop(p, rank, "a new offer replaces it");
    mr_route_pair *q = calloc(1, sizeof *q);
    if (!q) return mr_fail(MR_ENOMEM, "route pairs: out of memory");
    q->rank = rank;
    q->peer_member = peer_member;
    q->k = r->kernels;
    p->pair[rank] = q;
    p->n_pairs++;
    *out = q;
    return MR_OK;
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

/* ---- test pairs: rows as MSG_PAIR_ROWS ------------------------------------------ */

static mr_status test_pair_fail(mr_route_pair *q, mr_status st)
{
    q->broken = true;
    snprintf(q->why, sizeof q->why, "%s", mr_last_error());
    return st;
}

/* Rows for the posted receive: check the size, copy to the backend. */
static mr_status test_pair_take(mr_route_pair *q, const tp_msg *m)
{
    if (m->len != q->recv_bytes)
        return test_pair_fail(q, mr_fail(MR_EPROTO, "rank %d sent %zu bytes of pair rows, the "
                                         "receive posted here is %zu", q->rank, m->len,
                                         q->recv_bytes));
    if (m->len) q->k->copy(q->recv_buf, m->data, m->len, MR_COPY_H2D);
    q->recv_buf = NULL;
    return MR_OK;
}

static mr_status test_pair_post(mr_role *r, mr_route_pair *q, const np_xfer *x, int n)
{
    if (q->broken) return mr_fail(MR_EPEER, "route pair with rank %d is down: %s", q->rank, q->why);
    if (q->recv_buf) return mr_fail(MR_EINVAL, "route pair with rank %d: a group is still pending",
                                    q->rank);
    for (int i = 0; i < n; i++) {
        if (!x[i].send) continue;
        const void *body = x[i].buf;
        mr_status st = MR_OK;
        if (!q->k->host_memory && x[i].bytes) {
            void *stage = mr_kbuf_reserve_host(q->k, &q->stage, x[i].bytes, &st);
            if (st != MR_OK) return st;
            q->k->copy(stage, x[i].buf, x[i].bytes, MR_COPY_D2H);
            body = stage;
        }
        st = tp_send(r->tp, q->rank, MSG_PAIR_ROWS, body, x[i].bytes);
        if (st != MR_OK) return test_pair_fail(q, mr_fail_prefix(st, "pair rows to rank %d: ", q->rank));
    }
    for (int i = 0; i < n; i++) {
        if (x[i].send) continue;
        q->recv_buf = x[i].buf ? x[i].buf : (void *)q; /* non-NULL marks it posted */
        q->recv_bytes = x[i].bytes;
        if (q->has_inbox) {
            q->has_inbox = false;
            mr_status st = test_pair_take(q, &q->inbox);
            tp_msg_free(&q->inbox);
            MR_TRY(st);
        }
        break; /* one receive per group: the schedule never posts more */
    }
    return MR_OK;
}

void mr_route_pairs_deliver(mr_role *r, mr_route_pairs *p, tp_msg *m)
{
    mr_route_pair *q = pair_of(p, m->src);
    if (!q || q->nccl || q->has_inbox) {
        mr_fail(MR_EPROTO, "pair rows from rank %d, which %s", m->src,
                !q || q->nccl ? "has no test pair here" : "already has rows waiting");
        mr_role_reject(r);
    } else if (q->recv_buf) {
        if (test_pair_take(q, m) != MR_OK) MR_WARN("%s", mr_last_error());
    } else {
        q->inbox = *m;
        q->has_inbox = true;
        memset(m, 0, sizeof *m); /* kept */
    }
    tp_msg_free(m);
}

/* Take test-pair rows off the transport while waiting (other messages are
 * kept for the role's loop). */
static void pump_transport(mr_role *r, mr_route_pairs *p)
{
    tp_msg m;
    for (int i = 0; i < 64 && tp_poll(r->tp, &m); i++) {
        if (m.type == MSG_PAIR_ROWS) mr_route_pairs_deliver(r, p, &m);
        else mr_msgq_push(&r->deferred, &m);
    }
}

/* ---- either kind ----------------------------------------------------------------- */

mr_status mr_route_pair_post(mr_role *r, mr_route_pairs *p, int rank, const np_xfer *x, int n)
{
    mr_route_pair *q = pair_of(p, rank);
    if (!q) return mr_fail(MR_EPEER, "no route pair with rank %d", rank);
    if (!q->nccl) return test_pair_post(r, q, x, n);
    np_xfer *peer = malloc(sizeof *peer * (size_t)(n > 0 ? n : 1));
    if (!peer) return mr_fail(MR_ENOMEM, "route pairs: out of memory");
    for (int i = 0; i < n; i++) {
        peer[i] = x[i];
        peer[i].peer = q->peer_member;
    }
    mr_status st = np_post_ordered(q->nccl, peer, n); /* sends, then receives: as the expert */
    free(peer);
    return st;
}

/* Ready and nothing pending? Errors come with their message set. */
static mr_status pair_idle(mr_route_pair *q, bool *idle)
{
    *idle = false;
    if (!q->nccl) {
        if (q->broken)
            return mr_fail(MR_EPEER, "route pair with rank %d is down: %s", q->rank, q->why);
        *idle = q->recv_buf == NULL;
        return MR_OK;
    }
    bool ready = false;
    MR_TRY(np_ready(q->nccl, &ready));
    return ready ? np_test(q->nccl, idle) : MR_OK;
}

mr_status mr_route_pair_idle(mr_route_pairs *p, int rank, bool *idle)
{
    mr_route_pair *q = pair_of(p, rank);
    if (!q) return mr_fail(MR_EPEER, "no route pair with rank %d", rank);
    return pair_idle(q, idle);
}

mr_status mr_route_pairs_wait(mr_role *r, mr_route_pairs *p, const int *ranks, int n,
                              double timeout_s)
{
    const double deadline = mr_now() + timeout_s;
    char why[256];
    for (;;) {
        bool all_done = true, pump = false;
        for (int i = 0; i < n; i++) {
            const int rank = ranks[i];
            mr_route_pair *q = pair_of(p, rank);
            if (!q) return mr_fail(MR_EPEER, "the route pair with rank %d is down", rank);
            bool done = false;
            mr_status st = pair_idle(q, &done);
            if (st != MR_OK) {
                snprintf(why, sizeof why, "%s", mr_last_error());
                mr_route_pairs_drop(p, rank, why);
                return mr_fail(st, "route pair with rank %d: %s", rank, why);
            }
            if (done) continue;
            all_done = false;
            pump |= q->nccl == NULL;
            const char *lost = !tp_peer_alive(r->tp, rank) ? "the rank died"
                               : mr_now() > deadline   ? "no completion within its deadline"
                                                       : NULL;
            if (lost) {
                snprintf(why, sizeof why, "%s (%.1f s)", lost, timeout_s);
                mr_route_pairs_drop(p, rank, why);
                return mr_fail(MR_EPEER, "route pair with rank %d: %s", rank, why);
            }
        }
        if (all_done) return MR_OK;
        if (pump) {
            pump_transport(r, p);
            tp_wait(r->tp, 0.001);
        } else {
            mr_role_service(r); /* heartbeats while the GPUs move rows */
            struct timespec ts = {0, 20000};
            nanosleep(&ts, NULL);
        }
    }
}

/* ---- pairing ----------------------------------------------------------------------- */

mr_status mr_route_pairs_offer(mr_role *r, mr_route_pairs *p)
{
    const bool test = r->opts.route_test_pairs;
    int device = -1;
    mr_route_pair_hello hello;
    memset(&hello, 0, sizeof hello);
    hello.test_pairs = test;
    if (test) snprintf(hello.identity, sizeof hello.identity, "test pairs");
    else MR_TRY(local_gpu(r, &device, hello.identity, sizeof hello.identity));
    MR_TRY(ensure_table(r, p));
    int n_expert = 0;
    int *experts = mr_role_ranks(r, TP_ROLE_EXPERT, &n_expert);
    np_id *ids = calloc((size_t)(n_expert > 0 ? n_expert : 1), sizeof *ids);
    bool *answered = calloc((size_t)(n_expert > 0 ? n_expert : 1), sizeof *answered);
    mr_status st = experts && ids && answered ? MR_OK : mr_fail(MR_ENOMEM, "route pairs: out of memory");
    for (int i = 0; i < n_expert && st == MR_OK; i++) {
        if (!test) st = np_make_id(&ids[i]);
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
                MR_INFO("--route-plane: waiting for %d expert rank(s) to answer", left);
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
            mr_route_pair *q = NULL;
            if (!ack.accepted) {
                MR_INFO("route pair with expert rank %d: over UCX (%s)", m.src, ack.reason);
            } else if (add_pair(r, p, m.src, 1, &q) != MR_OK ||
                       (!test && np_create_start(&ids[i], 2, 0, device, &q->nccl) != MR_OK)) {
                /* the expert rank's half never completes; it is never used
                 * either: this rank sends that rank MSG_DISPATCH (rows over UCX) */
                MR_WARN("route pair with expert rank %d: over UCX (%s)", m.src, mr_last_error());
                remove_pair(p, m.src);
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
        if (!mr_route_pairs_has(p, experts[i])) continue;
        if (mr_route_pairs_wait(r, p, &experts[i], 1, 2.0 * r->opts.heartbeat_timeout_s) != MR_OK)
            MR_WARN("route pair with expert rank %d: over UCX (%s)", experts[i], mr_last_error());
        else if (test)
            MR_INFO("route pair with expert rank %d: test pair (rows as UCX messages)", experts[i]);
        else
            MR_INFO("route pair with expert rank %d: over NCCL (GPU %d)", experts[i], device);
    }
    if (st == MR_OK && p->n_pairs == 0 && n_expert > 0)
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
    mr_route_pair *q = NULL;
    mr_status st = MR_OK;
    if (hello.test_pairs) {
        if (!r->opts.route_test_pairs)
            st = mr_fail(MR_EINVAL, "rank %d offers a test pair, this rank runs without "
                         "--route-plane test-pairs", m->src);
        if (st == MR_OK) st = add_pair(r, p, m->src, 0, &q);
    } else {
        st = local_gpu(r, &device, mine, sizeof mine);
        if (st == MR_OK && strcmp(mine, hello.identity) == 0)
            st = mr_fail(MR_EUNSUPPORTED, "rank %d shares GPU %s with this expert rank (NCCL "
                         "needs one GPU per member)", m->src, mine);
        if (st == MR_OK) st = add_pair(r, p, m->src, 0, &q);
        if (st == MR_OK) {
            np_id id;
            memcpy(id.bytes, hello.nccl_id, sizeof id.bytes);
            st = np_create_start(&id, 2, 1, device, &q->nccl);
            if (st != MR_OK) remove_pair(p, m->src); /* keeps the message */
        }
    }
    if (st == MR_OK) {
        ack.accepted = 1;
        MR_INFO("route pair with decode rank %d: %s", m->src,
                hello.test_pairs ? "test pair (rows as UCX messages)" : "joining over NCCL");
    } else {
        snprintf(ack.reason, sizeof ack.reason, "%s", mr_last_error());
    }
    if (tp_send(r->tp, m->src, MSG_ROUTE_NCCL_ACK, &ack, sizeof ack) != MR_OK)
        MR_WARN("route pair answer to rank %d lost: %s", m->src, mr_last_error());
}
