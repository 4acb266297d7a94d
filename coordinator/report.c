/* coordinator/report.c — results, summary, table, status file. Contract in report.h. */
#include "report.h"

#include "common/stats.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ rank reports */

mr_status mr_run_report_init(mr_run_report *rep, int n_ranks)
{
    memset(rep, 0, sizeof *rep);
    rep->ranks = calloc((size_t)(n_ranks > 0 ? n_ranks : 1), sizeof *rep->ranks);
    if (!rep->ranks) return mr_fail(MR_ENOMEM, "report: out of memory");
    rep->n_ranks = n_ranks;
    for (int i = 0; i < n_ranks; i++) {
        rep->ranks[i].rank = i;
        rep->ranks[i].alive = true;
        snprintf(rep->ranks[i].role, sizeof rep->ranks[i].role, "?");
    }
    return MR_OK;
}

void mr_run_report_free(mr_run_report *rep)
{
    if (!rep) return;
    for (int i = 0; i < rep->n_ranks; i++) {
        free(rep->ranks[i].link_bytes);
        free(rep->ranks[i].link_msgs);
    }
    free(rep->ranks);
    memset(rep, 0, sizeof *rep);
}

mr_status mr_run_report_set(mr_run_report *rep, int rank, const char *role, double cpu_s,
                            double compute_s, double transfer_s, double wait_s,
                            uint64_t tokens_processed, uint64_t frames_rejected,
                            const uint64_t *link_bytes, int n_bytes, const uint64_t *link_msgs,
                            int n_msgs)
{
    if (rank < 0 || rank >= rep->n_ranks)
        return mr_fail(MR_EINVAL, "report: rank %d out of range [0, %d)", rank, rep->n_ranks);
    mr_rank_report *r = &rep->ranks[rank];
    if (!r->link_bytes) r->link_bytes = calloc((size_t)rep->n_ranks, sizeof(uint64_t));
    if (!r->link_msgs) r->link_msgs = calloc((size_t)rep->n_ranks, sizeof(uint64_t));
    if (!r->link_bytes || !r->link_msgs) return mr_fail(MR_ENOMEM, "report: out of memory");
    if (role && role[0]) snprintf(r->role, sizeof r->role, "%s", role);
    r->reported = true;
    r->cpu_s = cpu_s;
    r->compute_s = compute_s;
    r->transfer_s = transfer_s;
    r->wait_s = wait_s;
    r->tokens_processed = tokens_processed;
    r->frames_rejected = frames_rejected;
    for (int i = 0; i < rep->n_ranks; i++) {
        r->link_bytes[i] = i < n_bytes && link_bytes ? link_bytes[i] : 0;
        r->link_msgs[i] = i < n_msgs && link_msgs ? link_msgs[i] : 0;
    }
    return MR_OK;
}

int mr_run_report_dead_count(const mr_run_report *rep)
{
    int n = 0;
    for (int i = 0; i < rep->n_ranks; i++) n += !rep->ranks[i].alive;
    return n;
}

/* ------------------------------------------------------------------ results */

/* Round to microseconds so the lines stay short and stable. */
static double ms(double v)
{
    return round(v * 1e3) / 1e3;
}

char *mr_report_result_line(const mr_rq_state *r)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    bool ok = cJSON_AddStringToObject(o, "id", r->spec->id) != NULL;
    cJSON *ids = ok ? cJSON_AddArrayToObject(o, "output_ids") : NULL;
    ok = ok && ids;
    for (int i = 0; ok && i < r->n_out; i++) {
        cJSON *n = cJSON_CreateNumber(r->out_ids[i]);
        ok = n && cJSON_AddItemToArray(ids, n);
    }
    mr_rq_end end = r->phase == MR_RQ_DONE ? r->end : MR_END_ERROR;
    const char *error = r->error ? r->error : (r->phase == MR_RQ_DONE ? "" : "not finished");
    ok = ok && cJSON_AddStringToObject(o, "finish_reason", mr_rq_end_name(end));
    ok = ok && cJSON_AddStringToObject(o, "error", error);
    ok = ok && cJSON_AddNumberToObject(o, "prompt_tokens", r->spec->n_prompt);
    ok = ok && cJSON_AddNumberToObject(o, "ttft_ms", ms(mr_rq_ttft_ms(r)));
    ok = ok && cJSON_AddNumberToObject(o, "tpot_ms", ms(mr_rq_tpot_ms(r)));
    ok = ok && cJSON_AddNumberToObject(o, "e2e_ms", ms(mr_rq_e2e_ms(r)));
    char *text = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    return text;
}

