/* transport/tp.h — the only code in moerun that talks MPI and UCX.
 *
 * What it owns: MPI (bootstrap only: ranks, roles, UCX worker addresses, and
 * MPI_Finalize at the very end), one UCX context + worker per process, one
 * endpoint to every other rank (error handling mode PEER), a FIFO of received
 * messages, registered memory regions and imported remote keys, and the
 * liveness state of every peer (heartbeats, failure detection, fencing).
 *
 * Who may call it: the role executables (coordinator, prefill, decode, expert)
 * and benchmarks. Nothing above transport/ includes mpi.h or ucp.h.
 *
 * Threading: a tp_ctx is single-threaded. Every function taking a tp_ctx must
 * be called from the thread that called tp_init (UCX worker in
 * UCS_THREAD_MODE_SINGLE). Heartbeats are sent and checked only inside
 * tp_poll / tp_wait / tp_send / tp_flush, so an application must enter one of
 * them at least every heartbeat_timeout_s / 2 (split long compute, e.g. poll
 * between layers), or its peers will declare it dead and fence it.
 *
 * Messages: (type, payload) pairs sent as UCX active messages. Types < 16 are
 * tp's own (heartbeat, FIN, FINACK) and TP_MSG_PEER_DEAD; applications use
 * types >= TP_MSG_APP_MIN. Messages from one peer are delivered in send order;
 * there is no order between different peers. Every message is bounded by
 * max_frame_bytes on both sides: the sender refuses to send a longer one, a
 * receiver drops (counts, warns) a longer one without allocating for it.
 *
 * Failures: a peer is declared dead exactly once — when its process exits
 * (same host: a pidfd in the event loop, seen within ms; UCX keepalive alone
 * misses deaths while rendezvous sends are in flight), by UCX's error callback
 * (broken connection), by heartbeat silence (a stopped or hung peer), or by
 * the application (tp_declare_dead). Then its endpoint is force-closed, its
 * outstanding requests are abandoned (never waited for), its remote keys are
 * destroyed, a same-host peer is fenced with SIGKILL (pid and process start
 * time exchanged at bootstrap), and one TP_MSG_PEER_DEAD message with
 * src = the rank is queued behind the messages already received from it. A
 * peer that leaves cleanly (tp_finalize: FIN) is reported the same way, once,
 * but never fenced. Calls naming a dead peer return MR_EPEER and never block.
 *
 * Ownership: tp_msg.data is malloc'd and belongs to the caller after tp_poll
 * (free with tp_msg_free or plain free(), or hand it back with
 * tp_msg_release). tp_send/tp_send2 copy the payload: the caller may reuse
 * its buffers as soon as they return. tp_put and tp_send_nocopy do NOT
 * copy: the local buffer must stay valid until tp_flush to that peer returns
 * MR_OK (or until the peer is dead and tp_flush returned MR_EPEER).
 *
 * Environment (the launcher sets it; see launch/moerun-bench-transport and
 * shared/TOOLCHAIN.md): single host: UCX_TLS=posix,self (or sm,self),
 * UCX_POSIX_ERROR_HANDLING=y, UCX_KEEPALIVE_INTERVAL=100ms,
 * UCX_KEEPALIVE_NUM_EPS=inf, `mpirun --enable-recovery --mca async_mpi_finalize 1`,
 * and MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824 (big
 * message buffers then come from the heap instead of a page-faulting mmap per
 * message: docs/PERF.md). With the default UCX environment everything works
 * too (shared memory then falls back to tcp for PEER-mode endpoints: slower).
 */
#ifndef MR_TP_H
#define MR_TP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/status.h"

typedef enum {
    TP_ROLE_COORDINATOR,
    TP_ROLE_PREFILL,
    TP_ROLE_DECODE,
    TP_ROLE_EXPERT,
    TP_ROLE_OTHER
} tp_role;

/* "coordinator", "prefill", "decode", "expert", "other" ("?" if out of range). */
const char *tp_role_name(tp_role role);

typedef struct tp_options {
    double heartbeat_period_s;  /* default 1.0 */
    double heartbeat_timeout_s; /* default 30.0 (2 oversubscribed cores: generous) */
    size_t max_frame_bytes;     /* cap on any sent or received message; default 256 MiB */
    uint64_t model_hash;        /* every rank must agree (checked at bootstrap) */
    const char *build_id;       /* every rank must agree (NULL means ""); copied */
} tp_options;

