/* transport/tp_msg.c — endpoints' active messages: send requests, the AM
 * receive handler, the arrival-ordered receive queue, tp_send / tp_poll. */
#include "transport/tp_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TP_INLINE_MAX ((size_t)64 << 10) /* payloads up to this share the request's allocation */

/* ---- big buffers --------------------------------------------------------- */

void *tp_big_malloc(size_t len)
{
    void *p = malloc(len ? len : 1);
    if (p && len >= TP_BIG_BUF) { /* 2 MiB pages: 512x fewer page faults on first touch */
        const uintptr_t huge = (uintptr_t)2 << 20;
        uintptr_t start = ((uintptr_t)p + huge - 1) & ~(huge - 1);
        uintptr_t end = ((uintptr_t)p + len) & ~(huge - 1);
        if (end > start && madvise((void *)start, end - start, MADV_HUGEPAGE) != 0)
            MR_DEBUG("tp: madvise(MADV_HUGEPAGE) failed; using 4 KiB pages");
    }
    return p;
}

/* A send buffer of at least len bytes: a cached one no more than twice as
 * big, else a new one. */
static void *tp_buf_get(tp_ctx *ctx, size_t len, size_t *cap)
{
    int best = -1;
    for (int i = 0; i < TP_BUFCACHE_SLOTS; i++) {
        size_t c = ctx->bufcache_cap[i];
        if (ctx->bufcache[i] && c >= len && c / 2 <= len && (best < 0 || c < ctx->bufcache_cap[best]))
            best = i;
    }
    if (best >= 0) {
        void *p = ctx->bufcache[best];
        *cap = ctx->bufcache_cap[best];
        ctx->bufcache[best] = NULL;
        ctx->bufcache_cap[best] = 0;
        return p;
    }
    *cap = len;
    return tp_big_malloc(len);
}

static void tp_buf_put(tp_ctx *ctx, void *p, size_t cap)
{
    if (!p) return;
    if (cap >= TP_BIG_BUF) {
        size_t total = cap;
        int slot = -1;
        for (int i = 0; i < TP_BUFCACHE_SLOTS; i++) {
            total += ctx->bufcache_cap[i];
            if (!ctx->bufcache[i]) slot = i;
        }
        if (slot >= 0 && total <= TP_BUFCACHE_BYTES) {
            ctx->bufcache[slot] = p;
            ctx->bufcache_cap[slot] = cap;
            return;
        }
    }
    free(p);
}

void tp_bufcache_free_all(tp_ctx *ctx)
{
    for (int i = 0; i < TP_BUFCACHE_SLOTS; i++) {
        free(ctx->bufcache[i]);
        ctx->bufcache[i] = NULL;
        ctx->bufcache_cap[i] = 0;
    }
}

/* ---- send requests ----------------------------------------------------- */

tp_txreq *tp_txreq_new(tp_ctx *ctx, int peer, tp_req_kind kind, size_t payload_len)
{
    bool inline_buf = payload_len <= TP_INLINE_MAX;
    tp_txreq *req = calloc(1, sizeof *req + (inline_buf ? payload_len : 0));
    if (!req) return NULL;
    req->ctx = ctx;
    req->peer = peer;
    req->kind = kind;
    req->len = payload_len;
    req->inline_buf = inline_buf;
    if (payload_len == 0) {
        req->buf = NULL;
    } else if (inline_buf) {
        req->buf = req + 1;
    } else if (!(req->buf = tp_buf_get(ctx, payload_len, &req->buf_cap))) {
        free(req);
        return NULL;
    }
    return req;
}

void tp_txreq_link(tp_txreq *req)
{
    tp_link_state *l = &req->ctx->links[req->peer];
    req->prev = NULL;
    req->next = l->reqs;
    if (l->reqs) l->reqs->prev = req;
    l->reqs = req;
    l->inflight_bytes += req->len;
    req->linked = true;
}

static void tp_txreq_unlink(tp_txreq *req)
{
    if (!req->linked) return;
    tp_link_state *l = &req->ctx->links[req->peer];
    if (req->prev) req->prev->next = req->next;
    else l->reqs = req->next;
    if (req->next) req->next->prev = req->prev;
    l->inflight_bytes -= req->len;
    req->linked = false;
}

