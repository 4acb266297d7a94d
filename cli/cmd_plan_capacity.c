/* cli/cmd_plan_capacity.c — `moerun plan capacity`: prefill and decode node
 * counts for a request trace at TTFT / TPOT targets: the option parsing and
 * printing side of planner/capacity.h (the model and simulation live there;
 * the options are in cap_usage below; docs/CAPACITY.md explains the output).
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/args.h"
#include "../common/fileio.h"
#include "../model/config.h"
#include "../planner/capacity.h"
#include "../planner/capacity_report.h"
#include "../planner/trace.h"
#include "commands.h"
#include "plan_capacity_svg.h"
#include "mr_build_config.h"

/* ---- moerun plan capacity --------------------------------------------------- */

static int cap_usage(FILE *out, int code)
{
    fprintf(out,
            "usage: moerun plan capacity --config CONFIG.json --gpu %s --trace TRACE\n"
            "                            --ttft-p90-ms MS --tpot-p90-ms MS [options]\n"
            "Prefill and decode node counts for a request trace at TTFT / TPOT p90 targets: a\n"
            "roofline cost model from the config's shapes and the GPU's spec sheet, a discrete-\n"
            "event simulation of prefill, Little's law for decode, and which decode layout\n"
            "needs fewer nodes: EP on decode or separate expert nodes (docs/CAPACITY.md).\n"
            "  --trace FILE             Azure CSV (TIMESTAMP,ContextTokens,GeneratedTokens) or\n"
            "                           Mooncake jsonl (timestamp ms, input_length,\n"
            "                           output_length)\n"
            "  --rate-scale X           multiply the trace's arrival rate (default 1)\n"
            "  --gpu-json FILE          override profile fields: {\"name\", \"hbm_gb\",\n"
            "                           \"hbm_tb_s\", \"bf16_tflops\", \"fp8_tflops\",\n"
            "                           \"nvlink_gb_s\", \"net_gb_s\", \"gpus_per_node\"}\n"
            "                           (GB/s in one direction, dense TFLOP/s)\n"
            "  --weight-dtype fp8|bf16  linear weights (default: fp8 when the config is fp8)\n"
            "  --kv-dtype bf16|fp8      latent KV cache (default bf16)\n"
            "  --efficiency X           achieved fraction of HBM bandwidth and tensor peak (0.6)\n"
            "  --calibrate FILE         efficiency = median moe_roofline_ms / moe_layer_ms of\n"
            "                           `moerun bench layer --json FILE` (not with --efficiency)\n"
            "  --link-efficiency X      achieved fraction of NVLink / network bandwidth (0.8)\n"
            "  --mem-util X             fraction of HBM for weights + KV cache (0.9)\n"
            "  --prefill-chunk N        prompt tokens per prefill forward per GPU (4096)\n"
            "  --decode-max-batch N     sequences per decode GPU (256)\n"
            "  --prefill-ep-nodes N     nodes per prefill EP group (default: fewest that hold\n"
            "                           the weights)\n"
            "  --decode-ep-nodes N      nodes per decode EP group (default: all decode nodes)\n"
            "  --max-nodes N            search limit per role (4096)\n"
            "  --json FILE              write the plan as JSON as well\n"
            "  --svg FILE               plot TTFT vs prefill nodes and TPOT vs decode batch\n"
            "Exit status: 0 plan printed (also when no node count meets a target: it says\n"
            "so); 1 unreadable or malformed input file, or weights that never fit; 2 usage\n"
            "error.\n",
            MR_CAP_HW_NAMES);
    return code;
}

typedef struct cap_opts {
    const char *config, *gpu, *gpu_json, *trace, *calibrate, *json, *svg;
    float rate_scale, ttft, tpot, efficiency, link_eff, mem_util; /* < 0: default */
    int weight_bytes, kv_bytes;                                   /* 0: default */
    int chunk, max_batch, prefill_ep, decode_ep, max_nodes;       /* 0: default */
} cap_opts;

static mr_status cap_dtype(const char *flag, const char *v, bool fp8_ok, int *bytes)
{
    if (!strcmp(v, "bf16")) *bytes = 2;
    else if (!strcmp(v, "fp8") && fp8_ok) *bytes = 1;
    else return mr_fail(MR_EINVAL, "%s: expected fp8 or bf16, got '%s'", flag, v);
    return MR_OK;
}

