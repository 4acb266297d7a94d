/* transport/tp_health.c — heartbeats, failure detection and handling.
 *
 * The UCX error callback only records the failure (tp_ep_error_cb); the main
 * loop (tp_health_step, inside every progress call) acts on it: FINs are
 * answered first (a peer that said FIN and then disconnects left cleanly),
 * then UCX errors and heartbeat silence declare peers dead. A stopped or hung
 * peer is invisible to UCX (shared/TOOLCHAIN.md), hence the heartbeat; on the
 * same host the suspect is fenced with SIGKILL so it cannot come back. */
#include "transport/tp_internal.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#define TP_PROC_CHECK_S 0.01 /* pidfd poll interval while busy (sleeping wakes at once) */

void tp_ep_error_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    (void)ep;
    tp_link_state *l = arg;
    l->ep_error = true;
    l->ep_status = status;
    l->ctx->pending_events = true;
}

/* State (field 3) and start time (field 22, clock ticks since boot) of a
 * process from /proc/PID/stat; false if there is no such process. */
static bool tp_proc_stat(int pid, char *state, uint64_t *starttime)
{
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    const char *p = strrchr(buf, ')'); /* the command name may contain spaces */
    unsigned long long start = 0;
    char st = '?';
    /* after ")": state(3) ... starttime(22) is the 20th field */
    if (!p || sscanf(p + 1, " %c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu",
                     &st, &start) != 2)
        return false;
    *state = st;
    *starttime = start;
    return true;
}

uint64_t tp_proc_starttime(int pid)
{
    char state;
    uint64_t start;
    return tp_proc_stat(pid, &state, &start) ? start : 0;
}

static bool tp_same_host(const tp_ctx *ctx, int rank)
{
    return strcmp(ctx->peers[rank].host, ctx->peers[ctx->rank].host) == 0;
}

bool tp_peer_process_gone(const tp_ctx *ctx, int rank)
{
    const tp_peer *p = &ctx->peers[rank];
    if (!tp_same_host(ctx, rank) || p->pid <= 0 || ctx->links[rank].starttime == 0) return false;
    char state;
    uint64_t start;
    if (!tp_proc_stat(p->pid, &state, &start)) return true;
    return start != ctx->links[rank].starttime || state == 'Z' || state == 'X';
}

/* SIGKILL a same-host peer, unless its pid now belongs to another process. */
static void tp_fence(tp_ctx *ctx, int rank)
{
    const tp_peer *p = &ctx->peers[rank];
    if (!tp_same_host(ctx, rank) || p->pid <= 0 || p->pid == getpid()) return;
    uint64_t start = tp_proc_starttime(p->pid);
    if (start == 0 || start != ctx->links[rank].starttime) return; /* gone, or pid reused */
    if (kill(p->pid, SIGKILL) == 0)
        MR_WARN("tp: fenced rank %d (pid %d on %s) with SIGKILL", rank, p->pid, p->host);
    else
        MR_WARN("tp: could not fence rank %d (pid %d): %s", rank, p->pid, strerror(errno));
}

