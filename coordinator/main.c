/* coordinator/main.c — moerun-coordinator, rank 0 of the cluster (docs/PROTOCOL.md).
 *
 * Reads the requests (or the built-in demo set), sends each valid one to a
 * decode rank as Admit{request, prefill_rank}, collects the TokenEvents, ends
 * every request (completed, or with an error: bad line, rank lost, timeout),
 * then sends Shutdown to every live rank, collects their RankStats (capped
 * wait) and writes results jsonl, summary json, a table on stderr and the
 * status file the launcher turns into its exit code.
 *
 * The main loop never blocks for long: tp_wait with a short timeout, then
 * deadlines (arrivals, request timeouts, progress) are checked every turn.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "model/config.h"
#include "model/synth.h"
#include "report.h"
#include "requests.h"
#include "runtime/role.h"
#include "inject.h"
#include "rebalance.h"
#include "scheduler.h"
#include "tracker.h"

#define LOOP_WAIT_S 0.05       /* longest sleep of the main loop */
#define PROGRESS_PERIOD_S 2.0
#define STATS_WAIT_S 10.0      /* cap on collecting RankStats at shutdown */
#define READY_WAIT_S 900.0     /* cap on waiting for every rank to load its model */

typedef struct coord {
    mr_role role;
    mr_config cfg;
    mr_req_set reqs;
    mr_sched sched;
    mr_tracker tracker;
    mr_run_report rep;
    mr_expert_load load;
    mr_rebalancer rb;          /* live expert re-placement (rebalance.h) */
    bool *alive;               /* (ranks) for the rebalancer */
    int *order;                /* valid request indices in submission order */
    int n_order, next_submit;
    double start_s, cpu_start_s, wait_s, end_s;
    bool shutting_down;
    uint64_t bad_frames;
    double last_progress_s;
    int64_t tokens_at_progress;
} coord;

/* ------------------------------------------------------------------ set-up */

static mr_status load_config(const mr_role_opts *o, mr_config *cfg)
{
    if (!o->model_dir) return mr_synth_preset_config("tiny", cfg);
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", o->model_dir);
    return mr_config_load(path, cfg);
}

static double arrival_of(const mr_req_spec *r)
{
    return r->arrival_ms < 0 ? 0.0 : r->arrival_ms;
}

/* Stable insertion sort by arrival (input order is usually sorted already). */
static mr_status build_order(coord *c)
{
    c->order = malloc(sizeof(int) * (size_t)(c->reqs.n + 1));
    if (!c->order) return mr_fail(MR_ENOMEM, "coordinator: out of memory");
    for (int i = 0; i < c->reqs.n; i++) {
        if (c->reqs.items[i].error) continue;
        int j = c->n_order++;
        double a = arrival_of(&c->reqs.items[i]);
        while (j > 0 && arrival_of(&c->reqs.items[c->order[j - 1]]) > a) {
            c->order[j] = c->order[j - 1];
            j--;
        }
        c->order[j] = i;
    }
    return MR_OK;
}

/* One row per rank, roles from the bootstrap. */
static mr_status init_report(coord *c)
{
    int n_ranks = tp_size(c->role.tp);
    MR_TRY(mr_run_report_init(&c->rep, n_ranks));
    MR_TRY(mr_expert_load_init(&c->load, c->cfg.num_hidden_layers, c->cfg.n_routed_experts));
    c->rep.load = &c->load;
    for (int r = 0; r < n_ranks; r++)
        snprintf(c->rep.ranks[r].role, sizeof c->rep.ranks[r].role, "%s",
                 tp_role_name(tp_peer_info(c->role.tp, r)->role));
    return MR_OK;
}

/* Every other rank sends a Status when its model is loaded; wait for all of
 * them (or their death) so start-up never counts as request latency. Other
 * frames that arrive meanwhile are kept for the main loop. */