static mr_status cap_flag(cap_opts *o, const char *f, const char *v)
{
    if (!strcmp(f, "--config")) o->config = v;
    else if (!strcmp(f, "--gpu")) o->gpu = v;
    else if (!strcmp(f, "--gpu-json")) o->gpu_json = v;
    else if (!strcmp(f, "--trace")) o->trace = v;
    else if (!strcmp(f, "--calibrate")) o->calibrate = v;
    else if (!strcmp(f, "--json")) o->json = v;
    else if (!strcmp(f, "--svg")) o->svg = v;
    else if (!strcmp(f, "--rate-scale")) return mr_parse_float(f, v, 1e-6, 1e6, &o->rate_scale);
    else if (!strcmp(f, "--ttft-p90-ms")) return mr_parse_float(f, v, 1e-3, 1e9, &o->ttft);
    else if (!strcmp(f, "--tpot-p90-ms")) return mr_parse_float(f, v, 1e-3, 1e9, &o->tpot);
    else if (!strcmp(f, "--efficiency")) return mr_parse_float(f, v, 1e-3, 1, &o->efficiency);
    else if (!strcmp(f, "--link-efficiency")) return mr_parse_float(f, v, 1e-3, 1, &o->link_eff);
    else if (!strcmp(f, "--mem-util")) return mr_parse_float(f, v, 0.05, 1, &o->mem_util);
    else if (!strcmp(f, "--weight-dtype")) return cap_dtype(f, v, true, &o->weight_bytes);
    else if (!strcmp(f, "--kv-dtype")) return cap_dtype(f, v, true, &o->kv_bytes);
    else if (!strcmp(f, "--prefill-chunk")) return mr_parse_int(f, v, 1, 1 << 20, &o->chunk);
    else if (!strcmp(f, "--decode-max-batch")) return mr_parse_int(f, v, 1, 1 << 16, &o->max_batch);
    else if (!strcmp(f, "--prefill-ep-nodes")) return mr_parse_int(f, v, 1, 4096, &o->prefill_ep);
    else if (!strcmp(f, "--decode-ep-nodes")) return mr_parse_int(f, v, 1, 4096, &o->decode_ep);
    else if (!strcmp(f, "--max-nodes")) return mr_parse_int(f, v, 1, 1 << 16, &o->max_nodes);
    else return mr_fail(MR_EINVAL, "unknown flag '%s'", f);
    return MR_OK;
}

static mr_status cap_parse(int argc, char **argv, cap_opts *o)
{
    *o = (cap_opts){.rate_scale = 1, .ttft = -1, .tpot = -1, .efficiency = -1, .link_eff = -1,
                    .mem_util = -1};
    for (int i = 2; i < argc; i += 2) {
        if (i + 1 >= argc) {
            MR_TRY(cap_flag(o, argv[i], "")); /* an unknown flag says so first */
            return mr_fail(MR_EINVAL, "%s: missing value", argv[i]);
        }
        MR_TRY(cap_flag(o, argv[i], argv[i + 1]));
    }
    if (!o->config || !o->gpu || !o->trace || o->ttft < 0 || o->tpot < 0)
        return mr_fail(MR_EINVAL, "--config, --gpu, --trace, --ttft-p90-ms and --tpot-p90-ms "
                       "are required");
    if (o->calibrate && o->efficiency >= 0)
        return mr_fail(MR_EINVAL, "give --efficiency or --calibrate, not both");
    if (o->prefill_ep && o->max_nodes && o->prefill_ep > o->max_nodes)
        return mr_fail(MR_EINVAL, "--prefill-ep-nodes %d exceeds --max-nodes %d", o->prefill_ep,
                       o->max_nodes);
    return MR_OK;
}

/* Read a small JSON file and hand it to one of the planner's parsers. */
static mr_status cap_read(const char *path, char **text, size_t *len)
{
    return mr_read_small_file(path, 64u << 20, text, len);
}

/* Model, profile, deployment and trace from the options; *calib_rows: rows
 * of --calibrate used (0 without it). */
