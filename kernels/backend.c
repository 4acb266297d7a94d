/* kernels/backend.c — see backend.h. */
#include "backend.h"

#include <stdlib.h>
#include <string.h>

#include "cuda/kernels_cuda.h"
#include "devsim/kernels_devsim.h"

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

mr_status mr_parse_dtype(const char *flag, const char *value, mr_wtype *out)
{
    if (!strcmp(value, "fp32")) *out = MR_WT_F32;
    else if (!strcmp(value, "bf16")) *out = MR_WT_BF16;
    else return mr_fail(MR_EINVAL, "%s: expected fp32 or bf16, got '%s'", flag, value);
    return MR_OK;
}

mr_status mr_backend_bind_thread(const mr_kernels *k)
{
    return k && !strcmp(k->name, "cuda") ? mr_kernels_cuda_bind_thread() : MR_OK;
}

bool mr_backend_name_valid(const char *name)
{
    return !strcmp(name, "cpu") || !strcmp(name, "cuda") || !strcmp(name, "devsim");
}

mr_status mr_backend_open(const char *name, bool bf16, const mr_kernels **out)
{
    *out = NULL;
    if (!mr_backend_name_valid(name))
        return mr_fail(MR_EINVAL, "--backend: expected cpu, cuda or devsim, got '%s'", name);
    if (strcmp(name, "cuda") != 0) {
        (void)bf16; /* bf16 weights are the caller's (mr_wtype); cpu ops emulate their GEMMs */
        *out = !strcmp(name, "cpu") ? mr_kernels_cpu() : mr_kernels_devsim();
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
