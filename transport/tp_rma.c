/* transport/tp_rma.c — registered regions, packed remote keys, put, flush.
 *
 * Packed key blob (what tp_mem_pack returns and tp_rkey_import checks):
 *   u32 magic "MRRK" | u32 ucx_len | u64 base | u64 len | ucx_len bytes of ucp_rkey_pack
 * so an importer knows the region and can bounds-check every put. */
#include "transport/tp_internal.h"

#include <stdlib.h>
#include <string.h>

#define TP_RKEY_MAGIC 0x4b52524du /* "MRRK" */

typedef struct tp_rkey_blob_hdr {
    uint32_t magic, ucx_len;
    uint64_t base, len;
} tp_rkey_blob_hdr;

static mr_status tp_mem_map(tp_ctx *ctx, void *base, size_t len, bool allocate, tp_mem **out)
{
    mr_status st = MR_OK;
    *out = NULL;
    if (len == 0) return mr_fail(MR_EINVAL, "tp_mem: zero-length region");
    if (!allocate && !base) return mr_fail(MR_EINVAL, "tp_mem_register: NULL base");
    tp_mem *mem = calloc(1, sizeof *mem);
    if (!mem) return mr_fail(MR_ENOMEM, "tp_mem: out of memory");
    ucp_mem_map_params_t params = {
        .field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                      UCP_MEM_MAP_PARAM_FIELD_FLAGS,
        .address = allocate ? NULL : base,
        .length = len,
        .flags = allocate ? UCP_MEM_MAP_ALLOCATE : 0,
    };
    UCS_TRY(ucp_mem_map(ctx->ucp, &params, &mem->memh));
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH};
    UCS_TRY(ucp_mem_query(mem->memh, &attr));
    mem->base = allocate ? attr.address : base;
    mem->len = len;
    mem->allocated = allocate;
    mem->next = ctx->mems;
    if (ctx->mems) ctx->mems->prev = mem;
    ctx->mems = mem;
    *out = mem;
    return MR_OK;
fail:
    if (mem->memh) ucp_mem_unmap(ctx->ucp, mem->memh);
    free(mem);
    return mr_fail_prefix(st, "tp_mem (%zu bytes): ", len);
}

mr_status tp_mem_register(tp_ctx *ctx, void *base, size_t len, tp_mem **out)
{
    return tp_mem_map(ctx, base, len, false, out);
}

mr_status tp_mem_alloc(tp_ctx *ctx, size_t len, tp_mem **out)
{
    return tp_mem_map(ctx, NULL, len, true, out);
}

void *tp_mem_base(const tp_mem *mem) { return mem->base; }
size_t tp_mem_len(const tp_mem *mem) { return mem->len; }

static void tp_mem_unmap(tp_ctx *ctx, tp_mem *mem)
{
    ucs_status_t s = ucp_mem_unmap(ctx->ucp, mem->memh);
    if (s != UCS_OK) MR_WARN("tp: ucp_mem_unmap(%p, %zu B): %s", mem->base, mem->len, ucs_status_string(s));
    free(mem);
}

void tp_mem_deregister(tp_ctx *ctx, tp_mem *mem)
{
    if (!mem) return;
    if (mem->prev) mem->prev->next = mem->next;
    else ctx->mems = mem->next;
    if (mem->next) mem->next->prev = mem->prev;
    tp_mem_unmap(ctx, mem);
}

mr_status tp_mem_pack(tp_ctx *ctx, tp_mem *mem, void **packed, size_t *packed_len)
{
    mr_status st = MR_OK;
    void *ucx_buf = NULL;
    size_t ucx_len = 0;
    *packed = NULL;
    *packed_len = 0;
    UCS_TRY(ucp_rkey_pack(ctx->ucp, mem->memh, &ucx_buf, &ucx_len));
    tp_rkey_blob_hdr h = {.magic = TP_RKEY_MAGIC, .ucx_len = (uint32_t)ucx_len,
                          .base = (uint64_t)(uintptr_t)mem->base, .len = mem->len};
    char *blob = malloc(sizeof h + ucx_len);
    if (!blob) {
        ucp_rkey_buffer_release(ucx_buf);
        return mr_fail(MR_ENOMEM, "tp_mem_pack: out of memory");
    }
    memcpy(blob, &h, sizeof h);
    memcpy(blob + sizeof h, ucx_buf, ucx_len);
    ucp_rkey_buffer_release(ucx_buf);
    *packed = blob;
    *packed_len = sizeof h + ucx_len;
    return MR_OK;
fail:
    return st;
}

