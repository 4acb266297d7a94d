/* transport/nccl_plane.h — the NCCL data plane between GPU ranks.
 *
 * A plane is one NCCL communicator over a set of member processes, each on
 * its own GPU, plus a CUDA stream of its own. Its one operation is a group of
 * point-to-point transfers of device buffers (ncclSend/ncclRecv between
 * ncclGroupStart/End): the shape of an expert dispatch or combine, where each
 * rank sends rows to some peers and receives rows from others in one step.
 *
 * Bootstrap: member 0 makes an id (np_make_id) and the caller hands its bytes
 * to every other member out of band (the cluster sends them over its UCX
 * control plane); then every member calls np_create with the same id.
 *
 * No silent hangs: the communicator is non-blocking (ncclConfig blocking = 0)
 * and every wait — creation and each exchange — polls the stream and
 * ncclCommGetAsyncError with a deadline. A peer that dies or never posts its
 * side surfaces as MR_EPEER ("NCCL exchange: no completion within 5.0 s ...")
 * or the NCCL error text; the plane is then aborted (ncclCommAbort) and every
 * later call fails fast. Destroy it and rebuild a plane without the dead rank.
 *
 * Constraints (NCCL's): one GPU per member — two members on one device are
 * refused at creation (such ranks share pinned host staging instead, see
 * model/kv_store.h); buffers must be device memory of the member's GPU and
 * complete (the caller synchronized the stream that produced them); sizes of
 * matching send/recv pairs must agree (the cluster sends sizes on the control
 * plane first).
 *
 * Builds without NCCL link a stub whose np_available() is false and whose
 * functions return MR_EUNSUPPORTED.
 */
#ifndef MR_NCCL_PLANE_H
#define MR_NCCL_PLANE_H

#include <stdbool.h>
#include <stddef.h>

#include "common/status.h"

#define NP_ID_BYTES 128 /* NCCL_UNIQUE_ID_BYTES */

typedef struct np_id {
    unsigned char bytes[NP_ID_BYTES];
} np_id;

typedef struct np_plane np_plane;

typedef struct np_xfer {
    int peer;          /* member index; may be the caller itself */
    bool send;         /* true: send buf to peer; false: receive into buf */
    void *buf;         /* device memory */
    size_t bytes;
} np_xfer;

bool np_available(void);

/* Member 0 only: a fresh communicator id. */
mr_status np_make_id(np_id *out);

/* Join the plane as `member` of n_members on CUDA device `device`; waits for
 * all members up to timeout_s, calling progress(ctx) (may be NULL) while it
 * waits; the plane keeps it as its np_set_progress hook. */
mr_status np_create(const np_id *id, int n_members, int member, int device, double timeout_s,
                    void (*progress)(void *ctx), void *ctx, np_plane **out);

/* The same without waiting: the communicator is created in the background
 * (NCCL's non-blocking init), so a rank can join several planes at once in
 * any order; np_ready polls it (*ready = true once every member joined; an
 * error fails and aborts the plane). np_post needs a ready plane. The
 * caller owns the deadline (np_abort). */
mr_status np_create_start(const np_id *id, int n_members, int member, int device,
                          np_plane **out);
mr_status np_ready(np_plane *plane, bool *ready);

/* Issue every transfer as one group and wait until all completed, or fail
 * (and abort the plane) on an NCCL error or when timeout_s passes.
 * = np_post, then np_test until done. */
mr_status np_exchange(np_plane *plane, const np_xfer *xfers, int n, double timeout_s);

/* The same in two halves, for a caller that waits on several planes (or on
 * a plane and its control transport) at once. np_post issues the group and
 * returns; the transfers are pending until np_test reports them done. A
 * plane holds one pending group at a time (posting again before it is done
 * is MR_EINVAL). Buffers must stay valid until done. */
mr_status np_post(np_plane *plane, const np_xfer *xfers, int n);

/* The same with the sends and the receives as two groups, in that order, on
 * the plane's stream (the receives are issued by np_test once the sends are
 * enqueued): for a peer that posts its matching receive, then later its
 * sends, as separate groups. NCCL sets up a pair's connections lazily, per
 * direction, at the first group that uses them, and only launches a group
 * once all its connections are up; one fused send+receive group facing a
 * receive-only group would wait for a connection the peer only sets up after
 * that receive completed. No transfer to the caller itself. */
mr_status np_post_ordered(np_plane *plane, const np_xfer *xfers, int n);

/* Non-blocking: *done = true when the pending group (if any) completed.
 * An NCCL or CUDA error fails (and aborts the plane). No deadline here: the
 * caller owns the clock and calls np_abort when its deadline passes. */
mr_status np_test(np_plane *plane, bool *done);

/* Abort the communicator now (a peer died, or a deadline passed): pending
 * transfers are abandoned and every later call fails fast naming `why`. */
void np_abort(np_plane *plane, const char *why);

/* fn(ctx) is called regularly while np_exchange waits (e.g. to keep the
 * control transport's heartbeats flowing during a long exchange). */
void np_set_progress(np_plane *plane, void (*fn)(void *ctx), void *ctx);

/* Finalize (or abort when an exchange failed) and free. Accepts NULL. */
void np_destroy(np_plane *plane);

#endif
