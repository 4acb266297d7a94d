/* planner/capacity_afd.c — which decode layout wins: EP on the decode GPUs
 * (the decode answer of capacity_sim.c) or attention–FFN disaggregation
 * (separate expert nodes). The AFD step time, its operating point at the
 * trace's decode demand, the search for the cheapest (attention nodes,
 * expert nodes) pair, and the comparison. Contract and the model's
 * assumptions in capacity.h; per-layer costs in capacity.c. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "capacity.h"

/* Add a work item's roofline time to split, attributed to its larger term;
 * links count only when `links` (AFD compute parts leave them to the
 * caller). Returns the time added. */
static double split_add(const mr_cap_model *m, const mr_cap_work *w, double layers, bool links,
                        mr_cap_split *split)
{
    mr_cap_terms t;
    mr_cap_work_terms(m, w, &t);
    if (!links) t.nvlink_s = t.net_s = 0;
    const double s = fmax(fmax(t.hbm_s, t.math_s), fmax(t.nvlink_s, t.net_s));
    if (split) {
        double *to = s == t.hbm_s ? &split->hbm_s : s == t.math_s ? &split->math_s
                     : s == t.nvlink_s ? &split->nvlink_s : &split->net_s;
        *to += layers * s;
    }
    return s;
}

static int n_dense(const mr_config *c)
{
    return c->first_k_dense_replace < c->num_hidden_layers ? c->first_k_dense_replace
                                                           : c->num_hidden_layers;
}

static mr_cap_batch decode_batch(double batch, double context)
{
    return (mr_cap_batch){.phase = MR_CAP_DECODE, .tokens = batch, .attn_pairs = batch * context,
                          .kv_rows = batch * context, .logits_rows = batch};
}

double mr_cap_decode_step_split(const mr_cap_model *m, int ep_gpus, double batch, double context,
                                mr_cap_split *split)
{
    const int dense = n_dense(m->cfg), moe = m->cfg->num_hidden_layers - dense;
    const mr_cap_batch b = decode_batch(batch, context);
    mr_cap_work w;
    double t = 0;
    if (split) memset(split, 0, sizeof *split);
    if (dense > 0) {
        mr_cap_layer_work(m, ep_gpus, false, &b, &w);
        t += dense * split_add(m, &w, dense, true, split);
    }
    if (moe > 0) {
        mr_cap_layer_work(m, ep_gpus, true, &b, &w);
        t += moe * split_add(m, &w, moe, true, split);
    }
    mr_cap_head_work(m, &b, &w);
    return t + split_add(m, &w, 1, true, split);
}

double mr_cap_afd_step_s(const mr_cap_model *m, int attn_gpus, int expert_gpus, double batch,
                         double context, mr_cap_split *split)
{
    const int dense = n_dense(m->cfg), moe = m->cfg->num_hidden_layers - dense;
    const mr_cap_batch b = decode_batch(batch, context);
    mr_cap_work attn, experts;
    double t = 0;
    if (split) memset(split, 0, sizeof *split);
    if (dense > 0) {
        mr_cap_afd_layer_work(m, attn_gpus, expert_gpus, false, &b, &attn, &experts);
        t += dense * split_add(m, &attn, dense, true, split);
    }
    if (moe > 0) {
        mr_cap_afd_layer_work(m, attn_gpus, expert_gpus, true, &b, &attn, &experts);
        mr_cap_terms ta, te;
        mr_cap_work_terms(m, &attn, &ta);
        mr_cap_work_terms(m, &experts, &te);
        const double compute = fmax(ta.hbm_s, ta.math_s) + fmax(te.hbm_s, te.math_s);
        const double net = fmax(ta.net_s, te.net_s); /* both NICs run at once */
        if (net > compute) {
            if (split) split->net_s += moe * net;
        } else if (split) {
            split_add(m, &attn, moe, false, split);
            const double before = split->hbm_s + split->math_s;
            split_add(m, &experts, moe, false, split);
            split->expert_s += split->hbm_s + split->math_s - before;
        }
        t += moe * fmax(compute, net);
    }
    mr_cap_head_work(m, &b, &attn);
    return t + split_add(m, &attn, 1, true, split);
}