static mr_status cap_load(const cap_opts *o, mr_config *cfg, mr_cap_model *m, mr_trace *trace,
                          int *calib_rows, char *calib_device, size_t device_cap)
{
    char *text = NULL;
    size_t len = 0;
    MR_TRY(mr_config_load(o->config, cfg));
    m->cfg = cfg;
    if (o->gpu_json) {
        MR_TRY(cap_read(o->gpu_json, &text, &len));
        mr_status st = mr_cap_hw_apply_json(text, len, o->gpu_json, &m->hw);
        free(text);
        MR_TRY(st);
    }
    mr_cap_deploy *d = &m->dep;
    mr_cap_deploy_defaults(cfg, d);
    if (o->weight_bytes) d->weight_bytes = o->weight_bytes;
    if (o->kv_bytes) d->kv_bytes = o->kv_bytes;
    if (o->efficiency >= 0) d->efficiency = o->efficiency;
    if (o->link_eff >= 0) d->link_efficiency = o->link_eff;
    if (o->mem_util >= 0) d->mem_util = o->mem_util;
    if (o->chunk) d->prefill_chunk_tokens = o->chunk;
    if (o->max_batch) d->decode_max_batch = o->max_batch;
    if (o->prefill_ep) d->prefill_ep_nodes = o->prefill_ep;
    if (o->decode_ep) d->decode_ep_nodes = o->decode_ep;
    if (o->max_nodes) d->max_nodes = o->max_nodes;
    *calib_rows = 0;
    if (o->calibrate) {
        MR_TRY(cap_read(o->calibrate, &text, &len));
        mr_status st = mr_cap_calibration_parse(text, len, o->calibrate, &d->efficiency,
                                                calib_rows, calib_device, device_cap);
        free(text);
        MR_TRY(st);
    }
    return mr_trace_load(o->trace, trace);
}

/* Everything the report prints. */
typedef struct cap_report {
    const cap_opts *o;
    const mr_cap_model *m;
    const mr_trace *trace;
    const mr_cap_plan *p;
    int calib_rows;
    char calib_device[128];
    char command[2048];
    char date[32];
} cap_report;

static const char *cap_k(double v, char *buf, size_t cap)
{
    if (v >= 1e4) snprintf(buf, cap, "%.1fk", v / 1e3);
    else snprintf(buf, cap, "%.0f", v);
    return buf;
}

static const char *cap_dtype_name(int bytes)
{
    return bytes == 1 ? "fp8" : "bf16";
}

static void cap_print_header(const cap_report *r)
{
    const mr_config *c = r->m->cfg;
    const mr_cap_hw *hw = &r->m->hw;
    const mr_cap_trace_stats *t = &r->p->trace;
    printf("# moerun plan capacity — moerun %s, %s\n# command: %s\n", MR_VERSION, r->date,
           r->command);
    printf("# model: %s (%s: %d layers, %d dense, %d routed + %d shared experts, top-%d, hidden "
           "%d, %d heads, MLA q_lora %d kv_lora %d rope %d)\n", r->o->config, c->model_type,
           c->num_hidden_layers, c->first_k_dense_replace, c->n_routed_experts,
           c->n_shared_experts, c->num_experts_per_tok, c->hidden_size, c->num_attention_heads,
           c->q_lora_rank, c->kv_lora_rank, c->qk_rope_head_dim);
    printf("# GPU: %s, %d per node (profile numbers under assumptions)\n", hw->name,
           hw->gpus_per_node);
    printf("# trace: %s (%s), %d requests over %.1f s at rate scale %g = %.2f req/s; mean input "
           "%.0f, output %.0f tokens\n", r->o->trace, r->trace->format, t->n_requests,
           t->duration_s, r->p->rate_scale, t->req_per_s, t->mean_input, t->mean_output);
    printf("#        demand %.0f input tok/s, %.0f output tok/s; busiest minute %.2fx the mean "
           "rate; decode context %.0f tokens (output-weighted mean)\n", t->input_tok_s,
           t->output_tok_s, t->peak_minute_ratio, t->decode_context);
    printf("# targets: TTFT p90 <= %g ms, TPOT p90 <= %g ms\n", r->p->ttft_p90_ms,
           r->p->tpot_p90_ms);
}

