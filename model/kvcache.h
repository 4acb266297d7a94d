/* model/kvcache.h — paged latent KV cache (MLA).
 *
 * What is cached per token per layer is MLA's compressed latent: the
 * normalized c_kv (kv_lora_rank values) followed by the RoPE'd k_pe
 * (qk_rope_head_dim values) — latent_dim values of the pool's dtype: fp32, or
 * bf16 (half the memory and transfer; written rounded to nearest even, read
 * widened, by the engine's kernels).
 *
 * A pool holds n_blocks fixed-size blocks. One block stores block_tokens
 * consecutive tokens of one sequence for ALL layers, laid out
 * (n_layers, block_tokens, latent_dim), so a finished prompt's KV moves as one
 * contiguous put per block. Blocks come from a free list; releasing a block
 * that is not in use is an internal error (caught, never corrupts the list).
 *
 * A sequence (mr_kv_seq) is a block table owned by its caller; it grows by
 * whole blocks through mr_kv_seq_reserve and gives them back exactly once in
 * mr_kv_seq_release. Not thread-safe: one pool per engine/thread.
 */
#ifndef MR_KVCACHE_H
#define MR_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "../common/status.h"
#include "../kernels/kernels.h"

typedef struct mr_kv_pool mr_kv_pool;

typedef struct mr_kv_seq {
    mr_kv_pool *pool;
    int32_t *blocks;   /* block table, n_blocks entries */
    int n_blocks;
    int cap_blocks;
} mr_kv_seq;

/* An fp32 pool with its own (host) storage. */
mr_status mr_kv_pool_create(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                            mr_kv_pool **out);
/* Bytes of block storage a pool of these sizes and dtype needs. */
size_t mr_kv_pool_bytes_for(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                            mr_wtype dtype);
/* The same, over caller-owned zeroed storage of mr_kv_pool_bytes_for bytes
 * (e.g. memory the transport exports for remote puts); the pool never frees
 * it and it must outlive the pool. */
mr_status mr_kv_pool_create_in(int n_layers, int latent_dim, int block_tokens, int n_blocks,
                               mr_wtype dtype, void *storage, mr_kv_pool **out);
void mr_kv_pool_destroy(mr_kv_pool *pool); /* accepts NULL */

int mr_kv_pool_block_tokens(const mr_kv_pool *pool);
int mr_kv_pool_free_blocks(const mr_kv_pool *pool);
int mr_kv_pool_total_blocks(const mr_kv_pool *pool);
size_t mr_kv_pool_block_bytes(const mr_kv_pool *pool);
mr_wtype mr_kv_pool_dtype(const mr_kv_pool *pool);
/* Base address of a block (n_layers * block_tokens * latent_dim values). */
void *mr_kv_pool_block(mr_kv_pool *pool, int32_t block);
/* Blocks needed to hold n_tokens. */
int mr_kv_pool_blocks_for(const mr_kv_pool *pool, int n_tokens);

/* All-or-nothing: take n blocks from the free list into out_blocks, or fail
 * with MR_ENOMEM ("KV pool exhausted: need N, M free") leaving the pool as is. */
mr_status mr_kv_pool_alloc(mr_kv_pool *pool, int n, int32_t *out_blocks);
/* Return blocks; a block not currently allocated → MR_EINTERNAL, the rest
 * are still returned. */
mr_status mr_kv_pool_release(mr_kv_pool *pool, int n, const int32_t *blocks);

/* The pool's storage: (total_blocks * n_layers * block_tokens, latent_dim)
 * values of the pool's dtype. The pool itself only touches it in mr_kv_seq_row, so
 * storage created with _create_in may be a backend's device memory as long
 * as mr_kv_seq_row is not used on it (the engine addresses rows by index). */
void *mr_kv_pool_storage(mr_kv_pool *pool);

/* Sequence block tables. */
void mr_kv_seq_init(mr_kv_seq *seq, mr_kv_pool *pool);
/* Ensure the table covers positions [0, n_tokens). All-or-nothing. */
mr_status mr_kv_seq_reserve(mr_kv_seq *seq, int n_tokens);
/* Give every block back and empty the table (idempotent). */
mr_status mr_kv_seq_release(mr_kv_seq *seq);
/* Latent row of (layer, pos); pos must be covered by reserve. */
void *mr_kv_seq_row(const mr_kv_seq *seq, int layer, int pos);
/* Row index of (layer 0, pos) in the storage viewed as rows of latent_dim
 * values; (layer, pos) is that + layer * block_tokens. pos must be covered. */
int32_t mr_kv_seq_row_index(const mr_kv_seq *seq, int pos);

#endif