void tp_txreq_release(tp_txreq *req)
{
    tp_txreq_unlink(req);
    if (req->ucx) ucp_request_free(req->ucx);
    if (!req->inline_buf && !req->borrowed) tp_buf_put(req->ctx, req->buf, req->buf_cap);
    free(req);
}

void tp_txreq_send_cb(void *request, ucs_status_t status, void *user_data)
{
    (void)request;
    tp_txreq *req = user_data;
    req->done = true;
    req->status = status;
    if (status != UCS_OK && status != UCS_ERR_CANCELED)
        MR_DEBUG("tp: request to rank %d completed with %s", req->peer, ucs_status_string(status));
    if (req->posting || req->kind == TP_REQ_FLUSH) return; /* the poster / waiter releases it */
    tp_txreq_release(req);
}

void tp_orphan_add(tp_ctx *ctx, void *ptr)
{
    if (!ptr) return;
    tp_orphan *o = malloc(sizeof *o);
    if (!o) return; /* leak rather than free memory UCX may still write */
    o->ptr = ptr;
    o->next = ctx->orphans;
    ctx->orphans = o;
}

/* Peer declared dead: never wait for its requests again. */
void tp_abandon_requests(tp_ctx *ctx, int peer)
{
    tp_link_state *l = &ctx->links[peer];
    while (l->reqs) {
        tp_txreq *req = l->reqs;
        tp_txreq_unlink(req);
        if (req->ucx) ucp_request_free(req->ucx); /* no callback after this */
        req->ucx = NULL;
        if (req->kind == TP_REQ_FLUSH) { /* tp_flush is waiting on it: it releases */
            req->done = true;
            req->status = UCS_ERR_CONNECTION_RESET;
            continue;
        }
        if (req->borrowed) { /* the caller's memory: nothing of ours to keep */
            free(req);
        } else if (req->inline_buf) {
            tp_orphan_add(ctx, req);
        } else {
            tp_orphan_add(ctx, req->buf);
            free(req);
        }
    }
}

mr_status tp_am_post(tp_ctx *ctx, int dst, uint16_t type, tp_txreq *req)
{
    tp_link_state *l = &ctx->links[dst];
    if (!l->ep) {
        tp_txreq_release(req);
        return mr_fail(MR_EPEER, "tp: rank %d: endpoint to rank %d is closed", ctx->rank, dst);
    }
    req->hdr = (tp_am_hdr){.magic = TP_HDR_MAGIC, .src = ctx->rank, .type = type, .seq = l->tx_seq++};
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb = {.send = tp_txreq_send_cb},
        .user_data = req,
        .datatype = ucp_dt_make_contig(1),
    };
    req->posting = true;
    ucs_status_ptr_t p = ucp_am_send_nbx(l->ep, TP_AM_ID, &req->hdr, sizeof req->hdr, req->buf,
                                         req->len, &param);
    req->posting = false;
    if (p == NULL) {
        tp_txreq_release(req);
        return MR_OK;
    }
    if (UCS_PTR_IS_ERR(p)) {
        ucs_status_t s = UCS_PTR_STATUS(p);
        tp_txreq_release(req);
        return mr_fail(MR_EPEER, "tp: send of type %u to rank %d failed: %s", type, dst,
                       ucs_status_string(s));
    }
    req->ucx = p;
    if (req->done) { /* completed while posting */
        tp_txreq_release(req);
        return MR_OK;
    }
    tp_txreq_link(req);
    return MR_OK;
}

/* ---- receive queue ----------------------------------------------------- */

static void tp_rx_append(tp_ctx *ctx, tp_rx *rx)
{
    rx->ctx = ctx;
    rx->next = NULL;
    rx->prev = ctx->rx_tail;
    if (ctx->rx_tail) ctx->rx_tail->next = rx;
    else ctx->rx_head = rx;
    ctx->rx_tail = rx;
}

static void tp_rx_remove(tp_ctx *ctx, tp_rx *rx)
{
    if (rx->prev) rx->prev->next = rx->next;
    else ctx->rx_head = rx->next;
    if (rx->next) rx->next->prev = rx->prev;
    else ctx->rx_tail = rx->prev;
}

