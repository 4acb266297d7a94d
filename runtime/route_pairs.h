/* runtime/route_pairs.h — decode ↔ expert rows over NCCL (--route-plane nccl).
 *
 * An expert rank serves whichever decode rank's dispatch arrives, so one
 * NCCL communicator over all of them would need every decode rank to step in
 * lock-step (NCCL matches point-to-point calls in issue order on one stream:
 * expert A receiving from decode 1 then 2 while expert B receives from 2
 * then 1 deadlocks). Instead every (decode, expert) pair gets a two-member
 * communicator with its own stream: within a pair the order is fixed (the
 * decode rank posts "send dispatch rows" then "receive combine rows" as two
 * groups (np_post_ordered), mirroring the expert's "receive" then, after
 * computing, "send": NCCL connects each direction lazily, at the first group
 * that uses it, on both members at once), and pairs never wait
 * on each other. The routes (slots, expert ids) still travel over the
 * control transport first (MSG_DISPATCH_IDS / MSG_COMBINE_IDS), so each side
 * knows every size before a row moves.
 *
 * Pairing, at decode start-up (docs/PROTOCOL.md): the decode rank sends
 * every expert rank MSG_ROUTE_NCCL_ID (a fresh NCCL id + "host/PCI bus id" of
 * its GPU); the expert rank refuses (MSG_ROUTE_NCCL_ACK, accepted = 0, why)
 * when it is not on cuda, has no NCCL, or sits on the same GPU (NCCL refuses
 * two members on one device) — that pair's rows stay on UCX through pinned
 * host memory — else it accepts and both start joining in the background
 * (np_create_start). The decode rank waits until every answer came and every
 * accepted pair is ready; the expert rank waits for readiness when it first
 * uses the pair.
 *
 * Failure: every wait polls NCCL's async error, services the transport
 * (heartbeats), watches the peer's liveness and a deadline; a dead peer or a
 * missed deadline aborts that pair (np_abort) and the pair is dropped (its
 * rank's later traffic fails as a lost rank).
 *
 * Test hook (--route-plane test-pairs): every pair is accepted whatever the
 * backend, and its rows travel as MSG_PAIR_ROWS messages (staged through host
 * memory) instead of NCCL calls — the same offer/answer, the same
 * MSG_DISPATCH_IDS/MSG_COMBINE_IDS schedule, the same gathers, scatters,
 * posts and waits, so the cpu/devsim cluster tests run everything of the
 * NCCL route plane but the NCCL calls themselves.
 *
 * One mr_route_pairs per role process, used from its main thread.
 */
#ifndef MR_ROUTE_PAIRS_H
#define MR_ROUTE_PAIRS_H

#include <stdbool.h>

#include "common/status.h"
#include "role.h"
#include "transport/nccl_plane.h"

typedef struct mr_route_pair mr_route_pair;

typedef struct mr_route_pairs {
    mr_route_pair **pair; /* by rank; NULL = this pair's rows go over UCX */
    int n_ranks;
    int n_pairs;          /* live pairs */
} mr_route_pairs;

/* Decode rank: offer a pair to every expert rank, wait for every answer and
 * for the accepted pairs to be ready. A refused pair (logged with the
 * reason) or a dead expert rank leaves that pair on UCX. Fails only when
 * this rank cannot offer at all (not cuda, no NCCL). */
mr_status mr_route_pairs_offer(mr_role *r, mr_route_pairs *p);

/* Expert rank: answer one MSG_ROUTE_NCCL_ID (accept and start joining, or
 * refuse saying why). A malformed offer is rejected (mr_role_reject). */
void mr_route_pairs_answer(mr_role *r, mr_route_pairs *p, const tp_msg *m);

/* Whether rows to/from `rank` go over a pair (else over UCX messages). */
bool mr_route_pairs_has(const mr_route_pairs *p, int rank);

/* Post the transfers on the pair with `rank` (np_post_ordered's contract:
 * backend memory, valid until done; np_xfer.peer is ignored — the peer is
 * the pair's other member). */
mr_status mr_route_pair_post(mr_role *r, mr_route_pairs *p, int rank, const np_xfer *x, int n);

/* Wait until the pairs with ranks[0..n) are ready and their posted groups
 * done. Heartbeats are serviced meanwhile (test pairs: their rows are taken
 * from the transport, other messages kept in r->deferred); a peer that dies
 * or a deadline (timeout_s) aborts and drops its pair and fails with
 * MR_EPEER naming it. */
mr_status mr_route_pairs_wait(mr_role *r, mr_route_pairs *p, const int *ranks, int n,
                              double timeout_s);

/* Non-blocking: *idle = true when the pair with `rank` has no group pending. */
mr_status mr_route_pair_idle(mr_route_pairs *p, int rank, bool *idle);

/* A MSG_PAIR_ROWS message (test pairs) arrived in a role's loop: hand it to
 * its pair (rows for a posted receive, or kept until one is posted). A
 * message no pair expects is rejected. Frees m. */
void mr_route_pairs_deliver(mr_role *r, mr_route_pairs *p, tp_msg *m);

/* Abort and forget the pair with `rank` (its peer died, ...). */
void mr_route_pairs_drop(mr_route_pairs *p, int rank, const char *why);

void mr_route_pairs_free(mr_route_pairs *p);

#endif
