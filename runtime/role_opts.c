#include "role_opts.h"

#include <string.h>

#include <cjson/cJSON.h>

#include "common/args.h"
#include "kernels/backend.h"

void mr_role_opts_defaults(mr_role_opts *o)
{
    memset(o, 0, sizeof *o);
    o->attn = MR_ATTN_ABSORB;
    o->backend = "cpu";
    o->kv_blocks = 256;
    o->block_tokens = 16;
    o->max_batch_tokens = 256;
    o->max_wait_ms = 5.0;
    o->max_running = 64;
    o->heartbeat_period_s = 1.0;
    o->heartbeat_timeout_s = 30.0;
    o->request_timeout_s = 600.0;
    o->redundant_experts = -1;
    o->rebalance_min_gain = 0.05;
    o->load_report_period_s = 1.0;
}

const char *mr_role_opts_usage(void)
{
    return "  --model DIR              model directory (default: built-in tiny)\n"
           "  --requests FILE.jsonl    requests (coordinator; default: built-in demo set)\n"
           "  --out FILE.jsonl         results (default: stdout)\n"
           "  --summary FILE.json      summary json\n"
           "  --status-file FILE       exit status for the launcher\n"
           "  --placement FILE.json    expert placement (default: round robin)\n"
           "  --logits-dir DIR         debug: write each request's logits as .npy\n"
           "  --attn absorb|naive      MLA form (default absorb)\n"
           "  --backend cpu|cuda|devsim  compute backend of prefill/decode/expert ranks\n"
           "                           (cuda: GPU = local rank mod GPU count; devsim: CPU\n"
           "                           kernels under GPU memory rules, for tests; default cpu)\n"
           "  --precision fp32|bf16    weight matrices and their GEMM inputs (bf16: half the\n"
           "                           memory; fp32 = the CPU's tokens; default fp32)\n"
           "  --kv-dtype fp32|bf16     latent KV cache rows (bf16: half the KV memory and\n"
           "                           transfer; every rank must agree)\n"
           "  --ep-plane ucx|nccl      prefill wide-EP rows: staged through host memory over\n"
           "                           UCX (default), or NCCL between GPUs (--backend cuda,\n"
           "                           one GPU per prefill rank)\n"
           "  --route-plane ucx|nccl   decode -> expert rows: UCX via host memory (default),\n"
           "                           or NCCL between each decode/expert pair on distinct\n"
           "                           GPUs (--backend cuda; pairs sharing a GPU use UCX);\n"
           "                           test-pairs: the pairs' schedule with their rows as\n"
           "                           UCX messages, on any backend (test hook)\n"
           "  --kv-blocks N            decode KV pool size in blocks (default 256)\n"
           "  --block-tokens N         tokens per KV block (default 16)\n"
           "  --max-batch-tokens N     prefill token budget per iteration (default 256)\n"
           "  --max-wait-ms MS         prefill: start a partial batch after MS (default 5)\n"
           "  --max-running N          decode: running requests per step (default 64)\n"
           "  --heartbeat-period S     (default 1)\n"
           "  --heartbeat-timeout S    (default 30)\n"
           "  --request-timeout S      (default 600)\n"
           "  --inject-garbage N       test hook: coordinator sends N bad frames of each kind\n"
           "  --rebalance-period S     re-place hot experts every S s while serving (0 = off)\n"
           "  --redundant-experts N    extra replicas per MoE layer (default: one per expert rank)\n"
           "  --rebalance-min-gain X   re-place when max/mean rank load drops by X (default 0.05)\n"
           "  --load-report-period S   expert ranks report per-expert load every S s (default 1)\n"
           "  --test-load-delay-ms N   test hook: expert ranks' background expert loads wait N ms\n";
}

/* --ep-plane / --route-plane: ucx or nccl. */
static mr_status parse_plane(const char *flag, const char *v, bool *nccl)
{
    if (!strcmp(v, "ucx")) *nccl = false;
    else if (!strcmp(v, "nccl")) *nccl = true;
    else return mr_fail(MR_EINVAL, "%s: expected ucx or nccl, got '%s'", flag, v);
    return MR_OK;
}

