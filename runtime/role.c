#include "role.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/blas_core.h"
#include "common/log.h"
#include "common/process.h"
#include "common/timer.h"
#include "kernels/backend.h"
#include "mr_build_config.h"

void mr_msgq_push(mr_msgq *q, tp_msg *msg)
{
    if (q->count == q->cap) {
        int cap = q->cap ? q->cap * 2 : 16;
        tp_msg *items = malloc(sizeof(tp_msg) * (size_t)cap);
        if (!items) {
            MR_ERROR("message queue: out of memory");
            abort();
        }
        for (int i = 0; i < q->count; i++) items[i] = q->items[(q->head + i) % q->cap];
        free(q->items);
        q->items = items;
        q->head = 0;
        q->cap = cap;
    }
    q->items[(q->head + q->count) % q->cap] = *msg;
    q->count++;
    memset(msg, 0, sizeof *msg);
}

bool mr_msgq_pop(mr_msgq *q, tp_msg *out)
{
    if (q->count == 0) return false;
    *out = q->items[q->head];
    q->head = (q->head + 1) % q->cap;
    q->count--;
    return true;
}

bool mr_msgq_take(mr_msgq *q, bool (*match)(const tp_msg *m, void *ctx), void *ctx, tp_msg *out)
{
    for (int i = 0; i < q->count; i++) {
        tp_msg *m = &q->items[(q->head + i) % q->cap];
        if (!match(m, ctx)) continue;
        *out = *m;
        for (int j = i; j < q->count - 1; j++)
            q->items[(q->head + j) % q->cap] = q->items[(q->head + j + 1) % q->cap];
        q->count--;
        return true;
    }
    return false;
}

void mr_msgq_free(mr_msgq *q)
{
    tp_msg m;
    while (mr_msgq_pop(q, &m)) tp_msg_free(&m);
    free(q->items);
    memset(q, 0, sizeof *q);
}

mr_status mr_role_init(mr_role *r, const char *name, tp_role kind, int argc, char **argv)
{
    mr_blas_pick_core(argv); /* may re-exec with OPENBLAS_CORETYPE set */
    memset(r, 0, sizeof *r);
    mr_process_init();
    r->name = name;
    r->kind = kind;
    mr_role_opts_defaults(&r->opts);
    char tag[64];
    snprintf(tag, sizeof tag, "%s", name);
    mr_log_set_tag(tag);
    if (mr_role_opts_parse(argc, argv, &r->opts) != MR_OK) {
        fprintf(stderr, "%s: %s\noptions:\n%s", name, mr_last_error(), mr_role_opts_usage());
        exit(2);
    }
    uint64_t hash = 0;
    MR_TRY(mr_model_fingerprint(r->opts.model_dir, &hash));
    tp_options to = {
        .heartbeat_period_s = r->opts.heartbeat_period_s,
        .heartbeat_timeout_s = r->opts.heartbeat_timeout_s,
        .max_frame_bytes = 256u << 20,
        .model_hash = hash,
        .build_id = "moerun " MR_VERSION,
    };
    MR_TRY(tp_init(&argc, &argv, kind, &to, &r->tp));
    r->rank = tp_rank(r->tp);
    r->coordinator = tp_rank_of(r->tp, TP_ROLE_COORDINATOR, 0);
    const tp_peer *me = tp_peer_info(r->tp, r->rank);
    snprintf(tag, sizeof tag, "%s[%d] rank %d", name, me->role_index, r->rank);
    mr_log_set_tag(tag);
    return MR_OK;
}

/* Long start-up steps (reading and converting the checkpoint: minutes for a
 * full-size model; converting and uploading weights) run on a thread of their
 * own while the main thread keeps the transport serviced, so heartbeats keep
 * flowing and no peer declares this rank dead (and fences it) for loading.
 * Messages that arrive meanwhile are kept for the role's loop (r->deferred). */
typedef struct serviced_job {
    mr_role *r;
    mr_status (*fn)(void *ctx);
    void *ctx;
    atomic_bool done;
    mr_status status;
    char error[1024];
} serviced_job;

static void *serviced_thread(void *arg)
{
    serviced_job *j = arg;
    j->status = j->r->kernels ? mr_backend_bind_thread(j->r->kernels) : MR_OK;
    if (j->status == MR_OK) j->status = j->fn(j->ctx);
    if (j->status != MR_OK) snprintf(j->error, sizeof j->error, "%s", mr_last_error());
    atomic_store(&j->done, true);
    return NULL;
}

