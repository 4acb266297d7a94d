/* expert_node/expert.c — the expert role (moerun-expert).
 *
 * Holds the routed experts its placement gives it (all MoE layers), batches
 * the tokens that every decode rank dispatched per (layer, expert), runs them
 * as one GEMM batch per expert, answers each dispatch with its rows, and
 * reports per-expert token counts to the coordinator. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/timer.h"
#include "model/synth.h"
#include "runtime/placement.h"
#include "prepare.h"
#include "runtime/role.h"
#include "runtime/route_pairs.h"

typedef struct expert_state {
    mr_role role;
    mr_placement placement;
    uint64_t *load;          /* (layers, experts) tokens since the last report */
    bool load_dirty;
    double last_report;
    tp_msg *batch;           /* dispatches waiting to be served */
    int n_batch, cap_batch;
    ex_prepare prepare;      /* a re-placement PREPARE loading in the background */
    mr_kbuf rows_in, rows_out; /* backend memory: the rows of the layer being served */
    mr_kbuf rows_stage;      /* staging host memory of those rows (non-host backends) */
    mr_route_pairs pairs;    /* --route-plane nccl: NCCL pairs with decode ranks */
} expert_state;

static bool holds(void *ctx, int layer, int expert)
{
    expert_state *x = ctx;
    return mr_placement_holds(&x->placement, layer, expert, x->role.rank);
}

/* ---- live re-placement (proto Placement; docs/PROTOCOL.md) ----------------- */

typedef struct placed_on {
    const mr_placement *p;
    int rank;
} placed_on;

static bool in_table(void *ctx, int layer, int expert)
{
    const placed_on *t = ctx;
    return mr_placement_holds(t->p, layer, expert, t->rank);
}

/* A background PREPARE finished loading: adopt its experts, ack. */
static void finish_prepare(expert_state *x, bool ack)
{
    int loaded = 0;
    uint64_t epoch = x->prepare.epoch;
    mr_status st = ex_prepare_finish(&x->prepare, &x->role, &loaded);
    if (st != MR_OK) MR_WARN("placement epoch %llu: %s", (unsigned long long)epoch, mr_last_error());
    if (ack)
        mr_role_send_placement_ack(&x->role, epoch, MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE,
                                   st == MR_OK ? NULL : mr_last_error(), loaded, 0);
}

/* PREPARE: load what the new table gives this rank in the background (keep
 * serving everything held); the ack follows when the load is adopted.
 * COMMIT: the table in force; drop what it does not give this rank. */
static void on_placement(expert_state *x, const Moerun__Placement *pf)
{
    mr_placement table;
    int loaded = 0, dropped = 0;
    mr_status st = mr_role_placement_of(&x->role, pf, &table);
    if (st != MR_OK) { /* a hostile or corrupt table: refuse, keep serving as before */
        mr_role_reject(&x->role);
        mr_role_send_placement_ack(&x->role, pf->epoch, pf->phase, mr_last_error(), 0, 0);
        return;
    }
    placed_on t = {&table, x->role.rank};
    if (pf->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE) {
        if (x->prepare.running) finish_prepare(x, false); /* superseded */
        st = ex_prepare_start(&x->prepare, &x->role, &table, pf->epoch);
        if (st == MR_OK) {
            MR_INFO("placement epoch %llu: loading in the background", (unsigned long long)pf->epoch);
            return; /* acked by finish_prepare */
        }
    } else if (pf->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_COMMIT) {
        /* an aborted epoch may commit while our load still runs: wait for it,
         * so what it loaded is dropped below like everything else not kept */
        if (x->prepare.running) finish_prepare(x, false);
        mr_role_drop_experts(&x->role, in_table, &t, &dropped);
        mr_placement_free(&x->placement);
        x->placement = table; /* moved */
        memset(&table, 0, sizeof table);
    } else {
        st = mr_fail(MR_EPROTO, "placement phase %d is not for expert ranks", (int)pf->phase);
    }
    if (st != MR_OK) MR_WARN("placement epoch %llu: %s", (unsigned long long)pf->epoch, mr_last_error());
    else MR_INFO("placement epoch %llu %s: %d experts loaded, %d dropped",
                 (unsigned long long)pf->epoch,
                 pf->phase == MOERUN__PLACEMENT_PHASE__PLACEMENT_PREPARE ? "prepared" : "committed",
                 loaded, dropped);
    mr_role_send_placement_ack(&x->role, pf->epoch, pf->phase, st == MR_OK ? NULL : mr_last_error(),
                               loaded, dropped);
    mr_placement_free(&table);
}

