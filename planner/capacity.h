/* planner/capacity.h — `moerun plan capacity`: how many prefill and decode
 * nodes a request trace needs at a TTFT / TPOT target, for a model config
 * (real shapes from config.json) on a GPU profile (spec-sheet numbers).
 *
 * Pure logic, no I/O: the trace and JSON readers are planner/trace.h and
 * hw_profiles.c; printing is cli/cmd_plan_capacity.c and, for the decode
 * layout section, capacity_report.h. The caller owns every buffer;
 * the simulation allocates its own scratch and frees it before returning.
 * Thread-compatible (no globals).
 *
 * Units: bytes, FLOPs and seconds inside the model (functions named *_s);
 * milliseconds in results (*_ms); throughput in tokens per second.
 *
 * The model (deliberately simple; every number below is in the output):
 *  - Cost of one forward pass on one GPU = sum over layers of
 *      max( HBM bytes / (HBM bandwidth · eff),
 *           (GEMM FLOPs / peak(weight dtype) + BF16 FLOPs / peak(bf16)) / eff,
 *           all-to-all bytes / (link bandwidth · link_eff) )
 *    plus the lm_head. Communication overlaps compute (DeepSeek's two
 *    micro-batches); NVLink and scale-out run in parallel. No launch or
 *    message latency, no activation traffic, no prefix cache, no MTP.
 *  - Bytes and FLOPs come from the config: MLA (q_lora or direct q, kv_lora,
 *    rope, per-head nope/v), dense SwiGLU for layers < first_k_dense_replace,
 *    MoE layers = router (bf16) + shared experts + routed experts. Linear
 *    weights are fp8 (1 byte + one fp32 scale per weight block) or bf16;
 *    router, embedding and lm_head are bf16; the latent KV cache holds
 *    (kv_lora_rank + qk_rope_head_dim) values per token per layer.
 *  - Parallelism (DeepSeek's deployment): attention data-parallel (every
 *    GPU holds all non-expert weights, and its own requests); routed experts
 *    spread over an EP group of G GPUs, ceil(E / G) per GPU; balanced load
 *    (EPLB): every GPU computes K expert rows per token of its own. A GPU
 *    reads a held expert when any of the group's G·T tokens routes to it:
 *    probability 1 − (1 − K/E)^(G·T) (uniform routing; the group touches
 *    E·(1 − (1 − K/E)^(G·T)) distinct experts).
 *  - All-to-all per MoE layer: each token copy is D values dispatched in the
 *    weight dtype and D bf16 values combined. Decode (DeepEP low-latency
 *    style): K copies per token, to each GPU of the group with equal chance;
 *    the ones on other nodes cross the scale-out network. Prefill (DeepEP
 *    normal style): a token crosses the network once per remote node that
 *    holds one of its experts, (n−1)·(1 − (1 − 1/n)^K) nodes expected of n;
 *    every copy that leaves its GPU crosses NVLink once. Prefill also sends
 *    every prompt token's latent KV row of the layer to its decode node over
 *    the same network (kv_lora + rope values in the KV dtype).
 *  - Attention: decode is MLA absorbed into the latent (per token:
 *    H·ctx·(4·kv_lora + 2·rope) bf16 FLOPs and ctx latent rows read);
 *    prefill expands K/V per head (2·H·ctx·(nope + rope + v_head) FLOPs per
 *    token; ctx = position + 1, causal).
 *  - Prefill: a discrete-event simulation of the trace's arrivals (times
 *    divided by rate_scale) over the prefill GPUs: one FIFO queue; a free GPU
 *    takes up to prefill_chunk_tokens prompt tokens (first the rest of the
 *    request it is in the middle of, then new requests from the queue head;
 *    a request stays on the GPU that started it); a chunk takes the cost
 *    model's time. TTFT = end of the request's last chunk − arrival (the
 *    KV transfer's bandwidth is in the chunk's network term; no first
 *    decode step). A GPU's EP peers are assumed to be as
 *    busy as itself (lockstep, balanced), which overstates a lone request's
 *    expert FLOPs and so is conservative.
 *  - Decode: output tokens per second demanded = arrival rate × mean output
 *    length; each GPU runs the batch b at which b / step_time(b) meets its
 *    share (Little's law: concurrency = rate × mean output × TPOT). Every
 *    sequence has the trace's output-weighted mean context
 *    Σ out·(in + (out+1)/2) / Σ out. TPOT = step_time(b): one number per
 *    batch, compared with the TPOT p90 target. The batch is bounded by
 *    decode_max_batch and by the HBM left after weights (mem_util · HBM −
 *    weights) divided by the KV of one sequence. Decode is sized for the
 *    mean rate; the trace's busiest minute is reported for comparison.
 *  - Search: prefill nodes come in EP groups (prefill_ep_nodes nodes each,
 *    default the smallest power of two whose GPUs hold the weights); decode
 *    nodes form one EP group of all decode nodes (default) or groups of
 *    decode_ep_nodes. The answer is the smallest count meeting the target;
 *    the prefill search assumes TTFT p90 does not grow with more nodes.
 *  - Decode layouts: the decode answer above is "EP on decode" (every decode
 *    GPU runs DP attention and holds a share of the routed experts). It is
 *    compared with attention–FFN disaggregation (AFD): A attention GPUs
 *    (attention nodes × gpus_per_node) run DP attention, the dense layers,
 *    router, shared experts and lm_head, hold every non-expert weight, and
 *    give the rest of mem_util · HBM to KV; X expert GPUs (expert nodes ×
 *    gpus_per_node) hold only routed experts, ceil(E / X) per MoE layer each
 *    (they fit when that is < mem_util · HBM; no KV there). Per MoE layer
 *    every token's K rows cross the scale-out network to the expert GPUs and
 *    back (attention and expert GPUs sit on different nodes: no NVLink): a
 *    copy is D values out in the weight dtype and D bf16 values back, both
 *    added on one link direction as the EP model does. An expert GPU serves
 *    all A·b tokens of a step (b per attention GPU): A·b·K / X rows (EPLB
 *    balanced), and reads a held expert with probability 1 − (1 − K/E)^(A·b).
 *    MoE layer time = max(t_attn + t_experts, t_net): t_attn and t_experts
 *    are max(HBM, math) of an attention GPU (attention + router + shared
 *    expert) and of an expert GPU; t_net is the busier NIC (an attention GPU
 *    sends b·K copies, an expert GPU A·b·K / X). Communication hides behind
 *    compute when shorter (two micro-batches, as assumed for EP), but a
 *    layer's attention and expert compute do not overlap each other (no
 *    ping-pong pipelining of micro-batches across the two tiers is credited:
 *    conservative for AFD). Dense layers and lm_head as in EP. The search
 *    tries expert nodes from the fewest that hold the experts up to
 *    max(64, 4 × that) (and --max-nodes), the fewest attention nodes for
 *    each (exponential then binary search: meeting the target is monotone in
 *    attention nodes), and keeps the fewest total nodes (ties: lower TPOT).
 *    The winner is the layout with fewer total nodes among those that meet
 *    the target; a tie goes to EP on decode (one tier fewer to run).
 */