mr_status mr_role_opts_parse(int argc, char **argv, mr_role_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (i + 1 >= argc) return mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        const char *v = argv[++i];
        if (!strcmp(f, "--model")) o->model_dir = v;
        else if (!strcmp(f, "--requests")) o->requests_path = v;
        else if (!strcmp(f, "--out")) o->out_path = v;
        else if (!strcmp(f, "--summary")) o->summary_path = v;
        else if (!strcmp(f, "--status-file")) o->status_path = v;
        else if (!strcmp(f, "--placement")) o->placement_path = v;
        else if (!strcmp(f, "--logits-dir")) o->logits_dir = v;
        else if (!strcmp(f, "--attn")) {
            if (!strcmp(v, "absorb")) o->attn = MR_ATTN_ABSORB;
            else if (!strcmp(v, "naive")) o->attn = MR_ATTN_NAIVE;
            else return mr_fail(MR_EINVAL, "--attn: expected absorb or naive, got '%s'", v);
        }
        else if (!strcmp(f, "--backend")) {
            if (!mr_backend_name_valid(v))
                return mr_fail(MR_EINVAL, "--backend: expected cpu, cuda or devsim, got '%s'", v);
            o->backend = v;
        }
        else if (!strcmp(f, "--precision")) {
            mr_wtype t;
            MR_TRY(mr_parse_dtype(f, v, &t));
            o->bf16 = t == MR_WT_BF16;
        }
        else if (!strcmp(f, "--kv-dtype")) MR_TRY(mr_parse_dtype(f, v, &o->kv_dtype));
        else if (!strcmp(f, "--ep-plane")) MR_TRY(parse_plane(f, v, &o->ep_nccl));
        else if (!strcmp(f, "--route-plane")) {
            o->route_test_pairs = !strcmp(v, "test-pairs");
            if (o->route_test_pairs) o->route_pairs = true;
            else MR_TRY(parse_plane(f, v, &o->route_pairs));
        }
        else if (!strcmp(f, "--kv-blocks")) MR_TRY(mr_parse_int(f, v, 1, 1 << 24, &o->kv_blocks));
        else if (!strcmp(f, "--block-tokens")) MR_TRY(mr_parse_int(f, v, 1, 4096, &o->block_tokens));
        else if (!strcmp(f, "--max-batch-tokens"))
            MR_TRY(mr_parse_int(f, v, 1, 1 << 20, &o->max_batch_tokens));
        else if (!strcmp(f, "--max-running")) MR_TRY(mr_parse_int(f, v, 1, 1 << 16, &o->max_running));
        else if (!strcmp(f, "--inject-garbage")) MR_TRY(mr_parse_int(f, v, 0, 1000, &o->inject_garbage));
        else if (!strcmp(f, "--test-load-delay-ms"))
            MR_TRY(mr_parse_int(f, v, 0, 600000, &o->test_load_delay_ms));
        else if (!strcmp(f, "--test-startup-delay-ms"))
            MR_TRY(mr_parse_int(f, v, 0, 600000, &o->test_startup_delay_ms));
        else if (!strcmp(f, "--redundant-experts"))
            MR_TRY(mr_parse_int(f, v, 0, 4096, &o->redundant_experts));
        else if (!strcmp(f, "--max-wait-ms") || !strcmp(f, "--heartbeat-period") ||
                 !strcmp(f, "--heartbeat-timeout") || !strcmp(f, "--request-timeout") ||
                 !strcmp(f, "--rebalance-period") || !strcmp(f, "--rebalance-min-gain") ||
                 !strcmp(f, "--load-report-period")) {
            float x;
            MR_TRY(mr_parse_float(f, v, 0.0, 1e7, &x));
            if (!strcmp(f, "--max-wait-ms")) o->max_wait_ms = x;
            else if (!strcmp(f, "--heartbeat-period")) o->heartbeat_period_s = x;
            else if (!strcmp(f, "--heartbeat-timeout")) o->heartbeat_timeout_s = x;
            else if (!strcmp(f, "--rebalance-period")) o->rebalance_period_s = x;
            else if (!strcmp(f, "--rebalance-min-gain")) o->rebalance_min_gain = x;
            else if (!strcmp(f, "--load-report-period")) o->load_report_period_s = x;
            else o->request_timeout_s = x;
        } else {
            return mr_fail(MR_EINVAL, "unknown flag '%s'", f);
        }
    }
    if (o->heartbeat_period_s <= 0 || o->heartbeat_timeout_s <= o->heartbeat_period_s)
        return mr_fail(MR_EINVAL, "--heartbeat-timeout (%g) must exceed --heartbeat-period (%g) > 0",
                       o->heartbeat_timeout_s, o->heartbeat_period_s);
    return MR_OK;
}

cJSON *mr_role_opts_json(const mr_role_opts *o)
{
    cJSON *j = cJSON_CreateObject();
    if (!j) return NULL;
    cJSON_AddStringToObject(j, "model", o->model_dir ? o->model_dir : "(built-in tiny)");
    cJSON_AddStringToObject(j, "backend", o->backend);
    cJSON_AddStringToObject(j, "weights", o->bf16 ? "bf16" : "fp32");
    cJSON_AddStringToObject(j, "kv_dtype", mr_wtype_name(o->kv_dtype));
    cJSON_AddStringToObject(j, "ep_plane", o->ep_nccl ? "nccl" : "ucx");
    cJSON_AddStringToObject(j, "route_plane", o->route_test_pairs ? "test-pairs"
                                              : o->route_pairs    ? "nccl"
                                                                  : "ucx");
    cJSON_AddStringToObject(j, "attn", o->attn == MR_ATTN_NAIVE ? "naive" : "absorb");
    cJSON_AddNumberToObject(j, "kv_blocks", o->kv_blocks);
    cJSON_AddNumberToObject(j, "block_tokens", o->block_tokens);
    cJSON_AddNumberToObject(j, "max_batch_tokens", o->max_batch_tokens);
    cJSON_AddNumberToObject(j, "max_running", o->max_running);
    cJSON_AddNumberToObject(j, "rebalance_period_s", o->rebalance_period_s);
    cJSON_AddNumberToObject(j, "redundant_experts", o->redundant_experts);
    return j;
}
