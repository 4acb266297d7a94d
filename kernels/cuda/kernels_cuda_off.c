/* kernels/cuda/kernels_cuda_off.c — kernels_cuda.h for builds without CUDA:
 * the same functions, reporting MR_EUNSUPPORTED, so callers never #ifdef on
 * the backend. Compiled into the core library only when CUDA is disabled. */
#include "kernels_cuda.h"

#include <stdio.h>

static mr_status cuda_off(const char *what)
{
    return mr_fail(MR_EUNSUPPORTED, "%s: this moerun was built without CUDA (-Dcuda=disabled)",
                   what);
}

const mr_kernels *mr_kernels_cuda(void)
{
    cuda_off("cuda backend");
    return NULL;
}

void mr_kernels_cuda_release(void) {}

mr_status mr_kernels_cuda_set_precision(mr_cuda_precision precision)
{
    (void)precision;
    return cuda_off("mr_kernels_cuda_set_precision");
}

mr_cuda_precision mr_kernels_cuda_precision(void)
{
    return MR_CUDA_PRECISION_FP32;
}

mr_status mr_kernels_cuda_last_status(void)
{
    return MR_OK;
}

const char *mr_kernels_cuda_last_error(void)
{
    return "";
}

void mr_kernels_cuda_clear_status(void) {}

mr_status mr_kernels_cuda_check(void)
{
    return MR_OK;
}

int mr_cuda_device_count(void)
{
    cuda_off("mr_cuda_device_count");
    return -1;
}

mr_status mr_cuda_device_describe(char *buf, size_t cap)
{
    if (cap > 0) snprintf(buf, cap, "no CUDA in this build");
    return cuda_off("mr_cuda_device_describe");
}

mr_status mr_cuda_backend_device(int *device, char *identity, size_t cap)
{
    *device = -1;
    if (cap > 0) identity[0] = 0;
    return cuda_off("cuda backend");
}

mr_status mr_cuda_select_device(int local_rank)
{
    (void)local_rank;
    return cuda_off("no usable GPU");
}

mr_status mr_kernels_cuda_bind_thread(void)
{
    return cuda_off("cuda backend");
}
