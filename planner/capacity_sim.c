/* planner/capacity_sim.c — trace statistics, the prefill discrete-event
 * simulation, the decode operating point, and the node-count search of
 * `moerun plan capacity`. Contract in capacity.h; costs from capacity.c. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capacity.h"
#include "../common/stats.h"

void mr_cap_trace_stats_compute(const mr_cap_request *r, int n, double rate_scale,
                                mr_cap_trace_stats *o)
{
    memset(o, 0, sizeof *o);
    o->n_requests = n;
    if (n <= 0 || rate_scale <= 0) return;
    const double span = (r[n - 1].arrival_s - r[0].arrival_s) / rate_scale;
    double in = 0, out = 0, ctx = 0;
    for (int i = 0; i < n; i++) {
        in += r[i].input_tokens;
        out += r[i].output_tokens;
        ctx += r[i].output_tokens * (r[i].input_tokens + (r[i].output_tokens + 1.0) / 2.0);
    }
    o->duration_s = fmax(span, 1.0);
    o->req_per_s = n / o->duration_s;
    o->mean_input = in / n;
    o->mean_output = out / n;
    o->input_tok_s = in / o->duration_s;
    o->output_tok_s = out / o->duration_s;
    o->decode_context = out > 0 ? ctx / out : 0;
    o->peak_minute_ratio = 1.0;
    if (span >= 60.0) {
        int best = 0;
        for (int i = 0, j = 0; i < n; i++) {
            while (j < n && (r[j].arrival_s - r[i].arrival_s) / rate_scale < 60.0) j++;
            if (j - i > best) best = j - i;
        }
        o->peak_minute_ratio = best / (60.0 * o->req_per_s);
    }
}

/* ---- prefill: discrete-event simulation ----------------------------------- */

typedef struct sim_slot {
    double free_at;
    int gpu;
} sim_slot;

typedef struct prefill_sim {
    const mr_cap_model *m;
    const mr_cap_request *reqs;
    double rate_scale;
    int ep_gpus;
    sim_slot *heap;   /* busy GPUs by free_at (then GPU index) */
    int n_heap;
    int *idle, n_idle;
    int *cur, *done;  /* per GPU: request in the middle of prefill (-1 none), tokens done */
    int *finished;    /* requests finishing in the batch being formed */
    int q_head, n_arrived;
    double *ttft_ms;
    double busy_s, end_s;
} prefill_sim;

static bool slot_before(sim_slot a, sim_slot b)
{
    return a.free_at < b.free_at || (a.free_at == b.free_at && a.gpu < b.gpu);
}

static void heap_push(prefill_sim *s, sim_slot v)
{
    int i = s->n_heap++;
    while (i > 0 && slot_before(v, s->heap[(i - 1) / 2])) {
        s->heap[i] = s->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    s->heap[i] = v;
}

static sim_slot heap_pop(prefill_sim *s)
{
    sim_slot top = s->heap[0], last = s->heap[--s->n_heap];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= s->n_heap) break;
        if (c + 1 < s->n_heap && slot_before(s->heap[c + 1], s->heap[c])) c++;
        if (!slot_before(s->heap[c], last)) break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (s->n_heap > 0) s->heap[i] = last;
    return top;
}

/* Add prompt positions [p0, p1) of one request to batch b. */
static void add_piece(mr_cap_batch *b, double p0, double p1)
{
    b->tokens += p1 - p0;
    b->attn_pairs += (p1 * (p1 + 1.0) - p0 * (p0 + 1.0)) / 2.0; /* position p attends to p + 1 */
    b->kv_rows += p1;                                           /* p0 rows read, p1 - p0 written */
}

