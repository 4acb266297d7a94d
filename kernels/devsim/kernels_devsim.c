/* kernels/devsim/kernels_devsim.c — see kernels_devsim.h. */
#include "kernels_devsim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../../common/aligned.h"
#include "../cpu/cpu_internal.h"

/* ---- allocation registry: sorted by base address ------------------------ */

typedef struct region {
    uintptr_t base;
    size_t bytes;
} region;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static region *regions;
static size_t n_regions, cap_regions;

/* index of the first region with base > addr */
static size_t upper_bound(uintptr_t addr)
{
    size_t lo = 0, hi = n_regions;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (regions[mid].base <= addr) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* true when [p, p+bytes) lies inside one live allocation */
static bool in_backend(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    size_t i = upper_bound(a);
    bool ok = i > 0 && a >= regions[i - 1].base && a + bytes <= regions[i - 1].base + regions[i - 1].bytes;
    pthread_mutex_unlock(&lock);
    return ok;
}

/* true when any byte of [p, p+bytes) is backend memory */
static bool touches_backend(const void *p, size_t bytes)
{
    uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    size_t i = upper_bound(a + (bytes ? bytes - 1 : 0));
    bool hit = i > 0 && regions[i - 1].base + regions[i - 1].bytes > a;
    pthread_mutex_unlock(&lock);
    return hit;
}

static void violation(const char *op, const char *arg, const void *p, size_t bytes,
                      const char *rule)
{
    fprintf(stderr, "devsim backend: %s: argument %s = %p (%zu bytes) %s\n", op, arg, p, bytes,
            rule);
    abort();
}

static void need_dev(const char *op, const char *arg, const void *p, size_t bytes)
{
    if (bytes == 0) return;
    if (!p || !in_backend(p, bytes))
        violation(op, arg, p, bytes, "is not inside one backend allocation");
}

static void need_host(const char *op, const char *arg, const void *p, size_t bytes)
{
    if (bytes == 0) return;
    if (!p || touches_backend(p, bytes)) violation(op, arg, p, bytes, "must be host memory");
}

#define F(n) ((size_t)(n) * sizeof(float))
#define I(n) ((size_t)(n) * sizeof(int32_t))

/* Simulated device capacity (MOERUN_DEVSIM_MEMORY_MB; 0 = the host's memory)
 * and the bytes allocated now; guarded by lock. */
static size_t used_bytes;

static size_t capacity_bytes(void)
{
    const char *v = getenv("MOERUN_DEVSIM_MEMORY_MB");
    char *end = NULL;
    unsigned long long mb = v && *v ? strtoull(v, &end, 10) : 0;
    return end && *end == '\0' ? (size_t)mb << 20 : 0;
}

static void ds_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    const size_t cap = capacity_bytes();
    if (cap == 0) {
        mr_cpu_mem_info(free_bytes, total_bytes);
        return;
    }
    pthread_mutex_lock(&lock);
    *total_bytes = cap;
    *free_bytes = used_bytes < cap ? cap - used_bytes : 0;
    pthread_mutex_unlock(&lock);
}

static void *ds_alloc(size_t bytes)
{
    if (bytes == 0) bytes = 1;
    const size_t cap = capacity_bytes();
    pthread_mutex_lock(&lock);
    const bool fits = cap == 0 || used_bytes + bytes <= cap;
    pthread_mutex_unlock(&lock);
    if (!fits) return NULL; /* as a full GPU: the caller names the failure */
    void *p = mr_aligned_alloc(bytes);
    if (!p) return NULL;
    pthread_mutex_lock(&lock);
    if (n_regions == cap_regions) {
        size_t cap = cap_regions ? 2 * cap_regions : 256;
        region *grown = realloc(regions, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&lock);
            free(p);
            return NULL;
        }
        regions = grown;
        cap_regions = cap;
    }
    size_t i = upper_bound((uintptr_t)p);
    memmove(regions + i + 1, regions + i, (n_regions - i) * sizeof *regions);
    regions[i] = (region){(uintptr_t)p, bytes};
    n_regions++;
    used_bytes += bytes;
    pthread_mutex_unlock(&lock);
    return p;
}

static void ds_free(void *p)
{
    if (!p) return;
    pthread_mutex_lock(&lock);
    size_t i = upper_bound((uintptr_t)p);
    bool found = i > 0 && regions[i - 1].base == (uintptr_t)p;
    if (found) {
        used_bytes -= regions[i - 1].bytes;
        memmove(regions + i - 1, regions + i, (n_regions - i) * sizeof *regions);
        n_regions--;
    }
    pthread_mutex_unlock(&lock);
    if (!found) violation("free", "p", p, 0, "was not allocated by this backend");
    free(p);
}

