/* coordinator/tracker.c — request states. Contract in tracker.h. */
#include "tracker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d) memcpy(d, s, n + 1);
    return d;
}

/* Every valid request's id is in the index (ids of valid requests are unique). */
static mr_status build_index(mr_tracker *t)
{
    int cap = 16;
    while (cap < 2 * t->n + 2) cap *= 2;
    t->index = malloc(sizeof(int) * (size_t)cap);
    if (!t->index) return mr_fail(MR_ENOMEM, "tracker: out of memory");
    for (int j = 0; j < cap; j++) t->index[j] = -1;
    t->index_cap = cap;
    for (int i = 0; i < t->n; i++) {
        if (t->reqs[i].spec->error) continue;
        size_t j = hash_str(t->reqs[i].spec->id) & (size_t)(cap - 1);
        while (t->index[j] >= 0) j = (j + 1) & (size_t)(cap - 1);
        t->index[j] = i;
    }
    return MR_OK;
}

int mr_tracker_find(const mr_tracker *t, const char *id)
{
    if (!id || !t->index) return -1;
    size_t mask = (size_t)(t->index_cap - 1);
    for (size_t j = hash_str(id) & mask; t->index[j] >= 0; j = (j + 1) & mask)
        if (!strcmp(t->reqs[t->index[j]].spec->id, id)) return t->index[j];
    return -1;
}

/* Release everything request r holds in the scheduler. */
static void release(mr_tracker *t, mr_rq_state *r)
{
    if (!t->sched || r->decode_rank < 0) return;
    if (!r->prefill_released) {
        mr_sched_prefill_done(t->sched, r->prefill_rank, r->spec->n_prompt);
        r->prefill_released = true;
    }
    mr_sched_release_decode(t->sched, r->decode_rank, r->kv_blocks);
    r->kv_blocks = 0;
}

static void end_request(mr_tracker *t, mr_rq_state *r, mr_rq_end end, double now)
{
    if (r->phase == MR_RQ_PENDING) r->submit_s = now;
    r->phase = MR_RQ_DONE;
    r->end = end;
    r->end_s = now;
    t->n_done++;
    if (end == MR_END_ERROR) t->n_failed++;
    else t->n_completed++;
    release(t, r);
}

mr_status mr_tracker_init(mr_tracker *t, const mr_req_set *set, mr_sched *sched, double now)
{
    memset(t, 0, sizeof *t);
    t->sched = sched;
    t->reqs = calloc((size_t)(set->n > 0 ? set->n : 1), sizeof *t->reqs);
    if (!t->reqs) return mr_fail(MR_ENOMEM, "tracker: out of memory");
    t->n = set->n;
    for (int i = 0; i < set->n; i++) {
        mr_rq_state *r = &t->reqs[i];
        r->spec = &set->items[i];
        r->prefill_rank = r->decode_rank = -1;
        r->phase = MR_RQ_PENDING;
    }
    mr_status st = build_index(t);
    if (st != MR_OK) {
        mr_tracker_free(t);
        return st;
    }
    for (int i = 0; i < set->n; i++)
        if (set->items[i].error) mr_tracker_fail(t, i, set->items[i].error, now);
    return MR_OK;
}

void mr_tracker_free(mr_tracker *t)
{
    if (!t) return;
    for (int i = 0; i < t->n; i++) {
        free(t->reqs[i].error);
        free(t->reqs[i].out_ids);
    }
    free(t->reqs);
    free(t->index);
    memset(t, 0, sizeof *t);
}

void mr_tracker_submitted(mr_tracker *t, int i, int prefill_rank, int decode_rank, int blocks,
                          double clock_start)
{
    mr_rq_state *r = &t->reqs[i];
    r->phase = MR_RQ_RUNNING;
    r->prefill_rank = prefill_rank;
    r->decode_rank = decode_rank;
    r->kv_blocks = blocks;
    r->submit_s = clock_start;
}

bool mr_tracker_fail(mr_tracker *t, int i, const char *error, double now)
{
    mr_rq_state *r = &t->reqs[i];
    if (r->phase == MR_RQ_DONE) return false;
    r->error = dup_str(error && error[0] ? error : "unknown error");
    if (!r->error) MR_ERROR("tracker: out of memory recording '%s'", error);
    end_request(t, r, MR_END_ERROR, now);
    return true;
}

