/* model/weights.c — HF DeepSeek-V3 tensor names → mr_weights (fp32).
 * Contract in weights.h.
 *
 * Three passes over a plan (one entry per tensor the config calls for):
 *   1. resolve: look each name up, check shape/dtype/fp8 scale, mark consumed;
 *   2. every archive tensor not consumed (and not an MTP layer) is an error;
 *   3. convert the tensors the filter wants, each read exactly once.
 * Nothing is converted until the whole checkpoint has been checked.
 */
#include "weights.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include "../common/aligned.h"

#define WT_NAME_MAX 192

typedef struct wt_spec {
    char name[WT_NAME_MAX];
    int ndim;                        /* 1 or 2 */
    int64_t shape[2];
    float **dst;                     /* receives the fp32 buffer (a vector) ... */
    mr_mat *mat;                     /* ... or this matrix's w (then dst is NULL) */
    bool optional;                   /* absent is fine (dst stays NULL) */
    bool load;                       /* false: check only (filtered expert) */
    const mr_tensor_info *tensor;    /* resolved; NULL when optional and absent */
    const mr_tensor_info *scale;     /* F8_E4M3 only: <name>_scale_inv */
} wt_spec;

typedef struct wt_plan {
    wt_spec *specs;
    size_t n_specs;
    size_t cap_specs;
    mr_status status;                /* first failure while building */
} wt_plan;

