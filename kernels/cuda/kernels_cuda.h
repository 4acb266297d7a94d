/* kernels/cuda/kernels_cuda.h — the CUDA backend of struct mr_kernels.
 *
 * mr_kernels_cuda() returns the same table as mr_kernels_cpu(), filled with
 * CUDA kernels and cuBLAS GEMMs on the calling process's current device
 * (cudaSetDevice / CUDA_VISIBLE_DEVICES pick it before the first call). Every
 * array passed to a table op is device memory (the table's alloc/copy manage
 * it); structs passed by pointer (mr_expert_w, mr_gate_params) are host
 * memory. Each op's contract is the one in kernels/kernels.h; results match
 * the CPU reference within the tolerances stated in tests/gpu/.
 *
 * Asynchrony: ops are queued on one backend stream and return before the
 * device has finished; copy and sync wait for it. The `scratch` arguments are
 * device memory of the size kernels.h states (moe_gate ignores its scratch:
 * it works in shared memory).
 *
 * Errors: table ops return void, so the backend records the FIRST failure
 * (a CUDA or cuBLAS error with file:line, or a bad argument) in its state;
 * read it with mr_kernels_cuda_last_status() / _last_error(), typically after
 * sync. Errors of queued kernels surface at the next copy or sync. alloc
 * returns NULL on failure (and records it).
 *
 * State and threads: the table has no context argument, so the backend keeps
 * one process-wide state (cuBLAS handle, stream, precision, first error),
 * created by the first successful mr_kernels_cuda() and destroyed by
 * mr_kernels_cuda_release(). Ops share the handle and stream: call them from
 * one host thread at a time. The status functions are thread-safe.
 *
 * Builds without CUDA link a stub (kernels_cuda_off.c) with the same
 * functions: mr_kernels_cuda() returns NULL with MR_EUNSUPPORTED, so callers
 * never #ifdef on the backend.
 */
#ifndef MR_KERNELS_CUDA_H
#define MR_KERNELS_CUDA_H

#include <stddef.h>

#include "../../common/status.h"
#include "../kernels.h"

/* GEMM precision of the CUDA backend (matmul, expert_ffn, mla_*):
 *  FP32: fp32 inputs and products, fp32 accumulation (cuBLAS COMPUTE_32F,
 *        default math mode: no TF32). The default.
 *  BF16: inputs down-converted by cuBLAS (COMPUTE_32F_FAST_16BF: bfloat16
 *        or TF32, cuBLAS's choice), fp32 accumulation, tensor cores; arrays
 *        stay fp32.
 * Element-wise ops, softmax and the router are fp32 in both modes. */
typedef enum mr_cuda_precision {
    MR_CUDA_PRECISION_FP32 = 0,
    MR_CUDA_PRECISION_BF16 = 1
} mr_cuda_precision;

/* The CUDA backend table, or NULL with a message (mr_last_error) naming why:
 * no device (cudaGetDeviceCount failed or found 0), cuBLAS or stream setup
 * failed, or the build has no CUDA (MR_EUNSUPPORTED). Safe to call again. */
const mr_kernels *mr_kernels_cuda(void);

/* Destroys the backend state (handle, stream). Tables returned before must not
 * be used afterwards; mr_kernels_cuda() creates a fresh state. No-op when the
 * backend was never created. */
void mr_kernels_cuda_release(void);

/* Sets the GEMM precision for ops issued afterwards (process-wide). */
mr_status mr_kernels_cuda_set_precision(mr_cuda_precision precision);
mr_cuda_precision mr_kernels_cuda_precision(void);

/* First error recorded since creation or the last clear: MR_OK when none.
 * _last_error() returns its message ("" when none; valid until the next
 * clear). _check() = sync, then, when an error is recorded, mr_fail() with its
 * message on the calling thread and return its code (for MR_TRY). */
mr_status mr_kernels_cuda_last_status(void);
const char *mr_kernels_cuda_last_error(void);
void mr_kernels_cuda_clear_status(void);
mr_status mr_kernels_cuda_check(void);

/* Makes the calling thread work on the backend's device (cudaSetDevice), so
 * a thread other than the one that created the backend can issue its ops
 * (still one thread at a time). MR_EUNSUPPORTED when the backend does not
 * run. */
mr_status mr_kernels_cuda_bind_thread(void);

/* Number of CUDA devices (>= 0), or -1 with mr_fail() when cudaGetDeviceCount
 * fails (no driver, driver too old, ...). Does not create the backend. */
int mr_cuda_device_count(void);

/* Picks the device of a rank before the backend is created: device
 * local_rank mod device count (cudaSetDevice). Fails with a message naming
 * the reason when there is no usable GPU, or when the backend already runs. */
mr_status mr_cuda_select_device(int local_rank);

/* The running backend's device: its index and "hostname/PCI bus id"
 * (identity, cap bytes), so two ranks can tell whether they share one GPU
 * (NCCL refuses two members on one device). MR_EUNSUPPORTED when the
 * backend does not run. */
mr_status mr_cuda_backend_device(int *device, char *identity, size_t cap);

/* One line describing the current device ("NVIDIA H100 80GB HBM3, sm_90,
 * 132 SMs, 79.1 GiB, driver 13.0, runtime 13.0") into buf (cap bytes). */
mr_status mr_cuda_device_describe(char *buf, size_t cap);

#endif