static void send_load_report(expert_state *x)
{
    const mr_config *cfg = &x->role.model.cfg;
    int n_moe = cfg->num_hidden_layers - cfg->first_k_dense_replace;
    int32_t *layers = malloc(sizeof(int32_t) * (size_t)(n_moe > 0 ? n_moe : 1));
    if (!layers) return;
    for (int i = 0; i < n_moe; i++) layers[i] = cfg->first_k_dense_replace + i;
    Moerun__LoadReport lr = MOERUN__LOAD_REPORT__INIT;
    lr.n_layers = (size_t)n_moe;
    lr.layers = layers;
    lr.n_experts = cfg->n_routed_experts;
    lr.n_tokens = (size_t)n_moe * cfg->n_routed_experts;
    lr.tokens = x->load + (size_t)cfg->first_k_dense_replace * cfg->n_routed_experts;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_LOAD;
    f.load = &lr;
    if (mr_role_send_frame(&x->role, x->role.coordinator, &f) == MR_OK) {
        memset(x->load, 0, sizeof(uint64_t) * (size_t)cfg->num_hidden_layers * cfg->n_routed_experts);
        x->load_dirty = false;
    }
    free(layers);
    x->last_report = mr_now();
}

/* One dispatch of the layer being served: its rows sit at row `at` of the
 * layer's backend buffers. */
typedef struct served {
    int i;           /* index in x->batch */
    mr_bulk_view v;
    int at;
    bool nccl;       /* MSG_DISPATCH_IDS: rows arrive (and leave) over the pair */
    bool lost;       /* its rows never arrived: answered empty (the decode rank fails it) */
} served;

/* The decode ranks of the NCCL-carried dispatches in sv not lost yet. */
static int nccl_ranks(const expert_state *x, const served *sv, int n, int *out)
{
    int m = 0;
    for (int j = 0; j < n; j++)
        if (sv[j].nccl && !sv[j].lost) out[m++] = x->batch[sv[j].i].src;
    return m;
}

/* Receive (send = false) or send the rows of every NCCL-carried dispatch,
 * each over its pair, and wait for all. A pair that fails marks its
 * dispatches lost. */
static void move_pair_rows(expert_state *x, served *sv, int n, float *rows, bool send)
{
    const int D = x->role.model.cfg.hidden_size;
    int *ranks = malloc(sizeof(int) * (size_t)(n + 1));
    if (!ranks) {
        for (int j = 0; j < n; j++) sv[j].lost |= sv[j].nccl;
        return;
    }
    /* one deadline for the whole phase: a stuck pair must not hold the other
     * decode ranks' rows longer than one timeout */
    const double until = mr_now() + 2.0 * x->role.opts.heartbeat_timeout_s;
    int m = nccl_ranks(x, sv, n, ranks);
    for (int j = 0; !send && j < m; j++) { /* ready, pair by pair: one failing leaves the others */
        const double left = until - mr_now();
        if (mr_route_pairs_wait(&x->role, &x->pairs, &ranks[j], 1, left > 0 ? left : 0) != MR_OK)
            MR_WARN("layer rows: %s", mr_last_error()); /* dropped: the post below fails */
    }
    for (int j = 0; j < n; j++) {
        if (!sv[j].nccl || sv[j].lost) continue;
        const int src = x->batch[sv[j].i].src;
        np_xfer xf = {.send = send, .buf = rows + (size_t)sv[j].at * D,
                      .bytes = sizeof(float) * (size_t)sv[j].v.hdr.n_rows * D};
        if (mr_route_pair_post(&x->role, &x->pairs, src, &xf, 1) != MR_OK) {
            MR_WARN("layer %d rows %s decode rank %d: %s", sv[j].v.hdr.layer,
                    send ? "to" : "from", src, mr_last_error());
            sv[j].lost = true;
        }
    }
    m = nccl_ranks(x, sv, n, ranks);
    for (int j = 0; m > 0 && j < m; j++) { /* wait pair by pair: a failure names its rank */
        const double left = until - mr_now();
        if (mr_route_pairs_wait(&x->role, &x->pairs, &ranks[j], 1, left > 0 ? left : 0) == MR_OK)
            continue;
        MR_WARN("%s", mr_last_error());
        for (int q = 0; q < n; q++)
            if (sv[q].nccl && x->batch[sv[q].i].src == ranks[j]) sv[q].lost = true;
    }
    free(ranks);
}