/* GPU g is free at t: form its next chunk, or go idle when there is none. */
static void start_batch(prefill_sim *s, int g, double t)
{
    const int chunk = s->m->dep.prefill_chunk_tokens;
    mr_cap_batch b = {.phase = MR_CAP_PREFILL};
    int budget = chunk, n_fin = 0;
    if (s->cur[g] >= 0) {
        const mr_cap_request *r = &s->reqs[s->cur[g]];
        int take = r->input_tokens - s->done[g] < budget ? r->input_tokens - s->done[g] : budget;
        add_piece(&b, s->done[g], s->done[g] + take);
        s->done[g] += take;
        budget -= take;
        if (s->done[g] == r->input_tokens) {
            s->finished[n_fin++] = s->cur[g];
            s->cur[g] = -1;
        }
    }
    while (budget > 0 && s->q_head < s->n_arrived) {
        int id = s->q_head++, len = s->reqs[id].input_tokens;
        int take = len < budget ? len : budget;
        add_piece(&b, 0, take);
        budget -= take;
        if (take == len) {
            s->finished[n_fin++] = id;
        } else {
            s->cur[g] = id;
            s->done[g] = take;
        }
    }
    if (b.tokens <= 0) {
        s->idle[s->n_idle++] = g;
        return;
    }
    b.logits_rows = n_fin;
    const double service = mr_cap_forward_s(s->m, s->ep_gpus, &b), end = t + service;
    for (int i = 0; i < n_fin; i++) {
        const int id = s->finished[i];
        s->ttft_ms[id] = 1e3 * (end - s->reqs[id].arrival_s / s->rate_scale);
    }
    s->busy_s += service;
    if (end > s->end_s) s->end_s = end;
    heap_push(s, (sim_slot){end, g});
}

static void prefill_events(prefill_sim *s, int n)
{
    for (;;) {
        const double t_arr = s->n_arrived < n ? s->reqs[s->n_arrived].arrival_s / s->rate_scale
                                              : INFINITY;
        const double t_free = s->n_heap ? s->heap[0].free_at : INFINITY;
        if (isinf(t_arr) && isinf(t_free)) break;
        if (t_arr <= t_free) { /* arrivals first: they join a batch formed at the same instant */
            s->n_arrived++;
            if (s->n_idle > 0) {
                int g = s->idle[--s->n_idle];
                start_batch(s, g, t_arr);
            }
        } else {
            sim_slot slot = heap_pop(s);
            start_batch(s, slot.gpu, slot.free_at);
        }
    }
}

/* Nearest-rank percentile of sorted v[0..n). */
static double percentile(const double *v, int n, double p)
{
    int rank = (int)ceil(p * n - 1e-9);
    return v[rank < 1 ? 0 : rank - 1];
}

mr_status mr_cap_prefill_simulate(const mr_cap_model *m, int ep_nodes, const mr_cap_request *reqs,
                                  int n, double rate_scale, int nodes, double ttft_target_ms,
                                  mr_cap_prefill_row *out)
{
    const int gpn = m->hw.gpus_per_node;
    if (n < 1 || rate_scale <= 0 || ep_nodes < 1 || nodes < ep_nodes || nodes % ep_nodes ||
        m->dep.prefill_chunk_tokens < 1 || (long)nodes * gpn > (1L << 24))
        return mr_fail(MR_EINVAL, "prefill simulation: %d requests, rate scale %g, %d nodes in EP "
                       "groups of %d, chunk %d tokens", n, rate_scale, nodes, ep_nodes,
                       m->dep.prefill_chunk_tokens);
    for (int i = 1; i < n; i++)
        if (reqs[i].arrival_s < reqs[i - 1].arrival_s)
            return mr_fail(MR_EINVAL, "prefill simulation: request %d arrives before request %d",
                           i, i - 1);
    const int gpus = nodes * gpn;
    prefill_sim s = {.m = m, .reqs = reqs, .rate_scale = rate_scale, .ep_gpus = ep_nodes * gpn};
    s.heap = malloc(sizeof *s.heap * (size_t)gpus);
    s.idle = malloc(sizeof(int) * (size_t)gpus);
    s.cur = malloc(sizeof(int) * (size_t)gpus);
    s.done = calloc((size_t)gpus, sizeof(int));
    s.finished = malloc(sizeof(int) * ((size_t)m->dep.prefill_chunk_tokens + 1));
    s.ttft_ms = malloc(sizeof(double) * (size_t)n);
    mr_status st = MR_OK;
    if (!s.heap || !s.idle || !s.cur || !s.done || !s.finished || !s.ttft_ms) {
        st = mr_fail(MR_ENOMEM, "prefill simulation: out of memory (%d GPUs, %d requests)", gpus,
                     n);
        goto fail;
    }
    for (int g = 0; g < gpus; g++) {
        s.cur[g] = -1;
        s.idle[s.n_idle++] = gpus - 1 - g; /* GPU 0 on top */
    }
    prefill_events(&s, n);
    mr_sort_doubles(s.ttft_ms, (size_t)n);
    const double span = fmax(s.end_s - reqs[0].arrival_s / rate_scale, 1e-9);
    double in = 0;
    for (int i = 0; i < n; i++) in += reqs[i].input_tokens;
    *out = (mr_cap_prefill_row){
        .nodes = nodes,
        .ttft_p50_ms = percentile(s.ttft_ms, n, 0.50),
        .ttft_p90_ms = percentile(s.ttft_ms, n, 0.90),
        .ttft_p99_ms = percentile(s.ttft_ms, n, 0.99),
        .utilization = s.busy_s / (gpus * span),
        .tok_s_per_node = in / span / nodes,
    };
    out->meets = out->ttft_p90_ms <= ttft_target_ms;
fail:
    free(s.heap);
    free(s.idle);
    free(s.cur);
    free(s.done);
    free(s.finished);
    free(s.ttft_ms);
    return st;
}