void tp_rx_push_ready(tp_ctx *ctx, int src, uint16_t type, void *data, size_t len)
{
    tp_rx *rx = calloc(1, sizeof *rx);
    if (!rx) {
        MR_ERROR("tp: out of memory queueing a type %u message from rank %d", type, src);
        free(data);
        return;
    }
    rx->src = src;
    rx->type = type;
    rx->data = data;
    rx->len = len;
    rx->ready = true;
    tp_rx_append(ctx, rx);
}

static void tp_rx_count(tp_ctx *ctx, const tp_rx *rx)
{
    tp_link_stats *s = &ctx->links[rx->src].stats;
    s->msgs_recv++;
    s->bytes_recv += rx->len;
}

static void tp_rx_recv_cb(void *request, ucs_status_t status, size_t length, void *user_data)
{
    tp_rx *rx = user_data;
    if (status == UCS_OK && length == rx->len) {
        rx->ready = true;
        tp_rx_count(rx->ctx, rx);
    } else {
        MR_WARN("tp: receiving a %zu-byte message from rank %d failed: %s (got %zu B)", rx->len,
                rx->src, ucs_status_string(status), length);
        rx->failed = true;
    }
    if (rx->posting) return; /* the poster frees the request */
    ucp_request_free(request);
    rx->ucx = NULL;
}

/* Start receiving a rendezvous message into a new buffer, from the AM
 * callback as UCX's own perftest does. Returns what the callback returns:
 * UCS_INPROGRESS once UCX owns desc (even if the receive failed: rx is then
 * marked failed and dropped at the next scan), UCS_ERR_NO_MEMORY if no buffer
 * (desc untouched: UCX drops it and fails the sender's request). */
static ucs_status_t tp_rx_start(tp_ctx *ctx, tp_rx *rx, void *desc)
{
    size_t cap;
    if (!(rx->data = tp_buf_get(ctx, rx->len, &cap))) {
        MR_ERROR("tp: out of memory for a %zu-byte message from rank %d: dropped", rx->len, rx->src);
        return UCS_ERR_NO_MEMORY;
    }
    ucp_request_param_t param = {
        .op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                        UCP_OP_ATTR_FIELD_DATATYPE,
        .cb = {.recv_am = tp_rx_recv_cb},
        .user_data = rx,
        .datatype = ucp_dt_make_contig(1),
    };
    rx->posting = true;
    ucs_status_ptr_t p = ucp_am_recv_data_nbx(ctx->worker, desc, rx->data, rx->len, &param);
    rx->posting = false;
    if (p == NULL) {
        rx->ready = true;
        tp_rx_count(ctx, rx);
    } else if (UCS_PTR_IS_ERR(p)) {
        MR_WARN("tp: receiving a %zu-byte message from rank %d failed to start: %s", rx->len, rx->src,
                ucs_status_string(UCS_PTR_STATUS(p)));
        rx->failed = true;
    } else if (rx->ready || rx->failed) {
        ucp_request_free(p); /* completed while posting */
    } else {
        rx->ucx = p;
    }
    return UCS_INPROGRESS;
}