/* Format a tensor-name prefix; a truncated name fails the plan. */
static void plan_name(wt_plan *plan, char *dst, size_t size, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void plan_name(wt_plan *plan, char *dst, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(dst, size, fmt, ap);
    va_end(ap);
    if ((len < 0 || (size_t)len >= size) && plan->status == MR_OK)
        plan->status = mr_fail(MR_EINTERNAL, "weights: tensor name %s... too long", dst);
}

static wt_spec *plan_add(wt_plan *plan, float **dst, int ndim, int64_t rows, int64_t cols,
                         const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static wt_spec *plan_add(wt_plan *plan, float **dst, int ndim, int64_t rows, int64_t cols,
                         const char *fmt, ...)
{
    if (plan->status != MR_OK)
        return NULL;
    if (plan->n_specs == plan->cap_specs) {
        size_t cap = plan->cap_specs ? 2 * plan->cap_specs : 256;
        wt_spec *grown = realloc(plan->specs, cap * sizeof *grown);
        if (!grown) {
            plan->status = mr_fail(MR_ENOMEM, "weights: out of memory for the load plan");
            return NULL;
        }
        plan->specs = grown;
        plan->cap_specs = cap;
    }
    wt_spec *spec = &plan->specs[plan->n_specs++];
    memset(spec, 0, sizeof *spec);
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(spec->name, sizeof spec->name, fmt, ap);
    va_end(ap);
    if (len < 0 || (size_t)len >= sizeof spec->name)
        plan->status = mr_fail(MR_EINTERNAL, "weights: tensor name %s... too long", spec->name);
    spec->ndim = ndim;
    spec->shape[0] = rows;
    spec->shape[1] = cols;
    spec->dst = dst;
    spec->load = true;
    return spec;
}

/* Hands a loaded fp32 buffer to the struct field the spec names. */
static void spec_store(const wt_spec *spec, float *buf)
{
    if (spec->mat)
        spec->mat->w = buf;
    else
        *spec->dst = buf;
}

static void plan_mat(wt_plan *plan, mr_mat *mat, int rows, int cols, bool load,
                     const char *prefix, const char *name)
{
    mat->rows = rows;
    mat->cols = cols;
    wt_spec *spec = plan_add(plan, NULL, 2, rows, cols, "%s%s.weight", prefix, name);
    if (spec) {
        spec->mat = mat;
        spec->load = load;
    }
}

static void plan_vec(wt_plan *plan, float **dst, int len, const char *prefix, const char *name)
{
    plan_add(plan, dst, 1, len, 0, "%s%s", prefix, name);
}

static void plan_mlp(wt_plan *plan, mr_mlp *mlp, int dim, int inner, bool load,
                     const char *prefix)
{
    plan_mat(plan, &mlp->gate, inner, dim, load, prefix, "gate_proj");
    plan_mat(plan, &mlp->up, inner, dim, load, prefix, "up_proj");
    plan_mat(plan, &mlp->down, dim, inner, load, prefix, "down_proj");
}

static void plan_attention(wt_plan *plan, const mr_config *cfg, mr_layer_weights *layer,
                           const char *prefix)
{
    int dim = cfg->hidden_size, heads = cfg->num_attention_heads;
    int qk_head = mr_config_qk_head_dim(cfg);
    char attn[WT_NAME_MAX];
    plan_name(plan, attn, sizeof attn, "%sself_attn.", prefix);
    if (cfg->q_lora_rank > 0) {
        plan_mat(plan, &layer->q_a, cfg->q_lora_rank, dim, true, attn, "q_a_proj");
        plan_vec(plan, &layer->q_a_norm, cfg->q_lora_rank, attn, "q_a_layernorm.weight");
        plan_mat(plan, &layer->q_b, heads * qk_head, cfg->q_lora_rank, true, attn, "q_b_proj");
    } else {
        plan_mat(plan, &layer->q, heads * qk_head, dim, true, attn, "q_proj");
    }
    plan_mat(plan, &layer->kv_a, mr_config_latent_dim(cfg), dim, true, attn,
             "kv_a_proj_with_mqa");
    plan_vec(plan, &layer->kv_a_norm, cfg->kv_lora_rank, attn, "kv_a_layernorm.weight");
    plan_mat(plan, &layer->kv_b, heads * (cfg->qk_nope_head_dim + cfg->v_head_dim),
             cfg->kv_lora_rank, true, attn, "kv_b_proj");
    plan_mat(plan, &layer->o, dim, heads * cfg->v_head_dim, true, attn, "o_proj");
}

/* Allocate the layer/expert arrays of `w` and list every tensor. */
static mr_status plan_build(const mr_config *cfg, mr_expert_filter filter, void *filter_ctx,
                            mr_weights *w, wt_plan *plan)
{
    int dim = cfg->hidden_size, experts = cfg->n_routed_experts;
    w->n_layers = cfg->num_hidden_layers;
    w->n_experts = experts;
    w->layers = calloc((size_t)cfg->num_hidden_layers, sizeof *w->layers);
    if (!w->layers)
        return mr_fail(MR_ENOMEM, "weights: out of memory for %d layers", cfg->num_hidden_layers);

    plan_add(plan, &w->embed, 2, cfg->vocab_size, dim, "model.embed_tokens.weight");
    for (int l = 0; l < cfg->num_hidden_layers && plan->status == MR_OK; l++) {
        mr_layer_weights *layer = &w->layers[l];
        char prefix[WT_NAME_MAX];
        plan_name(plan, prefix, sizeof prefix, "model.layers.%d.", l);
        plan_vec(plan, &layer->attn_norm, dim, prefix, "input_layernorm.weight");
        plan_vec(plan, &layer->ffn_norm, dim, prefix, "post_attention_layernorm.weight");
        plan_attention(plan, cfg, layer, prefix);

        layer->is_moe = mr_config_layer_is_moe(cfg, l);
        char mlp[WT_NAME_MAX];
        plan_name(plan, mlp, sizeof mlp, "%smlp.", prefix);
        if (!layer->is_moe) {
            plan_mlp(plan, &layer->dense, dim, cfg->intermediate_size, true, mlp);
            continue;
        }
        plan_mat(plan, &layer->gate, experts, dim, true, mlp, "gate");
        wt_spec *bias = plan_add(plan, &layer->gate_bias, 1, experts, 0,
                                 "%sgate.e_score_correction_bias", mlp);
        if (bias)
            bias->optional = true;
        layer->experts = calloc((size_t)experts, sizeof *layer->experts);
        if (!layer->experts)
            return mr_fail(MR_ENOMEM, "weights: out of memory for %d experts", experts);
        for (int e = 0; e < experts; e++) {
            char expert[WT_NAME_MAX];
            plan_name(plan, expert, sizeof expert, "%sexperts.%d.", mlp, e);
            bool load = filter == NULL || filter(filter_ctx, l, e);
            plan_mlp(plan, &layer->experts[e], dim, cfg->moe_intermediate_size, load, expert);
        }
        if (cfg->n_shared_experts > 0) {
            char shared[WT_NAME_MAX];
            plan_name(plan, shared, sizeof shared, "%sshared_experts.", mlp);
            plan_mlp(plan, &layer->shared, dim,
                     cfg->n_shared_experts * cfg->moe_intermediate_size, true, shared);
        }
    }
    plan_vec(plan, &w->final_norm, dim, "", "model.norm.weight");
    w->lm_head.rows = cfg->vocab_size;
    w->lm_head.cols = dim;
    wt_spec *head = plan_add(plan, NULL, 2, cfg->vocab_size, dim, "lm_head.weight");
    if (head) head->mat = &w->lm_head;
    return plan->status;
}

static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape)
{
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(buf + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < size)
        snprintf(buf + used, size - used, "]");
}

static mr_status shape_mismatch(const char *what, const mr_tensor_info *t, int ndim,
                                const int64_t *want)
{
    char have_s[96], want_s[96];
    format_shape(have_s, sizeof have_s, t->ndim, t->shape);
    format_shape(want_s, sizeof want_s, ndim, want);
    return mr_fail(MR_EINVAL, "%s: %s %s has shape %s, expected %s", t->file, what, t->name,
                   have_s, want_s);
}

static bool shape_equals(const mr_tensor_info *t, int ndim, const int64_t *want)
{
    if (t->ndim != ndim)
        return false;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i])
            return false;
    return true;
}