static void wait_ready(coord *c)
{
    const int n = tp_size(c->role.tp);
    bool *ready = calloc((size_t)n, sizeof(bool));
    if (!ready) return;
    int missing = n - 1;
    const double t0 = mr_now(), limit = READY_WAIT_S;
    mr_msgq keep = {0};
    while (missing > 0 && mr_now() - t0 < limit) {
        tp_msg m;
        if (!tp_poll(c->role.tp, &m)) {
            tp_wait(c->role.tp, 0.1);
            continue;
        }
        bool counted = false;
        if (m.src > 0 && m.src < n && !ready[m.src]) {
            Moerun__Frame *f = NULL;
            if (m.type == TP_MSG_PEER_DEAD) {
                counted = true;
            } else if (m.type == MSG_CONTROL &&
                       mr_frame_unpack(m.data, m.len, MR_FRAME_MAX_BYTES, m.src, &f) == MR_OK) {
                counted = f->body_case == MOERUN__FRAME__BODY_STATUS;
                mr_frame_free(f);
            }
            if (counted) {
                ready[m.src] = true;
                missing--;
            }
        }
        mr_msgq_push(&keep, &m); /* the main loop sees every frame, Status included */
    }
    tp_msg m;
    while (mr_msgq_pop(&keep, &m)) mr_msgq_push(&c->role.deferred, &m);
    mr_msgq_free(&keep);
    free(ready);
    if (missing > 0) MR_WARN("%d rank(s) not ready after %.0f s; serving anyway", missing, limit);
    else MR_INFO("all %d ranks ready in %.2f s", n - 1, mr_now() - t0);
}

/* The placement the decode ranks start with (same rule as theirs), handed
 * to the rebalancer. */
static mr_status setup_rebalancer(coord *c)
{
    int n_e = 0, n = tp_size(c->role.tp);
    int *experts = mr_role_ranks(&c->role, TP_ROLE_EXPERT, &n_e);
    mr_placement initial;
    mr_status st = c->role.opts.placement_path
                       ? mr_placement_load(c->role.opts.placement_path, &c->cfg, experts, n_e,
                                           &initial)
                       : mr_placement_round_robin(&c->cfg, experts, n_e, &initial);
    if (st == MR_OK)
        st = mr_rb_init(&c->rb, &c->cfg, &c->role.opts, experts, n_e, n, &initial, mr_now());
    mr_placement_free(&initial);
    free(experts);
    c->alive = malloc(sizeof(bool) * (size_t)n);
    if (st == MR_OK && !c->alive) st = mr_fail(MR_ENOMEM, "coordinator: out of memory");
    return st;
}

static const bool *alive_ranks(coord *c)
{
    for (int r = 0; r < c->rep.n_ranks; r++) c->alive[r] = c->rep.ranks[r].alive;
    return c->alive;
}

static mr_status setup(coord *c)
{
    const mr_role_opts *o = &c->role.opts;
    MR_TRY(load_config(o, &c->cfg));
    MR_TRY(init_report(c));
    if (o->requests_path) MR_TRY(mr_requests_load(o->requests_path, &c->cfg, &c->reqs));
    else MR_TRY(mr_requests_demo(&c->cfg, &c->reqs));
    MR_INFO("%d requests (%d invalid) from %s", c->reqs.n, c->reqs.n_invalid,
            o->requests_path ? o->requests_path : "the built-in demo set");
    for (int i = 0; i < c->reqs.n; i++) {
        const mr_req_spec *r = &c->reqs.items[i];
        if (r->error) MR_WARN("%s", r->error);
        else if (r->max_new_tokens < r->requested_new_tokens)
            MR_WARN("line %d: max_new_tokens %d capped to %d by max_position_embeddings %d",
                    r->line, r->requested_new_tokens, r->max_new_tokens,
                    c->cfg.max_position_embeddings);
    }
    int n_p = 0, n_d = 0;
    int *prefill = mr_role_ranks(&c->role, TP_ROLE_PREFILL, &n_p);
    int *decode = mr_role_ranks(&c->role, TP_ROLE_DECODE, &n_d);
    mr_status st = mr_sched_init(&c->sched, prefill, n_p, decode, n_d, o->kv_blocks,
                                 o->block_tokens);
    free(prefill);
    free(decode);
    MR_TRY(st);
    MR_TRY(build_order(c));
    MR_TRY(setup_rebalancer(c));
    wait_ready(c);
    if (o->inject_garbage > 0) mr_inject_garbage(&c->role, o->inject_garbage);
    c->start_s = mr_now();
    c->rb.t0 = c->rb.last_s = c->start_s;
    c->cpu_start_s = mr_cpu_seconds();
    c->last_progress_s = c->start_s;
    return mr_tracker_init(&c->tracker, &c->reqs, &c->sched, c->start_s);
}

