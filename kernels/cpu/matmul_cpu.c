/* kernels/cpu/matmul_cpu.c — dense fp32 math of the CPU backend: matmul,
 * SwiGLU and the expert / MLP forward (see cpu_internal.h, kernels.h).
 *
 * matmul: y(m,n) = x(m,k)·w(n,k)ᵀ (+y). Up to MM_STREAM_MAX_M token rows the
 * work is bandwidth-bound (decode: a few tokens per expert): a weight-streaming
 * kernel reads each weight row once from memory and dots it with every token
 * row. Tiles of 8 weight rows × 3 tokens (AVX-512; 6 × 2 with AVX2) keep their
 * accumulators in registers over k-blocks of 256 floats; the weight block stays
 * in L1 while the other token groups use it, and the next block is prefetched
 * meanwhile. Sums are fp32 (lane-wise, then a horizontal add). More token rows
 * go to cblas_sgemm, which wins once the math is compute-bound — unless the
 * loaded OpenBLAS kernel is a pre-AVX2 one on an AVX2 machine (OpenBLAS 0.3.21
 * picks "Prescott" for CPUs it does not know), where the streaming kernel is
 * faster at every m and serves all of them (in groups of MM_STREAM_MAX_M).
 *
 * Portability: built without -march. The AVX-512 and AVX2+FMA code carries
 * target attributes and is picked at run time (__builtin_cpu_supports); off
 * x86 or without AVX2 everything goes to cblas and SwiGLU uses expf.
 * MOERUN_CPU_ISA=avx512|avx2|generic caps the choice (read once; tests use it
 * to cover every path on one machine).
 *
 * Threads: the streaming kernel splits output rows over
 * openblas_get_num_threads() pthreads, created per call, when each part gets
 * at least MM_PARALLEL_MIN_FLOATS weights; with one OpenBLAS thread it never
 * starts a thread. Thread-compatible: the only shared state is the dispatch
 * choice, computed once into an atomic int.
 */
#include "cpu_internal.h"

#include <cblas.h>
#include <ctype.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MM_X86 1
#else
#define MM_X86 0
#endif

/* Largest m served by the streaming kernel: the measured crossover against
 * OpenBLAS's best kernel on the DeepSeek-V3 expert shapes (docs/PERF.md). */
#ifndef MM_STREAM_MAX_M
#define MM_STREAM_MAX_M 32
#endif
/* Weight floats per thread below which another thread does not pay off. */
#ifndef MM_PARALLEL_MIN_FLOATS
#define MM_PARALLEL_MIN_FLOATS (1024 * 1024)
#endif
#define MM_MAX_THREADS 64

#if MM_X86

/* ---- dispatch ------------------------------------------------------------ */

enum { MM_ISA_GENERIC = 1, MM_ISA_AVX2 = 2, MM_ISA_AVX512 = 3 };
#define MM_WEAK_BLAS 0x10 /* flag: OpenBLAS runs a pre-AVX2 kernel */

/* True for OpenBLAS x86 kernels with AVX2/FMA sgemm. */
static bool mm_blas_core_is_vector(const char *core)
{
    static const char *const good[] = { "haswell", "zen", "skylakex", "cooperlake",
                                        "sapphirerapids" };
    char lower[32] = { 0 };
    for (size_t i = 0; core != NULL && core[i] != '\0' && i + 1 < sizeof lower; i++)
        lower[i] = (char)tolower((unsigned char)core[i]);
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++)
        if (strcmp(lower, good[i]) == 0) return true;
    return false;
}