static void mark(const mr_st_archive *archive, const mr_tensor_info *t, bool *consumed)
{
    /* mr_st_find and mr_st_at index the same array. */
    consumed[t - mr_st_at(archive, 0)] = true;
}

static mr_status resolve_spec(const mr_config *cfg, const mr_st_archive *archive,
                              wt_spec *spec, bool *consumed)
{
    const mr_tensor_info *t = mr_st_find(archive, spec->name);
    if (!t) {
        if (spec->optional)
            return MR_OK;
        return mr_fail(MR_EINVAL, "missing tensor %s", spec->name);
    }
    if (!shape_equals(t, spec->ndim, spec->shape))
        return shape_mismatch("tensor", t, spec->ndim, spec->shape);
    spec->tensor = t;
    mark(archive, t, consumed);
    if (t->dtype != MR_DT_F8_E4M3)
        return MR_OK;

    if (!cfg->fp8)
        return mr_fail(MR_EINVAL,
                       "%s: tensor %s is F8_E4M3 but config.json has no quantization_config",
                       t->file, t->name);
    if (spec->ndim != 2 || spec->optional)
        return mr_fail(MR_EINVAL, "%s: tensor %s may not be F8_E4M3 (only 2-D weights are)",
                       t->file, t->name);
    char scale_name[WT_NAME_MAX + 16];
    snprintf(scale_name, sizeof scale_name, "%s_scale_inv", spec->name);
    const mr_tensor_info *scale = mr_st_find(archive, scale_name);
    if (!scale)
        return mr_fail(MR_EINVAL, "missing tensor %s (F8_E4M3 tensor %s needs it)", scale_name,
                       t->name);
    int64_t want[2] = {
        (spec->shape[0] + cfg->weight_block_size[0] - 1) / cfg->weight_block_size[0],
        (spec->shape[1] + cfg->weight_block_size[1] - 1) / cfg->weight_block_size[1]};
    if (!shape_equals(scale, 2, want))
        return shape_mismatch("scale tensor", scale, 2, want);
    if (scale->dtype != MR_DT_F32)
        return mr_fail(MR_EINVAL, "%s: tensor %s is %s, expected F32", scale->file, scale->name,
                       mr_dtype_name(scale->dtype));
    spec->scale = scale;
    mark(archive, scale, consumed);
    return MR_OK;
}

/* model.layers.N.* with N >= num_hidden_layers: multi-token-prediction layers. */
bool mr_weights_is_mtp_tensor(const char *name, int n_layers)
{
    static const char prefix[] = "model.layers.";
    if (strncmp(name, prefix, sizeof prefix - 1) != 0)
        return false;
    const char *digits = name + sizeof prefix - 1;
    char *end = NULL;
    if (*digits < '0' || *digits > '9')
        return false;
    errno = 0;
    unsigned long long layer = strtoull(digits, &end, 10);
    if (*end != '.')
        return false;
    return errno == ERANGE || layer >= (unsigned long long)n_layers;
}