size_t mr_devsim_live_allocations(void)
{
    pthread_mutex_lock(&lock);
    size_t n = n_regions;
    pthread_mutex_unlock(&lock);
    return n;
}

/* ---- memory ops ------------------------------------------------------------ */

static void check_dir(const char *op, void *dst, size_t dst_bytes, const void *src,
                      size_t src_bytes, int direction)
{
    switch (direction) {
    case MR_COPY_H2D: need_dev(op, "dst", dst, dst_bytes); need_host(op, "src", src, src_bytes); break;
    case MR_COPY_D2H: need_host(op, "dst", dst, dst_bytes); need_dev(op, "src", src, src_bytes); break;
    case MR_COPY_D2D: need_dev(op, "dst", dst, dst_bytes); need_dev(op, "src", src, src_bytes); break;
    default: violation(op, "direction", NULL, 0, "is not an mr_copy_dir");
    }
}

static void ds_copy(void *dst, const void *src, size_t bytes, int direction)
{
    check_dir("copy", dst, bytes, src, bytes, direction);
    mr_kernels_cpu()->copy(dst, src, bytes, direction);
}

static void ds_copy_2d(void *dst, size_t dst_pitch, const void *src, size_t src_pitch,
                       size_t width, size_t rows, int direction)
{
    if (rows == 0 || width == 0) return;
    if (dst_pitch < width || src_pitch < width) violation("copy_2d", "pitch", NULL, width, "< width");
    check_dir("copy_2d", dst, (rows - 1) * dst_pitch + width, src, (rows - 1) * src_pitch + width,
              direction);
    mr_kernels_cpu()->copy_2d(dst, dst_pitch, src, src_pitch, width, rows, direction);
}

static void ds_sync(void) {}

/* host memory: never in the registry, so copies accept it as the host side */
static void *ds_host_alloc(size_t bytes)
{
    return mr_aligned_alloc(bytes);
}

static void ds_host_free(void *p)
{
    if (p && touches_backend(p, 1)) violation("host_free", "p", p, 0, "is backend memory");
    free(p);
}

static mr_status ds_host_register(void *p, size_t bytes)
{
    need_host("host_register", "p", p, bytes);
    return MR_OK;
}

static void ds_host_unregister(void *p)
{
    (void)p;
}

static mr_status ds_check(void)
{
    return MR_OK;
}

/* ---- math ops: check extents, then the cpu op ------------------------------ */

/* bytes of `elems` weight elements of type t; an unknown type is a violation */
static size_t W(const char *op, mr_wtype t, size_t elems)
{
    if (t != MR_WT_F32 && t != MR_WT_BF16) violation(op, "weight type", NULL, 0, "unknown mr_wtype");
    return elems * mr_wtype_size(t);
}

static void ds_matmul(const float *x, const void *w, mr_wtype wt, float *y, int m, int n, int k,
                      bool acc)
{
    need_dev("matmul", "x", x, F((size_t)m * k));
    need_dev("matmul", "w", w, W("matmul", wt, (size_t)n * k));
    need_dev("matmul", "y", y, F((size_t)m * n));
    mr_kernels_cpu()->matmul(x, w, wt, y, m, n, k, acc);
}

static void ds_matmul_strided(const float *x, int ldx, size_t x_bstride, const void *w,
                              mr_wtype wt, size_t w_bstride, float *y, int ldy, size_t y_bstride,
                              int batch, int m, int n, int k)
{
    if (m <= 0 || n <= 0 || batch <= 0) return;
    size_t last = (size_t)(batch - 1);
    need_dev("matmul_strided", "x", x, F(last * x_bstride + (size_t)(m - 1) * ldx + (size_t)k));
    need_dev("matmul_strided", "w", w, W("matmul_strided", wt, last * w_bstride + (size_t)n * k));
    need_dev("matmul_strided", "y", y, F(last * y_bstride + (size_t)(m - 1) * ldy + (size_t)n));
    mr_kernels_cpu()->matmul_strided(x, ldx, x_bstride, w, wt, w_bstride, y, ldy, y_bstride,
                                     batch, m, n, k);
}

static void ds_rmsnorm(const float *x, const float *weight, float *y, int n_rows, int dim,
                       int stride, float eps)
{
    size_t ext = n_rows > 0 ? F((size_t)(n_rows - 1) * stride + dim) : 0;
    need_dev("rmsnorm", "x", x, ext);
    need_dev("rmsnorm", "y", y, ext);
    need_dev("rmsnorm", "weight", weight, n_rows > 0 ? F(dim) : 0);
    mr_kernels_cpu()->rmsnorm(x, weight, y, n_rows, dim, stride, eps);
}