/* The answer to one dispatch: MSG_COMBINE with its rows (from out_host,
 * the layer's output rows in host memory) for UCX, or MSG_COMBINE_IDS
 * (slots only) whose rows follow over the pair. Zero rows when the pass
 * failed or its rows were lost. */
static uint8_t *answer_of(expert_state *x, const served *s, const float *out_host, bool ok,
                          size_t *size)
{
    const int D = x->role.model.cfg.hidden_size;
    const int kind = s->nccl ? MSG_COMBINE_IDS : MSG_COMBINE;
    const int n = ok && !s->lost ? s->v.hdr.n_rows : 0;
    *size = mr_bulk_size(kind, n, D);
    uint8_t *reply = malloc(*size);
    if (!reply) return NULL;
    int32_t *slots;
    float *rows;
    mr_bulk_init(reply, kind, s->v.hdr.layer, n, D, s->v.hdr.seq, &slots, NULL, &rows);
    if (n > 0) memcpy(slots, s->v.slots, sizeof(int32_t) * (size_t)n);
    if (n > 0 && rows)
        memcpy(rows, out_host + (size_t)s->at * D, sizeof(float) * (size_t)n * D);
    return reply;
}

/* Answer every dispatch of `layer` in the batch with one expert pass: the
 * rows of every dispatch go into one backend buffer (UCX-carried ones
 * copied in, NCCL-carried ones received in place), one mr_experts_run, the
 * answers go back the way their dispatch came. */
static void serve_layer(expert_state *x, int layer)
{
    const mr_config *cfg = &x->role.model.cfg;
    const mr_kernels *k = x->role.kernels;
    const int D = cfg->hidden_size;
    served *sv = calloc((size_t)x->n_batch + 1, sizeof *sv);
    uint8_t **replies = calloc((size_t)x->n_batch + 1, sizeof *replies);
    int32_t *ints = NULL;
    int n = 0, total = 0;
    for (int i = 0; sv && i < x->n_batch; i++) {
        const tp_msg *m = &x->batch[i];
        mr_bulk_view v;
        mr_bulk_view_of(m->data, m->len, m->type, D, cfg->num_hidden_layers, cfg->n_routed_experts,
                        m->src, &v); /* validated on receipt */
        if (v.hdr.layer != layer) continue;
        sv[n++] = (served){.i = i, .v = v, .at = total, .nccl = m->type == MSG_DISPATCH_IDS};
        total += v.hdr.n_rows;
    }
    ints = malloc(sizeof(int32_t) * 2 * (size_t)(total + 1));
    mr_status st = sv && replies && ints ? MR_OK : mr_fail(MR_ENOMEM, "out of memory");
    const size_t bytes = sizeof(float) * (size_t)(total ? total : 1) * D;
    float *in = mr_kbuf_reserve(k, &x->rows_in, bytes, &st);
    float *out = mr_kbuf_reserve(k, &x->rows_out, bytes, &st);
    /* UCX-carried rows go through one staging image of the layer's rows on a
     * non-host backend: one copy each way, from and to pinned memory */
    bool any_ucx = false;
    for (int j = 0; j < n; j++) any_ucx |= !sv[j].nccl;
    float *stage = !k->host_memory && any_ucx ? mr_kbuf_reserve_host(k, &x->rows_stage, bytes, &st)
                                               : NULL;
    float *rows_host = stage ? stage : in; /* where UCX rows are assembled */
    if (st != MR_OK) {
        MR_ERROR("expert: layer %d, %d rows: %s", layer, total, mr_last_error());
        goto done;
    }
    int32_t *row = ints, *experts = ints + total + 1;
    for (int j = 0; j < n; j++) {
        const mr_bulk_view *v = &sv[j].v;
        for (int q = 0; q < v->hdr.n_rows; q++) {
            row[sv[j].at + q] = sv[j].at + q;
            experts[sv[j].at + q] = v->experts[q];
            x->load[(size_t)layer * cfg->n_routed_experts + v->experts[q]]++;
        }
        if (!sv[j].nccl)
            memcpy(rows_host + (size_t)sv[j].at * D, v->rows,
                   sizeof(float) * (size_t)v->hdr.n_rows * D);
    }
    /* (before any pair receives into `in`: this copy covers every row) */
    if (stage) k->copy(in, stage, sizeof(float) * (size_t)total * D, MR_COPY_H2D);
    double t0 = mr_now();
    move_pair_rows(x, sv, n, in, false);
    x->role.transfer_s += mr_now() - t0;
    t0 = mr_now();
    st = mr_experts_run(cfg, mr_role_expert_weights(&x->role), k, &x->role.experts_ws, layer, total,
                        in, row, experts, out, row);
    if (st == MR_OK) st = k->check(); /* the pairs' sends read `out` on their own streams */
    x->role.compute_s += mr_now() - t0;
    x->role.tokens_processed += (uint64_t)total;
    x->load_dirty = true;
    if (st != MR_OK) MR_WARN("layer %d: %s", layer, mr_last_error());
    const float *out_host = out;
    if (stage && st == MR_OK) {
        k->copy(stage, out, sizeof(float) * (size_t)total * D, MR_COPY_D2H);
        out_host = stage;
    }
    for (int j = 0; j < n; j++) {
        const int dst = x->batch[sv[j].i].src;
        size_t size = 0;
        replies[j] = answer_of(x, &sv[j], out_host, st == MR_OK, &size);
        double ts = mr_now();
        /* zero-copy: replies[j] stays ours until the flush below */
        if (!replies[j] || tp_send_nocopy(x->role.tp, dst, sv[j].nccl ? MSG_COMBINE_IDS : MSG_COMBINE,
                                          replies[j], size) != MR_OK)
            MR_WARN("answer to rank %d lost: %s", dst, replies[j] ? mr_last_error() : "out of memory");
        x->role.transfer_s += mr_now() - ts;
        if (st != MR_OK) sv[j].lost = true; /* answered empty: no rows follow */
    }
    t0 = mr_now();
    move_pair_rows(x, sv, n, out, true);
    /* the answers must have left before their buffers are freed */
    for (int j = 0; j < n; j++) {
        const int dst = x->batch[sv[j].i].src;
        bool first = true; /* one flush per destination */
        for (int q = 0; q < j && first; q++) first = x->batch[sv[q].i].src != dst;
        if (!first || !replies[j]) continue;
        if (tp_flush(x->role.tp, dst, 2.0 * x->role.opts.heartbeat_timeout_s) == MR_ETIMEDOUT)
            tp_declare_dead(x->role.tp, dst, "combine send did not complete");
    }
    x->role.transfer_s += mr_now() - t0;
done:
    for (int j = 0; replies && j < n; j++) free(replies[j]);
    free(replies);
    free(sv);
    free(ints);
}

