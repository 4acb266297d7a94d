/* coordinator/rebalance.c — see rebalance.h. */
#include "rebalance.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "planner/eplb.h"

#define REP MR_PLACEMENT_MAX_REPLICAS

static size_t at(const mr_config *c, int layer, int expert)
{
    return (size_t)layer * c->n_routed_experts + (size_t)expert;
}

mr_status mr_rb_init(mr_rebalancer *rb, const mr_config *cfg, const mr_role_opts *opts,
                     const int *expert_ranks, int n_expert, int n_ranks,
                     const mr_placement *initial, double t0)
{
    memset(rb, 0, sizeof *rb);
    rb->cfg = cfg;
    rb->period_s = opts->rebalance_period_s;
    rb->min_gain = opts->rebalance_min_gain;
    rb->redundant = opts->redundant_experts >= 0 ? opts->redundant_experts : n_expert;
    rb->n_expert = n_expert;
    rb->n_ranks = n_ranks;
    rb->t0 = rb->last_s = t0;
    const size_t cells = (size_t)cfg->num_hidden_layers * cfg->n_routed_experts;
    rb->expert_ranks = malloc(sizeof(int) * (size_t)(n_expert > 0 ? n_expert : 1));
    rb->window_load = calloc(cells ? cells : 1, sizeof(uint64_t));
    rb->smoothed = calloc(cells ? cells : 1, sizeof(uint64_t));
    rb->window_rank = calloc((size_t)n_ranks * cfg->num_hidden_layers + 1, sizeof(uint64_t));
    rb->waiting = calloc((size_t)n_ranks, sizeof(bool));
    if (!rb->expert_ranks || !rb->window_load || !rb->smoothed || !rb->window_rank ||
        !rb->waiting) {
        mr_rb_free(rb);
        return mr_fail(MR_ENOMEM, "rebalance: out of memory");
    }
    if (n_expert > 0) memcpy(rb->expert_ranks, expert_ranks, sizeof(int) * (size_t)n_expert);
    /* replicas of one expert never share a rank, at most 8 */
    const int max_rep = n_expert < REP ? n_expert : REP;
    const int cap = cfg->n_routed_experts * (max_rep > 1 ? max_rep - 1 : 0);
    if (rb->redundant > cap) {
        if (rb->period_s > 0)
            MR_WARN("--redundant-experts %d capped to %d (%d expert ranks)", rb->redundant, cap,
                    n_expert);
        rb->redundant = cap;
    }
    mr_status st = mr_placement_copy(initial, &rb->current);
    if (st != MR_OK) mr_rb_free(rb);
    return st;
}

void mr_rb_free(mr_rebalancer *rb)
{
    mr_placement_free(&rb->current);
    mr_placement_free(&rb->next);
    free(rb->expert_ranks);
    free(rb->window_load);
    free(rb->smoothed);
    free(rb->window_rank);
    free(rb->waiting);
    memset(rb, 0, sizeof *rb);
}

void mr_rb_on_load(mr_rebalancer *rb, int src, const int32_t *layers, size_t n_layers,
                   const uint64_t *tokens)
{
    const mr_config *c = rb->cfg;
    const int E = c->n_routed_experts;
    if (src < 0 || src >= rb->n_ranks) return;
    for (size_t i = 0; i < n_layers; i++) {
        int l = layers[i];
        for (int e = 0; e < E; e++) {
            uint64_t t = tokens[i * (size_t)E + (size_t)e];
            rb->window_load[at(c, l, e)] += t;
            rb->window_rank[(size_t)src * c->num_hidden_layers + (size_t)l] += t;
            rb->window_tokens += t;
        }
    }
}

/* Σ_l max_r x(r, l) / Σ_l mean_r x(r, l) over the live expert ranks (a
 * dead rank is no part of the balance). */