void tp_watch_processes(tp_ctx *ctx)
{
    if (ctx->pidfd_epfd < 0) return;
    for (int r = 0; r < ctx->size; r++) {
        tp_link_state *l = &ctx->links[r];
        const tp_peer *p = &ctx->peers[r];
        if (r == ctx->rank || !tp_same_host(ctx, r) || p->pid <= 0 || l->starttime == 0) continue;
#ifdef SYS_pidfd_open
        int fd = (int)syscall(SYS_pidfd_open, (pid_t)p->pid, 0);
#else
        int fd = -1;
        errno = ENOSYS;
#endif
        if (fd < 0) {
            MR_DEBUG("tp: pidfd_open(rank %d, pid %d): %s; relying on UCX and heartbeats", r,
                     p->pid, strerror(errno));
            continue;
        }
        /* the pid could belong to another process by now: trust it only if
         * its start time is the one the peer reported */
        struct epoll_event ev = {.events = EPOLLIN, .data = {.u32 = (uint32_t)r}};
        if (tp_proc_starttime(p->pid) != l->starttime ||
            epoll_ctl(ctx->pidfd_epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
            close(fd);
            continue;
        }
        l->pidfd = fd;
    }
}

void tp_unwatch_process(tp_ctx *ctx, int rank)
{
    tp_link_state *l = &ctx->links[rank];
    if (l->pidfd < 0) return;
    if (epoll_ctl(ctx->pidfd_epfd, EPOLL_CTL_DEL, l->pidfd, NULL) != 0)
        MR_DEBUG("tp: epoll_ctl(DEL, pidfd of rank %d): %s", rank, strerror(errno));
    close(l->pidfd);
    l->pidfd = -1;
}

void tp_check_processes(tp_ctx *ctx)
{
    if (ctx->pidfd_epfd < 0) return;
    struct epoll_event evs[8];
    int n = epoll_wait(ctx->pidfd_epfd, evs, 8, 0);
    for (int i = 0; i < n; i++) {
        int r = (int)evs[i].data.u32;
        ctx->links[r].proc_exited = true;
        ctx->pending_events = true;
        tp_unwatch_process(ctx, r);
    }
}

void tp_link_close(tp_ctx *ctx, int rank)
{
    tp_link_state *l = &ctx->links[rank];
    if (!l->ep) return;
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
        .flags = UCP_EP_CLOSE_FLAG_FORCE,
    };
    ucs_status_ptr_t p = ucp_ep_close_nbx(l->ep, &param);
    if (UCS_PTR_IS_PTR(p)) ucp_request_free(p); /* force close: nothing to wait for */
    else if (UCS_PTR_IS_ERR(p))
        MR_DEBUG("tp: force-closing the endpoint to rank %d: %s", rank,
                 ucs_status_string(UCS_PTR_STATUS(p)));
    l->ep = NULL;
}

void tp_link_mark_gone(tp_ctx *ctx, int rank)
{
    tp_link_state *l = &ctx->links[rank];
    if (l->phase != TP_LINK_ALIVE) return;
    l->phase = TP_LINK_GONE;
    ctx->peers[rank].alive = false;
    MR_DEBUG("tp: rank %d left (FIN)", rank);
    tp_rx_push_ready(ctx, rank, TP_MSG_PEER_DEAD, NULL, 0);
}

void tp_declare_dead(tp_ctx *ctx, int rank, const char *why)
{
    if (!ctx || rank < 0 || rank >= ctx->size || rank == ctx->rank) return;
    tp_link_state *l = &ctx->links[rank];
    if (l->phase != TP_LINK_ALIVE) return;
    const tp_peer *p = &ctx->peers[rank];
    l->phase = TP_LINK_DEAD;
    ctx->peers[rank].alive = false;
    MR_WARN("tp: rank %d declares rank %d (%s[%d], pid %d on %s) dead: %s", ctx->rank, rank,
            tp_role_name(p->role), p->role_index, p->pid, p->host, why ? why : "");
    if (!ctx->finalizing) tp_fence(ctx, rank); /* (leaving anyway: others will judge it) */
    tp_unwatch_process(ctx, rank);
    tp_abandon_requests(ctx, rank);
    tp_rx_abandon_from(ctx, rank);
    tp_rkeys_drop_peer(ctx, rank); /* before the endpoint goes (ucp_rkey_destroy contract) */
    tp_link_close(ctx, rank);
    tp_rx_push_ready(ctx, rank, TP_MSG_PEER_DEAD, NULL, 0);
}

bool tp_peer_alive(const tp_ctx *ctx, int rank)
{
    if (rank < 0 || rank >= ctx->size) return false;
    return rank == ctx->rank || tp_link_alive(ctx, rank);
}