static bool append_token(mr_rq_state *r, int32_t token)
{
    if (r->n_out == r->cap_out) {
        int cap = r->cap_out ? r->cap_out * 2 : 16;
        int32_t *ids = realloc(r->out_ids, sizeof(int32_t) * (size_t)cap);
        if (!ids) return false;
        r->out_ids = ids;
        r->cap_out = cap;
    }
    r->out_ids[r->n_out++] = token;
    return true;
}

bool mr_tracker_on_token(mr_tracker *t, int src_rank, const char *id, int token, int finish,
                         const char *error, double now)
{
    int i = mr_tracker_find(t, id);
    mr_rq_state *r = i >= 0 ? &t->reqs[i] : NULL;
    if (!r || r->phase != MR_RQ_RUNNING ||
        (src_rank != r->decode_rank && src_rank != r->prefill_rank)) {
        MR_DEBUG("ignoring token event for %s id '%s' from rank %d",
                 !r ? "unknown" : r->phase == MR_RQ_DONE ? "ended" : "unassigned", id ? id : "",
                 src_rank);
        t->n_ignored_events++;
        return false;
    }
    if (finish == MR_END_ERROR) {
        char msg[600];
        snprintf(msg, sizeof msg, "%s", error && error[0] ? error : "error reported by rank");
        return mr_tracker_fail(t, i, msg, now);
    }
    if (token >= 0) {
        if (!append_token(r, token)) {
            mr_tracker_fail(t, i, "coordinator out of memory", now);
            return true;
        }
        t->output_tokens++;
        if (r->n_out == 1) {
            r->first_s = now;
            if (t->sched && !r->prefill_released) {
                mr_sched_prefill_done(t->sched, r->prefill_rank, r->spec->n_prompt);
                r->prefill_released = true;
            }
        }
        r->last_s = now;
    }
    if (finish == MR_END_STOP || finish == MR_END_LENGTH) {
        end_request(t, r, (mr_rq_end)finish, now);
    } else if (finish != 0) {
        MR_WARN("request '%s': unknown finish reason %d from rank %d", id, finish, src_rank);
    }
    return true;
}

int mr_tracker_rank_dead(mr_tracker *t, int rank, bool is_decode, bool is_prefill, double now)
{
    int n = 0;
    char msg[64];
    for (int i = 0; i < t->n; i++) {
        mr_rq_state *r = &t->reqs[i];
        if (r->phase != MR_RQ_RUNNING) continue;
        if (is_decode && r->decode_rank == rank) {
            snprintf(msg, sizeof msg, "lost decode rank %d", rank);
            n += mr_tracker_fail(t, i, msg, now);
        } else if (is_prefill && r->prefill_rank == rank && r->n_out == 0) {
            snprintf(msg, sizeof msg, "lost prefill rank %d", rank);
            n += mr_tracker_fail(t, i, msg, now);
        }
    }
    return n;
}

int mr_tracker_check_timeouts(mr_tracker *t, double timeout_s, double now)
{
    if (timeout_s <= 0) return 0;
    int n = 0;
    char msg[64];
    snprintf(msg, sizeof msg, "timed out after %g s", timeout_s);
    for (int i = 0; i < t->n; i++) {
        mr_rq_state *r = &t->reqs[i];
        if (r->phase == MR_RQ_RUNNING && now - r->submit_s >= timeout_s)
            n += mr_tracker_fail(t, i, msg, now);
    }
    return n;
}

int mr_tracker_fail_all(mr_tracker *t, const char *error, double now)
{
    int n = 0;
    for (int i = 0; i < t->n; i++) n += mr_tracker_fail(t, i, error, now);
    return n;
}

double mr_rq_ttft_ms(const mr_rq_state *r)
{
    return r->n_out > 0 ? (r->first_s - r->submit_s) * 1e3 : 0.0;
}

double mr_rq_tpot_ms(const mr_rq_state *r)
{
    return r->n_out > 1 ? (r->last_s - r->first_s) * 1e3 / (r->n_out - 1) : 0.0;
}

double mr_rq_e2e_ms(const mr_rq_state *r)
{
    return r->phase == MR_RQ_DONE ? (r->end_s - r->submit_s) * 1e3 : 0.0;
}

const char *mr_rq_end_name(mr_rq_end end)
{
    switch (end) {
    case MR_END_STOP: return "stop";
    case MR_END_LENGTH: return "length";
    case MR_END_ERROR: return "error";
    default: return "none";
    }
}
