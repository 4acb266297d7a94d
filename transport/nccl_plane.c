/* transport/nccl_plane.c — see nccl_plane.h. */
#include "nccl_plane.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "common/timer.h"

_Static_assert(sizeof(np_id) == sizeof(ncclUniqueId), "np_id must hold an ncclUniqueId");

struct np_plane {
    ncclComm_t comm;
    cudaStream_t stream;
    int device, n_members, member;
    bool broken;               /* aborted after a failure: every call fails fast */
    bool pending;              /* a posted group not yet reported done (np_test) */
    bool ready;                /* communicator creation finished (np_ready) */
    np_xfer *later;            /* np_post_ordered: the receives, issued once the sends are enqueued */
    int n_later;
    char why[256];
    void (*progress)(void *);  /* called while waiting (np_set_progress) */
    void *progress_ctx;
};

void np_set_progress(np_plane *p, void (*fn)(void *ctx), void *ctx)
{
    p->progress = fn;
    p->progress_ctx = ctx;
}

static mr_status fail_nccl(ncclResult_t r, const char *what)
{
    return mr_fail(r == ncclSystemError || r == ncclRemoteError ? MR_EPEER : MR_EIO,
                   "NCCL %s: %s", what, ncclGetErrorString(r));
}

static mr_status fail_cuda(cudaError_t e, const char *what)
{
    (void)cudaGetLastError(); /* reported here: not again by the backend's next launch check */
    return mr_fail(MR_EIO, "NCCL plane: %s: %s: %s", what, cudaGetErrorName(e),
                   cudaGetErrorString(e));
}

static void nap(void)
{
    struct timespec ts = {0, 20000}; /* 20 us: NCCL transfers take longer */
    nanosleep(&ts, NULL);
}

bool np_available(void)
{
    return true;
}

mr_status np_make_id(np_id *out)
{
    ncclUniqueId id;
    ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return fail_nccl(r, "ncclGetUniqueId");
    memcpy(out->bytes, &id, sizeof id);
    return MR_OK;
}

/* Abort the communicator and remember why (from mr_last_error()). */
static void plane_break(np_plane *p)
{
    if (p->broken) return;
    snprintf(p->why, sizeof p->why, "%s", mr_last_error());
    p->broken = true;
    if (p->comm) ncclCommAbort(p->comm);
    p->comm = NULL;
    free(p->later);
    p->later = NULL;
    p->n_later = 0;
}

/* Wait until the communicator leaves ncclInProgress (non-blocking init and
 * group calls), or the deadline. */
static mr_status wait_comm(np_plane *p, double deadline, const char *what)
{
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(p->comm, &state);
        if (r != ncclSuccess) return fail_nccl(r, "ncclCommGetAsyncError");
        if (state == ncclSuccess) return MR_OK;
        if (state != ncclInProgress) return fail_nccl(state, what);
        if (mr_now() > deadline)
            return mr_fail(MR_EPEER, "NCCL %s: not done within its deadline (a member missing?)",
                           what);
        nap();
    }
}

mr_status np_create_start(const np_id *id, int n_members, int member, int device,
                          np_plane **out)
{
    *out = NULL;
    if (n_members < 1 || member < 0 || member >= n_members)
        return mr_fail(MR_EINVAL, "NCCL plane: member %d of %d", member, n_members);
    const char *blocking = getenv("NCCL_COMM_BLOCKING"); /* overrides config.blocking */
    if (blocking && strtol(blocking, NULL, 0) == 1)
        return mr_fail(MR_EINVAL, "NCCL plane: NCCL_COMM_BLOCKING=%s makes NCCL calls block "
                       "(creation would wait for every member inside NCCL); unset it", blocking);
    np_plane *p = calloc(1, sizeof *p);
    if (!p) return mr_fail(MR_ENOMEM, "NCCL plane: out of memory");
    p->device = device;
    p->n_members = n_members;
    p->member = member;
    mr_status st = MR_OK;
    cudaError_t e = cudaSetDevice(device);
    if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&p->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) st = fail_cuda(e, "device/stream");
    if (st == MR_OK) {
        ncclUniqueId uid;
        memcpy(&uid, id->bytes, sizeof uid);
        ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
        config.blocking = 0;
        ncclResult_t r = ncclCommInitRankConfig(&p->comm, n_members, uid, member, &config);
        if (r != ncclSuccess && r != ncclInProgress) st = fail_nccl(r, "ncclCommInitRankConfig");
    }
    if (st != MR_OK) {
        plane_break(p);
        np_destroy(p);
        return mr_fail_prefix(st, "member %d of %d on GPU %d: ", member, n_members, device);
    }
    *out = p;
    return MR_OK;
}