static double imbalance_of(const mr_rebalancer *rb, const double *rank_layer, const bool *alive)
{
    const mr_config *c = rb->cfg;
    double sum_max = 0, sum_mean = 0;
    int n_live = 0;
    for (int i = 0; i < rb->n_expert; i++) n_live += alive[rb->expert_ranks[i]];
    for (int l = 0; l < c->num_hidden_layers && n_live > 0; l++) {
        double mx = 0, total = 0;
        for (int i = 0; i < rb->n_expert; i++) {
            if (!alive[rb->expert_ranks[i]]) continue;
            double v = rank_layer[(size_t)rb->expert_ranks[i] * c->num_hidden_layers + (size_t)l];
            mx = v > mx ? v : mx;
            total += v;
        }
        sum_max += mx;
        sum_mean += total / n_live;
    }
    return sum_mean > 0 ? sum_max / sum_mean : 0;
}

double mr_rb_predicted_imbalance(const mr_config *cfg, const mr_placement *table,
                                 const uint64_t *load, int n_ranks)
{
    const int L = cfg->num_hidden_layers, E = cfg->n_routed_experts;
    double *rl = calloc((size_t)n_ranks * L + 1, sizeof(double));
    bool *used = calloc((size_t)n_ranks + 1, sizeof(bool));
    if (!rl || !used) {
        free(rl);
        free(used);
        return 0;
    }
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E; e++) {
            size_t k = (size_t)l * E + (size_t)e;
            int n = table->n_replicas[k];
            for (int i = 0; i < n; i++) {
                int r = table->ranks[k * REP + (size_t)i];
                if (r < 0 || r >= n_ranks) continue;
                rl[(size_t)r * L + (size_t)l] += (double)load[k] / n;
                used[r] = true;
            }
        }
    double sum_max = 0, sum_mean = 0;
    int n_used = 0;
    for (int r = 0; r < n_ranks; r++) n_used += used[r];
    for (int l = 0; l < L; l++) {
        double mx = 0, total = 0;
        for (int r = 0; r < n_ranks; r++) {
            if (!used[r]) continue;
            double v = rl[(size_t)r * L + (size_t)l];
            mx = v > mx ? v : mx;
            total += v;
        }
        sum_max += mx;
        sum_mean += n_used ? total / n_used : 0;
    }
    free(rl);
    free(used);
    return sum_mean > 0 ? sum_max / sum_mean : 0;
}

/* EPLB's rank indices are arbitrary up to a permutation (live ranks are
 * interchangeable): relabel them so each new rank slot lands on the live
 * rank that already holds most of its experts (greedy on the overlap), and
 * an epoch moves as few experts as it can. perm[i] = live index for slot i. */
static void keep_experts_in_place(const mr_rebalancer *rb, int layer, const mr_eplb_layer *lay,
                                  const int *live, int n_live, int *perm)
{
    const mr_config *c = rb->cfg;
    int *ov = calloc((size_t)n_live * n_live, sizeof(int));
    bool *slot_done = calloc((size_t)n_live, sizeof(bool));
    bool *rank_done = calloc((size_t)n_live, sizeof(bool));
    for (int i = 0; i < n_live; i++) perm[i] = i;
    if (!ov || !slot_done || !rank_done) goto done;
    for (int e = 0; e < c->n_routed_experts; e++)
        for (int k = 0; k < lay->replicas[e]; k++)
            for (int j = 0; j < n_live; j++)
                ov[(size_t)lay->rank_of[e][k] * n_live + (size_t)j] +=
                    mr_placement_holds(&rb->current, layer, e, live[j]);
    for (int round = 0; round < n_live; round++) {
        int bi = -1, bj = -1, best = -1;
        for (int i = 0; i < n_live; i++) {
            if (slot_done[i]) continue;
            for (int j = 0; j < n_live; j++)
                if (!rank_done[j] && ov[(size_t)i * n_live + (size_t)j] > best) {
                    best = ov[(size_t)i * n_live + (size_t)j];
                    bi = i;
                    bj = j;
                }
        }
        perm[bi] = bj;
        slot_done[bi] = rank_done[bj] = true;
    }
done:
    free(ov);
    free(slot_done);
    free(rank_done);
}