mr_status mr_report_write_results(const mr_tracker *t, FILE *fp)
{
    for (int i = 0; i < t->n; i++) {
        char *line = mr_report_result_line(&t->reqs[i]);
        if (!line) return mr_fail(MR_ENOMEM, "results: out of memory");
        int rc = fprintf(fp, "%s\n", line);
        free(line);
        if (rc < 0) return mr_fail(MR_EIO, "results: write failed: %s", strerror(errno));
    }
    if (fflush(fp) != 0) return mr_fail(MR_EIO, "results: write failed: %s", strerror(errno));
    return MR_OK;
}

/* ------------------------------------------------------------------ summary */

typedef struct latency_stats {
    double p50, p90, p99;
    int n;
} latency_stats;

typedef struct summary {
    int requests, completed, failed;
    int64_t prompt_tokens, output_tokens;
    double wall_s, tok_s;
    latency_stats ttft, tpot, e2e;
} summary;

static latency_stats percentiles_of(const double *v, int n)
{
    latency_stats s = {mr_percentile(v, n, 50), mr_percentile(v, n, 90), mr_percentile(v, n, 99),
                       n};
    return s;
}

static void summarize(const mr_tracker *t, const mr_run_report *rep, summary *s)
{
    memset(s, 0, sizeof *s);
    s->requests = t->n;
    s->completed = t->n_completed;
    s->failed = t->n_failed;
    s->output_tokens = t->output_tokens;
    s->wall_s = rep->wall_s;
    s->tok_s = rep->wall_s > 0 ? (double)t->output_tokens / rep->wall_s : 0.0;
    double *ttft = malloc(sizeof(double) * (size_t)(t->n + 1));
    double *tpot = malloc(sizeof(double) * (size_t)(t->n + 1));
    double *e2e = malloc(sizeof(double) * (size_t)(t->n + 1));
    int n_ttft = 0, n_tpot = 0, n_e2e = 0;
    for (int i = 0; i < t->n; i++) {
        const mr_rq_state *r = &t->reqs[i];
        if (!r->spec->error) s->prompt_tokens += r->spec->n_prompt;
        if (r->phase != MR_RQ_DONE || r->end == MR_END_ERROR) continue;
        if (ttft && r->n_out > 0) ttft[n_ttft++] = mr_rq_ttft_ms(r);
        if (tpot && r->n_out > 1) tpot[n_tpot++] = mr_rq_tpot_ms(r);
        if (e2e) e2e[n_e2e++] = mr_rq_e2e_ms(r);
    }
    s->ttft = percentiles_of(ttft, n_ttft);
    s->tpot = percentiles_of(tpot, n_tpot);
    s->e2e = percentiles_of(e2e, n_e2e);
    free(ttft);
    free(tpot);
    free(e2e);
}

static const char *const role_names[] = {"coordinator", "prefill", "decode", "expert"};
#define N_ROLES 4

typedef struct role_total {
    int ranks, reported;
    double cpu_s, compute_s, transfer_s, wait_s;
    uint64_t tokens;
} role_total;

static void role_totals(const mr_run_report *rep, role_total out[N_ROLES])
{
    memset(out, 0, sizeof(role_total) * N_ROLES);
    for (int i = 0; i < rep->n_ranks; i++) {
        const mr_rank_report *r = &rep->ranks[i];
        for (int k = 0; k < N_ROLES; k++) {
            if (strcmp(r->role, role_names[k])) continue;
            out[k].ranks++;
            if (!r->reported) break;
            out[k].reported++;
            out[k].cpu_s += r->cpu_s;
            out[k].compute_s += r->compute_s;
            out[k].transfer_s += r->transfer_s;
            out[k].wait_s += r->wait_s;
            out[k].tokens += r->tokens_processed;
            break;
        }
    }
}

static uint64_t total_rejected(const mr_run_report *rep)
{
    uint64_t n = rep->frames_rejected;
    for (int i = 0; i < rep->n_ranks; i++)
        if (rep->ranks[i].reported) n += rep->ranks[i].frames_rejected;
    return n;
}

static cJSON *latency_json(const latency_stats *s)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "p50", ms(s->p50));
    cJSON_AddNumberToObject(o, "p90", ms(s->p90));
    cJSON_AddNumberToObject(o, "p99", ms(s->p99));
    cJSON_AddNumberToObject(o, "n", s->n);
    return o;
}

static void add_times(cJSON *o, double cpu, double compute, double transfer, double wait)
{
    cJSON_AddNumberToObject(o, "cpu_s", ms(cpu));
    cJSON_AddNumberToObject(o, "compute_s", ms(compute));
    cJSON_AddNumberToObject(o, "transfer_s", ms(transfer));
    cJSON_AddNumberToObject(o, "wait_s", ms(wait));
}