/* The defaults above, model_hash 0, build_id NULL. */
tp_options tp_options_default(void);

typedef struct tp_peer {
    int rank;
    tp_role role;
    int role_index; /* 0.. among the ranks with the same role, in rank order */
    int pid;
    char host[64];
    bool alive; /* false once declared dead or gone (FIN); never true again */
} tp_peer;

typedef struct tp_ctx tp_ctx;

/* MPI_Init (unless already initialized: then tp_finalize leaves MPI alone),
 * UCX context (AM|RMA|WAKEUP) + worker, MPI_Allgather of {role, pid, host,
 * model_hash, build_id, worker address}, an endpoint (PEER error mode) to
 * every other rank, then a hello over UCX with every peer. A mismatching
 * model_hash or build_id, or a rank whose UCX setup failed, makes every rank's
 * tp_init fail with a message naming the rank (against rank 0's values); MPI is
 * then finalized and nothing is left behind. After tp_init returns, MPI is not
 * used again except MPI_Finalize in tp_finalize. opts may be NULL (defaults).
 * Fails with MR_EINVAL on bad options. */
mr_status tp_init(int *argc, char ***argv, tp_role role, const tp_options *opts,
                  tp_ctx **out);

int tp_rank(const tp_ctx *ctx);
int tp_size(const tp_ctx *ctx);
/* NULL if rank is out of range. */
const tp_peer *tp_peer_info(const tp_ctx *ctx, int rank);
/* Ranks with this role (alive or not). */
int tp_count_role(const tp_ctx *ctx, tp_role role);
/* Rank of the role_index-th rank with this role; -1 if none. */
int tp_rank_of(const tp_ctx *ctx, tp_role role, int role_index);

/* ---- messages --------------------------------------------------------- */

enum {
    TP_MSG_PEER_DEAD = 15, /* src = the dead (or departed) rank, no payload */
    TP_MSG_APP_MIN = 16    /* first type applications may use */
};

/* Send (type, data[0..len)) to rank dst. Copies the payload; nonblocking.
 * MR_EINVAL: dst is this rank or out of range, type < TP_MSG_APP_MIN, or len >
 * max_frame_bytes. MR_EPEER: dst is dead or gone. If more than 1 GiB of sends
 * to dst are still in flight, waits (progressing) until they drain below it. */
mr_status tp_send(tp_ctx *ctx, int dst, uint16_t type, const void *data, size_t len);

/* Gather-send: hdr bytes then body bytes, received as one message of
 * hdr_len + body_len bytes. Same rules as tp_send. */
mr_status tp_send2(tp_ctx *ctx, int dst, uint16_t type, const void *hdr, size_t hdr_len,
                   const void *body, size_t body_len);

/* Zero-copy send for hot paths (hidden-state batches): like tp_send, but
 * data is NOT copied: it must stay valid and unchanged until tp_flush(ctx,
 * dst, ...) returns MR_OK (or dst is dead: MR_EPEER). Saves one memcpy of
 * len bytes per message. */
mr_status tp_send_nocopy(tp_ctx *ctx, int dst, uint16_t type, const void *data, size_t len);

typedef struct tp_msg {
    int src;
    uint16_t type;
    void *data; /* malloc'd (NULL when len == 0); owned by the caller */
    size_t len;
} tp_msg;

/* Progress the worker and run heartbeats / failure handling without popping
 * anything: received messages stay queued for tp_poll. Cheap; long compute
 * calls it between steps (e.g. between layers) so peers keep hearing from
 * this rank. */
void tp_service(tp_ctx *ctx);

/* Progress the worker, run heartbeats / failure handling, and pop the oldest
 * deliverable message. Returns true with *out filled, false if none. */
bool tp_poll(tp_ctx *ctx, tp_msg *out);
/* Frees msg->data and clears the message. Accepts NULL. */
void tp_msg_free(tp_msg *msg);
/* Same, but a big buffer (>= 4 MiB) is kept by ctx for the next big receive
 * or send instead of going back to libc (a fresh mmap'd buffer costs more in
 * page faults than moving the bytes). For hot paths; ctx must be the context
 * the message came from. Accepts NULL. */
void tp_msg_release(tp_ctx *ctx, tp_msg *msg);