/* ------------------------------------------------------------------ submission */

static mr_status send_admit(coord *c, const mr_req_spec *r, int prefill_rank, int decode_rank)
{
    Moerun__SamplingParams sp = MOERUN__SAMPLING_PARAMS__INIT;
    sp.temperature = r->sampling.temperature;
    sp.top_p = r->sampling.top_p;
    sp.top_k = r->sampling.top_k;
    sp.seed = r->sampling.seed;
    Moerun__Request rq = MOERUN__REQUEST__INIT;
    rq.id = r->id;
    rq.n_prompt_ids = (size_t)r->n_prompt;
    rq.prompt_ids = r->prompt_ids;
    rq.sampling = &sp;
    rq.max_new_tokens = r->max_new_tokens;
    rq.ignore_eos = r->ignore_eos;
    rq.want_logits = c->role.opts.logits_dir != NULL;
    Moerun__Admit admit = MOERUN__ADMIT__INIT;
    admit.request = &rq;
    admit.prefill_rank = prefill_rank;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_ADMIT;
    f.admit = &admit;
    return mr_role_send_frame(&c->role, decode_rank, &f);
}

static void on_rank_dead(coord *c, int rank, double now);

/* Choose ranks for request i and send it; on failure the request ends. */
static void submit(coord *c, int i, double clock_start)
{
    const mr_req_spec *r = &c->reqs.items[i];
    int blocks = mr_sched_blocks_for(&c->sched, r->n_prompt, r->max_new_tokens);
    double now = mr_now();
    for (;;) {
        int prefill = -1, decode = -1;
        if (mr_sched_pick(&c->sched, blocks, &prefill, &decode) != MR_OK) {
            mr_tracker_fail(&c->tracker, i, mr_last_error(), now);
            return;
        }
        mr_status st = send_admit(c, r, prefill, decode);
        if (st == MR_OK) {
            mr_sched_admit(&c->sched, prefill, decode, r->n_prompt, blocks);
            mr_tracker_submitted(&c->tracker, i, prefill, decode, blocks, clock_start);
            MR_DEBUG("'%s' → prefill rank %d, decode rank %d (%d blocks)", r->id, prefill, decode,
                     blocks);
            return;
        }
        if (st != MR_EPEER) {
            char msg[600];
            snprintf(msg, sizeof msg, "sending to decode rank %d failed: %s", decode,
                     mr_last_error());
            mr_tracker_fail(&c->tracker, i, msg, now);
            return;
        }
        on_rank_dead(c, decode, now); /* then try the next live decode rank */
    }
}

/* Submit every request whose arrival time has come; returns seconds until
 * the next arrival (LOOP_WAIT_S when none). */
static double submit_due(coord *c)
{
    while (c->next_submit < c->n_order) {
        int i = c->order[c->next_submit];
        double due = c->start_s + arrival_of(&c->reqs.items[i]) / 1e3;
        double now = mr_now();
        if (due > now) return due - now < LOOP_WAIT_S ? due - now : LOOP_WAIT_S;
        c->next_submit++;
        if (c->tracker.reqs[i].phase != MR_RQ_PENDING) continue; /* failed meanwhile */
        submit(c, i, c->reqs.items[i].arrival_ms >= 0 ? due : now);
    }
    return LOOP_WAIT_S;
}

/* ------------------------------------------------------------------ events */