char *mr_report_summary_json(const mr_tracker *t, const mr_run_report *rep)
{
    summary s;
    summarize(t, rep, &s);
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "requests", s.requests);
    cJSON_AddNumberToObject(o, "completed", s.completed);
    cJSON_AddNumberToObject(o, "failed", s.failed);
    cJSON_AddNumberToObject(o, "wall_s", ms(s.wall_s));
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)s.prompt_tokens);
    cJSON_AddNumberToObject(o, "output_tokens", (double)s.output_tokens);
    cJSON_AddNumberToObject(o, "output_tok_s", ms(s.tok_s));
    cJSON_AddItemToObject(o, "ttft_ms", latency_json(&s.ttft));
    cJSON_AddItemToObject(o, "tpot_ms", latency_json(&s.tpot));
    cJSON_AddItemToObject(o, "e2e_ms", latency_json(&s.e2e));

    role_total roles[N_ROLES];
    role_totals(rep, roles);
    cJSON *roles_o = cJSON_AddObjectToObject(o, "roles");
    for (int k = 0; k < N_ROLES; k++) {
        if (!roles[k].ranks) continue;
        cJSON *r = cJSON_AddObjectToObject(roles_o, role_names[k]);
        cJSON_AddNumberToObject(r, "ranks", roles[k].ranks);
        cJSON_AddNumberToObject(r, "reported", roles[k].reported);
        add_times(r, roles[k].cpu_s, roles[k].compute_s, roles[k].transfer_s, roles[k].wait_s);
        cJSON_AddNumberToObject(r, "tokens_processed", (double)roles[k].tokens);
    }

    cJSON *ranks = cJSON_AddArrayToObject(o, "ranks");
    cJSON *links = cJSON_AddArrayToObject(o, "links");
    cJSON *dead = cJSON_AddArrayToObject(o, "dead_ranks");
    for (int i = 0; i < rep->n_ranks; i++) {
        const mr_rank_report *r = &rep->ranks[i];
        cJSON *ro = cJSON_CreateObject();
        cJSON_AddNumberToObject(ro, "rank", r->rank);
        cJSON_AddStringToObject(ro, "role", r->role);
        cJSON_AddBoolToObject(ro, "alive", r->alive);
        cJSON_AddBoolToObject(ro, "reported", r->reported);
        add_times(ro, r->cpu_s, r->compute_s, r->transfer_s, r->wait_s);
        cJSON_AddNumberToObject(ro, "tokens_processed", (double)r->tokens_processed);
        cJSON_AddNumberToObject(ro, "frames_rejected", (double)r->frames_rejected);
        cJSON_AddItemToArray(ranks, ro);
        if (!r->alive) cJSON_AddItemToArray(dead, cJSON_CreateNumber(r->rank));
        if (!r->reported || !r->link_bytes) continue;
        for (int d = 0; d < rep->n_ranks; d++) {
            if (!r->link_bytes[d] && !r->link_msgs[d]) continue;
            cJSON *l = cJSON_CreateObject();
            cJSON_AddNumberToObject(l, "src", r->rank);
            cJSON_AddNumberToObject(l, "dst", d);
            cJSON_AddNumberToObject(l, "bytes", (double)r->link_bytes[d]);
            cJSON_AddNumberToObject(l, "msgs", (double)r->link_msgs[d]);
            cJSON_AddItemToArray(links, l);
        }
    }
    cJSON_AddNumberToObject(o, "frames_rejected", (double)total_rejected(rep));
    cJSON_AddNumberToObject(o, "ignored_events", (double)t->n_ignored_events);
    if (rep->load) {
        cJSON_AddItemToObject(o, "expert_load", mr_expert_load_json(rep->load));
        cJSON *imb = cJSON_AddObjectToObject(o, "expert_imbalance");
        for (int layer = 0; layer < rep->load->n_layers; layer++) {
            double v = mr_expert_load_imbalance(rep->load, layer);
            if (v <= 0) continue;
            char key[16];
            snprintf(key, sizeof key, "%d", layer);
            cJSON_AddNumberToObject(imb, key, v);
        }
    }
    if (rep->extra) { /* the caller's sections (e.g. "rebalance"), copied */
        const cJSON *item;
        cJSON_ArrayForEach(item, rep->extra)
            cJSON_AddItemToObject(o, item->string, cJSON_Duplicate(item, true));
    }
    char *text = cJSON_Print(o);
    cJSON_Delete(o);
    return text;
}

