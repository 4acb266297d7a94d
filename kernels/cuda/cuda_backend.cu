/* kernels/cuda/cuda_backend.cu — the CUDA backend's state and table: device
 * probe, cuBLAS handle and stream, GEMM precision, the first-error record,
 * and the memory functions (alloc / free / copy / sync). The math ops live in
 * cuda_gemm.cu, cuda_elementwise.cu, cuda_gate.cu and cuda_mla.cu.
 * Contract: kernels_cuda.h. */
#include <pthread.h>
#include <unistd.h>
#include <stdio.h>
#include <string.h>

#include <atomic>

#include "cuda_internal.cuh"

namespace {

struct cu_state {
    bool ready;
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
};

pthread_mutex_t state_lock = PTHREAD_MUTEX_INITIALIZER; /* guards create/release */
cu_state state;
mr_kernels table;
std::atomic<int> precision{MR_CUDA_PRECISION_FP32};

pthread_mutex_t error_lock = PTHREAD_MUTEX_INITIALIZER; /* guards the two below */
mr_status first_status = MR_OK;
char first_message[1024];

mr_status status_of_cuda(cudaError_t err)
{
    return err == cudaErrorMemoryAllocation ? MR_ENOMEM : MR_EIO;
}

mr_status status_of_cublas(cublasStatus_t err)
{
    switch (err) {
    case CUBLAS_STATUS_ALLOC_FAILED: return MR_ENOMEM;
    case CUBLAS_STATUS_NOT_SUPPORTED:
    case CUBLAS_STATUS_ARCH_MISMATCH: return MR_EUNSUPPORTED;
    case CUBLAS_STATUS_INVALID_VALUE: return MR_EINVAL;
    default: return MR_EIO;
    }
}

/* ---- memory ------------------------------------------------------------------ */

/* Device memory, or page-locked host memory when `pinned`. */
mr_status alloc_impl(size_t bytes, bool pinned, void **out)
{
    *out = NULL;
    if (pinned) CUDA_TRY(cudaMallocHost(out, bytes > 0 ? bytes : 1));
    else CUDA_TRY(cudaMalloc(out, bytes > 0 ? bytes : 1));
    return MR_OK;
}

void *alloc_recorded(size_t bytes, bool pinned)
{
    void *p = NULL;
    mr_status st = alloc_impl(bytes, pinned, &p);
    cu_record(st);
    return st == MR_OK ? p : NULL;
}

void cu_mem_info(size_t *free_bytes, size_t *total_bytes)
{
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: only this query failed */
        f = t = 0;
    }
    *free_bytes = f;
    *total_bytes = t;
}

void *cu_alloc(size_t bytes)
{
    return alloc_recorded(bytes, false);
}

mr_status free_impl(void *p)
{
    if (p == NULL) return MR_OK;
    /* queued ops may still use p: let them finish first */
    CUDA_TRY(cudaStreamSynchronize(state.stream));
    CUDA_TRY(cudaFree(p));
    return MR_OK;
}

void cu_free(void *p)
{
    cu_record(free_impl(p));
}

mr_status copy_impl(void *dst, const void *src, size_t bytes, int direction)
{
    cudaMemcpyKind kind = cudaMemcpyDefault;
    MR_TRY(cu_copy_kind("copy", direction, &kind));
    if (bytes == 0) return MR_OK;
    CUDA_TRY(cudaMemcpyAsync(dst, src, bytes, kind, state.stream));
    CUDA_TRY(cudaStreamSynchronize(state.stream));
    return MR_OK;
}

void cu_copy(void *dst, const void *src, size_t bytes, int direction)
{
    cu_record(copy_impl(dst, src, bytes, direction));
}

void *cu_host_alloc(size_t bytes)
{
    return alloc_recorded(bytes, true);
}

mr_status host_free_impl(void *p)
{
    if (p == NULL) return MR_OK;
    CUDA_TRY(cudaStreamSynchronize(state.stream)); /* a queued copy may still read it */
    CUDA_TRY(cudaFreeHost(p));
    return MR_OK;
}

