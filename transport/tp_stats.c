/* transport/tp_stats.c — per-peer traffic counters for the cluster summary, versions. */
#include "transport/tp_internal.h"

const tp_link_stats *tp_link(const tp_ctx *ctx, int peer)
{
    if (!ctx || peer < 0 || peer >= ctx->size) return NULL;
    return &ctx->links[peer].stats;
}

const char *tp_ucx_version(void)
{
    return ucp_get_version_string();
}