static void cap_print_prefill(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    const int gpn = r->m->hw.gpus_per_node;
    printf("\n## prefill: EP%d groups of %d node%s (DP attention, %.1f GB of weights per GPU), "
           "FIFO, chunks of %d tokens per GPU\n", p->prefill_ep_nodes * gpn, p->prefill_ep_nodes,
           p->prefill_ep_nodes > 1 ? "s" : "", p->prefill_weight_bytes / 1e9,
           r->m->dep.prefill_chunk_tokens);
    printf("## TTFT p90 floor (every request alone on an idle GPU): %.1f ms; util: GPU busy "
           "time / (GPUs x simulated time)\n", p->prefill_idle_p90_ms);
    printf("# %6s %6s %13s %13s %13s %6s %14s %s\n", "nodes", "GPUs", "TTFT-p50(ms)",
           "TTFT-p90(ms)", "TTFT-p99(ms)", "util", "in-tok/s/node", "target");
    for (int i = 0; i < p->n_prefill_rows; i++) {
        const mr_cap_prefill_row *w = &p->prefill_rows[i];
        printf("  %6d %6d %13.1f %13.1f %13.1f %6.3f %14.0f %s%s\n", w->nodes, w->nodes * gpn,
               w->ttft_p50_ms, w->ttft_p90_ms, w->ttft_p99_ms, w->utilization, w->tok_s_per_node,
               w->meets ? "met" : "missed", w->nodes == p->prefill_nodes ? "  <- answer" : "");
    }
}

static void cap_print_decode(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    const int gpn = r->m->hw.gpus_per_node;
    if (r->m->dep.decode_ep_nodes > 0)
        printf("\n## decode: EP%d groups of %d nodes", r->m->dep.decode_ep_nodes * gpn,
               r->m->dep.decode_ep_nodes);
    else
        printf("\n## decode: one EP group of all decode nodes");
    printf(", DP attention; weights fit from %d node%s\n", p->decode_min_nodes,
           p->decode_min_nodes > 1 ? "s" : "");
    printf("## batch/GPU: sequences per GPU that deliver the demanded output rate (Little's law); "
           "limit: min(--decode-max-batch, KV memory); util: demanded rate / the rate at the "
           "limit\n");
    printf("# %6s %6s %10s %12s %9s %6s %15s %s\n", "nodes", "EP", "batch/GPU", "batch-limit",
           "TPOT(ms)", "util", "out-tok/s/node", "target");
    for (int i = 0; i < p->n_decode_rows; i++) {
        const mr_cap_decode_row *w = &p->decode_rows[i];
        printf("  %6d %6d %10.2f %12.0f %9.2f %6.3f %15.0f %s%s\n", w->nodes, w->ep_gpus,
               w->batch_per_gpu, w->batch_limit, w->tpot_ms, w->utilization, w->tok_s_per_node,
               w->overloaded ? "overloaded" : w->meets ? "met" : "missed",
               w->nodes == p->decode_nodes ? "  <- answer" : "");
    }
}