/* Time to prefill one request alone on an idle GPU (its chunks in turn). */
static double request_alone_s(const mr_cap_model *m, int ep_gpus, int input_tokens)
{
    const int chunk = m->dep.prefill_chunk_tokens;
    double t = 0;
    for (int p0 = 0; p0 < input_tokens; p0 += chunk) {
        int p1 = p0 + chunk < input_tokens ? p0 + chunk : input_tokens;
        mr_cap_batch b = {.phase = MR_CAP_PREFILL, .logits_rows = p1 == input_tokens};
        add_piece(&b, p0, p1);
        t += mr_cap_forward_s(m, ep_gpus, &b);
    }
    return t;
}

/* ---- decode: the operating point at a node count -------------------------- */

mr_status mr_cap_decode_evaluate(const mr_cap_model *m, const mr_cap_trace_stats *t, int nodes,
                                 double tpot_target_ms, mr_cap_decode_row *out)
{
    const int u = m->dep.decode_ep_nodes, gpn = m->hw.gpus_per_node;
    if (nodes < 1 || (u > 0 && nodes % u) || t->output_tok_s <= 0)
        return mr_fail(MR_EINVAL, "decode: %d nodes in EP groups of %d nodes, %g output tok/s",
                       nodes, u, t->output_tok_s);
    const int ep_gpus = (u > 0 ? u : nodes) * gpn;
    const double ctx = t->decode_context, per_gpu = t->output_tok_s / ((double)nodes * gpn);
    memset(out, 0, sizeof *out);
    out->nodes = nodes;
    out->ep_gpus = ep_gpus;
    out->tok_s_per_node = t->output_tok_s / nodes;
    out->batch_limit = fmin(m->dep.decode_max_batch, mr_cap_kv_batch_limit(m, ep_gpus, ctx));
    if (out->batch_limit < 1) {
        out->overloaded = true;
        return MR_OK;
    }
    const double limit = out->batch_limit;
    const double limit_step = mr_cap_decode_step_s(m, ep_gpus, limit, ctx);
    out->utilization = per_gpu / (limit / limit_step);
    if (out->utilization > 1.0) {
        out->overloaded = true;
        out->batch_per_gpu = limit;
        out->tpot_ms = 1e3 * limit_step;
        return MR_OK;
    }
    /* b / step(b) grows with b: bisect for the batch that delivers per_gpu */
    double lo = 0, hi = limit;
    for (int it = 0; it < 60; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid / mr_cap_decode_step_s(m, ep_gpus, mid, ctx) >= per_gpu) hi = mid;
        else lo = mid;
    }
    out->batch_per_gpu = hi;
    out->tpot_ms = 1e3 * mr_cap_decode_step_s(m, ep_gpus, hi, ctx);
    out->meets = out->tpot_ms <= tpot_target_ms;
    return MR_OK;
}

/* ---- search ---------------------------------------------------------------- */

