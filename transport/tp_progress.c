/* transport/tp_progress.c — progressing the worker, event-fd sleeping, and
 * the one wait helper every blocking tp call goes through (bounded, never
 * spins without progressing, acts on peer deaths). */
#include "transport/tp_internal.h"

#include <errno.h>
#include <time.h>
#include <string.h>
#include <sys/epoll.h>

#define TP_PROGRESS_BURST 4096 /* ucp_worker_progress calls per drain, at most */
#define TP_SPIN_ROUNDS 64      /* idle progress rounds before sleeping in a wait */
#define TP_BUSY_NAP_MIN_NS 50000   /* first nap when the worker cannot be armed but is idle */
#define TP_BUSY_NAP_MAX_NS 1000000 /* longest nap: bounds the added latency */
#define TP_WAIT_SLICE_S 0.01   /* longest sleep inside tp_wait_until */

bool tp_progress(tp_ctx *ctx)
{
    bool moved = false;
    for (int i = 0; i < TP_PROGRESS_BURST && ucp_worker_progress(ctx->worker); i++) moved = true;
    tp_health_step(ctx);
    return moved;
}

void tp_service(tp_ctx *ctx)
{
    tp_progress(ctx);
}

/* Sends, puts or rendezvous receives still under way. UCX 1.13 does not
 * signal the worker's event fd for every protocol step of a rendezvous on
 * shared memory, so while anything is in flight a sleep is kept short. */
static bool ops_in_flight(const tp_ctx *ctx)
{
    for (const tp_rx *rx = ctx->rx_head; rx; rx = rx->next)
        if (!rx->ready && !rx->failed) return true;
    for (int r = 0; r < ctx->size; r++)
        if (ctx->links[r].reqs && tp_link_alive(ctx, r)) return true;
    return false;
}

mr_status tp_sleep_until(tp_ctx *ctx, double deadline)
{
    double now = mr_now();
    double wake = deadline < ctx->next_heartbeat ? deadline : ctx->next_heartbeat;
    if (wake > now + TP_BUSY_NAP_MAX_NS * 1e-9 && ops_in_flight(ctx))
        wake = now + TP_BUSY_NAP_MAX_NS * 1e-9;
    if (wake <= now) return MR_OK;
    ucs_status_t s = ucp_worker_arm(ctx->worker);
    if (s == UCS_ERR_BUSY) {
        /* UCX 1.13 keeps answering BUSY while an operation is in flight (e.g.
         * a rendezvous or a keepalive whose peer has not answered yet) even
         * when progress finds nothing to do: measured ~100k BUSY per second
         * in a decode rank waiting for an expert rank. Spinning on it steals
         * the core the peer needs, so back off: naps from 50 us doubling to
         * 1 ms while nothing moves, reset as soon as something does. */
        if (ucp_worker_progress(ctx->worker)) {
            ctx->busy_nap_ns = 0;
            return MR_OK;
        }
        long nap_ns = ctx->busy_nap_ns ? ctx->busy_nap_ns : TP_BUSY_NAP_MIN_NS;
        long left_ns = (long)((wake - now) * 1e9);
        struct timespec nap = {0, nap_ns < left_ns ? nap_ns : left_ns};
        nanosleep(&nap, NULL);
        ctx->busy_nap_ns = nap_ns * 2 < TP_BUSY_NAP_MAX_NS ? nap_ns * 2 : TP_BUSY_NAP_MAX_NS;
        return MR_OK;
    }
    ctx->busy_nap_ns = 0;
    if (s != UCS_OK) return tp_ucs_fail(s, "ucp_worker_arm", __FILE__, __LINE__);
    double ms = (wake - now) * 1000.0 + 1.0;
    int timeout_ms = ms > 3600e3 ? 3600 * 1000 : (int)ms;
    struct epoll_event evs[2];
    int n = epoll_wait(ctx->epfd, evs, 2, timeout_ms);
    if (n < 0 && errno != EINTR)
        return mr_fail(MR_EIO, "tp: epoll_wait on the UCX worker fd failed: %s", strerror(errno));
    for (int i = 0; i < n; i++)
        if (evs[i].data.u64 == TP_EPOLL_PIDFDS) tp_check_processes(ctx); /* a peer process exited */
    return MR_OK;
}

mr_status tp_wait(tp_ctx *ctx, double timeout_s)
{
    double deadline = mr_now() + (timeout_s > 0 ? timeout_s : 0);
    for (;;) {
        tp_progress(ctx);
        /* re-check the queue after progress and before arming, or a message
         * that arrived during progress would sleep until the next event */
        if (tp_rx_has_deliverable(ctx)) return MR_OK;
        if (mr_now() >= deadline) return MR_OK;
        MR_TRY(tp_sleep_until(ctx, deadline));
    }
}

mr_status tp_wait_until(tp_ctx *ctx, tp_done_fn done, void *arg, int peer, double deadline)
{
    int idle = 0;
    for (;;) {
        bool moved = tp_progress(ctx);
        if (done(ctx, arg)) return MR_OK;
        if (peer >= 0 && !tp_link_alive(ctx, peer))
            return mr_fail(MR_EPEER, "tp: rank %d is %s", peer,
                           ctx->links[peer].phase == TP_LINK_DEAD ? "dead" : "gone (FIN)");
        double now = mr_now();
        if (now >= deadline) return mr_fail(MR_ETIMEDOUT, "tp: deadline passed");
        if (moved) {
            idle = 0;
            continue;
        }
        if (++idle < TP_SPIN_ROUNDS) continue;
        double slice = now + TP_WAIT_SLICE_S;
        MR_TRY(tp_sleep_until(ctx, slice < deadline ? slice : deadline));
    }
}