void cu_host_free(void *p)
{
    cu_record(host_free_impl(p));
}

/* Not recorded as a backend error: the caller decides (pageable is slower,
 * not wrong). */
mr_status cu_host_register(void *p, size_t bytes)
{
    if (p == NULL || bytes == 0) return MR_OK;
    CUDA_TRY(cudaHostRegister(p, bytes, cudaHostRegisterDefault));
    return MR_OK;
}

void cu_host_unregister(void *p)
{
    if (p == NULL) return;
    cudaError_t err = cudaHostUnregister(p);
    if (err != cudaSuccess) (void)cudaGetLastError(); /* was never registered: fine */
}

mr_status sync_impl(void)
{
    CUDA_TRY(cudaStreamSynchronize(state.stream));
    return MR_OK;
}

void cu_sync(void)
{
    cu_record(sync_impl());
}

/* The table's check: mr_kernels_cuda_check(), then clear what it reported. */
mr_status cu_check(void)
{
    mr_status st = mr_kernels_cuda_check();
    if (st != MR_OK) mr_kernels_cuda_clear_status();
    return st;
}

/* ---- state ------------------------------------------------------------------- */

void table_fill(mr_kernels *t)
{
    memset(t, 0, sizeof *t);
    t->name = "cuda";
    t->host_memory = false;
    t->alloc = cu_alloc;
    t->mem_info = cu_mem_info;
    t->free = cu_free;
    t->copy = cu_copy;
    t->sync = cu_sync;
    t->host_alloc = cu_host_alloc;
    t->host_free = cu_host_free;
    t->host_register = cu_host_register;
    t->host_unregister = cu_host_unregister;
    t->check = cu_check;
    t->copy_2d = cu_op_copy_2d;
    t->gather_rows = cu_op_gather_rows;
    t->scatter_rows = cu_op_scatter_rows;
    t->moe_combine = cu_op_moe_combine;
    t->add = cu_op_add;
    t->argmax_rows = cu_op_argmax_rows;
    t->sample_rows = cu_op_sample_rows;
    t->matmul = cu_op_matmul;
    t->matmul_strided = cu_op_matmul_strided;
    t->rmsnorm = cu_op_rmsnorm;
    t->rope = cu_op_rope;
    t->rope_tokens = cu_op_rope_tokens;
    t->softmax = cu_op_softmax;
    t->swiglu = cu_op_swiglu;
    t->moe_gate = cu_op_moe_gate;
    t->expert_ffn = cu_op_expert_ffn;
    t->experts_grouped = cu_op_experts_grouped;
    t->mla_absorbed = cu_op_mla_absorbed;
    t->mla_decode_paged = cu_op_mla_decode_paged;
    t->mla_naive = cu_op_mla_naive;
}

/* Destroys what `s` holds (partially created states included). */
mr_status state_destroy(cu_state *s)
{
    mr_status st = MR_OK;
    if (s->blas != NULL) {
        cublasStatus_t err = cublasDestroy(s->blas);
        if (err != CUBLAS_STATUS_SUCCESS)
            st = cu_fail_cublas(err, "cublasDestroy(s->blas)", __FILE__, __LINE__);
    }
    if (s->stream != NULL) {
        cudaError_t err = cudaStreamDestroy(s->stream);
        if (err != cudaSuccess && st == MR_OK)
            st = cu_fail_cuda(err, "cudaStreamDestroy(s->stream)", __FILE__, __LINE__);
    }
    memset(s, 0, sizeof *s);
    return st;
}