#ifndef MR_CAPACITY_H
#define MR_CAPACITY_H

#include <stdbool.h>
#include <stddef.h>

#include "../common/status.h"
#include "../model/config.h"

/* DeepSeek's published per-node production figures (H800, V3/R1 inference
 * system overview, 2025): EP32 prefill, EP144 decode, FP8, with MTP and
 * with prefix-cache hits counted as input tokens. */
#define MR_CAP_DEEPSEEK_PREFILL_TOK_S 73.7e3
#define MR_CAP_DEEPSEEK_DECODE_TOK_S 14.8e3
#define MR_CAP_DEEPSEEK_PREFILL_EP 32
#define MR_CAP_DEEPSEEK_DECODE_EP 144

#define MR_CAP_ROWS 5 /* candidate rows reported around each answer */

/* One GPU model. Spec-sheet numbers; see hw_profiles.c. */
typedef struct mr_cap_hw {
    char name[32];
    double hbm_bytes;          /* HBM capacity per GPU */
    double hbm_bytes_per_s;    /* HBM bandwidth per GPU */
    double bf16_flops_per_s;   /* dense (no sparsity) BF16 tensor-core peak per GPU */
    double fp8_flops_per_s;    /* dense FP8 tensor-core peak per GPU */
    double nvlink_bytes_per_s; /* NVLink per GPU, one direction */
    double net_bytes_per_s;    /* scale-out (IB/RoCE) per GPU, one direction */
    int gpus_per_node;
} mr_cap_hw;