mr_status np_ready(np_plane *p, bool *ready)
{
    *ready = false;
    if (p->broken) return mr_fail(MR_EPEER, "NCCL plane is down: %s", p->why);
    if (p->ready) {
        *ready = true;
        return MR_OK;
    }
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(p->comm, &state);
    mr_status st = MR_OK;
    if (r != ncclSuccess) st = fail_nccl(r, "ncclCommGetAsyncError");
    else if (state != ncclSuccess && state != ncclInProgress)
        st = fail_nccl(state, "communicator creation");
    if (st != MR_OK) {
        plane_break(p);
        return mr_fail_prefix(st, "member %d of %d on GPU %d: ", p->member, p->n_members,
                              p->device);
    }
    p->ready = *ready = state == ncclSuccess;
    return MR_OK;
}

mr_status np_create(const np_id *id, int n_members, int member, int device, double timeout_s,
                    void (*progress)(void *ctx), void *ctx, np_plane **out)
{
    MR_TRY(np_create_start(id, n_members, member, device, out));
    np_plane *p = *out;
    np_set_progress(p, progress, ctx);
    const double deadline = mr_now() + timeout_s;
    mr_status st = MR_OK;
    for (;;) {
        bool ready = false;
        st = np_ready(p, &ready);
        if (st != MR_OK || ready) break;
        if (mr_now() > deadline) {
            st = mr_fail(MR_EPEER, "NCCL communicator creation: member %d of %d on GPU %d not "
                         "done within %.1f s (a member missing?)", member, n_members, device,
                         timeout_s);
            break;
        }
        if (p->progress) p->progress(p->progress_ctx);
        nap();
    }
    if (st != MR_OK) {
        plane_break(p);
        np_destroy(p);
        *out = NULL;
    }
    return st;
}

/* One group of x's transfers: all of them (only < 0), only the sends (1) or
 * only the receives (0). */
static ncclResult_t issue_group(np_plane *p, const np_xfer *x, int n, int only)
{
    ncclResult_t r = ncclGroupStart();
    for (int i = 0; i < n && r == ncclSuccess; i++) {
        if (x[i].bytes == 0 || (only >= 0 && x[i].send != (only == 1))) continue;
        r = x[i].send ? ncclSend(x[i].buf, x[i].bytes, ncclInt8, x[i].peer, p->comm, p->stream)
                      : ncclRecv(x[i].buf, x[i].bytes, ncclInt8, x[i].peer, p->comm, p->stream);
    }
    ncclResult_t end = ncclGroupEnd();
    return r == ncclSuccess ? end : r;
}

static mr_status post(np_plane *p, const np_xfer *x, int n, bool ordered)
{
    if (p->broken) return mr_fail(MR_EPEER, "NCCL plane is down: %s", p->why);
    if (p->pending) return mr_fail(MR_EINVAL, "NCCL plane: a group is still pending");
    if (!p->ready) return mr_fail(MR_EINVAL, "NCCL plane: the communicator is still being created");
    int n_send = 0, n_recv = 0;
    for (int i = 0; i < n; i++) {
        if (x[i].peer < 0 || x[i].peer >= p->n_members || (x[i].bytes && !x[i].buf) ||
            (ordered && x[i].peer == p->member))
            return mr_fail(MR_EINVAL, "NCCL exchange: transfer %d: peer %d of %d, %zu bytes at %p",
                           i, x[i].peer, p->n_members, x[i].bytes, x[i].buf);
        if (x[i].bytes && x[i].send) n_send++;
        else if (x[i].bytes) n_recv++;
    }
    int only = -1;
    if (ordered && n_send > 0 && n_recv > 0) { /* receives follow once the sends are enqueued */
        p->later = malloc(sizeof *p->later * (size_t)n);
        if (!p->later) return mr_fail(MR_ENOMEM, "NCCL plane: out of memory");
        memcpy(p->later, x, sizeof *p->later * (size_t)n);
        p->n_later = n;
        only = 1;
    }
    ncclResult_t r = issue_group(p, x, n, only);
    if (r != ncclSuccess && r != ncclInProgress) {
        mr_status st = fail_nccl(r, "group");
        plane_break(p);
        return st;
    }
    p->pending = true;
    return MR_OK;
}