mr_status mr_role_serviced(mr_role *r, mr_status (*fn)(void *ctx), void *ctx)
{
    serviced_job j = {.r = r, .fn = fn, .ctx = ctx};
    atomic_init(&j.done, false);
    pthread_t thread;
    if (pthread_create(&thread, NULL, serviced_thread, &j) != 0)
        return fn(ctx); /* no thread: here (peers may time out on a slow step) */
    while (!atomic_load(&j.done)) {
        tp_wait(r->tp, 0.05);
        tp_msg m;
        while (tp_poll(r->tp, &m)) mr_msgq_push(&r->deferred, &m);
    }
    pthread_join(thread, NULL);
    /* the backend is the main thread's again */
    if (r->kernels) MR_TRY(mr_backend_bind_thread(r->kernels));
    if (j.status != MR_OK) return mr_fail(j.status, "%s", j.error);
    return MR_OK;
}

typedef struct load_args {
    mr_role *r;
    mr_expert_filter filter;
    void *filter_ctx;
    bool routed_only;
} load_args;

/* The checkpoint (and, for an expert rank on a non-host backend or with
 * bf16 weights, its copy there). */
static mr_status load_step(void *arg)
{
    load_args *a = arg;
    mr_role *r = a->r;
    if (r->opts.test_startup_delay_ms > 0) {
        struct timespec ts = {r->opts.test_startup_delay_ms / 1000,
                              (long)(r->opts.test_startup_delay_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    MR_TRY(a->routed_only
               ? mr_model_load_routed(r->opts.model_dir, a->filter, a->filter_ctx, &r->model)
               : mr_model_load(r->opts.model_dir, a->filter, a->filter_ctx, &r->model));
    if (a->routed_only && (!r->kernels->host_memory || mr_role_weight_type(r) != MR_WT_F32))
        MR_TRY(mr_weights_to_backend(&r->model.cfg, r->kernels, mr_role_weight_type(r),
                                     &r->model.weights, &r->backend_experts));
    return MR_OK;
}

typedef struct engine_args {
    mr_role *r;
    const mr_engine_opts *opts;
    mr_engine **out;
} engine_args;

static mr_status engine_step(void *arg)
{
    engine_args *a = arg;
    return mr_engine_create(&a->r->model.cfg, &a->r->model.weights, a->opts, a->out);
}

mr_status mr_role_create_engine(mr_role *r, const mr_engine_opts *opts, mr_engine **out)
{
    engine_args a = {r, opts, out};
    return mr_role_serviced(r, engine_step, &a);
}

static mr_status load_model(mr_role *r, mr_expert_filter filter, void *filter_ctx,
                           bool routed_only)
{
    double t0 = mr_now();
    MR_TRY(mr_backend_open(r->opts.backend, r->opts.bf16, &r->kernels));
    load_args a = {r, filter, filter_ctx, routed_only};
    MR_TRY(mr_role_serviced(r, load_step, &a));
    MR_INFO("model %s loaded in %.2f s (%.1f MB of fp32 weights held, %s backend, %s weights)",
            r->model.source, mr_now() - t0, (double)r->model.weights.n_bytes / 1e6,
            r->kernels->name, mr_wtype_name(mr_role_weight_type(r)));
    r->cpu_at_start = mr_cpu_seconds();
    return MR_OK;
}

void mr_role_service(void *role)
{
    mr_role *r = role;
    tp_service(r->tp);
}

mr_wtype mr_role_weight_type(const mr_role *r)
{
    return r->opts.bf16 ? MR_WT_BF16 : MR_WT_F32;
}

mr_status mr_role_load_model(mr_role *r, mr_expert_filter filter, void *filter_ctx)
{
    return load_model(r, filter, filter_ctx, false);
}

mr_status mr_role_load_experts(mr_role *r, mr_expert_filter filter, void *filter_ctx)
{
    return load_model(r, filter, filter_ctx, true);
}

mr_status mr_role_adopt_experts(mr_role *r, mr_model *add, int *n)
{
    *n = 0;
    mr_status st = MR_OK;
    mr_weights *w = &r->model.weights;
    bool backend = r->backend_experts.backend != NULL;
    for (int l = 0; l < w->n_layers && st == MR_OK; l++) {
        if (!w->layers[l].is_moe || !add->weights.layers[l].experts) continue;
        for (int e = 0; e < w->n_experts && st == MR_OK; e++) {
            mr_mlp *src = &add->weights.layers[l].experts[e];
            if (!src->gate.w || w->layers[l].experts[e].gate.w) continue; /* none, or held */
            if (backend) {
                st = mr_mlp_to_backend(r->kernels, mr_role_weight_type(r), src,
                                       &r->backend_experts.layers[l].experts[e]);
                if (st != MR_OK) break;
            }
            w->layers[l].experts[e] = *src; /* the host arrays move over */
            memset(src, 0, sizeof *src);
            w->n_bytes += 4ull * 3 * (uint64_t)w->layers[l].experts[e].gate.rows *
                          (uint64_t)w->layers[l].experts[e].gate.cols;
            (*n)++;
        }
    }
    mr_model_free(add);
    return st;
}

void mr_role_drop_experts(mr_role *r, mr_expert_filter keep, void *ctx, int *n)
{
    *n = 0;
    mr_weights *w = &r->model.weights;
    bool backend = r->backend_experts.backend != NULL;
    for (int l = 0; l < w->n_layers; l++) {
        if (!w->layers[l].is_moe) continue;
        for (int e = 0; e < w->n_experts; e++) {
            mr_mlp *m = &w->layers[l].experts[e];
            if (!m->gate.w || keep(ctx, l, e)) continue;
            w->n_bytes -= 4ull * 3 * (uint64_t)m->gate.rows * (uint64_t)m->gate.cols;
            mr_mlp_free(NULL, m);
            if (backend) mr_mlp_free(r->kernels, &r->backend_experts.layers[l].experts[e]);
            (*n)++;
        }
    }
}

mr_status mr_role_placement_of(const mr_role *r, const Moerun__Placement *p, mr_placement *out)
{
    int n_expert = 0;
    int *experts = mr_role_ranks(r, TP_ROLE_EXPERT, &n_expert);
    mr_status st = mr_placement_from_table(&r->model.cfg, p->n_layers, p->n_experts, p->n_replicas,
                                           p->n_n_replicas, p->ranks, p->n_ranks, experts,
                                           n_expert, out);
    free(experts);
    return st;
}

mr_status mr_role_send_placement_ack(mr_role *r, uint64_t epoch, Moerun__PlacementPhase phase,
                                     const char *error, int loaded, int dropped)
{
    Moerun__PlacementAck ack = MOERUN__PLACEMENT_ACK__INIT;
    ack.epoch = epoch;
    ack.phase = phase;
    ack.error = (char *)(error ? error : "");
    ack.experts_loaded = loaded;
    ack.experts_dropped = dropped;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_PLACEMENT_ACK;
    f.placement_ack = &ack;
    return mr_role_send_frame(r, r->coordinator, &f);
}

const mr_weights *mr_role_expert_weights(const mr_role *r)
{
    return r->backend_experts.backend ? &r->backend_experts : &r->model.weights;
}

bool mr_role_next(mr_role *r, tp_msg *out)
{
    if (mr_msgq_pop(&r->deferred, out)) return true;
    return tp_poll(r->tp, out);
}

void mr_role_idle(mr_role *r, double timeout_s)
{
    double t0 = mr_now();
    tp_wait(r->tp, timeout_s);
    r->wait_s += mr_now() - t0;
}

mr_status mr_role_send_frame(mr_role *r, int dst, const Moerun__Frame *frame)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    MR_TRY(mr_frame_pack(frame, &buf, &len));
    mr_status st = tp_send(r->tp, dst, MSG_CONTROL, buf, len);
    free(buf);
    return st;
}

mr_status mr_role_send_token(mr_role *r, const char *id, int token, Moerun__FinishReason finish,
                             const char *error)
{
    Moerun__TokenEvent ev = MOERUN__TOKEN_EVENT__INIT;
    ev.id = (char *)id;
    ev.token = token;
    ev.finish = finish;
    ev.error = (char *)(error ? error : "");
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_TOKEN;
    f.token = &ev;
    return mr_role_send_frame(r, r->coordinator, &f);
}

mr_status mr_role_send_ready(mr_role *r, int free_kv_blocks, int total_kv_blocks)
{
    /* serving starts now: start-up (model load, pools, engine) is not
     * charged to the requests in RankStats */
    r->cpu_at_start = mr_cpu_seconds();
    r->compute_s = r->transfer_s = r->wait_s = 0;
    Moerun__Status s = MOERUN__STATUS__INIT;
    s.free_kv_blocks = free_kv_blocks;
    s.total_kv_blocks = total_kv_blocks;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_STATUS;
    f.status = &s;
    return mr_role_send_frame(r, r->coordinator, &f);
}

void mr_role_reject(mr_role *r)
{
    r->frames_rejected++;
    MR_WARN("%s", mr_last_error());
}

Moerun__Frame *mr_role_control_frame(mr_role *r, const tp_msg *m)
{
    Moerun__Frame *f = NULL;
    if (m->type != MSG_CONTROL)
        mr_fail(MR_EPROTO, "message of unexpected type %u from rank %d rejected", m->type, m->src);
    else if (mr_frame_unpack(m->data, m->len, MR_FRAME_MAX_BYTES, m->src, &f) == MR_OK)
        return f;
    mr_role_reject(r);
    return NULL;
}

void mr_role_reject_frame(mr_role *r, const Moerun__Frame *f, int src)
{
    mr_fail(MR_EPROTO, "unexpected control frame %d from rank %d rejected", f->body_case, src);
    mr_role_reject(r);
}

mr_status mr_role_send_stats(mr_role *r)
{
    int n = tp_size(r->tp);
    uint64_t *bytes = calloc((size_t)n, sizeof(uint64_t));
    uint64_t *msgs = calloc((size_t)n, sizeof(uint64_t));
    if (!bytes || !msgs) {
        free(bytes);
        free(msgs);
        return mr_fail(MR_ENOMEM, "stats: out of memory");
    }
    uint64_t rejected = r->frames_rejected;
    for (int p = 0; p < n; p++) {
        if (p == r->rank) continue;
        const tp_link_stats *ls = tp_link(r->tp, p);
        bytes[p] = ls->bytes_sent + ls->bytes_put;
        msgs[p] = ls->msgs_sent + ls->puts;
        rejected += ls->frames_rejected;
    }
    Moerun__RankStats rs = MOERUN__RANK_STATS__INIT;
    rs.role = (char *)r->name;
    rs.cpu_seconds = mr_cpu_seconds() - r->cpu_at_start;
    rs.compute_seconds = r->compute_s;
    rs.transfer_seconds = r->transfer_s;
    rs.wait_seconds = r->wait_s;
    rs.n_link_bytes_sent = (size_t)n;
    rs.link_bytes_sent = bytes;
    rs.n_link_msgs_sent = (size_t)n;
    rs.link_msgs_sent = msgs;
    rs.frames_rejected = rejected;
    rs.tokens_processed = r->tokens_processed;
    Moerun__Frame f = MOERUN__FRAME__INIT;
    f.body_case = MOERUN__FRAME__BODY_STATS;
    f.stats = &rs;
    mr_status st = mr_role_send_frame(r, r->coordinator, &f);
    free(bytes);
    free(msgs);
    return st;
}

mr_status mr_role_logits_path(const mr_role *r, const char *id, char *out, size_t len)
{
    if (!id[0] || id[0] == '.' || strchr(id, '/'))
        return mr_fail(MR_EINVAL, "request id '%s' cannot name a logits file", id);
    if (snprintf(out, len, "%s/%s.npy", r->opts.logits_dir, id) >= (int)len)
        return mr_fail(MR_EINVAL, "logits path for request '%s' too long", id);
    return MR_OK;
}

int *mr_role_ranks(const mr_role *r, tp_role kind, int *n)
{
    *n = tp_count_role(r->tp, kind);
    int *ranks = malloc(sizeof(int) * (size_t)(*n > 0 ? *n : 1));
    if (!ranks) {
        MR_ERROR("out of memory");
        abort();
    }
    for (int i = 0; i < *n; i++) ranks[i] = tp_rank_of(r->tp, kind, i);
    return ranks;
}

int mr_role_finish(mr_role *r, mr_status st)
{
    if (st != MR_OK) MR_ERROR("%s", mr_last_error());
    mr_msgq_free(&r->deferred);
    tp_finalize(r->tp);
    r->tp = NULL;
    if (r->kernels) mr_expert_ws_free(r->kernels, &r->experts_ws);
    mr_weights_free(&r->backend_experts);
    mr_model_free(&r->model);
    return st == MR_OK ? 0 : 1;
}