static void on_rank_dead(coord *c, int rank, double now)
{
    mr_rank_report *rr = &c->rep.ranks[rank];
    if (!rr->alive) return;
    if (c->shutting_down) {
        MR_DEBUG("rank %d (%s) left", rank, rr->role);
        return;
    }
    rr->alive = false;
    mr_rb_on_dead(&c->rb, &c->role, rank, alive_ranks(c), now);
    const tp_peer *peer = tp_peer_info(c->role.tp, rank);
    bool is_decode = peer->role == TP_ROLE_DECODE, is_prefill = peer->role == TP_ROLE_PREFILL;
    mr_sched_mark_dead(&c->sched, rank);
    int n = mr_tracker_rank_dead(&c->tracker, rank, is_decode, is_prefill, now);
    MR_ERROR("lost %s rank %d (pid %d on %s): %d requests ended", rr->role, rank, peer->pid,
             peer->host, n);
    const char *none = mr_sched_live_decode(&c->sched) == 0    ? "no live decode rank"
                       : mr_sched_live_prefill(&c->sched) == 0 ? "no live prefill rank"
                                                               : NULL;
    if (none) {
        int failed = 0;
        for (int i = 0; i < c->tracker.n; i++)
            if (c->tracker.reqs[i].phase == MR_RQ_PENDING)
                failed += mr_tracker_fail(&c->tracker, i, none, now);
        if (failed) MR_ERROR("%s: %d waiting requests ended", none, failed);
    }
}

static void on_stats(coord *c, int src, const Moerun__RankStats *s)
{
    mr_status st = mr_run_report_set(&c->rep, src, s->role, s->cpu_seconds, s->compute_seconds,
                                     s->transfer_seconds, s->wait_seconds, s->tokens_processed,
                                     s->frames_rejected, s->link_bytes_sent,
                                     (int)s->n_link_bytes_sent, s->link_msgs_sent,
                                     (int)s->n_link_msgs_sent);
    if (st != MR_OK) MR_WARN("RankStats from rank %d: %s", src, mr_last_error());
}

static void on_control(coord *c, const tp_msg *m, double now)
{
    Moerun__Frame *f = NULL;
    if (mr_frame_unpack(m->data, m->len, MR_FRAME_MAX_BYTES, m->src, &f) != MR_OK) {
        c->bad_frames++;
        MR_WARN("%s (ignored)", mr_last_error());
        return;
    }
    switch (f->body_case) {
    case MOERUN__FRAME__BODY_TOKEN: {
        const Moerun__TokenEvent *e = f->token;
        mr_tracker_on_token(&c->tracker, m->src, e->id, e->token, (int)e->finish, e->error, now);
        break;
    }
    case MOERUN__FRAME__BODY_STATUS:
        mr_sched_on_status(&c->sched, m->src, f->status->free_kv_blocks,
                           f->status->total_kv_blocks, f->status->queued_tokens,
                           f->status->running);
        break;
    case MOERUN__FRAME__BODY_STATS:
        on_stats(c, m->src, f->stats);
        break;
    case MOERUN__FRAME__BODY_LOAD:
        if (mr_expert_load_add(&c->load, m->src, f->load->layers, f->load->n_layers,
                               f->load->n_experts, f->load->tokens, f->load->n_tokens) != MR_OK) {
            c->bad_frames++;
            MR_WARN("%s", mr_last_error());
        } else if (tp_peer_info(c->role.tp, m->src)->role == TP_ROLE_EXPERT) {
            mr_rb_on_load(&c->rb, m->src, f->load->layers, f->load->n_layers, f->load->tokens);
        }
        break;
    case MOERUN__FRAME__BODY_PLACEMENT_ACK:
        mr_rb_on_ack(&c->rb, &c->role, m->src, f->placement_ack, alive_ranks(c), now);
        break;
    default:
        c->bad_frames++;
        MR_WARN("unexpected control frame (body %d) from rank %d (ignored)", (int)f->body_case,
                m->src);
        break;
    }
    mr_frame_free(f);
}

/* Handle every queued message; returns how many there were. */
static int drain(coord *c)
{
    int n = 0;
    tp_msg m;
    while (mr_role_next(&c->role, &m)) {
        double now = mr_now();
        if (m.type == TP_MSG_PEER_DEAD) on_rank_dead(c, m.src, now);
        else if (m.type == MSG_CONTROL) on_control(c, &m, now);
        else {
            c->bad_frames++;
            MR_WARN("unexpected message type %u (%zu bytes) from rank %d (ignored)", m.type,
                    m.len, m.src);
        }
        tp_msg_free(&m);
        n++;
    }
    return n;
}