static int mm_detect(void)
{
    int best = MM_ISA_GENERIC;
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = MM_ISA_AVX2;
    if (best == MM_ISA_AVX2 && __builtin_cpu_supports("avx512f")) best = MM_ISA_AVX512;
    const char *cap = getenv("MOERUN_CPU_ISA");
    if (cap != NULL) {
        int want = strcmp(cap, "avx512") == 0    ? MM_ISA_AVX512
                   : strcmp(cap, "avx2") == 0    ? MM_ISA_AVX2
                   : strcmp(cap, "generic") == 0 ? MM_ISA_GENERIC
                                                 : best;
        if (want < best) best = want;
    }
    if (best >= MM_ISA_AVX2 && !mm_blas_core_is_vector(openblas_get_corename()))
        best |= MM_WEAK_BLAS;
    return best;
}

/* The ISA level, with MM_WEAK_BLAS or'ed in. Detection is idempotent, so a
 * race only computes it twice. */
static int mm_dispatch(void)
{
    static atomic_int cached; /* 0: not yet detected */
    int d = atomic_load_explicit(&cached, memory_order_relaxed);
    if (d == 0) {
        d = mm_detect();
        atomic_store_explicit(&cached, d, memory_order_relaxed);
    }
    return d;
}

static int mm_isa(void) { return mm_dispatch() & 0x0f; }

#define MR_AVX512 __attribute__((target("avx512f,avx2,fma")))
#define MR_AVX2 __attribute__((target("avx2,fma")))
#define MR_INLINE static inline __attribute__((always_inline))
/* Left alone, GCC folds the weight load into each of a row's FMAs (one load
 * per token instead of per row) and the tile becomes load-port bound: the
 * empty asm pins the loaded vector in a register (+35% at 8-16 tokens, hot). */
#define MM_KEEP_IN_REGISTER(v) __asm__("" : "+v"(v))

/* ---- tiles ----------------------------------------------------------------
 * A tile is ROWS weight rows × up to TOKENS token rows over one k-block of kl
 * floats. Its ROWS×TOKENS vector accumulators live in registers while it runs
 * and in `acc` (vector (r, t) at acc + (r*TOKENS + t)*lanes) between k-blocks;
 * `first` starts them at zero. When `pf` is non-NULL the tile prefetches
 * pf[r] + [0, kl) (the next weight block) into L1 as it goes, so DRAM keeps
 * streaming while the other token blocks compute on L1-resident weights. */

#ifndef KBLOCK
#define KBLOCK 256 /* floats of k per block: 8 rows × 1 KiB + x slices stay in L1 */
#endif
#define MAX_ROWS 8
#define MAX_TOKENS 3
#define MAX_LANES 16
#ifndef MM_PF_HINT
#define MM_PF_HINT _MM_HINT_T0
#endif

typedef void (*mm_tile_fn)(const float *const *w, const float *const *pf, int n_pf,
                           const float *x, size_t ldx, int n_tok, int kl, bool first, float *acc);
typedef void (*mm_reduce_fn)(const float *acc, int n_vec, float *sums);

typedef struct mm_isa_ops {
    int rows, tokens, lanes;
    mm_tile_fn tile;
    mm_reduce_fn reduce; /* sums[i] = Σ lanes of vector i */
} mm_isa_ops;

#define A512_ROWS 8 /* 24 accumulators + 3 x + 1 w of 32 zmm */
#define A512_TOKENS 3

