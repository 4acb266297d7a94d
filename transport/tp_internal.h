/* transport/tp_internal.h — state shared by the tp_*.c files. Not for users.
 *
 * Request lifetime rule (UCX 1.13): every UCX request we start carries a
 * tp_txreq / tp_rx as user_data. Completion callbacks run only inside
 * ucp_worker_progress. When a peer is declared dead its requests are
 * abandoned: ucp_request_free (no callback after that) and their buffers move
 * to ctx->orphans, freed only after ucp_worker_destroy, because UCX may still
 * touch them (~10% of in-flight rendezvous requests to a dead peer never
 * complete, shared/TOOLCHAIN.md).
 */
#ifndef MR_TP_INTERNAL_H
#define MR_TP_INTERNAL_H

#include <mpi.h>
#include <ucp/api/ucp.h>

#include "common/log.h"
#include "common/status.h"
#include "common/timer.h"
#include "transport/tp.h"

/* tp's own message types (all < TP_MSG_APP_MIN). */
enum { TP_MSG_HEARTBEAT = 1, TP_MSG_FIN = 2, TP_MSG_FINACK = 3 };

#define TP_AM_ID 7u
#define TP_HDR_MAGIC 0x4d525450u          /* "MRTP" */
#define TP_MAX_INFLIGHT_BYTES (1ull << 30) /* per-peer send backpressure */
#define TP_FIN_WAIT_S 5.0
#define TP_BIG_BUF ((size_t)4 << 20)        /* from here on: huge-page hint, send-buffer reuse */
#define TP_BUFCACHE_SLOTS 4
#define TP_BUFCACHE_BYTES ((size_t)256 << 20)
#define TP_EPOLL_WORKER 0u /* epoll data of the worker's event fd */
#define TP_EPOLL_PIDFDS 1u /* epoll data of the nested pidfd set */

/* Active-message header. Lives inside the send request until completion
 * (UCX 1.13 reads it late for rendezvous sends). */
typedef struct tp_am_hdr {
    uint32_t magic;
    int32_t src;
    uint16_t type;
    uint16_t reserved;
    uint32_t seq; /* per (src, dst) sequence number of every AM */
} tp_am_hdr;

typedef enum { TP_REQ_SEND, TP_REQ_PUT, TP_REQ_FLUSH } tp_req_kind;

/* One outstanding send / put / flush. Sends own a copy of the payload. */
typedef struct tp_txreq {
    struct tp_txreq *prev, *next; /* in the peer's outstanding list */
    struct tp_ctx *ctx;
    int peer;
    tp_req_kind kind;
    void *ucx;      /* UCX request handle while outstanding */
    bool posting;   /* inside the *_nbx call: the callback must not free */
    bool done;
    bool linked;    /* in the peer's list */
    bool inline_buf; /* buf lives in the same allocation */
    bool borrowed;   /* buf is the caller's (tp_send_nocopy / tp_put) */
    ucs_status_t status;
    tp_am_hdr hdr;
    size_t len;     /* payload bytes (sends) */
    void *buf;      /* owned payload copy or NULL */
    size_t buf_cap; /* allocation size of a non-inline buf */
} tp_txreq;

/* One received (or being received) message. */
typedef struct tp_rx {
    struct tp_rx *prev, *next; /* in ctx's arrival-ordered queue */
    struct tp_ctx *ctx;
    int src;
    uint16_t type;
    bool ready;       /* data complete, deliverable */
    bool failed;      /* receive failed: dropped at the next scan */
    bool posting;
    void *ucx;        /* rendezvous receive request while in flight */
    void *data;
    size_t len;
} tp_rx;

typedef enum { TP_LINK_ALIVE, TP_LINK_GONE, TP_LINK_DEAD } tp_link_phase;

typedef struct tp_link_state {
    struct tp_ctx *ctx;
    int rank;
    ucp_ep_h ep;             /* NULL once closed */
    tp_link_phase phase;
    bool ep_error;           /* set by the UCX error callback only */
    ucs_status_t ep_status;
    bool fin_sent, fin_recvd, finack_recvd, finack_sent;
    bool heard;              /* any message received since bootstrap */
    double last_heard;
    uint32_t tx_seq, rx_seq;
    uint64_t inflight_bytes; /* payload bytes of outstanding sends */
    tp_txreq *reqs;          /* outstanding requests to this peer */
    uint64_t starttime;      /* process start time (clock ticks since boot) */
    int pidfd;               /* same-host peers: pidfd_open(pid), -1 otherwise */
    bool proc_exited;        /* the pidfd fired */
    tp_link_stats stats;
} tp_link_state;

struct tp_rkey {
    struct tp_rkey *prev, *next; /* in ctx->rkeys */
    struct tp_ctx *ctx;
    int peer;
    ucp_rkey_h ucx;         /* NULL once the peer died */
    uint64_t region_base, region_len; /* packed region */
    uint64_t base;          /* what offset 0 means */
};

struct tp_mem {
    struct tp_mem *prev, *next; /* in ctx->mems */
    ucp_mem_h memh;
    void *base;
    size_t len;
    bool allocated;
};

/* A buffer UCX may still touch; freed after ucp_worker_destroy. */
typedef struct tp_orphan {
    struct tp_orphan *next;
    void *ptr;
} tp_orphan;

struct tp_ctx {
    int rank, size;
    tp_options opts;
    char build_id[256];
    bool mpi_owned; /* we called MPI_Init */
    bool finalizing;

    ucp_context_h ucp;
    ucp_worker_h worker;
    int efd, epfd;   /* worker event fd; epoll set {efd, pidfd_epfd} */
    int pidfd_epfd;  /* epoll set of same-host peers' pidfds */
    double next_proc_check;

