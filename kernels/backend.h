/* kernels/backend.h — choosing the compute backend of a process.
 *
 * mr_backend_open returns the kernel table a command or a cluster rank
 * computes with: the CPU reference, or the CUDA backend on this rank's GPU
 * (device = local rank mod the node's GPU count, the local rank taken from
 * the launcher's environment: OMPI_COMM_WORLD_LOCAL_RANK, else
 * MPI_LOCALRANKID, else SLURM_LOCALID, else 0). `bf16` (--precision bf16)
 * goes with weights stored as bf16 (MR_WT_BF16, chosen by the caller when it
 * copies weights to the backend); with cuda it also rounds the inputs of the
 * activation-by-activation GEMMs (MLA scores) to bf16. On cpu/devsim bf16
 * weights are emulated exactly (kernels.h, mr_wtype) and the rest stays fp32.
 * A rank with no usable GPU gets an error naming why ("--backend cuda: no
 * usable GPU: ..."), never a silent fallback to the CPU. A third name,
 * "devsim", is the CPU kernels under device-memory rules
 * (kernels/devsim/kernels_devsim.h): it tests the GPU data paths here.
 */
#ifndef MR_BACKEND_H
#define MR_BACKEND_H

#include <stdbool.h>

#include "../common/status.h"
#include "kernels.h"

/* name: "cpu", "cuda" or "devsim"; anything else → MR_EINVAL naming it. */
mr_status mr_backend_open(const char *name, bool bf16, const mr_kernels **out);

/* True when name is one mr_backend_open accepts (for option parsers). */
bool mr_backend_name_valid(const char *name);

/* The value of a --precision / --kv-dtype flag: "fp32" or "bf16"; anything
 * else → MR_EINVAL naming the flag and the value. */
mr_status mr_parse_dtype(const char *flag, const char *value, mr_wtype *out);

/* Lets the calling thread issue k's ops (cuda: the backend's device for this
 * thread; nothing to do for cpu/devsim). One thread at a time still. */
mr_status mr_backend_bind_thread(const mr_kernels *k);

/* The node-local rank from the launcher's environment (0 when none). */
int mr_backend_local_rank(void);

#endif