static void cap_print_answer(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    const char *gpu = r->m->hw.name;
    const int gpn = r->m->hw.gpus_per_node;
    char a[32];
    printf("\n## answer\n");
    if (p->prefill_nodes)
        printf("prefill: %d nodes (%d x %s)\n", p->prefill_nodes, p->prefill_nodes * gpn, gpu);
    else
        printf("prefill: none up to %d nodes meets TTFT p90 <= %g ms (floor %.1f ms)\n",
               r->m->dep.max_nodes, p->ttft_p90_ms, p->prefill_idle_p90_ms);
    if (p->decode_nodes)
        printf("decode:  %d nodes (%d x %s)\n", p->decode_nodes, p->decode_nodes * gpn, gpu);
    else
        printf("decode:  none up to %d nodes meets TPOT p90 <= %g ms at the trace's rate "
               "(floor: %.1f ms per step at batch 1)\n", r->m->dep.max_nodes, p->tpot_p90_ms,
               p->decode_floor_ms);
    if (p->prefill_nodes && p->decode_nodes)
        printf("total:   %d nodes\n", p->prefill_nodes + p->decode_nodes);

    printf("\n## per-node throughput capacity: prefill input tok/s at full chunks of %.0f-token "
           "prompts, decode output tok/s at the largest batch meeting TPOT <= %g ms\n",
           p->trace.mean_input, p->tpot_p90_ms);
    printf("# %-8s %-30s %10s %11s\n", "role", "layout", "batch/GPU", "tok/s/node");
    const int decode_ep = (r->m->dep.decode_ep_nodes > 0 ? r->m->dep.decode_ep_nodes
                           : p->decode_nodes ? p->decode_nodes : p->decode_min_nodes) * gpn;
    char layout[4][40], batch[2][16];
    snprintf(layout[0], sizeof layout[0], "this plan: EP%d", p->prefill_ep_nodes * gpn);
    snprintf(layout[1], sizeof layout[1], "at DeepSeek's layout: EP%d", MR_CAP_DEEPSEEK_PREFILL_EP);
    snprintf(layout[2], sizeof layout[2], "this plan: EP%d", decode_ep);
    snprintf(layout[3], sizeof layout[3], "at DeepSeek's layout: EP%d", MR_CAP_DEEPSEEK_DECODE_EP);
    snprintf(batch[0], sizeof batch[0], "%d", p->decode_batch_at_slo);
    snprintf(batch[1], sizeof batch[1], "%d", p->ref_decode_batch);
    const char *published = "reference: DeepSeek published";
    printf("  %-8s %-30s %10s %11s\n", "prefill", layout[0], "-",
           cap_k(p->prefill_node_tok_s, a, sizeof a));
    printf("  %-8s %-30s %10s %11s\n", "prefill", layout[1], "-",
           p->ref_prefill_node_tok_s > 0 ? cap_k(p->ref_prefill_node_tok_s, a, sizeof a)
                                         : "no fit");
    printf("  %-8s %-30s %10s %11s  (H800, EP32, prefix-cache hits counted as input)\n",
           "prefill", published, "-", cap_k(MR_CAP_DEEPSEEK_PREFILL_TOK_S, a, sizeof a));
    printf("  %-8s %-30s %10s %11s\n", "decode", layout[2], batch[0],
           cap_k(p->decode_node_tok_s, a, sizeof a));
    printf("  %-8s %-30s %10s %11s\n", "decode", layout[3], batch[1],
           cap_k(p->ref_decode_node_tok_s, a, sizeof a));
    printf("  %-8s %-30s %10s %11s  (H800, EP144, with MTP, daily average)\n", "decode",
           published, "-", cap_k(MR_CAP_DEEPSEEK_DECODE_TOK_S, a, sizeof a));
}

static void cap_print_assumptions(const cap_report *r)
{
    const mr_cap_deploy *d = &r->m->dep;
    const mr_config *c = r->m->cfg;
    const mr_cap_hw *hw = &r->m->hw;
    printf("\n## assumptions\n");
    printf("GPU %s%s: %.0f GB HBM at %.2f TB/s; dense %.1f BF16 / %.1f FP8 TFLOP/s; NVLink %.0f "
           "GB/s, network %.0f GB/s per GPU per direction; %d GPUs per node\n", hw->name,
           r->o->gpu_json ? " (with --gpu-json overrides)" : "", hw->hbm_bytes / 1e9,
           hw->hbm_bytes_per_s / 1e12, hw->bf16_flops_per_s / 1e12, hw->fp8_flops_per_s / 1e12,
           hw->nvlink_bytes_per_s / 1e9, hw->net_bytes_per_s / 1e9, hw->gpus_per_node);
    printf("weights %s (linear layers%s; router, embedding and lm_head bf16); KV cache %s latent, "
           "%d values per token per layer = %.1f KB per token\n", cap_dtype_name(d->weight_bytes),
           d->weight_bytes == 1 ? ", + one fp32 scale per weight block" : "",
           cap_dtype_name(d->kv_bytes), mr_config_latent_dim(c),
           mr_cap_kv_bytes_per_token(r->m) / 1e3);
    if (r->calib_rows)
        printf("efficiency %.3f of HBM bandwidth and tensor peak (median of %d rows of %s, "
               "measured on %s)", d->efficiency, r->calib_rows, r->o->calibrate,
               r->calib_device[0] ? r->calib_device : "an unnamed device");
    else
        printf("efficiency %.2f of HBM bandwidth and tensor peak (%s)", d->efficiency,
               r->o->efficiency >= 0 ? "--efficiency" : "default");
    printf(", %.2f of NVLink / network bandwidth\n", d->link_efficiency);
    printf("HBM for weights + KV: %.0f%%; decode batch <= %d per GPU; prefill chunk %d tokens "
           "per GPU\n", 100 * d->mem_util, d->decode_max_batch, d->prefill_chunk_tokens);
    printf("layer time = max(bytes / HBM, FLOPs / peak, all-to-all / links); comm overlaps "
           "compute; balanced experts (EPLB); decode sized for the mean rate\n");
    printf("not modeled: MTP, prefix cache, kernel and message latency, activation traffic\n");
}

