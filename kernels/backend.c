/* kernels/backend.c — see backend.h. */
#include "backend.h"

#include <stdlib.h>

#include "cuda/kernels_cuda.h"

int mr_backend_local_rank(void)
{
    static const char *vars[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) {
            char *end = NULL;
            long r = strtol(v, &end, 10);
            if (*end == '\0' && r >= 0 && r < 1 << 20) return (int)r;
        }
    }
    return 0;
}

mr_status mr_backend_open(bool cuda, bool bf16, const mr_kernels **out)
{
    *out = NULL;
    if (!cuda) {
        if (bf16) return mr_fail(MR_EINVAL, "--precision bf16 needs --backend cuda");
        *out = mr_kernels_cpu();
        return MR_OK;
    }
    mr_status st = mr_cuda_select_device(mr_backend_local_rank());
    if (st != MR_OK) return mr_fail_prefix(st, "--backend cuda: ");
    const mr_kernels *k = mr_kernels_cuda();
    if (!k) return mr_fail_prefix(MR_EUNSUPPORTED, "--backend cuda: ");
    MR_TRY(mr_kernels_cuda_set_precision(bf16 ? MR_CUDA_PRECISION_BF16 : MR_CUDA_PRECISION_FP32));
    *out = k;
    return MR_OK;
}