/* How the model is deployed. */
typedef struct mr_cap_deploy {
    int weight_bytes;         /* linear weights: 1 = fp8 e4m3 (+ block scales), 2 = bf16 */
    int kv_bytes;             /* per latent KV value: 2 = bf16, 1 = fp8 */
    double efficiency;        /* achieved fraction of HBM bandwidth and tensor peak, (0, 1] */
    double link_efficiency;   /* achieved fraction of NVLink and scale-out bandwidth, (0, 1] */
    double mem_util;          /* fraction of HBM for weights + KV, (0, 1] */
    int prefill_chunk_tokens; /* prompt tokens per prefill forward per GPU */
    int decode_max_batch;     /* sequences per decode GPU */
    int prefill_ep_nodes;     /* nodes per prefill EP group; 0 = auto */
    int decode_ep_nodes;      /* nodes per decode EP group; 0 = all decode nodes */
    int max_nodes;            /* search limit per role */
} mr_cap_deploy;

typedef struct mr_cap_model {
    const mr_config *cfg;
    mr_cap_hw hw;
    mr_cap_deploy dep;
} mr_cap_model;

/* One request of a trace; arrivals non-decreasing, seconds from the start. */
typedef struct mr_cap_request {
    double arrival_s;
    int input_tokens;  /* >= 1 */
    int output_tokens; /* >= 0 */
} mr_cap_request;

/* ---- hardware profiles (hw_profiles.c) ---------------------------------- */

#define MR_CAP_HW_NAMES "h800|h20|h100|h200"

/* Built-in profile by name (case-insensitive); MR_EINVAL names the choices. */
mr_status mr_cap_hw_profile(const char *name, mr_cap_hw *out);
/* Override fields of *hw from JSON text: {"name", "hbm_gb", "hbm_tb_s",
 * "bf16_tflops", "fp8_tflops", "nvlink_gb_s", "net_gb_s", "gpus_per_node"}
 * (GB = 1e9 bytes, dense TFLOP/s, GB/s one direction); any subset; unknown
 * keys and non-positive values are errors naming origin and key. */
mr_status mr_cap_hw_apply_json(const char *text, size_t len, const char *origin, mr_cap_hw *hw);
/* Efficiency from `moerun bench layer --json` output: the median over rows
 * of moe_roofline_ms / moe_layer_ms (rows with both > 0), capped at 1.
 * *n_rows: rows used; device: its "device" string ("" when absent),
 * truncated to device_cap bytes. */
mr_status mr_cap_calibration_parse(const char *text, size_t len, const char *origin,
                                   double *efficiency, int *n_rows, char *device,
                                   size_t device_cap);

/* ---- cost model ----------------------------------------------------------- */

typedef enum { MR_CAP_PREFILL, MR_CAP_DECODE } mr_cap_phase;

/* One forward pass on one GPU (each of the EP group's GPUs runs the same). */
typedef struct mr_cap_batch {
    mr_cap_phase phase;
    double tokens;      /* query tokens (decode: sequences) */
    double attn_pairs;  /* sum over the tokens of the positions each attends to */
    double kv_rows;     /* latent KV rows read or written, per layer */
    double logits_rows; /* rows through lm_head */
} mr_cap_batch;

/* What one layer (or the head) costs one GPU. */
typedef struct mr_cap_work {
    double hbm_bytes;    /* weights read + latent KV rows */
    double gemm_flops;   /* GEMMs in the weight dtype (fp8 or bf16) */
    double bf16_flops;   /* always bf16: attention core, router, lm_head */
    double nvlink_bytes; /* all-to-all bytes this GPU sends over NVLink */
    double net_bytes;    /* ... over the scale-out network */
} mr_cap_work;

void mr_cap_deploy_defaults(const mr_config *cfg, mr_cap_deploy *out);
/* Parameters of one layer's attention (MLA projections, no norms). */
double mr_cap_attn_params(const mr_config *cfg);
/* Layer `moe` (else dense) on one GPU of an EP group of ep_gpus GPUs. */
void mr_cap_layer_work(const mr_cap_model *m, int ep_gpus, bool moe, const mr_cap_batch *b,
                       mr_cap_work *out);
