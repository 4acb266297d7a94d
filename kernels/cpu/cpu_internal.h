/* kernels/cpu/cpu_internal.h — pieces of the CPU backend shared between its
 * files. Not for use outside kernels/cpu (callers go through mr_kernels). */
#ifndef MR_CPU_INTERNAL_H
#define MR_CPU_INTERNAL_H

#include "../kernels.h"

/* y(m,n) = x(m,k)·w(n,k)ᵀ (+y). Small m streams the weights once (m ≤ a
 * threshold); larger m calls cblas_sgemm. */
void mr_cpu_matmul(const float *x, const float *w, float *y, int m, int n, int k,
                   bool accumulate);

/* mr_kernels.matmul: the same over a weight of type wt (matmul_typed_cpu.c;
 * BF16 rounds x to bfloat16 and widens w tile by tile). */
void mr_cpu_matmul_typed(const float *x, const void *w, mr_wtype wt, float *y, int m, int n,
                         int k, bool accumulate);

/* Expert / MLP forward, see mr_kernels.expert_ffn. */
void mr_cpu_expert_ffn(const mr_expert_w *e, const float *x, int n_tokens, float *out,
                       bool accumulate, float *scratch);

/* mr_kernels.mem_info of the host (/proc/meminfo). */
void mr_cpu_mem_info(size_t *free_bytes, size_t *total_bytes);

/* SwiGLU, see mr_kernels.swiglu. */
void mr_cpu_swiglu(const float *gate, const float *up, float *out, size_t n);

#endif
