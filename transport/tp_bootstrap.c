/* transport/tp_bootstrap.c — tp_init: MPI bootstrap, UCX setup, endpoints,
 * the agreement check (model hash, build id), and the rank/role accessors. */
#include "transport/tp_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>



/* What every rank contributes to the bootstrap Allgather (fixed size). */
typedef struct tp_boot_rec {
    int32_t role, pid;
    uint64_t starttime, model_hash, build_hash;
    uint32_t addr_len, ok;
    char host[64];
    char build_id[64]; /* shown in messages; build_hash covers the full string */
    char error[192];   /* why this rank's local setup failed (ok == 0) */
} tp_boot_rec;

tp_options tp_options_default(void)
{
    tp_options o = {
        .heartbeat_period_s = 1.0,
        .heartbeat_timeout_s = 30.0,
        .max_frame_bytes = (size_t)256 << 20,
        .model_hash = 0,
        .build_id = NULL,
    };
    return o;
}

const char *tp_role_name(tp_role role)
{
    switch (role) {
    case TP_ROLE_COORDINATOR: return "coordinator";
    case TP_ROLE_PREFILL: return "prefill";
    case TP_ROLE_DECODE: return "decode";
    case TP_ROLE_EXPERT: return "expert";
    case TP_ROLE_OTHER: return "other";
    }
    return "?";
}

mr_status tp_ucs_fail(ucs_status_t s, const char *call, const char *file, int line)
{
    return mr_fail(MR_EIO, "%s:%d: %s: %s", file, line, call, ucs_status_string(s));
}