/* Final lm_head (bf16 V×D); nothing when b->logits_rows == 0. */
void mr_cap_head_work(const mr_cap_model *m, const mr_cap_batch *b, mr_cap_work *out);
/* The roofline's terms of one work item, seconds. */
typedef struct mr_cap_terms {
    double hbm_s, math_s, nvlink_s, net_s;
} mr_cap_terms;

void mr_cap_work_terms(const mr_cap_model *m, const mr_cap_work *w, mr_cap_terms *out);
/* Roofline time of w: max(bytes, FLOPs, links) as in the contract above. */
double mr_cap_work_s(const mr_cap_model *m, const mr_cap_work *w);
/* Every layer + head. */
double mr_cap_forward_s(const mr_cap_model *m, int ep_gpus, const mr_cap_batch *b);

/* Bytes of weights one GPU holds in an EP group of ep_gpus GPUs. */
double mr_cap_weight_bytes_per_gpu(const mr_cap_model *m, int ep_gpus);
/* Latent KV bytes of one token over all layers. */
double mr_cap_kv_bytes_per_token(const mr_cap_model *m);
/* Sequences of `context` tokens whose KV fits beside the weights on one GPU
 * (mem_util · HBM − weights); 0 when the weights alone do not fit. */
double mr_cap_kv_batch_limit(const mr_cap_model *m, int ep_gpus, double context);

/* Decode step of `batch` sequences of `context` tokens on one GPU. */
double mr_cap_decode_step_s(const mr_cap_model *m, int ep_gpus, double batch, double context);
/* Largest integer batch per GPU (<= decode_max_batch and the KV limit) whose
 * step meets tpot_ms; 0 if none. *node_tok_s: output tok/s of a node at it. */
int mr_cap_decode_capacity(const mr_cap_model *m, int ep_gpus, double context, double tpot_ms,
                           double *node_tok_s);
/* Prefill throughput of a node (input tok/s) running full chunks of
 * prompts of mean_input tokens. */
double mr_cap_prefill_node_tok_s(const mr_cap_model *m, int ep_gpus, double mean_input);
/* Smallest power-of-two node count (<= 64) whose EP group holds the
 * weights; MR_EINVAL (naming the bytes) when none does. */
mr_status mr_cap_min_ep_nodes(const mr_cap_model *m, int *nodes);

/* ---- attention-FFN disaggregation: costs (capacity.c) --------------------- */

/* Bytes one token moves over the network per MoE layer: K copies of D
 * values dispatched in the weight dtype plus D bf16 values combined. */
double mr_cap_afd_net_bytes_per_token(const mr_cap_model *m);
/* Layer `moe` (else dense) of a decode or prefill batch b of one attention
 * GPU, with attn_gpus attention GPUs (each with batch b) and expert_gpus
 * expert GPUs: *attn is what one attention GPU does (dense layers: all of
 * it), *experts what one expert GPU does (zero for dense layers). */
void mr_cap_afd_layer_work(const mr_cap_model *m, int attn_gpus, int expert_gpus, bool moe,
                           const mr_cap_batch *b, mr_cap_work *attn, mr_cap_work *experts);
/* Weights an attention GPU holds: everything but the routed experts. */
double mr_cap_afd_attn_weight_bytes(const mr_cap_model *m);
/* Routed-expert weights an expert GPU holds with expert_gpus of them. */
double mr_cap_afd_expert_weight_bytes(const mr_cap_model *m, int expert_gpus);

/* ---- trace, simulation, search ------------------------------------------- */

typedef struct mr_cap_trace_stats {
    int n_requests;
    double duration_s;       /* (last − first arrival) / rate_scale, at least 1 s */
    double req_per_s;
    double mean_input, mean_output;
    double input_tok_s, output_tok_s; /* demanded */
    double decode_context;   /* output-weighted mean context of a decode step */
    double peak_minute_ratio; /* busiest 60 s window's arrivals / the mean rate's */
} mr_cap_trace_stats;