mr_status state_create_parts(cu_state *s)
{
    int n_devices = 0;
    cudaError_t err = cudaGetDeviceCount(&n_devices);
    if (err != cudaSuccess) {
        cu_fail_cuda(err, "cudaGetDeviceCount(&n_devices)", __FILE__, __LINE__); /* message */
        return mr_fail_prefix(MR_EUNSUPPORTED, "cuda backend: no usable device: ");
    }
    if (n_devices <= 0)
        return mr_fail(MR_EUNSUPPORTED, "cuda backend: no usable device: 0 CUDA devices");
    CUDA_TRY(cudaGetDevice(&s->device));
    CUDA_TRY(cudaStreamCreate(&s->stream)); /* blocking: orders with the legacy stream */
    CUBLAS_TRY(cublasCreate(&s->blas));
    CUBLAS_TRY(cublasSetStream(s->blas, s->stream));
    /* COMPUTE_32F with the default math mode is plain fp32 (no TF32) */
    CUBLAS_TRY(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH));
    CUBLAS_TRY(cublasSetPointerMode(s->blas, CUBLAS_POINTER_MODE_HOST));
    return MR_OK;
}

mr_status state_create(cu_state *s)
{
    memset(s, 0, sizeof *s);
    mr_status st = state_create_parts(s);
    if (st != MR_OK) {
        char message[1024];
        snprintf(message, sizeof message, "%s", mr_last_error());
        if (state_destroy(s) != MR_OK)
            return mr_fail(st, "%s (cleanup also failed: %s)", message, mr_last_error());
        return mr_fail(st, "%s", message);
    }
    s->ready = true;
    return MR_OK;
}

} /* namespace */

/* ---- internal API ------------------------------------------------------------ */

mr_status cu_fail_cuda(cudaError_t err, const char *call, const char *file, int line)
{
    mr_status st = mr_fail(status_of_cuda(err), "%s:%d: %s: %s: %s", file, line, call,
                           cudaGetErrorName(err), cudaGetErrorString(err));
    /* The runtime also keeps err as this thread's "last error", which the next
     * CU_LAUNCH_TRY would report again: take it (sticky errors stay). */
    cudaError_t pending = cudaGetLastError();
    if (pending != cudaSuccess && pending != err)
        st = mr_fail_prefix(st, "(also pending: %s) ", cudaGetErrorName(pending));
    return st;
}

mr_status cu_fail_cublas(cublasStatus_t err, const char *call, const char *file, int line)
{
    return mr_fail(status_of_cublas(err), "%s:%d: %s: %s: %s", file, line, call,
                   cublasGetStatusName(err), cublasGetStatusString(err));
}

void cu_record(mr_status status)
{
    if (status == MR_OK) return;
    pthread_mutex_lock(&error_lock);
    if (first_status == MR_OK) {
        first_status = status;
        snprintf(first_message, sizeof first_message, "%s", mr_last_error());
    }
    pthread_mutex_unlock(&error_lock);
}

cudaStream_t cu_stream(void)
{
    return state.stream;
}

cublasHandle_t cu_blas(void)
{
    return state.blas;
}

mr_cuda_precision cu_precision(void)
{
    return (mr_cuda_precision)precision.load(std::memory_order_relaxed);
}

/* ---- public API (kernels_cuda.h) --------------------------------------------- */

extern "C" const mr_kernels *mr_kernels_cuda(void)
{
    pthread_mutex_lock(&state_lock);
    mr_status st = MR_OK;
    if (!state.ready) {
        st = state_create(&state);
        if (st == MR_OK) table_fill(&table);
    }
    pthread_mutex_unlock(&state_lock);
    return st == MR_OK ? &table : NULL;
}

extern "C" void mr_kernels_cuda_release(void)
{
    pthread_mutex_lock(&state_lock);
    if (state.ready) {
        mr_status st = sync_impl();
        cu_record(st);
        cu_record(state_destroy(&state));
    }
    pthread_mutex_unlock(&state_lock);
}

extern "C" mr_status mr_kernels_cuda_set_precision(mr_cuda_precision p)
{
    if (p != MR_CUDA_PRECISION_FP32 && p != MR_CUDA_PRECISION_BF16)
        return mr_fail(MR_EINVAL, "mr_kernels_cuda_set_precision: unknown precision %d", (int)p);
    precision.store((int)p, std::memory_order_relaxed);
    return MR_OK;
}