mr_status tp_rkey_import(tp_ctx *ctx, int peer, const void *packed, size_t len,
                         uint64_t remote_base, tp_rkey **out)
{
    mr_status st = MR_OK;
    tp_rkey_blob_hdr h;
    *out = NULL;
    if (peer < 0 || peer >= ctx->size || peer == ctx->rank)
        return mr_fail(MR_EINVAL, "tp_rkey_import: bad peer rank %d", peer);
    if (!packed || len < sizeof h)
        return mr_fail(MR_EPROTO, "tp_rkey_import: key from rank %d is %zu bytes (< %zu)", peer,
                       len, sizeof h);
    memcpy(&h, packed, sizeof h);
    if (h.magic != TP_RKEY_MAGIC || h.ucx_len != len - sizeof h || h.len == 0 ||
        h.base + h.len < h.base)
        return mr_fail(MR_EPROTO,
                       "tp_rkey_import: malformed key from rank %d (magic 0x%08x, %u+%zu of %zu B)",
                       peer, h.magic, h.ucx_len, sizeof h, len);
    if (remote_base && (remote_base < h.base || remote_base > h.base + h.len))
        return mr_fail(MR_ERANGE, "tp_rkey_import: remote_base 0x%llx outside rank %d's region "
                       "[0x%llx, +%llu)", (unsigned long long)remote_base, peer,
                       (unsigned long long)h.base, (unsigned long long)h.len);
    if (!tp_link_alive(ctx, peer) || !ctx->links[peer].ep)
        return mr_fail(MR_EPEER, "tp_rkey_import: rank %d is not alive", peer);
    /* UCX 1.13 crashes (NULL deref in uct_posix_rkey_release) when it cannot
     * attach a posix key because its owner already exited: check first. */
    if (tp_peer_process_gone(ctx, peer)) {
        tp_declare_dead(ctx, peer, "its process is gone (found importing its memory key)");
        return mr_fail(MR_EPEER, "tp_rkey_import: rank %d is dead", peer);
    }
    tp_rkey *rk = calloc(1, sizeof *rk);
    if (!rk) return mr_fail(MR_ENOMEM, "tp_rkey_import: out of memory");
    UCS_TRY(ucp_ep_rkey_unpack(ctx->links[peer].ep, (const char *)packed + sizeof h, &rk->ucx));
    rk->ctx = ctx;
    rk->peer = peer;
    rk->region_base = h.base;
    rk->region_len = h.len;
    rk->base = remote_base ? remote_base : h.base;
    rk->next = ctx->rkeys;
    if (ctx->rkeys) ctx->rkeys->prev = rk;
    ctx->rkeys = rk;
    *out = rk;
    return MR_OK;
fail:
    free(rk);
    return mr_fail_prefix(st, "tp_rkey_import from rank %d: ", peer);
}

void tp_rkey_release(tp_rkey *rkey)
{
    if (!rkey) return;
    tp_ctx *ctx = rkey->ctx;
    if (rkey->ucx) ucp_rkey_destroy(rkey->ucx);
    if (rkey->prev) rkey->prev->next = rkey->next;
    else ctx->rkeys = rkey->next;
    if (rkey->next) rkey->next->prev = rkey->prev;
    free(rkey);
}

void tp_rkeys_drop_peer(tp_ctx *ctx, int peer)
{
    for (tp_rkey *rk = ctx->rkeys; rk; rk = rk->next) {
        if (rk->peer != peer || !rk->ucx) continue;
        ucp_rkey_destroy(rk->ucx);
        rk->ucx = NULL;
    }
}

void tp_rma_release_all(tp_ctx *ctx)
{
    while (ctx->rkeys) tp_rkey_release(ctx->rkeys);
    while (ctx->mems) tp_mem_deregister(ctx, ctx->mems);
}