/* The balanced table for this window's load over the live expert ranks. */
static mr_status build_next(mr_rebalancer *rb, const bool *alive)
{
    const mr_config *c = rb->cfg;
    int live[256], n_live = 0;
    for (int i = 0; i < rb->n_expert && n_live < 256; i++)
        if (alive[rb->expert_ranks[i]]) live[n_live++] = rb->expert_ranks[i];
    if (n_live == 0) return mr_fail(MR_EPEER, "rebalance: no live expert rank");
    mr_placement_free(&rb->next);
    MR_TRY(mr_placement_copy(&rb->current, &rb->next));
    mr_eplb_layer *lay = malloc(sizeof *lay);
    if (!lay) return mr_fail(MR_ENOMEM, "rebalance: out of memory");
    const int max_rep = n_live < REP ? n_live : REP;
    int redundant = rb->redundant;
    if (redundant > c->n_routed_experts * (max_rep - 1)) redundant = c->n_routed_experts * (max_rep - 1);
    mr_status st = MR_OK;
    for (int l = 0; l < c->num_hidden_layers && st == MR_OK; l++) {
        if (!mr_config_layer_is_moe(c, l)) continue;
        st = mr_eplb_balance(rb->smoothed + at(c, l, 0), c->n_routed_experts, n_live, redundant,
                             lay);
        int perm[256];
        if (st == MR_OK) keep_experts_in_place(rb, l, lay, live, n_live, perm);
        for (int e = 0; e < c->n_routed_experts && st == MR_OK; e++) {
            size_t k = at(c, l, e);
            rb->next.n_replicas[k] = (uint8_t)lay->replicas[e];
            for (int i = 0; i < lay->replicas[e]; i++)
                rb->next.ranks[k * REP + (size_t)i] = live[perm[lay->rank_of[e][i]]];
        }
    }
    free(lay);
    return st;
}

static mr_status send_table(mr_role *role, int dst, uint64_t epoch, Moerun__PlacementPhase phase,
                            const mr_placement *table)
{
    int32_t *counts = NULL, *ranks = NULL;
    size_t n_counts = 0, n_ranks = 0;
    MR_TRY(mr_placement_to_table(table, &counts, &n_counts, &ranks, &n_ranks));
    Moerun__Placement p = MOERUN__PLACEMENT__INIT;
    p.epoch = epoch;
    p.phase = phase;
    p.n_layers = table->n_layers;
    p.n_experts = table->n_experts;
    p.n_n_replicas = n_counts;
    p.n_replicas = counts;
    p.n_ranks = n_ranks;
    p.ranks = ranks;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_PLACEMENT;
    f.placement = &p;
    mr_status st = mr_role_send_frame(role, dst, &f);
    free(counts);
    free(ranks);
    return st;
}

/* Send the phase to every live rank of `kind`; they become the awaited acks. */
static void broadcast(mr_rebalancer *rb, mr_role *role, tp_role kind, Moerun__PlacementPhase phase,
                      const mr_placement *table, const bool *alive)
{
    memset(rb->waiting, 0, sizeof(bool) * (size_t)rb->n_ranks);
    rb->n_waiting = 0;
    for (int r = 0; r < rb->n_ranks; r++) {
        if (!alive[r] || tp_peer_info(role->tp, r)->role != kind) continue;
        if (send_table(role, r, rb->epochs[rb->n_epochs - 1].epoch, phase, table) == MR_OK) {
            rb->waiting[r] = true;
            rb->n_waiting++;
        } else {
            MR_WARN("placement to rank %d: %s", r, mr_last_error());
        }
    }
}

static void close_window(mr_rebalancer *rb, const bool *alive, double now)
{
    const mr_config *c = rb->cfg;
    if (rb->n_windows < MR_RB_MAX_WINDOWS && rb->window_tokens > 0) {
        size_t n = (size_t)rb->n_ranks * c->num_hidden_layers;
        double *rl = malloc(sizeof(double) * (n ? n : 1));
        if (rl) {
            for (size_t i = 0; i < n; i++) rl[i] = (double)rb->window_rank[i];
            mr_rb_window *w = &rb->windows[rb->n_windows++];
            w->end_s = now - rb->t0;
            w->tokens = rb->window_tokens;
            w->measured = imbalance_of(rb, rl, alive);
            free(rl);
        }
    }
    memset(rb->window_load, 0, sizeof(uint64_t) * (size_t)c->num_hidden_layers * c->n_routed_experts);
    memset(rb->window_rank, 0, sizeof(uint64_t) * (size_t)rb->n_ranks * c->num_hidden_layers);
    rb->window_tokens = 0;
}

