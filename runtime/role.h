/* runtime/role.h — what every cluster role process shares: start-up
 * (options, model fingerprint, transport bootstrap), control-frame sending,
 * a queue for messages that arrive while the role waits for something else,
 * time accounting, and the RankStats report at shutdown.
 *
 * One mr_role per process, used from its single main thread.
 */
#ifndef MR_ROLE_H
#define MR_ROLE_H

#include <stdbool.h>

#include "common/status.h"
#include "model/experts.h"
#include "model/model.h"
#include "proto/wire.h"
#include "placement.h"
#include "role_opts.h"
#include "transport/tp.h"

/* FIFO of received messages set aside for later. */
typedef struct mr_msgq {
    tp_msg *items;
    int head, count, cap;
} mr_msgq;

void mr_msgq_push(mr_msgq *q, tp_msg *msg);   /* takes ownership; aborts on OOM */
bool mr_msgq_pop(mr_msgq *q, tp_msg *out);
/* Remove and return the oldest message for which match() is true. */
bool mr_msgq_take(mr_msgq *q, bool (*match)(const tp_msg *m, void *ctx), void *ctx, tp_msg *out);
void mr_msgq_free(mr_msgq *q);

typedef struct mr_role {
    const char *name;            /* "decode", ... */
    tp_role kind;
    tp_ctx *tp;
    mr_role_opts opts;
    mr_model model;              /* host weights (what was loaded) */
    const mr_kernels *kernels;   /* compute backend (--backend), set by the load */
    mr_weights backend_experts;  /* expert ranks on a non-host backend: their experts there */
    mr_expert_ws experts_ws;     /* workspace of mr_experts_forward on this rank */
    int rank;
    int coordinator;             /* rank of the coordinator (0) */
    mr_msgq deferred;            /* messages to handle after the current step */
    double cpu_at_start;         /* when start-up finished (mr_role_send_ready) */
    double compute_s, transfer_s, wait_s;
    uint64_t tokens_processed;
    uint64_t frames_rejected;    /* malformed frames this role refused */
    bool shutdown;
} mr_role;

/* Parse options, fingerprint the model, bootstrap the transport. The model
 * is NOT loaded yet (each role loads the part it needs). Exits the process
 * with status 2 on bad options. */
mr_status mr_role_init(mr_role *r, const char *name, tp_role kind, int argc, char **argv);
/* Open the compute backend (--backend/--precision; a cuda rank without a
 * usable GPU fails here with the reason), load the model (filter may skip
 * routed experts) and start CPU accounting. */
mr_status mr_role_load_model(mr_role *r, mr_expert_filter filter, void *filter_ctx);
/* Run fn(ctx) on a thread of its own while this thread keeps the transport
 * serviced (heartbeats flow; messages are kept in r->deferred for the role's
 * loop): for long start-up steps (model load, weight conversion and upload,
 * engine creation). fn may use r->kernels (bound to its thread); nothing else
 * may use them meanwhile. Returns fn's status with its message. Runs fn here
 * when no thread can be started. */
mr_status mr_role_serviced(mr_role *r, mr_status (*fn)(void *ctx), void *ctx);

/* mr_engine_create over the role's model, as a serviced step (the weight
 * conversion and upload to a GPU take seconds for a full-size model). */
mr_status mr_role_create_engine(mr_role *r, const mr_engine_opts *opts, mr_engine **out);

/* How this rank stores matrices on its backend (--precision: fp32 | bf16). */
mr_wtype mr_role_weight_type(const mr_role *r);
/* The same for a rank that only runs routed experts: nothing else is loaded,
 * and on a non-host backend, or with bf16 weights, the experts are copied
 * there in the rank's weight type (backend_experts). */
mr_status mr_role_load_experts(mr_role *r, mr_expert_filter filter, void *filter_ctx);
/* Expert ranks whose set of experts changes while serving (re-placement):
 * _adopt_experts moves every routed expert `add` holds that this rank does
 * not (loaded elsewhere, e.g. by expert_node/prepare.c's background thread)
 * into r, copying it to the backend, then frees `add` (always);
 * _drop_experts frees every loaded expert `keep` rejects. Counts are
 * returned in *n. Experts held before and after are never touched, so the
 * rank serves both placements in between. */
mr_status mr_role_adopt_experts(mr_role *r, mr_model *add, int *n);
void mr_role_drop_experts(mr_role *r, mr_expert_filter keep, void *ctx, int *n);

/* A Placement frame's table as an mr_placement, checked against the model
 * and this cluster's expert ranks. */
mr_status mr_role_placement_of(const mr_role *r, const Moerun__Placement *p, mr_placement *out);
/* PlacementAck to the coordinator (error NULL or "" = done). */
mr_status mr_role_send_placement_ack(mr_role *r, uint64_t epoch, Moerun__PlacementPhase phase,
                                     const char *error, int loaded, int dropped);

/* The routed-expert weights in r->kernels' memory (expert ranks). */
const mr_weights *mr_role_expert_weights(const mr_role *r);

/* For mr_engine_opts.between_layers: keep the transport serviced (ctx is the
 * mr_role). */
void mr_role_service(void *role);

/* Next message: deferred ones first, then the transport (non-blocking). */
bool mr_role_next(mr_role *r, tp_msg *out);
/* Wait up to timeout_s for traffic, counted as wait time. */
void mr_role_idle(mr_role *r, double timeout_s);

mr_status mr_role_send_frame(mr_role *r, int dst, const Moerun__Frame *frame);
/* A TokenEvent to the coordinator. */
mr_status mr_role_send_token(mr_role *r, const char *id, int token, Moerun__FinishReason finish,
                             const char *error);
/* Log and count a frame this role refused (message from mr_last_error()). */
void mr_role_reject(mr_role *r);
/* The control frame in m, unpacked (size-capped); NULL after rejecting a
 * message that is not MSG_CONTROL or not a valid frame. Free with
 * mr_frame_free. */
Moerun__Frame *mr_role_control_frame(mr_role *r, const tp_msg *m);
/* Reject a valid frame this role has no use for. */
void mr_role_reject_frame(mr_role *r, const Moerun__Frame *f, int src);
/* Tell the coordinator this rank finished start-up (model loaded, ready to
 * serve): a Status frame. The coordinator starts its clock once every rank
 * is ready, so load time never counts as TTFT; the rank's CPU and time
 * accounting for RankStats also start here. */
mr_status mr_role_send_ready(mr_role *r, int free_kv_blocks, int total_kv_blocks);
/* RankStats to the coordinator (at Shutdown). */
mr_status mr_role_send_stats(mr_role *r);

/* --logits-dir file of a request: <dir>/<id>.npy. Request ids are user
 * strings: an id with '/' or a leading '.' is refused (MR_EINVAL) so it can
 * never name a file outside the directory. */
mr_status mr_role_logits_path(const mr_role *r, const char *id, char *out, size_t len);

/* Ranks of one role, in role order; *n set. Caller frees. */
int *mr_role_ranks(const mr_role *r, tp_role kind, int *n);

/* Tear down: transport finalize, model free. Returns the process exit code. */
int mr_role_finish(mr_role *r, mr_status st);

#endif