extern "C" mr_cuda_precision mr_kernels_cuda_precision(void)
{
    return cu_precision();
}

extern "C" mr_status mr_kernels_cuda_last_status(void)
{
    pthread_mutex_lock(&error_lock);
    mr_status st = first_status;
    pthread_mutex_unlock(&error_lock);
    return st;
}

extern "C" const char *mr_kernels_cuda_last_error(void)
{
    return first_message;
}

extern "C" void mr_kernels_cuda_clear_status(void)
{
    pthread_mutex_lock(&error_lock);
    first_status = MR_OK;
    first_message[0] = '\0';
    pthread_mutex_unlock(&error_lock);
}

extern "C" mr_status mr_kernels_cuda_check(void)
{
    pthread_mutex_lock(&state_lock);
    if (state.ready) cu_record(sync_impl());
    pthread_mutex_unlock(&state_lock);
    pthread_mutex_lock(&error_lock);
    mr_status st = first_status;
    char message[sizeof first_message];
    memcpy(message, first_message, sizeof message);
    pthread_mutex_unlock(&error_lock);
    if (st == MR_OK) return MR_OK;
    return mr_fail(st, "cuda backend: %s", message);
}

extern "C" int mr_cuda_device_count(void)
{
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        cu_fail_cuda(err, "cudaGetDeviceCount(&n)", __FILE__, __LINE__); /* sets the message */
        return -1;
    }
    return n;
}

extern "C" mr_status mr_cuda_device_describe(char *buf, size_t cap)
{
    int device = 0, driver = 0, runtime = 0;
    cudaDeviceProp prop;
    CUDA_TRY(cudaGetDevice(&device));
    CUDA_TRY(cudaGetDeviceProperties(&prop, device));
    CUDA_TRY(cudaDriverGetVersion(&driver));
    CUDA_TRY(cudaRuntimeGetVersion(&runtime));
    snprintf(buf, cap, "%s, sm_%d%d, %d SMs, %.1f GiB, L2 %d MiB, driver %d.%d, runtime %d.%d",
             prop.name, prop.major, prop.minor, prop.multiProcessorCount,
             (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0), prop.l2CacheSize >> 20,
             driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    return MR_OK;
}

extern "C" mr_status mr_cuda_backend_device(int *device, char *identity, size_t cap)
{
    pthread_mutex_lock(&state_lock);
    const bool ready = state.ready;
    const int dev = state.device;
    pthread_mutex_unlock(&state_lock);
    if (!ready) return mr_fail(MR_EUNSUPPORTED, "cuda backend: not running");
    char host[256] = "?", bus[64] = "?";
    gethostname(host, sizeof host - 1);
    CUDA_TRY(cudaDeviceGetPCIBusId(bus, (int)sizeof bus, dev));
    *device = dev;
    snprintf(identity, cap, "%s/%s", host, bus);
    return MR_OK;
}

extern "C" mr_status mr_kernels_cuda_bind_thread(void)
{
    pthread_mutex_lock(&state_lock);
    const bool ready = state.ready;
    const int device = state.device;
    pthread_mutex_unlock(&state_lock);
    if (!ready) return mr_fail(MR_EUNSUPPORTED, "cuda backend: not running");
    CUDA_TRY(cudaSetDevice(device));
    return MR_OK;
}

extern "C" mr_status mr_cuda_select_device(int local_rank)
{
    int n = mr_cuda_device_count();
    if (n < 0) return mr_fail_prefix(MR_EUNSUPPORTED, "no usable GPU: ");
    if (n == 0) return mr_fail(MR_EUNSUPPORTED, "no usable GPU: 0 CUDA devices");
    if (local_rank < 0) local_rank = 0;
    pthread_mutex_lock(&state_lock);
    bool ready = state.ready;
    pthread_mutex_unlock(&state_lock);
    if (ready)
        return mr_fail(MR_EINVAL, "mr_cuda_select_device: the cuda backend already runs on a device");
    CUDA_TRY(cudaSetDevice(local_rank % n));
    return MR_OK;
}