MR_INLINE MR_AVX512 void tile512(const float *const *w, const float *const *pf, int n_pf,
                                 const float *x, size_t ldx, int n_tok, int kl, bool first,
                                 float *acc)
{
    __m512 a[A512_ROWS][A512_TOKENS];
    for (int r = 0; r < A512_ROWS; r++)
        for (int t = 0; t < n_tok; t++)
            a[r][t] = first ? _mm512_setzero_ps()
                            : _mm512_load_ps(acc + (r * A512_TOKENS + t) * 16);
    int kk = 0;
    for (; kk + 16 <= kl; kk += 16) {
        if (pf != NULL)
            for (int i = 0; i < n_pf; i++) _mm_prefetch((const char *)(pf[i] + kk), MM_PF_HINT);
        __m512 xv[A512_TOKENS];
        for (int t = 0; t < n_tok; t++) xv[t] = _mm512_loadu_ps(x + (size_t)t * ldx + kk);
        for (int r = 0; r < A512_ROWS; r++) {
            __m512 wv = _mm512_loadu_ps(w[r] + kk);
            MM_KEEP_IN_REGISTER(wv);
            for (int t = 0; t < n_tok; t++) a[r][t] = _mm512_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    if (kk < kl) {
        const __mmask16 mask = (__mmask16)((1u << (kl - kk)) - 1u);
        __m512 xv[A512_TOKENS];
        for (int t = 0; t < n_tok; t++)
            xv[t] = _mm512_maskz_loadu_ps(mask, x + (size_t)t * ldx + kk);
        for (int r = 0; r < A512_ROWS; r++) {
            __m512 wv = _mm512_maskz_loadu_ps(mask, w[r] + kk);
            for (int t = 0; t < n_tok; t++) a[r][t] = _mm512_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    for (int r = 0; r < A512_ROWS; r++)
        for (int t = 0; t < n_tok; t++)
            _mm512_store_ps(acc + (r * A512_TOKENS + t) * 16, a[r][t]);
}

static MR_AVX512 void tile512_any(const float *const *w, const float *const *pf, int n_pf,
                                  const float *x, size_t ldx, int n_tok, int kl, bool first,
                                  float *acc)
{
    /* constant n_tok and pf-ness per instance: registers only, no branches inside */
    if (pf != NULL && n_pf > 0) {
        switch (n_tok) {
        case 1: tile512(w, pf, n_pf, x, ldx, 1, kl, first, acc); break;
        case 2: tile512(w, pf, n_pf, x, ldx, 2, kl, first, acc); break;
        default: tile512(w, pf, n_pf, x, ldx, 3, kl, first, acc); break;
        }
    } else {
        switch (n_tok) {
        case 1: tile512(w, NULL, 0, x, ldx, 1, kl, first, acc); break;
        case 2: tile512(w, NULL, 0, x, ldx, 2, kl, first, acc); break;
        default: tile512(w, NULL, 0, x, ldx, 3, kl, first, acc); break;
        }
    }
}

static MR_AVX512 void reduce512(const float *acc, int n_vec, float *sums)
{
    for (int i = 0; i < n_vec; i++)
        sums[i] = _mm512_reduce_add_ps(_mm512_load_ps(acc + i * 16));
}

#define A256_ROWS 6 /* 12 accumulators + 2 x + 1 w of 16 ymm */
#define A256_TOKENS 2

MR_INLINE MR_AVX2 void tile256(const float *const *w, const float *const *pf, int n_pf,
                               const float *x, size_t ldx, int n_tok, int kl, bool first,
                               float *acc)
{
    __m256 a[A256_ROWS][A256_TOKENS];
    for (int r = 0; r < A256_ROWS; r++)
        for (int t = 0; t < n_tok; t++)
            a[r][t] = first ? _mm256_setzero_ps()
                            : _mm256_load_ps(acc + (r * A256_TOKENS + t) * 8);
    int kk = 0;
    for (; kk + 8 <= kl; kk += 8) {
        if (pf != NULL && (kk & 15) == 0)
            for (int i = 0; i < n_pf; i++) _mm_prefetch((const char *)(pf[i] + kk), MM_PF_HINT);
        __m256 xv[A256_TOKENS];
        for (int t = 0; t < n_tok; t++) xv[t] = _mm256_loadu_ps(x + (size_t)t * ldx + kk);
        for (int r = 0; r < A256_ROWS; r++) {
            __m256 wv = _mm256_loadu_ps(w[r] + kk);
            MM_KEEP_IN_REGISTER(wv);
            for (int t = 0; t < n_tok; t++) a[r][t] = _mm256_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    if (kk < kl) {
        const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(kl - kk),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 xv[A256_TOKENS];
        for (int t = 0; t < n_tok; t++)
            xv[t] = _mm256_maskload_ps(x + (size_t)t * ldx + kk, mask);
        for (int r = 0; r < A256_ROWS; r++) {
            __m256 wv = _mm256_maskload_ps(w[r] + kk, mask);
            for (int t = 0; t < n_tok; t++) a[r][t] = _mm256_fmadd_ps(wv, xv[t], a[r][t]);
        }
    }
    for (int r = 0; r < A256_ROWS; r++)
        for (int t = 0; t < n_tok; t++)
            _mm256_store_ps(acc + (r * A256_TOKENS + t) * 8, a[r][t]);
}

static MR_AVX2 void tile256_any(const float *const *w, const float *const *pf, int n_pf,
                                const float *x, size_t ldx, int n_tok, int kl, bool first,
                                float *acc)
{
    if (pf != NULL && n_pf > 0) {
        if (n_tok == 1) tile256(w, pf, n_pf, x, ldx, 1, kl, first, acc);
        else tile256(w, pf, n_pf, x, ldx, 2, kl, first, acc);
    } else {
        if (n_tok == 1) tile256(w, NULL, 0, x, ldx, 1, kl, first, acc);
        else tile256(w, NULL, 0, x, ldx, 2, kl, first, acc);
    }
}

static MR_AVX2 void reduce256(const float *acc, int n_vec, float *sums)
{
    for (int i = 0; i < n_vec; i++) {
        __m256 v = _mm256_load_ps(acc + i * 8);
        __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        s = _mm_add_ss(s, _mm_movehdup_ps(s));
        sums[i] = _mm_cvtss_f32(s);
    }
}

static const mm_isa_ops mm_ops_avx512 = { A512_ROWS, A512_TOKENS, 16, tile512_any, reduce512 };
static const mm_isa_ops mm_ops_avx2 = { A256_ROWS, A256_TOKENS, 8, tile256_any, reduce256 };

/* ---- streaming matmul over a range of output rows ------------------------ */

typedef struct mm_job {
    const mm_isa_ops *ops;
    const float *x;  /* (m, k), rows k apart; read when xp is NULL */
    const float *xp; /* x packed per k-block: block [k0, k0+kl) of token t at
                        xp + m*k0 + t*kl, so a block's slices are contiguous */
    const float *w;  /* (n, k) */
    float *y;        /* (m, n) */
    int m, n, k;
    int head;        /* length of the first k-block (aligns the rest), 0: none */
    bool accumulate;
    int row_begin, row_end; /* output rows [row_begin, row_end) of n */
} mm_job;

#define ACC_FLOATS ((MM_STREAM_MAX_M + MAX_TOKENS - 1) * MAX_ROWS * MAX_LANES)

/* k-blocks: [0, head) when head > 0, then KBLOCK floats each (last shorter). */
static int mm_block_len(int k0, int head, int k)
{
    if (k0 == 0 && head > 0) return head;
    return k - k0 < KBLOCK ? k - k0 : KBLOCK;
}

/* Weight loads that split cache lines cost ~30% at 8-16 tokens: when every
 * row shares one misalignment (k a multiple of the lanes), a short first
 * k-block brings the others to vector bounds. */
static int mm_head(const mm_isa_ops *ops, const float *w, int k)
{
    const size_t vec_bytes = (size_t)ops->lanes * sizeof(float);
    const size_t misalign = (uintptr_t)w % vec_bytes;
    if (misalign == 0 || misalign % sizeof(float) != 0 || k % ops->lanes != 0) return 0;
    return (int)((vec_bytes - misalign) / sizeof(float));
}

/* xp = x in the block-major layout of mm_job.xp. */
static void mm_pack_x(const float *x, float *xp, int m, int k, int head)
{
    for (int k0 = 0, kl; k0 < k; k0 += kl) {
        kl = mm_block_len(k0, head, k);
        for (int t = 0; t < m; t++)
            memcpy(xp + (size_t)m * (size_t)k0 + (size_t)t * (size_t)kl,
                   x + (size_t)t * (size_t)k + (size_t)k0, (size_t)kl * sizeof(float));
    }
}

/* One block of ops->rows weight rows starting at j: all k-blocks, all tokens. */
static void mm_stream_block(const mm_job *job, int j, float *acc)
{
    const mm_isa_ops *ops = job->ops;
    const int R = ops->rows, T = ops->tokens, k = job->k, m = job->m;
    const int valid = job->row_end - j < R ? job->row_end - j : R;
    const int tile_floats = R * T * ops->lanes;
    const bool more_rows = j + R < job->row_end;
    const float *w[MAX_ROWS], *pf[MAX_ROWS], *wk[MAX_ROWS];
    /* rows past the range repeat the last valid row; their sums are dropped */
    for (int r = 0; r < R; r++)
        w[r] = job->w + (size_t)(j + (r < valid ? r : valid - 1)) * (size_t)k;
    const int n_blocks = (m + T - 1) / T;
    for (int k0 = 0, kl; k0 < k; k0 += kl) {
        kl = mm_block_len(k0, job->head, k);
        for (int r = 0; r < R; r++) {
            wk[r] = w[r] + k0;
            /* next block of the same rows, or the first block of the next rows */
            pf[r] = k0 + kl < k ? wk[r] + kl : w[r] + (size_t)R * (size_t)k;
        }
        const bool prefetch = k0 + kl < k || more_rows;
        for (int t0 = 0, tb = 0; t0 < m; t0 += T, tb++) {
            const int n_tok = m - t0 < T ? m - t0 : T;
            const float *xt = job->xp != NULL
                                  ? job->xp + (size_t)m * (size_t)k0 + (size_t)t0 * (size_t)kl
                                  : job->x + (size_t)t0 * (size_t)k + (size_t)k0;
            /* token block tb prefetches rows r ≡ tb (mod n_blocks): spread out,
             * the misses do not pile up in the fill buffers of one tile */
            const float *pf_mine[MAX_ROWS];
            int n_pf = 0;
            if (prefetch)
                for (int r = tb; r < R; r += n_blocks) pf_mine[n_pf++] = pf[r];
            ops->tile(wk, pf_mine, n_pf, xt, job->xp != NULL ? (size_t)kl : (size_t)k, n_tok,
                      kl, k0 == 0, acc + (size_t)tb * (size_t)tile_floats);
        }
    }
    float sums[MAX_ROWS * MAX_TOKENS];
    for (int t0 = 0, tb = 0; t0 < m; t0 += T, tb++) {
        const int n_tok = m - t0 < T ? m - t0 : T;
        ops->reduce(acc + (size_t)tb * (size_t)tile_floats, R * T, sums);
        for (int t = 0; t < n_tok; t++) {
            float *yrow = job->y + (size_t)(t0 + t) * (size_t)job->n + (size_t)j;
            for (int r = 0; r < valid; r++)
                yrow[r] = job->accumulate ? yrow[r] + sums[r * T + t] : sums[r * T + t];
        }
    }
}

static void mm_stream_rows(const mm_job *job)
{
    _Alignas(64) float acc[ACC_FLOATS];
    for (int j = job->row_begin; j < job->row_end; j += job->ops->rows)
        mm_stream_block(job, j, acc);
}

static void *mm_thread_main(void *arg)
{
    mm_stream_rows(arg);
    return NULL;
}

static int mm_thread_count(size_t weight_floats)
{
    int threads = openblas_get_num_threads();
    if (threads > MM_MAX_THREADS) threads = MM_MAX_THREADS;
    size_t by_size = weight_floats / MM_PARALLEL_MIN_FLOATS;
    if ((size_t)threads > by_size) threads = (int)by_size;
    return threads < 1 ? 1 : threads;
}

/* Runs `job` over all n rows, split across threads in tile-row multiples.
 * A part whose thread cannot be started runs on the calling thread. */
static void mm_stream_parallel(mm_job job)
{
    const int threads = mm_thread_count((size_t)job.n * (size_t)job.k);
    if (threads <= 1) {
        job.row_begin = 0;
        job.row_end = job.n;
        mm_stream_rows(&job);
        return;
    }
    mm_job parts[MM_MAX_THREADS];
    pthread_t tid[MM_MAX_THREADS];
    bool started[MM_MAX_THREADS] = { false };
    const int R = job.ops->rows, blocks = (job.n + R - 1) / R;
    for (int p = 0; p < threads; p++) {
        parts[p] = job;
        const int b0 = (int)((long)blocks * p / threads);
        const int b1 = (int)((long)blocks * (p + 1) / threads);
        parts[p].row_begin = b0 * R;
        parts[p].row_end = b1 * R < job.n ? b1 * R : job.n;
    }
    for (int p = 1; p < threads; p++)
        started[p] = pthread_create(&tid[p], NULL, mm_thread_main, &parts[p]) == 0;
    mm_stream_rows(&parts[0]);
    for (int p = 1; p < threads; p++) {
        if (started[p])
            pthread_join(tid[p], NULL);
        else
            mm_stream_rows(&parts[p]);
    }
}

/* Streams w once for m ≤ MM_STREAM_MAX_M token rows of x. */
static void mm_stream(const mm_isa_ops *ops, const float *x, const float *w, float *y, int m,
                      int n, int k, bool accumulate)
{
    const int head = mm_head(ops, w, k);
    /* Packed x: a k-block's token slices are contiguous instead of k apart
     * (rows k apart share L1 sets with the weight rows and evict them). */
    float *xp = NULL;
    if (m > 1) {
        size_t bytes = ((size_t)m * (size_t)k * sizeof(float) + 63) & ~(size_t)63;
        xp = aligned_alloc(64, bytes);
        if (xp != NULL) mm_pack_x(x, xp, m, k, head); /* else: read x in place */
    }
    mm_job job = {
        .ops = ops, .x = x, .xp = xp, .w = w, .y = y, .m = m, .n = n, .k = k,
        .head = head, .accumulate = accumulate,
    };
    mm_stream_parallel(job);
    free(xp);
}

#endif /* MM_X86 */

void mr_cpu_matmul(const float *x, const float *w, float *y, int m, int n, int k,
                   bool accumulate)
{
    if (m <= 0 || n <= 0) return;
    if (k <= 0) {
        if (!accumulate) memset(y, 0, (size_t)m * (size_t)n * sizeof(float));
        return;
    }
#if MM_X86
    const int d = mm_dispatch(), isa = d & 0x0f;
    if (isa >= MM_ISA_AVX2 && (m <= MM_STREAM_MAX_M || (d & MM_WEAK_BLAS))) {
        const mm_isa_ops *ops = isa == MM_ISA_AVX512 ? &mm_ops_avx512 : &mm_ops_avx2;
        for (int t0 = 0; t0 < m; t0 += MM_STREAM_MAX_M) {
            const int rows = m - t0 < MM_STREAM_MAX_M ? m - t0 : MM_STREAM_MAX_M;
            mm_stream(ops, x + (size_t)t0 * (size_t)k, w, y + (size_t)t0 * (size_t)n, rows, n,
                      k, accumulate);
        }
        return;
    }
#endif
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k,
                accumulate ? 1.0f : 0.0f, y, n);
}

/* ---- SwiGLU -------------------------------------------------------------- */

static void swiglu_scalar(const float *gate, const float *up, float *out, size_t n)
{
    for (size_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

#if MM_X86

/* exp(v) = 2^n · p(r), r = v - n·ln2, |r| ≤ ln2/2, Cephes' degree-6 polynomial
 * (≤ 2 ulp). v is clamped to ±103, past which exp is 0 or inf in fp32 (so
 * silu(g) → -0 for g ≪ 0); the scale 2^n is applied in two steps so n down to
 * -149 yields denormals. NaN stays NaN (min/max return the NaN operand). */
#define EXP_LO -103.0f
#define EXP_HI 103.0f
#define EXP_LN2_HI 0.693359375f
#define EXP_LN2_LO -2.12194440e-4f
#define EXP_P0 1.9875691500e-4f
#define EXP_P1 1.3981999507e-3f
#define EXP_P2 8.3334519073e-3f
#define EXP_P3 4.1665795894e-2f
#define EXP_P4 1.6666665459e-1f
#define EXP_P5 5.0000001201e-1f

MR_INLINE MR_AVX512 __m512 exp_avx512(__m512 v)
{
    v = _mm512_max_ps(_mm512_set1_ps(EXP_LO), _mm512_min_ps(_mm512_set1_ps(EXP_HI), v));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_HI), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2_LO), r);
    __m512 p = _mm512_set1_ps(EXP_P0);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P1));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P2));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P3));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P4));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_P5));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}

