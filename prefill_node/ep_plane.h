/* prefill_node/ep_plane.h — the data plane of wide expert parallelism: how
 * the hidden rows of an EP exchange move between prefill ranks.
 *
 * ep_moe.c decides WHAT moves (the routes travel as MSG_EP_ROUTE over the
 * control transport, so every rank knows how many rows it sends to and
 * receives from each peer before any row moves); a plane moves the rows, in
 * one of two ways:
 *
 *   UCX  (default): each send is one MSG_EP_ROWS message (header + rows),
 *        staged through host memory on a GPU backend; each receive waits
 *        for the peer's message and copies its rows into place.
 *   NCCL (--ep-plane nccl, --backend cuda, one GPU per prefill rank): every
 *        send and receive of the exchange is one ncclSend/ncclRecv group
 *        between the ranks' GPUs (transport/nccl_plane.h), rows never leave
 *        device memory; an error or a missed deadline aborts the plane and
 *        fails the iteration with MR_EPEER (no silent hang).
 *
 * Both are driven identically: a list of transfers (peer member, direction,
 * backend buffer, row count). Row counts of matching send/receive pairs
 * agree by construction (they come from the same route message), and empty
 * transfers are skipped by both sides.
 */
#ifndef MR_EP_PLANE_H
#define MR_EP_PLANE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/status.h"

struct prefill_state;

typedef struct pf_ep_xfer {
    int member;    /* index into prefill_ranks */
    bool send;     /* send rows to member, or receive them from it */
    float *rows;   /* backend memory: n_rows x hidden_size floats */
    int n_rows;
} pf_ep_xfer;

/* Set up the plane the options ask for (UCX needs nothing; NCCL: member 0
 * makes the communicator id and sends it to the others as MSG_EP_NCCL_ID,
 * then every member joins). A request for NCCL that cannot be met fails
 * with the reason (not a cuda backend, a build without NCCL, two ranks on
 * one GPU, ...). */
mr_status pf_plane_open(struct prefill_state *p);

/* Run one exchange of `phase` (MR_EP_PHASE_DISPATCH | _COMBINE) of layer
 * `layer` of iteration `seq`: every send, then every receive. Returns when
 * every receive buffer holds its rows. */
mr_status pf_plane_exchange(struct prefill_state *p, int phase, int layer, uint64_t seq,
                            const pf_ep_xfer *xfers, int n);

/* Release the plane (NCCL: finalize, or abort after a failure). */
void pf_plane_close(struct prefill_state *p);

#endif
