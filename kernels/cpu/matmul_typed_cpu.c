/* kernels/cpu/matmul_typed_cpu.c — the CPU matmul over a weight of either
 * mr_wtype (kernels.h). FP32 weights go straight to mr_cpu_matmul. BF16
 * weights emulate a tensor-core GEMM exactly: x is rounded to bfloat16, the
 * weight is widened to fp32 a tile of rows at a time (a tile stays in L2),
 * and each tile is an fp32 mr_cpu_matmul, so every product and sum is fp32.
 * This is the reference the CUDA backend's BF16 GEMMs are compared with; it
 * saves memory, not time (each call widens its weight once more).
 */
#include <stdlib.h>
#include <string.h>

#include "cpu_internal.h"
#include "../../common/aligned.h"
#include "../../common/bf16.h"

/* Weight bytes widened per tile: 256 KiB of fp32. */
enum { TILE_FLOATS = 64 * 1024 };

static void *must_alloc(size_t bytes)
{
    void *p = mr_aligned_alloc(bytes ? bytes : 64);
    if (!p) abort(); /* the table's ops cannot fail */
    return p;
}

static void matmul_bf16(const float *x, const uint16_t *w, float *y, int m, int n, int k,
                        bool accumulate)
{
    const size_t mk = (size_t)m * (size_t)k;
    float *xr = must_alloc(mk * sizeof(float));
    for (size_t i = 0; i < mk; i++) xr[i] = mr_bf16_quantize(x[i]);

    int tile = TILE_FLOATS / k;
    if (tile < 8) tile = 8;
    if (tile > n) tile = n;
    float *wt = must_alloc((size_t)tile * (size_t)k * sizeof(float));
    float *yt = tile < n ? must_alloc((size_t)m * (size_t)tile * sizeof(float)) : NULL;
    for (int j0 = 0; j0 < n; j0 += tile) {
        const int rows = n - j0 < tile ? n - j0 : tile;
        const uint16_t *src = w + (size_t)j0 * (size_t)k;
        for (size_t i = 0; i < (size_t)rows * (size_t)k; i++) wt[i] = mr_bf16_widen(src[i]);
        if (!yt) { /* one tile covers every output column */
            mr_cpu_matmul(xr, wt, y, m, n, k, accumulate);
            break;
        }
        mr_cpu_matmul(xr, wt, yt, m, rows, k, false);
        for (int r = 0; r < m; r++) {
            float *dst = y + (size_t)r * (size_t)n + j0;
            const float *part = yt + (size_t)r * (size_t)rows;
            if (accumulate)
                for (int j = 0; j < rows; j++) dst[j] += part[j];
            else
                memcpy(dst, part, sizeof(float) * (size_t)rows);
        }
    }
    free(yt);
    free(wt);
    free(xr);
}

void mr_cpu_matmul_typed(const float *x, const void *w, mr_wtype wt, float *y, int m, int n,
                         int k, bool accumulate)
{
    if (wt == MR_WT_F32 || m <= 0 || n <= 0 || k <= 0) {
        /* fp32, or nothing to multiply (mr_cpu_matmul clears y unless accumulate) */
        mr_cpu_matmul(x, (const float *)w, y, m, n, k, accumulate);
        return;
    }
    matmul_bf16(x, (const uint16_t *)w, y, m, n, k, accumulate);
}