ucs_status_t tp_am_recv_cb(void *arg, const void *header, size_t header_length, void *data,
                           size_t length, const ucp_am_recv_param_t *param)
{
    tp_ctx *ctx = arg;
    bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    tp_am_hdr h;
    if (header_length != sizeof h) {
        MR_WARN("tp: dropped a message with a %zu-byte header (want %zu)", header_length, sizeof h);
        return UCS_OK;
    }
    memcpy(&h, header, sizeof h);
    if (h.magic != TP_HDR_MAGIC || h.src < 0 || h.src >= ctx->size || h.src == ctx->rank) {
        MR_WARN("tp: dropped a message with a bad header (magic 0x%08x, src %d)", h.magic, h.src);
        return UCS_OK;
    }
    tp_link_state *l = &ctx->links[h.src];
    if (l->phase == TP_LINK_DEAD) return UCS_OK; /* we cut it off; it will notice */
    l->last_heard = mr_now();
    l->heard = true;
    if (h.seq != l->rx_seq)
        MR_WARN("tp: message %u from rank %d arrived when %u was expected", h.seq, h.src, l->rx_seq);
    l->rx_seq = h.seq + 1;

    switch (h.type) {
    case TP_MSG_HEARTBEAT: return UCS_OK;
    case TP_MSG_FIN:
        l->fin_recvd = true;
        ctx->pending_events = true;
        return UCS_OK;
    case TP_MSG_FINACK: l->finack_recvd = true; return UCS_OK;
    default: break;
    }
    if (h.type < TP_MSG_APP_MIN) {
        MR_WARN("tp: dropped a message of reserved type %u from rank %d", h.type, h.src);
        return UCS_OK;
    }
    if (l->phase != TP_LINK_ALIVE) return UCS_OK; /* after its FIN: nothing more expected */
    if (length > ctx->opts.max_frame_bytes) {
        l->stats.frames_rejected++;
        MR_WARN("tp: dropped a %zu-byte message (type %u) from rank %d: over max_frame_bytes %zu",
                length, h.type, h.src, ctx->opts.max_frame_bytes);
        return rndv ? UCS_ERR_MESSAGE_TRUNCATED : UCS_OK;
    }
    tp_rx *rx = calloc(1, sizeof *rx);
    if (!rx) goto nomem;
    rx->src = h.src;
    rx->type = h.type;
    rx->len = length;
    if (rndv) {
        tp_rx_append(ctx, rx);
        ucs_status_t s = tp_rx_start(ctx, rx, data);
        if (s != UCS_INPROGRESS) {
            tp_rx_remove(ctx, rx);
            free(rx);
        }
        return s;
    }
    if (length) {
        if (!(rx->data = malloc(length))) {
            free(rx);
            goto nomem;
        }
        memcpy(rx->data, data, length);
    }
    rx->ready = true;
    tp_rx_count(ctx, rx);
    tp_rx_append(ctx, rx);
    return UCS_OK;
nomem:
    MR_ERROR("tp: out of memory receiving a %zu-byte message from rank %d: dropped", length, h.src);
    return rndv ? UCS_ERR_NO_MEMORY : UCS_OK;
}

static void tp_rx_drop(tp_ctx *ctx, tp_rx *rx)
{
    tp_rx_remove(ctx, rx);
    if (rx->ucx) { /* still in flight: UCX may write into data later */
        ucp_request_free(rx->ucx);
        tp_orphan_add(ctx, rx->data);
    } else {
        free(rx->data);
    }
    free(rx);
}

/* Pending receives from a dead peer will never complete (or may, late). */
void tp_rx_abandon_from(tp_ctx *ctx, int src)
{
    for (tp_rx *rx = ctx->rx_head, *next; rx; rx = next) {
        next = rx->next;
        if (rx->src == src && !rx->ready) tp_rx_drop(ctx, rx);
    }
}

void tp_rx_free_all(tp_ctx *ctx)
{
    while (ctx->rx_head) tp_rx_drop(ctx, ctx->rx_head);
}

/* First deliverable entry: ready, and no earlier unfinished entry from the
 * same peer (per-peer order). Failed entries are dropped on the way. */
static tp_rx *tp_rx_find(tp_ctx *ctx)
{
    if (++ctx->scan_gen == 0) {
        memset(ctx->scan_mark, 0, (size_t)ctx->size * sizeof *ctx->scan_mark);
        ctx->scan_gen = 1;
    }
    for (tp_rx *rx = ctx->rx_head, *next; rx; rx = next) {
        next = rx->next;
        if (rx->failed) {
            tp_rx_drop(ctx, rx);
            continue;
        }
        if (!rx->ready) {
            ctx->scan_mark[rx->src] = ctx->scan_gen;
            continue;
        }
        if (ctx->scan_mark[rx->src] != ctx->scan_gen) return rx;
    }
    return NULL;
}

bool tp_rx_has_deliverable(tp_ctx *ctx)
{
    return tp_rx_find(ctx) != NULL;
}

bool tp_poll(tp_ctx *ctx, tp_msg *out)
{
    tp_progress(ctx);
    tp_rx *rx = tp_rx_find(ctx);
    if (!rx) return false;
    tp_rx_remove(ctx, rx);
    *out = (tp_msg){.src = rx->src, .type = rx->type, .data = rx->data, .len = rx->len};
    free(rx);
    return true;
}

void tp_msg_free(tp_msg *msg)
{
    if (!msg) return;
    free(msg->data);
    *msg = (tp_msg){.src = -1};
}