static void serve_batch(expert_state *x)
{
    /* layers in increasing order; each layer's dispatches from all ranks together */
    for (int layer = 0; layer < x->role.model.cfg.num_hidden_layers; layer++) {
        bool any = false;
        for (int i = 0; i < x->n_batch && !any; i++) {
            mr_bulk_hdr h;
            memcpy(&h, x->batch[i].data, sizeof h);
            any = h.layer == layer;
        }
        if (any) {
            serve_layer(x, layer);
            mr_role_service(&x->role); /* heartbeats between layers */
        }
    }
    for (int i = 0; i < x->n_batch; i++) tp_msg_free(&x->batch[i]);
    x->n_batch = 0;
}

static void handle_message(expert_state *x, tp_msg *m)
{
    const mr_config *cfg = &x->role.model.cfg;
    if (m->type == TP_MSG_PEER_DEAD) {
        MR_WARN("rank %d is dead", m->src);
        mr_route_pairs_drop(&x->pairs, m->src, "the rank died");
        if (m->src == x->role.coordinator) x->role.shutdown = true;
    } else if (m->type == MSG_ROUTE_NCCL_ID) {
        mr_route_pairs_answer(&x->role, &x->pairs, m);
    } else if (m->type == MSG_PAIR_ROWS) {
        mr_route_pairs_deliver(&x->role, &x->pairs, m);
    } else if (m->type == MSG_DISPATCH || m->type == MSG_DISPATCH_IDS) {
        mr_bulk_view v;
        if (mr_bulk_view_of(m->data, m->len, m->type, cfg->hidden_size, cfg->num_hidden_layers,
                            cfg->n_routed_experts, m->src, &v) != MR_OK) {
            mr_role_reject(&x->role);
            return;
        }
        if (m->type == MSG_DISPATCH && mr_route_pairs_has(&x->pairs, m->src))
            /* a decode rank only does that once its side of the pair is gone
             * (dropped, or never ready): abort ours too (NCCL: every member aborts) */
            mr_route_pairs_drop(&x->pairs, m->src, "its decode rank sends rows over UCX now");
        if (m->type == MSG_DISPATCH_IDS && !mr_route_pairs_has(&x->pairs, m->src)) {
            mr_fail(MR_EPROTO, "dispatch over NCCL from rank %d, which has no NCCL pair here",
                    m->src);
            mr_role_reject(&x->role);
            return;
        }
        if (x->n_batch == x->cap_batch) {
            int cap = x->cap_batch ? 2 * x->cap_batch : 16;
            tp_msg *grown = realloc(x->batch, sizeof(tp_msg) * (size_t)cap);
            if (!grown) {
                MR_ERROR("expert: out of memory");
                return;
            }
            x->batch = grown;
            x->cap_batch = cap;
        }
        x->batch[x->n_batch++] = *m;
        memset(m, 0, sizeof *m); /* ownership moved to the batch */
    } else {
        Moerun__Frame *f = mr_role_control_frame(&x->role, m);
        if (!f) return;
        if (f->body_case == MOERUN__FRAME__BODY_SHUTDOWN) x->role.shutdown = true;
        else if (f->body_case == MOERUN__FRAME__BODY_PLACEMENT && m->src == x->role.coordinator)
            on_placement(x, f->placement);
        else mr_role_reject_frame(&x->role, f, m->src);
        mr_frame_free(f);
    }
}