void mr_cap_trace_stats_compute(const mr_cap_request *reqs, int n, double rate_scale,
                                mr_cap_trace_stats *out);

typedef struct mr_cap_prefill_row {
    int nodes;
    double ttft_p50_ms, ttft_p90_ms, ttft_p99_ms;
    double utilization;    /* GPU busy time / (GPUs × simulated span) */
    double tok_s_per_node; /* input tokens / simulated span / nodes */
    bool meets;            /* ttft_p90_ms <= the target */
} mr_cap_prefill_row;

/* Replay reqs (arrival_s / rate_scale) over nodes prefill nodes in EP groups
 * of `ep_nodes`. Arrivals must be non-decreasing (MR_EINVAL otherwise). */
mr_status mr_cap_prefill_simulate(const mr_cap_model *m, int ep_nodes, const mr_cap_request *reqs,
                                  int n, double rate_scale, int nodes, double ttft_target_ms,
                                  mr_cap_prefill_row *out);

typedef struct mr_cap_decode_row {
    int nodes;
    int ep_gpus;
    double batch_per_gpu; /* sequences per GPU needed for the demanded rate */
    double batch_limit;   /* min(decode_max_batch, KV limit); 0: weights do not fit */
    double tpot_ms;       /* step time at batch_per_gpu (at batch_limit when overloaded) */
    double utilization;   /* demanded output rate / the rate at batch_limit (> 1: overloaded) */
    double tok_s_per_node; /* demanded output tok/s / nodes */
    bool overloaded;      /* even batch_limit cannot deliver the rate */
    bool meets;           /* !overloaded and tpot_ms <= the target */
} mr_cap_decode_row;

mr_status mr_cap_decode_evaluate(const mr_cap_model *m, const mr_cap_trace_stats *t, int nodes,
                                 double tpot_target_ms, mr_cap_decode_row *out);

/* ---- decode layouts: EP on decode vs attention-FFN disaggregation --------
 * (capacity_afd.c; the model is at the top of this header) */

typedef enum { MR_CAP_LAYOUT_NONE, MR_CAP_LAYOUT_EP, MR_CAP_LAYOUT_AFD } mr_cap_layout;

/* What stops the layout from using one node fewer (one attention node fewer
 * for AFD; one expert node fewer when it has a single attention node). */
typedef enum {
    MR_CAP_BIND_WEIGHTS, /* the weights would not fit */
    MR_CAP_BIND_GROUP,   /* EP: already one group of decode_ep_nodes nodes */
    MR_CAP_BIND_KV,      /* overloaded at the KV-memory batch limit (whose step meets TPOT) */
    MR_CAP_BIND_BATCH,   /* overloaded at --decode-max-batch (whose step meets TPOT) */
    /* the TPOT target, through the largest share of that smaller layout's step: */
    MR_CAP_BIND_HBM,
    MR_CAP_BIND_COMPUTE,
    MR_CAP_BIND_NVLINK,
    MR_CAP_BIND_NETWORK
} mr_cap_bind;

/* A decode step's time by resource: every layer's time goes to the term
 * that sets it (an AFD MoE layer's to net_s when the network is the longer,
 * else its attention part and its expert part each to their larger term).
 * The fields add up to the step time; expert_s is the part of hbm_s +
 * math_s spent on AFD expert GPUs. */
typedef struct mr_cap_split {
    double hbm_s, math_s, nvlink_s, net_s;
    double expert_s;
} mr_cap_split;

/* Decode step of the AFD layout: batch sequences of `context` tokens on each
 * of attn_gpus attention GPUs, expert_gpus expert GPUs; split may be NULL. */
double mr_cap_afd_step_s(const mr_cap_model *m, int attn_gpus, int expert_gpus, double batch,
                         double context, mr_cap_split *split);
/* mr_cap_decode_step_s (EP on decode) with its split. */
double mr_cap_decode_step_split(const mr_cap_model *m, int ep_gpus, double batch, double context,
                                mr_cap_split *split);