void mr_report_print_table(const mr_tracker *t, const mr_run_report *rep, FILE *fp)
{
    summary s;
    summarize(t, rep, &s);
    fprintf(fp, "#\n# moerun cluster: %d requests, %d completed, %d failed; wall %.3f s; "
                "%lld prompt + %lld output tokens; %.1f output tok/s\n#\n",
            s.requests, s.completed, s.failed, s.wall_s, (long long)s.prompt_tokens,
            (long long)s.output_tokens, s.tok_s);
    fprintf(fp, "# %-8s %6s %10s %10s %10s\n", "latency", "n", "p50(ms)", "p90(ms)", "p99(ms)");
    const struct {
        const char *name;
        const latency_stats *l;
    } lat[] = {{"ttft", &s.ttft}, {"tpot", &s.tpot}, {"e2e", &s.e2e}};
    for (int i = 0; i < 3; i++)
        fprintf(fp, "  %-8s %6d %10.2f %10.2f %10.2f\n", lat[i].name, lat[i].l->n, lat[i].l->p50,
                lat[i].l->p90, lat[i].l->p99);

    role_total roles[N_ROLES];
    role_totals(rep, roles);
    fprintf(fp, "#\n# %-11s %5s %8s %8s %10s %11s %8s %10s\n", "role", "ranks", "reported",
            "cpu(s)", "compute(s)", "transfer(s)", "wait(s)", "tokens");
    for (int k = 0; k < N_ROLES; k++) {
        if (!roles[k].ranks) continue;
        fprintf(fp, "  %-11s %5d %8d %8.3f %10.3f %11.3f %8.3f %10llu\n", role_names[k],
                roles[k].ranks, roles[k].reported, roles[k].cpu_s, roles[k].compute_s,
                roles[k].transfer_s, roles[k].wait_s, (unsigned long long)roles[k].tokens);
    }

    fprintf(fp, "#\n# %-5s %-5s %12s %10s\n", "src", "dst", "bytes", "msgs");
    for (int i = 0; i < rep->n_ranks; i++) {
        const mr_rank_report *r = &rep->ranks[i];
        if (!r->reported || !r->link_bytes) continue;
        for (int d = 0; d < rep->n_ranks; d++) {
            if (!r->link_bytes[d] && !r->link_msgs[d]) continue;
            char b[32];
            mr_fmt_bytes(r->link_bytes[d], b, sizeof b);
            fprintf(fp, "  %-5d %-5d %12s %10llu\n", i, d, b,
                    (unsigned long long)r->link_msgs[d]);
        }
    }
    fprintf(fp, "#\n# frames rejected: %llu; ignored events: %llu; dead ranks:",
            (unsigned long long)total_rejected(rep), (unsigned long long)t->n_ignored_events);
    int n_dead = 0;
    for (int i = 0; i < rep->n_ranks; i++)
        if (!rep->ranks[i].alive) fprintf(fp, " %d (%s)", i, rep->ranks[i].role), n_dead++;
    fprintf(fp, "%s\n", n_dead ? "" : " none");
}

/* ------------------------------------------------------------------ status */

int mr_report_exit_status(const mr_tracker *t, const mr_run_report *rep, char *reason,
                          size_t reason_len)
{
    int n_dead = mr_run_report_dead_count(rep);
    int not_completed = t->n - t->n_completed;
    if (reason_len) reason[0] = '\0';
    if (not_completed == 0 && n_dead == 0) return 0;
    size_t used = 0;
    if (not_completed)
        used += (size_t)snprintf(reason, reason_len, "%d of %d requests failed", not_completed,
                                 t->n);
    if (n_dead && used < reason_len) {
        used += (size_t)snprintf(reason + used, reason_len - used, "%sdead ranks:",
                                 not_completed ? "; " : "");
        for (int i = 0; i < rep->n_ranks && used < reason_len; i++)
            if (!rep->ranks[i].alive)
                used += (size_t)snprintf(reason + used, reason_len - used, " %d (%s)", i,
                                         rep->ranks[i].role);
    }
    return 1;
}

mr_status mr_report_write_status(const char *path, int status, const char *reason)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return mr_fail(MR_EIO, "status file %s: %s", path, strerror(errno));
    int rc = status ? fprintf(fp, "%d\n%s\n", status, reason && reason[0] ? reason : "failed")
                    : fprintf(fp, "0\n");
    if (fclose(fp) != 0 || rc < 0)
        return mr_fail(MR_EIO, "status file %s: write failed: %s", path, strerror(errno));
    return MR_OK;
}