static cJSON *cap_json_prefill(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    const int gpn = r->m->hw.gpus_per_node;
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "ep_nodes", p->prefill_ep_nodes);
    cJSON_AddNumberToObject(o, "weights_gb_per_gpu", p->prefill_weight_bytes / 1e9);
    cJSON_AddNumberToObject(o, "chunk_tokens", r->m->dep.prefill_chunk_tokens);
    cJSON_AddNumberToObject(o, "node_tok_s", p->prefill_node_tok_s);
    cJSON_AddNumberToObject(o, "ttft_p90_floor_ms", p->prefill_idle_p90_ms);
    if (p->prefill_nodes) cJSON_AddNumberToObject(o, "nodes", p->prefill_nodes);
    else cJSON_AddNullToObject(o, "nodes");
    cJSON *rows = cJSON_AddArrayToObject(o, "rows");
    for (int i = 0; i < p->n_prefill_rows; i++) {
        const mr_cap_prefill_row *w = &p->prefill_rows[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "nodes", w->nodes);
        cJSON_AddNumberToObject(j, "gpus", w->nodes * gpn);
        cJSON_AddNumberToObject(j, "ttft_p50_ms", w->ttft_p50_ms);
        cJSON_AddNumberToObject(j, "ttft_p90_ms", w->ttft_p90_ms);
        cJSON_AddNumberToObject(j, "ttft_p99_ms", w->ttft_p99_ms);
        cJSON_AddNumberToObject(j, "utilization", w->utilization);
        cJSON_AddNumberToObject(j, "tok_s_per_node", w->tok_s_per_node);
        cJSON_AddBoolToObject(j, "meets", w->meets);
        cJSON_AddItemToArray(rows, j);
    }
    return o;
}

static cJSON *cap_json_decode(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    cJSON *o = cJSON_CreateObject();
    if (r->m->dep.decode_ep_nodes)
        cJSON_AddNumberToObject(o, "ep_nodes", r->m->dep.decode_ep_nodes);
    else
        cJSON_AddStringToObject(o, "ep_nodes", "all");
    cJSON_AddNumberToObject(o, "min_nodes", p->decode_min_nodes);
    cJSON_AddNumberToObject(o, "tpot_floor_ms", p->decode_floor_ms);
    cJSON_AddNumberToObject(o, "context_tokens", p->trace.decode_context);
    cJSON_AddNumberToObject(o, "weights_gb_per_gpu", p->decode_weight_bytes / 1e9);
    cJSON_AddNumberToObject(o, "batch_at_target", p->decode_batch_at_slo);
    cJSON_AddNumberToObject(o, "node_tok_s", p->decode_node_tok_s);
    if (p->decode_nodes) cJSON_AddNumberToObject(o, "nodes", p->decode_nodes);
    else cJSON_AddNullToObject(o, "nodes");
    cJSON *rows = cJSON_AddArrayToObject(o, "rows");
    for (int i = 0; i < p->n_decode_rows; i++) {
        const mr_cap_decode_row *w = &p->decode_rows[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "nodes", w->nodes);
        cJSON_AddNumberToObject(j, "ep_gpus", w->ep_gpus);
        cJSON_AddNumberToObject(j, "batch_per_gpu", w->batch_per_gpu);
        cJSON_AddNumberToObject(j, "batch_limit", w->batch_limit);
        cJSON_AddNumberToObject(j, "tpot_ms", w->tpot_ms);
        cJSON_AddNumberToObject(j, "utilization", w->utilization);
        cJSON_AddNumberToObject(j, "tok_s_per_node", w->tok_s_per_node);
        cJSON_AddBoolToObject(j, "overloaded", w->overloaded);
        cJSON_AddBoolToObject(j, "meets", w->meets);
        cJSON_AddItemToArray(rows, j);
    }
    return o;
}