static mr_status search_prefill(const mr_cap_model *m, const mr_cap_request *reqs, int n,
                                mr_cap_plan *p)
{
    const int u = p->prefill_ep_nodes, max_k = m->dep.max_nodes / u > 0 ? m->dep.max_nodes / u : 1;
    mr_cap_prefill_row row;
    int answer_k = 0, centre_k = 1;
    if (p->prefill_idle_p90_ms <= p->ttft_p90_ms) {
        int lo = 0, hi = 1; /* lo fails (0: none tried), hi is probed */
        for (;;) {
            MR_TRY(mr_cap_prefill_simulate(m, u, reqs, n, p->rate_scale, hi * u, p->ttft_p90_ms,
                                           &row));
            if (row.meets) break;
            lo = hi;
            if (hi == max_k) break;
            hi = 2 * hi < max_k ? 2 * hi : max_k;
        }
        if (row.meets) {
            while (hi - lo > 1) {
                int mid = lo + (hi - lo) / 2;
                MR_TRY(mr_cap_prefill_simulate(m, u, reqs, n, p->rate_scale, mid * u,
                                               p->ttft_p90_ms, &row));
                if (row.meets) hi = mid;
                else lo = mid;
            }
            answer_k = hi;
        }
        centre_k = answer_k ? answer_k : max_k;
    }
    p->prefill_nodes = answer_k * u;
    int first = centre_k - 2 > 1 ? centre_k - 2 : 1;
    if (first + MR_CAP_ROWS - 1 > max_k)
        first = max_k - MR_CAP_ROWS + 1 > 1 ? max_k - MR_CAP_ROWS + 1 : 1;
    for (int k = first; k <= max_k && p->n_prefill_rows < MR_CAP_ROWS; k++)
        MR_TRY(mr_cap_prefill_simulate(m, u, reqs, n, p->rate_scale, k * u, p->ttft_p90_ms,
                                       &p->prefill_rows[p->n_prefill_rows++]));
    return MR_OK;
}

static mr_status search_decode(const mr_cap_model *m, mr_cap_plan *p)
{
    const int u = m->dep.decode_ep_nodes > 0 ? m->dep.decode_ep_nodes : 1;
    const int gpn = m->hw.gpus_per_node;
    const double ctx = p->trace.decode_context;
    int first_fit = 0;
    for (int nodes = u; nodes <= m->dep.max_nodes && !first_fit; nodes += u) {
        int ep = (m->dep.decode_ep_nodes > 0 ? u : nodes) * gpn;
        if (mr_cap_kv_batch_limit(m, ep, ctx) >= 1) first_fit = nodes;
        if (m->dep.decode_ep_nodes > 0) break; /* a fixed group: it fits or it never will */
    }
    if (!first_fit)
        return mr_fail(MR_EINVAL, "decode: the weights (%.1f GB per GPU with EP over %d nodes) and "
                       "one sequence of %.0f tokens do not fit in %.0f%% of %.0f GB HBM",
                       mr_cap_weight_bytes_per_gpu(m, (m->dep.decode_ep_nodes > 0 ? u
                                                       : m->dep.max_nodes) * gpn) / 1e9,
                       m->dep.decode_ep_nodes > 0 ? u : m->dep.max_nodes, ctx,
                       100 * m->dep.mem_util, m->hw.hbm_bytes / 1e9);
    p->decode_min_nodes = first_fit;
    const int largest = m->dep.decode_ep_nodes > 0 ? u : m->dep.max_nodes;
    p->decode_floor_ms = 1e3 * mr_cap_decode_step_s(m, largest * gpn, 1, ctx);
    mr_cap_decode_row row;
    for (int nodes = first_fit; nodes <= m->dep.max_nodes && !p->decode_nodes; nodes += u) {
        MR_TRY(mr_cap_decode_evaluate(m, &p->trace, nodes, p->tpot_p90_ms, &row));
        if (row.meets) p->decode_nodes = nodes;
    }
    const int centre = p->decode_nodes ? p->decode_nodes : first_fit;
    int first = centre - 2 * u > first_fit ? centre - 2 * u : first_fit;
    for (int nodes = first; nodes <= m->dep.max_nodes && p->n_decode_rows < MR_CAP_ROWS; nodes += u)
        MR_TRY(mr_cap_decode_evaluate(m, &p->trace, nodes, p->tpot_p90_ms,
                                      &p->decode_rows[p->n_decode_rows++]));
    const int ep = (m->dep.decode_ep_nodes > 0 ? u : centre) * gpn;
    p->decode_weight_bytes = mr_cap_weight_bytes_per_gpu(m, ep);
    p->decode_batch_at_slo = mr_cap_decode_capacity(m, ep, ctx, p->tpot_p90_ms,
                                                    &p->decode_node_tok_s);
    return MR_OK;
}