mr_status tp_put(tp_ctx *ctx, int peer, tp_rkey *rkey, uint64_t remote_offset, const void *local,
                 size_t len)
{
    if (!rkey || rkey->ctx != ctx || rkey->peer != peer)
        return mr_fail(MR_EINVAL, "tp_put: key does not belong to rank %d", peer);
    if (!tp_link_alive(ctx, peer) || !rkey->ucx || !ctx->links[peer].ep)
        return mr_fail(MR_EPEER, "tp_put: rank %d is not alive", peer);
    uint64_t end = rkey->base + remote_offset + len;
    if (remote_offset > rkey->region_len || end < rkey->base ||
        end > rkey->region_base + rkey->region_len)
        return mr_fail(MR_ERANGE, "tp_put: %zu bytes at offset %llu leave rank %d's %llu-byte region",
                       len, (unsigned long long)remote_offset, peer,
                       (unsigned long long)rkey->region_len);
    if (len == 0) return MR_OK;
    tp_txreq *req = tp_txreq_new(ctx, peer, TP_REQ_PUT, 0);
    if (!req) return mr_fail(MR_ENOMEM, "tp_put: out of memory");
    req->borrowed = true; /* local is the caller's */
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb = {.send = tp_txreq_send_cb},
        .user_data = req,
    };
    req->posting = true;
    ucs_status_ptr_t p = ucp_put_nbx(ctx->links[peer].ep, local, len, rkey->base + remote_offset,
                                     rkey->ucx, &param);
    req->posting = false;
    tp_link_stats *s = &ctx->links[peer].stats;
    if (UCS_PTR_IS_ERR(p)) {
        tp_txreq_release(req);
        return mr_fail(MR_EPEER, "tp_put: %zu bytes to rank %d: %s", len, peer,
                       ucs_status_string(UCS_PTR_STATUS(p)));
    }
    s->puts++;
    s->bytes_put += len;
    if (p == NULL || req->done) {
        req->ucx = p;
        tp_txreq_release(req);
        return MR_OK;
    }
    req->ucx = p;
    tp_txreq_link(req);
    return MR_OK;
}

typedef struct {
    int peer;
    const tp_txreq *flush; /* NULL when ucp_ep_flush_nbx completed at once */
} tp_flush_arg;

/* The UCX flush is done (RMA complete at the target) and no other request to
 * the peer is outstanding (ucp_ep_flush only covers RMA/AMO: our sends are
 * tracked and waited for here, which gives tp_send_nocopy its meaning). */
static bool tp_flush_done(tp_ctx *ctx, void *arg)
{
    const tp_flush_arg *a = arg;
    if (a->flush && !a->flush->done) return false;
    for (const tp_txreq *r = ctx->links[a->peer].reqs; r; r = r->next)
        if (r != a->flush) return false;
    return true;
}

mr_status tp_flush(tp_ctx *ctx, int peer, double timeout_s)
{
    double deadline = mr_now() + (timeout_s > 0 ? timeout_s : 0);
    if (peer < 0 || peer >= ctx->size || peer == ctx->rank)
        return mr_fail(MR_EINVAL, "tp_flush: bad peer rank %d", peer);
    tp_link_state *l = &ctx->links[peer];
    if (l->phase != TP_LINK_ALIVE || !l->ep)
        return mr_fail(MR_EPEER, "tp_flush: rank %d is not alive", peer);
    tp_txreq *req = tp_txreq_new(ctx, peer, TP_REQ_FLUSH, 0);
    if (!req) return mr_fail(MR_ENOMEM, "tp_flush: out of memory");
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA,
        .cb = {.send = tp_txreq_send_cb},
        .user_data = req,
    };
    req->posting = true;
    ucs_status_ptr_t p = ucp_ep_flush_nbx(l->ep, &param);
    req->posting = false;
    if (UCS_PTR_IS_ERR(p)) {
        tp_txreq_release(req);
        return mr_fail(MR_EPEER, "tp_flush: rank %d: %s", peer, ucs_status_string(UCS_PTR_STATUS(p)));
    }
    tp_flush_arg a = {.peer = peer, .flush = NULL};
    if (p == NULL) {
        tp_txreq_release(req);
        req = NULL;
    } else {
        req->ucx = p;
        tp_txreq_link(req);
        a.flush = req;
    }
    mr_status st = tp_wait_until(ctx, tp_flush_done, &a, peer, deadline);
    if (st == MR_OK && req && req->status != UCS_OK)
        st = mr_fail(MR_EPEER, "tp_flush: rank %d: %s", peer, ucs_status_string(req->status));
    if (st == MR_OK && !tp_link_alive(ctx, peer)) /* its requests were abandoned, not completed */
        st = mr_fail(MR_EPEER, "tp_flush: rank %d died", peer);
    /* done, abandoned (peer dead: its UCX request is already freed) or timed
     * out: release now; ucp_request_free stops any later callback */
    if (req) tp_txreq_release(req);
    if (st == MR_ETIMEDOUT)
        return mr_fail(MR_ETIMEDOUT, "tp_flush: rank %d: not complete after %.3f s", peer, timeout_s);
    if (st != MR_OK && st != MR_EPEER) return mr_fail_prefix(st, "tp_flush: ");
    return st;
}
