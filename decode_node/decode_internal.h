/* decode_node/decode_internal.h — state shared by the decode role's files:
 * decode.c (request life, continuous batching), setup.c (model, KV pool,
 * RMA registration), remote_moe.c (routed experts over the transport). */
#ifndef MR_DECODE_INTERNAL_H
#define MR_DECODE_INTERNAL_H

#include "common/npy.h"
#include "model/engine.h"
#include "model/kv_store.h"
#include "model/sampler.h"
#include "runtime/placement.h"
#include "runtime/role.h"
#include "runtime/route_pairs.h"

typedef enum {
    REQ_WAITING_KV,   /* admitted, waiting for free KV blocks (FIFO) */
    REQ_PREFILLING,   /* blocks granted, prefill rank working */
    REQ_RUNNING       /* in the continuous batch */
} dec_req_state;

typedef struct dec_req {
    char *id;
    Moerun__Request *request;  /* until it is forwarded in the KvGrant */
    dec_req_state state;
    int prompt_len;
    int max_new_tokens;
    bool ignore_eos;
    bool want_logits;
    int prefill_rank;
    mr_kv_seq seq;
    mr_sampler sampler;
    int n_generated;
    int32_t last_token;
    mr_npy_writer logits;      /* --logits-dir */
} dec_req;

typedef struct decode_state {
    mr_role role;
    mr_engine *engine;
    mr_kv_store kv;           /* pool in the backend; host image = pool_mem (put target) */
    mr_kv_pool *pool;         /* kv.pool */
    tp_mem *pool_mem;
    mr_placement placement;
    bool *alive;               /* by rank */
    mr_moe_exec moe;
    uint64_t step;
    double moe_wait_s;         /* this step's time in remote MoE exchanges */

    dec_req **reqs;            /* admission order; NULL holes */
    int n_reqs, cap_reqs;

    /* per-step batch buffers (max_running) */
    dec_req **batch_reqs;
    int32_t *batch_ids, *batch_pos;
    int32_t *batch_next;       /* steps sampled on the backend: the next token of each */
    mr_sample_row *batch_draws; /* ... and each request's sampler draw */
    mr_kv_seq **batch_seqs;
    float *logits;

    /* remote MoE scratch */
    int32_t *route;            /* (slots) destination rank */
    int32_t *slot_scratch;     /* (2 * slots) host */
    int *rows_per_rank;        /* (ranks) */
    uint8_t **send_bufs;       /* (ranks) */
    mr_kbuf h_host, out_host;  /* staging for UCX destinations (non-host backends) */
    /* --route-plane nccl: pairs with expert ranks (runtime/route_pairs.h) */
    mr_route_pairs pairs;
    mr_kbuf *pair_idx;         /* (ranks) backend: [tokens | slots] of the rows sent */
    mr_kbuf *pair_send, *pair_recv; /* (ranks) backend: the rows each way */
    bool *pair_posted;         /* (ranks) a group is posted on that pair this layer */
    int *pair_ranks;           /* (ranks) scratch */
} decode_state;

mr_status dec_setup(decode_state *d);
void dec_teardown(decode_state *d);
mr_status dec_add_req(decode_state *d, dec_req *q);

/* The mr_moe_exec that ships routed tokens to expert ranks. */
mr_status dec_remote_moe(void *ctx, int layer, const float *h, int n_tokens,
                         const int32_t *expert_ids, const float *weights, float *expert_out);

#endif