static mr_status check_inputs(const mr_cap_model *m, int n, double rate_scale, double ttft,
                              double tpot)
{
    const mr_cap_deploy *d = &m->dep;
    const mr_cap_hw *hw = &m->hw;
    if (n < 1) return mr_fail(MR_EINVAL, "the trace has no requests");
    if (!(rate_scale > 0) || !(ttft > 0) || !(tpot > 0))
        return mr_fail(MR_EINVAL, "rate scale, TTFT and TPOT targets must be positive");
    if ((d->weight_bytes != 1 && d->weight_bytes != 2) || (d->kv_bytes != 1 && d->kv_bytes != 2) ||
        !(d->efficiency > 0 && d->efficiency <= 1) ||
        !(d->link_efficiency > 0 && d->link_efficiency <= 1) ||
        !(d->mem_util > 0 && d->mem_util <= 1) || d->prefill_chunk_tokens < 1 ||
        d->decode_max_batch < 1 || d->prefill_ep_nodes < 0 || d->decode_ep_nodes < 0 ||
        d->max_nodes < 1)
        return mr_fail(MR_EINVAL, "deployment settings out of range");
    if (!(hw->hbm_bytes > 0 && hw->hbm_bytes_per_s > 0 && hw->bf16_flops_per_s > 0 &&
          hw->fp8_flops_per_s > 0 && hw->nvlink_bytes_per_s > 0 && hw->net_bytes_per_s > 0 &&
          hw->gpus_per_node >= 1))
        return mr_fail(MR_EINVAL, "GPU profile %s: every figure must be positive", hw->name);
    return MR_OK;
}

mr_status mr_cap_plan_run(const mr_cap_model *m, const mr_cap_request *reqs, int n,
                          double rate_scale, double ttft_p90_ms, double tpot_p90_ms,
                          mr_cap_plan *p)
{
    MR_TRY(check_inputs(m, n, rate_scale, ttft_p90_ms, tpot_p90_ms));
    memset(p, 0, sizeof *p);
    p->rate_scale = rate_scale;
    p->ttft_p90_ms = ttft_p90_ms;
    p->tpot_p90_ms = tpot_p90_ms;
    mr_cap_trace_stats_compute(reqs, n, rate_scale, &p->trace);

    const int gpn = m->hw.gpus_per_node;
    const double usable = m->dep.mem_util * m->hw.hbm_bytes;
    if (m->dep.prefill_ep_nodes > 0) {
        p->prefill_ep_nodes = m->dep.prefill_ep_nodes;
        double w = mr_cap_weight_bytes_per_gpu(m, p->prefill_ep_nodes * gpn);
        if (w >= usable)
            return mr_fail(MR_EINVAL, "prefill EP over %d nodes: %.1f GB of weights per GPU, "
                           "%.1f GB usable", p->prefill_ep_nodes, w / 1e9, usable / 1e9);
    } else {
        MR_TRY(mr_cap_min_ep_nodes(m, &p->prefill_ep_nodes));
    }
    const int ep_gpus = p->prefill_ep_nodes * gpn;
    p->prefill_weight_bytes = mr_cap_weight_bytes_per_gpu(m, ep_gpus);
    p->prefill_node_tok_s = mr_cap_prefill_node_tok_s(m, ep_gpus, p->trace.mean_input);
    double *alone = malloc(sizeof(double) * (size_t)n);
    if (!alone) return mr_fail(MR_ENOMEM, "out of memory (%d requests)", n);
    for (int i = 0; i < n; i++) alone[i] = 1e3 * request_alone_s(m, ep_gpus, reqs[i].input_tokens);
    mr_sort_doubles(alone, (size_t)n);
    p->prefill_idle_p90_ms = percentile(alone, n, 0.90);
    free(alone);

    MR_TRY(search_prefill(m, reqs, n, p));
    MR_TRY(search_decode(m, p));

    if (mr_cap_weight_bytes_per_gpu(m, MR_CAP_DEEPSEEK_PREFILL_EP) < usable)
        p->ref_prefill_node_tok_s =
            mr_cap_prefill_node_tok_s(m, MR_CAP_DEEPSEEK_PREFILL_EP, p->trace.mean_input);
    p->ref_decode_batch = mr_cap_decode_capacity(m, MR_CAP_DEEPSEEK_DECODE_EP,
                                                 p->trace.decode_context, tpot_p90_ms,
                                                 &p->ref_decode_node_tok_s);
    return mr_cap_layouts_compare(m, &p->trace, tpot_p90_ms, p->decode_nodes, &p->layouts);
}