static MR_AVX512 void swiglu_avx512(const float *gate, const float *up, float *out, size_t n)
{
    const __m512 one = _mm512_set1_ps(1.0f);
    size_t i = 0;
    for (; i < n; i += 16) {
        __mmask16 mask = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1u);
        __m512 g = _mm512_maskz_loadu_ps(mask, gate + i);
        __m512 u = _mm512_maskz_loadu_ps(mask, up + i);
        __m512 e = exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), g));
        __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
        _mm512_mask_storeu_ps(out + i, mask, _mm512_mul_ps(s, u));
    }
}

MR_INLINE MR_AVX2 __m256 exp_avx2(__m256 v)
{
    v = _mm256_max_ps(_mm256_set1_ps(EXP_LO), _mm256_min_ps(_mm256_set1_ps(EXP_HI), v));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_HI), v);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2_LO), r);
    __m256 p = _mm256_set1_ps(EXP_P0);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P4));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_P5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    /* 2^n = 2^half · 2^(n-half) by building exponent fields (|half| ≤ 75) */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i half = _mm256_srai_epi32(ni, 1);
    __m256i bias = _mm256_set1_epi32(127);
    __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(half, bias), 23));
    __m256 s2 = _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, half), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, s1), s2);
}

static MR_AVX2 void swiglu_avx2(const float *gate, const float *up, float *out, size_t n)
{
    const __m256 one = _mm256_set1_ps(1.0f);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 u = _mm256_loadu_ps(up + i);
        __m256 e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u));
    }
    swiglu_scalar(gate + i, up + i, out + i, n - i);
}

