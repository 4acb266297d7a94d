/* tests/gpu/gpu_test.h — the harness of the CUDA backend tests (suite 'gpu').
 *
 * Every test runs an op of the CPU reference (mr_kernels_cpu) and of the CUDA
 * backend (mr_kernels_cuda) on the same random inputs and compares:
 *
 *   err = max_i |gpu_i - cpu_i| / max_i |cpu_i|      (0 when both are all 0)
 *
 * against a tolerance stated per op (GT_TOL_* below). Integer outputs (expert
 * ids) must be identical. One binary, one op per run:
 *   test_gpu_ops OP [--bf16]     OP: memory movement sample_rows matmul matmul_strided experts_grouped mla_decode_paged rmsnorm rope softmax swiglu
 *                                    moe_gate expert_ffn mla_absorbed mla_naive all
 * Exit: 0 pass, 1 fail, 77 skip (no usable GPU: cudaGetDeviceCount fails or
 * finds 0 devices) — except with MOERUN_REQUIRE_GPU=1, where no GPU is a FAIL,
 * so a broken driver can never pass as a skip on the GPU machine.
 *
 * Memory: gt_host / gt_dev* allocations belong to the current case and are
 * freed by gt_case_end(); allocation failure ends the run (exit 1).
 */
#ifndef MR_GPU_TEST_H
#define MR_GPU_TEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/kernels_cuda.h"
#include "kernels/kernels.h"

/* Tolerances (err as above). FP32 mode: cuBLAS COMPUTE_32F without TF32 vs
 * OpenBLAS differ only in summation order; element-wise ops only in expf
 * (≤ 2 ulp on CUDA). BF16 mode rounds GEMM inputs to 8 significant bits. */
#define GT_TOL_ELEMENTWISE 1e-6 /* rmsnorm, rope, softmax, swiglu */
#define GT_TOL_GEMM_FP32 1e-5   /* matmul, expert_ffn, mla_* */
#define GT_TOL_GATE_WEIGHTS 1e-6
#define GT_TOL_MATMUL_BF16 1e-2
#define GT_TOL_CHAIN_BF16 3e-2  /* mla_*: two GEMMs in a row on fp32 arrays */
/* GEMMs with BF16 weights against the CPU's exact emulation (x rounded to
 * bf16, fp32 products and sums): bf16 x bf16 products are exact in fp32, so
 * only the summation order differs — allowed a little more than fp32 for the
 * tensor cores' accumulation. A chain (expert_ffn: h = silu(g)·u rounded to
 * bf16 again) may round a few h values the other way (2^-8 each). */
#define GT_TOL_GEMM_BF16W 1e-4
#define GT_TOL_CHAIN_BF16W 2e-3

typedef struct gt_ctx {
    const mr_kernels *cpu, *gpu;
    bool bf16;          /* GEMMs run with MR_CUDA_PRECISION_BF16; weights are BF16 */
    int checks, failures;
    uint64_t rng;
    void *host[128];    /* this case's allocations */
    void *dev[128];
    int n_host, n_dev;
} gt_ctx;

/* Random numbers (xorshift64*, reproducible). */
double gt_unit(gt_ctx *t);                        /* [0, 1) */
float gt_uniform(gt_ctx *t, float lo, float hi);  /* [lo, hi) */
void gt_fill(gt_ctx *t, float *p, size_t n, float lo, float hi);

/* This case's memory. gt_host: zeroed host floats; gt_dev_alloc: device bytes;
 * gt_upload: device copy of host bytes; gt_download: device → host. */
float *gt_host(gt_ctx *t, size_t n_floats);
void *gt_dev_alloc(gt_ctx *t, size_t bytes);
void *gt_upload(gt_ctx *t, const void *host, size_t bytes);
void gt_download(gt_ctx *t, void *host, const void *dev, size_t bytes);
void gt_case_end(gt_ctx *t);

/* The weight type of this run (BF16 with --bf16), and a weight matrix of n
 * values in it: *host_w = the host copy the CPU op takes (w itself for fp32,
 * its bf16 rounding otherwise), returns the device copy. */
mr_wtype gt_wtype(const gt_ctx *t);
void *gt_weight(gt_ctx *t, const float *w, size_t n, const void **host_w);

/* err of got against ref, as defined above. */
double gt_max_err(const float *got, const float *ref, size_t n);

/* Records one check: prints "ok"/"FAIL" with `what`, err and tol. Also fails
 * when the CUDA backend recorded an error (mr_kernels_cuda_check()). */
bool gt_check_close(gt_ctx *t, const char *what, const float *got, const float *ref, size_t n,
                    double tol);
bool gt_check_true(gt_ctx *t, const char *what, bool cond, const char *detail);
/* Syncs the backend; fails (and clears) when it recorded an error. */
bool gt_check_backend(gt_ctx *t, const char *what);

/* The op tests, one per file group; each adds to t->checks / t->failures. */
void gt_test_memory(gt_ctx *t);
void gt_test_matmul(gt_ctx *t);
void gt_test_expert_ffn(gt_ctx *t);
void gt_test_experts_grouped(gt_ctx *t);
void gt_test_matmul_strided(gt_ctx *t);
void gt_test_mla_decode_paged(gt_ctx *t);
void gt_test_rmsnorm(gt_ctx *t);
void gt_test_rope(gt_ctx *t);
void gt_test_softmax(gt_ctx *t);
void gt_test_swiglu(gt_ctx *t);
void gt_test_moe_gate(gt_ctx *t);
void gt_test_movement(gt_ctx *t);  /* copy_2d, gather/scatter_rows, moe_combine, add */
void gt_test_sample_rows(gt_ctx *t);
void gt_test_mla_absorbed(gt_ctx *t);
void gt_test_mla_naive(gt_ctx *t);

#endif