/* An expert of the current table whose every replica is on a dead rank. */
static bool has_orphan(const mr_rebalancer *rb, const bool *alive, int *layer, int *expert)
{
    const mr_config *c = rb->cfg;
    for (int l = 0; l < c->num_hidden_layers; l++)
        for (int e = 0; e < c->n_routed_experts; e++) {
            size_t k = at(c, l, e);
            int live = 0;
            for (int i = 0; i < rb->current.n_replicas[k]; i++)
                live += alive[rb->current.ranks[k * REP + (size_t)i]];
            if (rb->current.n_replicas[k] > 0 && live == 0) {
                *layer = l;
                *expert = e;
                return true;
            }
        }
    return false;
}

void mr_rb_tick(mr_rebalancer *rb, mr_role *role, const bool *alive, double now)
{
    if (rb->period_s <= 0 || rb->disabled || rb->phase != MR_RB_IDLE) return;
    /* experts left without a live replica (an expert rank died): re-place
     * them on the live ranks now, whatever the load says */
    int orphan_layer = -1, orphan_expert = -1;
    const bool recover = has_orphan(rb, alive, &orphan_layer, &orphan_expert);
    if (!recover && now - rb->last_s < rb->period_s) return;
    rb->last_s = now;
    /* at least one token per expert and layer on average, else too noisy */
    const mr_config *c = rb->cfg;
    uint64_t min_tokens = (uint64_t)c->n_routed_experts *
                          (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace);
    if ((!recover && rb->window_tokens < min_tokens) || rb->n_epochs == MR_RB_MAX_EPOCHS) return;
    const size_t cells = (size_t)c->num_hidden_layers * c->n_routed_experts;
    for (size_t i = 0; i < cells; i++) rb->smoothed[i] = rb->smoothed[i] / 2 + rb->window_load[i];
    mr_status st = build_next(rb, alive);
    double before = mr_rb_predicted_imbalance(c, &rb->current, rb->smoothed, rb->n_ranks);
    double after = st == MR_OK ? mr_rb_predicted_imbalance(c, &rb->next, rb->smoothed,
                                                           rb->n_ranks) : before;
    close_window(rb, alive, now);
    if (st != MR_OK) {
        MR_WARN("rebalance: %s", mr_last_error());
        return;
    }
    if (recover) {
        MR_WARN("rebalance: layer %d expert %d (and maybe more) has no live replica; re-placing "
                "over the live expert ranks", orphan_layer, orphan_expert);
    } else if (!(after < before * (1.0 - rb->min_gain))) {
        MR_DEBUG("rebalance: predicted imbalance %.3f -> %.3f, not worth an epoch", before, after);
        return;
    }
    mr_rb_epoch *ep = &rb->epochs[rb->n_epochs++];
    memset(ep, 0, sizeof *ep);
    ep->epoch = rb->n_epochs;
    ep->start_s = now - rb->t0;
    ep->done_s = -1;
    ep->predicted_before = before;
    ep->predicted_after = after;
    ep->recovery = recover;
    MR_INFO("rebalance epoch %llu: predicted expert-rank imbalance %.3f -> %.3f; preparing",
            (unsigned long long)ep->epoch, before, after);
    rb->phase = MR_RB_PREPARING;
    broadcast(rb, role, TP_ROLE_EXPERT, MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE, &rb->next, alive);
}

/* The epoch is over (done or aborted): COMMIT `table` to the expert ranks. */
static void commit(mr_rebalancer *rb, mr_role *role, const bool *alive, bool aborted,
                   const char *why)
{
    mr_rb_epoch *ep = &rb->epochs[rb->n_epochs - 1];
    if (aborted) {
        ep->aborted = true;
        snprintf(ep->error, sizeof ep->error, "%s", why);
        MR_WARN("rebalance epoch %llu aborted: %s", (unsigned long long)ep->epoch, why);
    } else {
        mr_placement tmp = rb->current;
        rb->current = rb->next;
        rb->next = tmp;
    }
    rb->phase = MR_RB_COMMITTING;
    broadcast(rb, role, TP_ROLE_EXPERT, MOERUN__PLACEMENT_PHASE__PLACEMENT_COMMIT, &rb->current,
              alive);
    if (rb->n_waiting == 0) rb->phase = MR_RB_IDLE;
}