#endif /* MM_X86 */

void mr_cpu_swiglu(const float *gate, const float *up, float *out, size_t n)
{
#if MM_X86
    const int isa = mm_isa();
    if (isa == MM_ISA_AVX512) {
        swiglu_avx512(gate, up, out, n);
        return;
    }
    if (isa == MM_ISA_AVX2) {
        swiglu_avx2(gate, up, out, n);
        return;
    }
#endif
    swiglu_scalar(gate, up, out, n);
}

/* ---- expert / MLP forward ------------------------------------------------ */

void mr_cpu_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                       bool accumulate, float *scratch)
{
    if (n_tokens <= 0) return;
    const size_t hidden = (size_t)n_tokens * (size_t)e->inter;
    float *g = scratch;          /* (n, inter), then h = silu(g) * u in place */
    float *u = scratch + hidden; /* (n, inter) */
    mr_cpu_matmul_typed(x, e->gate, e->type, g, n_tokens, e->inter, e->dim, false);
    mr_cpu_matmul_typed(x, e->up, e->type, u, n_tokens, e->inter, e->dim, false);
    mr_cpu_swiglu(g, u, g, hidden);
    mr_cpu_matmul_typed(g, e->down, e->type, out, n_tokens, e->dim, e->inter, accumulate);
}