static void wait_for_traffic(coord *c, double timeout_s)
{
    double t0 = mr_now();
    mr_status st = tp_wait(c->role.tp, timeout_s);
    if (st != MR_OK) MR_WARN("tp_wait: %s", mr_last_error());
    c->wait_s += mr_now() - t0;
}

/* ------------------------------------------------------------------ main loop */

static void progress(coord *c, double now)
{
    if (now - c->last_progress_s < PROGRESS_PERIOD_S) return;
    const mr_tracker *t = &c->tracker;
    double rate = (double)(t->output_tokens - c->tokens_at_progress) / (now - c->last_progress_s);
    MR_INFO("progress: %d/%d done (%d failed), %lld tokens, %.1f tok/s, %.1f s", t->n_done, t->n,
            t->n_failed, (long long)t->output_tokens, rate, now - c->start_s);
    c->last_progress_s = now;
    c->tokens_at_progress = t->output_tokens;
}

static void serve(coord *c)
{
    double timeout_s = c->role.opts.request_timeout_s;
    while (!mr_tracker_all_done(&c->tracker)) {
        double wait = submit_due(c);
        int handled = drain(c);
        double now = mr_now();
        int n = mr_tracker_check_timeouts(&c->tracker, timeout_s, now);
        if (n) MR_ERROR("%d requests timed out after %g s", n, timeout_s);
        progress(c, now);
        mr_rb_tick(&c->rb, &c->role, alive_ranks(c), now);
        if (!handled && !mr_tracker_all_done(&c->tracker)) wait_for_traffic(c, wait);
    }
    c->end_s = mr_now();
    MR_INFO("all %d requests ended (%d completed, %d failed) in %.3f s", c->tracker.n,
            c->tracker.n_completed, c->tracker.n_failed, c->end_s - c->start_s);
}

/* Shutdown to every live rank, then their RankStats (at most STATS_WAIT_S). */
static void shutdown_cluster(coord *c, const char *reason)
{
    Moerun__Shutdown sd = MOERUN__SHUTDOWN__INIT;
    sd.reason = (char *)reason;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_SHUTDOWN;
    f.shutdown = &sd;
    int me = tp_rank(c->role.tp), n_ranks = tp_size(c->role.tp);
    for (int r = 0; r < n_ranks; r++) {
        if (r == me || !c->rep.ranks[r].alive || !tp_peer_alive(c->role.tp, r)) continue;
        if (mr_role_send_frame(&c->role, r, &f) != MR_OK)
            MR_WARN("Shutdown to rank %d: %s", r, mr_last_error());
    }
    c->shutting_down = true;
    double deadline = mr_now() + STATS_WAIT_S;
    for (;;) {
        drain(c);
        int missing = 0;
        for (int r = 0; r < n_ranks; r++)
            missing += r != me && !c->rep.ranks[r].reported && c->rep.ranks[r].alive &&
                       tp_peer_alive(c->role.tp, r);
        if (!missing) break;
        if (mr_now() >= deadline) {
            MR_WARN("%d ranks sent no RankStats within %g s", missing, STATS_WAIT_S);
            break;
        }
        wait_for_traffic(c, LOOP_WAIT_S);
    }
}

/* The coordinator's own row: its CPU, waiting time and links. */
static void own_stats(coord *c)
{
    int me = tp_rank(c->role.tp), n = tp_size(c->role.tp);
    uint64_t *bytes = calloc((size_t)n, sizeof(uint64_t));
    uint64_t *msgs = calloc((size_t)n, sizeof(uint64_t));
    uint64_t rejected = c->bad_frames;
    for (int p = 0; bytes && msgs && p < n; p++) {
        if (p == me) continue;
        const tp_link_stats *ls = tp_link(c->role.tp, p);
        bytes[p] = ls->bytes_sent + ls->bytes_put;
        msgs[p] = ls->msgs_sent + ls->puts;
        rejected += ls->frames_rejected;
    }
    double cpu = mr_cpu_seconds() - c->cpu_start_s;
    if (mr_run_report_set(&c->rep, me, "coordinator", cpu, 0.0, 0.0, c->wait_s, 0, rejected,
                          bytes, bytes ? n : 0, msgs, msgs ? n : 0) != MR_OK)
        MR_WARN("own stats: %s", mr_last_error());
    free(bytes);
    free(msgs);
}