static mr_status setup(expert_state *x)
{
    int n_expert = 0;
    int *experts = mr_role_ranks(&x->role, TP_ROLE_EXPERT, &n_expert);
    mr_config cfg;
    /* placement needs the config before the weights are loaded */
    mr_status st = MR_OK;
    if (x->role.opts.model_dir) {
        char path[1024];
        snprintf(path, sizeof path, "%s/config.json", x->role.opts.model_dir);
        st = mr_config_load(path, &cfg);
    } else {
        st = mr_synth_preset_config("tiny", &cfg);
    }
    if (st == MR_OK)
        st = x->role.opts.placement_path
                 ? mr_placement_load(x->role.opts.placement_path, &cfg, experts, n_expert, &x->placement)
                 : mr_placement_round_robin(&cfg, experts, n_expert, &x->placement);
    free(experts);
    MR_TRY(st);
    MR_TRY(mr_role_load_experts(&x->role, holds, x));
    x->load = calloc((size_t)cfg.num_hidden_layers * cfg.n_routed_experts, sizeof(uint64_t));
    if (!x->load) return mr_fail(MR_ENOMEM, "expert: out of memory");
    x->last_report = mr_now();
    return mr_role_send_ready(&x->role, 0, 0);
}

int main(int argc, char **argv)
{
    expert_state x;
    memset(&x, 0, sizeof x);
    mr_status st = mr_role_init(&x.role, "expert", TP_ROLE_EXPERT, argc, argv);
    if (st == MR_OK) st = setup(&x);
    tp_msg m;
    while (st == MR_OK && !x.role.shutdown) {
        bool got = false;
        while (!x.role.shutdown && mr_role_next(&x.role, &m)) {
            got = true;
            handle_message(&x, &m);
            tp_msg_free(&m);
        }
        if (ex_prepare_done(&x.prepare)) finish_prepare(&x, true);
        if (x.n_batch) serve_batch(&x);
        if (x.load_dirty && mr_now() - x.last_report > x.role.opts.load_report_period_s)
            send_load_report(&x);
        if (!got && !x.n_batch && !x.role.shutdown)
            mr_role_idle(&x.role, x.prepare.running ? 0.01 : 0.5); /* poll the load */
    }
    if (st == MR_OK && tp_peer_alive(x.role.tp, x.role.coordinator)) {
        if (x.load_dirty) send_load_report(&x);
        mr_role_send_stats(&x.role);
    }
    if (x.prepare.running) finish_prepare(&x, false);
    for (int i = 0; i < x.n_batch; i++) tp_msg_free(&x.batch[i]);
    free(x.batch);
    mr_route_pairs_free(&x.pairs);
    if (x.role.kernels) {
        mr_kbuf_free(x.role.kernels, &x.rows_in);
        mr_kbuf_free(x.role.kernels, &x.rows_out);
        mr_kbuf_free(x.role.kernels, &x.rows_stage);
    }
    free(x.load);
    mr_placement_free(&x.placement);
    return mr_role_finish(&x.role, st);
}