/* ---- the AFD operating point ----------------------------------------------- */

static double usable_bytes(const mr_cap_model *m)
{
    return m->dep.mem_util * m->hw.hbm_bytes;
}

static bool afd_experts_fit(const mr_cap_model *m, int expert_nodes)
{
    return mr_cap_afd_expert_weight_bytes(m, expert_nodes * m->hw.gpus_per_node) <
           usable_bytes(m);
}

static double afd_batch_limit(const mr_cap_model *m, double context)
{
    const double free_bytes = usable_bytes(m) - mr_cap_afd_attn_weight_bytes(m);
    if (free_bytes <= 0) return 0;
    return fmin(m->dep.decode_max_batch,
                floor(free_bytes / (mr_cap_kv_bytes_per_token(m) * fmax(context, 1.0))));
}

mr_status mr_cap_afd_evaluate(const mr_cap_model *m, const mr_cap_trace_stats *t, int attn_nodes,
                              int expert_nodes, double tpot_target_ms, mr_cap_layout_row *out)
{
    const int gpn = m->hw.gpus_per_node;
    if (attn_nodes < 1 || expert_nodes < 1 || t->output_tok_s <= 0)
        return mr_fail(MR_EINVAL, "disaggregated decode: %d attention and %d expert nodes, %g "
                       "output tok/s", attn_nodes, expert_nodes, t->output_tok_s);
    const int A = attn_nodes * gpn, X = expert_nodes * gpn;
    const double ctx = t->decode_context, per_gpu = t->output_tok_s / A;
    memset(out, 0, sizeof *out);
    out->layout = MR_CAP_LAYOUT_AFD;
    out->nodes = attn_nodes;
    out->expert_nodes = expert_nodes;
    out->tok_s_per_node = t->output_tok_s / (attn_nodes + expert_nodes);
    out->batch_limit = afd_experts_fit(m, expert_nodes) ? afd_batch_limit(m, ctx) : 0;
    if (out->batch_limit < 1) {
        out->batch_limit = 0;
        out->overloaded = true;
        return MR_OK;
    }
    const double limit = out->batch_limit;
    const double limit_step = mr_cap_afd_step_s(m, A, X, limit, ctx, NULL);
    out->utilization = per_gpu / (limit / limit_step);
    if (out->utilization > 1.0) {
        out->overloaded = true;
        out->batch_per_gpu = limit;
        out->tpot_ms = 1e3 * mr_cap_afd_step_s(m, A, X, limit, ctx, &out->split);
        return MR_OK;
    }
    /* b / step(b) grows with b (step(b) / b never grows): bisect */
    double lo = 0, hi = limit;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid / mr_cap_afd_step_s(m, A, X, mid, ctx, NULL) >= per_gpu) hi = mid;
        else lo = mid;
    }
    out->batch_per_gpu = hi;
    out->tpot_ms = 1e3 * mr_cap_afd_step_s(m, A, X, hi, ctx, &out->split);
    out->meets = out->tpot_ms <= tpot_target_ms;
    return MR_OK;
}

/* EP on decode at `nodes` in the same row shape (nodes must suit decode_ep_nodes). */
static mr_status ep_evaluate(const mr_cap_model *m, const mr_cap_trace_stats *t, int nodes,
                             double tpot_ms, mr_cap_layout_row *out)
{
    mr_cap_decode_row d;
    MR_TRY(mr_cap_decode_evaluate(m, t, nodes, tpot_ms, &d));
    *out = (mr_cap_layout_row){
        .layout = MR_CAP_LAYOUT_EP, .nodes = nodes, .batch_per_gpu = d.batch_per_gpu,
        .batch_limit = d.batch_limit, .tpot_ms = d.tpot_ms, .utilization = d.utilization,
        .tok_s_per_node = d.tok_s_per_node, .overloaded = d.overloaded, .meets = d.meets,
    };
    if (d.batch_limit >= 1)
        mr_cap_decode_step_split(m, d.ep_gpus, d.batch_per_gpu, t->decode_context, &out->split);
    return MR_OK;
}

