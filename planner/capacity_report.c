/* planner/capacity_report.c — the decode layout comparison (EP on decode vs
 * attention-FFN disaggregation) as text and JSON. Contract in
 * capacity_report.h; the numbers come from capacity_afd.c. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "capacity_report.h"

const char *mr_cap_layout_name(mr_cap_layout layout)
{
    return layout == MR_CAP_LAYOUT_EP ? "EP on decode"
           : layout == MR_CAP_LAYOUT_AFD ? "disaggregated" : "none";
}

const char *mr_cap_bind_name(const mr_cap_layout_row *r)
{
    switch (r->binds) {
    case MR_CAP_BIND_WEIGHTS: return r->layout == MR_CAP_LAYOUT_AFD ? "expert weights" : "weights";
    case MR_CAP_BIND_GROUP: return "EP group size";
    case MR_CAP_BIND_KV: return "KV memory";
    case MR_CAP_BIND_BATCH: return "batch cap";
    case MR_CAP_BIND_HBM: return "HBM bandwidth";
    case MR_CAP_BIND_COMPUTE: return "compute";
    case MR_CAP_BIND_NVLINK: return "NVLink";
    case MR_CAP_BIND_NETWORK: return "network";
    }
    return "?";
}

void mr_cap_layout_note(const mr_cap_layout_row *r, char *buf, size_t cap)
{
    static const char *const unit[4] = {"HBM", "compute", "NVLink", "network"};
    const mr_cap_split *s = &r->split;
    const double total = s->hbm_s + s->math_s + s->nvlink_s + s->net_s;
    const double part[4] = {s->hbm_s, s->math_s, s->nvlink_s, s->net_s};
    size_t used = (size_t)snprintf(buf, cap, "%s", mr_cap_bind_name(r));
    if (!(total > 0)) return;
    const char *sep = "; step";
    for (int i = 0; i < 4 && used < cap; i++) {
        const double pct = 100 * part[i] / total;
        if (pct < 0.5) continue;
        used += (size_t)snprintf(buf + used, cap - used, "%s %.0f%% %s", sep, pct, unit[i]);
        sep = ",";
    }
    if (r->layout == MR_CAP_LAYOUT_AFD && used < cap)
        snprintf(buf + used, cap - used, " (experts %.0f%%)", 100 * s->expert_s / total);
}

/* One table row: the layout's nodes, batch, TPOT, per-node rate and note;
 * `never_fits`: a row without nodes says why. */
static void print_row(FILE *out, const mr_cap_layout_row *w, double tpot_target_ms,
                      bool never_fits)
{
    char note[160], expert[16];
    if (!w->nodes) {
        fprintf(out, "  %-14s %11s %7s %6s %10s %9s %15s  ", mr_cap_layout_name(w->layout), "-",
                "-", "-", "-", "-", "-");
        if (never_fits) fprintf(out, "the weights and one sequence never fit\n");
        else fprintf(out, "none up to the search limit meets TPOT p90 <= %g ms\n", tpot_target_ms);
        return;
    }
    mr_cap_layout_note(w, note, sizeof note);
    snprintf(expert, sizeof expert, w->expert_nodes ? "%d" : "-", w->expert_nodes);
    fprintf(out, "  %-14s %11d %7s %6d %10.2f %9.2f %15.0f  %s\n", mr_cap_layout_name(w->layout),
            w->nodes, expert, mr_cap_layout_total_nodes(w), w->batch_per_gpu, w->tpot_ms,
            w->tok_s_per_node, note);
}

void mr_cap_print_layouts(FILE *out, const mr_cap_model *m, const mr_cap_plan *p)
{
    const mr_cap_layouts *l = &p->layouts;
    fprintf(out, "\n## decode layout: EP on decode (DP attention + routed experts on every decode "
            "GPU) vs disaggregated (attention nodes + separate expert nodes, all-to-all over the "
            "network)\n");
    fprintf(out, "## disaggregated: attention GPUs hold %.1f GB of non-expert weights + KV (batch "
            "limit %.0f); expert GPUs hold only routed experts, ", l->afd_attn_weight_bytes / 1e9,
            l->afd_attn_batch_limit);
    if (l->afd_min_expert_nodes)
        fprintf(out, "fit from %d node%s (%.1f GB per GPU at the answer), %d to %d expert nodes "
                "searched\n", l->afd_min_expert_nodes, l->afd_min_expert_nodes > 1 ? "s" : "",
                l->afd_expert_weight_bytes / 1e9, l->afd_min_expert_nodes,
                l->afd_max_expert_nodes);
    else
        fprintf(out, "never fit within %d nodes\n", m->dep.max_nodes);
    fprintf(out, "## network per token per MoE layer: %d copies x %d values x (%d B %s dispatch + "
            "2 B bf16 combine) = %.1f KB; MoE layer time = max(attention + experts, network)\n",
            m->cfg->num_experts_per_tok, m->cfg->hidden_size, m->dep.weight_bytes,
            m->dep.weight_bytes == 1 ? "fp8" : "bf16", l->afd_net_bytes_per_token / 1e3);
    fprintf(out, "## winner: fewer total nodes meeting TPOT p90, a tie goes to EP on decode; "
            "binds: what stops one (attention) node fewer; step: where the step's time goes\n");
    fprintf(out, "# %-14s %11s %7s %6s %10s %9s %15s  %s\n", "layout", "attn/decode", "expert",
            "total", "batch/GPU", "TPOT(ms)", "out-tok/s/node", "binds");
    print_row(out, &l->ep, p->tpot_p90_ms, false);
    print_row(out, &l->afd, p->tpot_p90_ms,
              !l->afd_min_expert_nodes || l->afd_attn_batch_limit < 1);
    const mr_cap_layout_row *win = l->winner == MR_CAP_LAYOUT_AFD ? &l->afd : &l->ep;
    const mr_cap_layout_row *other = l->winner == MR_CAP_LAYOUT_AFD ? &l->ep : &l->afd;
    if (l->winner == MR_CAP_LAYOUT_NONE)
        fprintf(out, "decode layout: none (neither meets TPOT p90 <= %g ms at the trace's rate)\n",
                p->tpot_p90_ms);
    else if (other->nodes && other->meets)
        fprintf(out, "decode layout: %s (%d nodes vs %d)\n", mr_cap_layout_name(l->winner),
                mr_cap_layout_total_nodes(win), mr_cap_layout_total_nodes(other));
    else
        fprintf(out, "decode layout: %s (%d nodes vs none)\n", mr_cap_layout_name(l->winner),
                mr_cap_layout_total_nodes(win));
}