mr_status tp_mpi_fail(int rc, const char *call, const char *file, int line)
{
    char msg[MPI_MAX_ERROR_STRING];
    int msg_len = 0;
    if (MPI_Error_string(rc, msg, &msg_len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    return mr_fail(MR_EIO, "%s:%d: %s: %s", file, line, call, msg);
}

static uint64_t tp_fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static mr_status tp_check_options(const tp_options *o)
{
    if (!(o->heartbeat_period_s > 0.0))
        return mr_fail(MR_EINVAL, "tp_options: heartbeat_period_s must be > 0 (got %g)",
                       o->heartbeat_period_s);
    if (!(o->heartbeat_timeout_s > o->heartbeat_period_s))
        return mr_fail(MR_EINVAL,
                       "tp_options: heartbeat_timeout_s (%g) must exceed heartbeat_period_s (%g)",
                       o->heartbeat_timeout_s, o->heartbeat_period_s);
    if (o->max_frame_bytes == 0)
        return mr_fail(MR_EINVAL, "tp_options: max_frame_bytes must be > 0");
    return MR_OK;
}

/* UCX context + worker + AM handler + event fd. Local only. */
static mr_status tp_ucx_setup(tp_ctx *ctx)
{
    mr_status st = MR_OK;
    ucp_config_t *config = NULL;

    UCS_TRY(ucp_config_read(NULL, NULL, &config));
    ucp_params_t params = {
        .field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS |
                      UCP_PARAM_FIELD_NAME,
        .features = UCP_FEATURE_AM | UCP_FEATURE_RMA | UCP_FEATURE_WAKEUP,
        .estimated_num_eps = (size_t)ctx->size,
        .name = "moerun",
    };
    UCS_TRY(ucp_init(&params, config, &ctx->ucp));

    ucp_worker_params_t wparams = {
        .field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
        .thread_mode = UCS_THREAD_MODE_SINGLE,
    };
    UCS_TRY(ucp_worker_create(ctx->ucp, &wparams, &ctx->worker));

    ucp_am_handler_param_t am = {
        .field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                      UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG,
        .id = TP_AM_ID,
        .flags = UCP_AM_FLAG_WHOLE_MSG,
        .cb = tp_am_recv_cb,
        .arg = ctx,
    };
    UCS_TRY(ucp_worker_set_am_recv_handler(ctx->worker, &am));

    UCS_TRY(ucp_worker_get_efd(ctx->worker, &ctx->efd));
    ctx->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (ctx->epfd < 0) {
        st = mr_fail(MR_EIO, "epoll_create1 failed");
        goto fail;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data = {.u64 = TP_EPOLL_WORKER}};
    if (epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, ctx->efd, &ev) != 0) {
        st = mr_fail(MR_EIO, "epoll_ctl(ADD, ucp worker efd %d) failed", ctx->efd);
        goto fail;
    }
    ctx->pidfd_epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event pev = {.events = EPOLLIN, .data = {.u64 = TP_EPOLL_PIDFDS}};
    if (ctx->pidfd_epfd < 0 || epoll_ctl(ctx->epfd, EPOLL_CTL_ADD, ctx->pidfd_epfd, &pev) != 0) {
        st = mr_fail(MR_EIO, "epoll set for peer pidfds failed");
        goto fail;
    }
fail:
    if (config) ucp_config_release(config);
    return st;
}

static void tp_describe(char *buf, size_t cap, int rank, const tp_boot_rec *r)
{
    snprintf(buf, cap, "rank %d (%s, pid %d on %s)", rank, tp_role_name((tp_role)r->role),
             (int)r->pid, r->host);
}

/* Every rank runs this on the same gathered records, so every rank reaches the
 * same verdict and fails (or not) together. */
static mr_status tp_check_agreement(const tp_ctx *ctx, const tp_boot_rec *recs)
{
    char who[160], ref[160];
    tp_describe(ref, sizeof ref, 0, &recs[0]);
    for (int r = 0; r < ctx->size; r++) {
        if (!recs[r].ok) {
            tp_describe(who, sizeof who, r, &recs[r]);
            return mr_fail(MR_EIO, "bootstrap: %s failed its local setup: %s", who, recs[r].error);
        }
    }
    int n_bad = 0, first_bad = -1;
    const char *what = NULL;
    for (int r = 1; r < ctx->size; r++) {
        const char *w = recs[r].model_hash != recs[0].model_hash ? "model_hash"
                        : recs[r].build_hash != recs[0].build_hash ? "build_id" : NULL;
        if (!w) continue;
        if (first_bad < 0) first_bad = r, what = w;
        n_bad++;
    }
    if (first_bad < 0) return MR_OK;
    const tp_boot_rec *b = &recs[first_bad];
    tp_describe(who, sizeof who, first_bad, b);
    if (!strcmp(what, "model_hash"))
        return mr_fail(MR_EPROTO,
                       "bootstrap: %s has model_hash 0x%016" PRIx64 " but %s has 0x%016" PRIx64
                       " (%d rank(s) disagree with rank 0)",
                       who, b->model_hash, ref, recs[0].model_hash, n_bad);
    return mr_fail(MR_EPROTO,
                   "bootstrap: %s has build_id '%s' but %s has '%s' (%d rank(s) disagree with rank 0)",
                   who, b->build_id, ref, recs[0].build_id, n_bad);
}

static mr_status tp_connect_all(tp_ctx *ctx, const char *addrs, const int *displs)
{
    mr_status st = MR_OK;
    for (int r = 0; r < ctx->size; r++) {
        if (r == ctx->rank) continue;
        tp_link_state *l = &ctx->links[r];
        ucp_ep_params_t ep_params = {
            .field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                          UCP_EP_PARAM_FIELD_ERR_HANDLER,
            .address = (const ucp_address_t *)(addrs + displs[r]),
            .err_mode = UCP_ERR_HANDLING_MODE_PEER,
            .err_handler = {.cb = tp_ep_error_cb, .arg = l},
        };
        UCS_TRY(ucp_ep_create(ctx->worker, &ep_params, &l->ep));
    }
fail:
    if (st != MR_OK) mr_fail_prefix(st, "connecting rank %d: ", ctx->rank);
    return st;
}

static bool tp_all_heard(tp_ctx *ctx, void *arg)
{
    (void)arg;
    for (int r = 0; r < ctx->size; r++)
        if (r != ctx->rank && tp_link_alive(ctx, r) && !ctx->links[r].heard) return false;
    return true;
}

/* One heartbeat each way with every peer: after this every endpoint is wired
 * up in both directions, so a later death is seen by UCX. A peer silent for
 * heartbeat_timeout_s is declared dead by the usual health check. */
static void tp_hello(tp_ctx *ctx)
{
    double start = mr_now();
    for (int r = 0; r < ctx->size; r++) ctx->links[r].last_heard = start;
    ctx->next_heartbeat = start; /* the first health step sends the hellos */
    double deadline = start + ctx->opts.heartbeat_timeout_s + ctx->opts.heartbeat_period_s;
    if (tp_wait_until(ctx, tp_all_heard, NULL, -1, deadline) == MR_OK) return;
    for (int r = 0; r < ctx->size; r++)
        if (r != ctx->rank && tp_link_alive(ctx, r) && !ctx->links[r].heard)
            tp_declare_dead(ctx, r, "no hello within heartbeat_timeout_s of bootstrap");
}

static mr_status tp_local_setup(tp_ctx *ctx, const tp_options *opts, tp_boot_rec *mine,
                                ucp_address_t **addr, size_t *addr_len)
{
    mr_status st = tp_check_options(opts);
    if (st != MR_OK) return st;
    st = tp_ucx_setup(ctx);
    if (st != MR_OK) return st;
    ucp_worker_attr_t attr = {.field_mask = UCP_WORKER_ATTR_FIELD_ADDRESS};
    UCS_TRY(ucp_worker_query(ctx->worker, &attr));
    *addr = attr.address;
    *addr_len = attr.address_length;
    mine->addr_len = (uint32_t)attr.address_length;
fail:
    return st;
}

static mr_status tp_ctx_alloc(tp_ctx *ctx, int size)
{
    ctx->peers = calloc((size_t)size, sizeof *ctx->peers);
    ctx->links = calloc((size_t)size, sizeof *ctx->links);
    ctx->scan_mark = calloc((size_t)size, sizeof *ctx->scan_mark);
    if (!ctx->peers || !ctx->links || !ctx->scan_mark)
        return mr_fail(MR_ENOMEM, "tp_init: out of memory for %d ranks", size);
    for (int r = 0; r < size; r++) ctx->links[r].pidfd = -1;
    return MR_OK;
}

static void tp_fill_peers(tp_ctx *ctx, const tp_boot_rec *recs)
{
    int role_seen[TP_ROLE_OTHER + 1] = {0};
    for (int r = 0; r < ctx->size; r++) {
        tp_peer *p = &ctx->peers[r];
        tp_role role = (tp_role)recs[r].role;
        if (role < TP_ROLE_COORDINATOR || role > TP_ROLE_OTHER) role = TP_ROLE_OTHER;
        p->rank = r;
        p->role = role;
        p->role_index = role_seen[role]++;
        p->pid = recs[r].pid;
        snprintf(p->host, sizeof p->host, "%s", recs[r].host);
        p->alive = true;
        tp_link_state *l = &ctx->links[r];
        l->ctx = ctx;
        l->rank = r;
        l->phase = TP_LINK_ALIVE;
        l->starttime = recs[r].starttime;
    }
}

static mr_status tp_mpi_start(tp_ctx *ctx, int *argc, char ***argv)
{
    mr_status st = MR_OK;
    int initialized = 0;
    MPI_TRY(MPI_Initialized(&initialized));
    if (!initialized) {
        MPI_TRY(MPI_Init(argc, argv));
        ctx->mpi_owned = true;
    }
    MPI_TRY(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
    MPI_TRY(MPI_Comm_rank(MPI_COMM_WORLD, &ctx->rank));
    MPI_TRY(MPI_Comm_size(MPI_COMM_WORLD, &ctx->size));
fail:
    return st;
}

/* This rank's record; a failed local setup is recorded in it (ok = 0), not
 * returned, so that every rank learns about it from the Allgather. */
static void tp_boot_local(tp_ctx *ctx, tp_role role, tp_boot_rec *mine, ucp_address_t **addr)
{
    size_t addr_len = 0;
    memset(mine, 0, sizeof *mine);
    mine->role = (int32_t)role;
    mine->pid = (int32_t)getpid();
    mine->starttime = tp_proc_starttime(mine->pid);
    mine->model_hash = ctx->opts.model_hash;
    mine->build_hash = tp_fnv1a(ctx->build_id);
    snprintf(mine->build_id, sizeof mine->build_id, "%.*s", (int)sizeof mine->build_id - 1,
             ctx->build_id);
    if (gethostname(mine->host, sizeof mine->host - 1) != 0) snprintf(mine->host, sizeof mine->host, "?");
    mine->ok = tp_local_setup(ctx, &ctx->opts, mine, addr, &addr_len) == MR_OK;
    if (!mine->ok) snprintf(mine->error, sizeof mine->error, "%s", mr_last_error());
}

/* Allgather every rank's record, then every worker address. */
static mr_status tp_boot_gather(tp_ctx *ctx, const tp_boot_rec *mine, const ucp_address_t *addr,
                                tp_boot_rec *recs, char **addrs, int *displs)
{
    mr_status st = MR_OK;
    int *lens = calloc((size_t)ctx->size, sizeof *lens);
    if (!lens) return mr_fail(MR_ENOMEM, "tp_init: out of memory");
    MPI_TRY(MPI_Allgather(mine, (int)sizeof *mine, MPI_BYTE, recs, (int)sizeof *mine, MPI_BYTE,
                          MPI_COMM_WORLD));
    size_t total = 0;
    for (int r = 0; r < ctx->size; r++) {
        lens[r] = (int)recs[r].addr_len;
        displs[r] = (int)total;
        total += recs[r].addr_len;
    }
    if (!(*addrs = malloc(total ? total : 1))) {
        st = mr_fail(MR_ENOMEM, "tp_init: out of memory for %zu address bytes", total);
        goto fail;
    }
    MPI_TRY(MPI_Allgatherv(mine->ok ? addr : NULL, (int)mine->addr_len, MPI_BYTE, *addrs, lens,
                           displs, MPI_BYTE, MPI_COMM_WORLD));
fail:
    free(lens);
    return st;
}

/* Create the endpoints, then agree (Allgather) that every rank managed to. */
static mr_status tp_boot_connect(tp_ctx *ctx, const tp_boot_rec *recs, const char *addrs,
                                 const int *displs)
{
    mr_status st = MR_OK;
    int *oks = calloc((size_t)ctx->size, sizeof *oks);
    if (!oks) return mr_fail(MR_ENOMEM, "tp_init: out of memory");
    int ok = tp_connect_all(ctx, addrs, displs) == MR_OK;
    char conn_err[192];
    snprintf(conn_err, sizeof conn_err, "%s", ok ? "" : mr_last_error());
    MPI_TRY(MPI_Allgather(&ok, 1, MPI_INT, oks, 1, MPI_INT, MPI_COMM_WORLD));
    for (int r = 0; r < ctx->size && st == MR_OK; r++) {
        if (oks[r]) continue;
        char who[160];
        tp_describe(who, sizeof who, r, &recs[r]);
        st = r == ctx->rank ? mr_fail(MR_EIO, "bootstrap: %s could not connect: %s", who, conn_err)
                            : mr_fail(MR_EIO, "bootstrap: %s could not create its endpoints", who);
    }
fail:
    free(oks);
    return st;
}

mr_status tp_init(int *argc, char ***argv, tp_role role, const tp_options *opts, tp_ctx **out)
{
    mr_status st = MR_OK;
    tp_boot_rec mine, *recs = NULL;
    char *addrs = NULL;
    int *displs = NULL;
    ucp_address_t *my_addr = NULL;
    bool agreed = false; /* past the point where every rank fails together */

    *out = NULL;
    tp_ctx *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return mr_fail(MR_ENOMEM, "tp_init: out of memory");
    ctx->efd = ctx->epfd = ctx->pidfd_epfd = -1;
    ctx->opts = opts ? *opts : tp_options_default();
    snprintf(ctx->build_id, sizeof ctx->build_id, "%s", ctx->opts.build_id ? ctx->opts.build_id : "");
    ctx->opts.build_id = ctx->build_id;

    if ((st = tp_mpi_start(ctx, argc, argv)) != MR_OK) goto fail;
    /* (a rank out of memory here leaves the others in the Allgather: mpirun ends the job) */
    if ((st = tp_ctx_alloc(ctx, ctx->size)) != MR_OK) goto fail;
    recs = calloc((size_t)ctx->size, sizeof *recs);
    displs = calloc((size_t)ctx->size, sizeof *displs);
    if (!recs || !displs) {
        st = mr_fail(MR_ENOMEM, "tp_init: out of memory");
        goto fail;
    }
    tp_boot_local(ctx, role, &mine, &my_addr);
    if ((st = tp_boot_gather(ctx, &mine, my_addr, recs, &addrs, displs)) != MR_OK) goto fail;
    agreed = true;
    if ((st = tp_check_agreement(ctx, recs)) != MR_OK) goto fail;
    tp_fill_peers(ctx, recs);
    if ((st = tp_boot_connect(ctx, recs, addrs, displs)) != MR_OK) goto fail;
    tp_watch_processes(ctx);
    tp_hello(ctx);
    MR_DEBUG("tp: rank %d/%d (%s) up, worker address %u B", ctx->rank, ctx->size,
             tp_role_name(role), mine.addr_len);
    *out = ctx;
fail:
    if (my_addr) ucp_worker_release_address(ctx->worker, my_addr);
    free(recs);
    free(addrs);
    free(displs);
    if (st != MR_OK) {
        /* Every rank fails together once records are exchanged, so finalizing
         * MPI is safe; before that (an MPI error) it could hang: leave it. */
        if (!agreed) ctx->mpi_owned = false;
        tp_teardown(ctx);
    }
    return st;
}

int tp_rank(const tp_ctx *ctx) { return ctx->rank; }
int tp_size(const tp_ctx *ctx) { return ctx->size; }

const tp_peer *tp_peer_info(const tp_ctx *ctx, int rank)
{
    if (rank < 0 || rank >= ctx->size) return NULL;
    return &ctx->peers[rank];
}

int tp_count_role(const tp_ctx *ctx, tp_role role)
{
    int n = 0;
    for (int r = 0; r < ctx->size; r++) n += ctx->peers[r].role == role;
    return n;
}

int tp_rank_of(const tp_ctx *ctx, tp_role role, int role_index)
{
    for (int r = 0; r < ctx->size; r++)
        if (ctx->peers[r].role == role && ctx->peers[r].role_index == role_index) return r;
    return -1;
}