/* The resource with the largest share of a step: 0 HBM, 1 compute, 2 NVLink, 3 network. */
static int split_top(const mr_cap_split *s, double part[4])
{
    part[0] = s->hbm_s, part[1] = s->math_s, part[2] = s->nvlink_s, part[3] = s->net_s;
    int top = 0;
    for (int i = 1; i < 4; i++)
        if (part[i] > part[top]) top = i;
    return top;
}

/* Why `fewer` (one node fewer than an answer) fails: the weights, the batch
 * limit when its step would still meet the target, else the TPOT target
 * through the largest share of its step. */
static mr_cap_bind bind_of(const mr_cap_model *m, const mr_cap_layout_row *fewer, double tpot_ms)
{
    static const mr_cap_bind by_resource[4] = {MR_CAP_BIND_HBM, MR_CAP_BIND_COMPUTE,
                                               MR_CAP_BIND_NVLINK, MR_CAP_BIND_NETWORK};
    double part[4];
    if (fewer->batch_limit < 1) return MR_CAP_BIND_WEIGHTS;
    if (fewer->overloaded && fewer->tpot_ms <= tpot_ms)
        return fewer->batch_limit < m->dep.decode_max_batch ? MR_CAP_BIND_KV : MR_CAP_BIND_BATCH;
    return by_resource[split_top(&fewer->split, part)];
}

/* ---- search and comparison ---------------------------------------------------- */

/* Fewest attention nodes (<= cap) meeting the target with expert_nodes
 * expert nodes: exponential, then binary search. *attn = 0 when none. */
static mr_status afd_fewest_attn(const mr_cap_model *m, const mr_cap_trace_stats *t,
                                 double tpot_ms, int expert_nodes, int cap, int *attn,
                                 mr_cap_layout_row *row)
{
    int lo = 0, hi = 1; /* lo fails (0: none tried), hi is probed */
    *attn = 0;
    for (;;) {
        MR_TRY(mr_cap_afd_evaluate(m, t, hi, expert_nodes, tpot_ms, row));
        if (row->meets) break;
        lo = hi;
        if (hi >= cap) return MR_OK;
        hi = 2 * hi < cap ? 2 * hi : cap;
    }
    while (hi - lo > 1) {
        const int mid = lo + (hi - lo) / 2;
        mr_cap_layout_row r;
        MR_TRY(mr_cap_afd_evaluate(m, t, mid, expert_nodes, tpot_ms, &r));
        if (r.meets) hi = mid;
        else lo = mid;
    }
    *attn = hi;
    return mr_cap_afd_evaluate(m, t, hi, expert_nodes, tpot_ms, row);
}

