/* model/weights_backend.c — where weight arrays live: freeing them (host or
 * backend memory) and copying host weights to a backend. Contract in
 * weights.h (mr_weights_free, mr_weights_to_backend).
 *
 * Both walk every array of an mr_weights through one visitor, so a field
 * added to mr_weights is added in exactly one place (visit_arrays).
 */
#include <stdlib.h>
#include <string.h>

#include "weights.h"

#include "../common/bf16.h"
#include "../common/stats.h"

/* Called for each array slot with its length in elements (0 when cfg is
 * NULL and the length is not stored in the struct) and, for a matrix, its
 * mr_mat (whose type says how the slot's elements are stored; NULL for the
 * fp32 vectors and the embedding table). */
typedef void (*array_fn)(void **slot, size_t n, mr_mat *mat, void *ctx);

static void visit_mat(mr_mat *m, array_fn fn, void *ctx)
{
    fn(&m->w, (size_t)m->rows * (size_t)m->cols, m, ctx);
}

static void visit_vec(float **slot, size_t n, array_fn fn, void *ctx)
{
    void *p = *slot;
    fn(&p, n, NULL, ctx);
    *slot = p;
}

static void visit_mlp(mr_mlp *m, array_fn fn, void *ctx)
{
    visit_mat(&m->gate, fn, ctx);
    visit_mat(&m->up, fn, ctx);
    visit_mat(&m->down, fn, ctx);
}

static void visit_arrays(const mr_config *cfg, mr_weights *w, array_fn fn, void *ctx)
{
    const size_t dim = cfg ? (size_t)cfg->hidden_size : 0;
    visit_vec(&w->embed, cfg ? (size_t)cfg->vocab_size * dim : 0, fn, ctx);
    for (int l = 0; w->layers && l < w->n_layers; l++) {
        mr_layer_weights *layer = &w->layers[l];
        visit_vec(&layer->attn_norm, dim, fn, ctx);
        visit_vec(&layer->ffn_norm, dim, fn, ctx);
        visit_mat(&layer->q_a, fn, ctx);
        visit_vec(&layer->q_a_norm, cfg ? (size_t)cfg->q_lora_rank : 0, fn, ctx);
        visit_mat(&layer->q_b, fn, ctx);
        visit_mat(&layer->q, fn, ctx);
        visit_mat(&layer->kv_a, fn, ctx);
        visit_vec(&layer->kv_a_norm, cfg ? (size_t)cfg->kv_lora_rank : 0, fn, ctx);
        visit_mat(&layer->kv_b, fn, ctx);
        visit_mat(&layer->o, fn, ctx);
        visit_mlp(&layer->dense, fn, ctx);
        visit_mat(&layer->gate, fn, ctx);
        visit_vec(&layer->gate_bias, cfg ? (size_t)cfg->n_routed_experts : 0, fn, ctx);
        for (int e = 0; layer->experts && e < w->n_experts; e++)
            visit_mlp(&layer->experts[e], fn, ctx);
        visit_mlp(&layer->shared, fn, ctx);
    }
    visit_vec(&w->final_norm, dim, fn, ctx);
    visit_mat(&w->lm_head, fn, ctx);
}

static void free_array(void **slot, size_t n, mr_mat *mat, void *ctx)
{
    const mr_kernels *k = ctx;
    (void)n;
    (void)mat;
    if (!*slot) return;
    if (k)
        k->free(*slot);
    else
        free(*slot);
    *slot = NULL;
}

void mr_weights_free(mr_weights *w)
{
    if (!w) return;
    visit_arrays(NULL, w, free_array, (void *)w->backend);
    if (w->layers)
        for (int l = 0; l < w->n_layers; l++) free(w->layers[l].experts);
    free(w->layers);
    memset(w, 0, sizeof *w);
}

/* ---- to a backend ------------------------------------------------------- */

typedef struct upload_ctx {
    const mr_kernels *k;
    mr_wtype wtype;      /* how matrices are stored */
    mr_status status;
    uint64_t n_bytes;
    uint16_t *staging;   /* host buffer for bf16 conversion (grown on demand) */
    size_t staging_cap;  /* elements */
} upload_ctx;

/* host (n fp32) as bf16 in u->staging; false when out of memory */
static bool stage_bf16(upload_ctx *u, const float *host, size_t n)
{
    if (n > u->staging_cap) {
        uint16_t *p = realloc(u->staging, n * sizeof *p);
        if (!p) return false;
        u->staging = p;
        u->staging_cap = n;
    }
    for (size_t i = 0; i < n; i++) u->staging[i] = mr_bf16_round(host[i]);
    return true;
}

/* The slot holds the HOST fp32 pointer (from the shallow copy); replace it
 * by a backend copy (a matrix in u->wtype), or by NULL after a failure (so
 * the free pass never frees a host array through the backend). */
static void upload_array(void **slot, size_t n, mr_mat *mat, void *ctx)
{
    upload_ctx *u = ctx;
    const float *host = *slot;
    *slot = NULL;
    if (!host || u->status != MR_OK) return;
    const mr_wtype type = mat ? u->wtype : MR_WT_F32;
    const size_t bytes = n * mr_wtype_size(type);
    const void *src = host;
    if (type == MR_WT_BF16) {
        if (!stage_bf16(u, host, n)) {
            u->status = mr_fail(MR_ENOMEM, "weights: out of host memory converting %zu values "
                                "to bf16", n);
            return;
        }
        src = u->staging;
    }
    void *dev = u->k->alloc(bytes);
    if (!dev) {
        u->status = mr_fail(MR_ENOMEM, "%s backend: cannot allocate %zu bytes for weights",
                            u->k->name, bytes);
        return;
    }
    u->k->copy(dev, src, bytes, MR_COPY_H2D); /* returns when dev holds the data */
    *slot = dev;
    if (mat) mat->type = type;
    u->n_bytes += bytes;
}

