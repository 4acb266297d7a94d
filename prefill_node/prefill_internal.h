/* prefill_node/prefill_internal.h — state shared by the prefill role's files:
 * prefill.c (queue, chunked batching, KV hand-off to decode) and ep_moe.c
 * (wide expert parallelism among the prefill ranks). */
#ifndef MR_PREFILL_INTERNAL_H
#define MR_PREFILL_INTERNAL_H

#include "common/npy.h"
#include "model/engine.h"
#include "model/kv_store.h"
#include "runtime/role.h"

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
    mr_moe_exec moe;
    double ep_wait_s;
    bool ep_broken;                 /* a prefill peer died: EP cannot continue */

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

#endif