/* Sleep until a message may be available or timeout_s passes (ucp_worker_arm
 * + epoll on the worker's event fd; idle ranks use ~0 CPU). Returns MR_OK in
 * both cases (call tp_poll next); MR_EIO only if epoll itself fails. */
mr_status tp_wait(tp_ctx *ctx, double timeout_s);

/* ---- RMA -------------------------------------------------------------- */

typedef struct tp_mem tp_mem;
typedef struct tp_rkey tp_rkey;

/* Register [base, base+len) for remote puts. Works everywhere, but on the
 * posix/sysv shared-memory transports UCX can only export memory it allocated
 * itself, so puts into registered memory are emulated there (slower): use
 * tp_mem_alloc for put targets (KV arenas). */
mr_status tp_mem_register(tp_ctx *ctx, void *base, size_t len, tp_mem **out);
/* Let UCX allocate len bytes exportable by every transport (shared memory
 * included: puts land by a CPU copy into the mapped segment). Zero-filled. */
mr_status tp_mem_alloc(tp_ctx *ctx, size_t len, tp_mem **out);
void *tp_mem_base(const tp_mem *mem);
size_t tp_mem_len(const tp_mem *mem);
/* Pack the region's remote key for shipping to peers (as an app message).
 * The blob carries base and length, so importers can bounds-check puts.
 * *packed is malloc'd: free(*packed). */
mr_status tp_mem_pack(tp_ctx *ctx, tp_mem *mem, void **packed, size_t *packed_len);
/* Accepts NULL. Releases the memory of tp_mem_alloc regions. */
void tp_mem_deregister(tp_ctx *ctx, tp_mem *mem);

/* Import a key packed by `peer`. remote_base is the remote address offset 0
 * refers to: 0 means the packed region's base; otherwise it must lie inside
 * the packed region (a sub-window). MR_EPROTO on a malformed blob. */
mr_status tp_rkey_import(tp_ctx *ctx, int peer, const void *packed, size_t len,
                         uint64_t remote_base, tp_rkey **out);
/* Accepts NULL; also after the peer died. */
void tp_rkey_release(tp_rkey *rkey);

/* Put local[0..len) at remote_base + remote_offset. Nonblocking; local must
 * stay valid until tp_flush(peer) returns. MR_ERANGE if the range leaves the
 * packed region, MR_EINVAL if rkey was imported from another peer, MR_EPEER if
 * the peer is dead. */
mr_status tp_put(tp_ctx *ctx, int peer, tp_rkey *rkey, uint64_t remote_offset,
                 const void *local, size_t len);
/* Complete every put and send issued to peer (puts are then visible at the
 * peer; sends fully handed over, tp_send_nocopy buffers free). MR_EPEER if the peer died,
 * MR_ETIMEDOUT when timeout_s passes — never hangs. After MR_ETIMEDOUT the
 * puts may still be running: declare the peer dead before reusing buffers. */
mr_status tp_flush(tp_ctx *ctx, int peer, double timeout_s);

/* ---- failures --------------------------------------------------------- */

/* Declare rank dead now (see the contract above). Idempotent; ignores this
 * rank and out-of-range ranks. why is logged. */
void tp_declare_dead(tp_ctx *ctx, int rank, const char *why);
/* True for this rank; false for out-of-range ranks. */
bool tp_peer_alive(const tp_ctx *ctx, int rank);

/* FIN to every live peer, wait (at most 5 s) for their FINACKs and for our
 * outstanding sends, force-close every endpoint, release leftover keys and
 * regions, destroy worker and context, MPI_Finalize. Safe after peer deaths.
 * Accepts NULL. */
mr_status tp_finalize(tp_ctx *ctx);

/* ---- stats ------------------------------------------------------------ */

typedef struct tp_link_stats {
    uint64_t msgs_sent, bytes_sent; /* application messages (tp_send*) */
    uint64_t msgs_recv, bytes_recv; /* application messages delivered to the queue */
    uint64_t puts, bytes_put;
    uint64_t frames_rejected;       /* received messages over max_frame_bytes */
} tp_link_stats;

/* Counters for traffic with peer; NULL if peer is out of range. */
const tp_link_stats *tp_link(const tp_ctx *ctx, int peer);

/* "1.13.1" — the UCX library loaded at run time (for benchmark headers). */
const char *tp_ucx_version(void);

#endif