/* ---- sizing ------------------------------------------------------------------ */

typedef struct size_ctx {
    mr_wtype wtype;
    uint64_t bytes;
} size_ctx;

static void size_array(void **slot, size_t n, mr_mat *mat, void *ctx)
{
    size_ctx *c = ctx;
    if (*slot) c->bytes += (uint64_t)n * mr_wtype_size(mat ? c->wtype : MR_WT_F32);
}

uint64_t mr_weights_backend_bytes(const mr_config *cfg, const mr_weights *host, mr_wtype wtype)
{
    size_ctx c = {wtype, 0};
    visit_arrays(cfg, (mr_weights *)host, size_array, &c); /* reads only */
    return c.bytes;
}

mr_status mr_backend_check_fits(const mr_kernels *k, uint64_t bytes, const char *what,
                                const char *hint)
{
    size_t free_b = 0, total_b = 0;
    if (k->mem_info) k->mem_info(&free_b, &total_b);
    if (total_b == 0 || bytes <= free_b) return MR_OK;
    char need[32], avail[32], total[32];
    mr_fmt_bytes(bytes, need, sizeof need);
    mr_fmt_bytes(free_b, avail, sizeof avail);
    mr_fmt_bytes(total_b, total, sizeof total);
    return mr_fail(MR_ENOMEM, "%s backend: %s need %s, %s free of %s (%s)", k->name, what, need,
                   avail, total, hint);
}

mr_status mr_weights_to_backend(const mr_config *cfg, const mr_kernels *k, mr_wtype wtype,
                                const mr_weights *host, mr_weights *out)
{
    memset(out, 0, sizeof *out);
    MR_TRY(mr_backend_check_fits(k, mr_weights_backend_bytes(cfg, host, wtype),
                                 wtype == MR_WT_BF16 ? "the bf16 weights" : "the fp32 weights",
                                 wtype == MR_WT_BF16 ? "more ranks split the experts"
                                                     : "--precision bf16 halves the matrices; "
                                                       "more ranks split the experts"));
    if (host->backend)
        return mr_fail(MR_EINVAL, "weights already live in %s backend memory", host->backend->name);
    mr_weights w = *host;
    w.backend = k;
    w.layers = calloc((size_t)(w.n_layers > 0 ? w.n_layers : 1), sizeof *w.layers);
    if (!w.layers) return mr_fail(MR_ENOMEM, "weights: out of memory");
    mr_status st = MR_OK;
    for (int l = 0; l < w.n_layers; l++) {
        w.layers[l] = host->layers[l];
        w.layers[l].experts = NULL;
        if (host->layers[l].experts) {
            mr_mlp *ex = malloc(sizeof *ex * (size_t)(w.n_experts > 0 ? w.n_experts : 1));
            if (!ex) {
                st = mr_fail(MR_ENOMEM, "weights: out of memory");
                break;
            }
            memcpy(ex, host->layers[l].experts, sizeof *ex * (size_t)w.n_experts);
            w.layers[l].experts = ex;
        }
    }
    if (st != MR_OK) {
        /* nothing uploaded yet: drop the host pointers, free the tables */
        for (int l = 0; l < w.n_layers; l++) free(w.layers[l].experts);
        free(w.layers);
        return st;
    }
    upload_ctx u = {.k = k, .wtype = wtype, .status = MR_OK};
    visit_arrays(cfg, &w, upload_array, &u);
    free(u.staging);
    k->sync();
    if (u.status == MR_OK) u.status = k->check();
    w.n_bytes = u.n_bytes;
    if (u.status != MR_OK) {
        mr_weights_free(&w);
        return u.status;
    }
    *out = w;
    return MR_OK;
}

mr_status mr_mlp_to_backend(const mr_kernels *k, mr_wtype wtype, const mr_mlp *host,
                            mr_mlp *dev)
{
    *dev = *host;
    upload_ctx u = {.k = k, .wtype = wtype, .status = MR_OK};
    visit_mlp(dev, upload_array, &u);
    free(u.staging);
    if (u.status == MR_OK) u.status = k->check();
    if (u.status != MR_OK) mr_mlp_free(k, dev);
    return u.status;
}

mr_status mr_mat_to_backend(const mr_kernels *k, mr_wtype wtype, const mr_mat *host, mr_mat *dev)
{
    *dev = *host;
    upload_ctx u = {.k = k, .wtype = wtype, .status = MR_OK};
    visit_mat(dev, upload_array, &u);
    free(u.staging);
    if (u.status == MR_OK) u.status = k->check();
    if (u.status != MR_OK) visit_mat(dev, free_array, (void *)k);
    return u.status;
}

mr_expert_w mr_mlp_view(const mr_mlp *m)
{
    return (mr_expert_w){.gate = m->gate.w, .up = m->up.w, .down = m->down.w,
                         .dim = m->gate.cols, .inter = m->gate.rows, .type = m->gate.type};
}

void mr_mlp_free(const mr_kernels *k, mr_mlp *m)
{
    visit_mlp(m, free_array, (void *)k);
}