void mr_rb_on_ack(mr_rebalancer *rb, mr_role *role, int src, const Moerun__PlacementAck *ack,
                  const bool *alive, double now)
{
    if (rb->n_epochs == 0 || src < 0 || src >= rb->n_ranks || !rb->waiting[src] ||
        ack->epoch != rb->epochs[rb->n_epochs - 1].epoch) {
        MR_WARN("unexpected PlacementAck from rank %d (epoch %llu) ignored", src,
                (unsigned long long)ack->epoch);
        return;
    }
    static const Moerun__PlacementPhase awaited[] = {
        [MR_RB_PREPARING] = MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE,
        [MR_RB_SWITCHING] = MOERUN__PLACEMENT_PHASE__PLACEMENT_SWITCH,
        [MR_RB_COMMITTING] = MOERUN__PLACEMENT_PHASE__PLACEMENT_COMMIT,
    };
    if (rb->phase == MR_RB_IDLE || ack->phase != awaited[rb->phase]) {
        /* e.g. a PREPARE ack after the epoch was aborted: the COMMIT ack follows */
        MR_DEBUG("PlacementAck phase %d from rank %d while in phase %d ignored", (int)ack->phase,
                 src, (int)rb->phase);
        return;
    }
    mr_rb_epoch *ep = &rb->epochs[rb->n_epochs - 1];
    rb->waiting[src] = false;
    rb->n_waiting--;
    bool failed = ack->error && *ack->error;
    if (ack->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE) ep->experts_loaded += ack->experts_loaded;
    if (ack->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_COMMIT) ep->experts_dropped += ack->experts_dropped;
    if (failed) MR_WARN("rank %d: placement epoch %llu: %s", src, (unsigned long long)ep->epoch, ack->error);

    switch (rb->phase) {
    case MR_RB_PREPARING:
        if (failed) {
            char why[160];
            snprintf(why, sizeof why, "rank %d could not prepare: %.100s", src, ack->error);
            /* the others may still be loading; their acks are not needed */
            commit(rb, role, alive, true, why);
        } else if (rb->n_waiting == 0) {
            rb->phase = MR_RB_SWITCHING;
            broadcast(rb, role, TP_ROLE_DECODE, MOERUN__PLACEMENT_PHASE__PLACEMENT_SWITCH, &rb->next,
                      alive);
            if (rb->n_waiting == 0) commit(rb, role, alive, false, NULL);
        }
        break;
    case MR_RB_SWITCHING:
        if (failed) { /* some decode ranks may route with either table: keep both */
            rb->disabled = true;
            ep->aborted = true;
            snprintf(ep->error, sizeof ep->error, "rank %d could not switch: %.100s", src, ack->error);
            MR_ERROR("re-placement stopped for this run: %s", ep->error);
            rb->phase = MR_RB_IDLE;
        } else if (rb->n_waiting == 0) {
            commit(rb, role, alive, false, NULL);
        }
        break;
    case MR_RB_COMMITTING:
        if (rb->n_waiting == 0) {
            ep->done_s = now - rb->t0;
            rb->phase = MR_RB_IDLE;
            if (!ep->aborted)
                MR_INFO("rebalance epoch %llu done in %.3f s: %d experts loaded, %d dropped",
                        (unsigned long long)ep->epoch, ep->done_s - ep->start_s, ep->experts_loaded,
                        ep->experts_dropped);
        }
        break;
    case MR_RB_IDLE:
        break;
    }
}