/* Passes 1 and 2. */
static mr_status plan_resolve(const mr_config *cfg, const mr_st_archive *archive,
                              wt_plan *plan)
{
    mr_status status = MR_OK;
    size_t count = mr_st_count(archive);
    bool *consumed = calloc(count + 1, sizeof *consumed);
    if (!consumed)
        return mr_fail(MR_ENOMEM, "weights: out of memory");
    for (size_t i = 0; i < plan->n_specs; i++) {
        status = resolve_spec(cfg, archive, &plan->specs[i], consumed);
        if (status != MR_OK)
            goto fail;
    }
    for (size_t i = 0; i < count; i++) {
        const mr_tensor_info *t = mr_st_at(archive, i);
        if (!consumed[i] && !mr_weights_is_mtp_tensor(t->name, cfg->num_hidden_layers)) {
            status = mr_fail(MR_EINVAL, "%s: unexpected tensor %s", t->file, t->name);
            goto fail;
        }
    }
fail:
    free(consumed);
    return status;
}

/* Pass 3 for one tensor. */
static mr_status load_spec(const mr_config *cfg, const wt_spec *spec, uint64_t *n_bytes)
{
    const mr_tensor_info *t = spec->tensor;
    size_t n = (size_t)t->n_elems;
    float *buf = mr_aligned_alloc(n * sizeof *buf);
    if (!buf)
        return mr_fail(MR_ENOMEM, "out of memory for tensor %s (%zu floats)", t->name, n);
    mr_status status = t->dtype == MR_DT_F8_E4M3
        ? mr_st_read_fp8_dequant(t, spec->scale, cfg->weight_block_size[0],
                                 cfg->weight_block_size[1], buf)
        : mr_st_read_f32(t, buf);
    if (status != MR_OK) {
        free(buf);
        return status;
    }
    spec_store(spec, buf);
    *n_bytes += (uint64_t)n * sizeof *buf;
    return MR_OK;
}

static mr_status weights_load(const mr_config *cfg, const mr_st_archive *archive,
                              mr_expert_filter filter, void *filter_ctx, bool routed_only,
                              mr_weights *out)
{
    wt_plan plan = {0};
    mr_weights w;
    memset(&w, 0, sizeof w);
    memset(out, 0, sizeof *out);

    mr_status status = plan_build(cfg, filter, filter_ctx, &w, &plan);
    for (size_t i = 0; routed_only && i < plan.n_specs; i++)
        if (!strstr(plan.specs[i].name, ".mlp.experts.")) plan.specs[i].load = false;
    if (status == MR_OK)
        status = plan_resolve(cfg, archive, &plan);
    for (size_t i = 0; i < plan.n_specs && status == MR_OK; i++) {
        const wt_spec *spec = &plan.specs[i];
        if (spec->tensor && spec->load)
            status = load_spec(cfg, spec, &w.n_bytes);
    }
    free(plan.specs);
    if (status != MR_OK) {
        mr_weights_free(&w);
        return status;
    }
    *out = w;
    return MR_OK;
}

mr_status mr_weights_load(const mr_config *cfg, const mr_st_archive *archive,
                          mr_expert_filter filter, void *filter_ctx, mr_weights *out)
{
    return weights_load(cfg, archive, filter, filter_ctx, false, out);
}

mr_status mr_weights_load_routed(const mr_config *cfg, const mr_st_archive *archive,
                                 mr_expert_filter filter, void *filter_ctx, mr_weights *out)
{
    return weights_load(cfg, archive, filter, filter_ctx, true, out);
}

mr_status mr_weights_check(const mr_config *cfg, const mr_st_archive *archive)
{
    wt_plan plan = {0};
    mr_weights scratch;
    memset(&scratch, 0, sizeof scratch);
    mr_status status = plan_build(cfg, NULL, NULL, &scratch, &plan);
    if (status == MR_OK)
        status = plan_resolve(cfg, archive, &plan);
    free(plan.specs);
    mr_weights_free(&scratch);
    return status;
}

/* ---- random weights in memory (benchmarks) --------------------------------- */

/* A 16 Mi-float block of uniform [-1, 1) values, reused (at a different
 * offset per tensor) for every tensor: filling tens of GB stays a memcpy. */
#define RANDOM_BLOCK_FLOATS ((size_t)1 << 24)

static uint64_t rand_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

/* One tensor of mr_weights_random: its buffer, length, kind and offset into
 * the shared block (drawn in plan order, so the values do not depend on how
 * many threads fill). */
typedef struct rand_job {
    float *buf;
    size_t n, offset;
    float scale;
    int kind; /* 0 norm, 1 score bias, 2 linear/embedding */
} rand_job;

typedef struct rand_fill {
    const float *block;
    rand_job *jobs;
    size_t n_jobs, next; /* next: taken with __atomic_fetch_add */
} rand_fill;