/* The inputs: GPU profile, deployment, trace statistics, into object o. */
static void cap_json_inputs(const cap_report *r, cJSON *o)
{
    const mr_cap_hw *hw = &r->m->hw;
    const mr_cap_deploy *d = &r->m->dep;
    const mr_cap_trace_stats *t = &r->p->trace;
    cJSON *g = cJSON_AddObjectToObject(o, "gpu");
    cJSON_AddStringToObject(g, "name", hw->name);
    cJSON_AddNumberToObject(g, "hbm_gb", hw->hbm_bytes / 1e9);
    cJSON_AddNumberToObject(g, "hbm_tb_s", hw->hbm_bytes_per_s / 1e12);
    cJSON_AddNumberToObject(g, "bf16_tflops", hw->bf16_flops_per_s / 1e12);
    cJSON_AddNumberToObject(g, "fp8_tflops", hw->fp8_flops_per_s / 1e12);
    cJSON_AddNumberToObject(g, "nvlink_gb_s", hw->nvlink_bytes_per_s / 1e9);
    cJSON_AddNumberToObject(g, "net_gb_s", hw->net_bytes_per_s / 1e9);
    cJSON_AddNumberToObject(g, "gpus_per_node", hw->gpus_per_node);
    cJSON *dj = cJSON_AddObjectToObject(o, "deploy");
    cJSON_AddStringToObject(dj, "weight_dtype", cap_dtype_name(d->weight_bytes));
    cJSON_AddStringToObject(dj, "kv_dtype", cap_dtype_name(d->kv_bytes));
    cJSON_AddNumberToObject(dj, "kv_bytes_per_token", mr_cap_kv_bytes_per_token(r->m));
    cJSON_AddNumberToObject(dj, "efficiency", d->efficiency);
    cJSON_AddStringToObject(dj, "efficiency_source", r->calib_rows ? r->o->calibrate
                                                     : r->o->efficiency >= 0 ? "--efficiency"
                                                                              : "default");
    if (r->calib_rows) cJSON_AddStringToObject(dj, "calibration_device", r->calib_device);
    cJSON_AddNumberToObject(dj, "link_efficiency", d->link_efficiency);
    cJSON_AddNumberToObject(dj, "mem_util", d->mem_util);
    cJSON_AddNumberToObject(dj, "decode_max_batch", d->decode_max_batch);
    cJSON *tj = cJSON_AddObjectToObject(o, "trace");
    cJSON_AddStringToObject(tj, "file", r->o->trace);
    cJSON_AddStringToObject(tj, "format", r->trace->format);
    cJSON_AddNumberToObject(tj, "requests", t->n_requests);
    cJSON_AddNumberToObject(tj, "rate_scale", r->p->rate_scale);
    cJSON_AddNumberToObject(tj, "duration_s", t->duration_s);
    cJSON_AddNumberToObject(tj, "req_per_s", t->req_per_s);
    cJSON_AddNumberToObject(tj, "mean_input", t->mean_input);
    cJSON_AddNumberToObject(tj, "mean_output", t->mean_output);
    cJSON_AddNumberToObject(tj, "input_tok_s", t->input_tok_s);
    cJSON_AddNumberToObject(tj, "output_tok_s", t->output_tok_s);
    cJSON_AddNumberToObject(tj, "decode_context", t->decode_context);
    cJSON_AddNumberToObject(tj, "peak_minute_ratio", t->peak_minute_ratio);
}

