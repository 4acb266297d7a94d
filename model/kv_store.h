/* model/kv_store.h — a role's paged KV pool where its compute backend works,
 * plus the host image the transport moves.
 *
 * KV blocks travel between ranks as UCX puts of host memory (Debian's UCX has
 * no CUDA transport), while the engine reads and writes them in its backend's
 * memory. An mr_kv_store keeps both with the same block layout and one block
 * allocator:
 *   - host-memory backend (cpu): one storage; the host image IS the pool's
 *     storage, and upload/download do nothing;
 *   - other backends (cuda): the pool's storage is k->alloc'd; the host image
 *     is the caller's (e.g. memory UCX allocated and registered for puts),
 *     pinned in place with k->host_register when the backend can, or
 *     k->host_alloc'd here (pinned); upload/download copy whole blocks.
 * Decode uploads a request's blocks after its KvReady (prefill has put them
 * into the host image); prefill downloads them before putting.
 *
 * Ownership: the store owns the pool, the backend storage and a malloc'd host
 * image; a caller-given host image must outlive the store.
 */
#ifndef MR_KV_STORE_H
#define MR_KV_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "../kernels/kernels.h"
#include "kvcache.h"

typedef struct mr_kv_store {
    mr_kv_pool *pool;         /* allocator; storage in k's memory */
    const mr_kernels *k;
    void *backend_storage;    /* k->alloc'd (non-host backends), else NULL */
    void *host;               /* host image, same layout as the pool's storage */
    int host_owned;           /* host image from k->host_alloc (pinned on cuda) */
    int host_registered;      /* caller's host image pinned with k->host_register */
} mr_kv_store;

/* dtype: the rows' element type (fp32, or bf16: half the bytes everywhere).
 * host_image: caller's zeroed host memory of mr_kv_pool_bytes_for(...)
 * bytes, or NULL to allocate one. */
mr_status mr_kv_store_create(const mr_kernels *k, int n_layers, int latent_dim, int block_tokens,
                             int n_blocks, mr_wtype dtype, void *host_image, mr_kv_store *out);
void mr_kv_store_destroy(mr_kv_store *s); /* accepts a zeroed struct */

/* Host image of a block (what a put sends or receives). */
void *mr_kv_store_host_block(const mr_kv_store *s, int32_t block);
/* Copy blocks host image → backend (upload) or backend → host image
 * (download); nothing on host-memory backends. Returns the backend's error. */
mr_status mr_kv_store_upload(const mr_kv_store *s, int n, const int32_t *blocks);
mr_status mr_kv_store_download(const mr_kv_store *s, int n, const int32_t *blocks);

#endif
