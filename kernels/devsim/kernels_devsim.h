/* kernels/devsim/kernels_devsim.h — the "devsim" backend: the CPU kernels
 * behind device-memory rules, to test GPU data paths on machines without a
 * GPU.
 *
 * It has host_memory = false, so every caller takes the path it takes with
 * cuda: weights are copied to backend memory, KV moves between the pool and
 * its host image, routed rows are staged, logits are copied back. Backend
 * memory comes from its own alloc and is tracked; every op checks that each
 * array it is given lies wholly inside one live backend allocation (bounds
 * included), and copy/copy_2d check that the host side does NOT. A violation
 * aborts the process with the op, the argument and the address, so a test
 * fails at the first mix-up of host and backend memory or an out-of-bounds
 * extent. Results are bit-identical to the cpu backend's (same ops).
 *
 * Use: `--backend devsim` on generate and the cluster roles. Not for speed.
 */
#ifndef MR_KERNELS_DEVSIM_H
#define MR_KERNELS_DEVSIM_H

#include "../kernels.h"

const mr_kernels *mr_kernels_devsim(void);

/* Live backend allocations and their bytes (for leak checks in tests). */
size_t mr_devsim_live_allocations(void);

#endif