static void ds_rope(float *x, int n_vecs, int stride, int rope_dim, const float *cos_t,
                    const float *sin_t)
{
    if (n_vecs <= 0) return;
    need_dev("rope", "x", x, F((size_t)(n_vecs - 1) * stride + rope_dim));
    need_dev("rope", "cos", cos_t, F(rope_dim / 2));
    need_dev("rope", "sin", sin_t, F(rope_dim / 2));
    mr_kernels_cpu()->rope(x, n_vecs, stride, rope_dim, cos_t, sin_t);
}

static void ds_rope_tokens(float *x, int n_tokens, int token_stride, int n_vecs, int vec_stride,
                           int rope_dim, const float *cos_t, const float *sin_t)
{
    if (n_tokens <= 0 || n_vecs <= 0) return;
    need_dev("rope_tokens", "x", x,
             F((size_t)(n_tokens - 1) * token_stride + (size_t)(n_vecs - 1) * vec_stride +
               (size_t)rope_dim));
    need_dev("rope_tokens", "cos", cos_t, F((size_t)n_tokens * (rope_dim / 2)));
    need_dev("rope_tokens", "sin", sin_t, F((size_t)n_tokens * (rope_dim / 2)));
    mr_kernels_cpu()->rope_tokens(x, n_tokens, token_stride, n_vecs, vec_stride, rope_dim, cos_t,
                                  sin_t);
}

static void ds_softmax(float *x, int n_rows, int n)
{
    need_dev("softmax", "x", x, F((size_t)n_rows * n));
    mr_kernels_cpu()->softmax(x, n_rows, n);
}

static void ds_swiglu(const float *gate, const float *up, float *out, size_t n)
{
    need_dev("swiglu", "gate", gate, F(n));
    need_dev("swiglu", "up", up, F(n));
    need_dev("swiglu", "out", out, F(n));
    mr_kernels_cpu()->swiglu(gate, up, out, n);
}

static void ds_moe_gate(const float *logits, const float *bias, int n_tokens,
                        const mr_gate_params *p, int32_t *expert_ids, float *weights,
                        float *scratch)
{
    need_dev("moe_gate", "logits", logits, F((size_t)n_tokens * p->n_experts));
    if (bias) need_dev("moe_gate", "bias", bias, F(p->n_experts));
    need_dev("moe_gate", "expert_ids", expert_ids, I((size_t)n_tokens * p->top_k));
    need_dev("moe_gate", "weights", weights, F((size_t)n_tokens * p->top_k));
    need_dev("moe_gate", "scratch", scratch, F(2 * p->n_experts + 2 * p->n_group));
    mr_kernels_cpu()->moe_gate(logits, bias, n_tokens, p, expert_ids, weights, scratch);
}

static void ds_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                          bool accumulate, float *scratch)
{
    if (n_tokens <= 0) return;
    size_t wsz = W("expert_ffn", e->type, (size_t)e->inter * e->dim);
    need_dev("expert_ffn", "gate", e->gate, wsz);
    need_dev("expert_ffn", "up", e->up, wsz);
    need_dev("expert_ffn", "down", e->down, wsz);
    need_dev("expert_ffn", "x", x, F((size_t)n_tokens * e->dim));
    need_dev("expert_ffn", "out", out, F((size_t)n_tokens * e->dim));
    need_dev("expert_ffn", "scratch", scratch, F(2 * (size_t)n_tokens * e->inter));
    mr_kernels_cpu()->expert_ffn(e, x, n_tokens, out, accumulate, scratch);
}

static void ds_experts_grouped(const mr_expert_w *experts, int n_groups, const int32_t *row_start,
                               const float *x, float *out, float *scratch)
{
    if (n_groups <= 0) return;
    need_host("experts_grouped", "row_start", row_start, I(n_groups + 1));
    const int n_rows = row_start[n_groups], dim = experts[0].dim, inter = experts[0].inter;
    for (int g = 0; g < n_groups; g++) {
        const mr_expert_w *e = &experts[g];
        if (e->dim != dim || e->inter != inter || e->type != experts[0].type ||
            row_start[g + 1] < row_start[g])
            violation("experts_grouped", "experts", e, 0,
                      "differ in shape or weight type, or rows go backwards");
        if (row_start[g + 1] == row_start[g]) continue;
        size_t wsz = W("experts_grouped", e->type, (size_t)inter * dim);
        need_dev("experts_grouped", "gate", e->gate, wsz);
        need_dev("experts_grouped", "up", e->up, wsz);
        need_dev("experts_grouped", "down", e->down, wsz);
    }
    need_dev("experts_grouped", "x", x, F((size_t)n_rows * dim));
    need_dev("experts_grouped", "out", out, F((size_t)n_rows * dim));
    need_dev("experts_grouped", "scratch", scratch, F(2 * (size_t)n_rows * inter));
    mr_kernels_cpu()->experts_grouped(experts, n_groups, row_start, x, out, scratch);
}

