/* cli/cmd_plan.c — `moerun plan placement`: an expert placement with
 * redundant replicas for the hot experts, from the per-expert load a cluster
 * run measured; `moerun plan capacity` is in cmd_plan_capacity.c.
 *
 *   moerun plan placement --summary SUMMARY.json --expert-ranks 4,5,6
 *                         [--redundant N] [--out PLACEMENT.json]
 *
 * SUMMARY.json is what `launch/moerun-cluster --summary` wrote (its
 * "expert_load": {"<layer>": [tokens per expert]}); --expert-ranks are the
 * MPI ranks of the expert role in the layout the placement is for;
 * --redundant is the number of extra replicas per MoE layer (default: one
 * per expert rank). Writes {"layers": {"<layer>": {"<expert>": [ranks...]}}}
 * (every expert listed) for `--placement`, and prints per layer the load
 * imbalance (max / mean tokens per rank) of round robin and of the plan.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../common/args.h"
#include "../common/fileio.h"
#include "../model/config.h"
#include "../planner/capacity.h"
#include "../planner/eplb.h"
#include "commands.h"

static void usage(FILE *out)
{
    fprintf(out, "usage: moerun plan placement --summary SUMMARY.json --expert-ranks 4,5,6\n"
                 "                             [--redundant N] [--out PLACEMENT.json]\n"
                 "       moerun plan capacity --config CONFIG.json --gpu %s --trace TRACE\n"
                 "                            --ttft-p90-ms MS --tpot-p90-ms MS [options]\n"
                 "  placement  expert placement with redundant replicas from measured load\n"
                 "  capacity   prefill/decode node counts for a request trace at latency targets\n"
                 "             ('moerun plan capacity --help' lists its options)\n",
            MR_CAP_HW_NAMES);
}

static cJSON *layer_placement(const mr_eplb_layer *l, const int32_t *ranks)
{
    cJSON *o = cJSON_CreateObject();
    for (int e = 0; o && e < l->n_experts; e++) {
        cJSON *a = cJSON_CreateArray();
        for (int j = 0; j < l->replicas[e]; j++)
            cJSON_AddItemToArray(a, cJSON_CreateNumber(ranks[l->rank_of[e][j]]));
        char key[16];
        snprintf(key, sizeof key, "%d", e);
        cJSON_AddItemToObject(o, key, a);
    }
    return o;
}

static int plan_placement(const char *summary_path, const int32_t *ranks, int n_ranks,
                          int redundant, const char *out_path)
{
    cJSON *summary = NULL;
    if (mr_read_json_file(summary_path, 256u << 20, &summary) != MR_OK) {
        fprintf(stderr, "moerun plan: %s\n", mr_last_error());
        return 1;
    }
    const cJSON *load = cJSON_GetObjectItemCaseSensitive(summary, "expert_load");
    if (!cJSON_IsObject(load) || !load->child) {
        fprintf(stderr, "moerun plan: %s has no \"expert_load\" (run the cluster with --summary "
                        "first)\n", summary_path);
        cJSON_Delete(summary);
        return 1;
    }
    mr_eplb_layer *l = malloc(sizeof *l);
    cJSON *placement = cJSON_CreateObject();
    cJSON *layers = cJSON_AddObjectToObject(placement, "layers");
    int rc = l ? 0 : 1;
    printf("# moerun plan placement: %d expert ranks, %d redundant replicas per layer\n", n_ranks,
           redundant);
    printf("# %6s %8s %12s %12s %s\n", "layer", "experts", "round-robin", "planned",
           "replicated experts");
    const cJSON *row;
    cJSON_ArrayForEach(row, load) {
        if (rc) break;
        int n_experts = cJSON_GetArraySize(row);
        uint64_t *counts = calloc((size_t)(n_experts > 0 ? n_experts : 1), sizeof(uint64_t));
        for (int e = 0; counts && e < n_experts; e++) {
            const cJSON *v = cJSON_GetArrayItem(row, e);
            counts[e] = cJSON_IsNumber(v) && v->valuedouble > 0 ? (uint64_t)v->valuedouble : 0;
        }
        if (!counts || mr_eplb_balance(counts, n_experts, n_ranks, redundant, l) != MR_OK) {
            fprintf(stderr, "moerun plan: layer %s: %s\n", row->string,
                    counts ? mr_last_error() : "out of memory");
            rc = 1;
        } else {
            char hot[256] = "";
            size_t used = 0;
            for (int e = 0; e < n_experts && used < sizeof hot - 16; e++)
                if (l->replicas[e] > 1)
                    used += (size_t)snprintf(hot + used, sizeof hot - used, "%s%d(x%d)",
                                             used ? " " : "", e, l->replicas[e]);
            printf("  %6s %8d %12.3f %12.3f %s\n", row->string, n_experts,
                   mr_eplb_round_robin_imbalance(counts, n_experts, n_ranks), mr_eplb_imbalance(l),
                   hot);
            cJSON_AddItemToObject(layers, row->string, layer_placement(l, ranks));
        }
        free(counts);
    }
    if (rc == 0) {
        char *json = cJSON_Print(placement);
        FILE *fp = out_path ? fopen(out_path, "w") : stdout;
        if (!json || !fp || fprintf(fp, "%s\n", json) < 0) {
            fprintf(stderr, "moerun plan: cannot write %s\n", out_path ? out_path : "stdout");
            rc = 1;
        }
        if (fp && fp != stdout) fclose(fp);
        free(json);
    }
    free(l);
    cJSON_Delete(placement);
    cJSON_Delete(summary);
    return rc;
}

int mr_cmd_plan(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "capacity")) return mr_cmd_plan_capacity(argc, argv);
    if (argc < 2 || strcmp(argv[1], "placement") != 0) {
        if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
            usage(stdout);
            return 0;
        }
        if (argc >= 2) fprintf(stderr, "moerun plan: unknown plan '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    const char *summary = NULL, *out = NULL;
    int32_t *ranks = NULL;
    int n_ranks = 0, redundant = -1;
    mr_status st = MR_OK;
    for (int i = 2; i < argc && st == MR_OK; i += 2) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) st = mr_fail(MR_EINVAL, "%s: missing value (or unknown flag)", f);
        else if (!strcmp(f, "--summary")) summary = v;
        else if (!strcmp(f, "--out")) out = v;
        else if (!strcmp(f, "--redundant")) st = mr_parse_int(f, v, 0, 1 << 16, &redundant);
        else if (!strcmp(f, "--expert-ranks")) {
            free(ranks);
            st = mr_parse_id_list(f, v, &ranks, &n_ranks);
        } else st = mr_fail(MR_EINVAL, "unknown flag '%s'", f);
    }
    if (st == MR_OK && (!summary || !ranks))
        st = mr_fail(MR_EINVAL, "--summary and --expert-ranks are required");
    if (st != MR_OK) {
        fprintf(stderr, "moerun plan: %s\n", mr_last_error());
        usage(stderr);
        free(ranks);
        return 2;
    }
    int rc = plan_placement(summary, ranks, n_ranks, redundant >= 0 ? redundant : n_ranks, out);
    free(ranks);
    return rc;
}