static cJSON *layout_row_json(const mr_cap_layout_row *w)
{
    cJSON *j = cJSON_CreateObject();
    if (!w->nodes) {
        cJSON_AddNullToObject(j, "total_nodes");
        return j;
    }
    const bool afd = w->layout == MR_CAP_LAYOUT_AFD;
    cJSON_AddNumberToObject(j, afd ? "attention_nodes" : "decode_nodes", w->nodes);
    if (afd) cJSON_AddNumberToObject(j, "expert_nodes", w->expert_nodes);
    cJSON_AddNumberToObject(j, "total_nodes", mr_cap_layout_total_nodes(w));
    cJSON_AddNumberToObject(j, "batch_per_gpu", w->batch_per_gpu);
    cJSON_AddNumberToObject(j, "batch_limit", w->batch_limit);
    cJSON_AddNumberToObject(j, "tpot_ms", w->tpot_ms);
    cJSON_AddNumberToObject(j, "tok_s_per_node", w->tok_s_per_node);
    cJSON_AddBoolToObject(j, "meets", w->meets);
    cJSON_AddStringToObject(j, "binds", mr_cap_bind_name(w));
    cJSON *s = cJSON_AddObjectToObject(j, "step_ms");
    cJSON_AddNumberToObject(s, "hbm", 1e3 * w->split.hbm_s);
    cJSON_AddNumberToObject(s, "compute", 1e3 * w->split.math_s);
    cJSON_AddNumberToObject(s, "nvlink", 1e3 * w->split.nvlink_s);
    cJSON_AddNumberToObject(s, "network", 1e3 * w->split.net_s);
    cJSON_AddNumberToObject(s, "on_expert_gpus", 1e3 * w->split.expert_s);
    return j;
}

cJSON *mr_cap_layouts_json(const mr_cap_model *m, const mr_cap_plan *p)
{
    const mr_cap_layouts *l = &p->layouts;
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    if (l->winner == MR_CAP_LAYOUT_NONE) cJSON_AddNullToObject(o, "winner");
    else cJSON_AddStringToObject(o, "winner", l->winner == MR_CAP_LAYOUT_EP ? "ep_on_decode"
                                                                           : "disaggregated");
    cJSON_AddNumberToObject(o, "tpot_p90_ms", p->tpot_p90_ms);
    cJSON_AddItemToObject(o, "ep_on_decode", layout_row_json(&l->ep));
    cJSON *a = layout_row_json(&l->afd);
    cJSON_AddItemToObject(o, "disaggregated", a);
    cJSON_AddNumberToObject(a, "attention_weights_gb_per_gpu", l->afd_attn_weight_bytes / 1e9);
    cJSON_AddNumberToObject(a, "attention_batch_limit", l->afd_attn_batch_limit);
    cJSON_AddNumberToObject(a, "expert_weights_gb_per_gpu", l->afd_expert_weight_bytes / 1e9);
    cJSON_AddNumberToObject(a, "min_expert_nodes", l->afd_min_expert_nodes);
    cJSON_AddNumberToObject(a, "max_expert_nodes_searched", l->afd_max_expert_nodes);
    cJSON_AddNumberToObject(a, "net_bytes_per_token_per_moe_layer", l->afd_net_bytes_per_token);
    if (l->afd.nodes) {
        cJSON_AddNumberToObject(a, "attention_gpus", l->afd.nodes * m->hw.gpus_per_node);
        cJSON_AddNumberToObject(a, "expert_gpus", l->afd.expert_nodes * m->hw.gpus_per_node);
    }
    return o;
}