static void ds_mla_absorbed(const float *q_lat, const float *q_pe, int n_q, int H, int C, int R,
                            const float *ctx, int n_ctx, const int32_t *ctx_len, float scale,
                            float *out_lat, float *scratch)
{
    need_dev("mla_absorbed", "q_lat", q_lat, F((size_t)n_q * H * C));
    need_dev("mla_absorbed", "q_pe", q_pe, F((size_t)n_q * H * R));
    need_dev("mla_absorbed", "ctx", ctx, F((size_t)n_ctx * (C + R)));
    need_dev("mla_absorbed", "ctx_len", ctx_len, I(n_q));
    need_dev("mla_absorbed", "out_lat", out_lat, F((size_t)n_q * H * C));
    need_dev("mla_absorbed", "scratch", scratch, F((size_t)n_q * H * n_ctx));
    mr_kernels_cpu()->mla_absorbed(q_lat, q_pe, n_q, H, C, R, ctx, n_ctx, ctx_len, scale,
                                   out_lat, scratch);
}

static void ds_mla_decode_paged(const float *q_lat, const float *q_pe, int q_pe_ld,
                                int q_pe_hstride, int n_tok, const int32_t *seq, int H, int C,
                                int R, const void *kv, mr_wtype kv_type, const int32_t *rows,
                                int row_base, float scale, float *out_lat, float *scratch,
                                int max_ctx)
{
    if (n_tok <= 0) return;
    need_dev("mla_decode_paged", "seq", seq, I(3 * (size_t)n_tok));
    need_dev("mla_decode_paged", "scratch", scratch,
             F((size_t)max_ctx * (C + R) + (size_t)H * R + (size_t)H * max_ctx));
    for (int i = 0; i < n_tok; i++) {
        const int token = seq[3 * i], off = seq[3 * i + 1], n_ctx = seq[3 * i + 2];
        if (n_ctx > max_ctx) violation("mla_decode_paged", "seq", seq, 0, "n_ctx > max_ctx");
        need_dev("mla_decode_paged", "q_lat", q_lat + (size_t)token * H * C, F((size_t)H * C));
        need_dev("mla_decode_paged", "out_lat", out_lat + (size_t)token * H * C, F((size_t)H * C));
        need_dev("mla_decode_paged", "q_pe", q_pe + (size_t)token * q_pe_ld,
                 F((size_t)(H - 1) * q_pe_hstride + (size_t)R));
        need_dev("mla_decode_paged", "rows", rows + off, I(n_ctx));
        for (int t = 0; t < n_ctx; t++)
            need_dev("mla_decode_paged", "kv row",
                     mr_wtype_at(kv, kv_type, ((size_t)rows[off + t] + row_base) * (C + R)),
                     W("mla_decode_paged", kv_type, (size_t)(C + R)));
    }
    mr_kernels_cpu()->mla_decode_paged(q_lat, q_pe, q_pe_ld, q_pe_hstride, n_tok, seq, H, C, R, kv,
                                       kv_type, rows, row_base, scale, out_lat, scratch, max_ctx);
}

static void ds_mla_naive(const float *q, const float *k, const float *v, int n_q, int H,
                         int qk_dim, int v_dim, int n_ctx, const int32_t *ctx_len, float scale,
                         float *out, float *scratch)
{
    need_dev("mla_naive", "q", q, F((size_t)n_q * H * qk_dim));
    need_dev("mla_naive", "k", k, F((size_t)n_ctx * H * qk_dim));
    need_dev("mla_naive", "v", v, F((size_t)n_ctx * H * v_dim));
    need_dev("mla_naive", "ctx_len", ctx_len, I(n_q));
    need_dev("mla_naive", "out", out, F((size_t)n_q * H * v_dim));
    need_dev("mla_naive", "scratch", scratch, F((size_t)n_q * H * n_ctx));
    mr_kernels_cpu()->mla_naive(q, k, v, n_q, H, qk_dim, v_dim, n_ctx, ctx_len, scale, out,
                                scratch);
}

