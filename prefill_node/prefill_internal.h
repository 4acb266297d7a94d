/* prefill_node/prefill_internal.h — state shared by the prefill role's files:
 * prefill.c (queue, chunked batching, KV hand-off to decode), ep_moe.c
 * (wide expert parallelism among the prefill ranks) and ep_plane.c (how the
 * EP rows move: UCX or NCCL). */
#ifndef MR_PREFILL_INTERNAL_H
#define MR_PREFILL_INTERNAL_H

#include "common/npy.h"
#include "model/engine.h"
#include "model/kv_store.h"
#include "runtime/role.h"
#include "transport/nccl_plane.h"

typedef struct pf_req {
    char *id;
    Moerun__Request *request;
    int decode_rank;
    int32_t *grant;            /* decode-side block ids */
    int n_grant;
    int prompt_len;
    int done;                  /* prompt tokens already prefilled */
    bool started;              /* local KV reserved */
    mr_kv_seq seq;             /* local KV */
    mr_npy_writer logits;      /* --logits-dir */
    double t_enqueued;
} pf_req;

typedef struct pf_decode_pool {
    bool known;
    tp_rkey *rkey;
    uint64_t block_bytes;
    int n_blocks;
} pf_decode_pool;

typedef struct prefill_state {
    mr_role role;
    mr_engine *engine;
    mr_kv_store kv;           /* KV pool in the backend + host image for puts */
    mr_kv_pool *pool;         /* kv.pool */
    pf_decode_pool *decode_pools;   /* by rank */
    pf_req **queue;                 /* FIFO */
    int n_queue, cap_queue;

    /* wide EP among prefill ranks */
    int *prefill_ranks;
    int n_prefill;
    int my_index;
    uint64_t iter;                  /* iterations completed by every prefill rank */
    mr_msgq ep_pending;             /* EP messages not consumed yet */
    mr_moe_exec moe;                /* rows stay in backend memory */
    double ep_wait_s;
    bool ep_broken;                 /* a prefill peer died (or NCCL failed): EP cannot continue */
    mr_kbuf ep_rows, ep_idx;        /* backend: one layer's rows out/in/answers, gather indices */
    mr_kbuf ep_stage;               /* host staging of the UCX plane (non-host backends) */
    np_plane *nccl;                 /* the NCCL plane (--ep-plane nccl), else NULL */

    /* batch buffers (max_batch_tokens) */
    int32_t *ids, *pos;
    mr_kv_seq **seqs;
    uint8_t *want;
    float *logits;
} prefill_state;

/* Expert e lives on prefill_ranks[e % n_prefill]. */
static inline int pf_expert_owner(const prefill_state *p, int expert)
{
    return p->prefill_ranks[expert % p->n_prefill];
}

mr_status pf_ep_moe(void *ctx, int layer, const float *h, int n_tokens,
                    const int32_t *expert_ids, const float *weights, float *expert_out);
/* Does a peer's EP traffic ask us to join iteration iter+1? */
bool pf_ep_join_needed(const prefill_state *p);
/* A received MSG_EP_ROUTE / MSG_EP_ROWS is well-formed for this model. */
bool pf_ep_message_valid(const prefill_state *p, const tp_msg *m);
/* Find (or wait for) the EP message of `kind` from rank `src` for (seq,
 * layer[, phase for MSG_EP_ROWS]); other messages are kept for later. Fails
 * on a dead prefill peer (EP is then broken) or after 2 heartbeat timeouts. */
mr_status pf_ep_await(prefill_state *p, int kind, int src, uint64_t seq, int layer, int phase,
                      tp_msg *out);

#endif