void tp_msg_release(tp_ctx *ctx, tp_msg *msg)
{
    if (!msg) return;
    tp_buf_put(ctx, msg->data, msg->len); /* big buffers are kept, small ones freed */
    *msg = (tp_msg){.src = -1};
}

/* ---- sending ------------------------------------------------------------ */

typedef struct {
    int peer;
    uint64_t limit;
} tp_drain_arg;

static bool tp_drained_below(tp_ctx *ctx, void *arg)
{
    const tp_drain_arg *a = arg;
    return ctx->links[a->peer].inflight_bytes <= a->limit;
}

static mr_status tp_send_check(tp_ctx *ctx, int dst, uint16_t type, size_t len)
{
    if (dst < 0 || dst >= ctx->size || dst == ctx->rank)
        return mr_fail(MR_EINVAL, "tp_send: rank %d: bad destination rank %d (size %d)", ctx->rank,
                       dst, ctx->size);
    if (type < TP_MSG_APP_MIN)
        return mr_fail(MR_EINVAL, "tp_send: type %u is reserved (< %d)", type, TP_MSG_APP_MIN);
    if (len > ctx->opts.max_frame_bytes)
        return mr_fail(MR_EINVAL, "tp_send: %zu-byte message to rank %d exceeds max_frame_bytes %zu",
                       len, dst, ctx->opts.max_frame_bytes);
    tp_link_state *l = &ctx->links[dst];
    if (l->phase != TP_LINK_ALIVE)
        return mr_fail(MR_EPEER, "tp_send: rank %d is %s", dst,
                       l->phase == TP_LINK_DEAD ? "dead" : "gone (FIN)");
    if (l->inflight_bytes && l->inflight_bytes + len > TP_MAX_INFLIGHT_BYTES) {
        tp_drain_arg a = {.peer = dst,
                          .limit = len >= TP_MAX_INFLIGHT_BYTES ? 0 : TP_MAX_INFLIGHT_BYTES - len};
        MR_TRY(tp_wait_until(ctx, tp_drained_below, &a, dst, 1e300));
    }
    return MR_OK;
}

static mr_status tp_send_post(tp_ctx *ctx, int dst, uint16_t type, tp_txreq *req)
{
    size_t len = req->len; /* tp_am_post consumes req */
    MR_TRY(tp_am_post(ctx, dst, type, req));
    tp_link_stats *s = &ctx->links[dst].stats;
    s->msgs_sent++;
    s->bytes_sent += len;
    tp_progress(ctx);
    return MR_OK;
}

mr_status tp_send2(tp_ctx *ctx, int dst, uint16_t type, const void *hdr, size_t hdr_len,
                   const void *body, size_t body_len)
{
    if ((hdr_len && !hdr) || (body_len && !body))
        return mr_fail(MR_EINVAL, "tp_send: NULL buffer with nonzero length");
    size_t len = hdr_len + body_len;
    if (len < hdr_len) return mr_fail(MR_EINVAL, "tp_send: length overflow");
    MR_TRY(tp_send_check(ctx, dst, type, len));
    tp_txreq *req = tp_txreq_new(ctx, dst, TP_REQ_SEND, len);
    if (!req) return mr_fail(MR_ENOMEM, "tp_send: out of memory copying %zu bytes for rank %d", len, dst);
    if (hdr_len) memcpy(req->buf, hdr, hdr_len);
    if (body_len) memcpy((char *)req->buf + hdr_len, body, body_len);
    return tp_send_post(ctx, dst, type, req);
}

mr_status tp_send(tp_ctx *ctx, int dst, uint16_t type, const void *data, size_t len)
{
    return tp_send2(ctx, dst, type, data, len, NULL, 0);
}

mr_status tp_send_nocopy(tp_ctx *ctx, int dst, uint16_t type, const void *data, size_t len)
{
    if (len && !data) return mr_fail(MR_EINVAL, "tp_send_nocopy: NULL buffer with nonzero length");
    MR_TRY(tp_send_check(ctx, dst, type, len));
    tp_txreq *req = tp_txreq_new(ctx, dst, TP_REQ_SEND, 0);
    if (!req) return mr_fail(MR_ENOMEM, "tp_send_nocopy: out of memory");
    req->buf = (void *)data; /* borrowed: UCX reads it until the send completes */
    req->len = len;
    req->borrowed = true;
    return tp_send_post(ctx, dst, type, req);
}