static void ds_gather_rows(const void *src, mr_wtype src_type, int src_ld, const int32_t *rows,
                           int row_base, int n, int width, float *dst)
{
    if (n <= 0 || width <= 0) return;
    need_dev("gather_rows", "rows", rows, I(n));
    need_dev("gather_rows", "dst", dst, F((size_t)n * width));
    for (int i = 0; i < n; i++)
        need_dev("gather_rows", "src row",
                 mr_wtype_at(src, src_type, ((size_t)rows[i] + row_base) * src_ld),
                 W("gather_rows", src_type, (size_t)width));
    mr_kernels_cpu()->gather_rows(src, src_type, src_ld, rows, row_base, n, width, dst);
}

static void ds_scatter_rows(const float *src, int n, int width, const int32_t *rows,
                            int row_base, void *dst, mr_wtype dst_type, int dst_ld)
{
    if (n <= 0 || width <= 0) return;
    need_dev("scatter_rows", "rows", rows, I(n));
    need_dev("scatter_rows", "src", src, F((size_t)n * width));
    for (int i = 0; i < n; i++)
        need_dev("scatter_rows", "dst row",
                 mr_wtype_at(dst, dst_type, ((size_t)rows[i] + row_base) * dst_ld),
                 W("scatter_rows", dst_type, (size_t)width));
    mr_kernels_cpu()->scatter_rows(src, n, width, rows, row_base, dst, dst_type, dst_ld);
}

static void ds_moe_combine(const float *expert_out, const float *weights, int n_tokens,
                           int top_k, int dim, float *out)
{
    need_dev("moe_combine", "expert_out", expert_out, F((size_t)n_tokens * top_k * dim));
    need_dev("moe_combine", "weights", weights, F((size_t)n_tokens * top_k));
    need_dev("moe_combine", "out", out, F((size_t)n_tokens * dim));
    mr_kernels_cpu()->moe_combine(expert_out, weights, n_tokens, top_k, dim, out);
}

static void ds_sample_rows(const float *logits, int n_rows, int vocab, const mr_sample_row *rows,
                           int32_t *out)
{
    need_dev("sample_rows", "logits", logits, F((size_t)n_rows * vocab));
    need_host("sample_rows", "rows", rows, (size_t)n_rows * sizeof(mr_sample_row));
    need_dev("sample_rows", "out", out, I(n_rows));
    mr_kernels_cpu()->sample_rows(logits, n_rows, vocab, rows, out);
}

static void ds_argmax_rows(const float *x, int n_rows, int n, int32_t *out)
{
    need_dev("argmax_rows", "x", x, F((size_t)n_rows * n));
    need_dev("argmax_rows", "out", out, I(n_rows));
    mr_kernels_cpu()->argmax_rows(x, n_rows, n, out);
}

static void ds_add(float *y, const float *x, size_t n)
{
    need_dev("add", "y", y, F(n));
    need_dev("add", "x", x, F(n));
    mr_kernels_cpu()->add(y, x, n);
}

static const mr_kernels devsim_kernels = {
    .name = "devsim",
    .host_memory = false,
    .alloc = ds_alloc,
    .free = ds_free,
    .copy = ds_copy,
    .sync = ds_sync,
    .host_alloc = ds_host_alloc,
    .host_free = ds_host_free,
    .host_register = ds_host_register,
    .host_unregister = ds_host_unregister,
    .check = ds_check,
    .copy_2d = ds_copy_2d,
    .gather_rows = ds_gather_rows,
    .scatter_rows = ds_scatter_rows,
    .moe_combine = ds_moe_combine,
    .add = ds_add,
    .mem_info = ds_mem_info,
    .argmax_rows = ds_argmax_rows,
    .sample_rows = ds_sample_rows,
    .matmul = ds_matmul,
    .matmul_strided = ds_matmul_strided,
    .rmsnorm = ds_rmsnorm,
    .rope = ds_rope,
    .rope_tokens = ds_rope_tokens,
    .softmax = ds_softmax,
    .swiglu = ds_swiglu,
    .moe_gate = ds_moe_gate,
    .expert_ffn = ds_expert_ffn,
    .experts_grouped = ds_experts_grouped,
    .mla_absorbed = ds_mla_absorbed,
    .mla_decode_paged = ds_mla_decode_paged,
    .mla_naive = ds_mla_naive,
};

const mr_kernels *mr_kernels_devsim(void)
{
    return &devsim_kernels;
}