mr_status np_post(np_plane *p, const np_xfer *x, int n)
{
    return post(p, x, n, false);
}

mr_status np_post_ordered(np_plane *p, const np_xfer *x, int n)
{
    return post(p, x, n, true);
}

mr_status np_test(np_plane *p, bool *done)
{
    *done = false;
    if (p->broken) return mr_fail(MR_EPEER, "NCCL plane is down: %s", p->why);
    if (!p->pending) {
        *done = true;
        return MR_OK;
    }
    /* a non-blocking group may still be launching (ncclInProgress) */
    ncclResult_t state = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(p->comm, &state);
    mr_status st = MR_OK;
    if (r != ncclSuccess) st = fail_nccl(r, "ncclCommGetAsyncError");
    else if (state != ncclSuccess && state != ncclInProgress) st = fail_nccl(state, "exchange");
    if (st == MR_OK && state == ncclSuccess && p->later) {
        /* the sends are enqueued: now the receives, behind them on the stream */
        ncclResult_t g = issue_group(p, p->later, p->n_later, 0);
        free(p->later);
        p->later = NULL;
        p->n_later = 0;
        if (g != ncclSuccess && g != ncclInProgress) st = fail_nccl(g, "group (receives)");
    } else if (st == MR_OK && state == ncclSuccess) {
        cudaError_t e = cudaStreamQuery(p->stream);
        if (e == cudaSuccess) {
            p->pending = false;
            *done = true;
        } else if (e == cudaErrorNotReady) {
            /* not an error, but the runtime keeps it as this thread's last
             * error: the backend's next launch check (cudaGetLastError)
             * would report it as its own failure */
            (void)cudaGetLastError();
        } else {
            st = fail_cuda(e, "cudaStreamQuery");
        }
    }
    if (st != MR_OK) plane_break(p);
    return st;
}

void np_abort(np_plane *p, const char *why)
{
    if (!p || p->broken) return;
    mr_fail(MR_EPEER, "%s", why);
    plane_break(p);
}

mr_status np_exchange(np_plane *p, const np_xfer *x, int n, double timeout_s)
{
    const double deadline = mr_now() + timeout_s;
    MR_TRY(np_post(p, x, n));
    for (;;) {
        bool done = false;
        MR_TRY(np_test(p, &done));
        if (done) return MR_OK;
        if (mr_now() > deadline) {
            mr_status st = mr_fail(MR_EPEER, "NCCL exchange: no completion within %.1f s (%d "
                                   "transfers; a peer is gone or did not post its side)",
                                   timeout_s, n);
            plane_break(p);
            return st;
        }
        if (p->progress) p->progress(p->progress_ctx);
        nap();
    }
}

void np_destroy(np_plane *p)
{
    if (!p) return;
    if (p->comm && (!p->ready || p->pending)) {
        ncclCommAbort(p->comm); /* never finished joining, or transfers still posted */
    } else if (p->comm) {
        /* clean shutdown: flush, then destroy; abort if that does not finish */
        ncclResult_t r = ncclCommFinalize(p->comm);
        if (r == ncclSuccess || r == ncclInProgress) {
            if (wait_comm(p, mr_now() + 10.0, "finalize") == MR_OK) ncclCommDestroy(p->comm);
            else ncclCommAbort(p->comm);
        } else {
            ncclCommAbort(p->comm);
        }
    }
    if (p->stream) cudaStreamDestroy(p->stream);
    free(p->later);
    free(p);
}