/* One layout at one size, at the trace's decode demand. */
typedef struct mr_cap_layout_row {
    mr_cap_layout layout;
    int nodes;             /* EP: decode nodes; AFD: attention nodes; 0: none found */
    int expert_nodes;      /* AFD; 0 for EP */
    double batch_per_gpu;  /* sequences per decode (attention) GPU for the demanded rate */
    double batch_limit;    /* min(decode_max_batch, KV memory); 0: the weights do not fit */
    double tpot_ms;        /* step time at batch_per_gpu (batch_limit when overloaded) */
    double utilization;    /* demanded rate / the rate at batch_limit */
    double tok_s_per_node; /* demanded output tok/s / all of the layout's nodes */
    bool overloaded, meets;
    mr_cap_bind binds;     /* answers only */
    mr_cap_split split;    /* the step at batch_per_gpu */
} mr_cap_layout_row;

/* The AFD layout with attn_nodes attention and expert_nodes expert nodes. */
mr_status mr_cap_afd_evaluate(const mr_cap_model *m, const mr_cap_trace_stats *t, int attn_nodes,
                              int expert_nodes, double tpot_target_ms, mr_cap_layout_row *out);

typedef struct mr_cap_layouts {
    mr_cap_layout_row ep;   /* EP on decode at the decode answer; nodes 0: none */
    mr_cap_layout_row afd;  /* the cheapest AFD pair; nodes 0: none in the search */
    mr_cap_layout winner;   /* fewer total nodes of those that meet; tie: EP; NONE: neither */
    double afd_attn_weight_bytes;   /* per attention GPU */
    double afd_expert_weight_bytes; /* per expert GPU at the answer (else at the fewest) */
    double afd_attn_batch_limit;    /* min(decode_max_batch, KV memory) per attention GPU */
    double afd_net_bytes_per_token; /* per MoE layer */
    int afd_min_expert_nodes;       /* fewest expert nodes holding the experts; 0: never */
    int afd_max_expert_nodes;       /* the search's limit */
} mr_cap_layouts;

/* Fill out for the trace's decode demand at tpot_ms: the EP row at
 * ep_nodes (the decode answer, 0 for none; re-evaluated, so a count that
 * misses the target is never the winner) and the AFD search. */
mr_status mr_cap_layouts_compare(const mr_cap_model *m, const mr_cap_trace_stats *t,
                                 double tpot_ms, int ep_nodes, mr_cap_layouts *out);
/* Total nodes of a row (0 when it has none). Names and notes for printing
 * are in capacity_report.h. */
int mr_cap_layout_total_nodes(const mr_cap_layout_row *r);

typedef struct mr_cap_plan {
    mr_cap_trace_stats trace;
    double rate_scale, ttft_p90_ms, tpot_p90_ms;

    int prefill_ep_nodes;
    double prefill_weight_bytes;  /* per GPU */
    double prefill_node_tok_s;    /* capacity: full chunks of mean-length prompts */
    double prefill_idle_p90_ms;   /* TTFT p90 if every request had an idle GPU */
    int prefill_nodes;            /* the answer; 0: none up to max_nodes */
    mr_cap_prefill_row prefill_rows[MR_CAP_ROWS];
    int n_prefill_rows;

    int decode_min_nodes;         /* fewest decode nodes holding the weights */
    double decode_floor_ms;       /* step time at batch 1 in the largest EP group searched */
    int decode_nodes;             /* the answer; 0: none up to max_nodes */
    double decode_weight_bytes;   /* per GPU at the answer */
    int decode_batch_at_slo;      /* largest batch per GPU meeting the TPOT target */
    double decode_node_tok_s;     /* output tok/s per node at that batch */
    mr_cap_decode_row decode_rows[MR_CAP_ROWS];
    int n_decode_rows;

    /* the same per-node figures at DeepSeek's layout (EP32 prefill,
     * EP144 decode); 0 when the weights do not fit there */
    double ref_prefill_node_tok_s;
    double ref_decode_node_tok_s;
    int ref_decode_batch;

    mr_cap_layouts layouts; /* decode layout comparison at the decode answer */
} mr_cap_plan;

/* The whole plan: trace statistics, both searches, candidate rows around
 * each answer, per-node capacities. reqs as for mr_cap_prefill_simulate. */
mr_status mr_cap_plan_run(const mr_cap_model *m, const mr_cap_request *reqs, int n,
                          double rate_scale, double ttft_p90_ms, double tpot_p90_ms,
                          mr_cap_plan *out);

#endif
