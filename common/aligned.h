/* common/aligned.h — 64-byte aligned host allocations.
 *
 * Weights and every backend buffer of the cpu and devsim backends start on a
 * 64-byte boundary. The CPU matmul's vector loop peels a short first block
 * when a weight row is misaligned, which changes its summation grouping; with
 * every weight aligned the same, a result no longer depends on where the
 * allocator happened to put a matrix, so two processes (or two backends)
 * computing the same product get the same bits. Free with free().
 */
#ifndef MR_ALIGNED_H
#define MR_ALIGNED_H

#include <stdlib.h>

#define MR_ALIGN_BYTES 64

static inline void *mr_aligned_alloc(size_t bytes)
{
    size_t rounded = (bytes + MR_ALIGN_BYTES - 1) / MR_ALIGN_BYTES * MR_ALIGN_BYTES;
    return aligned_alloc(MR_ALIGN_BYTES, rounded ? rounded : MR_ALIGN_BYTES);
}

#endif
