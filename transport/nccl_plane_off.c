/* transport/nccl_plane_off.c — nccl_plane.h for builds without NCCL. */
#include "nccl_plane.h"

static mr_status off(void)
{
    return mr_fail(MR_EUNSUPPORTED, "NCCL data plane: this moerun was built without NCCL");
}

bool np_available(void)
{
    return false;
}

mr_status np_make_id(np_id *out)
{
    (void)out;
    return off();
}

mr_status np_create(const np_id *id, int n_members, int member, int device, double timeout_s,
                    void (*progress)(void *ctx), void *ctx, np_plane **out)
{
    (void)progress;
    (void)ctx;
    (void)id;
    (void)n_members;
    (void)member;
    (void)device;
    (void)timeout_s;
    *out = 0;
    return off();
}

mr_status np_create_start(const np_id *id, int n_members, int member, int device,
                          np_plane **out)
{
    (void)id;
    (void)n_members;
    (void)member;
    (void)device;
    *out = 0;
    return off();
}

mr_status np_ready(np_plane *plane, bool *ready)
{
    (void)plane;
    *ready = false;
    return off();
}

mr_status np_exchange(np_plane *plane, const np_xfer *xfers, int n, double timeout_s)
{
    (void)plane;
    (void)xfers;
    (void)n;
    (void)timeout_s;
    return off();
}

mr_status np_post(np_plane *plane, const np_xfer *xfers, int n)
{
    (void)plane;
    (void)xfers;
    (void)n;
    return off();
}

mr_status np_post_ordered(np_plane *plane, const np_xfer *xfers, int n)
{
    return np_post(plane, xfers, n);
}

mr_status np_test(np_plane *plane, bool *done)
{
    (void)plane;
    *done = false;
    return off();
}

void np_abort(np_plane *plane, const char *why)
{
    (void)plane;
    (void)why;
}

void np_destroy(np_plane *plane)
{
    (void)plane;
}

void np_set_progress(np_plane *plane, void (*fn)(void *ctx), void *ctx)
{
    (void)plane;
    (void)fn;
    (void)ctx;
}