static void tp_send_control(tp_ctx *ctx, int rank, uint16_t type)
{
    tp_txreq *req = tp_txreq_new(ctx, rank, TP_REQ_SEND, 0);
    if (!req) {
        MR_ERROR("tp: out of memory sending control message %u to rank %d", type, rank);
        return;
    }
    if (tp_am_post(ctx, rank, type, req) != MR_OK)
        MR_DEBUG("tp: control message %u to rank %d: %s", type, rank, mr_last_error());
}

static void tp_handle_events(tp_ctx *ctx)
{
    for (int r = 0; r < ctx->size; r++) {
        tp_link_state *l = &ctx->links[r];
        if (r == ctx->rank) continue;
        if (l->fin_recvd && !l->finack_sent && l->ep) {
            tp_send_control(ctx, r, TP_MSG_FINACK);
            l->finack_sent = true;
            tp_link_mark_gone(ctx, r);
        }
        bool lost = l->proc_exited || (l->ep_error && l->ep);
        if (lost && l->phase == TP_LINK_ALIVE && ctx->finalizing) {
            /* we are leaving too: a peer that disconnects now (e.g. its FINACK
             * was lost when it closed) is gone, not failed, and never fenced */
            tp_link_mark_gone(ctx, r);
        }
        if (l->proc_exited && l->phase == TP_LINK_ALIVE)
            tp_declare_dead(ctx, r, "its process exited");
        if (l->ep_error && l->ep) {
            if (l->phase == TP_LINK_ALIVE) {
                char why[96];
                snprintf(why, sizeof why, "UCX endpoint error: %s", ucs_status_string(l->ep_status));
                tp_declare_dead(ctx, r, why);
            } else { /* it left (FIN) or was already declared dead */
                tp_abandon_requests(ctx, r);
                tp_rkeys_drop_peer(ctx, r);
                tp_link_close(ctx, r);
            }
        }
    }
}

/* This rank stayed out of the transport for over half the heartbeat
 * timeout (a long compute step): its peers hear nothing meanwhile and will
 * declare it dead once the silence passes the timeout. Say so here, where
 * the cause is: the first time, then for a gap half again as long as the
 * last one reported, or a minute later. */
static void note_busy_gap(tp_ctx *ctx, double now)
{
    const double gap = ctx->last_health > 0 ? now - ctx->last_health : 0;
    ctx->last_health = now;
    if (gap <= 0.5 * ctx->opts.heartbeat_timeout_s) return;
    if (ctx->gap_warned > 0 && gap < 1.5 * ctx->gap_warned && now - ctx->gap_warned_at < 60.0)
        return;
    ctx->gap_warned = gap;
    ctx->gap_warned_at = now;
    MR_WARN("tp: rank %d did not service its transport for %.1f s (a step that long sends "
            "no heartbeats; peers declare a rank dead after %.1f s of silence: raise "
            "--heartbeat-timeout for steps this long)", ctx->rank, gap,
            ctx->opts.heartbeat_timeout_s);
}

void tp_health_step(tp_ctx *ctx)
{
    double now = mr_now();
    note_busy_gap(ctx, now);
    if (now >= ctx->next_proc_check) {
        ctx->next_proc_check = now + TP_PROC_CHECK_S;
        tp_check_processes(ctx);
    }
    if (ctx->pending_events) {
        ctx->pending_events = false;
        tp_handle_events(ctx);
    }
    if (now < ctx->next_heartbeat) return;
    ctx->next_heartbeat = now + ctx->opts.heartbeat_period_s;
    for (int r = 0; r < ctx->size; r++) {
        if (r == ctx->rank || !tp_link_alive(ctx, r)) continue;
        double silent = now - ctx->links[r].last_heard;
        if (silent > ctx->opts.heartbeat_timeout_s) {
            char why[160];
            snprintf(why, sizeof why, "silent for %.2f s (heartbeat_timeout_s %.2f; hung, or "
                     "busy in one step longer than that)", silent, ctx->opts.heartbeat_timeout_s);
            tp_declare_dead(ctx, r, why);
            continue;
        }
        tp_send_control(ctx, r, TP_MSG_HEARTBEAT);
    }
}