    tp_peer *peers; /* public view, [size] */
    tp_link_state *links; /* [size]; links[rank] unused */

    tp_rx *rx_head, *rx_tail;
    unsigned *scan_mark;  /* [size], tp_poll's per-peer "blocked" marks */
    unsigned scan_gen;

    bool pending_events;  /* an error callback or FIN awaits the main loop */
    double next_heartbeat;
    double last_health;      /* when tp_health_step last ran (a gap = this rank was busy) */
    double gap_warned_at, gap_warned;  /* the last busy-gap warning: when, how long a gap */
    long busy_nap_ns;          /* back-off while the worker cannot be armed (tp_progress.c) */

    tp_rkey *rkeys;
    tp_mem *mems;
    tp_orphan *orphans;

    /* big send buffers kept for reuse (a fresh mmap'd buffer costs more in
     * page faults than the transfer); see tp_buf_get */
    void *bufcache[TP_BUFCACHE_SLOTS];
    size_t bufcache_cap[TP_BUFCACHE_SLOTS];
};

/* UCS_TRY / MPI_TRY: run a foreign call; on failure set `st` (an mr_status
 * local of the caller) to an mr_fail naming the call and file:line, and goto
 * the caller's `fail:` label. */
mr_status tp_ucs_fail(ucs_status_t s, const char *call, const char *file, int line);
mr_status tp_mpi_fail(int rc, const char *call, const char *file, int line);
#define UCS_TRY(call)                                                  \
    do {                                                               \
        ucs_status_t ucs_try_ = (call);                                \
        if (ucs_try_ != UCS_OK) {                                      \
            st = tp_ucs_fail(ucs_try_, #call, __FILE__, __LINE__);     \
            goto fail;                                                 \
        }                                                              \
    } while (0)
#define MPI_TRY(call)                                                  \
    do {                                                               \
        int mpi_try_ = (call);                                         \
        if (mpi_try_ != MPI_SUCCESS) {                                 \
            st = tp_mpi_fail(mpi_try_, #call, __FILE__, __LINE__);     \
            goto fail;                                                 \
        }                                                              \
    } while (0)

/* tp_msg.c */
ucs_status_t tp_am_recv_cb(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param);
bool tp_rx_has_deliverable(tp_ctx *ctx);
void tp_rx_push_ready(tp_ctx *ctx, int src, uint16_t type, void *data, size_t len);
void tp_rx_abandon_from(tp_ctx *ctx, int src);
void tp_rx_free_all(tp_ctx *ctx);
/* Post an AM whose payload is already in req->buf (or none). Consumes req. */
mr_status tp_am_post(tp_ctx *ctx, int dst, uint16_t type, tp_txreq *req);
/* tp_txreq helpers */
tp_txreq *tp_txreq_new(tp_ctx *ctx, int peer, tp_req_kind kind, size_t payload_len);
void tp_txreq_link(tp_txreq *req);
void tp_txreq_release(tp_txreq *req); /* unlink, free request + buffers */
void tp_txreq_send_cb(void *request, ucs_status_t status, void *user_data);
void tp_abandon_requests(tp_ctx *ctx, int peer);
void tp_orphan_add(tp_ctx *ctx, void *ptr);
/* malloc(len), with a transparent-huge-page hint for big buffers (free() it). */
void *tp_big_malloc(size_t len);
void tp_bufcache_free_all(tp_ctx *ctx);

/* tp_shutdown.c */
void tp_teardown(tp_ctx *ctx); /* everything after the FIN exchange; frees ctx */

/* tp_health.c */
void tp_ep_error_cb(void *arg, ucp_ep_h ep, ucs_status_t status);
void tp_health_step(tp_ctx *ctx); /* events, heartbeats, timeouts */
void tp_link_close(tp_ctx *ctx, int rank);
void tp_link_mark_gone(tp_ctx *ctx, int rank);
uint64_t tp_proc_starttime(int pid);
/* Same-host peers: watch their processes with pidfds (exit seen at once, even
 * when UCX keepalive misses it: it does with rendezvous sends in flight). */
void tp_watch_processes(tp_ctx *ctx);
void tp_check_processes(tp_ctx *ctx); /* nonblocking */
void tp_unwatch_process(tp_ctx *ctx, int rank);
/* True only if the peer runs on this host and its process is verifiably gone
 * (no such pid, pid reused, or a zombie). */
bool tp_peer_process_gone(const tp_ctx *ctx, int rank);

/* tp_progress.c */
/* Drain the worker, run health checks. True if anything moved. */
bool tp_progress(tp_ctx *ctx);
/* Sleep on the worker's event fd until an event or `deadline` (mr_now()
 * seconds), capped at the next heartbeat. Returns MR_OK or MR_EIO. */
mr_status tp_sleep_until(tp_ctx *ctx, double deadline);
/* The one wait helper (STYLE.md 8's request_wait): progress until
 * done(ctx, arg) is true (MR_OK), peer (if >= 0) stops being alive (MR_EPEER),
 * or deadline passes (MR_ETIMEDOUT); sleeps on the event fd when idle. */
typedef bool (*tp_done_fn)(tp_ctx *ctx, void *arg);
mr_status tp_wait_until(tp_ctx *ctx, tp_done_fn done, void *arg, int peer, double deadline);

/* tp_rma.c */
void tp_rkeys_drop_peer(tp_ctx *ctx, int peer);
void tp_rma_release_all(tp_ctx *ctx);

static inline bool tp_link_alive(const tp_ctx *ctx, int rank)
{
    return ctx->links[rank].phase == TP_LINK_ALIVE;
}

#endif