static mr_status afd_search(const mr_cap_model *m, const mr_cap_trace_stats *t, double tpot_ms,
                            mr_cap_layouts *o)
{
    const int gpn = m->hw.gpus_per_node, max_nodes = m->dep.max_nodes;
    o->afd.layout = MR_CAP_LAYOUT_AFD;
    for (int n = 1; n <= max_nodes && !o->afd_min_expert_nodes; n++) {
        if (afd_experts_fit(m, n)) o->afd_min_expert_nodes = n;
        if ((long)n * gpn >= m->cfg->n_routed_experts) break; /* one expert per GPU: no fewer */
    }
    const int e_min = o->afd_min_expert_nodes;
    if (!e_min || o->afd_attn_batch_limit < 1) return MR_OK; /* never fits */
    const int wide = 4 * e_min > 64 ? 4 * e_min : 64;
    o->afd_max_expert_nodes = wide < max_nodes ? wide : max_nodes;
    int best_total = 0;
    for (int e = e_min; e <= o->afd_max_expert_nodes; e++) {
        if (best_total && e + 1 > best_total) break; /* no pair with e expert nodes can win */
        const int cap = best_total ? best_total - e : max_nodes;
        int a = 0;
        mr_cap_layout_row row;
        MR_TRY(afd_fewest_attn(m, t, tpot_ms, e, cap, &a, &row));
        if (!a) continue;
        /* a + e <= best_total here (cap); a tie goes to the lower TPOT */
        if (!best_total || a + e < best_total || row.tpot_ms < o->afd.tpot_ms) {
            best_total = a + e;
            o->afd = row;
        }
    }
    if (!o->afd.nodes) return MR_OK;
    o->afd_expert_weight_bytes = mr_cap_afd_expert_weight_bytes(m, o->afd.expert_nodes * gpn);
    mr_cap_layout_row fewer;
    if (o->afd.nodes > 1)
        MR_TRY(mr_cap_afd_evaluate(m, t, o->afd.nodes - 1, o->afd.expert_nodes, tpot_ms, &fewer));
    else if (o->afd.expert_nodes > e_min)
        MR_TRY(mr_cap_afd_evaluate(m, t, 1, o->afd.expert_nodes - 1, tpot_ms, &fewer));
    else
        fewer = (mr_cap_layout_row){.batch_limit = 0}; /* fewer expert nodes do not hold them */
    o->afd.binds = bind_of(m, &fewer, tpot_ms);
    return MR_OK;
}

int mr_cap_layout_total_nodes(const mr_cap_layout_row *r)
{
    return r->nodes ? r->nodes + r->expert_nodes : 0;
}

mr_status mr_cap_layouts_compare(const mr_cap_model *m, const mr_cap_trace_stats *t,
                                 double tpot_ms, int ep_nodes, mr_cap_layouts *o)
{
    const int gpn = m->hw.gpus_per_node, u = m->dep.decode_ep_nodes;
    memset(o, 0, sizeof *o);
    o->ep.layout = MR_CAP_LAYOUT_EP;
    o->afd_attn_weight_bytes = mr_cap_afd_attn_weight_bytes(m);
    o->afd_attn_batch_limit = afd_batch_limit(m, t->decode_context);
    o->afd_net_bytes_per_token = mr_cap_afd_net_bytes_per_token(m);
    if (ep_nodes > 0) {
        MR_TRY(ep_evaluate(m, t, ep_nodes, tpot_ms, &o->ep));
        const int fewer_nodes = ep_nodes - (u > 0 ? u : 1);
        mr_cap_layout_row fewer = {.batch_limit = 0};
        if (fewer_nodes >= 1) MR_TRY(ep_evaluate(m, t, fewer_nodes, tpot_ms, &fewer));
        o->ep.binds = fewer_nodes < 1 && u > 0 ? MR_CAP_BIND_GROUP : bind_of(m, &fewer, tpot_ms);
    }
    MR_TRY(afd_search(m, t, tpot_ms, o));
    if (!o->afd.nodes && o->afd_min_expert_nodes)
        o->afd_expert_weight_bytes =
            mr_cap_afd_expert_weight_bytes(m, o->afd_min_expert_nodes * gpn);

    const bool ep_ok = o->ep.nodes > 0 && o->ep.meets, afd_ok = o->afd.nodes > 0 && o->afd.meets;
    if (ep_ok && afd_ok)
        o->winner = mr_cap_layout_total_nodes(&o->afd) < mr_cap_layout_total_nodes(&o->ep)
                        ? MR_CAP_LAYOUT_AFD : MR_CAP_LAYOUT_EP;
    else
        o->winner = ep_ok ? MR_CAP_LAYOUT_EP : afd_ok ? MR_CAP_LAYOUT_AFD : MR_CAP_LAYOUT_NONE;
    return MR_OK;
}
