/* transport/tp_shutdown.c — tp_finalize: FIN/FINACK with live peers (capped),
 * then force-close everything and finalize MPI. Safe after peer deaths:
 * nothing here waits without a deadline, and flush-closing endpoints (which
 * can hang on dead peers, shared/TOOLCHAIN.md) is never used. */
#include "transport/tp_internal.h"

#include <stdlib.h>
#include <unistd.h>

#define TP_CLOSE_WAIT_S 1.0

/* Done when every peer we sent FIN to acked it or died, every FIN we got is
 * answered, and no send to a peer that is not dead is still in flight. */
static bool tp_fin_done(tp_ctx *ctx, void *arg)
{
    (void)arg;
    for (int r = 0; r < ctx->size; r++) {
        const tp_link_state *l = &ctx->links[r];
        if (r == ctx->rank || l->phase == TP_LINK_DEAD) continue;
        if (l->fin_sent && !l->finack_recvd && l->ep) return false;
        if (l->fin_recvd && !l->finack_sent && l->ep) return false;
        if (l->reqs && l->ep) return false;
    }
    return true;
}

static void tp_close_all(tp_ctx *ctx)
{
    void **pending = calloc((size_t)ctx->size, sizeof *pending);
    int n_pending = 0;
    for (int r = 0; r < ctx->size; r++) {
        tp_link_state *l = &ctx->links[r];
        tp_abandon_requests(ctx, r);
        if (!l->ep) continue;
        ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                     .flags = UCP_EP_CLOSE_FLAG_FORCE};
        ucs_status_ptr_t p = ucp_ep_close_nbx(l->ep, &param);
        l->ep = NULL;
        if (UCS_PTR_IS_PTR(p)) {
            if (pending) pending[n_pending++] = p;
            else ucp_request_free(p);
        }
    }
    /* let the close requests finish briefly; never wait on a dead peer */
    double deadline = mr_now() + TP_CLOSE_WAIT_S;
    for (int i = 0; i < n_pending; i++) {
        while (ucp_request_check_status(pending[i]) == UCS_INPROGRESS && mr_now() < deadline)
            ucp_worker_progress(ctx->worker);
        ucp_request_free(pending[i]);
    }
    free(pending);
}

void tp_teardown(tp_ctx *ctx)
{
    if (!ctx) return;
    if (ctx->worker) {
        if (ctx->links) {
            tp_rma_release_all(ctx); /* keys before their endpoints */
            tp_close_all(ctx);
            tp_rx_free_all(ctx); /* after the last progress call */
        }
        ucp_worker_destroy(ctx->worker);
    } else if (ctx->ucp) {
        tp_rma_release_all(ctx);
    }
    tp_bufcache_free_all(ctx);
    while (ctx->orphans) { /* nothing can touch them now */
        tp_orphan *o = ctx->orphans;
        ctx->orphans = o->next;
        free(o->ptr);
        free(o);
    }
    if (ctx->ucp) ucp_cleanup(ctx->ucp);
    if (ctx->links)
        for (int r = 0; r < ctx->size; r++) tp_unwatch_process(ctx, r);
    if (ctx->pidfd_epfd >= 0) close(ctx->pidfd_epfd);
    if (ctx->epfd >= 0) close(ctx->epfd);
    if (ctx->mpi_owned) {
        int finalized = 0;
        if (MPI_Finalized(&finalized) == MPI_SUCCESS && !finalized) {
            int rc = MPI_Finalize();
            if (rc != MPI_SUCCESS) MR_WARN("tp: MPI_Finalize returned %d", rc);
        }
    }
    free(ctx->peers);
    free(ctx->links);
    free(ctx->scan_mark);
    free(ctx);
}

mr_status tp_finalize(tp_ctx *ctx)
{
    if (!ctx) return MR_OK;
    ctx->finalizing = true;
    for (int r = 0; r < ctx->size; r++) {
        tp_link_state *l = &ctx->links[r];
        if (r == ctx->rank || l->phase != TP_LINK_ALIVE || !l->ep) continue;
        tp_txreq *req = tp_txreq_new(ctx, r, TP_REQ_SEND, 0);
        if (req && tp_am_post(ctx, r, TP_MSG_FIN, req) == MR_OK) l->fin_sent = true;
    }
    mr_status st = tp_wait_until(ctx, tp_fin_done, NULL, -1, mr_now() + TP_FIN_WAIT_S);
    if (st != MR_OK) {
        for (int r = 0; r < ctx->size; r++) {
            const tp_link_state *l = &ctx->links[r];
            if (r == ctx->rank || l->phase == TP_LINK_DEAD || !l->ep) continue;
            if ((l->fin_sent && !l->finack_recvd) || l->reqs)
                MR_WARN("tp: rank %d: no FINACK / unfinished sends to rank %d after %.0f s; closing anyway",
                        ctx->rank, r, TP_FIN_WAIT_S);
        }
    }
    tp_teardown(ctx);
    return MR_OK;
}
