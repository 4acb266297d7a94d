/* runtime/role_opts.h — the options every cluster role executable accepts.
 *
 * launch/moerun-cluster passes the same option set to every rank, so one
 * parser validates them all; a role ignores the options it does not use but
 * an unknown flag or a bad value is an error on every rank. Defaults suit a
 * 2-core test machine; production clusters override them on the command line.
 */
#ifndef MR_ROLE_OPTS_H
#define MR_ROLE_OPTS_H

#include "common/status.h"
#include "model/engine.h"

typedef struct mr_role_opts {
    const char *model_dir;        /* NULL = built-in tiny */
    const char *requests_path;    /* coordinator: jsonl; NULL = built-in demo set */
    const char *out_path;         /* coordinator: results jsonl; NULL = stdout */
    const char *summary_path;     /* coordinator: summary json; NULL = stderr table only */
    const char *status_path;      /* coordinator: exit status for the launcher */
    const char *placement_path;   /* expert placement json; NULL = round robin */
    const char *logits_dir;       /* debug: per-request logits .npy */
    mr_attn_mode attn;
    const char *backend;          /* --backend cpu|cuda|devsim (compute roles; kernels/backend.h) */
    bool bf16;                    /* --precision bf16 (bf16 weight matrices; default fp32) */
    mr_wtype kv_dtype;            /* --kv-dtype: latent KV cache rows fp32 (default) or bf16 */
    bool ep_nccl;                 /* --ep-plane nccl: prefill wide-EP rows over NCCL (default ucx) */
    bool route_pairs;             /* --route-plane nccl|test-pairs: decode<->expert pairs */
    bool route_test_pairs;        /* test-pairs: the pairs' rows as UCX messages (test hook) */
    int kv_blocks;                /* decode: blocks in the KV pool */
    int block_tokens;             /* tokens per KV block (all roles must agree) */
    int max_batch_tokens;         /* prefill: token budget per iteration */
    double max_wait_ms;           /* prefill: start a non-full batch after this wait */
    int max_running;              /* decode: running requests per step */
    double heartbeat_period_s;
    double heartbeat_timeout_s;
    double request_timeout_s;     /* coordinator: a request not finished by then fails */
    int inject_garbage;           /* test hook: coordinator sends N bad frames of each kind */
    double rebalance_period_s;    /* coordinator: re-place experts this often; 0 = never */
    int redundant_experts;        /* extra replicas per MoE layer (-1: one per expert rank) */
    double rebalance_min_gain;    /* re-place only when predicted imbalance drops this much */
    double load_report_period_s;  /* expert ranks: LoadReport period */
    int test_load_delay_ms;       /* test hook: expert ranks' background expert loads sleep first */
    int test_startup_delay_ms;    /* test hook: every compute rank's start-up model load sleeps first */
} mr_role_opts;

void mr_role_opts_defaults(mr_role_opts *o);
/* Parse argv[1..]; on error the message names the flag. */
mr_status mr_role_opts_parse(int argc, char **argv, mr_role_opts *o);
/* The option list, for --help. */
const char *mr_role_opts_usage(void);

/* The run's configuration as a JSON object (backend, weight and KV dtypes,
 * EP plane, attention form, pool and batching sizes, re-placement), for the
 * summary; NULL when out of memory. Caller frees it (cJSON_Delete). */
struct cJSON *mr_role_opts_json(const mr_role_opts *o);

#endif
