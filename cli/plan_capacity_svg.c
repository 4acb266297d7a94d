/* cli/plan_capacity_svg.c — see plan_capacity_svg.h. */
#include "plan_capacity_svg.h"

#include <math.h>
#include <stdio.h>

#include "../common/svg_chart.h"

#define N_BATCH_POINTS 48

static mr_status prefill_panel(mr_svg_panel *p, const mr_cap_plan *plan)
{
    char title[96];
    snprintf(title, sizeof title, "prefill: TTFT vs nodes (answer: %d)", plan->prefill_nodes);
    mr_svg_set_labels(p, title, "prefill nodes", "TTFT (ms)");
    double x[MR_CAP_ROWS], p50[MR_CAP_ROWS], p90[MR_CAP_ROWS], p99[MR_CAP_ROWS];
    int n = plan->n_prefill_rows;
    for (int i = 0; i < n; i++) {
        x[i] = plan->prefill_rows[i].nodes;
        p50[i] = plan->prefill_rows[i].ttft_p50_ms;
        p90[i] = plan->prefill_rows[i].ttft_p90_ms;
        p99[i] = plan->prefill_rows[i].ttft_p99_ms;
    }
    MR_TRY(mr_svg_add_series(p, "TTFT p50", x, p50, (size_t)n));
    MR_TRY(mr_svg_add_series(p, "TTFT p90", x, p90, (size_t)n));
    MR_TRY(mr_svg_add_series(p, "TTFT p99", x, p99, (size_t)n));
    if (n > 0) {
        double tx[2] = {x[0], x[n - 1]}, ty[2] = {plan->ttft_p90_ms, plan->ttft_p90_ms};
        MR_TRY(mr_svg_add_series(p, "p90 target", tx, ty, 2));
    }
    if (plan->prefill_nodes > 0) mr_svg_add_mark(p, plan->prefill_nodes, "the answer");
    return MR_OK;
}

static mr_status decode_panel(mr_svg_panel *p, const mr_cap_model *m, const mr_cap_plan *plan)
{
    const mr_cap_decode_row *answer = NULL;
    for (int i = 0; i < plan->n_decode_rows; i++)
        if (plan->decode_rows[i].nodes == plan->decode_nodes) answer = &plan->decode_rows[i];
    char title[96];
    snprintf(title, sizeof title, "decode: TPOT vs batch per GPU (EP%d, ctx %.0f)",
             answer ? answer->ep_gpus : 0, plan->trace.decode_context);
    mr_svg_set_labels(p, title, "sequences per GPU", "TPOT = step time (ms)");
    p->log_x = true;
    if (!answer || answer->batch_limit < 1) return mr_svg_add_series(p, "step time", NULL, NULL, 0);
    double x[N_BATCH_POINTS], y[N_BATCH_POINTS];
    const double top = answer->batch_limit;
    for (int i = 0; i < N_BATCH_POINTS; i++) { /* log-spaced 1 .. batch limit */
        x[i] = pow(top, (double)i / (N_BATCH_POINTS - 1));
        y[i] = 1e3 * mr_cap_decode_step_s(m, answer->ep_gpus, x[i], plan->trace.decode_context);
    }
    MR_TRY(mr_svg_add_series(p, "step time", x, y, N_BATCH_POINTS));
    double tx[2] = {1, top}, ty[2] = {plan->tpot_p90_ms, plan->tpot_p90_ms};
    MR_TRY(mr_svg_add_series(p, "TPOT target", tx, ty, 2));
    mr_svg_add_mark(p, answer->batch_per_gpu > 1 ? answer->batch_per_gpu : 1,
                    "the demand's batch");
    return MR_OK;
}

mr_status mr_cap_write_svg(const mr_cap_model *m, const mr_cap_plan *plan, const char *path)
{
    mr_svg_chart c;
    char title[128];
    snprintf(title, sizeof title, "moerun plan capacity: %s, %.2f req/s", m->hw.name,
             plan->trace.req_per_s);
    mr_svg_init(&c, title, 2, 1);
    mr_status st = prefill_panel(mr_svg_panel_at(&c, 0), plan);
    if (st == MR_OK) st = decode_panel(mr_svg_panel_at(&c, 1), m, plan);
    if (st == MR_OK) st = mr_svg_write(&c, path);
    mr_svg_free(&c);
    return st;
}