/* ------------------------------------------------------------------ output */

static mr_status write_text(const char *path, const char *text)
{
    FILE *fp = fopen(path, "w");
    if (!fp) return mr_fail(MR_EIO, "%s: %s", path, strerror(errno));
    int rc = fputs(text, fp);
    if (fclose(fp) != 0 || rc < 0) return mr_fail(MR_EIO, "%s: write failed", path);
    return MR_OK;
}

static mr_status write_outputs(coord *c)
{
    const mr_role_opts *o = &c->role.opts;
    mr_status st = MR_OK;
    if (o->out_path) {
        FILE *fp = fopen(o->out_path, "w");
        if (!fp) return mr_fail(MR_EIO, "--out %s: %s", o->out_path, strerror(errno));
        st = mr_report_write_results(&c->tracker, fp);
        if (fclose(fp) != 0 && st == MR_OK) st = mr_fail(MR_EIO, "--out %s: write failed", o->out_path);
        MR_TRY(st);
    } else {
        MR_TRY(mr_report_write_results(&c->tracker, stdout));
    }
    mr_report_print_table(&c->tracker, &c->rep, stderr);
    mr_rb_print(&c->rb, stderr);
    if (o->summary_path) {
        cJSON *extra = cJSON_CreateObject();
        if (extra) {
            cJSON_AddItemToObject(extra, "config", mr_role_opts_json(o));
            cJSON_AddItemToObject(extra, "rebalance", mr_rb_json(&c->rb));
        }
        c->rep.extra = extra;
        char *json = mr_report_summary_json(&c->tracker, &c->rep);
        c->rep.extra = NULL;
        cJSON_Delete(extra);
        if (!json) return mr_fail(MR_ENOMEM, "summary: out of memory");
        st = write_text(o->summary_path, json);
        free(json);
    }
    return st;
}

static void coord_free(coord *c)
{
    mr_tracker_free(&c->tracker);
    mr_sched_free(&c->sched);
    mr_run_report_free(&c->rep);
    mr_expert_load_free(&c->load);
    mr_rb_free(&c->rb);
    free(c->alive);
    mr_req_set_free(&c->reqs);
    free(c->order);
}

static void write_status(const char *path, int status, const char *reason)
{
    if (!path) return;
    if (mr_report_write_status(path, status, reason) != MR_OK) MR_ERROR("%s", mr_last_error());
}

int main(int argc, char **argv)
{
    static coord c; /* large; zero-initialized */
    mr_status st = mr_role_init(&c.role, "coordinator", TP_ROLE_COORDINATOR, argc, argv);
    if (st != MR_OK) {
        char reason[600];
        snprintf(reason, sizeof reason, "coordinator start-up failed: %s", mr_last_error());
        MR_ERROR("%s", reason);
        write_status(c.role.opts.status_path, 1, reason);
        return 1;
    }
    st = setup(&c);
    if (st != MR_OK) {
        char reason[600];
        snprintf(reason, sizeof reason, "coordinator: %s", mr_last_error());
        MR_ERROR("%s", reason);
        if (c.rep.ranks) shutdown_cluster(&c, reason);
        write_status(c.role.opts.status_path, 1, reason);
        coord_free(&c);
        mr_role_finish(&c.role, MR_OK);
        return 1;
    }
    serve(&c);
    c.rep.wall_s = c.end_s - c.start_s;
    shutdown_cluster(&c, "all requests ended");
    own_stats(&c);
    mr_rb_finish(&c.rb, alive_ranks(&c), mr_now()); /* the last LoadReports came with shutdown */
    char reason[1024];
    int status = mr_report_exit_status(&c.tracker, &c.rep, reason, sizeof reason);
    st = write_outputs(&c);
    if (st != MR_OK) {
        MR_ERROR("%s", mr_last_error());
        snprintf(reason, sizeof reason, "writing results failed: %s", mr_last_error());
        status = 1;
    }
    if (status) MR_ERROR("exit status 1: %s", reason);
    write_status(c.role.opts.status_path, status, reason);
    coord_free(&c);
    mr_role_finish(&c.role, MR_OK);
    return status;
}