void mr_rb_on_dead(mr_rebalancer *rb, mr_role *role, int rank, const bool *alive, double now)
{
    if (rank < 0 || rank >= rb->n_ranks || !rb->waiting[rank]) return;
    rb->waiting[rank] = false;
    rb->n_waiting--;
    if (rb->phase == MR_RB_PREPARING) {
        char why[96];
        snprintf(why, sizeof why, "expert rank %d died while preparing", rank);
        commit(rb, role, alive, true, why);
        return;
    }
    /* SWITCHING / COMMITTING: one ack fewer to wait for */
    if (rb->n_waiting == 0 && rb->phase == MR_RB_SWITCHING) commit(rb, role, alive, false, NULL);
    else if (rb->n_waiting == 0 && rb->phase == MR_RB_COMMITTING) {
        rb->epochs[rb->n_epochs - 1].done_s = now - rb->t0;
        rb->phase = MR_RB_IDLE;
    }
}

void mr_rb_finish(mr_rebalancer *rb, const bool *alive, double now)
{
    close_window(rb, alive, now);
}

cJSON *mr_rb_json(const mr_rebalancer *rb)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "period_s", rb->period_s);
    cJSON_AddNumberToObject(o, "redundant_experts", rb->redundant);
    cJSON_AddBoolToObject(o, "stopped", rb->disabled);
    int done = 0;
    for (int i = 0; i < rb->n_epochs; i++) done += !rb->epochs[i].aborted && rb->epochs[i].done_s >= 0;
    cJSON_AddNumberToObject(o, "epochs_done", done);
    cJSON *eps = cJSON_AddArrayToObject(o, "epochs");
    for (int i = 0; i < rb->n_epochs; i++) {
        const mr_rb_epoch *e = &rb->epochs[i];
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "epoch", (double)e->epoch);
        cJSON_AddNumberToObject(j, "start_s", e->start_s);
        cJSON_AddNumberToObject(j, "done_s", e->done_s);
        cJSON_AddNumberToObject(j, "predicted_before", e->predicted_before);
        cJSON_AddNumberToObject(j, "predicted_after", e->predicted_after);
        cJSON_AddNumberToObject(j, "experts_loaded", e->experts_loaded);
        cJSON_AddNumberToObject(j, "experts_dropped", e->experts_dropped);
        cJSON_AddBoolToObject(j, "aborted", e->aborted);
        cJSON_AddBoolToObject(j, "recovery", e->recovery);
        cJSON_AddStringToObject(j, "error", e->error);
        cJSON_AddItemToArray(eps, j);
    }
    cJSON *ws = cJSON_AddArrayToObject(o, "windows");
    for (int i = 0; i < rb->n_windows; i++) {
        cJSON *j = cJSON_CreateObject();
        cJSON_AddNumberToObject(j, "end_s", rb->windows[i].end_s);
        cJSON_AddNumberToObject(j, "tokens", (double)rb->windows[i].tokens);
        cJSON_AddNumberToObject(j, "measured_imbalance", rb->windows[i].measured);
        cJSON_AddItemToArray(ws, j);
    }
    return o;
}

void mr_rb_print(const mr_rebalancer *rb, FILE *fp)
{
    if (rb->period_s <= 0) return;
    fprintf(fp, "# expert re-placement: period %g s, %d redundant replicas per layer%s\n",
            rb->period_s, rb->redundant, rb->disabled ? " (stopped after a failure)" : "");
    if (rb->n_epochs) {
        fprintf(fp, "#  %5s %9s %9s %10s %10s %7s %8s  %s\n", "epoch", "start(s)", "took(s)",
                "predicted", "-> after", "loaded", "dropped", "");
        for (int i = 0; i < rb->n_epochs; i++) {
            const mr_rb_epoch *e = &rb->epochs[i];
            fprintf(fp, "   %5llu %9.2f %9.3f %10.3f %10.3f %7d %8d  %s\n",
                    (unsigned long long)e->epoch, e->start_s,
                    e->done_s >= 0 ? e->done_s - e->start_s : -1.0, e->predicted_before,
                    e->predicted_after, e->experts_loaded, e->experts_dropped,
                    e->aborted ? e->error : e->done_s < 0 ? "(unfinished)"
                                   : e->recovery ? "(recovery: experts of a dead rank)" : "");
        }
    }
    if (rb->n_windows) {
        fprintf(fp, "#  measured expert-rank imbalance per window (max/mean rank load):");
        for (int i = 0; i < rb->n_windows; i++) fprintf(fp, " %.3f", rb->windows[i].measured);
        fprintf(fp, "\n");
    }
}