static int cap_write_json(const cap_report *r)
{
    const mr_cap_plan *p = r->p;
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "command", r->command);
    cJSON_AddStringToObject(root, "date", r->date);
    cJSON_AddStringToObject(root, "config", r->o->config);
    cap_json_inputs(r, root);
    cJSON *tg = cJSON_AddObjectToObject(root, "targets");
    cJSON_AddNumberToObject(tg, "ttft_p90_ms", p->ttft_p90_ms);
    cJSON_AddNumberToObject(tg, "tpot_p90_ms", p->tpot_p90_ms);
    cJSON_AddItemToObject(root, "prefill", cap_json_prefill(r));
    cJSON_AddItemToObject(root, "decode", cap_json_decode(r));
    cJSON_AddItemToObject(root, "decode_layouts", mr_cap_layouts_json(r->m, p));
    if (p->prefill_nodes && p->decode_nodes)
        cJSON_AddNumberToObject(root, "total_nodes", p->prefill_nodes + p->decode_nodes);
    else
        cJSON_AddNullToObject(root, "total_nodes");
    cJSON *ref = cJSON_AddObjectToObject(root, "reference");
    cJSON *pub = cJSON_AddObjectToObject(ref, "deepseek_published");
    cJSON_AddNumberToObject(pub, "prefill_node_tok_s", MR_CAP_DEEPSEEK_PREFILL_TOK_S);
    cJSON_AddNumberToObject(pub, "decode_node_tok_s", MR_CAP_DEEPSEEK_DECODE_TOK_S);
    cJSON *lay = cJSON_AddObjectToObject(ref, "at_deepseek_layout");
    cJSON_AddNumberToObject(lay, "prefill_ep_gpus", MR_CAP_DEEPSEEK_PREFILL_EP);
    cJSON_AddNumberToObject(lay, "prefill_node_tok_s", p->ref_prefill_node_tok_s);
    cJSON_AddNumberToObject(lay, "decode_ep_gpus", MR_CAP_DEEPSEEK_DECODE_EP);
    cJSON_AddNumberToObject(lay, "decode_batch", p->ref_decode_batch);
    cJSON_AddNumberToObject(lay, "decode_node_tok_s", p->ref_decode_node_tok_s);
    char *text = cJSON_Print(root);
    FILE *fp = text ? fopen(r->o->json, "w") : NULL;
    bool ok = fp && fprintf(fp, "%s\n", text) >= 0;
    if (fp && fclose(fp) != 0) ok = false;
    free(text);
    cJSON_Delete(root);
    if (!ok) fprintf(stderr, "moerun plan capacity: cannot write %s\n", r->o->json);
    return ok ? 0 : 1;
}

static void cap_command_line(int argc, char **argv, char *buf, size_t cap)
{
    size_t used = (size_t)snprintf(buf, cap, "moerun");
    for (int i = 0; i < argc && used < cap; i++)
        used += (size_t)snprintf(buf + used, cap - used, " %s", argv[i]);
}

int mr_cmd_plan_capacity(int argc, char **argv)
{
    if (argc >= 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h")))
        return cap_usage(stdout, 0);
    cap_opts o;
    mr_cap_model m = {0};
    if (cap_parse(argc, argv, &o) != MR_OK || mr_cap_hw_profile(o.gpu, &m.hw) != MR_OK) {
        fprintf(stderr, "moerun plan capacity: %s\n\n", mr_last_error());
        return cap_usage(stderr, 2);
    }
    mr_config cfg;
    mr_trace trace = {0};
    mr_cap_plan plan;
    cap_report r = {.o = &o, .m = &m, .trace = &trace, .p = &plan};
    mr_status st = cap_load(&o, &cfg, &m, &trace, &r.calib_rows, r.calib_device,
                            sizeof r.calib_device);
    if (st == MR_OK)
        st = mr_cap_plan_run(&m, trace.reqs, trace.n, o.rate_scale, o.ttft, o.tpot, &plan);
    if (st != MR_OK) {
        fprintf(stderr, "moerun plan capacity: %s\n", mr_last_error());
        mr_trace_free(&trace);
        return 1;
    }
    cap_command_line(argc, argv, r.command, sizeof r.command);
    time_t now = time(NULL);
    strftime(r.date, sizeof r.date, "%Y-%m-%d %H:%M %Z", localtime(&now));
    cap_print_header(&r);
    cap_print_prefill(&r);
    cap_print_decode(&r);
    cap_print_answer(&r);
    mr_cap_print_layouts(stdout, &m, &plan);
    cap_print_assumptions(&r);
    int rc = o.json ? cap_write_json(&r) : 0;
    if (rc == 0 && o.svg) {
        if (mr_cap_write_svg(&m, &plan, o.svg) == MR_OK) {
            printf("# plots: %s\n", o.svg);
        } else {
            fprintf(stderr, "moerun plan capacity: %s\n", mr_last_error());
            rc = 1;
        }
    }
    mr_trace_free(&trace);
    return rc;
}