static void rand_fill_one(const float *block, const rand_job *j)
{
    float *buf = j->buf;
    const size_t n = j->n;
    if (j->kind == 0) { /* RMSNorm weights: near 1 */
        for (size_t i = 0; i < n; i++) buf[i] = 1.0f + 0.1f * block[i % RANDOM_BLOCK_FLOATS];
    } else if (j->kind == 1) {
        for (size_t i = 0; i < n; i++) buf[i] = 0.01f * block[i % RANDOM_BLOCK_FLOATS];
    } else { /* linear layers: uniform +-1/sqrt(fan_in), embeddings +-1 */
        for (size_t i = 0; i < n;) {
            size_t at = (j->offset + i) % RANDOM_BLOCK_FLOATS;
            size_t len = RANDOM_BLOCK_FLOATS - at < n - i ? RANDOM_BLOCK_FLOATS - at : n - i;
            for (size_t q = 0; q < len; q++) buf[i + q] = j->scale * block[at + q];
            i += len;
        }
    }
}

/* Worker: fills tensors until none is left (first touch of tens of GB is
 * page-fault bound, ~0.3-0.8 GB/s per thread in a Firecracker guest). */
static void *rand_fill_worker(void *arg)
{
    rand_fill *f = arg;
    for (;;) {
        size_t i = __atomic_fetch_add(&f->next, 1, __ATOMIC_RELAXED);
        if (i >= f->n_jobs) return NULL;
        rand_fill_one(f->block, &f->jobs[i]);
    }
}

mr_status mr_weights_random(const mr_config *cfg, uint64_t seed, mr_weights *out)
{
    wt_plan plan = {0};
    mr_weights w;
    memset(&w, 0, sizeof w);
    memset(out, 0, sizeof *out);
    mr_status status = plan_build(cfg, NULL, NULL, &w, &plan);
    float *block = status == MR_OK ? malloc(RANDOM_BLOCK_FLOATS * sizeof(float)) : NULL;
    rand_job *jobs = status == MR_OK ? calloc(plan.n_specs + 1, sizeof *jobs) : NULL;
    if (status == MR_OK && (!block || !jobs)) status = mr_fail(MR_ENOMEM, "weights: out of memory");
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; block && i < RANDOM_BLOCK_FLOATS; i++)
        block[i] = (float)((double)(rand_next(&rng) >> 40) / (double)(1u << 23) - 1.0);
    /* allocate and plan every tensor (offsets drawn in plan order), then fill in parallel */
    for (size_t i = 0; i < plan.n_specs && status == MR_OK; i++) {
        const wt_spec *spec = &plan.specs[i];
        size_t n = (size_t)spec->shape[0] * (size_t)(spec->ndim == 2 ? spec->shape[1] : 1);
        float *buf = mr_aligned_alloc(n * sizeof *buf);
        if (!buf) {
            status = mr_fail(MR_ENOMEM, "out of memory for random tensor %s (%zu floats)",
                             spec->name, n);
            break;
        }
        rand_job *j = &jobs[i];
        j->buf = buf;
        j->n = n;
        if (strstr(spec->name, "norm")) {
            j->kind = 0;
        } else if (strstr(spec->name, "e_score_correction_bias")) {
            j->kind = 1;
        } else {
            j->kind = 2;
            j->scale = spec->ndim == 2 && !strstr(spec->name, "embed_tokens")
                           ? 1.0f / sqrtf((float)spec->shape[1]) : 1.0f;
            j->offset = (size_t)(rand_next(&rng) % RANDOM_BLOCK_FLOATS);
        }
        spec_store(spec, buf); /* owned by w from here: freed with it on failure */
        w.n_bytes += (uint64_t)n * sizeof *buf;
    }
    if (status == MR_OK) {
        rand_fill f = {block, jobs, plan.n_specs, 0};
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        int n_threads = cpus < 1 ? 1 : cpus > 16 ? 16 : (int)cpus, started = 0;
        pthread_t tid[16];
        for (int t = 1; t < n_threads; t++, started++)
            if (pthread_create(&tid[started], NULL, rand_fill_worker, &f) != 0) break;
        rand_fill_worker(&f); /* this thread too; fewer threads only make it slower */
        for (int t = 0; t < started; t++) pthread_join(tid[t], NULL);
    }
    free(jobs);
    free(block);
    free(plan.specs);
    if (status != MR_OK) {
        mr_weights_free(&w);
        return status;
    }
    *out = w;
    return MR_OK;
}
